//! Support for the engine's end-to-end tests: a per-test directory tree (state,
//! snapshots, volumes root), workloads and jobs inserted with SQL, busybox containers
//! on the local Docker engine (labelled per workload, removed on drop), the real
//! worker binary (`volsnap-worker-fp`, the worker CLI built with `failpoints`) as a
//! child process, snapshot archives written with `volsnap-archive`, and tree hashes.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use volsnap_shared::domain::{Job, JobKind, SnapshotKind, SourceKind, VolumeScope, VolumeSpec};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};
use volsnap_shared::queue::{self, NewJob};

/// The test image (built by `scripts/test-image.sh`).
pub const IMAGE: &str = "volsnap-test-busybox:latest";

/// The URL of the per-test database `sqlx::test` created.
pub fn url_of(opts: &PgConnectOptions) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(opts.get_database().expect("test database name"));
    url.to_string()
}

/// Make sure the test image exists (idempotent; cheap when it does).
pub fn ensure_image() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-image.sh");
        let st = Command::new("bash")
            .arg(script)
            .status()
            .expect("run test-image.sh");
        assert!(st.success(), "scripts/test-image.sh failed");
    });
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One test's world: a database, a node name, directories, and what to clean up.
pub struct Env {
    pub pool: PgPool,
    pub url: String,
    pub node: String,
    pub dir: tempfile::TempDir,
    /// The worker binary: `env!("CARGO_BIN_EXE_volsnap-worker-fp")` of the test.
    bin: &'static str,
    containers: std::sync::Mutex<Vec<String>>,
    worker_seq: std::sync::atomic::AtomicU32,
}

