//! Restore plans and verification against the real thing (issue 12): the API served
//! over HTTP on a loopback port, the real worker binary, Docker, real archives and
//! volumes, and `volsnapctl` as a binary.
//!
//! - a plan predicts exactly what the following restore changes (against a diff this
//!   test computes from copies of the volume before and after), touching nothing;
//! - plans that refuse (free space on a small tmpfs, an overlap with another workload,
//!   a missing archive file) fail with the restore's code and touch nothing;
//! - a plan runs while a restore of the same workload is running (not blocked);
//! - verify catches an injected corruption: `verify_mismatch`, app redeployed,
//!   pre-restore snapshot kept;
//! - viewers may plan, not restore; volsnapctl `plan`, `batch-restore --plan-only`,
//!   `restore --verify`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use volsnap_api::{Limits, ServeConfig};
use volsnap_e2e::engine::*;
use volsnap_shared::domain::{Role, SourceKind, VolumeScope, VolumeSpec};
use volsnap_shared::ids::{SnapshotId, WorkloadId};
use volsnapctl::api::{Client, CtlError, Job};

const WORKER: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");
const CTL: &str = env!("CARGO_BIN_EXE_volsnapctl-e2e");

struct World {
    env: Env,
    url: String,
    admin_token: String,
    viewer_token: String,
    admin: Client,
    viewer: Client,
    _api: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn world(pool: PgPool, opts: PgConnectOptions) -> World {
    let env = Env::new(pool.clone(), opts, WORKER).await;
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
    let api = tokio::spawn(server.run(std::future::pending()));
    let mut tokens = vec![];
    for (name, role) in [("plan-admin", Role::Admin), ("plan-viewer", Role::Viewer)] {
        let (token, hash) = volsnap_api::auth::generate_token();
        volsnap_shared::db::tokens::insert(&pool, name, role, &hash)
            .await
            .unwrap();
        tokens.push(token);
    }
    World {
        admin: Client::new(&url, &tokens[0]).unwrap(),
        viewer: Client::new(&url, &tokens[1]).unwrap(),
        admin_token: tokens[0].clone(),
        viewer_token: tokens[1].clone(),
        url,
        env,
        _api: api,
    }
}

/// A workload with one volume holding `write_tree(seed 1)`, a snapshot of that, and
/// then the live data changed in every way a diff counts.
struct App {
    id: WorkloadId,
    spec: VolumeSpec,
    host: PathBuf,
    sid: SnapshotId,
}

impl World {
    async fn app(&self, source: &str, container: bool) -> App {
        let spec = vol(VolumeScope::Stage, source, "/data");
        let host = self.env.host_path(&spec);
        write_tree(&host, 1, 2);
        std::fs::create_dir_all(host.join("gone/deep")).unwrap();
        std::fs::write(host.join("gone/deep/x"), b"xx").unwrap();
        std::fs::write(host.join("gone/y"), b"yyy").unwrap();
        let id = self
            .env
            .add_workload(std::slice::from_ref(&spec), SourceKind::Image, false)
            .await;
        let sid = self
            .env
            .make_snapshot(id, &[(spec.clone(), host.clone())])
            .await;
        mutate(&host);
        if container {
            self.env.run_container(id, std::slice::from_ref(&spec));
        }
        App {
            id,
            spec,
            host,
            sid,
        }
    }

    /// Follow a job to its end through the API (`GET /api/jobs/{id}?wait=`).
    async fn final_job(&self, id: &str) -> Job {
        for _ in 0..60 {
            let j = self
                .admin
                .job(id, Some(Duration::from_secs(5)))
                .await
                .unwrap();
            if j.is_final() {
                return j;
            }
        }
        panic!("job {id} not final after 5 minutes");
    }

