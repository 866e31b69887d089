//! Refusals that touch nothing: each restore below must fail with its client-facing
//! code while the volumes keep their data, no staging or journal appears, and the
//! running container is never stopped (same start time).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use volsnap_e2e::engine::*;
use volsnap_shared::domain::{
    JobKind, JobState, SnapshotKind, SourceKind, VolumeScope, VolumeSpec,
};
use volsnap_shared::ids::{SnapshotId, WorkloadId};

const BIN: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");

async fn env(opts: PgConnectOptions) -> Env {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    Env::new(pool, opts, BIN).await
}

/// A snapshot of fresh data for `target`.
async fn snapshot_for(env: &Env, w: WorkloadId, target: &str) -> SnapshotId {
    let src: PathBuf = env
        .root()
        .join(format!("src-{}", uuid::Uuid::new_v4().simple()));
    write_tree(&src, 42, 1);
    env.make_snapshot(w, &[(vol(VolumeScope::Stage, "data", target), src)])
        .await
}

/// Run the restore of `sid` onto `w` and check it was refused with `code` while
/// nothing changed. `vols` are the workload's (existing, valid) volumes to watch.
async fn assert_refused(
    env: &Env,
    w: WorkloadId,
    sid: SnapshotId,
    vols: &[VolumeSpec],
    code: &str,
) {
    let watched: Vec<(PathBuf, String)> = vols
        .iter()
        .map(|v| env.host_path(v))
        .filter(|p| p.exists())
        .map(|p| (p.clone(), tree_hash(&p)))
        .collect();
    let container = if watched.len() == vols.len() && !vols.is_empty() {
        Some(env.run_container(w, vols))
    } else {
        None
    };
    let started = container.as_deref().map(container_started_at);
    let worker = env.worker(None);
    let job = env.enqueue(JobKind::Restore, w, Some(sid)).await;
    let j = env.wait_final(job, Duration::from_secs(60)).await;
    worker.stop();
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    assert_eq!(j.error_code.as_deref(), Some(code), "{j:?}");
    assert!(
        !j.past_point_of_no_return,
        "a refusal happens before the point of no return"
    );
    for (p, h) in &watched {
        assert_eq!(&tree_hash(p), h, "{} changed", p.display());
    }
    if let (Some(c), Some(s)) = (container, started) {
        assert!(container_running(&c));
        assert_eq!(
            container_started_at(&c),
            s,
            "the container must not have been restarted"
        );
    }
    let valid: Vec<VolumeSpec> = vols
        .iter()
        .filter(|v| env.host_path(v).parent().is_some_and(|p| p.exists()))
        .cloned()
        .collect();
    assert!(
        env.side_dirs(&valid).is_empty(),
        "{:?}",
        env.side_dirs(&valid)
    );
    assert!(env.journals().is_empty());
    assert!(j.pre_restore_snapshot_id.is_none());
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn manifest_volume_without_a_current_volume(_: PgPoolOptions, opts: PgConnectOptions) {
    let env = env(opts).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    write_tree(&env.host_path(&vols[0]), 1, 1);
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let sid = snapshot_for(&env, w, "/not-in-config").await;
    assert_refused(&env, w, sid, &vols, "volume_mismatch").await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn path_escaping_its_base(_: PgPoolOptions, opts: PgConnectOptions) {
    let env = env(opts).await;
    // `..` in the current config's source (the manifest's source is never used).
    let vols = vec![vol(VolumeScope::Stage, "../../../abs", "/data")];
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    write_tree(&env.root().join("abs"), 1, 1);
    let before = tree_hash(&env.root().join("abs"));
    let sid = snapshot_for(&env, w, "/data").await;
    assert_refused(&env, w, sid, &[], "path_escapes_base").await;
    assert_eq!(tree_hash(&env.root().join("abs")), before);

    // A symlinked component that leads out of the base.
    let vols = vec![vol(VolumeScope::Stage, "link/inner", "/data")];
    std::os::unix::fs::symlink(
        env.root().join("abs"),
        env.volumes_root().join("proj/prod/link"),
    )
    .unwrap();
    std::fs::create_dir_all(env.root().join("abs/inner")).unwrap();
    let w2 = env.add_workload(&vols, SourceKind::Image, false).await;
    let sid2 = snapshot_for(&env, w2, "/data").await;
    let before = tree_hash(&env.root().join("abs"));
    assert_refused(&env, w2, sid2, &[], "path_escapes_base").await;
    assert_eq!(tree_hash(&env.root().join("abs")), before);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn system_path(_: PgPoolOptions, opts: PgConnectOptions) {
    let env = env(opts).await;
    let vols = vec![vol(VolumeScope::Absolute, "/etc", "/data")];
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let sid = snapshot_for(&env, w, "/data").await;
    let before = Command::new("sh")
        .args(["-c", "ls -la /etc | md5sum"])
        .output()
        .unwrap()
        .stdout;
    assert_refused(&env, w, sid, &[], "system_path_refused").await;
    let after = Command::new("sh")
        .args(["-c", "ls -la /etc | md5sum"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(before, after);
    assert!(!std::path::Path::new("/").read_dir().unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".volsnap-")
    }));
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn non_image_workload(_: PgPoolOptions, opts: PgConnectOptions) {
    let env = env(opts).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    write_tree(&env.host_path(&vols[0]), 1, 1);
    let w = env.add_workload(&vols, SourceKind::Git, false).await;
    let sid = snapshot_for(&env, w, "/data").await;
    assert_refused(&env, w, sid, &vols, "not_image_workload").await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn archive_changed_on_disk(_: PgPoolOptions, opts: PgConnectOptions) {
    let env = env(opts).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    write_tree(&env.host_path(&vols[0]), 1, 1);
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let sid = snapshot_for(&env, w, "/data").await;
    let file = env.snapshot_dir().join(format!("{w}/{sid}.tar.gz"));
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    assert_refused(&env, w, sid, &vols, "snapshot_checksum_mismatch").await;
}

/// A small tmpfs as the stage base: the snapshot does not fit next to the volume.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn not_enough_space(_: PgPoolOptions, opts: PgConnectOptions) {
    let env = env(opts).await;
    let base = env.volumes_root().join("proj/prod");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&base)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    let _guard = Tmpfs(base.clone());
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    write_tree(&env.host_path(&vols[0]), 1, 1);
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    // 20 MiB that gzip cannot shrink.
    let src = env.root().join("big");
    std::fs::create_dir_all(&src).unwrap();
    let mut f = std::fs::File::create(src.join("random.bin")).unwrap();
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..20 {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        f.write_all(&buf).unwrap();
    }
    drop(f);
    let sid = env.make_snapshot(w, &[(vols[0].clone(), src)]).await;
    assert_refused(&env, w, sid, &vols, "insufficient_space").await;
}

/// A hand-made archive with a `..` entry: the extractor refuses it and nothing is
/// created outside staging; the target is untouched.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn hostile_archive(_: PgPoolOptions, opts: PgConnectOptions) {
    let env = env(opts).await;
    let vols = vec![vol(VolumeScope::Stage, "data", "/data")];
    write_tree(&env.host_path(&vols[0]), 1, 1);
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let manifest = serde_json::json!({
        "format": "volsnap/1",
        "workload_id": w.to_string(),
        "created_at": "2026-01-01T00:00:00Z",
        "volumes": [{"index": 0, "target": "/data", "scope": "stage", "source": "data", "files": 1, "bytes": 6}]
    });
    let sid = SnapshotId::new();
    let rel = format!("{w}/{sid}.tar.gz");
    let path = env.snapshot_dir().join(&rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::default(),
        );
        let mut b = tar::Builder::new(gz);
        let mbytes = serde_json::to_vec(&manifest).unwrap();
        let entry = |name: &str, kind: tar::EntryType, size: u64| {
            let mut h = tar::Header::new_ustar();
            let n = &mut h.as_old_mut().name;
            n[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            h
        };
        b.append(
            &entry(
                "manifest.json",
                tar::EntryType::Regular,
                mbytes.len() as u64,
            ),
            &mbytes[..],
        )
        .unwrap();
        b.append(&entry("volumes/0/", tar::EntryType::Directory, 0), &[][..])
            .unwrap();
        b.append(
            &entry("volumes/0/../../../../escaped", tar::EntryType::Regular, 6),
            &b"pwned\n"[..],
        )
        .unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    env.register_snapshot(w, sid, &rel, SnapshotKind::Imported, manifest)
        .await;
    assert_refused(&env, w, sid, &vols, "archive_path_traversal").await;
    let mut stack = vec![env.root().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            assert_ne!(
                e.file_name(),
                "escaped",
                "a hostile entry was written at {}",
                e.path().display()
            );
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

/// A capture whose volume directory does not exist fails (rather than recording an
/// empty volume a later restore would wipe data with); its snapshot row is `failed`
/// and no archive is left.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn capture_of_a_missing_volume(_: PgPoolOptions, opts: PgConnectOptions) {
    let env = env(opts).await;
    let vols = vec![
        vol(VolumeScope::Stage, "data", "/data"),
        vol(VolumeScope::Stage, "never-created", "/other"),
    ];
    write_tree(&env.host_path(&vols[0]), 1, 1);
    let w = env.add_workload(&vols, SourceKind::Image, false).await;
    let worker = env.worker(None);
    let (job, sid) = env.enqueue_capture(w).await;
    let j = env.wait_final(job, Duration::from_secs(60)).await;
    worker.stop();
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    assert_eq!(j.error_code.as_deref(), Some("volume_source_missing"));
    let state: String = sqlx::query_scalar("SELECT state FROM snapshots WHERE id = $1")
        .bind(sid)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(state, "failed");
    assert!(
        !env.snapshot_dir().join(w.to_string()).exists()
            || std::fs::read_dir(env.snapshot_dir().join(w.to_string()))
                .unwrap()
                .count()
                == 0
    );
    assert!(
        !env.host_path(&vols[1]).exists(),
        "capture never creates volume directories"
    );
}
