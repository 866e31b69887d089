//! Benchmark (not a test): how fast a `GET /api/jobs/{id}?wait=` wakes up after the job
//! finishes. For each sample it enqueues a job, holds a waiting request on a running
//! server, finishes the job with an SQL UPDATE (the trigger NOTIFYs), and measures from
//! the UPDATE's commit to the answer. Prints p50/p99/max.
//!
//! Usage: wait_latency URL TOKEN [SAMPLES]   (DATABASE_URL: the server's database)

use std::time::{Duration, Instant};

use volsnap_shared::domain::{JobKind, SourceKind};
use volsnap_shared::ids::WorkloadId;
use volsnap_shared::queue::{self, NewJob};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("URL");
    let token = args.next().expect("TOKEN");
    let samples: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(200);
    let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    let client = reqwest::Client::new();

    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let w = WorkloadId::new();
        sqlx::query(
            "INSERT INTO workloads (id, name, project, stage, node, source_kind, image) \
             VALUES ($1, $2, 'bench', 'bench', 'bench-node', $3, 'img:1')",
        )
        .bind(w)
        .bind(format!("w{i}-{}", &w.to_string()[..8]))
        .bind(SourceKind::Image)
        .execute(&pool)
        .await?;
        let mut conn = pool.acquire().await?;
        let job = queue::enqueue(
            &mut conn,
            &NewJob {
                kind: JobKind::Capture,
                workload_id: w,
                snapshot_id: None,
                node: "bench-node".into(),
                batch_id: None,
                requested_by: Some("bench".into()),
            },
        )
        .await?;
        drop(conn);
        let req = client
            .get(format!("{url}/api/jobs/{}?wait=10", job.id))
            .bearer_auth(&token)
            .send();
        let waiter = tokio::spawn(async move {
            let r = req.await.expect("request");
            let at = Instant::now();
            assert!(r.status().is_success());
            let body: serde_json::Value = r.json().await.expect("json");
            assert_eq!(body["state"], "succeeded");
            at
        });
        // Let the request reach its wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
        sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = $1")
            .bind(job.id)
            .execute(&pool)
            .await?;
        let committed = Instant::now();
        let answered = waiter.await?;
        latencies.push(answered.saturating_duration_since(committed));
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "wait wake-up over {samples} samples: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    Ok(())
}
