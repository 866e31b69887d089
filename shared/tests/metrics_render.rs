//! The fleet-wide `/metrics` body (`queue::stats::render_prometheus`) against a real
//! PostgreSQL: every contract name with its TYPE and HELP, durable counters and
//! histograms from `job_outcome_stats` / `restore_stats` (cumulative buckets, sums,
//! counts), a zero baseline for every (kind, outcome) and (kind, state), label values
//! escaped, and a node that stops heartbeating disappears (no stale series).

use sqlx::PgPool;
use volsnap_shared::queue::stats::{self, DOWNTIME_BUCKETS, JOB_DURATION_BUCKETS};

fn sample(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn renders_the_contract_from_the_database(pool: PgPool) {
    // Two restores finished: 0.25 s (bucket 0.5) and 7 s (bucket 10), in two shards.
    let mut buckets_a = vec![0i64; JOB_DURATION_BUCKETS.len() + 1];
    buckets_a[3] = 1;
    let mut buckets_b = vec![0i64; JOB_DURATION_BUCKETS.len() + 1];
    buckets_b[7] = 1;
    for (shard, sum, buckets) in [(1i16, 0.25f64, &buckets_a), (2, 7.0, &buckets_b)] {
        sqlx::query(
            "INSERT INTO job_outcome_stats (kind, outcome, shard, finished, duration_sum, duration_buckets) \
             VALUES ('restore', 'succeeded', $1, 1, $2, $3)",
        )
        .bind(shard)
        .bind(sum)
        .bind(buckets)
        .execute(&pool)
        .await
        .unwrap();
    }
    let mut conn = pool.acquire().await.unwrap();
    stats::record_restore(&mut conn, 1234, Some(2.5))
        .await
        .unwrap();
    stats::record_restore(&mut conn, 100, None).await.unwrap();
    drop(conn);
    sqlx::query("INSERT INTO workers (id, node) VALUES ('w1', $1), ('w2', 'plain')")
        .bind("we\"ird\\node\nname")
        .execute(&pool)
        .await
        .unwrap();

    let text = stats::render_prometheus(&pool).await.unwrap();
    for (name, ty, help) in [
        (
            "volsnap_jobs_finished_total",
            "counter",
            "Jobs that reached a final state.",
        ),
        (
            "volsnap_job_duration_seconds",
            "histogram",
            "Time from a job's start to its end.",
        ),
        (
            "volsnap_jobs",
            "gauge",
            "Jobs currently in the table, by kind and state.",
        ),
        (
            "volsnap_restore_downtime_seconds",
            "histogram",
            "Time a restore kept the workload's containers stopped.",
        ),
        (
            "volsnap_restore_bytes_total",
            "counter",
            "Bytes written into volumes by restores.",
        ),
        (
            "volsnap_worker_last_heartbeat_timestamp_seconds",
            "gauge",
            "Newest heartbeat of any worker of a node.",
        ),
    ] {
        assert!(
            text.contains(&format!("# HELP {name} {help}\n# TYPE {name} {ty}\n")),
            "{name}:\n{text}"
        );
    }

    let s = |series: &str| sample(&text, series);
    assert_eq!(
        s("volsnap_jobs_finished_total{kind=\"restore\",outcome=\"succeeded\"}").as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        s("volsnap_jobs_finished_total{kind=\"capture\",outcome=\"cancelled\"}").as_deref(),
        Some("0"),
        "zero baseline: {text}"
    );
    assert_eq!(
        s("volsnap_jobs{kind=\"restore\",state=\"queued\"}").as_deref(),
        Some("0"),
        "{text}"
    );
    let h = "volsnap_job_duration_seconds";
    let l = "kind=\"restore\",outcome=\"succeeded\"";
    for (le, n) in [
        ("0.1", "0"),
        ("0.5", "1"),
        ("5", "1"),
        ("10", "2"),
        ("+Inf", "2"),
    ] {
        assert_eq!(
            s(&format!("{h}_bucket{{{l},le=\"{le}\"}}")).as_deref(),
            Some(n),
            "le {le}: {text}"
        );
    }
    assert_eq!(s(&format!("{h}_sum{{{l}}}")).as_deref(), Some("7.25"));
    assert_eq!(s(&format!("{h}_count{{{l}}}")).as_deref(), Some("2"));
    assert!(
        !text.contains("volsnap_job_duration_seconds_count{kind=\"capture\""),
        "only seen (kind, outcome) pairs have a histogram: {text}"
    );

    let d = "volsnap_restore_downtime_seconds";
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with(&format!("{d}_bucket{{")))
            .count(),
        DOWNTIME_BUCKETS.len() + 1
    );
    assert_eq!(s(&format!("{d}_bucket{{le=\"2\"}}")).as_deref(), Some("0"));
    assert_eq!(s(&format!("{d}_bucket{{le=\"3\"}}")).as_deref(), Some("1"));
    assert_eq!(s(&format!("{d}_sum")).as_deref(), Some("2.5"));
    assert_eq!(s(&format!("{d}_count")).as_deref(), Some("1"));
    assert_eq!(s("volsnap_restore_bytes_total").as_deref(), Some("1334"));

    assert!(
        text.contains(
            "volsnap_worker_last_heartbeat_timestamp_seconds{node=\"we\\\"ird\\\\node\\nname\"} "
        ),
        "escaped label value: {text}"
    );

    // Durable: pruning every job changes no counter; a node whose workers rows are gone
    // leaves the output (a recorder per scrape: no stale series).
    sqlx::query("DELETE FROM jobs")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM workers WHERE node = 'plain'")
        .execute(&pool)
        .await
        .unwrap();
    let again = stats::render_prometheus(&pool).await.unwrap();
    assert_eq!(
        sample(
            &again,
            "volsnap_jobs_finished_total{kind=\"restore\",outcome=\"succeeded\"}"
        )
        .as_deref(),
        Some("2")
    );
    assert!(!again.contains("node=\"plain\""), "{again}");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn an_empty_database_renders_baselines(pool: PgPool) {
    let text = stats::render_prometheus(&pool).await.unwrap();
    assert_eq!(
        sample(&text, "volsnap_restore_bytes_total").as_deref(),
        Some("0")
    );
    assert_eq!(
        sample(&text, "volsnap_restore_downtime_seconds_count").as_deref(),
        Some("0")
    );
    assert_eq!(
        sample(
            &text,
            "volsnap_jobs_finished_total{kind=\"restore\",outcome=\"failed\"}"
        )
        .as_deref(),
        Some("0")
    );
}
