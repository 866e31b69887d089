//! Durable metric counters and the Prometheus rendering of them.
//!
//! Counters and histograms live in Postgres (`job_outcome_stats`, `restore_stats`),
//! updated in the same transaction that finishes a job, so they survive both pruning
//! of old jobs and restarts of any process; `/metrics` on the API renders them.

use std::fmt::Write as _;

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

fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    buckets: &[i64],
    sum: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0i64;
    for (i, le) in bounds.iter().enumerate() {
        cumulative += buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
    }
    cumulative += buckets.get(bounds.len()).copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
    );
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {sum}");
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

/// The whole `/metrics` body (Prometheus text format 0.0.4).
pub async fn render_prometheus(pool: &PgPool) -> Result<String, sqlx::Error> {
    let mut out = String::with_capacity(4096);

    let outcomes: Vec<(JobKind, JobState, i64, f64, Vec<i64>)> = sqlx::query_as(
        "SELECT kind, outcome, sum(finished)::int8, sum(duration_sum)::float8, \
           array(SELECT sum(b)::int8 FROM job_outcome_stats s2, unnest(s2.duration_buckets) WITH ORDINALITY AS u(b, i) \
                 WHERE s2.kind = s.kind AND s2.outcome = s.outcome GROUP BY i ORDER BY i) \
         FROM job_outcome_stats s GROUP BY kind, outcome ORDER BY kind, outcome",
    )
    .fetch_all(pool)
    .await?;
    out.push_str("# HELP volsnap_jobs_finished_total Jobs that reached a final state.\n");
    out.push_str("# TYPE volsnap_jobs_finished_total counter\n");
    // Emit every series (zero when never seen) so alert expressions have a baseline.
    for kind in JobKind::ALL {
        for outcome in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            let n = outcomes
                .iter()
                .find(|r| r.0 == *kind && r.1 == outcome)
                .map_or(0, |r| r.2);
            let _ = writeln!(
                out,
                "volsnap_jobs_finished_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    out.push_str("# HELP volsnap_job_duration_seconds Time from a job's start to its end.\n");
    out.push_str("# TYPE volsnap_job_duration_seconds histogram\n");
    for (kind, outcome, _, sum, buckets) in &outcomes {
        let labels = format!("kind=\"{kind}\",outcome=\"{outcome}\"");
        write_histogram(
            &mut out,
            "volsnap_job_duration_seconds",
            &labels,
            JOB_DURATION_BUCKETS,
            buckets,
            *sum,
        );
    }

    let states: Vec<(JobKind, JobState, i64)> =
        sqlx::query_as("SELECT kind, state, count(*) FROM jobs GROUP BY kind, state")
            .fetch_all(pool)
            .await?;
    out.push_str("# HELP volsnap_jobs Jobs currently in the table, by kind and state.\n");
    out.push_str("# TYPE volsnap_jobs gauge\n");
    for kind in JobKind::ALL {
        for state in JobState::ALL {
            let n = states
                .iter()
                .find(|r| r.0 == *kind && r.1 == *state)
                .map_or(0, |r| r.2);
            let _ = writeln!(out, "volsnap_jobs{{kind=\"{kind}\",state=\"{state}\"}} {n}");
        }
    }

    let restore: Option<(i64, i64, f64, Vec<i64>)> = sqlx::query_as(
        "SELECT bytes_total, downtime_count, downtime_sum, downtime_buckets FROM restore_stats WHERE id = 1",
    )
    .fetch_optional(pool)
    .await?;
    let (bytes, _, dsum, dbuckets) =
        restore.unwrap_or((0, 0, 0.0, vec![0; DOWNTIME_BUCKETS.len() + 1]));
    out.push_str(
        "# HELP volsnap_restore_downtime_seconds Time a restore kept the workload's containers stopped.\n",
    );
    out.push_str("# TYPE volsnap_restore_downtime_seconds histogram\n");
    write_histogram(
        &mut out,
        "volsnap_restore_downtime_seconds",
        "",
        DOWNTIME_BUCKETS,
        &dbuckets,
        dsum,
    );
    out.push_str("# HELP volsnap_restore_bytes_total Bytes written into volumes by restores.\n");
    out.push_str("# TYPE volsnap_restore_bytes_total counter\n");
    let _ = writeln!(out, "volsnap_restore_bytes_total {bytes}");

    let nodes: Vec<(String, f64)> = sqlx::query_as(
        "SELECT node, extract(epoch FROM max(heartbeat_at))::float8 FROM workers GROUP BY node ORDER BY node",
    )
    .fetch_all(pool)
    .await?;
    out.push_str(
        "# HELP volsnap_worker_last_heartbeat_timestamp_seconds Newest heartbeat of any worker of a node.\n",
    );
    out.push_str("# TYPE volsnap_worker_last_heartbeat_timestamp_seconds gauge\n");
    for (node, ts) in nodes {
        let node = node
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = writeln!(
            out,
            "volsnap_worker_last_heartbeat_timestamp_seconds{{node=\"{node}\"}} {ts}"
        );
    }
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