    async fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::process::Command::new(CTL)
                .env("VOLSNAP_URL", &self.url)
                .env("VOLSNAP_TOKEN", &self.admin_token)
                .env_remove("VOLSNAP_TOKEN_FILE")
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("volsnapctl finished")
        .unwrap();
        (
            out.status.code().expect("exit code"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Nothing of the engine's anywhere: no journal, no staging or backup directory.
    fn assert_untouched(&self, specs: &[VolumeSpec]) {
        assert_eq!(self.env.journals(), Vec::<PathBuf>::new(), "journals");
        assert_eq!(
            self.env.side_dirs(specs),
            Vec::<PathBuf>::new(),
            "side dirs"
        );
    }
}

/// Change the live data in every way the diff counts: contents, a mode, a symlink's
/// target, added files (in an existing and in a new directory), removed files and a
/// removed directory tree.
fn mutate(host: &Path) {
    std::fs::write(host.join("a.txt"), b"changed content").unwrap();
    std::fs::set_permissions(
        host.join("sub/b.bin"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::remove_file(host.join("link")).unwrap();
    std::os::unix::fs::symlink("a.txt", host.join("link")).unwrap();
    std::fs::write(host.join("sub/new-file"), vec![7u8; 5000]).unwrap();
    std::fs::create_dir_all(host.join("newdir/inner")).unwrap();
    std::fs::write(host.join("newdir/inner/n1"), vec![1u8; 300]).unwrap();
    std::fs::write(host.join("newdir/n2"), vec![2u8; 40]).unwrap();
    std::fs::remove_file(host.join("sub/deeper/c.dat")).unwrap();
    std::fs::remove_dir_all(host.join("gone")).unwrap();
}

/// One non-directory entry as the diff compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File { mode: u32, content: Vec<u8> },
    Link(PathBuf),
}

fn snapshot_tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let node = if m.file_type().is_symlink() {
                Node::Link(std::fs::read_link(&p).unwrap())
            } else if m.is_dir() {
                stack.push(p.clone());
                Node::Dir
            } else {
                Node::File {
                    mode: m.mode() & 0o777,
                    content: std::fs::read(&p).unwrap(),
                }
            };
            out.insert(rel, node);
        }
    }
    out
}

/// What the test expects one set of a volume's diff to hold.
#[derive(Debug, Default, PartialEq, Eq)]
struct Set {
    files: u64,
    bytes: u64,
    dirs: u64,
    paths: Vec<String>,
}

fn size(n: &Node) -> u64 {
    match n {
        Node::File { content, .. } => content.len() as u64,
        _ => 0,
    }
}

/// The diff of `before` → `after` computed naively from two whole trees: (added,
/// changed, removed). Bytes: `after`'s sizes for added and changed, `before`'s for
/// removed; directories counted apart.
fn naive_diff(before: &BTreeMap<String, Node>, after: &BTreeMap<String, Node>) -> (Set, Set, Set) {
    let (mut added, mut changed, mut removed) = (Set::default(), Set::default(), Set::default());
    for (p, n) in after {
        match (before.get(p), n) {
            (None, Node::Dir) => {
                added.dirs += 1;
                added.paths.push(format!("{p}/"));
            }
            (None, n) => {
                added.files += 1;
                added.bytes += size(n);
                added.paths.push(p.clone());
            }
            (Some(Node::Dir), Node::Dir) => {}
            (Some(b), n) if b != n => {
                changed.files += 1;
                changed.bytes += size(n);
                changed.paths.push(p.clone());
            }
            _ => {}
        }
    }
    for (p, n) in before {
        if after.contains_key(p) {
            continue;
        }
        match n {
            Node::Dir => {
                removed.dirs += 1;
                removed.paths.push(format!("{p}/"));
            }
            n => {
                removed.files += 1;
                removed.bytes += size(n);
                removed.paths.push(p.clone());
            }
        }
    }
    for s in [&mut added, &mut changed, &mut removed] {
        s.paths.sort();
    }
    (added, changed, removed)
}

fn set_of(v: &Value) -> Set {
    let mut paths: Vec<String> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    paths.sort();
    Set {
        files: v["files"].as_u64().unwrap(),
        bytes: v["bytes"].as_u64().unwrap(),
        dirs: v["dirs"].as_u64().unwrap(),
        paths,
    }
}

fn result_of(j: &Job) -> Value {
    j.extra
        .get("result")
        .cloned()
        .unwrap_or_else(|| panic!("job {} has no result: {j:?}", j.id))
}

fn copy_tree(from: &Path, to: &Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "cp -a: {out:?}");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_plan_predicts_exactly_what_the_restore_then_changes(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let w = world(pool, opts).await;
    let app = w.app("predict", true).await;
    let _worker = w.env.worker(None);
    let before_hash = tree_hash(&app.host);

    // A viewer may plan (no confirmation header) but not restore.
    let plan = w
        .viewer
        .plan(&app.id.to_string(), &app.sid.to_string())
        .await
        .unwrap();
    assert_eq!(plan.kind, "plan");
    let refused = w
        .viewer
        .restore(&app.id.to_string(), &app.sid.to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, CtlError::Refused { status: 403, .. }),
        "{refused:?}"
    );
    let plan = w.final_job(&plan.id).await;
    assert_eq!(plan.state, "succeeded", "{plan:?}");
    let r = result_of(&plan);
    assert_eq!(r["restorable"], true);
    assert_eq!(
        r["checks_passed"],
        serde_json::json!([
            "preflight",
            "free_space",
            "snapshot_file",
            "checksum",
            "archive"
        ])
    );
    // It touched nothing.
    assert_eq!(tree_hash(&app.host), before_hash);
    w.assert_untouched(std::slice::from_ref(&app.spec));

