//! A worker process with a probe handler, for queue tests and benchmarks: it runs the
//! real queue runner (`volsnap_shared::queue::run`) and records what each job
//! did in the test-owned table `queue_probe`, using the database's clock, so a test
//! can check exclusivity and fencing across processes.
//!
//! Each job: insert `start`, work for `--work-ms` in steps (each step a fenced
//! `set_phase`), insert `end`, succeed. If a fenced update reports the lease lost, it
//! inserts `fenced` and returns a failure — which the runner must not be able to record.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use volsnap_shared::queue::{JobContext, JobHandler, JobOutcome, WorkerConfig, run};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long)]
    node: String,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, default_value_t = 5)]
    work_ms: u64,
    #[arg(long, default_value_t = 5)]
    steps: u64,
    #[arg(long, default_value_t = 0.2)]
    heartbeat_secs: f64,
    #[arg(long, default_value_t = 1.0)]
    lease_secs: f64,
    #[arg(long, default_value_t = 0.5)]
    poll_secs: f64,
}

struct Probe {
    pool: sqlx::PgPool,
    work: Duration,
    steps: u64,
    worker: String,
}

impl Probe {
    async fn record(&self, ctx: &JobContext, event: &str) {
        let r = sqlx::query(
            "INSERT INTO queue_probe (job_id, workload_id, worker, pid, attempt, recovering, event, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp())",
        )
        .bind(ctx.job.id)
        .bind(ctx.job.workload_id)
        .bind(&self.worker)
        .bind(std::process::id() as i32)
        .bind(ctx.job.attempt)
        .bind(ctx.job.recovering)
        .bind(event)
        .execute(&self.pool)
        .await;
        if let Err(e) = r {
            eprintln!("queue-probe: recording {event} failed: {e}");
        }
    }
}

impl JobHandler for Probe {
    async fn run(&self, ctx: JobContext) -> JobOutcome {
        self.record(&ctx, "start").await;
        let step = self.work / self.steps.max(1) as u32;
        for i in 0..self.steps.max(1) {
            tokio::time::sleep(step).await;
            if ctx.set_phase(&format!("step {i}")).await.is_err() {
                self.record(&ctx, "fenced").await;
                return JobOutcome::failed("probe_stale", "stale owner tried to finish");
            }
        }
        self.record(&ctx, "end").await;
        JobOutcome::Succeeded
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    volsnap_shared::telemetry::init();
    let args = Args::parse();
    let mut cfg = WorkerConfig::new(&args.node);
    cfg.concurrency = args.concurrency;
    cfg.heartbeat_interval = Duration::from_secs_f64(args.heartbeat_secs);
    cfg.lease = Duration::from_secs_f64(args.lease_secs);
    cfg.poll_interval = Duration::from_secs_f64(args.poll_secs);
    cfg.shutdown_grace = Duration::from_secs(30);
    cfg.prune_after = None;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(args.concurrency as u32 * 2 + 4)
        .connect(&args.database_url)
        .await?;
    let probe = Probe {
        pool: pool.clone(),
        work: Duration::from_millis(args.work_ms),
        steps: args.steps,
        worker: cfg.worker_id.clone(),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            term.recv().await;
            shutdown.cancel();
        }
    });
    // Tell the parent we are past start-up (recovery sweep done, about to claim).
    println!("ready {}", cfg.worker_id);
    run(pool, cfg, Arc::new(probe), shutdown).await
}
