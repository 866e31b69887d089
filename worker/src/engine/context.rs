//! What every step of the engine works with: its settings ([`EngineConfig`]), the
//! [`Engine`] itself (pool, Docker, journal and keep directories), and the helpers the
//! steps share (blocking work, progress, node-local lock waits, snapshot paths). The
//! step modules import from here, never from `engine/mod.rs`, which only builds the
//! engine and dispatches jobs to the steps.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use volsnap_shared::failure;
use volsnap_shared::queue::JobContext;

use super::docker::Docker;
use super::error::Failure;
use super::journal::JournalDir;
use super::paths::Roots;
use super::{archive, keep, nodelock, swap};

/// Where the engine keeps its files, finds volumes, and how patient it is with Docker.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node: String,
    pub state_dir: PathBuf,
    pub snapshot_dir: PathBuf,
    pub volumes_root: PathBuf,
    /// `VOLSNAP_ABSOLUTE_ROOTS`: where `absolute` volumes may live (empty: nowhere).
    pub absolute_roots: Vec<PathBuf>,
    /// Docker's grace between SIGTERM and SIGKILL when quiescing.
    pub stop_timeout: Duration,
    /// How long a redeploy waits for containers to run (and be healthy).
    pub start_timeout: Duration,
    /// How often files of deleted snapshots are looked for (None: never).
    pub deletion_sweep: Option<Duration>,
    /// Caps for every archive read or written.
    pub limits: archive::Limits,
    /// How volumes are swapped (the three-rename fallback can be forced).
    pub swap_mode: swap::SwapMode,
    /// gzip level of manual captures.
    pub capture_gzip_level: u32,
    /// gzip level of the pre-restore copy (archived in the background by its own job).
    pub pre_restore_gzip_level: u32,
    /// `VOLSNAP_PRE_RESTORE_KEEP`: how long a restore's displaced data is kept as a
    /// directory after the swap (and always until archived).
    pub pre_restore_keep: Duration,
    /// How often kept copies are looked after (archive jobs enqueued, expired copies
    /// removed); None: never.
    pub keep_sweep: Option<Duration>,
}

impl EngineConfig {
    pub fn new(
        node: String,
        state_dir: PathBuf,
        snapshot_dir: PathBuf,
        volumes_root: PathBuf,
    ) -> Self {
        EngineConfig {
            node,
            state_dir,
            snapshot_dir,
            volumes_root,
            absolute_roots: Vec::new(),
            stop_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(120),
            deletion_sweep: Some(Duration::from_secs(30)),
            limits: archive::Limits::default(),
            swap_mode: swap::SwapMode::Exchange,
            capture_gzip_level: 6,
            pre_restore_gzip_level: 1,
            pre_restore_keep: Duration::from_secs(24 * 3600),
            keep_sweep: Some(Duration::from_secs(5)),
        }
    }
}

pub struct Engine {
    pub(super) pool: PgPool,
    pub(super) cfg: EngineConfig,
    pub(super) roots: Roots,
    pub(super) docker: Docker,
    pub(super) journals: JournalDir,
    pub(super) kept: keep::KeepDir,
    pub(super) background: CancellationToken,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.background.cancel();
    }
}

impl Engine {
    /// The absolute path of a snapshot's archive from its stored relative path.
    pub(super) fn snapshot_file(&self, rel: &str) -> Result<PathBuf, Failure> {
        snapshot_file(&self.cfg.snapshot_dir, rel)
    }
}

/// `snapshot_dir/rel`, refusing anything but a plain relative path.
pub fn snapshot_file(snapshot_dir: &Path, rel: &str) -> Result<PathBuf, Failure> {
    let p = Path::new(rel);
    let plain = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(Failure::new(
            failure::SNAPSHOT_FILE_MISSING,
            "the snapshot's stored archive path is not a plain relative path",
        ));
    }
    Ok(snapshot_dir.join(p))
}

/// Run blocking filesystem work off the async executor.
pub async fn blocking<T, F>(f: F) -> Result<T, Failure>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Failure> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Failure::internal(
            failure::INTERNAL,
            "a blocking step panicked",
            e,
        )),
    }
}

/// Byte progress shared between a blocking step and the task that reports it.
#[derive(Debug, Default)]
pub struct Progress {
    done: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn set(&self, done: u64, total: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.done.store(done, Relaxed);
        self.total.store(total, Relaxed);
    }

    pub(super) fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.done.load(Relaxed), self.total.load(Relaxed))
    }
}

/// [`blocking`], reporting the step's byte progress on the job (when there is one)
/// a few times a second. A failed progress write (lost lease) does not stop the step:
/// the caller checks the lease afterwards.
pub async fn blocking_with_progress<T, F>(ctx: Option<&JobContext>, f: F) -> Result<T, Failure>
where
    T: Send + 'static,
    F: FnOnce(&Progress) -> Result<T, Failure> + Send + 'static,
{
    let progress = std::sync::Arc::new(Progress::default());
    let mut task = tokio::task::spawn_blocking({
        let p = progress.clone();
        move || f(&p)
    });
    let res = loop {
        tokio::select! {
            r = &mut task => break r,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Some(ctx) = ctx {
                    let (done, total) = progress.get();
                    let _ = ctx.set_progress(done, total).await;
                }
            }
        }
    };
    let res =
        res.map_err(|e| Failure::internal(failure::INTERNAL, "a blocking step panicked", e))?;
    if let (Some(ctx), Ok(_)) = (ctx, &res) {
        let (_, total) = progress.get();
        let _ = ctx.set_progress(total, total).await;
    }
    res
}

/// Why [`wait_for_node_lock`] gave up.
#[derive(Debug)]
pub(crate) enum LockWait {
    LeaseLost,
    Shutdown,
    /// A client asked to cancel the job (only when `watch_cancel`).
    Cancelled,
    /// Still held after two minutes.
    TimedOut,
    Broken(std::io::Error),
}

/// Wait (at most two minutes, polling every 200 ms) for a node-local lock that
/// `try_lock` takes, giving up when the job's lease is lost, the process stops, or —
/// with `watch_cancel` — a cancel is requested.
pub(crate) async fn wait_for_node_lock(
    ctx: &JobContext,
    what: &'static str,
    watch_cancel: bool,
    mut try_lock: impl FnMut() -> std::io::Result<Option<nodelock::WorkloadLock>>,
) -> Result<nodelock::WorkloadLock, LockWait> {
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut warned = false;
    let mut last_cancel_check = started;
    loop {
        match try_lock() {
            Ok(Some(l)) => return Ok(l),
            Ok(None) => {}
            Err(e) => return Err(LockWait::Broken(e)),
        }
        if !warned {
            tracing::warn!(job_id = %ctx.id(), lock = what, "another job or process on this node holds the lock; waiting");
            warned = true;
        }
        if ctx.lease_lost.is_cancelled() {
            return Err(LockWait::LeaseLost);
        }
        if ctx.shutdown.is_cancelled() {
            return Err(LockWait::Shutdown);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(LockWait::TimedOut);
        }
        if watch_cancel && now - last_cancel_check >= Duration::from_secs(1) {
            last_cancel_check = now;
            if let Ok(true) = ctx.cancel_requested().await {
                return Err(LockWait::Cancelled);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
