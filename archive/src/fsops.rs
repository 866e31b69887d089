//! Filesystem side of extraction: staging directories and fd-relative creation.
//!
//! Why nothing outside a staging directory can be touched:
//! 1. each staging directory is made by us with `mkdirat` (it must not exist before) and
//!    opened with `O_DIRECTORY | O_NOFOLLOW`;
//! 2. every later operation is relative to a directory fd obtained by `openat(parent_fd,
//!    name, O_DIRECTORY | O_NOFOLLOW)` one component at a time from that staging fd, and
//!    only for directories the in-memory [`Tree`] says this extraction created (never a
//!    symlink, never `..`, which names refuse anyway);
//! 3. leaves are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, `mkdirat` or `symlinkat`,
//!    all of which fail rather than follow or reuse an existing name; metadata is set
//!    through the new file's own fd, or with `AT_SYMLINK_NOFOLLOW` for symlinks;
//! 4. cleanup walks the same way (`unlinkat`, `openat` with `O_NOFOLLOW`).
//!
//! Symlinks are created but never followed while extracting.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, Dir, FileType, Gid, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT, Uid,
};
use rustix::io::Errno;

use crate::error::{ArchiveError, errno, show};
use crate::manifest::Manifest;
use crate::tree::{Kind, Meta, NodeId, Tree};

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What extraction does with entries that passed every check.
pub(crate) trait Sink {
    /// Binds a volume root node to its output.
    fn bind_root(&mut self, index: u32, root: NodeId);
    fn mkdir(&mut self, tree: &Tree, parent: NodeId, name: &[u8]) -> Result<(), ArchiveError>;
    fn begin_file(&mut self, tree: &Tree, parent: NodeId, name: &[u8]) -> Result<(), ArchiveError>;
    fn write(&mut self, data: &[u8]) -> Result<(), ArchiveError>;
    fn end_file(&mut self, meta: &Meta) -> Result<(), ArchiveError>;
    fn symlink(
        &mut self,
        tree: &Tree,
        parent: NodeId,
        name: &[u8],
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), ArchiveError>;
    /// After the last entry passed every check: directory metadata, durability.
    fn finish(&mut self, tree: &Tree) -> Result<(), ArchiveError>;
}

/// Validates everything and writes nothing (`verify`).
pub(crate) struct NullSink;

impl Sink for NullSink {
    fn bind_root(&mut self, _: u32, _: NodeId) {}
    fn mkdir(&mut self, _: &Tree, _: NodeId, _: &[u8]) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn begin_file(&mut self, _: &Tree, _: NodeId, _: &[u8]) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn write(&mut self, _: &[u8]) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn end_file(&mut self, _: &Meta) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn symlink(
        &mut self,
        _: &Tree,
        _: NodeId,
        _: &[u8],
        _: &[u8],
        _: &Meta,
    ) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn finish(&mut self, _: &Tree) -> Result<(), ArchiveError> {
        Ok(())
    }
}

/// A staging directory made by this extraction.
struct Staging {
    path: PathBuf,
    parent: OwnedFd,
    name: OsString,
    fd: Option<OwnedFd>,
}

/// Writes entries below freshly created staging directories; removes them all again
/// when dropped before [`FsSink::commit`].
pub(crate) struct FsSink {
    staging: Vec<Staging>,
    by_index: HashMap<u32, usize>,
    root_slot: HashMap<NodeId, usize>,
    /// Open directories from the current volume root down (root excluded).
    stack: Vec<(NodeId, OwnedFd)>,
    stack_root: Option<NodeId>,
    file: Option<(File, NodeId, Vec<u8>)>,
    preserve_owner: bool,
    fsync: bool,
    committed: bool,
}

/// A staging directory to create as `name` inside the directory `parent` (an fd the
/// caller holds); `label` only names it in errors and logs.
#[derive(Debug)]
pub struct StagingAt<'a> {
    pub parent: BorrowedFd<'a>,
    pub name: &'a OsStr,
    pub label: PathBuf,
}

