//! Capturing volumes into a volsnap/1 archive.
//!
//! Two passes over each volume: a scan that builds the same [`Tree`] the extractor
//! builds (so a capture the extractor would refuse fails here, before anything is
//! written, and escaping symlinks are identified exactly as the extractor judges them),
//! then an emit pass that streams headers and file data to a compressor thread. The
//! manifest, with the scan's counts, is the first entry.
//!
//! The source is read through directory fds with `O_NOFOLLOW` one component at a time,
//! so an application swapping a directory for a symlink during the capture cannot make
//! the capture read outside its volume; a file that changes size or type between the
//! two passes fails the capture (`source_changed`) rather than produce an archive whose
//! content does not match its manifest.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::deflate::{auto_threads, spawn_deflater};
use crate::error::{ArchiveError, errno, show};
use crate::limits::{Limits, MANIFEST_MAX_BYTES};
use crate::manifest::{FORMAT, MANIFEST_NAME, Manifest, ManifestVolume};
use crate::names::check_symlink_target;
use crate::tarfmt::{padding, write_header};
use crate::tree::{InsertError, Kind, Meta, NodeId, Tree};

/// A volume directory to capture.
#[derive(Debug, Clone)]
pub struct VolumeInput {
    /// Manifest index; entries go under `volumes/<index>/`.
    pub index: u32,
    /// Mount point in the container (manifest `target`).
    pub target: String,
    /// `absolute`, `project` or `stage` (manifest `scope`).
    pub scope: String,
    /// The configured source (manifest `source`).
    pub source: String,
    /// The resolved host directory to read. Its last component must not be a symlink.
    /// With `root` set it only names the volume in errors and logs.
    pub path: PathBuf,
    /// The volume's directory, already opened (and pinned) by the caller: read through
    /// this fd instead of resolving `path`.
    pub root: Option<Arc<OwnedFd>>,
}

/// Options of [`write_archive`].
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// gzip level 0–9. Default 6.
    pub level: u32,
    /// The manifest's `created_at`; `None` means now. Fixing it makes the output
    /// byte-for-byte reproducible for an unchanged tree.
    pub created_at: Option<DateTime<Utc>>,
    /// The capture fails (before writing anything) if the archive would break these
    /// caps, so that the default extractor never refuses a fresh snapshot.
    pub limits: Limits,
    /// Compressor threads; 0 (the default) means one per available CPU (at most 16).
    /// The output is byte-for-byte the same whatever the number.
    pub threads: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            level: 6,
            created_at: None,
            limits: Limits::default(),
            threads: 0,
        }
    }
}

/// Result of a capture.
#[derive(Debug, Clone)]
pub struct WriteSummary {
    /// SHA-256 of the compressed archive, lowercase hex.
    pub sha256: String,
    /// Size of the compressed archive in bytes.
    pub size: u64,
    /// The manifest written as the first entry.
    pub manifest: Manifest,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

const BUF: usize = 1 << 20;

struct ScanEntry {
    depth: u32,
    name: Box<[u8]>,
    kind: Kind,
    size: u64,
    meta: Meta,
    node: NodeId,
    skip: bool,
}

struct Scanned {
    index: u32,
    root_fd: OwnedFd,
    root_meta: Meta,
    entries: Vec<ScanEntry>,
    files: u64,
    bytes: u64,
    skipped: u64,
    tree: Tree,
}

fn meta_of(st: &Stat) -> Meta {
    Meta {
        // Only permission bits are captured: an archive never carries setuid/setgid/
        // sticky, even for someone who unpacks it with another tool as root.
        mode: st.st_mode & 0o777,
        mtime: st.st_mtime.max(0),
        mtime_nsec: 0,
        uid: st.st_uid,
        gid: st.st_gid,
    }
}

struct Scanner<'a> {
    limits: &'a Limits,
    index: u32,
    prefix_len: u64,
    entries_total: &'a mut u64,
    bytes_total: &'a mut u64,
    out: Scanned,
    /// Current path below the root, for limits and messages.
    path: Vec<u8>,
}

