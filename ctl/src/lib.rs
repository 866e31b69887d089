//! volsnapctl: restores from a terminal or a script, as a client of the volsnap HTTP
//! API only (it never touches the database, Docker or volumes). See docs/ctl.md.

pub mod api;
pub mod batch;
pub mod commands;
pub mod plan;
pub mod resolve;
pub mod term;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use api::{Client, CtlError, exit};

#[derive(Debug, Parser)]
#[command(
    name = "volsnapctl",
    version,
    about = "Restore volsnap snapshots from a terminal: single restores, batches, progress",
    after_help = "Exit codes: 0 everything succeeded; 1 some job or item failed (or was cancelled, or \
                  not run); 2 usage or configuration error (including an unreachable API); 3 the API \
                  refused the request (4xx)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Connection and output (every command)")]
pub struct Global {
    /// Base URL of volsnap-api.
    #[arg(
        long,
        env = "VOLSNAP_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API token (`volsnap-api token create`). Prefer VOLSNAP_TOKEN or --token-file: a
    /// flag shows up in the process list.
    #[arg(long, env = "VOLSNAP_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A file holding the API token (first line).
    #[arg(
        long,
        env = "VOLSNAP_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List workloads.
    Workloads {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        stage: Option<String>,
    },
    /// List a workload's snapshots (newest first).
    Snapshots {
        /// Workload id or project/stage/name.
        workload: String,
        /// Include deleted snapshots.
        #[arg(long)]
        all: bool,
    },
    /// List jobs (newest first).
    Jobs {
        /// States, comma-separated (queued,running,succeeded,failed,cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only this batch's jobs.
        #[arg(long)]
        batch: Option<String>,
        /// Kinds, comma-separated (capture,restore,plan).
        #[arg(long)]
        kind: Option<String>,
        /// Only this workload's jobs (id or project/stage/name).
        #[arg(long)]
        workload: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one job; with --follow, a live progress bar until it is final.
    Job {
        id: String,
        #[arg(long)]
        follow: bool,
    },
    /// Capture a snapshot of a workload.
    Capture {
        /// Workload id or project/stage/name.
        workload: String,
        /// Follow the capture to its end (exit 1 if it fails).
        #[arg(long)]
        wait: bool,
    },
    /// Show what restoring a snapshot would do (a dry run on the worker; changes nothing).
    Plan {
        /// Workload id or project/stage/name.
        workload: String,
        /// Snapshot id (or use --latest).
        #[arg(required_unless_present = "latest", conflicts_with = "latest")]
        snapshot: Option<String>,
        /// The workload's newest ready snapshot (manual or imported).
        #[arg(long)]
        latest: bool,
    },
    /// Restore a workload to a snapshot (shows its plan, then asks for the workload's
    /// project/stage/name).
    Restore(RestoreArgs),
    /// Undo a succeeded restore (`POST /api/jobs/{id}/undo`): the kept pre-restore
    /// directory is swapped back in, or the pre-restore snapshot restored.
    Undo {
        /// The restore job to undo.
        job: String,
        #[command(flatten)]
        opts: RestoreOpts,
    },
    /// Restore many workloads: a file (or `-`) of workload,snapshot lines (CSV) or JSON
    /// lines, or --select … --latest.
    BatchRestore(batch::BatchArgs),
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Workload id or project/stage/name.
    pub workload: String,
    /// Snapshot id (or use --latest).
    #[arg(required_unless_present = "latest", conflicts_with = "latest")]
    pub snapshot: Option<String>,
    /// The workload's newest ready snapshot (manual or imported; never a pre-restore copy).
    #[arg(long)]
    pub latest: bool,
    #[command(flatten)]
    pub opts: RestoreOpts,
}

#[derive(Debug, Args)]
pub struct RestoreOpts {
    /// Follow the restore with a progress bar; exit 1 with the error if it fails.
    #[arg(long)]
    pub wait: bool,
    /// Do not ask for confirmation (and do not run the plan shown before the question).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Compare the restored volumes with the snapshot before the job succeeds
    /// (`verify_mismatch` otherwise). Default: the workload's `verify_restores`.
    #[arg(long)]
    pub verify: bool,
}

/// The whole program; `main.rs` only calls this.
pub async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let output = cli.global.output;
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if output == Output::Json {
                println!("{}", e.to_json());
            }
            eprintln!("volsnapctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn token_of(g: &Global) -> Result<String, CtlError> {
    if let Some(t) = &g.token {
        return Ok(t.trim().to_owned());
    }
    if let Some(p) = &g.token_file {
        let s = std::fs::read_to_string(p).map_err(|e| {
            CtlError::Usage(format!("cannot read the token file {}: {e}", p.display()))
        })?;
        let t = s.lines().next().unwrap_or("").trim().to_owned();
        if t.is_empty() {
            return Err(CtlError::Usage(format!(
                "the token file {} is empty",
                p.display()
            )));
        }
        return Ok(t);
    }
    Err(CtlError::Usage(
        "no API token: set VOLSNAP_TOKEN, --token or --token-file".into(),
    ))
}

async fn run(cli: Cli) -> Result<u8, CtlError> {
    let token = token_of(&cli.global)?;
    let client = Client::new(&cli.global.url, &token)?;
    let out = cli.global.output;
    use commands as c;
    match cli.command {
        Command::Workloads { project, stage } => {
            c::workloads(&client, out, project.as_deref(), stage.as_deref()).await
        }
        Command::Snapshots { workload, all } => c::snapshots(&client, out, &workload, all).await,
        Command::Jobs {
            state,
            batch,
            kind,
            workload,
            limit,
        } => c::jobs(&client, out, state, batch, kind, workload, limit).await,
        Command::Job { id, follow } => c::job(&client, out, &id, follow).await,
        Command::Capture { workload, wait } => c::capture(&client, out, &workload, wait).await,
        Command::Restore(a) => {
            let which = if a.latest {
                "latest".to_owned()
            } else {
                a.snapshot.clone().unwrap_or_default()
            };
            c::restore(&client, out, &a.workload, &which, &a.opts).await
        }
        Command::Plan {
            workload,
            snapshot,
            latest,
        } => {
            let which = if latest {
                "latest".to_owned()
            } else {
                snapshot.unwrap_or_default()
            };
            plan::command(&client, out, &workload, &which).await
        }
        Command::Undo { job, opts } => c::undo(&client, out, &job, &opts).await,
        Command::BatchRestore(a) => batch::run(&client, out, a).await,
    }
}
