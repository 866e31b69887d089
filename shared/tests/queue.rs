//! The queue against a real PostgreSQL (one fresh database per test), in process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use volsnap_shared::domain::JobState;
use volsnap_shared::ids::{BatchId, JobId, WorkloadId};
use volsnap_shared::queue::{
    self, CancelOutcome, EnqueueError, JobContext, JobEvents, JobHandler, JobOutcome, NewBatch,
    WorkerConfig, run,
};

mod support;
use support::{enqueue, new_job, wait_until, workload};

fn fast_config(node: &str) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(node);
    cfg.concurrency = 4;
    cfg.heartbeat_interval = Duration::from_millis(100);
    cfg.lease = Duration::from_millis(800);
    cfg.poll_interval = Duration::from_millis(200);
    cfg.shutdown_grace = Duration::from_secs(10);
    cfg
}

/// Records which jobs ran and how many ran at once per batch.
#[derive(Default)]
struct Recorder {
    ran: Mutex<Vec<JobId>>,
    running_per_batch: Mutex<HashMap<BatchId, (usize, usize)>>,
    work: Duration,
    fail: bool,
}

impl JobHandler for Recorder {
    async fn run(&self, ctx: JobContext) -> JobOutcome {
        self.ran.lock().unwrap().push(ctx.job.id);
        if let Some(b) = ctx.job.batch_id {
            let mut m = self.running_per_batch.lock().unwrap();
            let e = m.entry(b).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
        tokio::time::sleep(self.work).await;
        if let Some(b) = ctx.job.batch_id {
            self.running_per_batch
                .lock()
                .unwrap()
                .get_mut(&b)
                .unwrap()
                .0 -= 1;
        }
        if self.fail {
            JobOutcome::failed("probe_failure", "failed on purpose")
        } else {
            JobOutcome::Succeeded
        }
    }
}

async fn job_state(pool: &PgPool, id: JobId) -> JobState {
    queue::get_job(pool, id).await.unwrap().unwrap().state
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn fifty_concurrent_enqueues_single_flight(pool: PgPool) {
    let w = workload(&pool, "n1").await;
    let results = futures::future::join_all((0..50).map(|_| {
        let pool = pool.clone();
        async move {
            // Each in its own transaction, as the API does.
            let mut tx = pool.begin().await.unwrap();
            let r = queue::enqueue(&mut tx, &new_job(w, "n1"))
                .await
                .map(|j| j.id);
            tx.commit().await.unwrap();
            r
        }
    }))
    .await;
    let ok: Vec<JobId> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(ok.len(), 1, "exactly one enqueue must win");
    let conflicts: Vec<JobId> = results
        .iter()
        .filter_map(|r| match r {
            Err(EnqueueError::AlreadyActive { active_job }) => Some(*active_job),
            _ => None,
        })
        .collect();
    assert_eq!(conflicts.len(), 49);
    assert!(
        conflicts.iter().all(|j| *j == ok[0]),
        "every conflict names the winner"
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn conflict_leaves_the_callers_transaction_usable(pool: PgPool) {
    let w = workload(&pool, "n1").await;
    let first = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let err = queue::enqueue(&mut tx, &new_job(w, "n1"))
        .await
        .unwrap_err();
    assert!(matches!(err, EnqueueError::AlreadyActive { active_job } if active_job == first));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(one, 1);
    tx.commit().await.unwrap();
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn rolled_back_enqueue_leaves_no_job(pool: PgPool) {
    let w = workload(&pool, "n1").await;
    let mut tx = pool.begin().await.unwrap();
    let job = queue::enqueue(&mut tx, &new_job(w, "n1")).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(queue::get_job(&pool, job.id).await.unwrap().is_none());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    // and the workload is free for a new job
    enqueue(&pool, &new_job(w, "n1")).await.unwrap();
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_node_only_runs_its_own_jobs(pool: PgPool) {
    let wa = workload(&pool, "node-a").await;
    let wb = workload(&pool, "node-b").await;
    let ja = enqueue(&pool, &new_job(wa, "node-a")).await.unwrap();
    let jb = enqueue(&pool, &new_job(wb, "node-b")).await.unwrap();
    let rec = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(
        pool.clone(),
        fast_config("node-a"),
        rec.clone(),
        stop.clone(),
    ));
    wait_until("node-a's job", Duration::from_secs(10), || async {
        job_state(&pool, ja).await == JobState::Succeeded
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        job_state(&pool, jb).await,
        JobState::Queued,
        "node-a ran node-b's job"
    );
    assert_eq!(*rec.ran.lock().unwrap(), vec![ja]);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn wait_for_final_wakes_on_notification(pool: PgPool) {
    let w = workload(&pool, "n1").await;
    let id = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    let events = JobEvents::start(pool.clone()).await.unwrap();
    // Deadline first: still queued after 300 ms.
    let t = Instant::now();
    let job = events
        .wait_for_final(id, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert!(t.elapsed() >= Duration::from_millis(300));
    // Then a finish 500 ms from now must wake the waiter promptly.
    let p = pool.clone();
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE id = $1")
            .bind(id)
            .execute(&p)
            .await
            .unwrap();
        Instant::now()
    });
    let job = events
        .wait_for_final(id, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let woke = Instant::now();
    let finished = finisher.await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    let lag = woke.duration_since(finished);
    assert!(
        lag < Duration::from_millis(200),
        "woken {lag:?} after the finish"
    );
    assert!(
        events
            .wait_for_final(JobId::new(), Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn cancel_queued_and_running_jobs(pool: PgPool) {
    let w1 = workload(&pool, "n1").await;
    let queued = enqueue(&pool, &new_job(w1, "n1")).await.unwrap();
    assert!(
        matches!(queue::cancel(&pool, queued).await.unwrap(), CancelOutcome::Cancelled(j) if j.state == JobState::Cancelled)
    );
    assert!(matches!(
        queue::cancel(&pool, queued).await.unwrap(),
        CancelOutcome::AlreadyFinal(_)
    ));
    assert!(matches!(
        queue::cancel(&pool, JobId::new()).await.unwrap(),
        CancelOutcome::NotFound
    ));

    // A running job: cancel before its point of no return is honoured, after is refused.
    struct Gate {
        passed: Mutex<Vec<Result<(), String>>>,
    }
    impl JobHandler for Gate {
        async fn run(&self, ctx: JobContext) -> JobOutcome {
            // Wait for the test's cancel request (or 1.5 s) before the gate.
            for _ in 0..75 {
                if ctx.cancel_requested().await.unwrap() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let r = ctx.enter_point_of_no_return().await;
            let cancelled = r.is_err();
            self.passed
                .lock()
                .unwrap()
                .push(r.map_err(|e| e.to_string()));
            if cancelled {
                return JobOutcome::Cancelled;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            JobOutcome::Succeeded
        }
    }
    let gate = Arc::new(Gate {
        passed: Mutex::default(),
    });
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(
        pool.clone(),
        fast_config("n1"),
        gate.clone(),
        stop.clone(),
    ));

    let w2 = workload(&pool, "n1").await;
    let early = enqueue(&pool, &new_job(w2, "n1")).await.unwrap();
    wait_until("running", Duration::from_secs(10), || async {
        job_state(&pool, early).await == JobState::Running
    })
    .await;
    assert!(matches!(
        queue::cancel(&pool, early).await.unwrap(),
        CancelOutcome::Requested(_)
    ));
    wait_until("cancelled", Duration::from_secs(10), || async {
        job_state(&pool, early).await == JobState::Cancelled
    })
    .await;

    let w3 = workload(&pool, "n1").await;
    let late = enqueue(&pool, &new_job(w3, "n1")).await.unwrap();
    wait_until("past the gate", Duration::from_secs(10), || async {
        queue::get_job(&pool, late)
            .await
            .unwrap()
            .unwrap()
            .past_point_of_no_return
    })
    .await;
    assert!(matches!(
        queue::cancel(&pool, late).await.unwrap(),
        CancelOutcome::TooLate(_)
    ));
    wait_until("late job done", Duration::from_secs(10), || async {
        job_state(&pool, late).await == JobState::Succeeded
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let passed = gate.passed.lock().unwrap();
    assert_eq!(passed.len(), 2);
    assert!(passed[0].is_err() && passed[1].is_ok());
}

async fn batch(
    pool: &PgPool,
    n: usize,
    max_parallel: Option<i32>,
    stop_after: Option<i32>,
) -> (BatchId, Vec<JobId>) {
    let mut tx = pool.begin().await.unwrap();
    let b = queue::create_batch(
        &mut tx,
        &NewBatch {
            requested_by: None,
            item_count: n as i32,
            max_parallel,
            stop_after_failures: stop_after,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut ids = vec![];
    for _ in 0..n {
        let w = workload(pool, "n1").await;
        let mut j = new_job(w, "n1");
        j.batch_id = Some(b);
        ids.push(enqueue(pool, &j).await.unwrap());
    }
    (b, ids)
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn batch_max_parallel_holds_across_workers(pool: PgPool) {
    let (b, ids) = batch(&pool, 24, Some(3), None).await;
    let rec = Arc::new(Recorder {
        work: Duration::from_millis(60),
        ..Default::default()
    });
    let stop = CancellationToken::new();
    // Two runners, 8 slots each: without the limit up to 16 would run at once.
    let mut workers = vec![];
    for _ in 0..2 {
        let mut cfg = fast_config("n1");
        cfg.concurrency = 8;
        // Each runner has its own pool, as a separate process would.
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect_with((*pool.connect_options()).clone())
            .await
            .unwrap();
        workers.push(tokio::spawn(run(own, cfg, rec.clone(), stop.clone())));
    }
    wait_until("batch done", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE batch_id = $1 AND state = 'succeeded'",
        )
        .bind(b)
        .fetch_one(&pool)
        .await
        .unwrap();
        n == ids.len() as i64
    })
    .await;
    stop.cancel();
    for w in workers {
        w.await.unwrap().unwrap();
    }
    let peak = rec.running_per_batch.lock().unwrap()[&b].1;
    assert!(
        peak <= 3,
        "{peak} jobs of a max_parallel=3 batch ran at once"
    );
    assert!(peak >= 2, "the batch never ran in parallel (peak {peak})");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn batch_stops_after_failures(pool: PgPool) {
    let (b, ids) = batch(&pool, 20, Some(2), Some(3)).await;
    let rec = Arc::new(Recorder {
        work: Duration::from_millis(20),
        fail: true,
        ..Default::default()
    });
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(
        pool.clone(),
        fast_config("n1"),
        rec.clone(),
        stop.clone(),
    ));
    wait_until("batch final", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE batch_id = $1 AND state IN ('queued','running')",
        )
        .bind(b)
        .fetch_one(&pool)
        .await
        .unwrap();
        n == 0
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let counts: Vec<(JobState, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM jobs WHERE batch_id = $1 GROUP BY state ORDER BY state",
    )
    .bind(b)
    .fetch_all(&pool)
    .await
    .unwrap();
    let failed = counts
        .iter()
        .find(|c| c.0 == JobState::Failed)
        .map_or(0, |c| c.1);
    let cancelled = counts
        .iter()
        .find(|c| c.0 == JobState::Cancelled)
        .map_or(0, |c| c.1);
    // With 2 in flight when the third failure lands, at most 4 can have failed.
    assert!((3..=4).contains(&failed), "failed = {failed}");
    assert_eq!(failed + cancelled, ids.len() as i64);
    // The durable counters saw every one of them.
    let metrics = queue::stats::render_prometheus(&pool).await.unwrap();
    assert!(
        metrics.contains(&format!(
            "volsnap_jobs_finished_total{{kind=\"capture\",outcome=\"failed\"}} {failed}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "volsnap_jobs_finished_total{{kind=\"capture\",outcome=\"cancelled\"}} {cancelled}"
    )));
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn metrics_survive_pruning(pool: PgPool) {
    let w = workload(&pool, "n1").await;
    let id = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    let rec = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(pool.clone(), fast_config("n1"), rec, stop.clone()));
    wait_until("done", Duration::from_secs(10), || async {
        job_state(&pool, id).await == JobState::Succeeded
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '2 days', started_at = now() - interval '2 days'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        queue::prune_finished(&pool, Duration::from_secs(86_400))
            .await
            .unwrap(),
        1
    );
    let m = queue::stats::render_prometheus(&pool).await.unwrap();
    assert!(
        m.contains("volsnap_jobs_finished_total{kind=\"capture\",outcome=\"succeeded\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("volsnap_job_duration_seconds_count{kind=\"capture\",outcome=\"succeeded\"} 1"),
        "{m}"
    );
    assert!(m.contains("volsnap_jobs{kind=\"capture\",state=\"succeeded\"} 0"));
    assert!(m.contains("volsnap_worker_last_heartbeat_timestamp_seconds{node=\"n1\"}"));
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn graceful_stop_requeues_or_finishes(pool: PgPool) {
    // A handler that requeues on shutdown before its (never reached) point of no return.
    struct Polite;
    impl JobHandler for Polite {
        async fn run(&self, ctx: JobContext) -> JobOutcome {
            ctx.shutdown.cancelled().await;
            JobOutcome::Requeue
        }
    }
    let w = workload(&pool, "n1").await;
    let id = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(
        pool.clone(),
        fast_config("n1"),
        Arc::new(Polite),
        stop.clone(),
    ));
    wait_until("running", Duration::from_secs(10), || async {
        job_state(&pool, id).await == JobState::Running
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let job = queue::get_job(&pool, id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert!(!job.recovering);
    // the advisory lock was released: a fresh worker can run it
    let rec = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(pool.clone(), fast_config("n1"), rec, stop.clone()));
    wait_until("done", Duration::from_secs(10), || async {
        job_state(&pool, id).await == JobState::Succeeded
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn panicking_handler_queues_for_recovery(pool: PgPool) {
    struct Boom;
    impl JobHandler for Boom {
        async fn run(&self, ctx: JobContext) -> JobOutcome {
            if !ctx.job.recovering {
                panic!("handler bug");
            }
            JobOutcome::Succeeded
        }
    }
    let w = workload(&pool, "n1").await;
    let id = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(
        pool.clone(),
        fast_config("n1"),
        Arc::new(Boom),
        stop.clone(),
    ));
    wait_until("recovered", Duration::from_secs(10), || async {
        job_state(&pool, id).await == JobState::Succeeded
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(queue::get_job(&pool, id).await.unwrap().unwrap().attempt, 2);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn schema_check_refuses_a_database_that_is_behind(pool: PgPool) {
    volsnap_shared::database::ensure_migrated(&pool)
        .await
        .unwrap();
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = volsnap_shared::database::ensure_migrated(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("volsnap-api migrate"), "{err}");
}

/// Two workloads whose ids fold to the same advisory-lock key, both queued on one
/// worker: the process's shared lock connection must not grant the key twice (session
/// locks are re-entrant), so their jobs run one after the other.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn one_process_never_holds_a_lock_key_twice(pool: PgPool) {
    struct Spans(Mutex<Vec<(Instant, Instant)>>);
    impl JobHandler for Spans {
        async fn run(&self, _ctx: JobContext) -> JobOutcome {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.0.lock().unwrap().push((start, Instant::now()));
            JobOutcome::Succeeded
        }
    }
    let w1 = workload(&pool, "n1").await;
    // Flip the same bit in two 32-bit chunks: the folded key stays the same.
    let w2 = WorkloadId(uuid::Uuid::from_u128(
        w1.0.as_u128() ^ (1u128 << 100) ^ (1u128 << 68),
    ));
    assert_eq!(queue::workload_lock_key(w1), queue::workload_lock_key(w2));
    sqlx::query(
        "INSERT INTO workloads (id, name, project, stage, node, source_kind, image) \
         VALUES ($1, 'twin', 'p', 's', 'n1', 'image', 'busybox')",
    )
    .bind(w2)
    .execute(&pool)
    .await
    .unwrap();
    let j1 = enqueue(&pool, &new_job(w1, "n1")).await.unwrap();
    let j2 = enqueue(&pool, &new_job(w2, "n1")).await.unwrap();
    let spans = Arc::new(Spans(Mutex::default()));
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(
        pool.clone(),
        fast_config("n1"),
        spans.clone(),
        stop.clone(),
    ));
    wait_until("both done", Duration::from_secs(20), || async {
        job_state(&pool, j1).await == JobState::Succeeded
            && job_state(&pool, j2).await == JobState::Succeeded
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let s = spans.0.lock().unwrap();
    assert_eq!(s.len(), 2);
    let overlap = s[0].0 < s[1].1 && s[1].0 < s[0].1;
    assert!(!overlap, "two jobs with one lock key ran at once: {s:?}");
}

/// If the connection holding the workload locks dies, every job holding a lock is told
/// its lease is lost.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn losing_the_lock_connection_loses_the_lease(pool: PgPool) {
    struct Watch(Mutex<Option<bool>>);
    impl JobHandler for Watch {
        async fn run(&self, ctx: JobContext) -> JobOutcome {
            let lost = tokio::time::timeout(Duration::from_secs(10), ctx.lease_lost.cancelled())
                .await
                .is_ok();
            *self.0.lock().unwrap() = Some(lost);
            JobOutcome::Abandon
        }
    }
    let w = workload(&pool, "n1").await;
    let id = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    let watch = Arc::new(Watch(Mutex::default()));
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(
        pool.clone(),
        fast_config("n1"),
        watch.clone(),
        stop.clone(),
    ));
    wait_until("lock taken", Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        n == 1
    })
    .await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .execute(&pool)
    .await
    .unwrap();
    // The lock holder checks its connection every second while it holds locks.
    wait_until("handler saw the loss", Duration::from_secs(15), || async {
        watch.0.lock().unwrap().is_some()
    })
    .await;
    assert_eq!(
        *watch.0.lock().unwrap(),
        Some(true),
        "the job was not told its lock was gone"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
    let _ = id;
}

/// One busy worker with a heartbeat every few milliseconds: heartbeats, claims and
/// batched finishes touch the same rows all the time. Every job must finish exactly
/// once, with no deadlock between those statements, no lease given up for a job whose
/// own finish was being written, and never more handlers at once than slots.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn busy_worker_never_deadlocks_or_loses_a_lease(pool: PgPool) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[derive(Default)]
    struct Count {
        now: AtomicUsize,
        max: AtomicUsize,
    }
    impl JobHandler for Count {
        async fn run(&self, _ctx: JobContext) -> JobOutcome {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            JobOutcome::Succeeded
        }
    }
    const JOBS: i64 = 5000;
    sqlx::query(
        "WITH w AS (INSERT INTO workloads (id, name, project, stage, node, source_kind, image) \
           SELECT gen_random_uuid(), 'busy-' || g, 'p', 's', 'n1', 'image', 'busybox' \
           FROM generate_series(1, $1) g RETURNING id) \
         INSERT INTO jobs (id, kind, workload_id, node) \
         SELECT gen_random_uuid(), 'capture', w.id, 'n1' FROM w",
    )
    .bind(JOBS)
    .execute(&pool)
    .await
    .unwrap();
    let mut cfg = fast_config("n1");
    cfg.concurrency = 32;
    cfg.heartbeat_interval = Duration::from_millis(2);
    cfg.lease = Duration::from_secs(30);
    let status = cfg.status.clone();
    let count = Arc::new(Count::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(pool.clone(), cfg, count.clone(), stop.clone()));
    wait_until("every job finished", Duration::from_secs(120), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
        n == JOBS
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let (max_attempt, not_ok): (i32, i64) = sqlx::query_as(
        "SELECT max(attempt), count(*) FILTER (WHERE state <> 'succeeded') FROM jobs",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (max_attempt, not_ok),
        (1, 0),
        "a job ran twice or did not succeed"
    );
    assert_eq!(
        status.leases_lost.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the heartbeat gave up a lease although every job was healthy"
    );
    let max = count.max.load(Ordering::SeqCst);
    assert!(max <= 32, "{max} handlers ran at once with 32 slots");
    assert!(max > 1, "jobs never ran concurrently (max {max})");
    let finished: i64 = sqlx::query_scalar(
        "SELECT sum(finished)::int8 FROM job_outcome_stats WHERE outcome = 'succeeded'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(finished, JOBS, "the outcome counters missed finishes");
}

/// A job enqueued while the worker's previous claim is still in flight (and comes back
/// empty) must be picked up on its notification, not by the fallback poll, which is
/// set far beyond the test's patience here.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn no_wake_up_is_lost_to_a_claim_in_flight(pool: PgPool) {
    struct Started(tokio::sync::mpsc::UnboundedSender<JobId>);
    impl JobHandler for Started {
        async fn run(&self, ctx: JobContext) -> JobOutcome {
            let _ = self.0.send(ctx.job.id);
            JobOutcome::Succeeded
        }
    }
    let mut cfg = fast_config("n1");
    cfg.poll_interval = Duration::from_secs(600);
    let (tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(pool.clone(), cfg, Arc::new(Started(tx)), stop.clone()));
    // Each job is enqueued the moment the previous one starts: its finish makes the
    // worker claim again at about the time the new job's notification arrives.
    for i in 0..300 {
        let w = workload(&pool, "n1").await;
        let id = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("job {i} was not picked up within 10 s: its wake-up was lost")
            });
        assert_eq!(got, Some(id));
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A job whose handler gives up without an outcome (what a lost lock connection makes
/// it do: `Abandon`) stays `running` with nobody heartbeating it. This process's own
/// orphan check sends it back for recovery within a few heartbeats, not a lease.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn an_abandoned_job_is_recovered_without_waiting_for_the_lease(pool: PgPool) {
    #[derive(Default)]
    struct GiveUpOnce(Mutex<Vec<(i32, bool)>>);
    impl JobHandler for GiveUpOnce {
        async fn run(&self, ctx: JobContext) -> JobOutcome {
            self.0
                .lock()
                .unwrap()
                .push((ctx.job.attempt, ctx.job.recovering));
            if ctx.job.attempt == 1 {
                JobOutcome::Abandon
            } else {
                JobOutcome::Succeeded
            }
        }
    }
    let w = workload(&pool, "n1").await;
    let id = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    let mut cfg = fast_config("n1");
    cfg.lease = Duration::from_secs(120);
    let runs = Arc::new(GiveUpOnce::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(pool.clone(), cfg, runs.clone(), stop.clone()));
    wait_until(
        "the abandoned job recovered (the lease is 120 s)",
        Duration::from_secs(15),
        || async { job_state(&pool, id).await == JobState::Succeeded },
    )
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(
        *runs.0.lock().unwrap(),
        vec![(1, false), (2, true)],
        "the second run must be a recovery"
    );
}

/// A handler that reports a transient fault before any change: the job goes back to
/// `queued` with a backoff (not run again before it), its retries and last fault are
/// on the row, and the next run succeeds.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_transient_fault_before_any_change_is_retried_with_backoff(pool: PgPool) {
    #[derive(Default)]
    struct FlakyOnce(Mutex<Vec<(i32, Instant)>>);
    impl JobHandler for FlakyOnce {
        async fn run(&self, ctx: JobContext) -> JobOutcome {
            self.0
                .lock()
                .unwrap()
                .push((ctx.job.retries, Instant::now()));
            if ctx.job.retries == 0 {
                assert!(ctx.retries_left());
                JobOutcome::retry("database_unavailable", "connection reset")
            } else {
                JobOutcome::Succeeded
            }
        }
    }
    let w = workload(&pool, "n1").await;
    let id = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    let mut cfg = fast_config("n1");
    cfg.retry.backoff = Duration::from_millis(700);
    let runs = Arc::new(FlakyOnce::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(pool.clone(), cfg, runs.clone(), stop.clone()));
    wait_until(
        "the retried job succeeded",
        Duration::from_secs(15),
        || async { job_state(&pool, id).await == JobState::Succeeded },
    )
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let runs = runs.0.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!((runs[0].0, runs[1].0), (0, 1));
    assert!(
        runs[1].1 - runs[0].1 >= Duration::from_millis(650),
        "the retry did not wait for its backoff: {:?}",
        runs[1].1 - runs[0].1
    );
    let j = queue::get_job(&pool, id).await.unwrap().unwrap();
    assert_eq!((j.attempt, j.retries), (2, 1));
    assert_eq!(
        j.last_transient_error.as_deref(),
        Some("database_unavailable: connection reset")
    );
    assert!(j.error_code.is_none());
}

/// Terminate the worker's idle lock connection (its last statement released a lock):
/// holding no lock, nothing notices until the next job asks for one.
async fn kill_idle_lock_connection(pool: &PgPool) {
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND query LIKE '%pg_advisory_unlock%'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(killed, 1, "the lock connection was not found");
}

/// A job claimed for recovery (an earlier attempt may have changed the node) whose
/// workload lock cannot be taken (its lock connection was killed) goes back to the
/// queue still `recovering`, so the next claim recovers it rather than running it
/// afresh (found by the backend-kills chaos test: a restore swapped by one attempt was
/// re-run fresh by the next and failed with the data restored).
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_failed_lock_taking_keeps_a_recovery_a_recovery(pool: PgPool) {
    #[derive(Default)]
    struct Seen(Mutex<Vec<(JobId, bool)>>);
    impl JobHandler for Seen {
        async fn run(&self, ctx: JobContext) -> JobOutcome {
            self.0
                .lock()
                .unwrap()
                .push((ctx.job.id, ctx.job.recovering));
            JobOutcome::Succeeded
        }
    }
    let w = workload(&pool, "n1").await;
    let first = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    let seen = Arc::new(Seen::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(
        pool.clone(),
        fast_config("n1"),
        seen.clone(),
        stop.clone(),
    ));
    wait_until("the first job ran", Duration::from_secs(10), || async {
        job_state(&pool, first).await == JobState::Succeeded
    })
    .await;
    // Kill the idle lock connection: the next job's lock-taking fails.
    kill_idle_lock_connection(&pool).await;
    // As the rescuer leaves a job whose owner died past its point of no return.
    let mut tx = pool.begin().await.unwrap();
    let second = queue::enqueue(&mut tx, &new_job(w, "n1")).await.unwrap().id;
    sqlx::query(
        "UPDATE jobs SET recovering = true, past_point_of_no_return = true, \
         phase = 'awaiting recovery' WHERE id = $1",
    )
    .bind(second)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    wait_until("the second job ran", Duration::from_secs(15), || async {
        job_state(&pool, second).await == JobState::Succeeded
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let runs: Vec<bool> = seen
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, _)| *id == second)
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(runs, vec![true], "the handler must see a recovery");
    let j = queue::get_job(&pool, second).await.unwrap().unwrap();
    assert!(j.attempt >= 2, "the first claim failed to lock: {j:?}");
}

/// Retries are bounded: a job that keeps hitting transient faults fails with the
/// fault's code once its retries are used up.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn transient_retries_are_bounded(pool: PgPool) {
    struct AlwaysFlaky;
    impl JobHandler for AlwaysFlaky {
        async fn run(&self, _ctx: JobContext) -> JobOutcome {
            JobOutcome::retry("database_unavailable", "connection reset")
        }
    }
    let w = workload(&pool, "n1").await;
    let id = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    let mut cfg = fast_config("n1");
    cfg.retry.max_retries = 2;
    cfg.retry.backoff = Duration::from_millis(10);
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(pool.clone(), cfg, Arc::new(AlwaysFlaky), stop.clone()));
    wait_until("the job failed", Duration::from_secs(15), || async {
        job_state(&pool, id).await == JobState::Failed
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let j = queue::get_job(&pool, id).await.unwrap().unwrap();
    assert_eq!((j.attempt, j.retries), (3, 2));
    assert_eq!(j.error_code.as_deref(), Some("database_unavailable"));
    assert!(
        j.error_message
            .as_deref()
            .unwrap()
            .contains("gave up after 2 retries"),
        "{j:?}"
    );
}

/// Issue 10: a job whose workload lock could not be taken (the lock connection had
/// died) was left `running` for the orphan check, which queued it for recovery. It
/// changed nothing: it goes straight back to `queued` as a retry.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_failed_lock_taking_is_a_retry(pool: PgPool) {
    let w = workload(&pool, "n1").await;
    let first = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let mut cfg = fast_config("n1");
    cfg.retry.backoff = Duration::from_millis(50);
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run(pool.clone(), cfg, recorder.clone(), stop.clone()));
    wait_until("the first job ran", Duration::from_secs(10), || async {
        job_state(&pool, first).await == JobState::Succeeded
    })
    .await;
    // The lock connection is idle now (its last statement released the lock): kill it.
    // Holding no lock, nothing notices until the next job asks for one.
    kill_idle_lock_connection(&pool).await;
    let second = enqueue(&pool, &new_job(w, "n1")).await.unwrap();
    wait_until("the second job ran", Duration::from_secs(15), || async {
        job_state(&pool, second).await == JobState::Succeeded
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let j = queue::get_job(&pool, second).await.unwrap().unwrap();
    assert_eq!(j.retries, 1, "{j:?}");
    assert!(!j.recovering);
    assert!(
        j.last_transient_error
            .as_deref()
            .is_some_and(|e| e.starts_with("database_unavailable:")),
        "{j:?}"
    );
}