/// Every manifest volume needs a staging directory, and no other index may have one.
fn check_indexes(
    given: impl Iterator<Item = u32>,
    manifest: &Manifest,
    label: impl Fn(u32) -> PathBuf,
) -> Result<(), ArchiveError> {
    let indexes: HashSet<u32> = manifest.volumes.iter().map(|v| v.index).collect();
    let given: HashSet<u32> = given.collect();
    let mut wanted: Vec<u32> = indexes.iter().copied().collect();
    wanted.sort_unstable();
    for index in wanted {
        if !given.contains(&index) {
            return Err(ArchiveError::VolumeUnmapped { index });
        }
    }
    let mut extra: Vec<u32> = given.difference(&indexes).copied().collect();
    extra.sort_unstable();
    if let Some(index) = extra.first() {
        return Err(staging_invalid(
            &label(*index),
            format!("given for volume {index}, which the manifest does not list"),
        ));
    }
    Ok(())
}

fn staging_invalid(path: &Path, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::StagingInvalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl FsSink {
    /// Checks the staging map against the manifest and creates one directory per
    /// volume. On error, nothing is left behind.
    pub(crate) fn create(
        staging: &BTreeMap<u32, PathBuf>,
        manifest: &Manifest,
        preserve_owner: bool,
        fsync: bool,
    ) -> Result<FsSink, ArchiveError> {
        check_indexes(staging.keys().copied(), manifest, |i| {
            staging.get(&i).cloned().unwrap_or_default()
        })?;
        let mut seen: HashSet<PathBuf> = HashSet::new();
        let mut plans = Vec::new();
        for (index, path) in staging {
            let name = match path.file_name() {
                Some(n) if Path::new(n) != Path::new(".") => n.to_os_string(),
                _ => return Err(staging_invalid(path, "no final name component")),
            };
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            match std::fs::symlink_metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(_) => return Err(staging_invalid(path, "it already exists")),
                Err(e) => return Err(ArchiveError::io(format!("checking {path:?}"), e)),
            }
            let canon = std::fs::canonicalize(&parent).map_err(|e| {
                staging_invalid(path, format!("its parent cannot be resolved: {e}"))
            })?;
            if !canon.is_dir() {
                return Err(staging_invalid(path, "its parent is not a directory"));
            }
            let full = canon.join(&name);
            if seen
                .iter()
                .any(|s| s.starts_with(&full) || full.starts_with(s))
            {
                return Err(staging_invalid(
                    path,
                    "two volumes share or nest staging directories",
                ));
            }
            seen.insert(full);
            let pfd = rustix::fs::open(
                &parent,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| errno(format!("opening {parent:?}"), e))?;
            plans.push((*index, path.clone(), pfd, name));
        }
        Self::make(plans, preserve_owner, fsync)
    }

    /// [`FsSink::create`] for staging directories named relative to directory fds the
    /// caller holds: no path string is resolved at all.
    pub(crate) fn create_at(
        staging: &BTreeMap<u32, StagingAt<'_>>,
        manifest: &Manifest,
        preserve_owner: bool,
        fsync: bool,
    ) -> Result<FsSink, ArchiveError> {
        check_indexes(staging.keys().copied(), manifest, |i| {
            staging.get(&i).map(|s| s.label.clone()).unwrap_or_default()
        })?;
        let mut seen: HashSet<(u64, u64, OsString)> = HashSet::new();
        let mut plans = Vec::new();
        for (index, s) in staging {
            let plain = !s.name.is_empty()
                && s.name != OsStr::new(".")
                && s.name != OsStr::new("..")
                && !s.name.as_bytes().contains(&b'/');
            if !plain {
                return Err(staging_invalid(&s.label, "not a single name component"));
            }
            let st = rustix::fs::fstat(s.parent)
                .map_err(|e| errno(format!("inspecting the parent of {:?}", s.label), e))?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                return Err(staging_invalid(&s.label, "its parent is not a directory"));
            }
            if !seen.insert((st.st_dev, st.st_ino, s.name.to_os_string())) {
                return Err(staging_invalid(
                    &s.label,
                    "two volumes share staging directories",
                ));
            }
            let pfd = rustix::io::fcntl_dupfd_cloexec(s.parent, 0)
                .map_err(|e| errno("duplicating a directory fd", e))?;
            plans.push((*index, s.label.clone(), pfd, s.name.to_os_string()));
        }
        Self::make(plans, preserve_owner, fsync)
    }

    fn make(
        plans: Vec<(u32, PathBuf, OwnedFd, OsString)>,
        preserve_owner: bool,
        fsync: bool,
    ) -> Result<FsSink, ArchiveError> {
        let mut sink = FsSink {
            staging: Vec::new(),
            by_index: HashMap::new(),
            root_slot: HashMap::new(),
            stack: Vec::new(),
            stack_root: None,
            file: None,
            preserve_owner,
            fsync,
            committed: false,
        };
        for (index, path, pfd, name) in plans {
            match rustix::fs::mkdirat(&pfd, &name, Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(Errno::EXIST) => return Err(staging_invalid(&path, "it already exists")),
                Err(e) => return Err(errno(format!("creating {path:?}"), e)),
            }
            // Registered before opening so that Drop removes it whatever happens next.
            sink.staging.push(Staging {
                path: path.clone(),
                parent: pfd,
                name: name.clone(),
                fd: None,
            });
            let slot = sink.staging.len() - 1;
            let fd =
                rustix::fs::openat(&sink.staging[slot].parent, &name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| errno(format!("opening {path:?}"), e))?;
            sink.staging[slot].fd = Some(fd);
            sink.by_index.insert(index, slot);
        }
        Ok(sink)
    }

    /// Keeps the staging directories (extraction succeeded).
    pub(crate) fn commit(mut self) {
        self.committed = true;
    }

    fn root_fd(&self, root: NodeId) -> BorrowedFd<'_> {
        let slot = self.root_slot[&root];
        self.staging[slot].fd.as_ref().expect("staging fd").as_fd()
    }

    /// Makes the fd of directory `dir` available (see [`FsSink::fd_of`]).
    fn open_dir(&mut self, tree: &Tree, dir: NodeId) -> Result<(), ArchiveError> {
        if tree.node(dir).parent == dir {
            return Ok(());
        }
        if self.stack.last().is_some_and(|(id, _)| *id == dir) {
            return Ok(());
        }
        let root = tree.root_of(dir);
        if self.stack_root != Some(root) {
            self.stack.clear();
            self.stack_root = Some(root);
        }
        let chain = tree.chain(dir);
        let common = self
            .stack
            .iter()
            .zip(&chain)
            .take_while(|((a, _), b)| a == *b)
            .count();
        self.stack.truncate(common);
        for &id in &chain[common..] {
            let fd = {
                let parent = match self.stack.last() {
                    Some((_, fd)) => fd.as_fd(),
                    None => self.root_fd(root),
                };
                rustix::fs::openat(parent, &tree.node(id).name[..], DIR_FLAGS, Mode::empty())
                    .map_err(|e| {
                        errno(format!("opening directory {:?}", show(&tree.path(id))), e)
                    })?
            };
            self.stack.push((id, fd));
        }
        Ok(())
    }

    fn fd_of(&self, tree: &Tree, dir: NodeId) -> BorrowedFd<'_> {
        if tree.node(dir).parent == dir {
            return self.root_fd(dir);
        }
        let (id, fd) = self.stack.last().expect("open_dir first");
        debug_assert_eq!(*id, dir);
        fd.as_fd()
    }

    fn entry_context(tree: &Tree, parent: NodeId, name: &[u8], what: &str) -> String {
        let mut p = tree.path(parent);
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        format!("{what} {:?}", show(&p))
    }

    /// Removes every staging directory made so far (best effort, logged).
    fn cleanup(&mut self) {
        self.file = None;
        self.stack.clear();
        for s in self.staging.drain(..) {
            drop(s.fd);
            if let Err(e) = remove_tree_at(s.parent.as_fd(), &s.name) {
                tracing::error!(path = ?s.path, error = %e, "could not remove staging directory");
            }
        }
    }
}

