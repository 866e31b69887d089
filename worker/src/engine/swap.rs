//! The per-volume swap and its undo, shared by the restore run and recovery.
//!
//! A volume is swapped or not, told by the identity (device, inode) of the directory at
//! the target's name: the staged directory's (`new_id`) or the live one's (`old_id`),
//! both recorded in the journal before the first exchange. Nothing is written inside a
//! volume. The swap itself is one `renameat2(RENAME_EXCHANGE)` of two names in the
//! held parent directory; where the filesystem lacks it, three renames through a
//! parking name do the same, and [`settle`] finishes or undoes a half-done one.
//!
//! Every function here is idempotent: recovery may run it again after a crash at any
//! point inside it. Every name is resolved in the parent fd held for the job
//! ([`ParentDir`]), never through a path string.

use std::io;
use std::sync::Arc;

use super::dirs::{FileId, ParentDir};
use super::journal::PlannedVolume;
use crate::crash_point;

/// A planned volume and the parent directory it lives in.
pub type Held = (PlannedVolume, Arc<ParentDir>);

/// What sits at a name, as far as this job is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Missing,
    /// The live data from before the restore.
    Old,
    /// The snapshot's data, staged by this job.
    New,
}

fn inconsistent(v: &PlannedVolume, p: &ParentDir, what: &str) -> io::Error {
    // The host path goes to the worker's log; the job's message names the volume.
    tracing::error!(volume = %v.spec.target, parent = %p.path().display(), name = %v.name, side = %v.side, "{what}");
    io::Error::other(format!(
        "volume {:?}: {what}; refusing to guess",
        v.spec.target
    ))
}

fn side_of(v: &PlannedVolume, id: Option<FileId>) -> Option<Side> {
    match id {
        None => Some(Side::Missing),
        Some(id) if Some(id) == v.new_id => Some(Side::New),
        Some(id) if Some(id) == v.old_id => Some(Side::Old),
        Some(_) => None,
    }
}

/// What is at the target's name (an unknown directory is an error).
pub fn at_target(v: &PlannedVolume, p: &ParentDir) -> io::Result<Side> {
    side_of(v, p.dir_id(v.name())?)
        .ok_or_else(|| inconsistent(v, p, "the live directory was replaced by another"))
}

/// What is at the side directory's name.
pub fn at_side(v: &PlannedVolume, p: &ParentDir) -> io::Result<Side> {
    side_of(v, p.dir_id(v.side())?)
        .ok_or_else(|| inconsistent(v, p, "the side directory is not this job's"))
}

/// Finish a half-done fallback swap so that the target exists again, in whichever
/// direction the names allow.
pub fn settle(v: &PlannedVolume, p: &ParentDir) -> io::Result<()> {
    let park = v.parking();
    if !p.exists(&park)? {
        return Ok(());
    }
    if !p.exists(v.name())? {
        // Crashed between "target → parking" and "side → target": put it back.
        p.rename(&park, v.name())?;
    } else if p.exists(v.side())? {
        return Err(inconsistent(
            v,
            p,
            "target, side and parking directories all exist",
        ));
    } else {
        // Crashed after "side → target": the parked directory is the other side.
        p.rename(&park, v.side())?;
    }
    p.fsync()
}

/// How target and side directory trade places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SwapMode {
    /// One `renameat2(RENAME_EXCHANGE)`; three renames where the filesystem lacks it.
    #[default]
    Exchange,
    /// Always three renames through a parking name (what filesystems without
    /// `RENAME_EXCHANGE` get; selectable to exercise that path).
    Renames,
}

/// Whether an exchange failed because the filesystem does not support it.
fn exchange_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::EINVAL) | Some(nix::libc::ENOSYS) | Some(nix::libc::EOPNOTSUPP)
    )
}

