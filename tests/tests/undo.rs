//! Issue 11 end to end, with the real API (served in-process on port 0, driven over
//! HTTP), real worker processes, Docker containers and files: undo by directory and by
//! archive (and crash-safe while the latter runs), the kept copy's retention, a
//! background archive that fails (retried, then failed visibly in the metrics), and a
//! disk-space pre-check that counts kept copies still to archive. The crash matrix of
//! the undo-by-directory steps is in `engine_crash` (`undo.*`).

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use volsnap_api::{Limits, ServeConfig};
use volsnap_e2e::engine::*;
use volsnap_shared::domain::{JobKind, JobState, Role, SourceKind, VolumeScope, VolumeSpec};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};

const BIN: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");
const TIMEOUT: Duration = Duration::from_secs(90);

struct Api {
    url: String,
    admin: String,
    viewer: String,
    http: reqwest::Client,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn api(pool: &PgPool) -> Api {
    let server = volsnap_api::build(
        pool.clone(),
        &ServeConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            limits: Limits::default(),
            token_cache_ttl: Duration::from_secs(2),
        },
    )
    .await
    .unwrap();
    let url = format!("http://{}", server.local_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.run(stop.clone().cancelled_owned()));
    let mut tokens = vec![];
    for (name, role) in [("admin", Role::Admin), ("viewer", Role::Viewer)] {
        let (token, hash) = volsnap_api::auth::generate_token();
        volsnap_shared::db::tokens::insert(pool, name, role, &hash)
            .await
            .unwrap();
        tokens.push(token);
    }
    Api {
        url,
        viewer: tokens.pop().unwrap(),
        admin: tokens.pop().unwrap(),
        http: reqwest::Client::new(),
        stop,
    }
}

