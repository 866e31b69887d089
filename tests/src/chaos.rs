//! Support for the chaos tests (issue 10): a PRIVATE PostgreSQL cluster that a test may
//! stop, restart and starve of connections (the shared one must never be touched), a
//! world of workloads whose containers ignore SIGTERM (so every `docker stop` waits out
//! its timeout), real worker processes that can be killed, frozen and stopped, and the
//! strict end-state check: every job final, every volume all-old or all-new matching
//! its job, every container running and seeing its host data, one pre-restore
//! snapshot per committed restore, nothing left behind.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use volsnap_shared::domain::{Job, JobKind, JobState, SnapshotKind, VolumeScope, VolumeSpec};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};
use volsnap_shared::queue::{self, NewJob};

use crate::engine::{
    APP_FILES_NAMED_LIKE_VOLSNAP, IMAGE, docker, ensure_image, tree_hash, write_tree,
};

/// The newest PostgreSQL server binaries installed (Debian layout).
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("initdb")
}

/// Run a PostgreSQL tool, as the `postgres` user when we are root (it refuses root).
fn pg_tool(program: &str, args: &[&str]) -> std::process::Output {
    let exe = pg_bin().join(program);
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.args(args).output().expect("run a PostgreSQL tool")
}

/// A throw-away PostgreSQL cluster on a free loopback port, in a temp dir. Stopped
/// (immediately) and removed on drop.
pub struct PrivatePg {
    dir: tempfile::TempDir,
    pub port: u16,
    pub max_connections: u32,
}

