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

/// Count a job that just became final. Call in the finishing transaction.
pub async fn record_finished(conn: &mut PgConnection, job: &Job) -> Result<(), sqlx::Error> {
    let outcome = job.state;
    debug_assert!(outcome.is_final());
    let duration = match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => Some(((f - s).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0)),
        _ => None,
    };
    let zeros = vec![0i64; JOB_DURATION_BUCKETS.len() + 1];
    let slot = duration.map(|d| bucket_slot(JOB_DURATION_BUCKETS, d));
    sqlx::query(
        "INSERT INTO job_outcome_stats AS s (kind, outcome, finished, duration_sum, duration_buckets) \
         VALUES ($1, $2, 1, coalesce($3, 0), $4) \
         ON CONFLICT (kind, outcome) DO UPDATE SET finished = s.finished + 1, \
           duration_sum = s.duration_sum + coalesce($3, 0), \
           duration_buckets = s.duration_buckets",
    )
    .bind(job.kind)
    .bind(outcome)
    .bind(duration)
    .bind(&zeros)
    .execute(&mut *conn)
    .await?;
    if let Some(slot) = slot {
        sqlx::query(
            "UPDATE job_outcome_stats SET duration_buckets[$3] = duration_buckets[$3] + 1 \
             WHERE kind = $1 AND outcome = $2",
        )
        .bind(job.kind)
        .bind(outcome)
        .bind(slot)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
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
        "SELECT kind, outcome, finished, duration_sum, duration_buckets FROM job_outcome_stats \
         ORDER BY kind, outcome",
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
    fn slots() {
        assert_eq!(bucket_slot(&[1.0, 2.0], 0.5), 1);
        assert_eq!(bucket_slot(&[1.0, 2.0], 1.0), 1);
        assert_eq!(bucket_slot(&[1.0, 2.0], 1.5), 2);
        assert_eq!(bucket_slot(&[1.0, 2.0], 9.0), 3);
    }
}