impl Scanner<'_> {
    fn archive_name(&self, name: &[u8]) -> String {
        let mut p = format!("volumes/{}/", self.index).into_bytes();
        p.extend_from_slice(&self.path);
        if !self.path.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        show(&p)
    }

    fn count_entry(&mut self) -> Result<(), ArchiveError> {
        *self.entries_total += 1;
        if *self.entries_total > self.limits.max_entries {
            return Err(ArchiveError::EntryCountCap {
                count: *self.entries_total,
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn scan_dir(
        &mut self,
        dir: BorrowedFd<'_>,
        parent: NodeId,
        depth: u32,
    ) -> Result<(), ArchiveError> {
        let (index, here) = (self.index, show(&self.path));
        let ctx = |what: &str| format!("{what} volume {index} at {here:?}");
        let mut list: Vec<(Vec<u8>, Stat)> = Vec::new();
        let mut d = Dir::read_from(dir).map_err(|e| errno(ctx("reading"), e))?;
        while let Some(ent) = d.read() {
            let ent = ent.map_err(|e| errno(ctx("reading"), e))?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => list.push((name.to_vec(), st)),
                Err(Errno::NOENT) => {} // gone before we saw it: not part of the capture
                Err(e) => return Err(errno(ctx("inspecting an entry of"), e)),
            }
        }
        drop(d);
        list.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, st) in list {
            let ftype = FileType::from_raw_mode(st.st_mode);
            let kind = match ftype {
                FileType::Directory => Kind::Dir,
                FileType::RegularFile => Kind::File,
                FileType::Symlink => Kind::Symlink,
                _ => {
                    tracing::warn!(volume = self.index, name = %self.archive_name(&name), "skipping special file");
                    self.out.skipped += 1;
                    continue;
                }
            };
            let full_len = self.prefix_len
                + self.path.len() as u64
                + u64::from(!self.path.is_empty())
                + name.len() as u64;
            if full_len > self.limits.max_path_len {
                return Err(ArchiveError::PathLengthCap {
                    name: self.archive_name(&name),
                    what: "name",
                    len: full_len,
                    limit: self.limits.max_path_len,
                });
            }
            if depth as u64 > self.limits.max_depth {
                return Err(ArchiveError::DepthCap {
                    name: self.archive_name(&name),
                    depth: depth as u64,
                    limit: self.limits.max_depth,
                });
            }
            let meta = meta_of(&st);
            let mut target = None;
            let mut size = 0;
            match kind {
                Kind::Symlink => {
                    let t = rustix::fs::readlinkat(dir, &name[..], Vec::new())
                        .map_err(|e| errno(ctx("reading a symlink in"), e))?
                        .into_bytes();
                    let full = self.archive_name(&name);
                    if let Err(e) =
                        check_symlink_target(full.as_bytes(), &t, depth as usize - 1, self.limits)
                    {
                        tracing::warn!(volume = self.index, name = %full, error = %e, "skipping symlink");
                        self.out.skipped += 1;
                        continue;
                    }
                    target = Some(t);
                }
                Kind::File => {
                    size = st.st_size as u64;
                    if size > self.limits.max_entry_size {
                        return Err(ArchiveError::EntrySizeCap {
                            name: self.archive_name(&name),
                            size,
                            limit: self.limits.max_entry_size,
                        });
                    }
                    *self.bytes_total += size;
                    if *self.bytes_total > self.limits.max_total_bytes {
                        return Err(ArchiveError::TotalBytesCap {
                            bytes: *self.bytes_total,
                            limit: self.limits.max_total_bytes,
                        });
                    }
                    self.out.files += 1;
                    self.out.bytes += size;
                }
                Kind::Dir => {}
            }
            self.count_entry()?;
            let node = self
                .out
                .tree
                .insert(parent, &name, kind, meta, target.as_deref())
                .map_err(|e| match e {
                    InsertError::CaseCollision { existing } => ArchiveError::CaseCollision {
                        name: self.archive_name(&name),
                        existing: {
                            let mut p = format!("volumes/{}/", self.index).into_bytes();
                            p.extend_from_slice(&self.out.tree.path(existing));
                            show(&p)
                        },
                    },
                    InsertError::Duplicate { .. } => ArchiveError::SourceChanged {
                        index: self.index,
                        name: self.archive_name(&name),
                        reason: "listed twice",
                    },
                })?;
            self.out.entries.push(ScanEntry {
                depth,
                name: name.clone().into_boxed_slice(),
                kind,
                size,
                meta,
                node,
                skip: false,
            });
            if kind == Kind::Dir {
                let fd = match rustix::fs::openat(dir, &name[..], DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) | Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                        return Err(ArchiveError::SourceChanged {
                            index: self.index,
                            name: self.archive_name(&name),
                            reason: "directory vanished or changed type",
                        });
                    }
                    Err(e) => return Err(errno(ctx("opening a directory in"), e)),
                };
                let saved = self.path.len();
                if !self.path.is_empty() {
                    self.path.push(b'/');
                }
                self.path.extend_from_slice(&name);
                self.scan_dir(fd.as_fd(), node, depth + 1)?;
                self.path.truncate(saved);
            }
        }
        Ok(())
    }
}