impl PrivatePg {
    pub fn start(max_connections: u32) -> PrivatePg {
        let dir = tempfile::Builder::new()
            .prefix("volsnap-chaos-pg-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if nix::unistd::geteuid().is_root() {
            let st = Command::new("chown")
                .arg("postgres:")
                .arg(&data)
                .status()
                .unwrap();
            assert!(st.success(), "chown postgres: {}", data.display());
        }
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        let out = pg_tool(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "volsnap",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePg {
            dir,
            port,
            max_connections,
        };
        pg.pg_start();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    pub fn url(&self) -> String {
        format!("postgres://volsnap@127.0.0.1:{}/postgres", self.port)
    }

    /// Start the (stopped) cluster and wait until it accepts connections.
    pub fn pg_start(&self) {
        let d = self.data();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {d} -c max_connections={} -c fsync=off \
             -c superuser_reserved_connections=1",
            self.port, self.max_connections
        );
        let log = format!("{d}/server.log");
        let out = pg_tool(
            "pg_ctl",
            &["-D", &d, "-w", "-t", "60", "-l", &log, "-o", &opts, "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stop the cluster (fast: connections are terminated, as in a restart).
    pub fn pg_stop(&self) {
        let d = self.data();
        let out = pg_tool("pg_ctl", &["-D", &d, "-w", "-m", "fast", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A server restart, as an operator (or a crash-restarting supervisor) does it.
    pub fn restart(&self) {
        self.pg_stop();
        self.pg_start();
    }

    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&self.url())
            .await
            .expect("connect to the private cluster")
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let d = self.data();
        let _ = pg_tool("pg_ctl", &["-D", &d, "-m", "immediate", "stop"]);
    }
}

/// Terminate every backend of the current database but our own (what an operator's
/// `pg_terminate_backend` or a failover proxy does). Returns how many.
pub async fn terminate_backends(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND backend_type = 'client backend'",
    )
    .fetch_one(pool)
    .await
    .expect("terminate backends")
}

/// Starve the server of connections for `hold`: take every free slot, terminate every
/// other client backend (the workers' pooled connections; their pools must then
/// reconnect), take the slots that freed too, hold them all, then give them back.
/// Returns how many were held.
pub async fn exhaust_connections(url: &str, hold: Duration) -> usize {
    const HOG: &str = "volsnap-chaos-hog";
    let opts: sqlx::postgres::PgConnectOptions = url.parse().expect("url");
    let opts = opts.application_name(HOG);
    let mut held: Vec<sqlx::PgConnection> = vec![];
    for round in 0..2 {
        while held.len() < 1000 {
            match tokio::time::timeout(
                Duration::from_secs(5),
                <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts),
            )
            .await
            {
                Ok(Ok(c)) => held.push(c),
                _ => break,
            }
        }
        if round == 0 {
            let Some(c) = held.last_mut() else { break };
            let _: Option<i64> = sqlx::query_scalar(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name <> $1 \
                   AND backend_type = 'client backend'",
            )
            .bind(HOG)
            .fetch_optional(&mut *c)
            .await
            .ok()
            .flatten();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let n = held.len();
    tokio::time::sleep(hold).await;
    for c in held {
        let _ = sqlx::Connection::close(c).await;
    }
    n
}

/// A worker process of a [`World`]; killed on drop.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(self.pid(), sig);
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns how long the process took to exit (panics after `limit`).
    pub fn terminate(mut self, limit: Duration) -> Duration {
        let mut c = self.child.take().expect("running");
        let t0 = Instant::now();
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                return t0.elapsed();
            }
            if t0.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                panic!("worker did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One workload of a chaos world: one stage volume, one slow-stopping container, its
/// old data in place and a snapshot of new data.
pub struct Load {
    pub id: WorkloadId,
    pub vol: VolumeSpec,
    pub host: PathBuf,
    pub old: String,
    pub new: String,
    pub snapshot: SnapshotId,
    pub container: String,
}

/// A node with workloads, for one test: directories, containers (removed on drop),
/// worker processes.
pub struct World {
    pub url: String,
    pub pool: PgPool,
    pub node: String,
    pub dir: tempfile::TempDir,
    bin: &'static str,
    pub loads: Vec<Load>,
    containers: Vec<String>,
    seq: u32,
    /// Incompressible bytes added to each snapshot.
    pub noise_bytes: usize,
    /// Docker's stop timeout given to workers (the containers ignore SIGTERM, so every
    /// stop takes this long).
    pub stop_timeout_secs: u64,
}

impl Drop for World {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(self.containers.iter().map(String::as_str));
            let _ = Command::new("docker").args(&args).output();
        }
        if std::thread::panicking() {
            for i in 0..self.seq {
                let log = self.dir.path().join(format!("worker-{i}.log"));
                if let Ok(s) = std::fs::read_to_string(&log) {
                    let tail: Vec<&str> = s.lines().rev().take(30).collect();
                    eprintln!("---- worker-{i}.log (last lines) ----");
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

impl World {
    pub async fn new(url: String, pool: PgPool, bin: &'static str) -> World {
        ensure_image();
        let dir = tempfile::Builder::new()
            .prefix("volsnap-chaos-")
            .tempdir()
            .expect("temp dir");
        for d in ["state", "snapshots", "volumes/proj/prod"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        World {
            url,
            pool,
            node: format!("chaos-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            dir,
            bin,
            loads: vec![],
            containers: vec![],
            seq: 0,
            noise_bytes: 4 << 20,
            stop_timeout_secs: 2,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn snapshot_dir(&self) -> PathBuf {
        self.dir.path().join("snapshots")
    }
    pub fn volumes_root(&self) -> PathBuf {
        self.dir.path().join("volumes")
    }
    pub fn journal_dir(&self) -> PathBuf {
        self.state_dir().join("journal")
    }

    /// A container of `workload` with `vol` bind-mounted, that ignores SIGTERM: every
    /// `docker stop` of it waits out the stop timeout, then kills it.
    pub fn run_slow_container(
        &mut self,
        workload: WorkloadId,
        vol: &VolumeSpec,
        host: &Path,
    ) -> String {
        let label = format!("volsnap.workload={workload}");
        let mount = format!("{}:{}", host.display(), vol.target);
        let id = docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            &label,
            "--label",
            "volsnap.test=chaos",
            "-v",
            &mount,
            IMAGE,
            "sh",
            "-c",
            "trap '' TERM; while :; do sleep 1; done",
        ]);
        self.containers.push(id.clone());
        id
    }

    /// Add `n` workloads (old data, a ready snapshot of new data, a running container).
    pub async fn add_loads(&mut self, n: usize) {
        for i in 0..n {
            let id = WorkloadId::new();
            let vol = VolumeSpec {
                scope: VolumeScope::Stage,
                source: format!("data-{i}"),
                target: "/data".into(),
            };
            let host = self.volumes_root().join("proj/prod").join(&vol.source);
            sqlx::query(
                "INSERT INTO workloads (id, name, project, stage, node, source_kind, image, volumes) \
                 VALUES ($1, $2, 'proj', 'prod', $3, 'image', $4, $5)",
            )
            .bind(id)
            .bind(format!("app-{i}"))
            .bind(&self.node)
            .bind(IMAGE)
            .bind(sqlx::types::Json(vec![vol.clone()]))
            .execute(&self.pool)
            .await
            .expect("insert workload");
            write_tree(&host, 1000 + i as u64, 1);
            let old = tree_hash(&host);
            let src = self.dir.path().join(format!("new-{i}"));
            write_tree(&src, 2000 + i as u64, 1);
            // Some incompressible bytes, so checksum and extraction (the steps before
            // the point of no return) take a moment a fault can land in.
            write_noise(&src.join("noise.bin"), 2000 + i as u64, self.noise_bytes);
            let new = tree_hash(&src);
            let snapshot = self.make_snapshot(id, &vol, &src).await;
            let container = self.run_slow_container(id, &vol, &host);
            self.loads.push(Load {
                id,
                vol,
                host,
                old,
                new,
                snapshot,
                container,
            });
        }
    }

    async fn make_snapshot(&self, w: WorkloadId, vol: &VolumeSpec, src: &Path) -> SnapshotId {
        let sid = SnapshotId::new();
        let rel = format!("{w}/{sid}.tar.gz");
        let dest = self.snapshot_dir().join(&rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let s = volsnap_archive::write_archive_file(
            &dest,
            &w.to_string(),
            &[volsnap_archive::VolumeInput {
                index: 0,
                target: vol.target.clone(),
                scope: vol.scope.as_str().into(),
                source: vol.source.clone(),
                path: src.to_path_buf(),
                root: None,
            }],
            &Default::default(),
            &mut |_, _| {},
        )
        .expect("write archive");
        let bytes = std::fs::read(&dest).unwrap();
        sqlx::query(
            "INSERT INTO snapshots (id, workload_id, node, kind, state, archive_path, size_bytes, sha256, manifest) \
             VALUES ($1, $2, $3, $4, 'ready', $5, $6, $7, $8)",
        )
        .bind(sid)
        .bind(w)
        .bind(&self.node)
        .bind(SnapshotKind::Manual)
        .bind(&rel)
        .bind(bytes.len() as i64)
        .bind(hex::encode(Sha256::digest(&bytes)))
        .bind(serde_json::to_value(&s.manifest).unwrap())
        .execute(&self.pool)
        .await
        .unwrap();
        sid
    }

    /// A worker process with short test intervals and `extra` flags.
    pub fn worker(&mut self, extra: &[&str]) -> Proc {
        let n = self.seq;
        self.seq += 1;
        let log = self.dir.path().join(format!("worker-{n}.log"));
        let stop = self.stop_timeout_secs.to_string();
        let mut cmd = Command::new(self.bin);
        cmd.args(["run", "--database-url", &self.url, "--node", &self.node])
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--snapshot-dir")
            .arg(self.snapshot_dir())
            .arg("--volumes-root")
            .arg(self.volumes_root())
            .args([
                "--heartbeat-secs",
                "0.2",
                "--lease-secs",
                "2",
                "--poll-secs",
                "0.2",
                "--docker-stop-timeout-secs",
                &stop,
                "--redeploy-timeout-secs",
                "30",
                "--deletion-sweep-secs",
                "0.5",
                "--shutdown-grace-secs",
                "60",
                "--max-transient-retries",
                "20",
                "--retry-backoff-secs",
                "0.2",
                // Kept pre-restore copies are archived in the background and removed
                // right after (issue 11), so the strict end state has none left.
                "--pre-restore-keep",
                "0",
                "--keep-sweep-secs",
                "0.3",
            ])
            .args(extra)
            .env("RUST_LOG", "info,sqlx=warn")
            .env_remove("VOLSNAP_CRASH_AT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Proc {
            child: Some(cmd.spawn().expect("spawn the worker")),
            log,
        }
    }

    /// Enqueue a restore of every workload's snapshot; the jobs in workload order.
    pub async fn enqueue_restores(&self) -> Vec<JobId> {
        let mut ids = vec![];
        for l in &self.loads {
            let mut conn = self.pool.acquire().await.unwrap();
            let job = queue::enqueue(
                &mut conn,
                &NewJob {
                    kind: JobKind::Restore,
                    workload_id: l.id,
                    snapshot_id: Some(l.snapshot),
                    node: self.node.clone(),
                    batch_id: None,
                    requested_by: Some("chaos".into()),
                },
            )
            .await
            .expect("enqueue");
            ids.push(job.id);
        }
        ids
    }

    /// The jobs as they are now (a database that is down is waited for).
    pub async fn jobs(&self, ids: &[JobId]) -> Vec<Job> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut out = vec![];
            let mut err = None;
            for id in ids {
                match queue::get_job(&self.pool, *id).await {
                    Ok(Some(j)) => out.push(j),
                    Ok(None) => panic!("job {id} vanished"),
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            match err {
                None => return out,
                Some(e) => {
                    assert!(Instant::now() < deadline, "database unreachable: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Wait until `pred` holds for the jobs (polling); returns them.
    pub async fn wait_jobs(
        &self,
        ids: &[JobId],
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Job]) -> bool,
    ) -> Vec<Job> {
        let deadline = Instant::now() + timeout;
        loop {
            let jobs = self.jobs(ids).await;
            if pred(&jobs) {
                return jobs;
            }
            if Instant::now() >= deadline {
                let open: Vec<String> = jobs
                    .iter()
                    .filter(|j| !j.state.is_final())
                    .map(|j| format!("{} {} {:?}", j.id, j.state, j.phase))
                    .collect();
                panic!("timed out waiting for {what}; open jobs: {open:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Entries volsnap would have left behind: `.volsnap-*` next to or inside a
    /// target, any file in the journal dir, any non-archive in the snapshot dir.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = vec![];
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        for l in &self.loads {
            dirs.insert(l.host.parent().unwrap().to_path_buf());
            dirs.insert(l.host.clone());
        }
        for d in dirs {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                // `write_tree` plants app files with volsnap-like names in each volume.
                if name.starts_with(".volsnap-")
                    && !APP_FILES_NAMED_LIKE_VOLSNAP.contains(&name.as_str())
                {
                    out.push(e.path());
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.journal_dir()) {
            out.extend(rd.map(|e| e.unwrap().path()));
        }
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

/// `n` pseudo-random bytes (xorshift from `seed`) at `path`.
pub fn write_noise(path: &Path, seed: u64, n: usize) {
    let mut x = seed | 1;
    let mut buf = Vec::with_capacity(n);
    while buf.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(n);
    std::fs::write(path, buf).unwrap();
}

/// Whether a container is running now.
pub fn running(id: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", id]) == "true"
}

/// The names in `path` as the container sees them.
pub fn container_names(id: &str, path: &str) -> BTreeSet<String> {
    docker(&["exec", id, "ls", "-A", path])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The names in a host directory.
pub fn host_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// What one chaos scenario ended with.
#[derive(Debug, Default)]
pub struct Tally {
    pub submitted: usize,
    pub succeeded: usize,
    /// Jobs put back at least once after a transient fault.
    pub retried: usize,
    /// All transient retries of all jobs.
    pub retries: i64,
    pub failed: usize,
    pub cancelled: usize,
    pub drain: Duration,
    pub failures: Vec<String>,
}

impl Tally {
    pub fn of(jobs: &[Job], drain: Duration) -> Tally {
        let mut t = Tally {
            submitted: jobs.len(),
            drain,
            ..Tally::default()
        };
        for j in jobs {
            match j.state {
                JobState::Succeeded => t.succeeded += 1,
                JobState::Failed => {
                    t.failed += 1;
                    t.failures.push(format!(
                        "{}: {:?}",
                        j.error_code.as_deref().unwrap_or("?"),
                        j.error_message
                    ));
                }
                JobState::Cancelled => t.cancelled += 1,
                _ => {}
            }
            if j.retries > 0 {
                t.retried += 1;
                t.retries += i64::from(j.retries);
            }
        }
        t
    }
}

/// The strict end state: every job final; each volume all-old or all-new matching its
/// job (new exactly when it succeeded); each container running — still, after more
/// than a stop timeout, so a late stop would have shown — and seeing its host data;
/// exactly one ready pre-restore snapshot per succeeded restore, linked from the job,
/// none for the others; nothing left behind.
pub async fn assert_strict(w: &World, jobs: &[Job]) {
    assert!(
        jobs.iter().all(|j| j.state.is_final()),
        "not every job is final"
    );
    tokio::time::sleep(Duration::from_secs(w.stop_timeout_secs + 2)).await;
    // The pre-restore copies are archived by background jobs of their own (issue 11):
    // wait for them to end and for the expired copies to be removed.
    let kept_dir = w.state_dir().join("kept");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE kind = 'pre_restore_archive' AND state IN ('queued', 'running')",
        )
        .fetch_one(&w.pool)
        .await
        .unwrap();
        let kept = std::fs::read_dir(&kept_dir).map_or(0, |d| d.count());
        if active == 0 && kept == 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            break; // reported below as missing snapshots or leftovers
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut problems = vec![];
    for (l, j) in w.loads.iter().zip(jobs) {
        let linked: Option<SnapshotId> =
            sqlx::query_scalar("SELECT pre_restore_snapshot_id FROM jobs WHERE id = $1")
                .bind(j.id)
                .fetch_one(&w.pool)
                .await
                .unwrap();
        assert_eq!(j.workload_id, l.id);
        let now = tree_hash(&l.host);
        let expect_new = j.state == JobState::Succeeded;
        if now != l.old && now != l.new {
            problems.push(format!("{}: volume is neither all old nor all new", l.id));
        } else if (now == l.new) != expect_new {
            problems.push(format!(
                "{}: volume holds the {} data but the job is {} ({:?})",
                l.id,
                if now == l.new { "new" } else { "old" },
                j.state,
                j.error_message
            ));
        }
        if !running(&l.container) {
            problems.push(format!(
                "{}: container {} is not running",
                l.id,
                &l.container[..12]
            ));
        } else if container_names(&l.container, &l.vol.target) != host_names(&l.host) {
            problems.push(format!(
                "{}: the container does not see its host data",
                l.id
            ));
        }
        let pre: Vec<(SnapshotId, String)> = sqlx::query_as(
            "SELECT id, state FROM snapshots WHERE workload_id = $1 AND kind = 'pre-restore'",
        )
        .bind(l.id)
        .fetch_all(&w.pool)
        .await
        .unwrap();
        let want = usize::from(expect_new);
        if pre.len() != want || pre.iter().any(|(_, s)| s != "ready") {
            problems.push(format!(
                "{}: {} pre-restore snapshots {pre:?}, want {want} ready",
                l.id,
                pre.len()
            ));
        } else if expect_new && linked != Some(pre[0].0) {
            problems.push(format!(
                "{}: the job does not link its pre-restore snapshot",
                l.id
            ));
        }
    }
    let mut left = w.leftovers();
    if let Ok(rd) = std::fs::read_dir(&kept_dir) {
        left.extend(rd.map(|e| e.unwrap().path()));
    }
    if !left.is_empty() {
        problems.push(format!("left behind: {left:?}"));
    }
    assert!(
        problems.is_empty(),
        "strict rule broken:\n{}",
        problems.join("\n")
    );
}