impl Api {
    async fn post(&self, path: &str, token: &str, confirm: Option<&str>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(c) = confirm {
            req = req.header("X-Confirm-Restore", c);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn restore(&self, w: WorkloadId, sid: SnapshotId) -> JobId {
        let (st, body) = self
            .post(
                &format!("/api/workloads/{w}/snapshots/{sid}/restore?wait=90"),
                &self.admin,
                Some(&sid.to_string()),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{body}");
        body["job"]["id"].as_str().unwrap().parse().unwrap()
    }

    /// Undo `job`, waiting for the outcome: (status, body).
    async fn undo(&self, job: JobId) -> (StatusCode, Value) {
        self.post(
            &format!("/api/jobs/{job}/undo?wait=90"),
            &self.admin,
            Some(&job.to_string()),
        )
        .await
    }
}

/// Two volumes with live data, a snapshot of other data, two running containers.
struct Setup {
    env: Env,
    w: WorkloadId,
    sid: SnapshotId,
    vols: Vec<VolumeSpec>,
    old: Vec<String>,
    new: Vec<String>,
    containers: Vec<String>,
}

async fn setup(opts: PgConnectOptions) -> Setup {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let vols = vec![
        vol(VolumeScope::Stage, "data", "/data"),
        vol(VolumeScope::Project, "shared", "/shared"),
    ];
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let (mut sources, mut new) = (vec![], vec![]);
    for (i, v) in vols.iter().enumerate() {
        let src: PathBuf = env.root().join(format!("new-{i}"));
        write_tree(&src, 1 + i as u64, 2);
        new.push(tree_hash(&src));
        sources.push((v.clone(), src));
        write_tree(&env.host_path(v), 100 + i as u64, 3);
    }
    let old = vols.iter().map(|v| tree_hash(&env.host_path(v))).collect();
    let sid = env.make_snapshot(w, &sources).await;
    let containers = vec![env.run_container(w, &vols), env.run_container(w, &vols)];
    Setup {
        env,
        w,
        sid,
        vols,
        old,
        new,
        containers,
    }
}

impl Setup {
    fn live(&self) -> Vec<String> {
        self.vols
            .iter()
            .map(|v| tree_hash(&self.env.host_path(v)))
            .collect()
    }

    fn running(&self) -> bool {
        self.containers.iter().all(|c| container_running(c))
    }
}

async fn wait_until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn archive_job_of(env: &Env, job: JobId) -> Option<JobId> {
    sqlx::query_scalar(
        "SELECT s.job_id FROM job_sources s JOIN jobs j ON j.id = s.job_id \
         WHERE s.source_job_id = $1 AND j.kind = 'pre_restore_archive'",
    )
    .bind(job)
    .fetch_optional(&env.pool)
    .await
    .unwrap()
}

/// Restore, undo by directory, undo the undo; and every refusal of the route.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn undo_by_directory_and_its_refusals(_: PgPoolOptions, opts: PgConnectOptions) {
    let s = setup(opts).await;
    let api = api(&s.env.pool).await;
    let worker = s.env.worker(None);
    let restore = api.restore(s.w, s.sid).await;
    assert_eq!(s.live(), s.new);
    // The archive runs as its own job; the workload is busy until it ends.
    s.env.wait_pre_restore(restore, TIMEOUT).await;
    let archive = archive_job_of(&s.env, restore).await.unwrap();
    assert_eq!(
        s.env.wait_final(archive, TIMEOUT).await.state,
        JobState::Succeeded
    );

    // Refusals: nothing is enqueued.
    let path = format!("/api/jobs/{restore}/undo");
    let (st, _) = api
        .post(&path, &api.viewer, Some(&restore.to_string()))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, body) = api.post(&path, &api.admin, None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "confirmation_required");
    let (st, body) = api.post(&path, &api.admin, Some(&s.sid.to_string())).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "confirmation_mismatch");
    let unknown = JobId::new();
    let (st, _) = api
        .post(
            &format!("/api/jobs/{unknown}/undo"),
            &api.admin,
            Some(&unknown.to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, body) = api
        .post(
            &format!("/api/jobs/{archive}/undo"),
            &api.admin,
            Some(&archive.to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_undoable");
    let undos: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'undo'")
        .fetch_one(&s.env.pool)
        .await
        .unwrap();
    assert_eq!(undos, 0);

    // Undo by directory: the old data is back, the containers run, and the restored
    // data is kept in turn (the undo's own keep record; the restore's is released).
    let (st, body) = api.undo(restore).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let undo: JobId = body["job"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(s.live(), s.old);
    assert!(s.running());
    let recs = s.env.kept_records();
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["job_id"], undo.to_string());
    let kept = s.env.kept_dirs(&s.vols);
    assert_eq!(kept.len(), 2);
    for (i, v) in s.vols.iter().enumerate() {
        let parent = s.env.host_path(v).parent().unwrap().to_path_buf();
        let d = kept
            .iter()
            .find(|d| d.parent() == Some(parent.as_path()))
            .unwrap();
        assert_eq!(tree_hash(d), s.new[i], "the undo keeps what it displaced");
    }
    assert!(s.env.stray_side_dirs(&s.vols).is_empty());
    // Undo downtime is recorded like a restore's (quiesce → exchange → redeploy).
    let downtimes: i64 = sqlx::query_scalar("SELECT downtime_count FROM restore_stats")
        .fetch_one(&s.env.pool)
        .await
        .unwrap();
    assert_eq!(downtimes, 2);

    // The restore is no longer the latest change: undoing it again is refused.
    s.env.wait_pre_restore(undo, TIMEOUT).await;
    wait_until("the undo's archive", async || {
        match archive_job_of(&s.env, undo).await {
            Some(a) => s.env.job(a).await.state.is_final(),
            None => false,
        }
    })
    .await;
    let (st, body) = api.undo(restore).await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_latest_change");
    assert_eq!(body["error"]["job_id"], undo.to_string());

    // Undoing the undo puts the restored data back.
    let (st, body) = api.undo(undo).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(s.live(), s.new);
    assert!(s.running());
    worker.stop();
}

/// The kept copy outlives a short retention until it is archived; once archived and
/// expired it is removed; an undo then restores the `pre-restore` snapshot — also
/// after a crash on either side of its commit point.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn retention_then_undo_by_archive(_: PgPoolOptions, opts: PgConnectOptions) {
    let s = setup(opts).await;
    let api = api(&s.env.pool).await;
    let keep = ["--pre-restore-keep", "2s"];
    // Held right after the archive job inserted its row: the copy is not archived yet.
    let pause = s.env.root().join("pause-archive");
    let w1 = s.env.worker_env(
        None,
        &keep,
        &[
            ("VOLSNAP_PAUSE_AT", "archive.row"),
            ("VOLSNAP_PAUSE_FILE", pause.to_str().unwrap()),
        ],
    );
    let restore = api.restore(s.w, s.sid).await;
    let kept_at = Instant::now();
    let reached = PathBuf::from(format!("{}.reached", pause.display()));
    wait_until("the archive job starts", async || reached.exists()).await;
    // While it runs, the workload is free: the archive is outside single-flight.
    let archive = archive_job_of(&s.env, restore).await.unwrap();
    assert_eq!(
        volsnap_shared::db::jobs::active_for_workload(&s.env.pool, s.w)
            .await
            .unwrap(),
        None
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.env.kept_dirs(&s.vols).len(),
        2,
        "past its retention but not archived: the copy must stay"
    );
    std::fs::write(format!("{}.go", pause.display()), "").unwrap();
    s.env.wait_pre_restore(restore, TIMEOUT).await;
    wait_until("the expired copy is removed", async || {
        s.env.kept_records().is_empty() && s.env.side_dirs(&s.vols).is_empty()
    })
    .await;
    assert!(kept_at.elapsed() >= Duration::from_secs(2));
    assert_eq!(s.live(), s.new);
    // (Held for seconds, the archive job may have lost its lease and run again.)
    let a = s.env.wait_final(archive, TIMEOUT).await;
    assert_eq!(a.state, JobState::Succeeded, "{a:?}");
    w1.stop();

    // Undo by archive, crashed before its commit point: rolled back, nothing changed.
    let undo_of = |crash: &'static str| {
        let env = &s.env;
        async move {
            let undo = env.enqueue(JobKind::Undo, s.w, None).await;
            volsnap_shared::db::jobs::set_source(&env.pool, undo, restore)
                .await
                .unwrap();
            let mut w = env.worker_with(Some(crash), &keep);
            let st = w.wait_exit(TIMEOUT);
            assert_eq!(st.signal(), Some(6), "the worker should abort at {crash}");
            let w = env.worker_with(None, &keep);
            let j = env.wait_final(undo, TIMEOUT).await;
            w.stop();
            j
        }
    };
    let j = undo_of("restore.swapped").await;
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    assert_eq!(j.error_code.as_deref(), Some("interrupted"));
    assert_eq!(s.live(), s.new);
    assert!(s.running());
    // Crashed after its commit point: rolled forward, the old data is back.
    let j = undo_of("restore.journal.committed").await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_eq!(s.live(), s.old);
    assert!(s.running());
    assert!(s.env.journals().is_empty());
    assert!(s.env.stray_side_dirs(&s.vols).is_empty());
}

/// A pre-restore archive holds up neither a restore nor an undo of its workload: while
/// one is held mid-way, another restore runs to the end; and an undo of the copy being
/// archived asks the archive to hand the copy over, which it does (its job is queued
/// again and ends `cancelled`, never `failed`: nothing to alert on).
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn archives_never_hold_up_a_restore_or_an_undo(_: PgPoolOptions, opts: PgConnectOptions) {
    let s = setup(opts).await;
    let api = api(&s.env.pool).await;
    let paused = |name: &str| {
        let pause = s.env.root().join(name);
        let w = s.env.worker_env(
            None,
            &[],
            &[
                ("VOLSNAP_PAUSE_AT", "archive.row"),
                ("VOLSNAP_PAUSE_FILE", pause.to_str().unwrap()),
                ("VOLSNAP_PAUSE_ONCE", "1"),
            ],
        );
        (w, pause)
    };
    let reached = |p: &Path| PathBuf::from(format!("{}.reached", p.display()));
    let go = |p: &Path| std::fs::write(format!("{}.go", p.display()), "").unwrap();

    // 1. A restore while an earlier restore's copy is being archived.
    let (w1, pause) = paused("pause-1");
    let r1 = api.restore(s.w, s.sid).await;
    wait_until("the first archive starts", async || {
        reached(&pause).exists()
    })
    .await;
    let a1 = archive_job_of(&s.env, r1).await.unwrap();
    let t = Instant::now();
    let r2 = api.restore(s.w, s.sid).await;
    let r2_took = t.elapsed();
    assert_eq!(s.env.job(r2).await.state, JobState::Succeeded);
    assert!(
        !s.env.job(a1).await.state.is_final(),
        "the first archive is still held"
    );
    assert_eq!(s.live(), s.new);
    assert!(s.running());
    eprintln!("restore beside a held archive took {r2_took:?}");
    go(&pause);
    let a = s.env.wait_final(a1, TIMEOUT).await;
    assert_eq!(a.state, JobState::Succeeded, "{a:?}");
    s.env.wait_pre_restore(r2, TIMEOUT).await;
    w1.stop();

    // 2. An undo of the copy whose archive is held mid-way. The app changed its data
    // since r2, so the undo has something to bring back.
    let live = s.env.host_path(&s.vols[0]);
    std::fs::write(live.join("written-by-the-app"), b"after r2").unwrap();
    let before = s.live();
    let (w2, pause) = paused("pause-2");
    let r3 = api.restore(s.w, s.sid).await;
    assert_eq!(s.live(), s.new);
    wait_until("the third archive starts", async || {
        reached(&pause).exists()
    })
    .await;
    let a3 = archive_job_of(&s.env, r3).await.unwrap();
    let (st, body) = api
        .post(
            &format!("/api/jobs/{r3}/undo"),
            &api.admin,
            Some(&r3.to_string()),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let undo: JobId = body["job"]["id"].as_str().unwrap().parse().unwrap();
    // The undo waits for the copy; nothing is swapped while the archive holds it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!s.env.job(undo).await.state.is_final());
    assert_eq!(s.live(), s.new);
    go(&pause);
    let u = s.env.wait_final(undo, TIMEOUT).await;
    assert_eq!(u.state, JobState::Succeeded, "{u:?}");
    assert_eq!(s.live(), before, "the undo brought the app's data back");
    assert!(s.running());
    let a = s.env.wait_final(a3, TIMEOUT).await;
    assert_eq!(
        a.state,
        JobState::Cancelled,
        "the archive handed the copy over: {a:?}"
    );
    // The undo keeps what it displaced, and that copy is archived in turn.
    s.env.wait_pre_restore(undo, TIMEOUT).await;
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'pre_restore_archive' AND state = 'failed'",
    )
    .fetch_one(&s.env.pool)
    .await
    .unwrap();
    assert_eq!(failed, 0);
    assert!(s.env.journals().is_empty());
    assert!(s.env.stray_side_dirs(&s.vols).is_empty());
    w2.stop();
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn tmpfs(dir: &Path, size: &str) -> Mount {
    std::fs::create_dir_all(dir).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    Mount(dir.to_path_buf())
}

/// Incompressible data of `mib` MiB in `dir/blob`.
fn noise(dir: &Path, seed: u64, mib: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x = seed | 1;
    let mut buf = Vec::with_capacity(mib << 20);
    while buf.len() < mib << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dir.join("blob"), buf).unwrap();
}

/// Fill a filesystem to the last byte.
fn fill(dir: &Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0xa5u8; 1 << 16];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// The snapshot directory fills up while the background archive runs: the job is
/// retried, then fails (visible in `volsnap_jobs_finished_total`, which the
/// `VolsnapPreRestoreArchiveFailed` alert watches); the snapshot row fails, no partial
/// file is left, and the kept copy stays (undo by directory still works).
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn failing_background_archive_is_retried_then_fails_visibly(
    _: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let snapdir = env.snapshot_dir().join(w.to_string());
    let _mount = tmpfs(&snapdir, "8m");
    let src = env.root().join("src");
    write_tree(&src, 7, 1);
    let sid = env
        .make_snapshot(w, &[(vols[0].clone(), src.clone())])
        .await;
    noise(&env.host_path(&vols[0]), 3, 2);
    let old = tree_hash(&env.host_path(&vols[0]));
    let c = env.run_container(w, &vols);
    let pause = env.root().join("pause-archive");
    let retries = [
        "--max-transient-retries",
        "2",
        "--retry-backoff-secs",
        "0.2",
    ];
    let worker = env.worker_env(
        None,
        &retries,
        &[
            ("VOLSNAP_PAUSE_AT", "archive.row"),
            ("VOLSNAP_PAUSE_FILE", pause.to_str().unwrap()),
        ],
    );
    let restore = env.enqueue(JobKind::Restore, w, Some(sid)).await;
    let r = env.wait_final(restore, TIMEOUT).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    let reached = PathBuf::from(format!("{}.reached", pause.display()));
    wait_until("the archive job starts", async || reached.exists()).await;
    fill(&snapdir);
    std::fs::write(format!("{}.go", pause.display()), "").unwrap();

    let archive = archive_job_of(&env, restore).await.unwrap();
    let a = env.wait_final(archive, TIMEOUT).await;
    assert_eq!(a.state, JobState::Failed, "{a:?}");
    assert_eq!(a.error_code.as_deref(), Some("insufficient_space"), "{a:?}");
    assert_eq!(a.retries, 2, "retried before failing: {a:?}");
    let pre_state: String = sqlx::query_scalar("SELECT state FROM snapshots WHERE id = $1")
        .bind(a.snapshot_id.unwrap())
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(pre_state, "failed");
    assert!(env.job(restore).await.pre_restore_snapshot_id.is_none());
    let metrics = volsnap_shared::queue::stats::render_prometheus(&env.pool)
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "volsnap_jobs_finished_total{kind=\"pre_restore_archive\",outcome=\"failed\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        env.partial_archives()
            .iter()
            .all(|p| p.file_name().unwrap() == "filler"),
        "{:?}",
        env.partial_archives()
    );
    wait_until("the keep record notes the failure", async || {
        env.kept_records()
            .first()
            .is_some_and(|r| r["archive"]["state"] == "failed")
    })
    .await;
    // Never removed without an archive; undo by directory still works.
    assert_eq!(env.kept_dirs(&vols).len(), 1);
    assert_eq!(tree_hash(&env.kept_dirs(&vols)[0]), old);
    let undo = env.enqueue(JobKind::Undo, w, None).await;
    volsnap_shared::db::jobs::set_source(&env.pool, undo, restore)
        .await
        .unwrap();
    let u = env.wait_final(undo, TIMEOUT).await;
    assert_eq!(u.state, JobState::Succeeded, "{u:?}");
    assert_eq!(tree_hash(&env.host_path(&vols[0])), old);
    assert!(container_running(&c));
    worker.stop();
}

