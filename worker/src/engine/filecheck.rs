//! The periodic check that every ready snapshot of this node still has its archive
//! file. A snapshot whose file is gone is marked (`snapshots.file_missing_at`), so the
//! console shows it as such and offers no restore; a file that reappears (a restored
//! backup of the snapshot directory) is unmarked. Restore pre-flight marks a missing
//! file too, through the same [`volsnap_shared::db::console::set_snapshot_file_missing`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use volsnap_shared::db::console;

/// Check every `every` until `stop`.
pub async fn run(
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
        if let Err(e) = check_once(&pool, &node, &snapshot_dir).await {
            tracing::warn!(error = %e, "checking the snapshot files failed; will retry");
        }
    }
}

/// One pass: (newly) missing files marked, reappeared ones unmarked. Returns how many
/// rows changed.
pub async fn check_once(
    pool: &PgPool,
    node: &str,
    snapshot_dir: &Path,
) -> Result<usize, sqlx::Error> {
    let mut changed = 0;
    for f in console::ready_files_of_node(pool, node).await? {
        let present = match super::context::snapshot_file(snapshot_dir, &f.archive_path) {
            Ok(path) => match tokio::fs::metadata(&path).await {
                Ok(m) => m.is_file(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    // Unreadable is not missing: say so and leave the mark as it is.
                    tracing::warn!(snapshot_id = %f.id, path = %path.display(), error = %e, "cannot check a snapshot file");
                    continue;
                }
            },
            Err(_) => false,
        };
        if present == f.file_missing_at.is_none() {
            continue;
        }
        if console::set_snapshot_file_missing(pool, f.id, !present).await? {
            changed += 1;
            if present {
                tracing::info!(snapshot_id = %f.id, "the snapshot's file is back");
            } else {
                tracing::warn!(snapshot_id = %f.id, path = %f.archive_path, "the snapshot's file is missing");
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use volsnap_shared::db::workloads::{self, WorkloadFields};
    use volsnap_shared::domain::SourceKind;
    use volsnap_shared::ids::SnapshotId;

    async fn ready(pool: &PgPool, workload: uuid::Uuid, node: &str, rel: &str) -> SnapshotId {
        let id = SnapshotId::new();
        sqlx::query(
            "INSERT INTO snapshots (id, workload_id, node, kind, state, archive_path, size_bytes, sha256, manifest) \
             VALUES ($1, $2, $3, 'manual', 'ready', $4, 1, $5, '{}'::jsonb)",
        )
        .bind(id)
        .bind(workload)
        .bind(node)
        .bind(rel)
        .bind("a".repeat(64))
        .execute(pool)
        .await
        .unwrap();
        id
    }

    async fn missing_since(pool: &PgPool, id: SnapshotId) -> Option<chrono::DateTime<chrono::Utc>> {
        sqlx::query_scalar("SELECT file_missing_at FROM snapshots WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
    async fn missing_files_are_marked_and_reappearing_ones_unmarked(pool: PgPool) {
        let dir = tempfile::tempdir().unwrap();
        let w = workloads::insert(
            &pool,
            &WorkloadFields {
                name: "shop".into(),
                project: "acme".into(),
                stage: "prod".into(),
                node: "node-a".into(),
                source_kind: SourceKind::Image,
                image: Some("img:1".into()),
                volumes: vec![],
                stop_for_capture: false,
            },
        )
        .await
        .unwrap();
        std::fs::create_dir_all(dir.path().join("w")).unwrap();
        std::fs::write(dir.path().join("w/present.tar.gz"), b"x").unwrap();
        let present = ready(&pool, w.id.0, "node-a", "w/present.tar.gz").await;
        let gone = ready(&pool, w.id.0, "node-a", "w/gone.tar.gz").await;
        // Another node's snapshot is not this worker's to judge.
        let elsewhere = ready(&pool, w.id.0, "node-b", "w/gone.tar.gz").await;

        assert_eq!(check_once(&pool, "node-a", dir.path()).await.unwrap(), 1);
        assert!(missing_since(&pool, present).await.is_none());
        let first = missing_since(&pool, gone).await.expect("marked missing");
        assert!(missing_since(&pool, elsewhere).await.is_none());
        // Again: nothing changes, and the first time seen is kept.
        assert_eq!(check_once(&pool, "node-a", dir.path()).await.unwrap(), 0);
        assert_eq!(missing_since(&pool, gone).await, Some(first));

        // The file comes back (a restored backup of the snapshot directory): unmarked.
        std::fs::write(dir.path().join("w/gone.tar.gz"), b"x").unwrap();
        assert_eq!(check_once(&pool, "node-a", dir.path()).await.unwrap(), 1);
        assert!(missing_since(&pool, gone).await.is_none());
        // A directory where the file should be is not the file.
        std::fs::remove_file(dir.path().join("w/present.tar.gz")).unwrap();
        std::fs::create_dir(dir.path().join("w/present.tar.gz")).unwrap();
        assert_eq!(check_once(&pool, "node-a", dir.path()).await.unwrap(), 1);
        assert!(missing_since(&pool, present).await.is_some());
    }
}
