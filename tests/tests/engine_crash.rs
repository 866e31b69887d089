//! Crash tests: for EVERY named crash point, the real worker is started with
//! `VOLSNAP_CRASH_AT=<point>` and aborts there (SIGABRT, no cleanup); then a fresh
//! worker recovers. Invariants checked after recovery: every volume holds entirely the
//! old or entirely the new data and all volumes agree (old before the commit point,
//! new from it on), no staging or stray side directory is left (only the kept
//! pre-restore copy a keep record names, holding exactly the old data), no journal, no
//! partial archive, the containers run, the job is final, and its background archive
//! links a ready pre-restore snapshot; right after a crash from the commit point on,
//! the old copy is on disk. `recovery.*` points crash the recovery itself, which a
//! third worker finishes. `archive.*` points crash the background archive job,
//! `keep.*` the removal of a kept copy after its retention, `undo.*` an undo by
//! directory (issue 11).

use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use volsnap_e2e::engine::*;
use volsnap_shared::domain::{JobKind, JobState, SourceKind, VolumeScope, VolumeSpec};
use volsnap_shared::ids::JobId;

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
    // Before the quiesce journal nothing was changed: the job is queued again (issue 10)
    // and the next worker runs it to the end.
    let untouched = index_of(first) < index_of("restore.journal.quiescing");
    // Right after the crash, each live volume is exactly its old or its new data: volsnap
    // keeps nothing inside a volume at any point (no markers, no temp names).
    for (i, v) in s.vols.iter().enumerate() {
        let live = env.host_path(v);
        if !live.exists() {
            // Only between the first two of the three-rename swap's renames is the
            // live name briefly free (the old data is parked beside it).
            assert_eq!(
                first, "swap.parked",
                "after {first}: {} is missing",
                v.target
            );
            continue;
        }
        let h = tree_hash(&live);
        assert!(
            h == s.old[i] || h == s.new[i],
            "after {first}: volume {} holds neither its old nor its new data",
            v.target
        );
        assert!(
            volsnap_entries_in(&live).is_empty(),
            "after {first}: volsnap-owned entries inside {}: {:?}",
            v.target,
            volsnap_entries_in(&live)
        );
    }
    if committed {
        // The pre-restore copy is kept as a directory from the swap on.
        let sides = env.side_dirs(&s.vols);
        for (i, v) in s.vols.iter().enumerate() {
            let parent = env.host_path(v).parent().unwrap().to_path_buf();
            let kept = sides
                .iter()
                .filter(|d| d.parent() == Some(parent.as_path()))
                .any(|d| tree_hash(d) == s.old[i]);
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
        // Archived in the background, by its own job.
        env.wait_pre_restore(job, TIMEOUT).await;
        assert_kept(env, &s.vols, &s.old, 1);
    } else if untouched {
        assert!(
            all_new,
            "crashed before any change ({first}): the retried job must restore"
        );
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        assert!(j.retries >= 1, "{j:?}");
        env.wait_pre_restore(job, TIMEOUT).await;
        assert_kept(env, &s.vols, &s.old, 1);
    } else {
        assert!(
            all_old,
            "crashed before the commit point ({first}): must roll back"
        );
        assert_eq!(j.state, JobState::Failed, "{j:?}");
        assert_eq!(j.error_code.as_deref(), Some("interrupted"), "{j:?}");
        assert!(env.kept_records().is_empty(), "{:?}", env.kept_records());
    }
    assert!(
        env.stray_side_dirs(&s.vols).is_empty(),
        "leftovers: {:?}",
        env.stray_side_dirs(&s.vols)
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

/// Exactly `records` keep records, and the newest one's side directories hold `data`
/// (one per volume, next to it), archived or not.
fn assert_kept(env: &Env, vols: &[VolumeSpec], data: &[String], records: usize) {
    let recs = env.kept_records();
    assert_eq!(recs.len(), records, "keep records: {recs:?}");
    let newest = recs.last().unwrap();
    for (i, v) in vols.iter().enumerate() {
        let parent = env.host_path(v).parent().unwrap().to_path_buf();
        let side = newest["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["spec"]["target"] == v.target.as_str())
            .unwrap()["side"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            tree_hash(&parent.join(&side)),
            data[i],
            "the kept copy of {} does not hold the data it displaced",
            v.target
        );
    }
}

/// The background archive job of the keep record of `job`.
async fn archive_job_of(env: &Env, job: JobId) -> JobId {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let id: Option<JobId> = sqlx::query_scalar(
            "SELECT job_id FROM job_sources s JOIN jobs j ON j.id = s.job_id \
             WHERE s.source_job_id = $1 AND j.kind = 'pre_restore_archive'",
        )
        .bind(job)
        .fetch_optional(&env.pool)
        .await
        .unwrap();
        if let Some(id) = id {
            return id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no archive job for {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The restore succeeds; its background archive (or, with `--pre-restore-keep 0`, the
/// removal of the archived copy) crashes at `first` (then recovery at `second`); a
/// fresh worker finishes: the pre-restore snapshot is ready, its file matches its
/// sha256, and the kept copy holds the old data (or is gone, when removed).
async fn background_crash(opts: PgConnectOptions, first: &str, second: Option<&str>) {
    let (s, w, sid) = restore_setup(opts).await;
    let env = &s.env;
    let removal = first.starts_with("keep.");
    let flags: &[&str] = if removal {
        &["--pre-restore-keep", "0"]
    } else {
        &[]
    };
    let job = env.enqueue(JobKind::Restore, w, Some(sid)).await;
    let mut w1 = env.worker_with(Some(first), flags);
    assert_aborted(&mut w1, first);
    let j = env.job(job).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let hashes: Vec<String> = s
        .vols
        .iter()
        .map(|v| tree_hash(&env.host_path(v)))
        .collect();
    assert_eq!(hashes, s.new, "the restore itself was done");
    if let Some(p) = second {
        let mut w2 = env.worker_with(Some(p), flags);
        assert_aborted(&mut w2, p);
    }
    let w3 = env.worker_with(None, flags);
    let archive = archive_job_of(env, job).await;
    let a = env.wait_final(archive, TIMEOUT).await;
    assert_eq!(a.state, JobState::Succeeded, "{a:?}");
    let pre = env.wait_pre_restore(job, TIMEOUT).await;
    let (rel, sha): (String, String) =
        sqlx::query_as("SELECT archive_path, sha256 FROM snapshots WHERE id = $1")
            .bind(pre)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let bytes = std::fs::read(env.snapshot_dir().join(rel)).unwrap();
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        sha
    );
    if removal {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !env.kept_records().is_empty() || !env.side_dirs(&s.vols).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the expired kept copy was not removed: {:?} {:?}",
                env.kept_records(),
                env.side_dirs(&s.vols)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        assert_kept(env, &s.vols, &s.old, 1);
        assert_eq!(env.kept_records()[0]["archive"]["state"], "archived");
        assert!(
            env.stray_side_dirs(&s.vols).is_empty(),
            "{:?}",
            env.stray_side_dirs(&s.vols)
        );
    }
    let hashes: Vec<String> = s
        .vols
        .iter()
        .map(|v| tree_hash(&env.host_path(v)))
        .collect();
    assert_eq!(hashes, s.new);
    assert!(env.journals().is_empty(), "{:?}", env.journals());
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

/// Enqueue an undo of `restore` as the API does (the job and its source row).
async fn enqueue_undo(env: &Env, w: volsnap_shared::ids::WorkloadId, restore: JobId) -> JobId {
    let undo = env.enqueue(JobKind::Undo, w, None).await;
    volsnap_shared::db::jobs::set_source(&env.pool, undo, restore)
        .await
        .unwrap();
    undo
}

/// A restore succeeds and is archived; then an undo by directory crashes at `first`
/// (then its recovery at `second`); a fresh worker finishes. Before the undo's commit
/// every volume still holds the restored data and the kept copy the old data (intact:
/// a rollback never deletes it); from the commit on every volume holds the old data
/// again and the undo keeps the restored data (the restore's keep record released).
async fn undo_crash(opts: PgConnectOptions, first: &str, second: Option<&str>, flags: &[&str]) {
    let (s, w, sid) = restore_setup(opts).await;
    let env = &s.env;
    let restore = env.enqueue(JobKind::Restore, w, Some(sid)).await;
    let w0 = env.worker_with(None, flags);
    let j = env.wait_final(restore, TIMEOUT).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    env.wait_pre_restore(restore, TIMEOUT).await;
    let a = env
        .wait_final(archive_job_of(env, restore).await, TIMEOUT)
        .await;
    assert_eq!(a.state, JobState::Succeeded, "{a:?}");
    w0.stop();

    let undo = enqueue_undo(env, w, restore).await;
    let mut w1 = env.worker_with(Some(first), flags);
    assert_aborted(&mut w1, first);
    let committed = index_of(first) >= index_of("undo.journal.committed");
    for (i, v) in s.vols.iter().enumerate() {
        let live = env.host_path(v);
        if !live.exists() {
            assert_eq!(
                first, "swap.parked",
                "after {first}: {} is missing",
                v.target
            );
            continue;
        }
        let h = tree_hash(&live);
        assert!(
            h == s.old[i] || h == s.new[i],
            "after {first}: volume {} holds neither its old nor its new data",
            v.target
        );
    }
    if let Some(p) = second {
        let mut w2 = env.worker_with(Some(p), flags);
        assert_aborted(&mut w2, p);
    }
    let w3 = env.worker_with(None, flags);
    let u = env.wait_final(undo, TIMEOUT).await;
    let hashes: Vec<String> = s
        .vols
        .iter()
        .map(|v| tree_hash(&env.host_path(v)))
        .collect();
    if committed {
        assert_eq!(u.state, JobState::Succeeded, "{u:?}");
        assert_eq!(hashes, s.old, "undone from its commit point on ({first})");
        env.wait_pre_restore(undo, TIMEOUT).await;
        assert_kept(env, &s.vols, &s.new, 1);
        assert_eq!(env.kept_records()[0]["job_id"], undo.to_string());
    } else {
        assert_eq!(u.state, JobState::Failed, "{u:?}");
        assert_eq!(u.error_code.as_deref(), Some("interrupted"), "{u:?}");
        assert_eq!(
            hashes, s.new,
            "rolled back before the undo's commit ({first})"
        );
        assert_kept(env, &s.vols, &s.old, 1);
        assert_eq!(env.kept_records()[0]["job_id"], restore.to_string());
    }
    assert!(
        env.stray_side_dirs(&s.vols).is_empty(),
        "{:?}",
        env.stray_side_dirs(&s.vols)
    );
    assert!(env.journals().is_empty(), "{:?}", env.journals());
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
        p if p.starts_with("archive.") || p.starts_with("keep.") => {
            background_crash(opts, p, None).await
        }
        p if p.starts_with("undo.") => undo_crash(opts, p, None, &[]).await,
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
    crash_swap_parked => "swap.parked",
    crash_swap_placed => "swap.placed",
    crash_restore_swap_first => "restore.swap.first",
    crash_restore_swapped => "restore.swapped",
    crash_restore_journal_committed => "restore.journal.committed",
    crash_restore_swap_checked => "restore.swap.checked",
    crash_restore_start_first => "restore.start.first",
    crash_restore_started => "restore.started",
    crash_restore_journal_redeployed => "restore.journal.redeployed",
    crash_restore_kept => "restore.kept",
    crash_journal_closed => "journal.closed",
    crash_archive_row => "archive.row",
    crash_archive_written => "archive.written",
    crash_archive_ready => "archive.ready",
    crash_archive_linked => "archive.linked",
    crash_archive_recorded => "archive.recorded",
    crash_keep_trashed => "keep.trashed",
    crash_keep_removed => "keep.removed",
    crash_undo_journal_quiescing => "undo.journal.quiescing",
    crash_undo_stopped => "undo.stopped",
    crash_undo_journal_swapping => "undo.journal.swapping",
    crash_undo_swapped => "undo.swapped",
    crash_undo_journal_committed => "undo.journal.committed",
    crash_undo_started => "undo.started",
    crash_undo_kept => "undo.kept",
    crash_undo_released => "undo.released",
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
        Some("restore.journal.redeployed"),
        &[],
    )
    .await;
}

/// The background archive crashes after writing, and again when run the second time.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn crash_archive_twice(_: PgPoolOptions, opts: PgConnectOptions) {
    background_crash(opts, "archive.written", Some("archive.ready")).await;
}

/// An undo crashes after its exchange, then its rollback crashes after swapping back:
/// the kept copy survives both (a rollback never deletes it), nothing changed.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn crash_during_undo_rollback(_: PgPoolOptions, opts: PgConnectOptions) {
    undo_crash(opts, "undo.swapped", Some("recovery.swapped_back"), &[]).await;
}

/// An undo with the three-rename swap, crashed between its renames, rolls back.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn crash_during_undo_by_renames(_: PgPoolOptions, opts: PgConnectOptions) {
    undo_crash(opts, "swap.placed", None, RENAMES).await;
}

/// An undo crashed after its commit (redeploy) rolls forward.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn crash_during_undo_roll_forward_recovery(_: PgPoolOptions, opts: PgConnectOptions) {
    undo_crash(
        opts,
        "undo.journal.committed",
        Some("restore.swap.checked"),
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