fn scan_volume(
    v: &VolumeInput,
    limits: &Limits,
    entries_total: &mut u64,
    bytes_total: &mut u64,
) -> Result<Scanned, ArchiveError> {
    let invalid = |reason: String| ArchiveError::SourceInvalid {
        index: v.index,
        path: v.path.clone(),
        reason,
    };
    let opened = match &v.root {
        Some(fd) => rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), 0),
        None => rustix::fs::open(&v.path, DIR_FLAGS, Mode::empty()),
    };
    let root_fd = match opened {
        Ok(fd) => fd,
        Err(Errno::LOOP) => return Err(invalid("it is a symlink".into())),
        Err(Errno::NOTDIR) => return Err(invalid("it is not a directory".into())),
        Err(Errno::NOENT) => return Err(invalid("it does not exist".into())),
        Err(e) => return Err(errno(format!("opening volume {:?}", v.path), e)),
    };
    let st =
        rustix::fs::fstat(&root_fd).map_err(|e| errno(format!("inspecting {:?}", v.path), e))?;
    let root_meta = meta_of(&st);
    let mut tree = Tree::new();
    tree.add_root(root_meta);
    *entries_total += 1;
    if *entries_total > limits.max_entries {
        return Err(ArchiveError::EntryCountCap {
            count: *entries_total,
            limit: limits.max_entries,
        });
    }
    let mut sc = Scanner {
        limits,
        index: v.index,
        prefix_len: format!("volumes/{}/", v.index).len() as u64,
        entries_total,
        bytes_total,
        out: Scanned {
            index: v.index,
            root_fd,
            root_meta,
            entries: Vec::new(),
            files: 0,
            bytes: 0,
            skipped: 0,
            tree,
        },
        path: Vec::new(),
    };
    let fd =
        rustix::io::dup(&sc.out.root_fd).map_err(|e| errno("duplicating a directory fd", e))?;
    sc.scan_dir(fd.as_fd(), 0, 1)?;
    let mut out = sc.out;
    // Drop symlinks whose chain leaves the volume, until none does (dropping one can
    // change how another resolves).
    // Node ids follow scan order: entry k is node k + 1 (node 0 is the root).
    debug_assert!(
        out.entries
            .iter()
            .enumerate()
            .all(|(k, e)| e.node as usize == k + 1)
    );
    loop {
        let mut budget = out.tree.symlink_budget();
        let bad: Vec<NodeId> = out
            .tree
            .symlinks()
            .filter(|id| out.tree.check_symlink(*id, &mut budget).is_err())
            .collect();
        if bad.is_empty() {
            break;
        }
        for id in bad {
            tracing::warn!(volume = v.index, name = %show(&out.tree.path(id)), "skipping symlink that resolves outside the volume");
            out.tree.remove_symlink(id);
            out.entries[id as usize - 1].skip = true;
            // Still counted against max_entries: conservative, and rare.
            out.skipped += 1;
        }
    }
    Ok(out)
}

