//! Durable metric counters and the Prometheus rendering of them.
//!
//! Counters and histograms live in Postgres (`job_outcome_stats`, `restore_stats`),
//! updated in the same transaction that finishes a job, so they survive both pruning
//! of old jobs and restarts of any process; `/metrics` on the API renders them through
//! the `metrics` facade (absolute values set on a recorder made for each scrape).

use indexmap::IndexMap;
use metrics::{Key, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::formatting::{
    write_help_line, write_metric_line, write_type_line,
};
use metrics_exporter_prometheus::{LabelSet, PrometheusBuilder};
use sqlx::{PgConnection, PgPool};

use crate::domain::{Job, JobKind, JobState};

/// Upper bounds (seconds) of `volsnap_job_duration_seconds`.
pub const JOB_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Upper bounds (seconds) of `volsnap_restore_downtime_seconds`.
pub const DOWNTIME_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Index (1-based, as SQL arrays are) of the bucket an observation falls in; the
/// overflow slot (`+Inf`) is `bounds.len() + 1`.
fn bucket_slot(bounds: &[f64], v: f64) -> i32 {
    bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len()) as i32 + 1
}

/// Count a job that just became final. Call in the finishing transaction (or use
/// [`RECORD_FINISHED_CTE`] inside the finishing statement).
pub async fn record_finished(conn: &mut PgConnection, job: &Job) -> Result<(), sqlx::Error> {
    debug_assert!(job.state.is_final());
    sqlx::query(concat!(
        "WITH fin AS (SELECT $1::text AS kind, $2::text AS state, $3::timestamptz AS started_at, \
         $4::timestamptz AS finished_at) ",
        crate::record_finished_cte!(),
        " SELECT 1"
    ))
    .bind(job.kind)
    .bind(job.state)
    .bind(job.started_at)
    .bind(job.finished_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A CTE fragment (`, … stats AS (...)`) that counts the rows of a preceding CTE named
/// `fin` (columns kind, state, started_at, finished_at; any number of rows) into
/// `job_outcome_stats`: one statement, rows grouped per (kind, outcome) into one random
/// shard of 16, histogram buckets chosen in SQL (bounds = [`JOB_DURATION_BUCKETS`]).
/// Counter rows are upserted in (outcome, kind) order; a transaction that records
/// several statements' worth must do so in that order too, so no two transactions can
/// each hold a counter row the other waits for.
#[macro_export]
macro_rules! record_finished_cte {
    () => {
        ", fin_b AS ( \
           SELECT f.kind, f.state, d.secs, \
             (SELECT count(*) + 1 FROM unnest(ARRAY[0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]::float8[]) b \
              WHERE b < d.secs)::int AS slot \
           FROM fin f CROSS JOIN LATERAL \
             (SELECT greatest(extract(epoch FROM f.finished_at - f.started_at), 0)::float8 AS secs) d), \
         fin_g AS ( \
           SELECT g.kind, g.state, \
             (SELECT count(*) FROM fin_b x WHERE x.kind = g.kind AND x.state = g.state) AS n, \
             (SELECT coalesce(sum(x.secs), 0) FROM fin_b x WHERE x.kind = g.kind AND x.state = g.state) AS total, \
             array(SELECT (SELECT count(*) FROM fin_b x WHERE x.kind = g.kind AND x.state = g.state \
                             AND x.secs IS NOT NULL AND x.slot = i)::bigint \
                   FROM generate_series(1, 16) i ORDER BY i) AS buckets \
           FROM (SELECT DISTINCT kind, state FROM fin_b) g), \
         stats AS ( \
           INSERT INTO job_outcome_stats AS s (kind, outcome, shard, finished, duration_sum, duration_buckets) \
           SELECT kind, state, r.shard, n, total, buckets \
           FROM fin_g CROSS JOIN (SELECT floor(random() * 16)::smallint AS shard) r \
           ORDER BY state, kind \
           ON CONFLICT (kind, outcome, shard) DO UPDATE SET finished = s.finished + excluded.finished, \
             duration_sum = s.duration_sum + excluded.duration_sum, \
             duration_buckets = array(SELECT a + b FROM unnest(s.duration_buckets, excluded.duration_buckets) AS u(a, b)) \
           RETURNING 1)"
    };
}

/// Count the bytes a restore wrote and the time its containers were down.
pub async fn record_restore(
    conn: &mut PgConnection,
    bytes: u64,
    downtime_seconds: Option<f64>,
) -> Result<(), sqlx::Error> {
    let zeros = vec![0i64; DOWNTIME_BUCKETS.len() + 1];
    sqlx::query(
        "INSERT INTO restore_stats (id, downtime_buckets) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&zeros)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE restore_stats SET bytes_total = bytes_total + $1 WHERE id = 1")
        .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
    if let Some(d) = downtime_seconds {
        sqlx::query(
            "UPDATE restore_stats SET downtime_count = downtime_count + 1, \
             downtime_sum = downtime_sum + $1, downtime_buckets[$2] = downtime_buckets[$2] + 1 \
             WHERE id = 1",
        )
        .bind(d)
        .bind(bucket_slot(DOWNTIME_BUCKETS, d))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Render what `record` puts into a fresh recorder of its own (not the global one), in
/// the Prometheus text format. Database-derived values are snapshots: a recorder per
/// scrape holds exactly the series the database has now, so a series that went away
/// (a node no longer heartbeating, a failure older than its window) is gone from the
/// output instead of lingering at its last value.
pub fn render_with(record: impl FnOnce()) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, record);
    recorder.handle().render()
}

/// One `(kind, outcome)` row of `job_outcome_stats`, summed over its shards.
#[derive(Debug, Clone, sqlx::FromRow)]
struct OutcomeRow {
    kind: JobKind,
    outcome: JobState,
    finished: i64,
    duration_sum: f64,
    duration_buckets: Vec<i64>,
}

/// The fleet-wide metrics as the database holds them now: the durable counters and
/// histograms (`job_outcome_stats`, `restore_stats`, which survive pruning and
/// restarts), the jobs table's states and the newest heartbeat per node.
#[derive(Debug, Clone)]
pub struct FleetStats {
    outcomes: Vec<OutcomeRow>,
    states: Vec<(JobKind, JobState, i64)>,
    restore_bytes: i64,
    downtime_sum: f64,
    downtime_buckets: Vec<i64>,
    heartbeats: Vec<(String, f64)>,
}

impl FleetStats {
    /// Read every fleet-wide value (a few short statements, no transaction).
    pub async fn read(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let outcomes: Vec<OutcomeRow> = sqlx::query_as(
            "SELECT kind, outcome, sum(finished)::int8 AS finished, sum(duration_sum)::float8 AS duration_sum, \
               array(SELECT sum(b)::int8 FROM job_outcome_stats s2, unnest(s2.duration_buckets) WITH ORDINALITY AS u(b, i) \
                     WHERE s2.kind = s.kind AND s2.outcome = s.outcome GROUP BY i ORDER BY i) AS duration_buckets \
             FROM job_outcome_stats s GROUP BY kind, outcome ORDER BY kind, outcome",
        )
        .fetch_all(pool)
        .await?;
        let states: Vec<(JobKind, JobState, i64)> =
            sqlx::query_as("SELECT kind, state, count(*) FROM jobs GROUP BY kind, state")
                .fetch_all(pool)
                .await?;
        let restore: Option<(i64, f64, Vec<i64>)> = sqlx::query_as(
            "SELECT bytes_total, downtime_sum, downtime_buckets FROM restore_stats WHERE id = 1",
        )
        .fetch_optional(pool)
        .await?;
        let (restore_bytes, downtime_sum, downtime_buckets) =
            restore.unwrap_or((0, 0.0, vec![0; DOWNTIME_BUCKETS.len() + 1]));
        let heartbeats: Vec<(String, f64)> = sqlx::query_as(
            "SELECT node, extract(epoch FROM max(heartbeat_at))::float8 FROM workers GROUP BY node ORDER BY node",
        )
        .fetch_all(pool)
        .await?;
        Ok(FleetStats {
            outcomes,
            states,
            restore_bytes,
            downtime_sum,
            downtime_buckets,
            heartbeats,
        })
    }

    /// Set the counters and gauges, as absolute values, in the current recorder (see
    /// [`render_with`]). Every `(kind, outcome)` and `(kind, state)` series is set, zero
    /// when never seen, so alert expressions have a baseline.
    pub fn record(&self) {
        describe_counter!(
            "volsnap_jobs_finished_total",
            "Jobs that reached a final state."
        );
        for kind in JobKind::ALL {
            for outcome in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
                let n = self
                    .outcomes
                    .iter()
                    .find(|r| r.kind == *kind && r.outcome == outcome)
                    .map_or(0, |r| r.finished);
                counter!("volsnap_jobs_finished_total", "kind" => kind.as_str(), "outcome" => outcome.as_str())
                    .absolute(non_negative(n));
            }
        }
        describe_gauge!(
            "volsnap_jobs",
            "Jobs currently in the table, by kind and state."
        );
        for kind in JobKind::ALL {
            for state in JobState::ALL {
                let n = self
                    .states
                    .iter()
                    .find(|r| r.0 == *kind && r.1 == *state)
                    .map_or(0, |r| r.2);
                gauge!("volsnap_jobs", "kind" => kind.as_str(), "state" => state.as_str())
                    .set(n as f64);
            }
        }
        describe_counter!(
            "volsnap_restore_bytes_total",
            "Bytes written into volumes by restores."
        );
        counter!("volsnap_restore_bytes_total").absolute(non_negative(self.restore_bytes));
        describe_gauge!(
            "volsnap_worker_last_heartbeat_timestamp_seconds",
            "Newest heartbeat of any worker of a node."
        );
        for (node, ts) in &self.heartbeats {
            gauge!("volsnap_worker_last_heartbeat_timestamp_seconds", "node" => node.clone())
                .set(*ts);
        }
    }

    /// The two histograms whose buckets are counted in the database. A recorder only
    /// learns a histogram from observations, and these are durable bucket counts and
    /// sums, so they are written with the exporter's own formatting functions (the same
    /// escaping and layout as everything else it renders).
    pub fn write_histograms(&self, out: &mut String) {
        let name = "volsnap_job_duration_seconds";
        write_help_line(out, name, None, None, "Time from a job's start to its end.");
        write_type_line(out, name, None, None, "histogram");
        for r in &self.outcomes {
            write_histogram(
                out,
                name,
                &[("kind", r.kind.as_str()), ("outcome", r.outcome.as_str())],
                JOB_DURATION_BUCKETS,
                &r.duration_buckets,
                r.duration_sum,
            );
        }
        out.push('\n');
        let name = "volsnap_restore_downtime_seconds";
        write_help_line(
            out,
            name,
            None,
            None,
            "Time a restore kept the workload's containers stopped.",
        );
        write_type_line(out, name, None, None, "histogram");
        write_histogram(
            out,
            name,
            &[],
            DOWNTIME_BUCKETS,
            &self.downtime_buckets,
            self.downtime_sum,
        );
        out.push('\n');
    }
}

fn non_negative(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// One histogram series from per-bucket (not cumulative) counts; `buckets` has one
/// slot more than `bounds`, the overflow.
fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &[(&'static str, &'static str)],
    bounds: &[f64],
    buckets: &[i64],
    sum: f64,
) {
    let key = Key::from_parts(name.to_owned(), labels);
    let labels = LabelSet::from_key_and_global(&key, &IndexMap::new());
    let mut cumulative = 0i64;
    for (i, le) in bounds.iter().enumerate() {
        cumulative += buckets.get(i).copied().unwrap_or(0);
        write_metric_line(
            out,
            name,
            Some("bucket"),
            &labels,
            Some(("le", le)),
            cumulative,
            None,
        );
    }
    cumulative += buckets.get(bounds.len()).copied().unwrap_or(0);
    write_metric_line(
        out,
        name,
        Some("bucket"),
        &labels,
        Some(("le", "+Inf")),
        cumulative,
        None,
    );
    write_metric_line::<&str, f64>(out, name, Some("sum"), &labels, None, sum, None);
    write_metric_line::<&str, i64>(out, name, Some("count"), &labels, None, cumulative, None);
}

/// The whole fleet-wide `/metrics` body (Prometheus text format 0.0.4), as the API
/// serves it without its own process metrics.
pub async fn render_prometheus(pool: &PgPool) -> Result<String, sqlx::Error> {
    let stats = FleetStats::read(pool).await?;
    let mut out = render_with(|| stats.record());
    stats.write_histograms(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_bucket_bounds_match_the_constant() {
        let listed: Vec<String> = JOB_DURATION_BUCKETS.iter().map(|b| b.to_string()).collect();
        let sql = crate::record_finished_cte!();
        assert!(
            sql.contains(&format!("ARRAY[{}]", listed.join(", "))),
            "{sql}"
        );
        assert!(sql.contains(&format!(
            "generate_series(1, {})",
            JOB_DURATION_BUCKETS.len() + 1
        )));
    }

    #[test]
    fn slots() {
        assert_eq!(bucket_slot(&[1.0, 2.0], 0.5), 1);
        assert_eq!(bucket_slot(&[1.0, 2.0], 1.0), 1);
        assert_eq!(bucket_slot(&[1.0, 2.0], 1.5), 2);
        assert_eq!(bucket_slot(&[1.0, 2.0], 9.0), 3);
    }
}
