//! End to end through `volsnap-worker run`: a busybox container with bind-mounted
//! volumes of all three scopes; capture; change the data; restore; the container runs
//! again and sees exactly the captured data. Plus `snapshot verify|import` and the
//! removal of deleted snapshots' files.

use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use volsnap_e2e::engine::*;
use volsnap_shared::domain::{JobKind, JobState, SnapshotKind, SourceKind, VolumeScope};
use volsnap_shared::ids::SnapshotId;

const BIN: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn capture_change_restore_round_trip(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let abs = env.root().join("abs/app-data");
    let vols = vec![
        vol(VolumeScope::Stage, "data", "/data"),
        vol(VolumeScope::Project, "shared", "/shared"),
        vol(VolumeScope::Absolute, abs.to_str().unwrap(), "/abs"),
    ];
    for (i, v) in vols.iter().enumerate() {
        write_tree(&env.host_path(v), 10 + i as u64, 4);
    }
    let w = env.add_workload(&vols, SourceKind::Image, true).await;
    let c = env.run_container(w, &vols);
    docker(&[
        "exec",
        &c,
        "sh",
        "-c",
        "echo from-the-app > /data/written-by-app",
    ]);
    let captured_view: Vec<String> = vols.iter().map(|v| container_view(&c, &v.target)).collect();
    let captured_hash: Vec<String> = vols.iter().map(|v| tree_hash(&env.host_path(v))).collect();

    let worker = env.worker(None);
    let (job, sid) = env.enqueue_capture(w).await;
    let j = env.wait_final(job, Duration::from_secs(60)).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert!(
        j.progress_total > 0 && j.progress_done == j.progress_total,
        "{j:?}"
    );
    let (state, rel, size, sha): (String, String, i64, String) = sqlx::query_as(
        "SELECT state, archive_path, size_bytes, sha256 FROM snapshots WHERE id = $1",
    )
    .bind(sid)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(state, "ready");
    assert_eq!(rel, format!("{w}/{sid}.tar.gz"));
    let file = env.snapshot_dir().join(&rel);
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len() as i64, size);
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        sha
    );
    assert!(
        container_running(&c),
        "stop_for_capture must start the container again"
    );

    // Change the data, from inside the app and from the host.
    docker(&[
        "exec",
        &c,
        "sh",
        "-c",
        "rm /data/a.txt; echo changed > /shared/new-file; echo x >> /abs/sub/b.bin; rm -r /data/sub",
    ]);
    let changed_hash: Vec<String> = vols.iter().map(|v| tree_hash(&env.host_path(v))).collect();
    assert_ne!(changed_hash, captured_hash);

    let started = Instant::now();
    let rjob = env.enqueue(JobKind::Restore, w, Some(sid)).await;
    let r = env.wait_final(rjob, Duration::from_secs(60)).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    eprintln!("restore took {:?}", started.elapsed());
    assert!(container_running(&c));
    let restored_view: Vec<String> = vols.iter().map(|v| container_view(&c, &v.target)).collect();
    assert_eq!(
        restored_view, captured_view,
        "the app must see exactly the captured data"
    );
    let restored_hash: Vec<String> = vols.iter().map(|v| tree_hash(&env.host_path(v))).collect();
    assert_eq!(restored_hash, captured_hash);
    // No staging left; the old data is kept as a directory next to each volume (one
    // keep record), for undo.
    assert!(
        env.stray_side_dirs(&vols).is_empty(),
        "{:?}",
        env.stray_side_dirs(&vols)
    );
    assert_eq!(env.kept_records().len(), 1, "{:?}", env.kept_records());
    let kept = env.kept_dirs(&vols);
    assert_eq!(kept.len(), vols.len(), "{kept:?}");
    for (i, v) in vols.iter().enumerate() {
        let parent = env.host_path(v).parent().unwrap().to_path_buf();
        let d = kept
            .iter()
            .find(|d| d.parent() == Some(parent.as_path()))
            .unwrap();
        assert_eq!(tree_hash(d), changed_hash[i], "kept copy of {}", v.target);
    }
    assert!(env.journals().is_empty());
    assert_eq!(r.progress_done, r.progress_total);

    // The old data is archived in the background (its own job) as a ready pre-restore
    // snapshot linked from the job.
    let pre = env.wait_pre_restore(rjob, Duration::from_secs(60)).await;
    let (kind, state, rel): (String, String, String) =
        sqlx::query_as("SELECT kind, state, archive_path FROM snapshots WHERE id = $1")
            .bind(pre)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), state.as_str()), ("pre-restore", "ready"));
    let out = tempfile::tempdir().unwrap();
    let manifest = volsnap_archive::read_manifest(&env.snapshot_dir().join(&rel)).unwrap();
    let staging: std::collections::BTreeMap<u32, std::path::PathBuf> = manifest
        .volumes
        .iter()
        .map(|v| (v.index, out.path().join(v.index.to_string())))
        .collect();
    volsnap_archive::extract_file(
        &env.snapshot_dir().join(&rel),
        &staging,
        &Default::default(),
        &mut |_, _| {},
    )
    .unwrap();
    for v in &manifest.volumes {
        let i = vols.iter().position(|s| s.target == v.target).unwrap();
        assert_eq!(
            tree_hash(&staging[&v.index]),
            changed_hash[i],
            "pre-restore copy of {}",
            v.target
        );
    }

    // Downtime and bytes were counted.
    let (count, bytes): (i64, i64) =
        sqlx::query_as("SELECT downtime_count, bytes_total FROM restore_stats WHERE id = 1")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(count, 1);
    assert!(bytes > 0);

    // A deleted snapshot's file is removed by the node's worker.
    sqlx::query("UPDATE snapshots SET deleted_at = now() WHERE id = $1")
        .bind(pre)
        .execute(&env.pool)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let removed: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT file_removed_at FROM snapshots WHERE id = $1")
                .bind(pre)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        if removed.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deleted snapshot's file not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!env.snapshot_dir().join(&rel).exists());
    worker.stop();
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn snapshot_verify_and_import(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    let src = env.root().join("src");
    write_tree(&src, 3, 1);
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let sid = env
        .make_snapshot(w, &[(vols[0].clone(), src.clone())])
        .await;
    let file = env.snapshot_dir().join(format!("{w}/{sid}.tar.gz"));

    let ok = Command::new(BIN)
        .args(["snapshot", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("format: volsnap/1") && out.contains("target=/data"),
        "{out}"
    );

    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 20);
    let bad = env.root().join("truncated.tar.gz");
    std::fs::write(&bad, &bytes).unwrap();
    let refused = Command::new(BIN)
        .args(["snapshot", "verify"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let out = String::from_utf8_lossy(&refused.stdout);
    assert!(out.contains("refused: archive_"), "{out}");

    let imp = Command::new(BIN)
        .args([
            "snapshot",
            "import",
            "--workload",
            &w.to_string(),
            "--database-url",
            &env.url,
            "--node",
            &env.node,
        ])
        .arg("--state-dir")
        .arg(env.state_dir())
        .arg("--snapshot-dir")
        .arg(env.snapshot_dir())
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        imp.status.success(),
        "{}",
        String::from_utf8_lossy(&imp.stderr)
    );
    let new: SnapshotId = String::from_utf8_lossy(&imp.stdout).trim().parse().unwrap();
    let (kind, state, rel, sha): (SnapshotKind, String, String, String) =
        sqlx::query_as("SELECT kind, state, archive_path, sha256 FROM snapshots WHERE id = $1")
            .bind(new)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(kind, SnapshotKind::Imported);
    assert_eq!(state, "ready");
    let copied = std::fs::read(env.snapshot_dir().join(rel)).unwrap();
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&copied)),
        sha
    );

    // The imported snapshot restores like any other.
    std::fs::create_dir_all(env.host_path(&vols[0])).unwrap();
    write_tree(&env.host_path(&vols[0]), 99, 1);
    let worker = env.worker(None);
    let job = env.enqueue(JobKind::Restore, w, Some(new)).await;
    let j = env.wait_final(job, Duration::from_secs(60)).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_eq!(tree_hash(&env.host_path(&vols[0])), tree_hash(&src));
    worker.stop();
}

/// The redeploy waits for `healthy` where a healthcheck exists: this container is
/// healthy only with the snapshot's data, and the job succeeds only once it is.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn redeploy_waits_for_healthy(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    write_tree(&env.host_path(&vols[0]), 2, 1);
    let src = env.root().join("src");
    write_tree(&src, 1, 1);
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let sid = env.make_snapshot(w, &[(vols[0].clone(), src)]).await;
    let c = env.run_container_with(
        w,
        &vols,
        &[
            "--health-cmd",
            "test -f /data/only-1",
            "--health-interval",
            "300ms",
            "--health-retries",
            "1",
        ],
    );
    let worker = env.worker(None);
    let job = env.enqueue(JobKind::Restore, w, Some(sid)).await;
    let j = env.wait_final(job, Duration::from_secs(60)).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Health.Status}}", &c]),
        "healthy"
    );
    worker.stop();
}
