//! The `volsnap-worker` commands: `run` (the agent), `snapshot verify|import`, and
//! `failpoints`. `main.rs` only calls [`main`]; the e2e crate's failpoint-enabled copy
//! of the binary does the same.

use std::fs::File;
use std::io::{self, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use volsnap_shared::db;
use volsnap_shared::ids::{SnapshotId, WorkloadId};

use crate::config::{Cli, Command, CommonArgs, RunArgs, SnapshotCommand};
use crate::engine::{Engine, archive, fsops};

pub async fn main() -> ExitCode {
    volsnap_shared::telemetry::init();
    let cli = Cli::parse();
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("volsnap-worker: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args).await.map(|_| ExitCode::SUCCESS),
        Command::Failpoints => {
            for p in crate::failpoints::POINTS {
                println!("{p}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(SnapshotCommand::Verify { file }) => Ok(verify(&file)),
        Command::Snapshot(SnapshotCommand::Import {
            workload,
            file,
            common,
        }) => import(&workload, &file, &common)
            .await
            .map(|_| ExitCode::SUCCESS),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let common = &args.common;
    // Refuse a bad node name or root before anything is touched.
    let node = common.checked_node()?;
    let roots = common.node_roots()?;
    let queue_cfg = args.queue_config();
    let pool = volsnap_shared::database::connect(
        common.database_url.as_deref(),
        &common.state_dir,
        volsnap_shared::queue::min_pool_size(queue_cfg.concurrency),
    )
    .await?;
    volsnap_shared::database::ensure_migrated(&pool).await?;
    publish_roots(&pool, &node, &roots).await?;
    let engine = Engine::new(pool.clone(), args.engine_config(queue_cfg.node.clone()))
        .await
        .context("starting the engine")?;
    let engine = Arc::new(engine);
    engine.spawn_keep_loop();

    let shutdown = CancellationToken::new();
    if let Some(addr) = args.metrics_addr {
        let recorded = crate::metrics::install()?;
        let bound = crate::metrics::serve(
            addr,
            queue_cfg.node.clone(),
            queue_cfg.status.clone(),
            recorded,
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
        tracing::info!(addr = %bound, "worker metrics on /metrics");
    }
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
    volsnap_shared::queue::run(pool, queue_cfg, engine, shutdown).await
}

/// Publish this node's roots so the API applies the same volume rules at registration.
async fn publish_roots(
    pool: &sqlx::PgPool,
    node: &str,
    roots: &volsnap_shared::volume::NodeRoots,
) -> anyhow::Result<()> {
    let previous = volsnap_shared::db::nodes::publish_roots(pool, node, roots)
        .await
        .context("publishing the node's roots")?;
    if previous.as_ref().is_some_and(|p| p != roots) {
        tracing::warn!(?previous, current = ?roots,
            "this node's roots differ from those another worker of the node published; \
             the API now applies these");
    }
    tracing::info!(volumes_root = %roots.volumes_root.display(),
        absolute_roots = ?roots.absolute_roots, "published the node's roots");
    Ok(())
}

/// `snapshot verify FILE`: every rule, nothing written. Exit 0 with a summary, or 1
/// with the code of the rule broken (`archive_<rule>`).
fn verify(file: &Path) -> ExitCode {
    match archive::verify_full(file, &archive::Limits::default()) {
        Ok(s) => {
            println!("ok: {}", file.display());
            println!("format: {}", s.manifest.format);
            println!("workload_id: {}", s.manifest.workload_id);
            println!("created_at: {}", s.manifest.created_at.to_rfc3339());
            println!("size: {}", s.size);
            println!("sha256: {}", s.sha256);
            for v in &s.manifest.volumes {
                println!(
                    "volume {}: target={} scope={} source={} files={} bytes={}",
                    v.index, v.target, v.scope, v.source, v.files, v.bytes
                );
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            println!("refused: {}: {}", f.code, f.message);
            eprintln!("volsnap-worker: {f}");
            ExitCode::FAILURE
        }
    }
}

/// `snapshot import --workload ID FILE`: verify, copy into this node's snapshot dir
/// (durably), register as `imported` + `ready`. Prints the new snapshot id.
async fn import(workload: &str, file: &Path, common: &CommonArgs) -> anyhow::Result<()> {
    let wid: WorkloadId = workload
        .parse()
        .context("--workload is not a workload id")?;
    let path = file.to_path_buf();
    let summary = tokio::task::spawn_blocking(move || {
        archive::verify_full(&path, &archive::Limits::default())
    })
    .await?
    .map_err(|f| anyhow::anyhow!("{}: {}", f.code, f.message))?;
    anyhow::ensure!(
        summary.manifest.workload_id.parse::<WorkloadId>().ok() == Some(wid),
        "the archive is a snapshot of workload {:?}, not of --workload {wid}; nothing was imported",
        summary.manifest.workload_id
    );
    let pool =
        volsnap_shared::database::connect(common.database_url.as_deref(), &common.state_dir, 2)
            .await?;
    volsnap_shared::database::ensure_migrated(&pool).await?;
    let w = db::workloads::get(&pool, wid)
        .await?
        .with_context(|| format!("workload {wid} not found"))?;
    let node = common.checked_node()?;
    anyhow::ensure!(
        w.node == node,
        "workload {wid} lives on node {:?}; import the archive on that node (this is {node:?})",
        w.node
    );
    let sid = SnapshotId::new();
    let rel = db::snapshots::archive_path(wid, sid);
    let dest = common.snapshot_dir().join(&rel);
    let (src, d) = (file.to_path_buf(), dest.clone());
    let (size, sha) = tokio::task::spawn_blocking(move || copy_durably(&src, &d)).await??;
    anyhow::ensure!(
        sha == summary.sha256 && size == summary.size,
        "the file changed while it was being imported"
    );
    let manifest = serde_json::to_value(&summary.manifest)?;
    if let Err(e) = db::snapshots::insert_imported(
        &pool,
        sid,
        wid,
        &node,
        &db::snapshots::ArchiveRecord {
            archive_path: &rel,
            size,
            sha256: &sha,
            manifest: &manifest,
        },
    )
    .await
    {
        let _ = fsops::remove_file(&dest);
        return Err(e.into());
    }
    eprintln!(
        "imported {} as snapshot {sid} of workload {wid}",
        file.display()
    );
    println!("{sid}");
    Ok(())
}

/// Copy `src` to `dest` through `<dest>.partial` (fsynced, renamed, dir fsynced),
/// returning the size and sha256 of what was copied. A newly made workload directory
/// is made durable too (its parent, the snapshot dir, is fsynced).
fn copy_durably(src: &Path, dest: &Path) -> io::Result<(u64, String)> {
    let dir = fsops::parent(dest);
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        fsops::fsync_dir(fsops::parent(dir))?;
    }
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let mut input = BufReader::with_capacity(1 << 20, File::open(src)?);
    let mut out = File::create(&partial)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        size += n as u64;
    }
    out.sync_all()?;
    drop(out);
    std::fs::rename(&partial, dest)?;
    fsops::fsync_dir(dir)?;
    Ok((size, hex::encode(h.finalize())))
}
