//! The directory handles the engine acts through (containment, issue 9).
//!
//! Everything inside a volume belongs to the app's container, and a configured path
//! can be re-pointed between any two steps (a parent directory replaced by a symlink).
//! So the engine resolves each volume's PARENT once, from a trusted base, refusing a
//! symlink at every component (`openat2` with `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`),
//! holds that directory fd for the whole job, and does every later step — staging,
//! exchange, parking, cleanup, reading a tree — relative to it. Which directory sits at
//! a name is told by its identity (device, inode), recorded in the journal: nothing of
//! volsnap's is ever written inside a volume, and no name inside one is trusted.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

/// A directory's identity: it cannot change while the directory exists, and the engine
/// keeps both sides of a swap until the commit point, so an inode cannot be reused
/// while the journal relies on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    fn of(st: &rustix::fs::Stat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Open the directory `base/rel` refusing a symlink anywhere: `base` must be an absolute
/// path with no symlinked component, `rel` a normalised relative path (no `..`) that is
/// resolved beneath `base` only. Falls back to a component-by-component `openat` with
/// `O_NOFOLLOW` where `openat2` is missing (kernels before 5.6): equivalent for a `rel`
/// without `..`.
pub fn open_beneath(base: &Path, rel: &Path) -> io::Result<OwnedFd> {
    if !base.is_absolute() {
        return Err(io::Error::other(
            "the base directory is not an absolute path",
        ));
    }
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(io::Error::other("not a plain relative path"));
    }
    let base_fd = match rustix::fs::openat2(
        rustix::fs::CWD,
        base,
        DIR,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOSYS) => return walk(base, rel),
        Err(e) => return Err(err(e)),
    };
    if rel.as_os_str().is_empty() {
        return Ok(base_fd);
    }
    rustix::fs::openat2(
        &base_fd,
        rel,
        DIR,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::BENEATH,
    )
    .map_err(err)
}

fn walk(base: &Path, rel: &Path) -> io::Result<OwnedFd> {
    let mut fd = rustix::fs::open("/", DIR, Mode::empty()).map_err(err)?;
    for c in base.components().chain(rel.components()) {
        if let Component::Normal(n) = c {
            fd = rustix::fs::openat(&fd, n, DIR, Mode::empty()).map_err(err)?;
        }
    }
    Ok(fd)
}

/// The held parent directory of one volume: the live directory and its side directory
/// (staging, then the pre-restore copy) are names inside it.
#[derive(Debug)]
pub struct ParentDir {
    fd: OwnedFd,
    id: FileId,
    /// Where it was resolved from (for re-checks, logs and operator messages only).
    base: PathBuf,
    rel: PathBuf,
}

impl ParentDir {
    pub fn open(base: &Path, rel: &Path) -> io::Result<ParentDir> {
        let fd = open_beneath(base, rel)?;
        let id = FileId::of(&rustix::fs::fstat(&fd).map_err(err)?);
        Ok(ParentDir {
            fd,
            id,
            base: base.to_path_buf(),
            rel: rel.to_path_buf(),
        })
    }

    /// Open again from the journal, refusing a directory that is not the one recorded.
    pub fn reopen(base: &Path, rel: &Path, expected: FileId) -> io::Result<ParentDir> {
        let p = ParentDir::open(base, rel)?;
        if p.id != expected {
            return Err(io::Error::other(format!(
                "{} is no longer the directory this job recorded",
                p.path().display()
            )));
        }
        Ok(p)
    }