fn exchange_or_fallback(v: &PlannedVolume, p: &ParentDir, mode: SwapMode) -> io::Result<()> {
    if mode == SwapMode::Exchange {
        match p.exchange(v.side(), v.name()) {
            Ok(()) => return p.fsync(),
            Err(e) if exchange_unsupported(&e) => {
                tracing::warn!(volume = %v.spec.target, "RENAME_EXCHANGE unsupported here: using three renames");
            }
            Err(e) => return Err(e),
        }
    }
    let park = v.parking();
    p.rename(v.name(), &park)?;
    p.fsync()?;
    crash_point!("swap.parked");
    p.rename(v.side(), v.name())?;
    p.fsync()?;
    crash_point!("swap.placed");
    p.rename(&park, v.side())?;
    p.fsync()
}

/// Put the new data in place of every target that does not hold it yet.
pub fn swap_in(volumes: &[Held], mode: SwapMode) -> io::Result<()> {
    for (i, (v, p)) in volumes.iter().enumerate() {
        settle(v, p)?;
        match (at_target(v, p)?, at_side(v, p)?) {
            (Side::New, _) => continue,
            (Side::Old, Side::New) => exchange_or_fallback(v, p, mode)?,
            _ => {
                return Err(inconsistent(
                    v,
                    p,
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
/// remove the staging (new) data when `discard` (an undo's side directory is a kept
/// copy, never staging: it stays).
pub fn swap_back(volumes: &[Held], mode: SwapMode, discard: bool) -> io::Result<()> {
    for (v, p) in volumes.iter().rev() {
        settle(v, p)?;
        if at_target(v, p)? == Side::New {
            if at_side(v, p)? != Side::Old {
                return Err(inconsistent(
                    v,
                    p,
                    "the target is swapped but the old data is not beside it",
                ));
            }
            exchange_or_fallback(v, p, mode)?;
            crash_point!("recovery.swapped_back");
        }
        if discard {
            discard_side(v, p)?;
        }
    }
    Ok(())
}

/// Remove a side directory (staging) unless it holds the old data. Before the
/// extraction finished `new_id` is unknown: whatever is at the side name then is a
/// partial staging directory (only volsnap makes names in a volume's parent).
pub fn discard_side(v: &PlannedVolume, p: &ParentDir) -> io::Result<()> {
    if let Some(id) = p.dir_id(v.side())? {
        if Some(id) == v.old_id {
            return Err(inconsistent(v, p, "the side directory holds the old data"));
        }
        p.remove_tree(v.side())?;
    }
    Ok(())
}

/// After the commit point: every target must hold the new data.
pub fn check_committed(volumes: &[Held]) -> io::Result<()> {
    for (v, p) in volumes {
        settle(v, p)?;
        if at_target(v, p)? != Side::New {
            return Err(inconsistent(
                v,
                p,
                "committed, but the target does not hold the new data",
            ));
        }
    }
    Ok(())
}

/// Delete kept pre-restore copies (identified by `old_id`) past their retention: each
/// is first renamed to its trash name (atomically: no half-deleted copy under the side
/// name), then deleted without following a symlink.
pub fn remove_backups(volumes: &[Held]) -> io::Result<()> {
    for (i, (v, p)) in volumes.iter().enumerate() {
        match at_side(v, p)? {
            Side::Old => {
                p.rename(v.side(), &v.trash())?;
                p.fsync()?;
                if i == 0 {
                    crash_point!("keep.trashed");
                }
            }
            Side::Missing => {}
            Side::New => {
                return Err(inconsistent(
                    v,
                    p,
                    "the side directory is not the pre-restore copy",
                ));
            }
        }
        p.remove_tree(&v.trash())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use volsnap_shared::domain::{VolumeScope, VolumeSpec};

    fn setup(d: &Path) -> (Held, PathBuf) {
        let base = std::fs::canonicalize(d).unwrap();
        std::fs::create_dir(base.join("data")).unwrap();
        std::fs::write(base.join("data/f"), "old").unwrap();
        std::fs::create_dir(base.join(".volsnap-x-0")).unwrap();
        std::fs::write(base.join(".volsnap-x-0/f"), "new").unwrap();
        let p = Arc::new(ParentDir::open(&base, Path::new("")).unwrap());
        let v = PlannedVolume {
            index: 0,
            spec: VolumeSpec {
                scope: VolumeScope::Stage,
                source: "data".into(),
                target: "/data".into(),
            },
            target: base.join("data"),
            base: base.clone(),
            parent_rel: PathBuf::new(),
            parent_id: p.id(),
            name: "data".into(),
            side: ".volsnap-x-0".into(),
            old_id: p.dir_id("data".as_ref()).unwrap(),
            new_id: p.dir_id(".volsnap-x-0".as_ref()).unwrap(),
        };
        ((v, p), base)
    }

    fn content(p: &Path) -> String {
        std::fs::read_to_string(p.join("f")).unwrap()
    }

    #[test]
    fn swap_in_then_back_restores_the_old_data_and_drops_the_new() {
        let d = tempfile::tempdir().unwrap();
        let (h, base) = setup(d.path());
        let vols = vec![h];
        swap_in(&vols, SwapMode::Exchange).unwrap();
        swap_in(&vols, SwapMode::Exchange).unwrap(); // idempotent
        assert_eq!(content(&base.join("data")), "new");
        swap_back(&vols, SwapMode::Exchange, true).unwrap();
        swap_back(&vols, SwapMode::Exchange, true).unwrap(); // idempotent
        assert_eq!(content(&base.join("data")), "old");
        assert!(!base.join(".volsnap-x-0").exists());
        assert_eq!(std::fs::read_dir(base.join("data")).unwrap().count(), 1);
    }

    #[test]
    fn forward_then_backups_removed() {
        let d = tempfile::tempdir().unwrap();
        let (h, base) = setup(d.path());
        let vols = vec![h];
        swap_in(&vols, SwapMode::Exchange).unwrap();
        check_committed(&vols).unwrap();
        assert_eq!(content(&base.join(".volsnap-x-0")), "old");
        remove_backups(&vols).unwrap();
        remove_backups(&vols).unwrap();
        assert_eq!(content(&base.join("data")), "new");
        assert_eq!(std::fs::read_dir(&base).unwrap().count(), 1);
    }

    #[test]
    fn settle_finishes_half_done_fallback_swaps() {
        let d = tempfile::tempdir().unwrap();
        let ((v, p), base) = setup(d.path());
        let (t, s, park) = (
            base.join("data"),
            base.join(".volsnap-x-0"),
            base.join(".volsnap-x-0.swap"),
        );
        // Crashed after "target → parking": the target is put back, nothing swapped.
        std::fs::rename(&t, &park).unwrap();
        settle(&v, &p).unwrap();
        assert_eq!(content(&t), "old");
        assert_eq!(content(&s), "new");
        assert!(!park.exists());
        // Crashed after "side → target": the parked old data becomes the side.
        std::fs::rename(&t, &park).unwrap();
        std::fs::rename(&s, &t).unwrap();
        settle(&v, &p).unwrap();
        assert_eq!(content(&t), "new");
        assert_eq!(at_side(&v, &p).unwrap(), Side::Old);
    }

    #[test]
    fn three_renames_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let (h, base) = setup(d.path());
        let vols = vec![h];
        swap_in(&vols, SwapMode::Renames).unwrap();
        assert_eq!(content(&base.join("data")), "new");
        assert_eq!(content(&base.join(".volsnap-x-0")), "old");
        swap_back(&vols, SwapMode::Renames, true).unwrap();
        assert_eq!(content(&base.join("data")), "old");
        assert_eq!(std::fs::read_dir(&base).unwrap().count(), 1);
    }

    #[test]
    fn refuses_to_delete_the_old_copy_or_a_stranger() {
        let d = tempfile::tempdir().unwrap();
        let ((v, p), base) = setup(d.path());
        // The old copy where staging should be.
        let mut swapped = v.clone();
        std::mem::swap(&mut swapped.old_id, &mut swapped.new_id);
        assert!(discard_side(&swapped, &p).is_err());
        assert!(base.join(".volsnap-x-0").exists());
        // A directory volsnap never saw at the target's name: no guessing.
        std::fs::rename(base.join("data"), base.join("moved")).unwrap();
        std::fs::create_dir(base.join("data")).unwrap();
        assert!(at_target(&v, &p).is_err());
        assert!(swap_in(&[(v, p)], SwapMode::Exchange).is_err());
        assert_eq!(content(&base.join(".volsnap-x-0")), "new");
    }
}
