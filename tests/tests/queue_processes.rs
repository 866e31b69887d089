//! The queue across real processes: several `queue-probe` workers (the real runner
//! with a recording handler) against a real PostgreSQL, killed and stopped with
//! real signals.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use volsnap_shared::domain::JobState;
use volsnap_shared::ids::{JobId, WorkloadId};
use volsnap_shared::queue::{self, EnqueueError};

#[path = "../../shared/tests/support/mod.rs"]
mod support;
use support::{enqueue, new_job, wait_until, workload};

/// `wait_until`, but a timeout first prints the jobs, the workers and the probes'
/// records, so a failure on a loaded machine can be read afterwards.
async fn wait_or_dump<F, Fut>(pool: &PgPool, what: &str, timeout: Duration, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    use futures::FutureExt as _;
    let waited = std::panic::AssertUnwindSafe(wait_until(what, timeout, f))
        .catch_unwind()
        .await;
    if let Err(panic) = waited {
        for (name, sql) in [
            ("jobs", "SELECT row_to_json(t)::text FROM jobs t"),
            ("workers", "SELECT row_to_json(t)::text FROM workers t"),
            (
                "probe events",
                "SELECT row_to_json(t)::text FROM queue_probe t ORDER BY at",
            ),
        ] {
            let rows: Vec<String> = sqlx::query_scalar(sql)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| vec![format!("(could not read: {e})")]);
            eprintln!("--- {name} at the timeout:\n{}", rows.join("\n"));
        }
        std::panic::resume_unwind(panic);
    }
}

const PROBE: &str = env!("CARGO_BIN_EXE_queue-probe");

/// The URL of the per-test database sqlx::test created.
fn url_of(opts: &PgConnectOptions) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(opts.get_database().expect("test database name"));
    url.to_string()
}

struct Worker(Child);

impl Worker {
    fn spawn(url: &str, node: &str, extra: &[&str]) -> Worker {
        let child = Command::new(PROBE)
            .args(["--database-url", url, "--node", node])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn queue-probe");
        Worker(child)
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }

    fn signal(&self, s: Signal) {
        kill(self.pid(), s).expect("signal worker");
    }

