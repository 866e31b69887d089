//! The per-volume swap and its undo, shared by the restore run and recovery.
//!
//! A volume is in one of two states, told by the marker files, not by the journal:
//! the target holds a `new` marker (swapped) or not (not swapped). The swap itself is
//! one `renameat2(RENAME_EXCHANGE)`: target and side directory trade places in one
//! atomic step. Where the filesystem lacks it, three renames through `<side>.swap`
//! do the same, and [`settle`] finishes or undoes a half-done one by its markers.
//!
//! Every function here is idempotent: recovery may run it again after a crash at
//! any point inside it.

use std::io;
use std::path::{Path, PathBuf};

use volsnap_shared::ids::JobId;

use super::fsops::{self, Marker, Role};
use super::journal::PlannedVolume;
use crate::crash_point;

/// The directory a fallback (three-rename) swap parks the target in.
pub fn parking(v: &PlannedVolume) -> PathBuf {
    let mut s = v.side.clone().into_os_string();
    s.push(".swap");
    PathBuf::from(s)
}

fn role(dir: &Path, job: JobId) -> io::Result<Option<Role>> {
    Ok(fsops::read_marker(dir, job)?.map(|m| m.role))
}

fn inconsistent(v: &PlannedVolume, what: &str) -> io::Error {
    io::Error::other(format!(
        "volume {}: {what}; refusing to guess (target {}, side {})",
        v.spec.target,
        v.target.display(),
        v.side.display()
    ))
}

/// Finish a half-done fallback swap so that the target exists again, in whichever
/// direction its markers allow.
pub fn settle(v: &PlannedVolume, job: JobId) -> io::Result<()> {
    let park = parking(v);
    if !fsops::exists(&park) {
        return Ok(());
    }
    let parent = fsops::parent(&v.target);
    if !fsops::exists(&v.target) {
        // Crashed between "target → parking" and "side → target": put the target back.
        std::fs::rename(&park, &v.target)?;
    } else if fsops::exists(&v.side) {
        return Err(inconsistent(
            v,
            "target, side and parking directories all exist",
        ));
    } else {
        // Crashed after "side → target": the parked directory is the other side.
        std::fs::rename(&park, &v.side)?;
    }
    let _ = job;
    fsops::fsync_dir(parent)
}

/// How target and side directory trade places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SwapMode {
    /// One `renameat2(RENAME_EXCHANGE)`; three renames where the filesystem lacks it.
    #[default]
    Exchange,
    /// Always three renames through `<side>.swap` (what filesystems without
    /// `RENAME_EXCHANGE` get; selectable to exercise that path).
    Renames,
}

fn exchange_or_fallback(v: &PlannedVolume, mode: SwapMode) -> io::Result<()> {
    if mode == SwapMode::Exchange {
        match fsops::exchange(&v.side, &v.target) {
            Ok(()) => return Ok(()),
            Err(e) if fsops::exchange_unsupported(&e) => {
                tracing::warn!(target = %v.target.display(), "RENAME_EXCHANGE unsupported here: using three renames");
            }
            Err(e) => return Err(e),
        }
    }
    let park = parking(v);
    let parent = fsops::parent(&v.target);
    std::fs::rename(&v.target, &park)?;
    fsops::fsync_dir(parent)?;
    crash_point!("swap.parked");
    std::fs::rename(&v.side, &v.target)?;
    fsops::fsync_dir(parent)?;
    crash_point!("swap.placed");
    std::fs::rename(&park, &v.side)
}

/// Mark every target as holding the old data (creating a missing target empty).
pub fn mark_targets_old(volumes: &[PlannedVolume], job: JobId) -> io::Result<()> {
    for v in volumes {
        settle(v, job)?;
        if !fsops::exists(&v.target) {
            std::fs::create_dir(&v.target)?;
            fsops::fsync_dir(fsops::parent(&v.target))?;
        }
        if role(&v.target, job)?.is_none() {
            fsops::write_marker(
                &v.target,
                &Marker {
                    job,
                    volume: v.index,
                    role: Role::Old,
                },
            )?;
        }
    }
    Ok(())
}

