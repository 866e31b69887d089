//! Crash tests: for EVERY named crash point, the real worker is started with
//! `VOLSNAP_CRASH_AT=<point>` and aborts there (SIGABRT, no cleanup); then a fresh
//! worker recovers. Invariants checked after recovery: every volume holds entirely the
//! old or entirely the new data and all volumes agree (old before the commit point,
//! new from it on), no staging or backup directory is left, no journal, no partial
//! archive, the containers run, the job is final; and right after a crash between the
//! commit point and the pre-restore snapshot becoming ready, the old copy is still on
//! disk. `recovery.*` points crash the recovery itself, which a third worker finishes.

use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use volsnap_e2e::engine::*;
use volsnap_shared::domain::{JobKind, JobState, SourceKind, VolumeScope, VolumeSpec};

const BIN: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");
const TIMEOUT: Duration = Duration::from_secs(90);
const RENAMES: &[&str] = &["--swap-mode", "renames"];

fn points() -> Vec<String> {
    let out = Command::new(BIN).arg("failpoints").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn index_of(point: &str) -> usize {
    points()
        .iter()
        .position(|p| p == point)
        .unwrap_or_else(|| panic!("{point} is not a listed crash point"))
}

fn assert_aborted(w: &mut Worker, point: &str) {
    let st = w.wait_exit(TIMEOUT);
    assert_eq!(
        st.signal(),
        Some(6),
        "the worker should have aborted at {point}, got {st:?}"
    );
}

/// What a restore scenario starts from.
struct Restore {
    env: Env,
    vols: Vec<VolumeSpec>,
    old: Vec<String>,
    new: Vec<String>,
    containers: Vec<String>,
}

async fn restore_setup(
    opts: PgConnectOptions,
) -> (
    Restore,
    volsnap_shared::ids::WorkloadId,
    volsnap_shared::ids::SnapshotId,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let vols = vec![
        vol(VolumeScope::Stage, "data", "/data"),
        vol(VolumeScope::Project, "shared", "/shared"),
    ];
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let mut sources = vec![];
    let mut new = vec![];
    for (i, v) in vols.iter().enumerate() {
        let src: PathBuf = env.root().join(format!("new-{i}"));
        write_tree(&src, 1 + i as u64, 2);
        new.push(tree_hash(&src));
        sources.push((v.clone(), src));
        write_tree(&env.host_path(v), 100 + i as u64, 3);
    }
    let old: Vec<String> = vols.iter().map(|v| tree_hash(&env.host_path(v))).collect();
    let sid = env.make_snapshot(w, &sources).await;
    let containers = vec![env.run_container(w, &vols), env.run_container(w, &vols)];
    (
        Restore {
            env,
            vols,
            old,
            new,
            containers,
        },
        w,
        sid,
    )
}

async fn restore_crash(opts: PgConnectOptions, first: &str, second: Option<&str>, flags: &[&str]) {
    let (s, w, sid) = restore_setup(opts).await;
    let env = &s.env;
    let job = env.enqueue(JobKind::Restore, w, Some(sid)).await;

    let mut w1 = env.worker_with(Some(first), flags);
    assert_aborted(&mut w1, first);

    let committed = index_of(first) >= index_of("restore.journal.committed");
    let archived = index_of(first) >= index_of("restore.archive.ready");
    if committed && !archived {
        // The pre-restore copy is retained until it has been archived.
        let sides = env.side_dirs(&s.vols);
        for (i, v) in s.vols.iter().enumerate() {
            let parent = env.host_path(v).parent().unwrap().to_path_buf();
            let kept = sides
                .iter()
                .filter(|d| d.parent() == Some(parent.as_path()))
                .any(|d| {
                    std::fs::read_to_string(d.join(".volsnap-marker"))
                        .is_ok_and(|m| m.contains("\"old\""))
                        && tree_hash_except(d, Some(".volsnap-marker")) == s.old[i]
                });
            assert!(
                kept,
                "after {first}: the old data of {} must still be on disk ({sides:?})",
                v.target
            );
        }
    }

    if let Some(p) = second {
        let mut w2 = env.worker_with(Some(p), flags);
        assert_aborted(&mut w2, p);
    }

    let w3 = env.worker_with(None, flags);
    let j = env.wait_final(job, TIMEOUT).await;
    let hashes: Vec<String> = s
        .vols
        .iter()
        .map(|v| tree_hash(&env.host_path(v)))
        .collect();
    let all_old = hashes == s.old;
    let all_new = hashes == s.new;
    assert!(
        all_old || all_new,
        "after {first}/{second:?}: volumes are neither all old nor all new"
    );
    if committed {
        assert!(
            all_new,
            "crashed at/after the commit point ({first}): must roll forward"
        );
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        let pre = j
            .pre_restore_snapshot_id
            .expect("pre-restore snapshot linked");
        let state: String = sqlx::query_scalar("SELECT state FROM snapshots WHERE id = $1")
            .bind(pre)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        assert_eq!(state, "ready");
    } else {
        assert!(
            all_old,
            "crashed before the commit point ({first}): must roll back"
        );
        assert_eq!(j.state, JobState::Failed, "{j:?}");
        assert_eq!(j.error_code.as_deref(), Some("interrupted"), "{j:?}");
    }
    assert!(
        env.side_dirs(&s.vols).is_empty(),
        "leftovers: {:?}",
        env.side_dirs(&s.vols)
    );
    assert!(
        env.journals().is_empty(),
        "journals left: {:?}",
        env.journals()
    );
    assert!(
        env.partial_archives().is_empty(),
        "{:?}",
        env.partial_archives()
    );
    for c in &s.containers {
        assert!(
            container_running(c),
            "container {c} must be running after {first}"
        );
    }
    w3.stop();
}

async fn capture_crash(opts: PgConnectOptions, first: &str, second: Option<&str>) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    write_tree(&env.host_path(&vols[0]), 5, 2);
    let before = tree_hash(&env.host_path(&vols[0]));
    let w = env.add_workload(&vols, SourceKind::Image, true).await;
    let c = env.run_container(w, &vols);
    let (job, sid) = env.enqueue_capture(w).await;
    let mut w1 = env.worker(Some(first));
    assert_aborted(&mut w1, first);
    if let Some(p) = second {
        let mut w2 = env.worker(Some(p));
        assert_aborted(&mut w2, p);
    }
    let w3 = env.worker(None);
    let j = env.wait_final(job, TIMEOUT).await;
    let (state, rel, sha): (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT state, archive_path, sha256 FROM snapshots WHERE id = $1")
            .bind(sid)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let file = env.snapshot_dir().join(format!("{w}/{sid}.tar.gz"));
    match state.as_str() {
        "ready" => {
            assert_eq!(j.state, JobState::Succeeded, "{j:?}");
            assert_eq!(rel.as_deref(), Some(format!("{w}/{sid}.tar.gz").as_str()));
            let bytes = std::fs::read(&file).unwrap();
            assert_eq!(
                Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))),
                sha
            );
        }
        "failed" => {
            assert_eq!(j.state, JobState::Failed, "{j:?}");
            assert!(!file.exists(), "a failed capture leaves no archive");
        }
        other => panic!("snapshot left {other} after {first}"),
    }
    assert_eq!(
        tree_hash(&env.host_path(&vols[0])),
        before,
        "capture never changes data"
    );
    assert!(env.journals().is_empty());
    assert!(
        env.partial_archives().is_empty(),
        "{:?}",
        env.partial_archives()
    );
    assert!(
        container_running(&c),
        "the container must run again after {first}"
    );
    w3.stop();
}

