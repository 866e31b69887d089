//! Queue benchmark (not a test): pickup latency, trivial-job throughput, rescue time.
//!
//!     DATABASE_URL=$(scripts/pg.sh) cargo run --release -p volsnap-e2e --bin queue-bench
//!
//! Works in a scratch database `volsnap_queue_bench_<random>` (dropped at the end).
//! `BENCH_ONLY=latency|throughput|rescue` runs one part; `BENCH_RUNS` (default 5) is
//! how many throughput runs per worker count (min/median/max are printed);
//! `BENCH_CONCURRENCY` (default 32) is each worker's slot count.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use volsnap_shared::domain::{JobKind, JobState};
use volsnap_shared::ids::{JobId, WorkloadId};
use volsnap_shared::queue::{self, NewJob};
use volsnap_shared::queue::{JobContext, JobHandler, JobOutcome, WorkerConfig, WorkerStatus, run};
use volsnap_shared::scratch::ScratchDb;

const DB: &str = "volsnap_queue_bench";

#[derive(Default)]
struct Starts {
    waiting: Mutex<HashMap<JobId, oneshot::Sender<Instant>>>,
}

impl JobHandler for Starts {
    async fn run(&self, ctx: JobContext) -> JobOutcome {
        let now = Instant::now();
        if let Some(tx) = self.waiting.lock().unwrap().remove(&ctx.job.id) {
            let _ = tx.send(now);
        }
        JobOutcome::Succeeded
    }
}

struct Trivial;
impl JobHandler for Trivial {
    async fn run(&self, _ctx: JobContext) -> JobOutcome {
        JobOutcome::Succeeded
    }
}

