//! The worker's command line and environment (one clap struct, flags with env fallbacks).

use std::path::{Path, PathBuf};
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
    /// Directories under which `absolute` volumes may live, colon-separated. Unset:
    /// absolute volumes are refused. Each must be absolute, not `/` nor a system
    /// directory, and must not overlap the state or snapshot directory.
    #[arg(long, env = "VOLSNAP_ABSOLUTE_ROOTS")]
    pub absolute_roots: Option<String>,
}

impl CommonArgs {
    /// [`CommonArgs::node`], refused unless it follows the node-name grammar.
    pub fn checked_node(&self) -> anyhow::Result<String> {
        let node = self.node();
        volsnap_shared::domain::check_node_name(&node).map_err(|e| {
            anyhow::anyhow!(
                "VOLSNAP_NODE (--node, default the hostname) {:?} {e}",
                node.escape_debug().to_string()
            )
        })?;
        Ok(node)
    }

    /// The configured `VOLSNAP_ABSOLUTE_ROOTS` (empty entries ignored).
    pub fn absolute_roots(&self) -> Vec<PathBuf> {
        self.absolute_roots
            .iter()
            .flat_map(|s| s.split(':'))
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    /// The node's roots as published for the API: canonical (as far as they exist),
    /// refused when a volumes root or absolute root is `/`, a system directory, or
    /// overlaps the state or snapshot directory (the error names the setting).
    pub fn node_roots(&self) -> anyhow::Result<volsnap_shared::volume::NodeRoots> {
        use volsnap_shared::volume::check_root;
        let state_dir = resolved("VOLSNAP_STATE_DIR", &self.state_dir)?;
        let snapshot_dir = resolved("VOLSNAP_SNAPSHOT_DIR", &self.snapshot_dir())?;
        let volumes_root = resolved("VOLSNAP_VOLUMES_ROOT", &self.volumes_root)?;
        check_root(
            "VOLSNAP_VOLUMES_ROOT",
            &volumes_root,
            &state_dir,
            &snapshot_dir,
        )?;
        let mut absolute_roots = Vec::new();
        for r in self.absolute_roots() {
            let r = resolved("VOLSNAP_ABSOLUTE_ROOTS", &r)?;
            check_root("VOLSNAP_ABSOLUTE_ROOTS", &r, &state_dir, &snapshot_dir)?;
            absolute_roots.push(r);
        }
        Ok(volsnap_shared::volume::NodeRoots {
            volumes_root,
            absolute_roots,
            state_dir,
            snapshot_dir,
        })
    }

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

/// `p` made absolute and normalised, with its longest existing prefix canonicalised
/// (symlinks resolved); UTF-8, since the roots are published as text.
fn resolved(setting: &str, p: &Path) -> anyhow::Result<PathBuf> {
    use std::path::Component;
    anyhow::ensure!(
        !p.as_os_str().is_empty(),
        "{setting} is set to an empty path"
    );
    let abs =
        std::path::absolute(p).map_err(|e| anyhow::anyhow!("{setting} ({}): {e}", p.display()))?;
    let mut existing = PathBuf::from("/");
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    for c in abs.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                anyhow::bail!("{setting} ({}) must not contain `..`", p.display())
            }
            Component::Normal(n) if rest.is_empty() && existing.join(n).exists() => {
                existing.push(n)
            }
            Component::Normal(n) => rest.push(n),
            Component::Prefix(_) => anyhow::bail!("{setting} must be a Unix path"),
        }
    }
    let mut out = std::fs::canonicalize(&existing)
        .map_err(|e| anyhow::anyhow!("{setting} ({}): {e}", p.display()))?;
    out.extend(rest);
    anyhow::ensure!(
        out.to_str().is_some(),
        "{setting} ({}) is not valid UTF-8",
        out.display()
    );
    Ok(out)
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
    /// How long a restore's displaced data is kept as a directory next to each volume
    /// (undo swaps it back in), counted from the swap; always at least until it has
    /// been archived as a `pre-restore` snapshot. `24h`, `90m`, `2s`, `1d`, seconds.
    #[arg(long, env = "VOLSNAP_PRE_RESTORE_KEEP", default_value = "24h", value_parser = crate::engine::keep::parse_duration)]
    pub pre_restore_keep: Duration,
    /// How often kept pre-restore copies are looked after (archive jobs enqueued,
    /// expired copies removed), seconds (0: never).
    #[arg(long, env = "VOLSNAP_KEEP_SWEEP_SECS", default_value_t = 5.0)]
    pub keep_sweep_secs: f64,
    /// How often files of deleted snapshots are removed, seconds (0: never).
    #[arg(long, env = "VOLSNAP_DELETION_SWEEP_SECS", default_value_t = 30.0)]
    pub deletion_sweep_secs: f64,
    /// A job that changed nothing and failed for a transient cause (database
    /// unreachable, lock connection lost, lease lost) is queued again at most this many
    /// times (0: never) before it fails.
    #[arg(long, env = "VOLSNAP_MAX_TRANSIENT_RETRIES", default_value_t = 5)]
    pub max_transient_retries: u32,
    /// Backoff before the first such retry, seconds; doubled each time, at most 60.
    #[arg(long, env = "VOLSNAP_RETRY_BACKOFF_SECS", default_value_t = 1.0)]
    pub retry_backoff_secs: f64,
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
        cfg.absolute_roots = c.absolute_roots();
        cfg.stop_timeout = Duration::from_secs(self.docker_stop_timeout_secs);
        cfg.start_timeout = Duration::from_secs_f64(self.redeploy_timeout_secs.max(0.1));
        cfg.swap_mode = self.swap_mode;
        cfg.capture_gzip_level = self.capture_gzip_level;
        cfg.pre_restore_gzip_level = self.pre_restore_gzip_level;
        cfg.pre_restore_keep = self.pre_restore_keep;
        cfg.keep_sweep = (self.keep_sweep_secs > 0.0)
            .then(|| Duration::from_secs_f64(self.keep_sweep_secs.max(0.05)));
        cfg.deletion_sweep = (self.deletion_sweep_secs > 0.0)
            .then(|| Duration::from_secs_f64(self.deletion_sweep_secs.max(0.05)));
        cfg
    }

    pub fn queue_config(&self) -> volsnap_shared::queue::WorkerConfig {
        let mut cfg = volsnap_shared::queue::WorkerConfig::new(self.common.node());
        cfg.concurrency = self.concurrency.max(1);
        cfg.heartbeat_interval = Duration::from_secs_f64(self.heartbeat_secs.max(0.05));
        cfg.lease = Duration::from_secs_f64(self.lease_secs.max(self.heartbeat_secs * 2.0));
        cfg.poll_interval = Duration::from_secs_f64(self.poll_secs.max(0.05));
        cfg.shutdown_grace = Duration::from_secs_f64(self.shutdown_grace_secs.max(0.0));
        cfg.prune_after = (self.retention_days > 0.0)
            .then(|| Duration::from_secs_f64(self.retention_days * 86_400.0));
        cfg.retry.max_retries = self.max_transient_retries;
        cfg.retry.backoff = Duration::from_secs_f64(self.retry_backoff_secs.clamp(0.0, 60.0));
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(extra: &[&str]) -> anyhow::Result<CommonArgs> {
        let state = std::env::temp_dir().join("volsnap-cfg-test-state");
        let mut flags = vec![
            ("--state-dir", state.display().to_string()),
            ("--volumes-root", "/data/volsnap/volumes".to_owned()),
            ("--node", "node-a".to_owned()),
        ];
        for pair in extra.chunks(2) {
            flags.retain(|(f, _)| *f != pair[0]);
            flags.push((pair[0], pair[1].to_owned()));
        }
        let mut args = vec!["volsnap-worker".to_owned(), "run".to_owned()];
        args.extend(flags.into_iter().map(|(f, v)| format!("{f}={v}")));
        match Cli::try_parse_from(args)?.command {
            Command::Run(r) => Ok(r.common),
            _ => unreachable!(),
        }
    }

    fn refusal(extra: &[&str]) -> String {
        let c = common(extra).unwrap();
        c.checked_node()
            .and_then(|_| c.node_roots())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn roots_are_checked_at_start() {
        let c = common(&["--absolute-roots", "/data/apps:/data/more:"]).unwrap();
        let r = c.node_roots().unwrap();
        assert_eq!(r.absolute_roots.len(), 2);
        assert_eq!(r.volumes_root, Path::new("/data/volsnap/volumes"));
        assert!(refusal(&["--volumes-root", "/"]).contains("VOLSNAP_VOLUMES_ROOT"));
        assert!(refusal(&["--volumes-root", "/etc/x"]).contains("VOLSNAP_VOLUMES_ROOT"));
        assert!(refusal(&["--absolute-roots", "/data:/var"]).contains("VOLSNAP_ABSOLUTE_ROOTS"));
        assert!(refusal(&["--absolute-roots", "/run"]).contains("VOLSNAP_ABSOLUTE_ROOTS"));
        let state = std::env::temp_dir().join("volsnap-cfg-test-state");
        let inside = state.join("vols").display().to_string();
        let msg = refusal(&["--volumes-root", &inside]);
        assert!(
            msg.contains("VOLSNAP_VOLUMES_ROOT") && msg.contains("state or snapshot"),
            "{msg}"
        );
        let msg = refusal(&[
            "--absolute-roots",
            &std::env::temp_dir().display().to_string(),
        ]);
        assert!(msg.contains("VOLSNAP_ABSOLUTE_ROOTS"), "{msg}");
    }

    #[test]
    fn node_names_are_checked_at_start() {
        for bad in ["node\u{200b}a", "node\u{202e}a", "a b", "-a"] {
            let msg = refusal(&["--node", bad]);
            assert!(msg.contains("VOLSNAP_NODE"), "{msg}");
        }
    }
}
