//! Containment (issue 9): an app's container, which owns everything inside its volumes,
//! and anyone who re-points a volume's path between two steps, can never steer the
//! worker outside the volumes root.
//!
//! * Symlinks the app plants under names volsnap once used inside volumes
//!   (`..volsnap-marker.tmp`, `.volsnap-marker`) point at a host canary: the restore
//!   succeeds and the canary is untouched.
//! * A target, or its parent, swapped for a symlink while the snapshot is extracted
//!   (the worker is held at a pause point): the job fails `volume_changed`, nothing
//!   outside the root is touched, no staging or journal is left, the container runs,
//!   and once the directories are put back a new restore of the workload succeeds.
//! * The same for a target swapped after the containers were stopped (the second
//!   identity check, right before the swap): rolled back, containers started again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use volsnap_e2e::engine::*;
use volsnap_shared::domain::{Job, JobKind, JobState, SourceKind, VolumeScope, VolumeSpec};
use volsnap_shared::ids::{SnapshotId, WorkloadId};

const BIN: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");
const TIMEOUT: Duration = Duration::from_secs(60);

struct Setup {
    env: Env,
    vols: Vec<VolumeSpec>,
    w: WorkloadId,
    sid: SnapshotId,
    container: String,
    new: String,
    /// A directory outside the volumes root that nothing may touch.
    outside: PathBuf,
}

async fn setup(opts: PgConnectOptions) -> Setup {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    write_tree(&env.host_path(&vols[0]), 7, 1);
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let src = env.root().join("new");
    write_tree(&src, 8, 1);
    let new = tree_hash(&src);
    let sid = env.make_snapshot(w, &[(vols[0].clone(), src)]).await;
    let container = env.run_container(w, &vols);
    let outside = env.root().join("outside");
    std::fs::create_dir_all(outside.join("data")).unwrap();
    std::fs::write(outside.join("canary"), "canary").unwrap();
    std::fs::write(outside.join("data/canary"), "canary").unwrap();
    Setup {
        env,
        vols,
        w,
        sid,
        container,
        new,
        outside,
    }
}

async fn restore(s: &Setup) -> Job {
    let worker = s.env.worker(None);
    let job = s.env.enqueue(JobKind::Restore, s.w, Some(s.sid)).await;
    let j = s.env.wait_final(job, TIMEOUT).await;
    worker.stop();
    j
}

fn assert_clean(s: &Setup, outside_before: &str, parents: &[&Path]) {
    assert_eq!(
        tree_hash(&s.outside),
        outside_before,
        "a directory outside the volumes root was touched"
    );
    // A succeeded restore's kept pre-restore copy (named by a keep record) stays.
    let kept: Vec<String> = s
        .env
        .kept_records()
        .iter()
        .flat_map(|r| r["volumes"].as_array().unwrap().clone())
        .map(|v| v["side"].as_str().unwrap().to_owned())
        .collect();
    for p in parents {
        let left: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".volsnap-"))
            .filter(|n| !kept.iter().any(|k| n == k.as_str()))
            .collect();
        assert!(left.is_empty(), "staging left in {}: {left:?}", p.display());
    }
    assert!(s.env.journals().is_empty(), "{:?}", s.env.journals());
    assert!(container_running(&s.container));
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn app_symlinks_named_like_volsnap_files_never_steer_the_worker(
    _: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let s = setup(opts).await;
    let canary = s.outside.join("canary");
    // Planted from inside the app's container, as an attacker would.
    for name in [
        "..volsnap-marker.tmp",
        ".volsnap-marker",
        ".volsnap-marker.tmp",
    ] {
        docker(&[
            "exec",
            &s.container,
            "ln",
            "-sf",
            canary.to_str().unwrap(),
            &format!("/data/{name}"),
        ]);
    }
    let before = tree_hash(&s.outside);
    let j = restore(&s).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "canary");
    assert_eq!(tree_hash(&s.env.host_path(&s.vols[0])), s.new);
    assert_clean(
        &s,
        &before,
        &[s.env.host_path(&s.vols[0]).parent().unwrap()],
    );
}

/// Hold a restore at `point`, let `change` re-point the world, then check the job was
/// refused `volume_changed` with nothing outside touched; `undo` puts things back and a
/// new restore must then succeed.
async fn changed_during_restore(
    s: Setup,
    point: &str,
    change: impl FnOnce(&Setup),
    undo: impl FnOnce(&Setup),
) {
    let live = s.env.host_path(&s.vols[0]);
    let parent = live.parent().unwrap().to_path_buf();
    let old = tree_hash(&live);
    let before = tree_hash(&s.outside);
    let (worker, pause) = s.env.worker_paused(point);
    let job = s.env.enqueue(JobKind::Restore, s.w, Some(s.sid)).await;
    pause.reached(TIMEOUT).await;
    change(&s);
    pause.release();
    let j = s.env.wait_final(job, TIMEOUT).await;
    worker.stop();
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    assert_eq!(j.error_code.as_deref(), Some("volume_changed"), "{j:?}");
    assert!(
        !j.error_message
            .as_deref()
            .unwrap_or("")
            .contains(&*parent.to_string_lossy()),
        "job messages name the volume, not host paths: {j:?}"
    );
    let moved_parent = parent.with_file_name("moved-parent");
    let watched: Vec<&Path> = [parent.as_path(), moved_parent.as_path()]
        .into_iter()
        .filter(|p| p.is_dir() && !p.is_symlink())
        .collect();
    assert_clean(&s, &before, &watched);

    undo(&s);
    assert_eq!(tree_hash(&live), old, "the live data changed");
    let j = restore(&s).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_eq!(tree_hash(&live), s.new);
}

fn swap_target(s: &Setup) {
    let live = s.env.host_path(&s.vols[0]);
    std::fs::rename(&live, s.env.root().join("moved")).unwrap();
    std::os::unix::fs::symlink(s.outside.join("data"), &live).unwrap();
}

fn unswap_target(s: &Setup) {
    let live = s.env.host_path(&s.vols[0]);
    std::fs::remove_file(&live).unwrap();
    std::fs::rename(s.env.root().join("moved"), &live).unwrap();
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn target_swapped_for_a_symlink_during_extraction(_: PgPoolOptions, opts: PgConnectOptions) {
    let s = setup(opts).await;
    changed_during_restore(s, "restore.extracted", swap_target, unswap_target).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn parent_swapped_for_a_symlink_during_extraction(_: PgPoolOptions, opts: PgConnectOptions) {
    let s = setup(opts).await;
    let swap_parent = |s: &Setup| {
        let parent = s.env.host_path(&s.vols[0]).parent().unwrap().to_path_buf();
        std::fs::rename(&parent, parent.with_file_name("moved-parent")).unwrap();
        std::os::unix::fs::symlink(&s.outside, &parent).unwrap();
    };
    let unswap_parent = |s: &Setup| {
        let parent = s.env.host_path(&s.vols[0]).parent().unwrap().to_path_buf();
        std::fs::remove_file(&parent).unwrap();
        std::fs::rename(parent.with_file_name("moved-parent"), &parent).unwrap();
    };
    changed_during_restore(s, "restore.extracted", swap_parent, unswap_parent).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn target_swapped_after_quiesce_rolls_back(_: PgPoolOptions, opts: PgConnectOptions) {
    let s = setup(opts).await;
    changed_during_restore(s, "restore.stopped", swap_target, unswap_target).await;
}