    pub fn id(&self) -> FileId {
        self.id
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The host path it was opened as (logs only: never resolved again by string).
    pub fn path(&self) -> PathBuf {
        self.base.join(&self.rel)
    }

    /// Whether the configured path still leads, without a symlink, to this very
    /// directory.
    pub fn still_at_its_path(&self) -> io::Result<bool> {
        const GONE: [Errno; 4] = [Errno::LOOP, Errno::NOENT, Errno::NOTDIR, Errno::XDEV];
        match ParentDir::open(&self.base, &self.rel) {
            Ok(p) => Ok(p.id == self.id),
            Err(e)
                if GONE
                    .iter()
                    .any(|g| e.raw_os_error() == Some(g.raw_os_error())) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// What is at `name`: `None` if nothing, else its identity and whether it is a real
    /// directory (a symlink is not).
    pub fn entry(&self, name: &OsStr) -> io::Result<Option<(FileId, bool)>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some((
                FileId::of(&st),
                FileType::from_raw_mode(st.st_mode) == FileType::Directory,
            ))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// The identity of the directory at `name`, `None` if nothing is there; anything
    /// but a real directory is an error.
    pub fn dir_id(&self, name: &OsStr) -> io::Result<Option<FileId>> {
        match self.entry(name)? {
            None => Ok(None),
            Some((id, true)) => Ok(Some(id)),
            Some((_, false)) => Err(io::Error::other(format!(
                "{} is not a directory",
                self.path().join(name).display()
            ))),
        }
    }

    pub fn exists(&self, name: &OsStr) -> io::Result<bool> {
        Ok(self.entry(name)?.is_some())
    }

    pub fn mkdir(&self, name: &OsStr) -> io::Result<()> {
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o755)).map_err(err)?;
        self.fsync()
    }

    /// `renameat2(RENAME_EXCHANGE)` of two names in this directory.
    pub fn exchange(&self, a: &OsStr, b: &OsStr) -> io::Result<()> {
        rustix::fs::renameat_with(&self.fd, a, &self.fd, b, RenameFlags::EXCHANGE).map_err(err)
    }

    /// Rename `from` to `to` in this directory; never replaces an existing `to`.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        match rustix::fs::renameat_with(&self.fd, from, &self.fd, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(Errno::INVAL) | Err(Errno::NOSYS) => {
                // No RENAME_NOREPLACE here: check, then rename (only volsnap writes in a
                // volume's parent).
                if self.exists(to)? {
                    return Err(io::Error::from_raw_os_error(Errno::EXIST.raw_os_error()));
                }
                rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(err)
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Remove `name` and everything below it, never following a symlink; a missing
    /// one is fine.
    pub fn remove_tree(&self, name: &OsStr) -> io::Result<()> {
        if !self.exists(name)? {
            return Ok(());
        }
        volsnap_archive::remove_tree_at(self.fd(), name).map_err(err)?;
        self.fsync()
    }

    pub fn fsync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(err)
    }

    /// Open the directory at `name` (never through a symlink), checking it is the one
    /// expected.
    pub fn open_dir(&self, name: &OsStr, expected: Option<FileId>) -> io::Result<OwnedFd> {
        let fd = rustix::fs::openat(&self.fd, name, DIR, Mode::empty()).map_err(err)?;
        if let Some(want) = expected {
            let got = FileId::of(&rustix::fs::fstat(&fd).map_err(err)?);
            if got != want {
                return Err(io::Error::other(format!(
                    "{} was replaced",
                    self.path().join(name).display()
                )));
            }
        }
        Ok(fd)
    }

    /// Free bytes on this directory's filesystem.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let s = rustix::fs::fstatvfs(&self.fd).map_err(err)?;
        Ok(s.f_bavail.saturating_mul(s.f_frsize))
    }
}