/// Writes a volsnap/1 archive of `volumes` to `out`.
///
/// Scans every volume first (nothing is written if a volume breaks `opts.limits` or has
/// names that differ only by case), then streams the archive through a compressor
/// thread. `progress(done, total)` reports regular-file bytes read against the scanned
/// total. The output is one gzip member; its SHA-256 and size are returned.
///
/// Blocking; call it from a blocking context.
#[tracing::instrument(skip_all, fields(workload_id = %workload_id, volumes = volumes.len()))]
pub fn write_archive<W: Write + Send>(
    out: W,
    workload_id: &str,
    volumes: &[VolumeInput],
    opts: &WriteOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<WriteSummary, ArchiveError> {
    let created_at = opts.created_at.unwrap_or_else(Utc::now);
    let mut manifest = Manifest {
        format: FORMAT.into(),
        workload_id: workload_id.into(),
        created_at,
        volumes: volumes
            .iter()
            .map(|v| ManifestVolume {
                index: v.index,
                target: v.target.clone(),
                scope: v.scope.clone(),
                source: v.source.clone(),
                files: 0,
                bytes: 0,
                skipped: None,
            })
            .collect(),
    };
    manifest.validate()?;
    let mut entries_total = 0;
    let mut bytes_total = 0;
    let mut scanned = Vec::with_capacity(volumes.len());
    for v in volumes {
        scanned.push(scan_volume(
            v,
            &opts.limits,
            &mut entries_total,
            &mut bytes_total,
        )?);
    }
    for (mv, s) in manifest.volumes.iter_mut().zip(&scanned) {
        mv.files = s.files;
        mv.bytes = s.bytes;
        mv.skipped = (s.skipped > 0).then_some(s.skipped);
    }
    let json = manifest.to_json();
    if json.len() as u64 > MANIFEST_MAX_BYTES {
        return Err(ArchiveError::ManifestTooLarge {
            size: json.len() as u64,
            limit: MANIFEST_MAX_BYTES,
        });
    }
    let total = bytes_total;
    progress(0, total);

    let (sha256, size) = std::thread::scope(|scope| {
        let mut deflater =
            spawn_deflater(scope, out, opts.level.min(9), auto_threads(opts.threads));
        let mut send = |b: &[u8]| deflater.write(b);
        let mut em = Emitter {
            buf: Vec::with_capacity(BUF),
            send: &mut send,
            done: 0,
            total,
            reported: 0,
            progress,
        };
        let result = (|| -> Result<(), Emit> {
            let meta = Meta {
                mode: 0o644,
                mtime: created_at.timestamp().max(0),
                ..Meta::default()
            };
            write_header(
                &mut em.buf,
                MANIFEST_NAME.as_bytes(),
                b'0',
                &meta,
                json.len() as u64,
                b"",
            );
            em.buf.extend_from_slice(&json);
            em.pad(json.len() as u64);
            for s in &scanned {
                em.volume(s)?;
            }
            em.buf.extend_from_slice(&[0u8; 1024]);
            em.flush()?;
            Ok(())
        })();
        drop(em);
        match result {
            Ok(()) => {
                let (sha, size, _out) = deflater.finish()?;
                Ok((sha, size))
            }
            Err(Emit::Archive(e)) => {
                // The compressor may have failed first (ENOSPC) and made us fail.
                Err(deflater.abort().unwrap_or(e))
            }
            Err(Emit::Stopped) => Err(deflater.abort().unwrap_or_else(|| ArchiveError::Io {
                context: "writing the archive".into(),
                source: std::io::Error::other("compression thread stopped"),
            })),
        }
    })?;
    progress(total, total);
    tracing::info!(size, sha256 = %sha256, bytes = total, "archive written");
    Ok(WriteSummary {
        sha256,
        size,
        manifest,
    })
}

enum Emit {
    Archive(ArchiveError),
    Stopped,
}

impl From<ArchiveError> for Emit {
    fn from(e: ArchiveError) -> Self {
        Emit::Archive(e)
    }
}

struct Emitter<'a> {
    buf: Vec<u8>,
    send: &'a mut dyn FnMut(&[u8]) -> bool,
    done: u64,
    total: u64,
    reported: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl Emitter<'_> {
    fn flush(&mut self) -> Result<(), Emit> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let sent = (self.send)(&self.buf);
        self.buf.clear();
        if sent { Ok(()) } else { Err(Emit::Stopped) }
    }

    fn maybe_flush(&mut self) -> Result<(), Emit> {
        if self.buf.len() + 2048 > BUF {
            self.flush()?;
        }
        Ok(())
    }

    fn pad(&mut self, n: u64) {
        let p = padding(n) as usize;
        self.buf.resize(self.buf.len() + p, 0);
    }

    fn volume(&mut self, s: &Scanned) -> Result<(), Emit> {
        let prefix = format!("volumes/{}/", s.index).into_bytes();
        write_header(&mut self.buf, &prefix, b'5', &s.root_meta, 0, b"");
        // dirs[d] is the fd of the directory at depth d on the current path.
        let mut dirs: Vec<OwnedFd> =
            vec![rustix::io::dup(&s.root_fd).map_err(|e| errno("duplicating a directory fd", e))?];
        let mut path: Vec<Box<[u8]>> = Vec::new();
        let mut name = Vec::with_capacity(256);
        for e in &s.entries {
            let d = e.depth as usize;
            dirs.truncate(d);
            path.truncate(d - 1);
            if e.skip {
                continue;
            }
            name.clear();
            name.extend_from_slice(&prefix);
            for p in &path {
                name.extend_from_slice(p);
                name.push(b'/');
            }
            name.extend_from_slice(&e.name);
            self.maybe_flush()?;
            let parent = dirs[d - 1].as_fd();
            match e.kind {
                Kind::Dir => {
                    name.push(b'/');
                    write_header(&mut self.buf, &name, b'5', &e.meta, 0, b"");
                    let fd = rustix::fs::openat(parent, &e.name[..], DIR_FLAGS, Mode::empty())
                        .map_err(|err| match err {
                            Errno::NOENT | Errno::LOOP | Errno::NOTDIR => {
                                ArchiveError::SourceChanged {
                                    index: s.index,
                                    name: show(&name),
                                    reason: "directory vanished or changed type",
                                }
                            }
                            err => errno(format!("opening {:?}", show(&name)), err),
                        })?;
                    dirs.push(fd);
                    path.push(e.name.clone());
                }
                Kind::Symlink => {
                    let target = s.tree.node(e.node).target.as_deref().expect("target");
                    write_header(&mut self.buf, &name, b'2', &e.meta, 0, target);
                }
                Kind::File => self.file(parent, e, &name, s.index)?,
            }
        }
        Ok(())
    }

    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        e: &ScanEntry,
        name: &[u8],
        index: u32,
    ) -> Result<(), Emit> {
        let changed = |reason| ArchiveError::SourceChanged {
            index,
            name: show(name),
            reason,
        };
        let fd = rustix::fs::openat(
            dir,
            OsStr::from_bytes(&e.name),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| match err {
            Errno::NOENT | Errno::LOOP => changed("file vanished or became a symlink"),
            err => errno(format!("opening {:?}", show(name)), err),
        })?;
        let st = rustix::fs::fstat(&fd)
            .map_err(|err| errno(format!("inspecting {:?}", show(name)), err))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(changed("no longer a regular file").into());
        }
        if st.st_size as u64 != e.size {
            return Err(changed("size changed").into());
        }
        write_header(&mut self.buf, name, b'0', &meta_of(&st), e.size, b"");
        let mut f = File::from(fd);
        let mut left = e.size;
        while left > 0 {
            self.maybe_flush()?;
            let room = (BUF - self.buf.len()) as u64;
            let want = room.min(left) as usize;
            let start = self.buf.len();
            self.buf.resize(start + want, 0);
            let n = loop {
                match f.read(&mut self.buf[start..]) {
                    Ok(n) => break n,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        self.buf.truncate(start);
                        return Err(
                            ArchiveError::io(format!("reading {:?}", show(name)), err).into()
                        );
                    }
                }
            };
            self.buf.truncate(start + n);
            if n == 0 {
                return Err(changed("file shrank while being read").into());
            }
            left -= n as u64;
            self.done += n as u64;
            if self.done - self.reported >= 4 << 20 {
                self.reported = self.done;
                (self.progress)(self.done, self.total);
            }
        }
        self.pad(e.size);
        Ok(())
    }
}

/// [`write_archive`] to a file, atomically: a temporary file in `dest`'s directory is
/// written, fsynced and renamed to `dest` (which must not exist), then the directory is
/// fsynced. On error the temporary file is removed and `dest` is untouched.
pub fn write_archive_file(
    dest: &Path,
    workload_id: &str,
    volumes: &[VolumeInput],
    opts: &WriteOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<WriteSummary, ArchiveError> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io = |what: &str, e| ArchiveError::io(format!("{what} {dest:?}"), e);
    let mut tmp = tempfile::Builder::new()
        .prefix(".volsnap-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| io("creating a temporary file for", e))?;
    let summary = write_archive(tmp.as_file_mut(), workload_id, volumes, opts, progress)?;
    tmp.as_file().sync_all().map_err(|e| io("syncing", e))?;
    tmp.persist_noclobber(dest)
        .map_err(|e| io("renaming into place", e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the directory of", e))?;
    Ok(summary)
}
