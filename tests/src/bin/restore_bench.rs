//! Restore benchmark (not a test). Needs DATABASE_URL and the local Docker engine.
//!
//!     cargo build --release -p volsnap-e2e --bins
//!     DATABASE_URL=$(scripts/pg.sh) target/release/restore-bench [SIZE_MIB ...]
//!
//! For each volume size (default 10 and 1024 MiB) it measures, in one run:
//! - the engine's downtime (containers stopped → running again, as the engine
//!   records it in `restore_stats`) for a restore through the real worker;
//! - the naive order's downtime: stop, extract, swap, start (same archive library,
//!   same Docker client code), i.e. extraction inside the stopped window;
//! - Docker's own stop + start of the same container with nothing in between;
//! - the whole restore (job started → finished, and → containers running again) against
//!   `tar -xzf` of the same archive (and `tar -xzf` + `sync`).
//!
//! Works in a scratch database `volsnap_restore_bench_<random>` (dropped at the end) and a
//! scratch directory under /var/tmp; the worker is `volsnap-worker-fp` next to this
//! binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use volsnap_e2e::engine::{IMAGE, docker, ensure_image, vol};
use volsnap_shared::db;
use volsnap_shared::domain::{JobKind, SourceKind, VolumeScope, VolumeSpec};
use volsnap_shared::ids::{SnapshotId, WorkloadId};
use volsnap_shared::queue::{self, NewJob};
use volsnap_shared::scratch::ScratchDb;
use volsnap_worker::engine::docker::Docker;

const DB: &str = "volsnap_restore_bench";
const NODE: &str = "bench-node";

/// Semi-compressible data: `mib` MiB in a few large files plus 1,000 small ones.
fn generate(dir: &Path, mib: usize, seed: u64) {
    std::fs::create_dir_all(dir.join("small")).unwrap();
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut fill = |buf: &mut [u8]| {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // 6 random bits per byte from a 64-letter alphabet: compresses to ~75 %.
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = b'0' + ((x >> (i * 6)) & 63) as u8;
            }
        }
    };
    let small = 1000usize;
    let mut buf = vec![0u8; 4096];
    for i in 0..small {
        fill(&mut buf);
        std::fs::write(
            dir.join(format!("small/f{i:04}.txt")),
            &buf[..(i % 4 + 1) * 1024],
        )
        .unwrap();
    }
    let large_total = (mib << 20).saturating_sub(small * 2560);
    let files = (mib / 128).max(1);
    let per = large_total / files;
    let mut big = vec![0u8; 1 << 20];
    for f in 0..files {
        use std::io::Write as _;
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(dir.join(format!("large-{f}.bin"))).unwrap(),
        );
        let mut left = per;
        while left > 0 {
            fill(&mut big);
            let n = left.min(big.len());
            out.write_all(&big[..n]).unwrap();
            left -= n;
        }
    }
}

async fn downtime_sum(pool: &PgPool) -> f64 {
    sqlx::query_scalar::<_, f64>("SELECT downtime_sum FROM restore_stats WHERE id = 1")
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(0.0)
}

struct CaptureRow {
    mib: usize,
    whole: f64,
    bytes: f64,
    pigz: f64,
    pigz_bytes: f64,
    gzip: f64,
    gzip_bytes: f64,
}

struct Row {
    mib: usize,
    archive_mib: f64,
    engine_down: f64,
    naive_down: f64,
    docker_only: f64,
    to_running: f64,
    whole: f64,
    tar: f64,
    tar_sync: f64,
    background: f64,
    undo_down: f64,
    undo_whole: f64,
}