impl Drop for FsSink {
    fn drop(&mut self) {
        if !self.committed {
            self.cleanup();
        }
    }
}

fn times(meta: &Meta) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime,
            tv_nsec: meta.mtime_nsec as _,
        },
    }
}

impl Sink for FsSink {
    fn bind_root(&mut self, index: u32, root: NodeId) {
        let slot = self.by_index[&index];
        self.root_slot.insert(root, slot);
    }

    fn mkdir(&mut self, tree: &Tree, parent: NodeId, name: &[u8]) -> Result<(), ArchiveError> {
        self.open_dir(tree, parent)?;
        rustix::fs::mkdirat(self.fd_of(tree, parent), name, Mode::from_raw_mode(0o700)).map_err(
            |e| {
                errno(
                    Self::entry_context(tree, parent, name, "creating directory"),
                    e,
                )
            },
        )
    }

    fn begin_file(&mut self, tree: &Tree, parent: NodeId, name: &[u8]) -> Result<(), ArchiveError> {
        self.open_dir(tree, parent)?;
        let fd = rustix::fs::openat(
            self.fd_of(tree, parent),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| errno(Self::entry_context(tree, parent, name, "creating file"), e))?;
        self.file = Some((File::from(fd), parent, name.to_vec()));
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        let (f, _, name) = self.file.as_mut().expect("begin_file first");
        f.write_all(data)
            .map_err(|e| ArchiveError::io(format!("writing {:?}", show(name)), e))
    }

