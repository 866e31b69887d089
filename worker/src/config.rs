//! The worker's command line and environment (one clap struct, flags with env fallbacks).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "volsnap-worker", version, about = "volsnap data-plane agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: recovery sweep, then claim and run this node's jobs.
    Run(RunArgs),
    /// Inspect or import snapshot archives.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// List the named crash points, one a line, in execution order.
    Failpoints,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Check an archive against every volsnap/1 rule; exit 0 with a summary if acceptable.
    Verify { file: PathBuf },
    /// Verify, copy into this node's snapshot dir, and register as `imported` + `ready`.
    Import {
        #[arg(long)]
        workload: String,
        file: PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// Settings every database-using subcommand shares.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// PostgreSQL URL. When unset, a private PostgreSQL cluster is started under
    /// `$VOLSNAP_STATE_DIR/postgres` (the embedded default for trying volsnap out).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// This worker's node name (jobs are routed to the node holding the volumes).
    #[arg(long, env = "VOLSNAP_NODE")]
    pub node: Option<String>,
    /// Journal, staging and temp files.
    #[arg(long, env = "VOLSNAP_STATE_DIR", default_value = "/var/lib/volsnap")]
    pub state_dir: PathBuf,
    /// Where snapshot archives live [default: $VOLSNAP_STATE_DIR/snapshots].
    #[arg(long, env = "VOLSNAP_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Root of `project` and `stage` scoped volumes.
    #[arg(
        long,
        env = "VOLSNAP_VOLUMES_ROOT",
        default_value = "/srv/volsnap/volumes"
    )]
    pub volumes_root: PathBuf,
}

impl CommonArgs {
    pub fn node(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        })
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.snapshot_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("snapshots"))
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Serve this worker's own Prometheus metrics (process liveness) on this address.
    #[arg(long, env = "VOLSNAP_WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Jobs run at once by this process.
    #[arg(long, env = "VOLSNAP_WORKER_CONCURRENCY", default_value_t = 2)]
    pub concurrency: usize,
    /// Heartbeat period for running jobs, in seconds.
    #[arg(long, env = "VOLSNAP_HEARTBEAT_SECS", default_value_t = 5.0)]
    pub heartbeat_secs: f64,
    /// A running job whose heartbeat is older than this (seconds) is queued for recovery.
    #[arg(long, env = "VOLSNAP_LEASE_SECS", default_value_t = 30.0)]
    pub lease_secs: f64,
    /// Fallback poll period (seconds) when no notification arrives.
    #[arg(long, env = "VOLSNAP_POLL_SECS", default_value_t = 10.0)]
    pub poll_secs: f64,
    /// How long SIGTERM waits for running jobs to reach a safe end (seconds).
    #[arg(long, env = "VOLSNAP_SHUTDOWN_GRACE_SECS", default_value_t = 600.0)]
    pub shutdown_grace_secs: f64,
    /// Finished jobs older than this many days are pruned (0: never).
    #[arg(long, env = "VOLSNAP_JOB_RETENTION_DAYS", default_value_t = 30.0)]
    pub retention_days: f64,
    /// Seconds Docker waits after SIGTERM before it kills a container being quiesced.
    #[arg(long, env = "VOLSNAP_DOCKER_STOP_TIMEOUT_SECS", default_value_t = 30)]
    pub docker_stop_timeout_secs: u64,
    /// How long a redeploy waits for containers to be running (and healthy), seconds.
    #[arg(long, env = "VOLSNAP_REDEPLOY_TIMEOUT_SECS", default_value_t = 120.0)]
    pub redeploy_timeout_secs: f64,
    /// How a volume and its staged copy trade places: `exchange` (one atomic
    /// renameat2(RENAME_EXCHANGE); three renames where unsupported) or `renames` (always
    /// the journaled three-rename path).
    #[arg(long, env = "VOLSNAP_SWAP_MODE", value_enum, default_value_t = crate::engine::swap::SwapMode::Exchange)]
    pub swap_mode: crate::engine::swap::SwapMode,
    /// gzip level (0-9) of captured snapshots.
    #[arg(long, env = "VOLSNAP_CAPTURE_GZIP_LEVEL", default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub capture_gzip_level: u32,
    /// gzip level (0-9) of the pre-restore copy a restore archives.
    #[arg(long, env = "VOLSNAP_PRE_RESTORE_GZIP_LEVEL", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub pre_restore_gzip_level: u32,
    /// How often files of deleted snapshots are removed, seconds (0: never).
    #[arg(long, env = "VOLSNAP_DELETION_SWEEP_SECS", default_value_t = 30.0)]
    pub deletion_sweep_secs: f64,
}

impl RunArgs {
    pub fn engine_config(&self, node: String) -> crate::engine::EngineConfig {
        let c = &self.common;
        let mut cfg = crate::engine::EngineConfig::new(
            node,
            c.state_dir.clone(),
            c.snapshot_dir(),
            c.volumes_root.clone(),
        );
        cfg.stop_timeout = Duration::from_secs(self.docker_stop_timeout_secs);
        cfg.start_timeout = Duration::from_secs_f64(self.redeploy_timeout_secs.max(0.1));
        cfg.swap_mode = self.swap_mode;
        cfg.capture_gzip_level = self.capture_gzip_level;
        cfg.pre_restore_gzip_level = self.pre_restore_gzip_level;
        cfg.deletion_sweep = (self.deletion_sweep_secs > 0.0)
            .then(|| Duration::from_secs_f64(self.deletion_sweep_secs.max(0.05)));
        cfg
    }

    pub fn queue_config(&self) -> volsnap_shared::queue::worker::WorkerConfig {
        let mut cfg = volsnap_shared::queue::worker::WorkerConfig::new(self.common.node());
        cfg.concurrency = self.concurrency.max(1);
        cfg.heartbeat_interval = Duration::from_secs_f64(self.heartbeat_secs.max(0.05));
        cfg.lease = Duration::from_secs_f64(self.lease_secs.max(self.heartbeat_secs * 2.0));
        cfg.poll_interval = Duration::from_secs_f64(self.poll_secs.max(0.05));
        cfg.shutdown_grace = Duration::from_secs_f64(self.shutdown_grace_secs.max(0.0));
        cfg.prune_after = (self.retention_days > 0.0)
            .then(|| Duration::from_secs_f64(self.retention_days * 86_400.0));
        cfg
    }
}