/// Wait for the succeeded background archive job of `source`'s kept copy.
async fn archive_done(
    pool: &PgPool,
    source: volsnap_shared::ids::JobId,
) -> volsnap_shared::ids::JobId {
    let t = Instant::now();
    loop {
        let id: Option<volsnap_shared::ids::JobId> = sqlx::query_scalar(
            "SELECT s.job_id FROM job_sources s JOIN jobs j ON j.id = s.job_id \
             WHERE s.source_job_id = $1 AND j.kind = 'pre_restore_archive' AND j.state = 'succeeded'",
        )
        .bind(source)
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(id) = id {
            return id;
        }
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "no archive of {source}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Put a job of `kind` for workload `w` on the bench node's queue.
async fn enqueue(
    pool: &PgPool,
    kind: JobKind,
    w: WorkloadId,
    snapshot_id: Option<SnapshotId>,
    verify: bool,
) -> volsnap_shared::ids::JobId {
    let mut conn = pool.acquire().await.unwrap();
    let job = NewJob {
        kind,
        workload_id: w,
        snapshot_id,
        node: NODE.into(),
        batch_id: None,
        requested_by: None,
    };
    queue::enqueue_with(&mut conn, &job, &queue::JobOptions { verify })
        .await
        .unwrap()
        .id
}

/// Wait for `job` to succeed (it must); its run time, start to finish, in seconds.
async fn job_seconds(pool: &PgPool, job: volsnap_shared::ids::JobId) -> f64 {
    loop {
        let j = queue::get_job(pool, job).await.unwrap().unwrap();
        if j.state.is_final() {
            assert_eq!(
                j.state,
                volsnap_shared::domain::JobState::Succeeded,
                "{j:?}"
            );
            return (j.finished_at.unwrap() - j.started_at.unwrap()).num_milliseconds() as f64
                / 1000.0;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = {
        let a: Vec<usize> = std::env::args()
            .skip(1)
            .map(|s| s.parse().expect("size in MiB"))
            .collect();
        if a.is_empty() { vec![10, 1024] } else { a }
    };
    ensure_image();
    let worker_bin = std::env::current_exe()
        .unwrap()
        .with_file_name("volsnap-worker-fp");
    assert!(
        worker_bin.exists(),
        "build it: cargo build --release -p volsnap-e2e --bins"
    );
    let db = ScratchDb::create(DB).await.unwrap();
    let (pool, url) = (db.pool().clone(), db.url().to_owned());
    let root = PathBuf::from("/var/tmp/volsnap-restore-bench");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["state", "snapshots", "volumes/proj/prod", "work"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut worker = Command::new(&worker_bin)
        .args(["run", "--database-url", &url, "--node", NODE])
        .arg("--state-dir")
        .arg(root.join("state"))
        .arg("--snapshot-dir")
        .arg(root.join("snapshots"))
        .arg("--volumes-root")
        .arg(root.join("volumes"))
        .args([
            "--heartbeat-secs",
            "1",
            "--poll-secs",
            "0.5",
            "--docker-stop-timeout-secs",
            "10",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let dock = Docker::connect(Duration::from_secs(10), Duration::from_secs(60))
        .await
        .unwrap();
    let mut rows = vec![];
    let mut verified: Vec<(usize, f64, f64, f64, f64)> = vec![];
    let mut timelines = vec![];
    let mut captures: Vec<CaptureRow> = vec![];
    let mut containers = vec![];
    for mib in sizes {
        eprintln!("== {mib} MiB: generating data");
        let v: VolumeSpec = vol(VolumeScope::Stage, &format!("data-{mib}"), "/data");
        let target = root.join("volumes/proj/prod").join(&v.source);
        let src = root.join(format!("work/src-{mib}"));
        generate(&src, mib, 1);
        generate(&target, mib, 2);
        let w = WorkloadId::new();
        sqlx::query(
            "INSERT INTO workloads (id, name, project, stage, node, source_kind, image, volumes) \
             VALUES ($1, $2, 'proj', 'prod', $3, $4, $5, $6)",
        )
        .bind(w)
        .bind(format!("bench-{mib}"))
        .bind(NODE)
        .bind(SourceKind::Image)
        .bind(IMAGE)
        .bind(sqlx::types::Json(vec![v.clone()]))
        .execute(&pool)
        .await
        .unwrap();
        let c = docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            &format!("volsnap.workload={w}"),
            "-v",
            &format!("{}:/data", target.display()),
            IMAGE,
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done",
        ]);
        containers.push(c.clone());

        eprintln!("== {mib} MiB: writing the snapshot");
        let sid = SnapshotId::new();
        let rel = db::snapshots::archive_path(w, sid);
        let archive = root.join("snapshots").join(&rel);
        std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
        let s = volsnap_archive::write_archive_file(
            &archive,
            &w.to_string(),
            &[volsnap_archive::VolumeInput {
                index: 0,
                target: v.target.clone(),
                scope: "stage".into(),
                source: v.source.clone(),
                path: src.clone(),
                root: None,
            }],
            &Default::default(),
            &mut |_, _| {},
        )
        .unwrap();
        // Registered as `volsnap-worker snapshot import` does (the engine restores any
        // ready snapshot alike).
        db::snapshots::insert_imported(
            &pool,
            sid,
            w,
            NODE,
            &db::snapshots::ArchiveRecord {
                archive_path: &rel,
                size: s.size,
                sha256: &s.sha256,
                manifest: &serde_json::to_value(&s.manifest).unwrap(),
            },
        )
        .await
        .unwrap();
        let _ = Command::new("sync").status();

        eprintln!("== {mib} MiB: restore through the worker");
        let before = downtime_sum(&pool).await;
        let job = enqueue(&pool, JobKind::Restore, w, Some(sid), false).await;
        let t0 = Instant::now();
        let mut to_running = None;
        let mut phases: Vec<(String, f64)> = vec![];
        let whole = loop {
            let j = queue::get_job(&pool, job).await.unwrap().unwrap();
            if phases.last().is_none_or(|p| p.0 != j.phase) {
                phases.push((j.phase.clone(), t0.elapsed().as_secs_f64()));
            }
            if to_running.is_none() && (j.phase.starts_with("keeping") || j.state.is_final()) {
                to_running = Some(t0.elapsed().as_secs_f64());
            }
            if j.state.is_final() {
                assert_eq!(
                    j.state,
                    volsnap_shared::domain::JobState::Succeeded,
                    "{j:?}"
                );
                break (j.finished_at.unwrap() - j.started_at.unwrap()).num_milliseconds() as f64
                    / 1000.0;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let engine_down = downtime_sum(&pool).await - before;
        let timeline: Vec<String> = phases.iter().map(|(p, t)| format!("{p}@{t:.2}s")).collect();
        eprintln!("   phases: {}", timeline.join(", "));
        timelines.push(format!("{mib} MiB: {}", timeline.join(", ")));

        // The pre-restore copy is archived by a background job of its own (issue 11);
        // the workload is busy until it ends. Then undo it (by directory).
        eprintln!("== {mib} MiB: background archive of the pre-restore copy");
        let archive_job = archive_done(&pool, job).await;
        let a = queue::get_job(&pool, archive_job).await.unwrap().unwrap();
        let background =
            (a.finished_at.unwrap() - a.started_at.unwrap()).num_milliseconds() as f64 / 1000.0;
        eprintln!("== {mib} MiB: undo (by directory)");
        let before_undo = downtime_sum(&pool).await;
        let undo = enqueue(&pool, JobKind::Undo, w, None, false).await;
        volsnap_shared::db::jobs::set_source(&pool, undo, job)
            .await
            .unwrap();
        let undo_whole = job_seconds(&pool, undo).await;
        let undo_down = downtime_sum(&pool).await - before_undo;
        // Its own kept copy is archived too; let it finish before the next timings.
        archive_done(&pool, undo).await;

        eprintln!("== {mib} MiB: the same restore, verified");
        let before_v = downtime_sum(&pool).await;
        let vjob = enqueue(&pool, JobKind::Restore, w, Some(sid), true).await;
        let verified_whole = job_seconds(&pool, vjob).await;
        let verified_down = downtime_sum(&pool).await - before_v;
        verified.push((mib, engine_down, verified_down, whole, verified_whole));
        archive_done(&pool, vjob).await;

        eprintln!("== {mib} MiB: naive order (stop, then extract)");
        let ids = vec![c.clone()];
        let staging = target.with_file_name(format!(".naive-{mib}"));
        let t = Instant::now();
        dock.stop(&c).await.unwrap();
        let arch = archive.clone();
        let st = staging.clone();
        tokio::task::spawn_blocking(move || {
            let map: BTreeMap<u32, PathBuf> = [(0, st)].into();
            volsnap_archive::extract_file(&arch, &map, &Default::default(), &mut |_, _| {})
                .unwrap();
        })
        .await
        .unwrap();
        let parent = volsnap_worker::engine::dirs::ParentDir::open(
            target.parent().unwrap(),
            std::path::Path::new(""),
        )
        .unwrap();
        parent
            .exchange(staging.file_name().unwrap(), target.file_name().unwrap())
            .unwrap();
        dock.start_all_and_wait(&ids).await.unwrap();
        let naive_down = t.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&staging).unwrap();

        let t = Instant::now();
        dock.stop(&c).await.unwrap();
        dock.start_all_and_wait(&ids).await.unwrap();
        let docker_only = t.elapsed().as_secs_f64();

        eprintln!("== {mib} MiB: tar -xzf");
        let out = root.join(format!("work/tar-{mib}"));
        std::fs::create_dir_all(&out).unwrap();
        let _ = Command::new("sync").status();
        let t = Instant::now();
        let st = Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        let tar = t.elapsed().as_secs_f64();
        let _ = Command::new("sync").status();
        let tar_sync = t.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::remove_dir_all(&src).unwrap();

        // Capture of the same live volume (the snapshot's data, restored above) through
        // the worker — the whole job: stop, archive, fsync, start — beside the GNU
        // pipelines on the same tree, in the same run.
        eprintln!("== {mib} MiB: capture through the worker vs tar | pigz / gzip");
        let workload = volsnap_shared::db::workloads::get(&pool, w)
            .await
            .unwrap()
            .unwrap();
        let snap = volsnap_shared::db::snapshots::insert_capturing(
            &pool,
            SnapshotId::new(),
            w,
            &workload.node,
            volsnap_shared::domain::SnapshotKind::Manual,
        )
        .await
        .unwrap()
        .expect("a new snapshot row");
        let _ = Command::new("sync").status();
        let cjob = enqueue(&pool, JobKind::Capture, w, Some(snap.id), false).await;
        let capture_whole = job_seconds(&pool, cjob).await;
        let captured = volsnap_shared::db::snapshots::get(&pool, snap.id)
            .await
            .unwrap()
            .unwrap();
        let capture_bytes = captured.size_bytes.unwrap_or(0) as f64;
        let pipe = |compressor: &str| {
            let out = root.join(format!("work/cmp-{mib}.tar.gz"));
            let _ = Command::new("sync").status();
            let t = Instant::now();
            let st = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "tar -C \"$1\" -cf - . | {compressor} > \"$2\" && sync -f \"$2\""
                ))
                .arg("sh")
                .arg(&target)
                .arg(&out)
                .status()
                .unwrap();
            assert!(st.success(), "{compressor}");
            let secs = t.elapsed().as_secs_f64();
            let bytes = std::fs::metadata(&out).unwrap().len() as f64;
            std::fs::remove_file(&out).unwrap();
            (secs, bytes)
        };
        let (pigz, pigz_bytes) = pipe("pigz -6 -p 2");
        let (gzip, gzip_bytes) = pipe("gzip -6");
        captures.push(CaptureRow {
            mib,
            whole: capture_whole,
            bytes: capture_bytes,
            pigz,
            pigz_bytes,
            gzip,
            gzip_bytes,
        });

        rows.push(Row {
            mib,
            archive_mib: s.size as f64 / 1048576.0,
            engine_down,
            naive_down,
            docker_only,
            to_running: to_running.unwrap_or(whole),
            whole,
            tar,
            tar_sync,
            background,
            undo_down,
            undo_whole,
        });
    }
    let _ = worker.kill();
    let _ = worker.wait();
    db.drop_database().await.unwrap();
    for c in &containers {
        let _ = Command::new("docker").args(["rm", "-f", c]).output();
    }
    let _ = std::fs::remove_dir_all(&root);

    println!(
        "Capture of the live volume: the worker's whole capture job (stop, archive, fsync, start) vs `tar -cf - . | pigz -6 -p 2` and `| gzip -6` (+ fsync of the output) on the same tree:"
    );
    println!(
        "| volume | capture job | pigz -6 -p 2 | job / pigz | gzip -6 | job / gzip | size vs pigz | size vs gzip |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for c in &captures {
        println!(
            "| {} MiB | {:.2} s | {:.2} s | {:.2} | {:.2} s | {:.2} | {:+.2} % | {:+.2} % |",
            c.mib,
            c.whole,
            c.pigz,
            c.whole / c.pigz,
            c.gzip,
            c.whole / c.gzip,
            (c.bytes / c.pigz_bytes - 1.0) * 100.0,
            (c.bytes / c.gzip_bytes - 1.0) * 100.0
        );
    }
    println!();
    println!("Verification's added time (the same restore without and with `verify`):");
    println!(
        "| volume | downtime | downtime, verified | added | whole job | whole job, verified | added |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (mib, d, dv, w, wv) in &verified {
        println!(
            "| {mib} MiB | {d:.3} s | {dv:.3} s | {:+.3} s | {w:.2} s | {wv:.2} s | {:+.2} s |",
            dv - d,
            wv - w
        );
    }
    println!();
    println!("Phase timeline of the worker's restore (first seen by a 20 ms poll):");
    for t in &timelines {
        println!("- {t}");
    }
    println!();
    println!(
        "| volume | archive | downtime (engine) | downtime (naive: stop, then extract) | Docker stop+start alone | restore → running again | whole restore job | tar -xzf | tar -xzf + sync | whole / tar -xzf | running-again / tar -xzf | background archive job | undo downtime | whole undo job |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} MiB | {:.1} MiB | {:.3} s | {:.3} s | {:.3} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} | {:.2} | {:.2} s | {:.3} s | {:.2} s |",
            r.mib,
            r.archive_mib,
            r.engine_down,
            r.naive_down,
            r.docker_only,
            r.to_running,
            r.whole,
            r.tar,
            r.tar_sync,
            r.whole / r.tar,
            r.to_running / r.tar,
            r.background,
            r.undo_down,
            r.undo_whole
        );
    }
}