    // The restore (verified), with a copy of the volume as it was before.
    let before_copy = w.env.root().join("before-copy");
    copy_tree(&app.host, &before_copy);
    let job = w
        .admin
        .restore_with(&app.id.to_string(), &app.sid.to_string(), Some(true))
        .await
        .unwrap();
    let job = w.final_job(&job.id).await;
    assert_eq!(job.state, "succeeded", "{job:?}");
    let verified = result_of(&job);
    assert_eq!(verified["verify"]["identical"], true, "{verified}");
    assert_eq!(job.extra["verify"], true);

    let (added, changed, removed) =
        naive_diff(&snapshot_tree(&before_copy), &snapshot_tree(&app.host));
    // The mutation really did all of it (a test that cannot fail is worthless).
    assert_eq!((added.files, added.dirs), (3, 2), "{added:?}");
    assert_eq!((changed.files, changed.dirs), (3, 0), "{changed:?}");
    assert_eq!((removed.files, removed.dirs), (3, 2), "{removed:?}");
    let v = &r["volumes"][0];
    assert_eq!(v["target"], "/data");
    assert_eq!(v["exists"], true);
    assert_eq!(v["host_path"], app.host.to_string_lossy().as_ref());
    assert_eq!(set_of(&v["added"]), added, "added");
    assert_eq!(set_of(&v["changed"]), changed, "changed");
    assert_eq!(set_of(&v["removed"]), removed, "removed");
    let t = &r["totals"];
    assert_eq!(t["added_files"], added.files);
    assert_eq!(t["changed_bytes"], changed.bytes);
    assert_eq!(t["removed_bytes"], removed.bytes);

    // Planned again now: nothing left to change.
    let again = w
        .admin
        .plan(&app.id.to_string(), &app.sid.to_string())
        .await
        .unwrap();
    let again = w.final_job(&again.id).await;
    let t = &result_of(&again)["totals"];
    for k in ["added_files", "changed_files", "removed_files"] {
        assert_eq!(t[k], 0, "{k} after the restore: {t}");
    }
}

