//! Filesystem primitives for volsnap's OWN directories (journal, snapshots): durable
//! writes (file and directory fsync), filesystem identity and free space. Anything in
//! or next to a live volume goes through [`super::dirs`] instead (held directory fds,
//! no path strings).
//!
//! Everything here is blocking; callers run it in `spawn_blocking`.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `p` (for fsync after a rename in it).
pub fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

/// Replace `path` with `bytes` atomically and durably: temp file, fsync, rename, fsync
/// of the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("volsnap")
    ));
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// The device of `p` itself (not following a final symlink).
pub fn dev_of(p: &Path) -> io::Result<u64> {
    Ok(std::fs::symlink_metadata(p)?.dev())
}

/// Bytes available to unprivileged writers... and to us: `f_bavail * f_frsize`.
pub fn free_bytes(p: &Path) -> io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(p).map_err(io::Error::from)?;
    Ok((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// The nearest existing ancestor of `p` (itself if it exists).
pub fn existing_ancestor(p: &Path) -> PathBuf {
    let mut cur = p.to_path_buf();
    while std::fs::symlink_metadata(&cur).is_err() {
        if !cur.pop() {
            return PathBuf::from("/");
        }
    }
    cur
}

/// Remove a directory tree; a missing one is fine. Never follows symlinks.
pub fn remove_tree(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => fsync_dir(parent(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn remove_file(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => fsync_dir(parent(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}