fn cfg(node: &str, concurrency: usize) -> WorkerConfig {
    let mut c = WorkerConfig::new(node);
    c.concurrency = concurrency;
    c.heartbeat_interval = Duration::from_secs(1);
    c.lease = Duration::from_secs(10);
    c.poll_interval = Duration::from_secs(5);
    c.prune_after = None;
    c
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn workloads(pool: &PgPool, n: i64, node: &str) -> Vec<WorkloadId> {
    sqlx::query_scalar(
        "INSERT INTO workloads (id, name, project, stage, node, source_kind, image) \
         SELECT gen_random_uuid(), 'w' || g, 'bench', 's', $2, 'image', 'x' \
         FROM generate_series(1, $1) g ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(n)
    .bind(node)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn reset(pool: &PgPool) {
    sqlx::query("TRUNCATE jobs, workloads, batches, workers, job_outcome_stats CASCADE")
        .execute(pool)
        .await
        .unwrap();
}

async fn pickup_latency(pool: &PgPool) {
    reset(pool).await;
    let loads = workloads(pool, 1000, "bench").await;
    let starts = Arc::new(Starts::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(
        pool.clone(),
        cfg("bench", 4),
        starts.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut lat = Vec::new();
    for (i, w) in loads.iter().enumerate() {
        let id = JobId::new();
        let (tx, rx) = oneshot::channel();
        starts.waiting.lock().unwrap().insert(id, tx);
        let mut t = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO jobs (id, kind, workload_id, node) VALUES ($1, 'capture', $2, 'bench')",
        )
        .bind(id)
        .bind(w)
        .execute(&mut *t)
        .await
        .unwrap();
        t.commit().await.unwrap();
        let committed = Instant::now();
        let started = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        if i >= 50 {
            lat.push(started.saturating_duration_since(committed));
        }
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
    lat.sort();
    println!(
        "pickup latency (commit -> handler start, LISTEN/NOTIFY, {} jobs): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99)
    );
}

async fn throughput(
    pool: &PgPool,
    url: &PgConnectOptions,
    runners: usize,
    concurrency: usize,
    n: i64,
) -> f64 {
    reset(pool).await;
    let loads = workloads(pool, n, "bench").await;
    sqlx::query(
        "INSERT INTO jobs (id, kind, workload_id, node, created_at) \
         SELECT gen_random_uuid(), 'capture', w, 'bench', clock_timestamp() FROM unnest($1::uuid[]) w",
    )
    .bind(&loads)
    .execute(pool)
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let syncs0 = wal_syncs(pool).await;
    let t0 = Instant::now();
    let mut handles = vec![];
    let mut statuses = vec![];
    for _ in 0..runners {
        // Each runner has its own pool, as a separate process would.
        let p = PgPoolOptions::new()
            .max_connections(concurrency as u32 * 2 + 4)
            .test_before_acquire(false)
            .connect_with(url.clone())
            .await
            .unwrap();
        let c = cfg("bench", concurrency);
        statuses.push(c.status.clone());
        handles.push(tokio::spawn(run(p, c, Arc::new(Trivial), stop.clone())));
    }
    let mut last_report = Instant::now();
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(finished), 0)::int8 FROM job_outcome_stats")
                .fetch_one(pool)
                .await
                .unwrap();
        if done == n {
            break;
        }
        // A run this slow is stalled, not slow: say what the queue and the server are
        // doing, every 2 s.
        if t0.elapsed() > Duration::from_secs(8) && last_report.elapsed() > Duration::from_secs(2) {
            last_report = Instant::now();
            let states: Vec<String> = sqlx::query_scalar(
                "SELECT state || ' ' || count(*) || CASE WHEN bool_or(recovering) THEN ' (some recovering)' ELSE '' END \
                 FROM jobs GROUP BY state ORDER BY state",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            let waits: Vec<String> = sqlx::query_scalar(
                "SELECT w || ' x' || count(*) FROM (SELECT coalesce(wait_event_type || ':' || wait_event, 'cpu') \
                   || ' ' || state AS w FROM pg_stat_activity \
                   WHERE datname = current_database() AND pid <> pg_backend_pid()) a \
                 GROUP BY w ORDER BY count(*) DESC",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            let held: Vec<usize> = statuses
                .iter()
                .map(|s| s.running_jobs.load(Ordering::Relaxed))
                .collect();
            println!(
                "  stalled? {:.0} s: {done} finished; jobs: {}; backends: {}; handlers running per worker: {held:?}",
                t0.elapsed().as_secs_f64(),
                states.join(", "),
                waits.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let el = t0.elapsed();
    let syncs = wal_syncs(pool).await - syncs0;
    stop.cancel();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let sum = |f: fn(&WorkerStatus) -> u64| statuses.iter().map(|s| f(s)).sum::<u64>() as f64;
    let claims = sum(|s| s.claim_commits.load(Ordering::Relaxed));
    let finishes = sum(|s| s.finish_commits.load(Ordering::Relaxed));
    let rate = n as f64 / el.as_secs_f64();
    println!(
        "  {claims} claim commits ({:.1} jobs each), {finishes} finish commits ({:.1} jobs each)",
        n as f64 / claims,
        n as f64 / finishes
    );
    println!(
        "throughput: {runners} worker(s) x concurrency {concurrency}: {n} trivial jobs in {:.2} s = {rate:.0} jobs/s; \
         {syncs} WAL flushes = {:.3} per job",
        el.as_secs_f64(),
        syncs as f64 / n as f64,
    );
    rate
}

/// WAL flushes (fdatasync calls) the server has made: the cost that bounds durable
/// commits on a slow disk, independent of how fast this machine's disk is today.
async fn wal_syncs(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT wal_sync FROM pg_stat_wal")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// SIGKILL a queue-probe mid-job and time until its job runs again (as a recovery).
async fn rescue_time(pool: &PgPool, url: &str, lease: f64, restart: bool) {
    reset(pool).await;
    let probe = std::env::current_exe()
        .unwrap()
        .with_file_name("queue-probe");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS queue_probe (job_id uuid, workload_id uuid, worker text, pid int, \
         attempt int, recovering bool, event text, at timestamptz)",
    )
    .execute(pool)
    .await
    .unwrap();
    let hb = format!("{}", lease / 5.0);
    let lease_s = format!("{lease}");
    let spawn = |work: &str| {
        Command::new(&probe)
            .args([
                "--database-url",
                url,
                "--node",
                "bench",
                "--work-ms",
                work,
                "--steps",
                "1000",
            ])
            .args([
                "--heartbeat-secs",
                &hb,
                "--lease-secs",
                &lease_s,
                "--poll-secs",
                "5",
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut victim = spawn("600000");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w = workloads(pool, 1, "bench").await[0];
    let mut conn = pool.acquire().await.unwrap();
    let job = queue::enqueue(
        &mut conn,
        &NewJob {
            kind: JobKind::Capture,
            workload_id: w,
            snapshot_id: None,
            node: "bench".into(),
            batch_id: None,
            requested_by: None,
        },
    )
    .await
    .unwrap();
    drop(conn);
    loop {
        let (st, owner): (JobState, Option<String>) =
            sqlx::query_as("SELECT state, worker_id FROM jobs WHERE id = $1")
                .bind(job.id)
                .fetch_one(pool)
                .await
                .unwrap();
        if st == JobState::Running
            && owner.is_some_and(|o| o.contains(&format!(":{}:", victim.id())))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // With `restart` the survivor starts after the kill (a restarted worker); without,
    // it is already running and only its periodic rescue pass can pick the job up.
    let mut survivor = if restart { None } else { Some(spawn("1")) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    victim.kill().unwrap();
    let killed = Instant::now();
    victim.wait().unwrap();
    if restart {
        survivor = Some(spawn("1"));
    }
    loop {
        let (attempt, st): (i32, JobState) =
            sqlx::query_as("SELECT attempt, state FROM jobs WHERE id = $1")
                .bind(job.id)
                .fetch_one(pool)
                .await
                .unwrap();
        if attempt >= 2 && st != JobState::Queued {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let el = killed.elapsed();
    let mut s = survivor.unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = s.wait();
    println!(
        "rescue: lease {lease:.1} s, heartbeat {:.2} s, {}: job re-claimed {:.2} s after SIGKILL",
        lease / 5.0,
        if restart {
            "worker restarted after the kill (start-up orphan check)"
        } else {
            "a second worker already running (lease expiry + rescue pass)"
        },
        el.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    volsnap_shared::telemetry::init();
    // BENCH_COMMIT_DELAY_US=N emulates a slower disk: the server waits N µs before
    // every WAL flush (commit_delay with commit_siblings = 0), so a flush costs at
    // least that much, as on a disk that manages 1e6/N flushes a second.
    let mut scratch = ScratchDb::builder(DB).max_connections(8);
    let commit_delay = std::env::var("BENCH_COMMIT_DELAY_US")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|us| *us > 0);
    if let Some(us) = commit_delay {
        scratch = scratch
            .setting("commit_delay", us.into())
            .setting("commit_siblings", 0);
    }
    let db = scratch.create().await.unwrap();
    if let Some(us) = commit_delay {
        println!("emulating a slow disk: commit_delay = {us} µs before every WAL flush");
    }
    let opts = db.options().clone();
    let url = db.url().to_owned();
    let pool = db.pool().clone();

    let env_num = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    // BENCH_ONLY=latency|throughput|rescue runs one part; unset runs all three.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
    if part("latency") {
        pickup_latency(&pool).await;
    }
    if part("throughput") {
        let conc = env_num("BENCH_CONCURRENCY", 32);
        let runs = env_num("BENCH_RUNS", 5).max(1);
        for runners in [1, 4] {
            let mut rates: Vec<f64> = Vec::with_capacity(runs);
            for _ in 0..runs {
                rates.push(throughput(&pool, &opts, runners, conc, 20_000).await);
            }
            rates.sort_by(f64::total_cmp);
            println!(
                "throughput summary: {runners} worker(s) x concurrency {conc}, {runs} runs: min {:.0}, median {:.0}, max {:.0} jobs/s",
                rates[0],
                rates[runs / 2],
                rates[runs - 1]
            );
        }
    }
    if part("rescue") {
        for lease in [1.0, 2.0, 4.0] {
            rescue_time(&pool, &url, lease, false).await;
        }
        rescue_time(&pool, &url, 4.0, true).await;
    }
    db.drop_database().await.unwrap();
}