/// Put the new data in place of every target that does not hold it yet.
pub fn swap_in(volumes: &[PlannedVolume], job: JobId, mode: SwapMode) -> io::Result<()> {
    for (i, v) in volumes.iter().enumerate() {
        settle(v, job)?;
        match (role(&v.target, job)?, role(&v.side, job)?) {
            (Some(Role::New), _) => continue,
            (_, Some(Role::New)) => {
                exchange_or_fallback(v, mode)?;
                fsops::fsync_dir(fsops::parent(&v.target))?;
            }
            _ => {
                return Err(inconsistent(
                    v,
                    "neither the target nor the side holds the new data",
                ));
            }
        }
        if i == 0 {
            crash_point!("restore.swap.first");
        }
    }
    Ok(())
}

/// Put the old data back in place of every target that holds the new data, then
/// remove the markers from the targets and the staging (new) data.
pub fn swap_back(volumes: &[PlannedVolume], job: JobId, mode: SwapMode) -> io::Result<()> {
    for v in volumes.iter().rev() {
        settle(v, job)?;
        if role(&v.target, job)? == Some(Role::New) {
            if role(&v.side, job)? != Some(Role::Old) {
                return Err(inconsistent(
                    v,
                    "the target is swapped but the old data is not beside it",
                ));
            }
            exchange_or_fallback(v, mode)?;
            fsops::fsync_dir(fsops::parent(&v.target))?;
            crash_point!("recovery.swapped_back");
        }
        if fsops::exists(&v.target) {
            fsops::clear_marker(&v.target)?;
        }
        discard_side(v, job)?;
    }
    Ok(())
}

/// Remove a side directory unless it holds the old data.
pub fn discard_side(v: &PlannedVolume, job: JobId) -> io::Result<()> {
    if fsops::exists(&v.side) {
        if role(&v.side, job)? == Some(Role::Old) {
            return Err(inconsistent(v, "the side directory holds the old data"));
        }
        fsops::remove_tree(&v.side)?;
    }
    Ok(())
}

/// After the commit point: drop the markers from the targets (each must hold the new
/// data) so the app never sees them.
pub fn clear_targets(volumes: &[PlannedVolume], job: JobId) -> io::Result<()> {
    for v in volumes {
        settle(v, job)?;
        match role(&v.target, job)? {
            Some(Role::New) => fsops::clear_marker(&v.target)?,
            Some(Role::Old) => {
                return Err(inconsistent(
                    v,
                    "committed, but the target holds the old data",
                ));
            }
            None => {} // cleared before
        }
    }
    Ok(())
}

/// Where a pre-restore copy is moved (atomically) before it is deleted, so a crash in
/// the middle of the deletion never leaves a half-deleted copy that looks unmarked.
pub fn trash(v: &PlannedVolume) -> PathBuf {
    let mut s = v.side.clone().into_os_string();
    s.push(".del");
    PathBuf::from(s)
}

