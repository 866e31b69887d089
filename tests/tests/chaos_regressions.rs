//! Regression tests for issue 10 ("under chaos: no app left down, no job lost to a
//! transient fault"), each against the real worker binary:
//! 1. a worker killed while `docker stop` waits for a slow container: the restarted
//!    worker's rollback must leave the containers running after the pending stop lands;
//! 2. the start-up sweep must not delete a journal temp file a live writer holds;
//! 3. a job abandoned before it changed anything is queued again, not failed;
//! 4. an idle worker stops within 2 s of SIGTERM while PostgreSQL is down.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use volsnap_e2e::chaos::*;
use volsnap_e2e::engine::{tree_hash, url_of};
use volsnap_shared::domain::JobState;
use volsnap_shared::ids::JobId;

const BIN: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");

async fn shared_world(opts: PgConnectOptions) -> World {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    World::new(url_of(&opts), pool, BIN).await
}

/// Issue 10, item 1: killed mid-`docker stop`, the next worker's rollback used to
/// "start" the still-running containers (a no-op) and finish; the pending stop then
/// killed them and nothing started them again.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_worker_killed_during_a_slow_stop_leaves_no_app_down(
    _: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let mut w = shared_world(opts).await;
    w.stop_timeout_secs = 6;
    w.add_loads(1).await;
    let second = {
        let l = &w.loads[0];
        let (id, vol, host) = (l.id, l.vol.clone(), l.host.clone());
        w.run_slow_container(id, &vol, &host)
    };
    let job = w.enqueue_restores().await[0];
    let first = w.worker(&[]);
    w.wait_jobs(&[job], "quiescing", Duration::from_secs(60), |j| {
        j[0].phase == "quiescing"
    })
    .await;
    // The stop is now waiting for containers that ignore SIGTERM.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill();
    let t_kill = Instant::now();
    let _second_worker = w.worker(&[]);
    let jobs = w
        .wait_jobs(&[job], "the job final", Duration::from_secs(90), |j| {
            j[0].state.is_final()
        })
        .await;
    // Let any stop the dead worker left pending land (it began ≤ 1.5 s before the kill).
    let pending_until = t_kill + Duration::from_secs(w.stop_timeout_secs + 2);
    tokio::time::sleep_until(pending_until.into()).await;
    let l = &w.loads[0];
    assert!(
        running(&l.container) && running(&second),
        "an app was left stopped after the rollback (job: {:?} {:?})",
        jobs[0].state,
        jobs[0].error_message
    );
    assert_eq!(
        tree_hash(&l.host),
        l.old,
        "rolled back before the commit point"
    );
    assert_eq!(container_names(&l.container, "/data"), host_names(&l.host));
    assert!(w.leftovers().is_empty(), "{:?}", w.leftovers());
}

/// Issue 10, item 2: a starting worker removed every `.<job>.json.tmp`, including one
/// a live sibling was writing. A writer holds an flock on its temp file; the sweep
/// must leave a locked one alone and still clear a stale (unlocked) one.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn the_startup_sweep_spares_a_live_writers_journal_temp_file(
    _: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let mut w = shared_world(opts).await;
    std::fs::create_dir_all(w.journal_dir()).unwrap();
    let live = w.journal_dir().join(format!(".{}.json.tmp", JobId::new()));
    let stale = w.journal_dir().join(format!(".{}.json.tmp", JobId::new()));
    std::fs::write(&stale, b"{\"half\":").unwrap();
    // This process is the live writer: it holds the lock as the journal writer does.
    let f = nix::fcntl::Flock::lock(
        std::fs::File::create(&live).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .map_err(|(_, e)| e)
    .expect("lock the temp file");
    let worker = w.worker(&[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stale.exists() {
        assert!(Instant::now() < deadline, "the start-up sweep never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        live.exists(),
        "the start-up sweep deleted a journal temp file a live writer holds"
    );
    worker.terminate(Duration::from_secs(10));
    drop(f);
}

/// Issue 10, item 3: a job whose owner lost it before it changed anything (no journal:
/// nothing was touched) came back from recovery as failed `interrupted`. It must be
/// queued again and then run to success, its retry visible on the row.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_job_abandoned_before_any_change_is_retried_not_failed(
    _: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let mut w = shared_world(opts).await;
    w.add_loads(1).await;
    let job = w.enqueue_restores().await[0];
    // What the rescuer leaves after an owner vanished before its first journal entry.
    sqlx::query(
        "UPDATE jobs SET recovering = true, attempt = 1, phase = 'awaiting recovery', \
         started_at = now() WHERE id = $1",
    )
    .bind(job)
    .execute(&w.pool)
    .await
    .unwrap();
    let worker = w.worker(&[]);
    let jobs = w
        .wait_jobs(&[job], "the job final", Duration::from_secs(90), |j| {
            j[0].state.is_final()
        })
        .await;
    let j = &jobs[0];
    assert_eq!(
        j.state,
        JobState::Succeeded,
        "an untouched job must be retried: {:?} {:?}",
        j.error_code,
        j.error_message
    );
    assert_eq!(j.retries, 1, "{j:?}");
    assert!(
        j.last_transient_error
            .as_deref()
            .is_some_and(|e| e.starts_with("interrupted:")),
        "{j:?}"
    );
    assert_eq!(tree_hash(&w.loads[0].host), w.loads[0].new);
    worker.terminate(Duration::from_secs(30));
}

/// Issue 10, item 4: with PostgreSQL down, an idle worker took ~52 s to stop (each
/// background task waited out a 10 s pool timeout). It must stop within 2 s.
#[tokio::test]
async fn an_idle_worker_stops_within_two_seconds_while_postgres_is_down() {
    let pg = PrivatePg::start(50);
    let pool = pg.pool().await;
    volsnap_shared::MIGRATOR.run(&pool).await.unwrap();
    let mut w = World::new(pg.url(), pool.clone(), BIN).await;
    let worker = w.worker(&[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM workers WHERE node = $1")
            .bind(&w.node)
            .fetch_one(&pool)
            .await
            .unwrap();
        if n == 1 && worker.log_text().contains("recovery sweep first") {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle: past its start-up, heartbeating.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pool.close().await;
    pg.pg_stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let took = worker.terminate(Duration::from_secs(90));
    eprintln!("idle worker, PostgreSQL down: exited {took:?} after SIGTERM");
    assert!(
        took < Duration::from_secs(2),
        "an idle worker took {took:?} to stop while PostgreSQL was down"
    );
}
