//! Stopping a restore before its point of no return leaves the node untouched: a
//! graceful stop (SIGTERM) during extraction puts the job back as plainly `queued`
//! (a later worker runs it to the end); a client's cancel during extraction ends it
//! `cancelled`. Either way: no staging, no journal, the container never stopped.

use std::io::Write as _;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use volsnap_e2e::engine::*;
use volsnap_shared::domain::{JobKind, JobState, SourceKind, VolumeScope, VolumeSpec};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};
use volsnap_shared::queue::{self, CancelOutcome};

const BIN: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");

/// A workload whose snapshot takes a while to extract (48 MiB of poorly
/// compressible data), with old data in place and a running container.
async fn setup(opts: PgConnectOptions) -> (Env, Vec<VolumeSpec>, WorkloadId, SnapshotId, String) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    write_tree(&env.host_path(&vols[0]), 1, 1);
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let src = env.root().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..6 {
        let mut f = std::fs::File::create(src.join(format!("f{i}"))).unwrap();
        for _ in 0..8 {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&buf).unwrap();
        }
    }
    let sid = env.make_snapshot(w, &[(vols[0].clone(), src)]).await;
    let c = env.run_container(w, &vols);
    (env, vols, w, sid, c)
}

async fn wait_phase(env: &Env, job: JobId, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = env.job(job).await;
        if j.phase == phase {
            return;
        }
        assert!(!j.state.is_final(), "job ended before phase {phase}: {j:?}");
        assert!(Instant::now() < deadline, "phase {phase} never seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_untouched(env: &Env, vols: &[VolumeSpec], before: &str, c: &str, started: &str) {
    assert_eq!(tree_hash(&env.host_path(&vols[0])), before);
    assert!(env.side_dirs(vols).is_empty(), "{:?}", env.side_dirs(vols));
    assert!(env.journals().is_empty());
    assert!(container_running(c));
    assert_eq!(
        container_started_at(c),
        started,
        "the container must never have stopped"
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn sigterm_during_extraction_requeues_untouched(_: PgPoolOptions, opts: PgConnectOptions) {
    let (env, vols, w, sid, c) = setup(opts).await;
    let before = tree_hash(&env.host_path(&vols[0]));
    let started = container_started_at(&c);
    let job = env.enqueue(JobKind::Restore, w, Some(sid)).await;
    let mut w1 = env.worker(None);
    wait_phase(&env, job, "extracting").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w1.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = w1.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "graceful stop: {st:?}");
    let j = env.job(job).await;
    assert_eq!(j.state, JobState::Queued, "{j:?}");
    assert!(!j.recovering && !j.past_point_of_no_return, "{j:?}");
    assert_untouched(&env, &vols, &before, &c, &started);

    let w2 = env.worker(None);
    let j = env.wait_final(job, Duration::from_secs(90)).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_ne!(tree_hash(&env.host_path(&vols[0])), before);
    w2.stop();
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn cancel_during_extraction_touches_nothing(_: PgPoolOptions, opts: PgConnectOptions) {
    let (env, vols, w, sid, c) = setup(opts).await;
    let before = tree_hash(&env.host_path(&vols[0]));
    let started = container_started_at(&c);
    let job = env.enqueue(JobKind::Restore, w, Some(sid)).await;
    let w1 = env.worker(None);
    wait_phase(&env, job, "extracting").await;
    match queue::cancel(&env.pool, job).await.unwrap() {
        CancelOutcome::Requested(_) => {}
        other => panic!("cancel during extraction: {other:?}"),
    }
    let j = env.wait_final(job, Duration::from_secs(60)).await;
    assert_eq!(j.state, JobState::Cancelled, "{j:?}");
    assert_untouched(&env, &vols, &before, &c, &started);
    w1.stop();
}
