//! Benchmark (not a test): how fast a `GET /api/jobs/{id}?wait=` wakes up after the job
//! finishes. For each sample it enqueues a job, holds a waiting request on a running
//! server, finishes the job with an SQL UPDATE (the trigger NOTIFYs), and measures from
//! the UPDATE's commit to the answer. Prints p50/p99/max.
//!
//! Usage: wait_latency URL TOKEN [SAMPLES]   (DATABASE_URL: the server's database)
//!    or: wait_latency [SAMPLES]              (DATABASE_URL: any database of a server)
//!
//! The second form needs no running server: it serves the API in this process on a
//! scratch database (`volsnap_shared::scratch`), dropped at the end.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use volsnap_shared::db::tokens;
use volsnap_shared::domain::{JobKind, Role, SourceKind};
use volsnap_shared::ids::WorkloadId;
use volsnap_shared::queue::{self, NewJob};
use volsnap_shared::scratch::ScratchDb;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let samples = |s: Option<&String>| s.map_or(200, |s| s.parse().expect("SAMPLES"));
    if args.len() <= 1 {
        // No server given: serve one here, on a scratch database.
        let db = ScratchDb::create("volsnap_wait_latency").await?;
        let server = volsnap_api::build(
            db.pool().clone(),
            &volsnap_api::ServeConfig {
                addr: "127.0.0.1:0".parse()?,
                limits: Default::default(),
                token_cache_ttl: Duration::from_secs(10),
            },
        )
        .await?;
        let url = format!("http://{}", server.local_addr());
        let stop = CancellationToken::new();
        let served = tokio::spawn(server.run(stop.clone().cancelled_owned()));
        let (token, hash) = volsnap_api::auth::generate_token();
        tokens::insert(db.pool(), "wait-latency", Role::Viewer, &hash).await?;
        measure(db.pool(), &url, &token, samples(args.first())).await?;
        stop.cancel();
        served.await??;
        db.drop_database().await?;
        return Ok(());
    }
    let (url, token) = (&args[0], args.get(1).expect("TOKEN"));
    let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    measure(&pool, url, token, samples(args.get(2))).await
}

/// `samples` waits on the server at `url`, whose database `pool` is.
async fn measure(pool: &PgPool, url: &str, token: &str, samples: usize) -> anyhow::Result<()> {
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
        .execute(pool)
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
            .bearer_auth(token)
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
            .execute(pool)
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