/// A tmpfs mounted for one test, unmounted on drop (even when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs (needs root): {out:?}");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).output();
    }
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn plans_that_refuse_name_the_restores_code_and_touch_nothing(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let w = world(pool.clone(), opts).await;
    let _worker = w.env.worker(None);

    // 1. A missing archive file.
    let missing = w.app("missing", false).await;
    std::fs::remove_file(
        w.env
            .snapshot_dir()
            .join(format!("{}/{}.tar.gz", missing.id, missing.sid)),
    )
    .unwrap();

    // 2. An overlap: another workload (inserted behind the API's back, as a config
    //    changed elsewhere would be) whose volume lies inside this one's.
    let overlap = w.app("overlap", false).await;
    let inner = vol(VolumeScope::Stage, "overlap/sub", "/inner");
    w.env
        .add_workload(std::slice::from_ref(&inner), SourceKind::Image, false)
        .await;

    // 3. Too little space: the volume on a 2 MiB tmpfs, the snapshot 3 MiB.
    let abs = w.env.root().join("abs");
    let _tmpfs = Tmpfs::mount(&abs.join("tiny"), "2m");
    let spec = vol(
        VolumeScope::Absolute,
        abs.join("tiny/data").to_str().unwrap(),
        "/data",
    );
    let host = w.env.host_path(&spec);
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("small"), b"live data").unwrap();
    let big = w.env.root().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..3 {
        // Incompressible, so the archive is big too (not that it matters here).
        let data: Vec<u8> = (0..1024 * 1024u32)
            .map(|x| (x.wrapping_mul(2654435761).wrapping_add(i) >> 13) as u8)
            .collect();
        std::fs::write(big.join(format!("f{i}")), data).unwrap();
    }
    let space_id = w
        .env
        .add_workload(std::slice::from_ref(&spec), SourceKind::Image, false)
        .await;
    let space_sid = w.env.make_snapshot(space_id, &[(spec.clone(), big)]).await;
    let space = App {
        id: space_id,
        spec,
        host,
        sid: space_sid,
    };

    for (app, code, step) in [
        (&missing, "snapshot_file_missing", "snapshot_file"),
        (&overlap, "volume_overlap", "preflight"),
        (&space, "insufficient_space", "free_space"),
    ] {
        let before = tree_hash(&app.host);
        let job = w
            .viewer
            .plan(&app.id.to_string(), &app.sid.to_string())
            .await
            .unwrap();
        let job = w.final_job(&job.id).await;
        assert_eq!(job.state, "failed", "{code}: {job:?}");
        assert_eq!(job.error_code.as_deref(), Some(code), "{job:?}");
        let r = result_of(&job);
        assert_eq!(r["restorable"], false);
        assert_eq!(r["refused"]["code"], code);
        assert_eq!(r["refused"]["step"], step, "{r}");
        assert_eq!(tree_hash(&app.host), before, "{code}: the volume changed");
        w.assert_untouched(std::slice::from_ref(&app.spec));
        // The restore itself is refused with the very same code.
        let restore = w
            .admin
            .restore(&app.id.to_string(), &app.sid.to_string())
            .await
            .unwrap();
        let restore = w.final_job(&restore.id).await;
        assert_eq!(restore.error_code.as_deref(), Some(code), "{restore:?}");
        assert_eq!(tree_hash(&app.host), before);
    }

    // The waited plan POST answers 422 with the restore's code and the job.
    let (status, body) = post(
        &w.url,
        &format!(
            "/api/workloads/{}/snapshots/{}/plan?wait=60",
            missing.id, missing.sid
        ),
        &w.admin_token,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "snapshot_file_missing");

    // The batch form: a viewer may plan (no confirmation header), not restore.
    let items = serde_json::json!({"items": [
        {"workload_id": overlap.id, "snapshot_id": overlap.sid},
        {"workload_id": space.id, "snapshot_id": space.sid},
    ]});
    let viewer_token = w.viewer_token.clone();
    let (status, body) = post_json(&w.url, "/api/restores", &viewer_token, Some(&items)).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post_json(
        &w.url,
        "/api/restores?plan=false",
        &viewer_token,
        Some(&items),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post_json(
        &w.url,
        "/api/restores?plan=true",
        &viewer_token,
        Some(&items),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 2);
    let batch = w
        .admin
        .batch(body["batch_id"].as_str().unwrap())
        .await
        .unwrap();
    assert!(batch.jobs.iter().all(|j| j.kind == "plan"));
    for j in &batch.jobs {
        let j = w.final_job(&j.id).await;
        assert_eq!(j.state, "failed");
    }
    w.assert_untouched(&[overlap.spec.clone(), space.spec.clone()]);
}

/// A raw POST (no body): (status, JSON body).
async fn post(url: &str, path: &str, token: &str) -> (u16, Value) {
    post_json(url, path, token, None).await
}

/// A raw POST with an optional JSON body: (status, JSON body).
async fn post_json(url: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    send("POST", url, path, token, body).await
}

