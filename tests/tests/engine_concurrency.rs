//! Two workers on one node and restores of one workload queued back to back (each
//! enqueued the moment the previous one stops being active): they never overlap (the
//! workload's advisory lock; the journal directory never holds two of them at once)
//! and all complete, the last one's data winning.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use volsnap_e2e::engine::*;
use volsnap_shared::domain::{JobKind, JobState, SourceKind, VolumeScope};
use volsnap_shared::queue::{self, EnqueueError, NewJob};

const BIN: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn back_to_back_restores_on_two_workers_never_overlap(
    _: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    write_tree(&env.host_path(&vols[0]), 7, 2);
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let mut snaps = vec![];
    let mut hashes = vec![];
    for seed in [1u64, 2] {
        let src = env.root().join(format!("src-{seed}"));
        write_tree(&src, seed, 2);
        hashes.push(tree_hash(&src));
        snaps.push(env.make_snapshot(w, &[(vols[0].clone(), src)]).await);
    }
    let c = env.run_container(w, &vols);

    // Watch the journal directory: two restores of one workload at once would show
    // two journals at the same moment.
    let most = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = std::thread::spawn({
        let (most, stop, dir) = (most.clone(), stop.clone(), env.state_dir().join("journal"));
        move || {
            while !stop.load(Ordering::Relaxed) {
                // Journals only (not the temp file of an atomic rewrite).
                let n = std::fs::read_dir(&dir)
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .filter(|e| {
                                let n = e.file_name().to_string_lossy().into_owned();
                                !n.starts_with('.') && n.ends_with(".json")
                            })
                            .count()
                    })
                    .unwrap_or(0);
                most.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });

    let w1 = env.worker(None);
    let w2 = env.worker(None);
    let rounds = 4;
    let mut jobs = vec![];
    for round in 0..rounds {
        let sid = snaps[round % 2];
        let job = loop {
            let mut conn = env.pool.acquire().await.unwrap();
            let r = queue::enqueue(
                &mut conn,
                &NewJob {
                    kind: JobKind::Restore,
                    workload_id: w,
                    snapshot_id: Some(sid),
                    node: env.node.clone(),
                    batch_id: None,
                    requested_by: None,
                },
            )
            .await;
            match r {
                Ok(j) => break j.id,
                Err(EnqueueError::AlreadyActive { .. }) => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        jobs.push(job);
    }
    let mut finished = vec![];
    for j in &jobs {
        let j = env.wait_final(*j, Duration::from_secs(90)).await;
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        finished.push(j);
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    for pair in finished.windows(2) {
        assert!(pair[1].started_at.unwrap() >= pair[0].finished_at.unwrap());
    }
    assert!(
        most.load(Ordering::Relaxed) <= 1,
        "two restores of one workload overlapped"
    );
    assert_eq!(
        tree_hash(&env.host_path(&vols[0])),
        hashes[(rounds - 1) % 2]
    );
    assert!(container_running(&c));
    let workers: std::collections::HashSet<_> =
        finished.iter().map(|j| j.worker_id.clone()).collect();
    eprintln!("jobs ran on {} distinct worker(s)", workers.len());
    w1.stop();
    w2.stop();
}
