//! Naming things the way operators do: a workload by id or `project/stage/name`, a
//! snapshot by id or "the latest".

use crate::api::{Client, CtlError, Result, Snapshot, Workload};

/// A workload by its id (a UUID) or `project/stage/name`.
pub async fn workload(client: &Client, name: &str) -> Result<Workload> {
    if uuid::Uuid::parse_str(name).is_ok() {
        return client.workload(name).await;
    }
    let parts: Vec<&str> = name.split('/').collect();
    let [project, stage, wname] = parts[..] else {
        return Err(CtlError::Usage(format!(
            "workload {name:?}: give an id or project/stage/name"
        )));
    };
    let found = client.workloads(Some(project), Some(stage)).await?;
    found
        .into_iter()
        .find(|w| w.name == wname)
        .ok_or_else(|| CtlError::Usage(format!("no workload named {name}")))
}

/// Snapshots `--latest` may pick: ready ones that are not pre-restore copies (those
/// exist for `undo`).
pub fn latest_of(snapshots: &[Snapshot]) -> Option<&Snapshot> {
    // The API lists newest first.
    snapshots
        .iter()
        .find(|s| s.state == "ready" && s.kind != "pre-restore" && s.deleted_at.is_none())
}

/// A snapshot of `w` by id, or its latest restorable one (`latest`).
pub async fn snapshot(client: &Client, w: &Workload, which: &str) -> Result<Snapshot> {
    if which == "latest" {
        let all = client.snapshots(&w.id).await?;
        return latest_of(&all).cloned().ok_or_else(|| {
            CtlError::Usage(format!(
                "workload {} has no ready snapshot (manual or imported) to restore",
                w.path()
            ))
        });
    }
    if uuid::Uuid::parse_str(which).is_err() {
        return Err(CtlError::Usage(format!(
            "snapshot {which:?}: give a snapshot id or use --latest"
        )));
    }
    client.snapshot(which).await
}