    fn stop(mut self) {
        let _ = kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        panic!("worker did not stop on SIGTERM within 20 s");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn setup(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE queue_probe (job_id uuid, workload_id uuid, worker text, pid int, \
         attempt int, recovering bool, event text, at timestamptz)",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// How many `event` records the probes wrote for `job` in the given attempts.
async fn probe_events(
    pool: &PgPool,
    job: JobId,
    event: &str,
    attempts: std::ops::RangeInclusive<i32>,
) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM queue_probe WHERE job_id = $1 AND event = $2 \
         AND attempt BETWEEN $3 AND $4",
    )
    .bind(job)
    .bind(event)
    .bind(*attempts.start())
    .bind(*attempts.end())
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn state(pool: &PgPool, id: JobId) -> (JobState, bool, i32, String) {
    sqlx::query_as("SELECT state, recovering, attempt, node FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Three worker processes on one node (plus one on another node) run 300 jobs over 10
/// workloads, enqueued as fast as single-flight allows: every job runs exactly once,
/// no two jobs of a workload overlap, and no job crosses nodes.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn workers_never_share_a_job_or_a_workload(
    _: sqlx::postgres::PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    setup(&pool).await;
    let url = url_of(&opts);
    let workers: Vec<Worker> = (0..3)
        .map(|_| {
            Worker::spawn(
                &url,
                "node-a",
                &["--concurrency", "4", "--work-ms", "4", "--steps", "2"],
            )
        })
        .collect();
    let other = Worker::spawn(&url, "node-b", &["--concurrency", "4", "--work-ms", "1"]);

    let loads: Vec<WorkloadId> =
        futures::future::join_all((0..10).map(|_| workload(&pool, "node-a"))).await;
    let per_workload = 30;
    let mut feeders = Vec::new();
    for w in loads.clone() {
        let pool = pool.clone();
        feeders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while ids.len() < per_workload {
                match enqueue(&pool, &new_job(w, "node-a")).await {
                    Ok(id) => ids.push(id),
                    Err(EnqueueError::AlreadyActive { .. }) => {
                        tokio::time::sleep(Duration::from_millis(2)).await
                    }
                    Err(e) => panic!("enqueue: {e}"),
                }
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for f in feeders {
        all.extend(f.await.unwrap());
    }
    assert_eq!(all.len(), 300);
    wait_or_dump(
        &pool,
        "all 300 jobs final",
        Duration::from_secs(120),
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
                .fetch_one(&pool)
                .await
                .unwrap();
            n == 300
        },
    )
    .await;

    // Exactly one start and one end per job, all on node-a workers.
    let dup: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM queue_probe WHERE event = 'start' \
         GROUP BY job_id HAVING count(*) <> 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dup, 0, "a job was started more than once");
    let started: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT job_id) FROM queue_probe WHERE event = 'end'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(started, 300);
    let wrong_node: i64 =
        sqlx::query_scalar("SELECT count(*) FROM queue_probe WHERE worker NOT LIKE 'node-a:%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(wrong_node, 0, "a node-b worker ran a node-a job");
    let distinct_workers: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT worker) FROM queue_probe")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        distinct_workers >= 2,
        "the load was not spread over processes"
    );
    // No two runs of one workload overlap in time (database clock).
    let overlaps: i64 = sqlx::query_scalar(
        "WITH runs AS (SELECT s.job_id, s.workload_id, s.at AS s_at, e.at AS e_at \
           FROM queue_probe s JOIN queue_probe e ON e.job_id = s.job_id AND e.event = 'end' \
           WHERE s.event = 'start') \
         SELECT count(*) FROM runs a JOIN runs b ON a.workload_id = b.workload_id \
           AND a.job_id < b.job_id AND a.s_at < b.e_at AND b.s_at < a.e_at",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(overlaps, 0, "two jobs of one workload ran at once");
    for w in workers {
        w.stop();
    }
    other.stop();
}

/// SIGKILL mid-job: after the lease the job is back on its node as queued+recovering,
/// and the next claim runs it as a recovery.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn killed_worker_job_comes_back_for_recovery(
    _: sqlx::postgres::PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    setup(&pool).await;
    let url = url_of(&opts);
    let slow = [
        "--work-ms",
        "60000",
        "--steps",
        "600",
        "--lease-secs",
        "1",
        "--heartbeat-secs",
        "0.2",
    ];
    let victim = Worker::spawn(&url, "node-a", &slow);
    let w = workload(&pool, "node-a").await;
    let job = enqueue(&pool, &new_job(w, "node-a")).await.unwrap();
    wait_or_dump(&pool, "job running", Duration::from_secs(20), || async {
        state(&pool, job).await.0 == JobState::Running
    })
    .await;
    victim.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    drop(victim);

    // Nobody else runs yet: rescue it ourselves as a worker's maintenance pass would.
    wait_or_dump(&pool, "job rescued", Duration::from_secs(10), || async {
        queue::rescue_expired(&pool, Duration::from_secs(1))
            .await
            .unwrap();
        state(&pool, job).await.0 == JobState::Queued
    })
    .await;
    assert!(
        killed_at.elapsed() >= Duration::from_millis(600),
        "rescued before the lease ran out"
    );
    let (st, recovering, attempt, node) = state(&pool, job).await;
    assert_eq!(
        (st, recovering, attempt, node.as_str()),
        (JobState::Queued, true, 1, "node-a")
    );

    // A new worker on the node claims it as a recovery (attempt 2) and finishes it.
    let fresh = Worker::spawn(&url, "node-a", &["--work-ms", "10"]);
    wait_or_dump(
        &pool,
        "recovered job done",
        Duration::from_secs(20),
        || async { state(&pool, job).await.0 == JobState::Succeeded },
    )
    .await;
    let (recovering_run, attempt): (bool, i32) = sqlx::query_as(
        "SELECT recovering, attempt FROM queue_probe WHERE job_id = $1 AND event = 'start' ORDER BY at DESC LIMIT 1",
    )
    .bind(job)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(recovering_run, "the re-run was not flagged as a recovery");
    assert_eq!(attempt, 2);
    fresh.stop();
}

/// A worker frozen (SIGSTOP) mid-job loses its lease; another worker cannot take the
/// job while the frozen one still holds the workload's advisory lock; when the frozen
/// one resumes, its updates are fenced off; once it exits, the job is recovered.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn stale_owner_is_fenced_and_locked_out(
    _: sqlx::postgres::PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    setup(&pool).await;
    let url = url_of(&opts);
    let stale = Worker::spawn(
        &url,
        "node-a",
        &[
            "--work-ms",
            "4000",
            "--steps",
            "40",
            "--lease-secs",
            "1",
            "--heartbeat-secs",
            "0.2",
        ],
    );
    let w = workload(&pool, "node-a").await;
    let job = enqueue(&pool, &new_job(w, "node-a")).await.unwrap();
    // Its handler started, so it holds the workload lock. (Waiting for `running` alone
    // would race: the claim commits before the lock is taken, and a worker frozen in
    // between holds nothing — then the rival rightly recovers the job at once.)
    wait_or_dump(
        &pool,
        "handler started",
        Duration::from_secs(20),
        || async { probe_events(&pool, job, "start", 1..=1).await == 1 },
    )
    .await;
    stale.signal(Signal::SIGSTOP);

    // A second worker rescues (lease 1 s) and tries to claim; the lock keeps it out.
    let rival = Worker::spawn(
        &url,
        "node-a",
        &[
            "--work-ms",
            "10",
            "--lease-secs",
            "1",
            "--heartbeat-secs",
            "0.2",
            "--poll-secs",
            "0.2",
        ],
    );
    wait_or_dump(
        &pool,
        "rival claimed and handed back",
        Duration::from_secs(20),
        || async {
            let (st, _, attempt, _) = state(&pool, job).await;
            attempt >= 2 && st == JobState::Queued
        },
    )
    .await;
    let rival_starts = probe_events(&pool, job, "start", 2..=i32::MAX).await;
    assert_eq!(
        rival_starts, 0,
        "a second worker ran the job while the first held its lock"
    );

    // Resume the stale owner: its next fenced update fails; its failure is not recorded.
    stale.signal(Signal::SIGCONT);
    wait_or_dump(
        &pool,
        "stale owner noticed it was fenced",
        Duration::from_secs(20),
        || async { probe_events(&pool, job, "fenced", 1..=1).await == 1 },
    )
    .await;
    wait_or_dump(
        &pool,
        "job recovered by the rival",
        Duration::from_secs(30),
        || async { state(&pool, job).await.0 == JobState::Succeeded },
    )
    .await;
    let (code, worker): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT error_code, worker_id FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(code, None, "the stale owner's failure overwrote the job");
    let recovered_by: (bool, String) = sqlx::query_as(
        "SELECT recovering, worker FROM queue_probe WHERE job_id = $1 AND event = 'end'",
    )
    .bind(job)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(recovered_by.0, "the rival's run was not a recovery");
    assert_eq!(worker.as_deref(), Some(recovered_by.1.as_str()));
    stale.stop();
    rival.stop();
}