/// Delete the pre-restore copies (identified by their `old` marker) once archived.
pub fn remove_backups(volumes: &[PlannedVolume], job: JobId) -> io::Result<()> {
    for v in volumes {
        if fsops::exists(&v.side) {
            match role(&v.side, job)? {
                Some(Role::Old) => {
                    std::fs::rename(&v.side, trash(v))?;
                    fsops::fsync_dir(fsops::parent(&v.side))?;
                }
                _ => {
                    return Err(inconsistent(
                        v,
                        "the side directory is not the pre-restore copy",
                    ));
                }
            }
        }
        fsops::remove_tree(&trash(v))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use volsnap_shared::domain::{VolumeScope, VolumeSpec};

    fn setup(d: &Path, job: JobId) -> PlannedVolume {
        let v = PlannedVolume {
            index: 0,
            spec: VolumeSpec {
                scope: VolumeScope::Stage,
                source: "data".into(),
                target: "/data".into(),
            },
            target: d.join("data"),
            side: d.join(".volsnap-x-0"),
        };
        std::fs::create_dir(&v.target).unwrap();
        std::fs::write(v.target.join("f"), "old").unwrap();
        std::fs::create_dir(&v.side).unwrap();
        std::fs::write(v.side.join("f"), "new").unwrap();
        fsops::write_marker(
            &v.side,
            &Marker {
                job,
                volume: 0,
                role: Role::New,
            },
        )
        .unwrap();
        v
    }

    fn content(p: &Path) -> String {
        std::fs::read_to_string(p.join("f")).unwrap()
    }

    #[test]
    fn swap_in_then_back_restores_the_old_data_and_drops_the_new() {
        let d = tempfile::tempdir().unwrap();
        let job = JobId::new();
        let v = setup(d.path(), job);
        let vols = vec![v.clone()];
        mark_targets_old(&vols, job).unwrap();
        swap_in(&vols, job, SwapMode::Exchange).unwrap();
        swap_in(&vols, job, SwapMode::Exchange).unwrap(); // idempotent
        assert_eq!(content(&v.target), "new");
        swap_back(&vols, job, SwapMode::Exchange).unwrap();
        swap_back(&vols, job, SwapMode::Exchange).unwrap(); // idempotent
        assert_eq!(content(&v.target), "old");
        assert!(!fsops::exists(&v.side));
        assert!(!fsops::exists(&v.target.join(fsops::MARKER)));
    }

    #[test]
    fn forward_then_backups_removed() {
        let d = tempfile::tempdir().unwrap();
        let job = JobId::new();
        let v = setup(d.path(), job);
        let vols = vec![v.clone()];
        mark_targets_old(&vols, job).unwrap();
        swap_in(&vols, job, SwapMode::Exchange).unwrap();
        clear_targets(&vols, job).unwrap();
        assert_eq!(content(&v.side), "old");
        remove_backups(&vols, job).unwrap();
        remove_backups(&vols, job).unwrap();
        assert_eq!(content(&v.target), "new");
        assert!(!fsops::exists(&v.side) && !fsops::exists(&trash(&v)));
        assert!(!fsops::exists(&v.target.join(fsops::MARKER)));
    }

    #[test]
    fn settle_finishes_half_done_fallback_swaps() {
        // Crashed after "target → parking": the target is put back, nothing swapped.
        let d = tempfile::tempdir().unwrap();
        let job = JobId::new();
        let v = setup(d.path(), job);
        mark_targets_old(std::slice::from_ref(&v), job).unwrap();
        std::fs::rename(&v.target, parking(&v)).unwrap();
        settle(&v, job).unwrap();
        assert_eq!(content(&v.target), "old");
        assert_eq!(content(&v.side), "new");
        assert!(!fsops::exists(&parking(&v)));

        // Crashed after "side → target": the parked old data becomes the side.
        std::fs::rename(&v.target, parking(&v)).unwrap();
        std::fs::rename(&v.side, &v.target).unwrap();
        settle(&v, job).unwrap();
        assert_eq!(content(&v.target), "new");
        assert_eq!(content(&v.side), "old");
        assert_eq!(role(&v.side, job).unwrap(), Some(Role::Old));
    }

    #[test]
    fn three_renames_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let job = JobId::new();
        let v = setup(d.path(), job);
        let vols = vec![v.clone()];
        mark_targets_old(&vols, job).unwrap();
        swap_in(&vols, job, SwapMode::Renames).unwrap();
        assert_eq!(content(&v.target), "new");
        assert_eq!(content(&v.side), "old");
        swap_back(&vols, job, SwapMode::Renames).unwrap();
        assert_eq!(content(&v.target), "old");
        assert!(!fsops::exists(&v.side) && !fsops::exists(&parking(&v)));
    }

    #[test]
    fn refuses_to_delete_the_old_copy_as_staging() {
        let d = tempfile::tempdir().unwrap();
        let job = JobId::new();
        let v = setup(d.path(), job);
        fsops::write_marker(
            &v.side,
            &Marker {
                job,
                volume: 0,
                role: Role::Old,
            },
        )
        .unwrap();
        assert!(discard_side(&v, job).is_err());
        assert!(fsops::exists(&v.side));
    }
}