async fn crash_at(opts: PgConnectOptions, point: &str) {
    match point {
        "recovery.capture" => capture_crash(opts, "capture.written", Some(point)).await,
        "recovery.swapped_back" => restore_crash(opts, "restore.swapped", Some(point), &[]).await,
        "recovery.finished" => restore_crash(opts, "restore.started", Some(point), &[]).await,
        p if p.starts_with("recovery.") => {
            restore_crash(opts, "restore.swap.first", Some(p), &[]).await
        }
        p if p.starts_with("capture.") => capture_crash(opts, p, None).await,
        // The three-rename swap (what filesystems without RENAME_EXCHANGE get).
        p if p.starts_with("swap.") => restore_crash(opts, p, None, RENAMES).await,
        p => restore_crash(opts, p, None, &[]).await,
    }
}

macro_rules! crash_tests {
    ($($name:ident => $point:literal,)*) => {
        $(
            #[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
            async fn $name(_: PgPoolOptions, opts: PgConnectOptions) {
                crash_at(opts, $point).await;
            }
        )*
        const TESTED: &[&str] = &[$($point),*];
    };
}

crash_tests! {
    crash_restore_journal_staging => "restore.journal.staging",
    crash_restore_extract_half => "restore.extract.half",
    crash_restore_extracted => "restore.extracted",
    crash_restore_journal_quiescing => "restore.journal.quiescing",
    crash_restore_stop_first => "restore.stop.first",
    crash_restore_stopped => "restore.stopped",
    crash_restore_journal_swapping => "restore.journal.swapping",
    crash_restore_marked => "restore.marked",
    crash_swap_parked => "swap.parked",
    crash_swap_placed => "swap.placed",
    crash_restore_swap_first => "restore.swap.first",
    crash_restore_swapped => "restore.swapped",
    crash_restore_journal_committed => "restore.journal.committed",
    crash_restore_markers_cleared => "restore.markers_cleared",
    crash_restore_start_first => "restore.start.first",
    crash_restore_started => "restore.started",
    crash_restore_journal_redeployed => "restore.journal.redeployed",
    crash_restore_journal_archiving => "restore.journal.archiving",
    crash_restore_archive_row => "restore.archive.row",
    crash_restore_archive_written => "restore.archive.written",
    crash_restore_archive_ready => "restore.archive.ready",
    crash_restore_journal_archived => "restore.journal.archived",
    crash_restore_backups_removed => "restore.backups_removed",
    crash_journal_closed => "journal.closed",
    crash_capture_journal => "capture.journal",
    crash_capture_stopped => "capture.stopped",
    crash_capture_written => "capture.written",
    crash_capture_started => "capture.started",
    crash_capture_ready => "capture.ready",
    crash_recovery_begin => "recovery.begin",
    crash_recovery_swapped_back => "recovery.swapped_back",
    crash_recovery_rolled_back => "recovery.rolled_back",
    crash_recovery_capture => "recovery.capture",
    crash_recovery_finished => "recovery.finished",
}

#[test]
fn every_listed_point_has_a_crash_test() {
    let listed = points();
    assert_eq!(
        listed, TESTED,
        "crash tests must cover `failpoints` exactly, in order"
    );
}

/// Recovery that rolls forward is itself killed (at a roll-forward step), and a third
/// worker still finishes the job with the new data.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn crash_during_roll_forward_recovery(_: PgPoolOptions, opts: PgConnectOptions) {
    restore_crash(
        opts,
        "restore.journal.committed",
        Some("restore.archive.written"),
        &[],
    )
    .await;
}

/// With the three-rename swap: crash after the first volume is in place, then crash
/// again halfway through the rollback's own renames; a third worker settles both.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn crash_during_rollback_by_renames(_: PgPoolOptions, opts: PgConnectOptions) {
    restore_crash(opts, "swap.placed", Some("swap.parked"), RENAMES).await;
}

/// With the three-rename swap, a whole restore succeeds (recovery after the commit).
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn renames_swap_rolls_forward(_: PgPoolOptions, opts: PgConnectOptions) {
    restore_crash(opts, "restore.journal.committed", None, RENAMES).await;
}
