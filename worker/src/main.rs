use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;
use volsnap_worker::config::{Cli, Command, RunArgs, SnapshotCommand};
use volsnap_worker::engine::{Engine, EngineConfig};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    volsnap_shared::telemetry::init();
    let cli = Cli::parse();
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("volsnap-worker: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Run(args) => run(args).await.map(|_| std::process::ExitCode::SUCCESS),
        Command::Failpoints => {
            for p in volsnap_worker::failpoints::POINTS {
                println!("{p}");
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Snapshot(SnapshotCommand::Verify { .. })
        | Command::Snapshot(SnapshotCommand::Import { .. }) => {
            anyhow::bail!("snapshot verify/import are not available in this build yet")
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let queue_cfg = args.queue_config();
    let pool = volsnap_shared::database::connect(
        common.database_url.as_deref(),
        &common.state_dir,
        (queue_cfg.concurrency as u32) * 2 + 4,
    )
    .await?;
    volsnap_shared::database::ensure_migrated(&pool).await?;
    let engine = Engine::new(
        pool.clone(),
        EngineConfig {
            node: queue_cfg.node.clone(),
            state_dir: common.state_dir.clone(),
            snapshot_dir: common.snapshot_dir(),
            volumes_root: common.volumes_root.clone(),
        },
    )
    .await
    .context("starting the engine")?;

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stop requested: finishing running jobs safely");
            shutdown.cancel();
        }
    });
    volsnap_shared::queue::worker::run(pool, queue_cfg, Arc::new(engine), shutdown).await
}