/// Files and bytes of regular files below the directory `dir`, walked by fd (never
/// following a symlink, whatever the app does meanwhile). For space estimates.
pub fn tree_size(dir: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut stack: Vec<OwnedFd> = vec![rustix::io::fcntl_dupfd_cloexec(dir, 0).map_err(err)?];
    while let Some(d) = stack.pop() {
        let mut subdirs: Vec<OsString> = Vec::new();
        let mut rd = Dir::read_from(&d).map_err(err)?;
        while let Some(ent) = rd.read() {
            let ent = ent.map_err(err)?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name);
            match rustix::fs::statat(&d, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => subdirs.push(name.to_os_string()),
                    FileType::RegularFile => {
                        files += 1;
                        bytes = bytes.saturating_add(st.st_size as u64);
                    }
                    _ => {}
                },
                Err(Errno::NOENT) => {}
                Err(e) => return Err(err(e)),
            }
        }
        drop(rd);
        for n in subdirs {
            match rustix::fs::openat(&d, &n, DIR, Mode::empty()) {
                Ok(fd) => stack.push(fd),
                // Gone or replaced (by a symlink) since it was listed: not ours to count.
                Err(Errno::NOENT) | Err(Errno::LOOP) | Err(Errno::NOTDIR) => {}
                Err(e) => return Err(err(e)),
            }
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_beneath_a_base_and_refuses_symlinks_anywhere() {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        std::os::unix::fs::symlink(base.join("a"), base.join("link")).unwrap();
        assert!(open_beneath(&base, Path::new("a/b")).is_ok());
        assert!(open_beneath(&base, Path::new("")).is_ok());
        assert!(open_beneath(&base, Path::new("link/b")).is_err());
        assert!(open_beneath(&base, Path::new("link")).is_err());
        assert!(open_beneath(&base, Path::new("../x")).is_err());
        assert!(open_beneath(&base.join("link"), Path::new("b")).is_err());
        assert!(walk(&base, Path::new("link/b")).is_err());
        assert!(walk(&base, Path::new("a/b")).is_ok());
    }

    #[test]
    fn a_held_parent_notices_its_path_was_repointed() {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(base.join("p/vol")).unwrap();
        let p = ParentDir::open(&base, Path::new("p")).unwrap();
        let vol = p.dir_id(OsStr::new("vol")).unwrap().unwrap();
        assert!(p.still_at_its_path().unwrap());
        std::fs::rename(base.join("p"), base.join("moved")).unwrap();
        std::fs::create_dir(base.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(base.join("elsewhere"), base.join("p")).unwrap();
        assert!(!p.still_at_its_path().unwrap());
        // Acting through the held fd still reaches the original directory.
        assert_eq!(p.dir_id(OsStr::new("vol")).unwrap(), Some(vol));
        p.mkdir(OsStr::new("side")).unwrap();
        assert!(base.join("moved/side").is_dir());
        assert!(!base.join("elsewhere/side").exists());
        assert!(ParentDir::reopen(&base, Path::new("moved"), p.id()).is_ok());
        std::fs::create_dir(base.join("other")).unwrap();
        assert!(ParentDir::reopen(&base, Path::new("other"), p.id()).is_err());
    }

    #[test]
    fn exchange_rename_and_tree_size_through_the_parent() {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(base.join("a/sub")).unwrap();
        std::fs::write(base.join("a/f"), "12345").unwrap();
        std::fs::write(base.join("a/sub/g"), "67").unwrap();
        std::os::unix::fs::symlink("/etc", base.join("a/escape")).unwrap();
        std::fs::create_dir(base.join("b")).unwrap();
        let p = ParentDir::open(&base, Path::new("")).unwrap();
        let (a, b) = (OsStr::new("a"), OsStr::new("b"));
        let ida = p.dir_id(a).unwrap().unwrap();
        p.exchange(a, b).unwrap();
        assert_eq!(p.dir_id(b).unwrap(), Some(ida));
        assert!(p.rename(a, b).is_err(), "rename never replaces");
        let fd = p.open_dir(b, Some(ida)).unwrap();
        assert_eq!(tree_size(fd.as_fd()).unwrap(), (2, 7));
        assert!(p.open_dir(a, Some(ida)).is_err());
        p.remove_tree(b).unwrap();
        assert!(!p.exists(b).unwrap());
        assert!(std::path::Path::new("/etc").is_dir());
        assert!(p.free_bytes().unwrap() > 0);
    }
}
