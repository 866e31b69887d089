//! The engine: capture and restore jobs on this node's volumes and Docker engine, the
//! write-ahead journal and crash recovery, and removal of deleted snapshots' files.
//!
//! - [`restore`]: pre-flight → space → checksum → extract (app running) → journal →
//!   quiesce → swap → redeploy → archive the old data → close. See docs/engine.md.
//! - [`capture`]: stream a workload's volumes into a new snapshot.
//! - [`recovery`]: bring every journaled job on this node to a consistent state, at
//!   start-up and for every claimed job that is `recovering`.
//! - [`keep`]: the kept pre-restore directories, their background archive jobs
//!   ([`prearchive`]) and their retention; [`undo`] swaps one back in.

pub mod archive;
pub mod capture;
pub mod dirs;
pub mod docker;
pub mod error;
pub mod filecheck;
pub mod fsops;
pub mod journal;
pub mod keep;
pub mod nodelock;
pub mod paths;
pub mod plan;
pub mod prearchive;
pub mod recovery;
pub mod restore;
pub mod steps;
pub mod swap;
pub mod undo;
pub mod verify;

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use volsnap_shared::domain::JobKind;
use volsnap_shared::queue::{JobContext, JobHandler, JobOutcome};
use volsnap_shared::{db, failure};

use self::docker::Docker;
use self::error::{Failure, Stop};
use self::journal::{JournalDir, Outcome};
use self::paths::Roots;

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
    pool: PgPool,
    cfg: EngineConfig,
    roots: Roots,
    docker: Docker,
    journals: JournalDir,
    kept: keep::KeepDir,
    background: CancellationToken,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.background.cancel();
    }
}

impl Engine {
    pub async fn new(pool: PgPool, cfg: EngineConfig) -> anyhow::Result<Engine> {
        use anyhow::Context as _;
        let journals = JournalDir::new(&cfg.state_dir);
        journals
            .ensure()
            .with_context(|| format!("creating {}", cfg.state_dir.join("journal").display()))?;
        let kept = keep::KeepDir::new(&cfg.state_dir);
        kept.ensure()
            .with_context(|| format!("creating {}", cfg.state_dir.join("kept").display()))?;
        std::fs::create_dir_all(&cfg.snapshot_dir)
            .with_context(|| format!("creating {}", cfg.snapshot_dir.display()))?;
        let docker = Docker::connect(cfg.stop_timeout, cfg.start_timeout)
            .await
            .context("connecting to the Docker engine")?;
        let roots = Roots {
            volumes_root: cfg.volumes_root.clone(),
            absolute_roots: cfg.absolute_roots.clone(),
            state_dir: cfg.state_dir.clone(),
            snapshot_dir: cfg.snapshot_dir.clone(),
        };
        let background = CancellationToken::new();
        if let Some(every) = cfg.deletion_sweep {
            tokio::spawn(deletion_loop(
                pool.clone(),
                cfg.node.clone(),
                cfg.snapshot_dir.clone(),
                every,
                background.clone(),
            ));
            tokio::spawn(filecheck::run(
                pool.clone(),
                cfg.node.clone(),
                cfg.snapshot_dir.clone(),
                every,
                background.clone(),
            ));
        }
        Ok(Engine {
            pool,
            cfg,
            roots,
            docker,
            journals,
            kept,
            background,
        })
    }

    /// Start the maintenance of kept pre-restore copies ([`keep::run_loop`]); it ends
    /// with the engine.
    pub fn spawn_keep_loop(self: &std::sync::Arc<Self>) {
        if let Some(every) = self.cfg.keep_sweep {
            tokio::spawn(keep::run_loop(
                std::sync::Arc::downgrade(self),
                every,
                self.background.clone(),
            ));
        }
    }

    /// Wait (a bounded time) for the node-local workload lock: a predecessor that lost
    /// its database connection but still runs a step here must finish first.
    async fn node_lock(&self, ctx: &JobContext) -> Result<nodelock::WorkloadLock, JobOutcome> {
        let (dir, workload) = (&self.cfg.state_dir, ctx.job.workload_id);
        match wait_for_node_lock(ctx, "workload", false, || nodelock::try_lock(dir, workload)).await
        {
            Ok(l) => Ok(l),
            Err(LockWait::LeaseLost) => Err(JobOutcome::Abandon),
            // Nothing done yet: a stop hands the job back (its recovering flag kept).
            Err(LockWait::Shutdown | LockWait::Cancelled) => Err(JobOutcome::Requeue),
            Err(LockWait::TimedOut) => Err(JobOutcome::RequeueForRecovery),
            Err(LockWait::Broken(e)) => {
                tracing::error!(error = %e, "cannot take the node-local workload lock");
                Err(JobOutcome::RequeueForRecovery)
            }
        }
    }