impl Drop for Env {
    fn drop(&mut self) {
        let ids = self
            .containers
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = Command::new("docker").args(&args).output();
        }
        if std::thread::panicking() {
            // Keep the evidence: copy worker logs next to the temp dir's name.
            for i in 0..self.worker_seq.load(std::sync::atomic::Ordering::Relaxed) {
                let log = self.dir.path().join(format!("worker-{i}.log"));
                if let Ok(s) = std::fs::read_to_string(&log) {
                    let tail: Vec<&str> = s.lines().rev().take(40).collect();
                    eprintln!("---- worker-{i}.log (last lines) ----");
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

impl Env {
    /// `bin` is the failpoint-enabled worker CLI; integration tests pass
    /// `env!("CARGO_BIN_EXE_volsnap-worker-fp")` (Cargo defines it for them only).
    pub async fn new(pool: PgPool, opts: PgConnectOptions, bin: &'static str) -> Env {
        ensure_image();
        let dir = tempfile::Builder::new()
            .prefix("volsnap-e2e-")
            .tempdir()
            .expect("temp dir");
        for d in ["state", "snapshots", "volumes/proj/prod", "abs"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Env {
            pool,
            url: url_of(&opts),
            node: format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            dir,
            bin,
            containers: Default::default(),
            worker_seq: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }
    pub fn snapshot_dir(&self) -> PathBuf {
        self.root().join("snapshots")
    }
    pub fn volumes_root(&self) -> PathBuf {
        self.root().join("volumes")
    }

    /// Where a volume spec of this env's workloads (project `proj`, stage `prod`) lives.
    pub fn host_path(&self, v: &VolumeSpec) -> PathBuf {
        match v.scope {
            VolumeScope::Absolute => PathBuf::from(&v.source),
            VolumeScope::Project => self.volumes_root().join("proj").join(&v.source),
            VolumeScope::Stage => self.volumes_root().join("proj/prod").join(&v.source),
        }
    }

    pub async fn add_workload(
        &self,
        volumes: &[VolumeSpec],
        kind: SourceKind,
        stop_for_capture: bool,
    ) -> WorkloadId {
        let id = WorkloadId::new();
        sqlx::query(
            "INSERT INTO workloads (id, name, project, stage, node, source_kind, image, volumes, stop_for_capture) \
             VALUES ($1, $2, 'proj', 'prod', $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(format!("app-{}", &id.0.simple().to_string()[24..]))
        .bind(&self.node)
        .bind(kind)
        .bind(IMAGE)
        .bind(sqlx::types::Json(volumes))
        .bind(stop_for_capture)
        .execute(&self.pool)
        .await
        .expect("insert workload");
        id
    }

    /// A running busybox container of `workload` with every volume bind-mounted. It
    /// exits promptly on SIGTERM.
    pub fn run_container(&self, workload: WorkloadId, volumes: &[VolumeSpec]) -> String {
        self.run_container_with(workload, volumes, &[])
    }

    /// [`Env::run_container`] with extra `docker run` options (e.g. a healthcheck).
    pub fn run_container_with(
        &self,
        workload: WorkloadId,
        volumes: &[VolumeSpec],
        extra: &[&str],
    ) -> String {
        let label = format!("volsnap.workload={workload}");
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--network".into(),
            "none".into(),
            "--label".into(),
            label,
            "--label".into(),
            "volsnap.test=e2e".into(),
        ];
        for v in volumes {
            args.push("-v".into());
            args.push(format!("{}:{}", self.host_path(v).display(), v.target));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(IMAGE.into());
        args.extend([
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done".into(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = docker(&refs);
        self.containers.lock().unwrap().push(id.clone());
        id
    }

    /// The worker binary as a child process with short test intervals. Its log goes to
    /// `worker-<n>.log` in the test directory.
    pub fn worker(&self, crash_at: Option<&str>) -> Worker {
        self.worker_with(crash_at, &[])
    }

    /// [`Env::worker`] with extra `run` flags.
    pub fn worker_with(&self, crash_at: Option<&str>, extra: &[&str]) -> Worker {
        self.worker_env(crash_at, extra, &[])
    }

    /// A worker that stops at `point` until [`Pause::release`] (feature `failpoints`).
    pub fn worker_paused(&self, point: &str) -> (Worker, Pause) {
        let file = self.root().join(format!("pause-{point}"));
        let w = self.worker_env(
            None,
            &[],
            &[
                ("VOLSNAP_PAUSE_AT", point),
                ("VOLSNAP_PAUSE_FILE", file.to_str().unwrap()),
            ],
        );
        (w, Pause(file))
    }

    pub fn worker_env(
        &self,
        crash_at: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        let n = self
            .worker_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::fs::File::create(self.root().join(format!("worker-{n}.log"))).unwrap();
        let mut cmd = Command::new(self.bin);
        cmd.args(["run", "--database-url", &self.url, "--node", &self.node])
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--snapshot-dir")
            .arg(self.snapshot_dir())
            .arg("--volumes-root")
            .arg(self.volumes_root())
            .arg("--absolute-roots")
            .arg(self.root().join("abs"))
            .args([
                "--heartbeat-secs",
                "0.2",
                "--lease-secs",
                "1",
                "--poll-secs",
                "0.2",
                "--docker-stop-timeout-secs",
                "5",
                "--redeploy-timeout-secs",
                "30",
                "--deletion-sweep-secs",
                "0.3",
                "--shutdown-grace-secs",
                "30",
            ])
            .args(
                (!extra.contains(&"--keep-sweep-secs"))
                    .then_some(["--keep-sweep-secs", "0.3"])
                    .into_iter()
                    .flatten(),
            )
            .args(extra)
            .env("RUST_LOG", "info,sqlx=warn")
            .env_remove("VOLSNAP_CRASH_AT")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(p) = crash_at {
            cmd.env("VOLSNAP_CRASH_AT", p);
        }
        cmd.envs(env.iter().copied());
        Worker(Some(cmd.spawn().expect("spawn the worker")))
    }

    pub async fn enqueue(&self, kind: JobKind, w: WorkloadId, sid: Option<SnapshotId>) -> JobId {
        let mut conn = self.pool.acquire().await.unwrap();
        let job = queue::enqueue(
            &mut conn,
            &NewJob {
                kind,
                workload_id: w,
                snapshot_id: sid,
                node: self.node.clone(),
                batch_id: None,
                requested_by: Some("e2e".into()),
            },
        )
        .await
        .expect("enqueue");
        job.id
    }

    /// A capture job as the API makes it: a `capturing` row, then the job.
    pub async fn enqueue_capture(&self, w: WorkloadId) -> (JobId, SnapshotId) {
        let sid = SnapshotId::new();
        sqlx::query(
            "INSERT INTO snapshots (id, workload_id, node, kind, state) VALUES ($1, $2, $3, 'manual', 'capturing')",
        )
        .bind(sid)
        .bind(w)
        .bind(&self.node)
        .execute(&self.pool)
        .await
        .unwrap();
        (self.enqueue(JobKind::Capture, w, Some(sid)).await, sid)
    }

    pub async fn job(&self, id: JobId) -> Job {
        queue::get_job(&self.pool, id)
            .await
            .unwrap()
            .expect("job row")
    }

    pub async fn wait_final(&self, id: JobId, timeout: Duration) -> Job {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.job(id).await;
            if j.state.is_final() {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not final after {timeout:?}: {:?} phase {:?}",
                j.state,
                j.phase
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Write a snapshot archive of `sources` (target → directory) with the archive
    /// library and register it `ready` (as a capture would).
    pub async fn make_snapshot(
        &self,
        w: WorkloadId,
        sources: &[(VolumeSpec, PathBuf)],
    ) -> SnapshotId {
        let sid = SnapshotId::new();
        let rel = format!("{w}/{sid}.tar.gz");
        let dest = self.snapshot_dir().join(&rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let inputs: Vec<volsnap_archive::VolumeInput> = sources
            .iter()
            .enumerate()
            .map(|(i, (spec, path))| volsnap_archive::VolumeInput {
                index: i as u32,
                target: spec.target.clone(),
                scope: spec.scope.as_str().into(),
                source: spec.source.clone(),
                path: path.clone(),
                root: None,
            })
            .collect();
        let s = volsnap_archive::write_archive_file(
            &dest,
            &w.to_string(),
            &inputs,
            &Default::default(),
            &mut |_, _| {},
        )
        .expect("write archive");
        self.register_snapshot(
            w,
            sid,
            &rel,
            SnapshotKind::Manual,
            serde_json::to_value(&s.manifest).unwrap(),
        )
        .await;
        sid
    }

    /// Register an archive file already at `snapshot_dir/rel` as a ready snapshot.
    pub async fn register_snapshot(
        &self,
        w: WorkloadId,
        sid: SnapshotId,
        rel: &str,
        kind: SnapshotKind,
        manifest: serde_json::Value,
    ) {
        let bytes = std::fs::read(self.snapshot_dir().join(rel)).unwrap();
        sqlx::query(
            "INSERT INTO snapshots (id, workload_id, node, kind, state, archive_path, size_bytes, sha256, manifest) \
             VALUES ($1, $2, $3, $4, 'ready', $5, $6, $7, $8)",
        )
        .bind(sid)
        .bind(w)
        .bind(&self.node)
        .bind(kind)
        .bind(rel)
        .bind(bytes.len() as i64)
        .bind(hex::encode(Sha256::digest(&bytes)))
        .bind(manifest)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Leftovers of the engine next to the volumes: staging, backups, parking.
    pub fn side_dirs(&self, volumes: &[VolumeSpec]) -> Vec<PathBuf> {
        let mut out = vec![];
        for v in volumes {
            let parent = self.host_path(v).parent().unwrap().to_path_buf();
            for e in std::fs::read_dir(&parent).unwrap() {
                let e = e.unwrap();
                if e.file_name().to_string_lossy().starts_with(".volsnap-") {
                    out.push(e.path());
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The node's keep records (`state/kept/*.json`): the kept pre-restore copies.
    pub fn kept_records(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = match std::fs::read_dir(self.state_dir().join("kept"))
        {
            Ok(rd) => rd
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
                .collect(),
            Err(_) => vec![],
        };
        out.sort_by_key(|r| r["kept_at"].as_str().unwrap_or_default().to_owned());
        out
    }

    /// The side directories a keep record names (the kept pre-restore copies).
    pub fn kept_dirs(&self, volumes: &[VolumeSpec]) -> Vec<PathBuf> {
        let names: Vec<String> = self
            .kept_records()
            .iter()
            .flat_map(|r| r["volumes"].as_array().unwrap().clone())
            .map(|v| v["side"].as_str().unwrap().to_owned())
            .collect();
        self.side_dirs(volumes)
            .into_iter()
            .filter(|d| names.iter().any(|n| d.file_name().unwrap() == n.as_str()))
            .collect()
    }

    /// Side directories that no keep record names: staging, parking, trash — leftovers.
    pub fn stray_side_dirs(&self, volumes: &[VolumeSpec]) -> Vec<PathBuf> {
        let kept = self.kept_dirs(volumes);
        self.side_dirs(volumes)
            .into_iter()
            .filter(|d| !kept.contains(d))
            .collect()
    }

    /// Wait until the background archive linked a ready `pre-restore` snapshot to `job`.
    pub async fn wait_pre_restore(&self, job: JobId, timeout: Duration) -> SnapshotId {
        let deadline = Instant::now() + timeout;
        loop {
            let row: Option<(SnapshotId, String)> = sqlx::query_as(
                "SELECT s.id, s.state FROM jobs j JOIN snapshots s ON s.id = j.pre_restore_snapshot_id \
                 WHERE j.id = $1",
            )
            .bind(job)
            .fetch_optional(&self.pool)
            .await
            .unwrap();
            if let Some((sid, state)) = &row
                && state == "ready"
            {
                return *sid;
            }
            assert!(
                Instant::now() < deadline,
                "job {job}: no ready pre-restore snapshot after {timeout:?} ({row:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn journals(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.state_dir().join("journal")) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => vec![],
        }
    }

    /// Files in the snapshot dir that are not finished archives.
    pub fn partial_archives(&self) -> Vec<PathBuf> {
        let mut out = vec![];
        let mut stack = vec![self.snapshot_dir()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if !p.to_string_lossy().ends_with(".tar.gz") {
                    out.push(p);
                }
            }
        }
        out
    }
}

/// A worker child process; killed on drop if still running.
pub struct Worker(Option<Child>);

impl Worker {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// Wait for the process to exit by itself (a crash point aborts it).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.0.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Graceful stop (SIGTERM), then wait.
    pub fn stop(mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("worker did not stop on SIGTERM");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Deterministic test data: nested dirs, files of a few sizes, a symlink inside the
/// volume, an empty dir, an unusual mode. `seed` changes every byte.
/// Names of volsnap's internal files and directories, past and present (one letter
/// case each: the archive format refuses names that differ only by case);
/// [`write_tree`] puts an app file of each name at the volume root.
pub const APP_FILES_NAMED_LIKE_VOLSNAP: &[&str] = &[
    ".VolSnap-Marker",
    "..volsnap-marker.tmp",
    ".volsnap-0190aaaa-0000-7000-8000-000000000000-0",
    ".volsnap-0190aaaa-0000-7000-8000-000000000000-0.swap",
    ".volsnap-0190aaaa-0000-7000-8000-000000000000-0.del",
];

/// Entries at a live volume's root that volsnap could have left there: any name with
/// `volsnap` in it (any case) that is not one of the app's own files above.
/// A worker held at a pause point ([`Env::worker_paused`]).
pub struct Pause(PathBuf);

impl Pause {
    /// Wait until the worker reached the point.
    pub async fn reached(&self, timeout: Duration) {
        let flag = PathBuf::from(format!("{}.reached", self.0.display()));
        let deadline = std::time::Instant::now() + timeout;
        while !flag.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker never reached its pause point"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn release(&self) {
        std::fs::write(format!("{}.go", self.0.display()), "go").unwrap();
    }
}

pub fn volsnap_entries_in(volume: &Path) -> Vec<String> {
    std::fs::read_dir(volume)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.to_ascii_lowercase().contains("volsnap")
                        && !APP_FILES_NAMED_LIKE_VOLSNAP.contains(&n.as_str())
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_tree(dir: &Path, seed: u64, scale: usize) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 251) as u8
            })
            .collect()
    };
    for (i, name) in ["a.txt", "sub/b.bin", "sub/deeper/c.dat", "d"]
        .iter()
        .enumerate()
    {
        std::fs::write(dir.join(name), bytes(1024 * (i + 1) * scale)).unwrap();
    }
    std::fs::write(dir.join(format!("only-{seed}")), format!("seed {seed}\n")).unwrap();
    // An app's own files named like every name volsnap uses (or once used) elsewhere:
    // capture and restore must carry them like any other file.
    for name in APP_FILES_NAMED_LIKE_VOLSNAP {
        std::fs::write(dir.join(name), format!("app file {name}, seed {seed}\n")).unwrap();
    }
    std::fs::set_permissions(dir.join("d"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let _ = std::fs::remove_file(dir.join("link"));
    std::os::unix::fs::symlink("sub/b.bin", dir.join("link")).unwrap();
}

/// A hash of a directory tree: names, types, modes, file contents and mtimes, symlink
/// targets. The root directory's own metadata is left out; any leftover entry changes
/// the hash.
pub fn tree_hash(dir: &Path) -> String {
    tree_hash_except(dir, None)
}

/// [`tree_hash`] leaving out one root entry (e.g. the engine's marker file).
pub fn tree_hash_except(dir: &Path, skip: Option<&str>) -> String {
    let mut h = Sha256::new();
    let mut entries: BTreeMap<String, String> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if skip == Some(rel.as_str()) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let desc = if m.file_type().is_symlink() {
                format!("l {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("d {:o}", m.mode() & 0o7777)
            } else {
                let mut content = vec![];
                std::fs::File::open(&p)
                    .unwrap()
                    .read_to_end(&mut content)
                    .unwrap();
                format!(
                    "f {:o} {} {}",
                    m.mode() & 0o7777,
                    m.mtime(),
                    hex::encode(Sha256::digest(&content))
                )
            };
            entries.insert(rel, desc);
        }
    }
    for (k, v) in entries {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// What the container sees under `path`: a listing with checksums, made inside it.
pub fn container_view(container: &str, path: &str) -> String {
    docker(&[
        "exec",
        container,
        "sh",
        "-c",
        &format!("cd {path} && find . | sort && find . -type f | sort | xargs md5sum"),
    ])
}

pub fn container_running(id: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", id]) == "true"
}

pub fn container_started_at(id: &str) -> String {
    docker(&["inspect", "-f", "{{.State.StartedAt}}", id])
}

pub fn vol(scope: VolumeScope, source: &str, target: &str) -> VolumeSpec {
    VolumeSpec {
        scope,
        source: source.into(),
        target: target.into(),
    }
}
