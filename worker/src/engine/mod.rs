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
pub mod context;
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

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use volsnap_shared::db;
use volsnap_shared::domain::JobKind;
use volsnap_shared::queue::{JobContext, JobHandler, JobOutcome};

pub use self::context::{
    Engine, EngineConfig, Progress, blocking, blocking_with_progress, snapshot_file,
};
use self::context::{LockWait, wait_for_node_lock};
use self::docker::Docker;
use self::error::{Failure, Stop};
use self::journal::{JournalDir, Outcome};
use self::paths::Roots;

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