    /// The absolute path of a snapshot's archive from its stored relative path.
    fn snapshot_file(&self, rel: &str) -> Result<PathBuf, Failure> {
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

    fn get(&self) -> (u64, u64) {
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

impl JobHandler for Engine {
    async fn startup_recovery(&self) -> anyhow::Result<()> {
        recovery::startup_sweep(self).await
    }

    async fn run(&self, ctx: JobContext) -> JobOutcome {
        // A plan is read-only: no node lock, no journal, nothing to recover.
        if ctx.job.kind == JobKind::Plan {
            return outcome_of(&ctx, plan::run(self, &ctx).await);
        }
        // A pre-restore archive reads a kept copy, which is no longer live data: it
        // takes that copy's lock, not the workload's (a restore or undo of the workload
        // never waits for it). It is idempotent: a crashed run is simply run again.
        if ctx.job.kind == JobKind::PreRestoreArchive {
            return outcome_of(&ctx, prearchive::run(self, &ctx).await);
        }
        let _node_lock = match self.node_lock(&ctx).await {
            Ok(l) => l,
            Err(outcome) => return outcome,
        };
        // A journal we cannot even read is treated as one to recover (which keeps it).
        let has_journal = !matches!(self.journals.read(ctx.id()), Ok(None));
        let res = if ctx.job.recovering || has_journal {
            recovery::recover_claimed(self, &ctx).await
        } else {
            match ctx.job.kind {
                JobKind::Restore => restore::run(self, &ctx).await,
                JobKind::Capture => capture::run(self, &ctx).await,
                JobKind::Plan => plan::run(self, &ctx).await,
                JobKind::Undo => undo::run(self, &ctx).await,
                JobKind::PreRestoreArchive => unreachable!("dispatched above"),
            }
        };
        outcome_of(&ctx, res)
    }
}

fn outcome_of(ctx: &JobContext, res: Result<Outcome, Stop>) -> JobOutcome {
    match res {
        Ok(Outcome::Succeeded) => JobOutcome::Succeeded,
        Ok(Outcome::Failed { code, message }) => {
            tracing::warn!(job_id = %ctx.id(), %code, %message, "job failed");
            JobOutcome::Failed { code, message }
        }
        // The queue puts it back while retries are left, else fails it with this.
        Ok(Outcome::Untouched { code, message }) => {
            tracing::warn!(job_id = %ctx.id(), %code, %message, "job changed nothing: retry");
            JobOutcome::Retry { code, message }
        }
        // A retry past the point of no return would be a blind re-run: refused.
        Err(Stop::Retry(f)) if ctx.entered_point_of_no_return() => {
            tracing::error!(job_id = %ctx.id(), error = %f, "transient failure after the point of no return");
            JobOutcome::RequeueForRecovery
        }
        Err(Stop::Retry(f)) => {
            tracing::warn!(job_id = %ctx.id(), code = %f.code, error = %f, "transient failure before any change: retry");
            JobOutcome::Retry {
                code: f.code.into(),
                message: f.message,
            }
        }
        Err(Stop::Failed(f)) => {
            tracing::error!(job_id = %ctx.id(), code = %f.code, error = %f, "job failed");
            JobOutcome::Failed {
                code: f.code.into(),
                message: f.message,
            }
        }
        Err(Stop::Cancelled) => JobOutcome::Cancelled,
        Err(Stop::Shutdown) => JobOutcome::Requeue,
        Err(Stop::LeaseLost) => JobOutcome::Abandon,
        Err(Stop::NeedsRecovery(f)) => {
            tracing::error!(job_id = %ctx.id(), error = %f, "job left for recovery");
            JobOutcome::RequeueForRecovery
        }
    }
}

/// Remove the files of snapshots of this node that the API marked deleted.
pub async fn sweep_deleted(
    pool: &PgPool,
    node: &str,
    snapshot_dir: &Path,
) -> anyhow::Result<usize> {
    let rows = db::snapshots::deleted_with_files(pool, node).await?;
    let mut removed = 0;
    for (id, rel) in rows {
        if let Some(rel) = rel {
            let path = snapshot_file(snapshot_dir, &rel)?;
            blocking(move || {
                fsops::remove_file(&path).map_err(|e| Failure::io("removing a snapshot file", e))
            })
            .await?;
        }
        db::snapshots::mark_file_removed(pool, id).await?;
        tracing::info!(snapshot_id = %id, "removed the file of a deleted snapshot");
        removed += 1;
    }
    Ok(removed)
}

async fn deletion_loop(
    pool: PgPool,
    node: String,
    snapshot_dir: PathBuf,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A sweep waiting for a database connection must not hold up a stop.
        let swept = tokio::select! {
            _ = stop.cancelled() => return,
            r = sweep_deleted(&pool, &node, &snapshot_dir) => r,
        };
        if let Err(e) = swept {
            tracing::warn!(error = %e, "removing files of deleted snapshots failed; will retry");
        }
    }
}

/// A keep record names the ids its background archive is enqueued with.
impl From<&keep::KeepRecord> for db::jobs::PreRestoreArchive {
    fn from(rec: &keep::KeepRecord) -> Self {
        db::jobs::PreRestoreArchive {
            job_id: rec.job_id,
            workload_id: rec.workload_id,
            snapshot_id: rec.snapshot_id,
            archive_job_id: rec.archive_job_id,
        }
    }
}