/// Kept copies whose archive is still to be written count in the snapshot
/// filesystem's pre-check: a restore that would fit on its own is refused.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn disk_space_refusal_counts_kept_copies(_: PgPoolOptions, opts: PgConnectOptions) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    // The whole snapshot directory: the pre-check measures its filesystem.
    let _mount = tmpfs(&env.snapshot_dir(), "6m");
    let src = env.root().join("src");
    write_tree(&src, 7, 1);
    let sid = env
        .make_snapshot(w, &[(vols[0].clone(), src.clone())])
        .await;
    let host = env.host_path(&vols[0]);
    noise(&host, 3, 3);
    let c = env.run_container(w, &vols);
    // No maintenance: kept copies are never archived (as while their archive jobs wait).
    let worker = env.worker_with(None, &["--keep-sweep-secs", "0"]);
    let first = env.enqueue(JobKind::Restore, w, Some(sid)).await;
    let j = env.wait_final(first, TIMEOUT).await;
    assert_eq!(
        j.state,
        JobState::Succeeded,
        "3 MiB of current data fit: {j:?}"
    );
    assert_eq!(env.kept_records().len(), 1);
    assert_eq!(env.kept_records()[0]["archive"]["state"], "pending");

    // 3 MiB of current data again: alone it would fit (as the first restore did), but
    // with the first copy's 3 MiB still to archive it does not.
    docker(&["exec", &c, "sh", "-c", "rm -rf /data/*"]);
    noise(&host, 4, 3);
    let before = tree_hash(&host);
    let second = env.enqueue(JobKind::Restore, w, Some(sid)).await;
    let j = env.wait_final(second, TIMEOUT).await;
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    assert_eq!(j.error_code.as_deref(), Some("insufficient_space"), "{j:?}");
    let msg = j.error_message.clone().unwrap_or_default();
    assert!(msg.contains("kept pre-restore copies"), "{msg}");
    assert!(!j.past_point_of_no_return);
    assert_eq!(tree_hash(&host), before, "a refusal changes nothing");
    assert_eq!(env.kept_records().len(), 1);
    assert!(env.stray_side_dirs(&vols).is_empty());
    assert!(container_running(&c));
    worker.stop();
}