    fn end_file(&mut self, meta: &Meta) -> Result<(), ArchiveError> {
        let (f, _, name) = self.file.take().expect("begin_file first");
        let ctx = || format!("setting metadata of {:?}", show(&name));
        if self.preserve_owner {
            rustix::fs::fchown(
                &f,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| errno(ctx(), e))?;
        }
        rustix::fs::fchmod(&f, Mode::from_raw_mode(meta.mode & 0o777))
            .map_err(|e| errno(ctx(), e))?;
        rustix::fs::futimens(&f, &times(meta)).map_err(|e| errno(ctx(), e))?;
        Ok(())
    }

    fn symlink(
        &mut self,
        tree: &Tree,
        parent: NodeId,
        name: &[u8],
        target: &[u8],
        meta: &Meta,
    ) -> Result<(), ArchiveError> {
        self.open_dir(tree, parent)?;
        let dir = self.fd_of(tree, parent);
        let ctx = || Self::entry_context(tree, parent, name, "creating symlink");
        rustix::fs::symlinkat(target, dir, name).map_err(|e| errno(ctx(), e))?;
        if self.preserve_owner {
            rustix::fs::chownat(
                dir,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| errno(ctx(), e))?;
        }
        rustix::fs::utimensat(dir, name, &times(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno(ctx(), e))?;
        Ok(())
    }

    fn finish(&mut self, tree: &Tree) -> Result<(), ArchiveError> {
        // Children before parents: a parent's mode may forbid entering it (non-root), and
        // creating children changed its mtime.
        for id in (0..tree.nodes.len() as NodeId).rev() {
            let node = tree.node(id);
            if node.kind != Kind::Dir {
                continue;
            }
            self.open_dir(tree, id)?;
            let fd = self.fd_of(tree, id);
            let ctx = || format!("setting metadata of directory {:?}", show(&tree.path(id)));
            if self.preserve_owner {
                rustix::fs::fchown(
                    fd,
                    Some(Uid::from_raw(node.meta.uid)),
                    Some(Gid::from_raw(node.meta.gid)),
                )
                .map_err(|e| errno(ctx(), e))?;
            }
            rustix::fs::fchmod(fd, Mode::from_raw_mode(node.meta.mode & 0o777))
                .map_err(|e| errno(ctx(), e))?;
            rustix::fs::futimens(fd, &times(&node.meta)).map_err(|e| errno(ctx(), e))?;
        }
        self.stack.clear();
        if self.fsync {
            for s in &self.staging {
                let fd = s.fd.as_ref().expect("staging fd");
                rustix::fs::syncfs(fd).map_err(|e| errno(format!("syncing {:?}", s.path), e))?;
            }
        }
        Ok(())
    }
}

/// Removes `name` in `dir` and, if it is a directory, everything below it, never
/// following a symlink.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e),
    }
    let fd = match rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    // A restrictive mode would stop a non-root caller from emptying it.
    let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700));
    loop {
        let mut names: Vec<OsString> = Vec::new();
        let mut d = Dir::read_from(&fd)?;
        while let Some(ent) = d.read() {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(OsStr::from_bytes(n).to_os_string());
                if names.len() >= 4096 {
                    break;
                }
            }
        }
        if names.is_empty() {
            break;
        }
        for n in &names {
            remove_tree_at(fd.as_fd(), n)?;
        }
    }
    drop(fd);
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}