/// A raw request with an optional JSON body: (status, JSON body).
async fn send(
    method: &str,
    url: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-s", "-X", method, "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = cmd.arg(format!("{url}{path}")).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (
        status.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_plan_runs_while_a_restore_of_the_same_workload_runs(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let w = world(pool, opts).await;
    let app = w.app("beside", true).await;
    let (wid, sid) = (app.id.to_string(), app.sid.to_string());
    // Enqueued before any worker runs: the plan does not block the restore's enqueue
    // (no 409), and a second plan beside both is fine too.
    let first_plan = w.admin.plan(&wid, &sid).await.unwrap();
    let restore = w.admin.restore(&wid, &sid).await.unwrap();
    let (worker, pause) = w.env.worker_paused("restore.extract.half");
    pause.reached(Duration::from_secs(60)).await;
    // The restore holds the workload (lock, journal, staging) and waits mid-extraction
    // (a pause inside the blocking extraction, so the worker process itself runs on).
    let first_plan = w.final_job(&first_plan.id).await;
    assert_eq!(first_plan.state, "succeeded", "{first_plan:?}");
    let second = w.admin.plan(&wid, &sid).await.unwrap();
    let second = w.final_job(&second.id).await;
    assert_eq!(second.state, "succeeded", "{second:?}");
    let running = w.admin.job(&restore.id, None).await.unwrap();
    assert_eq!(running.state, "running", "the restore is still held");
    assert!(running.finished_at.is_none());
    // The plan saw the live data (the restore had not swapped yet).
    let t = &result_of(&second)["totals"];
    assert!(t["changed_files"].as_u64().unwrap() >= 3, "{t}");
    pause.release();
    let restore = w.final_job(&restore.id).await;
    assert_eq!(restore.state, "succeeded", "{restore:?}");
    drop(worker);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn verify_catches_an_injected_corruption(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let w = world(pool.clone(), opts).await;
    let app = w.app("corrupt", true).await;
    let container: String = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=volsnap.workload={}", app.id),
    ]);
    // Verification asked by the workload's default (set through the API: admin only),
    // not by the request.
    let path = format!("/api/workloads/{}/restore-settings", app.id);
    let on = serde_json::json!({"verify_restores": true});
    let (status, body) = send("GET", &w.url, &path, &w.viewer_token, None).await;
    assert_eq!(
        (status, &body),
        (200, &serde_json::json!({"verify_restores": false}))
    );
    let (status, _) = send("PUT", &w.url, &path, &w.viewer_token, Some(&on)).await;
    assert_eq!(status, 403);
    let (status, body) = send("PUT", &w.url, &path, &w.admin_token, Some(&on)).await;
    assert_eq!((status, &body), (200, &on));
    let (_, body) = send("GET", &w.url, &path, &w.viewer_token, None).await;
    assert_eq!(body, on);
    let _worker = w
        .env
        .worker_env(None, &[], &[("VOLSNAP_INJECT", "verify.corrupt")]);
    let job = w
        .admin
        .restore(&app.id.to_string(), &app.sid.to_string())
        .await
        .unwrap();
    assert_eq!(job.extra["verify"], true);
    let job = w.final_job(&job.id).await;
    assert_eq!(job.state, "failed", "{job:?}");
    assert_eq!(job.error_code.as_deref(), Some("verify_mismatch"));
    let msg = job.error_message.clone().unwrap();
    assert!(msg.contains("1 different"), "{msg}");
    let r = result_of(&job);
    assert_eq!(r["verify"]["identical"], false);
    assert_eq!(r["verify"]["totals"]["changed_files"], 1, "{r}");
    // The corrupted file is the first regular file at the volume's top, by name.
    let mut top: Vec<String> = std::fs::read_dir(&app.host)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let changed = &r["verify"]["volumes"][0]["changed"]["samples"];
    assert_eq!(changed, &serde_json::json!([top[0]]), "{r}");
    // After the redeploy: the app runs again.
    assert!(container_running(&container), "the app was redeployed");
    // The pre-restore data is kept: as a directory at once, archived to a `pre-restore`
    // snapshot by the background job (issue 11) and linked to the job then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let pre = loop {
        let j = w.final_job(&job.id).await;
        if let Some(pre) = j.pre_restore_snapshot_id.clone() {
            break pre;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pre-restore copy was never archived and linked: {j:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let state: String = sqlx::query_scalar("SELECT state FROM snapshots WHERE id = $1::uuid")
        .bind(&pre)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "ready");
    // No journal left; the one directory beside the volume is the kept pre-restore copy
    // (retained for VOLSNAP_PRE_RESTORE_KEEP after its archive, so undo can swap it back).
    assert_eq!(w.env.journals(), Vec::<PathBuf>::new(), "journals");
    assert_eq!(
        w.env.side_dirs(std::slice::from_ref(&app.spec)).len(),
        1,
        "only the kept pre-restore copy"
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn volsnapctl_plan_plan_only_batches_and_restore_verify(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let w = world(pool, opts).await;
    let a = w.app("ctl-a", false).await;
    let b = w.app("ctl-b", false).await;
    std::fs::remove_file(
        w.env
            .snapshot_dir()
            .join(format!("{}/{}.tar.gz", b.id, b.sid)),
    )
    .unwrap();
    let _worker = w.env.worker(None);
    let (ha, hb) = (tree_hash(&a.host), tree_hash(&b.host));

    // plan: the table and exit 0; JSON carries the result.
    let (code, out, err) = w
        .ctl(&["plan", &a.id.to_string(), &a.sid.to_string()])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("a restore now would proceed"), "{out}");
    assert!(out.contains("newdir/"), "samples shown: {out}");
    let (code, out, _) = w
        .ctl(&["plan", "-o", "json", &a.id.to_string(), &a.sid.to_string()])
        .await;
    assert_eq!(code, 0);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["result"]["restorable"], true);
    // `job ID` of a plan sums it up.
    let (code, out, _) = w.ctl(&["job", j["id"].as_str().unwrap()]).await;
    assert_eq!(code, 0);
    assert!(out.contains("restorable: add 3 ("), "{out}");
    // A refused plan: exit 1, the code named.
    let (code, out, _) = w
        .ctl(&["plan", &b.id.to_string(), &b.sid.to_string()])
        .await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("REFUSED") && out.contains("snapshot_file_missing"),
        "{out}"
    );

    // batch-restore --plan-only: no confirmation, nothing restored, exit 1 (b refused).
    let file = w.env.root().join("plans.csv");
    std::fs::write(
        &file,
        format!(
            "workload,snapshot\n{},{}\n{},{}\n",
            a.id, a.sid, b.id, b.sid
        ),
    )
    .unwrap();
    let (code, out, err) = w
        .ctl(&[
            "batch-restore",
            "--plan-only",
            "-o",
            "json",
            file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 1, "{out}\n{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["restorable"], 1);
    assert_eq!(j["items"][0]["outcome"], "restorable");
    assert_eq!(j["items"][1]["outcome"], "refused");
    assert!(
        j["items"][1]["error"]
            .as_str()
            .unwrap()
            .starts_with("snapshot_file_missing")
    );
    let (code, out, _) = w
        .ctl(&["batch-restore", "--plan-only", file.to_str().unwrap()])
        .await;
    assert_eq!(code, 1);
    assert!(out.contains("1 restorable, 1 not"), "{out}");
    assert_eq!((tree_hash(&a.host), tree_hash(&b.host)), (ha, hb));
    w.assert_untouched(&[a.spec.clone(), b.spec.clone()]);

    // restore --verify: the job asks for it and ends verified.
    let (code, out, err) = w
        .ctl(&[
            "restore",
            "--yes",
            "--wait",
            "--verify",
            "-o",
            "json",
            &a.id.to_string(),
            &a.sid.to_string(),
        ])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["verify"], true);
    assert_eq!(j["result"]["verify"]["identical"], true);
    let (_, out, _) = w.ctl(&["job", j["id"].as_str().unwrap()]).await;
    assert!(
        out.contains("the restored volumes equal the snapshot"),
        "{out}"
    );

    // restore without --yes shows the plan before the question; a refused plan stops
    // it before asking (exit 1, nothing enqueued).
    let (code, _, err) = w
        .ctl(&["restore", &b.id.to_string(), &b.sid.to_string()])
        .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("REFUSED"), "{err}");
    assert!(!err.contains("Type the workload's name"), "{err}");
    let restores: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE workload_id = $1 AND kind = 'restore'")
            .bind(b.id)
            .fetch_one(&w.env.pool)
            .await
            .unwrap();
    assert_eq!(restores, 0);
}
