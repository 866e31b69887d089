//! Comparing live volume directories with a volsnap/1 archive, without writing
//! anything: what a restore of the archive would add, change and remove, per volume.
//!
//! The comparison **streams**. The writer emits each volume depth-first with every
//! directory's children sorted bytewise by name (`write.rs`), so the live tree is walked
//! in exactly that order and the two sequences are merged like two sorted lists. Memory
//! holds only the listings of the live directories on the current path (and one read
//! buffer), never a whole tree: it is bounded by the widest directory times the depth,
//! not by the number of files. An archive in any other order (one not written by
//! volsnap) is refused with [`DiffError::NotCanonical`] rather than compared in
//! unbounded memory.
//!
//! The live tree belongs to an application that may be hostile. It is walked through
//! directory fds, one component at a time, with `O_NOFOLLOW`: symlinks are compared as
//! links (their targets), never followed; special files are counted, never opened. A
//! file that changes while being compared is reported as changed.
//!
//! What counts (non-directory entries are "files": regular files, symlinks, others):
//! - **added**: in the archive, not live (bytes: the archive's file sizes);
//! - **changed**: on both sides, but the type, the permission bits, the size, the
//!   content or the symlink target differs (bytes: the archive's size, what the restore
//!   writes). Times and ownership are not compared;
//! - **removed**: live, not in the archive (bytes: the live sizes). A live directory
//!   missing from the archive counts with everything below it.
//!
//! Directories are counted separately (`dirs`). Each set keeps up to
//! [`DiffOptions::samples`] example paths (relative to the volume root; directories end
//! in `/`).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::error::{ArchiveError, show};
use crate::gz::spawn_inflater;
use crate::limits::Limits;
use crate::manifest::{Manifest, read_manifest_entry};
use crate::names::place_entry;
use crate::tarfmt::{ChunkSource, Entry, TarStream};
use crate::tree;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// Deepest live directory walked below a volume root (each level holds one fd while
/// it is walked). A deeper live tree fails the comparison with [`DiffError::TooDeep`].
pub const MAX_LIVE_DEPTH: usize = 512;

/// Options of [`diff`].
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Caps applied to the archive, as for extraction.
    pub limits: Limits,
    /// Example paths kept per set (added, changed, removed). Default 20.
    pub samples: usize,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            limits: Limits::default(),
            samples: 20,
        }
    }
}

/// One set of differences.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// Non-directory entries (regular files, symlinks, special files).
    pub files: u64,
    /// Bytes of regular files (see the module docs for which side's size).
    pub bytes: u64,
    /// Directories.
    pub dirs: u64,
    /// Up to [`DiffOptions::samples`] paths, relative to the volume root, in walk order;
    /// directories end in `/`.
    pub samples: Vec<String>,
}

impl Changes {
    fn note(&mut self, max: usize, path: impl FnOnce() -> String) {
        if self.samples.len() < max {
            self.samples.push(path());
        }
    }
}

/// The differences of one volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDiff {
    /// The manifest index.
    pub index: u32,
    /// The manifest's target (the key that maps it to a workload volume).
    pub target: String,
    pub added: Changes,
    pub changed: Changes,
    pub removed: Changes,
    /// Files identical on both sides, and their bytes.
    pub unchanged_files: u64,
    pub unchanged_bytes: u64,
}

impl VolumeDiff {
    /// True when a restore would leave the volume's files as they are.
    pub fn is_identical(&self) -> bool {
        self.added == Changes::default()
            && self.changed == Changes::default()
            && self.removed == Changes::default()
    }
}

/// The result of [`diff`].
#[derive(Debug, Clone)]
pub struct DiffSummary {
    pub manifest: Manifest,
    /// One per manifest volume, in index order.
    pub volumes: Vec<VolumeDiff>,
}

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The archive breaks a rule of the format (see [`ArchiveError::rule`]).
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The archive is valid but not in the order volsnap writes archives in.
    #[error(
        "archive entry {name:?} is out of capture order ({reason}); only archives in the order volsnap writes them can be compared"
    )]
    NotCanonical { name: String, reason: &'static str },
    /// A manifest volume has no live directory (or `None`) in the map given.
    #[error("volume {index} of the archive is not mapped to a live directory")]
    VolumeUnmapped { index: u32 },
    /// The live tree is deeper than [`MAX_LIVE_DEPTH`].
    #[error("the live tree is deeper than {limit} levels at {path:?}")]
    TooDeep { path: String, limit: usize },
    /// Reading the live tree failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl DiffError {
    /// A stable code: the archive rule, or `diff_*`.
    pub fn code(&self) -> &'static str {
        match self {
            DiffError::Archive(e) => e.rule(),
            DiffError::NotCanonical { .. } => "diff_archive_not_canonical",
            DiffError::VolumeUnmapped { .. } => "volume_unmapped",
            DiffError::TooDeep { .. } => "diff_live_too_deep",
            DiffError::Io { .. } => "diff_io",
        }
    }
}

fn io_err(what: impl Into<String>, e: Errno) -> DiffError {
    DiffError::Io {
        what: what.into(),
        source: io::Error::from(e),
    }
}

/// A live volume root for [`diff`]: an open directory fd (the caller resolved it
/// safely, e.g. fd by fd with `O_NOFOLLOW`), or `None` when the volume does not exist
/// yet (then everything is added).
pub type LiveRoots = BTreeMap<u32, Option<OwnedFd>>;

/// Opens `path` as a live root: every component with `O_NOFOLLOW` from `/`, so no
/// symlink anywhere on the path is followed. `Ok(None)` when the last component does
/// not exist.
pub fn open_live_root(path: &Path) -> Result<Option<OwnedFd>, DiffError> {
    let ctx = || format!("opening {}", path.display());
    if !path.is_absolute() {
        return Err(DiffError::Io {
            what: ctx(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"),
        });
    }
    let mut fd = rustix::fs::open("/", DIR_FLAGS, Mode::empty()).map_err(|e| io_err(ctx(), e))?;
    let comps: Vec<&OsStr> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s),
            _ => None,
        })
        .collect();
    for (i, c) in comps.iter().enumerate() {
        match rustix::fs::openat(&fd, *c, DIR_FLAGS, Mode::empty()) {
            Ok(next) => fd = next,
            Err(Errno::NOENT) if i + 1 == comps.len() => return Ok(None),
            Err(e) => return Err(io_err(ctx(), e)),
        }
    }
    Ok(Some(fd))
}

/// Compares an archive with live directories (see the module docs). `live` must map
/// every manifest volume index. Blocks; decompression runs on a second thread.
pub fn diff<R: Read + Send>(
    archive: R,
    live: LiveRoots,
    opts: &DiffOptions,
) -> Result<DiffSummary, DiffError> {
    std::thread::scope(|scope| {
        let mut stream = TarStream::new(spawn_inflater(scope, archive, &opts.limits));
        let manifest = read_manifest_entry(&mut stream, &opts.limits)?;
        let mut m = Merge::new(&manifest, live, opts)?;
        let mut entries = 0u64;
        while let Some(e) = stream.next_entry(&opts.limits)? {
            entries += 1;
            if entries > opts.limits.max_entries {
                return Err(ArchiveError::EntryCountCap {
                    count: entries,
                    limit: opts.limits.max_entries,
                }
                .into());
            }
            m.entry(e, &mut stream)?;
        }
        stream.finish()?;
        m.close_volume()?;
        if let Some(v) = manifest.volumes.iter().find(|v| !m.seen.contains(&v.index)) {
            return Err(ArchiveError::ManifestMismatch {
                index: v.index,
                what: "count of volumes/<index>/ root entries",
                declared: 1,
                actual: 0,
            }
            .into());
        }
        let volumes = m.out.into_values().collect();
        Ok(DiffSummary { manifest, volumes })
    })
}

/// [`diff`] of an archive file against live directories given by path (each opened
/// with [`open_live_root`]).
pub fn diff_paths(
    archive: &Path,
    live: &BTreeMap<u32, std::path::PathBuf>,
    opts: &DiffOptions,
) -> Result<DiffSummary, DiffError> {
    let f = File::open(archive).map_err(|e| DiffError::Io {
        what: format!("opening {}", archive.display()),
        source: e,
    })?;
    let mut roots = LiveRoots::new();
    for (i, p) in live {
        roots.insert(*i, open_live_root(p)?);
    }
    diff(io::BufReader::with_capacity(1 << 20, f), roots, opts)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

fn kind_of(t: FileType) -> Kind {
    match t {
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

struct LiveChild {
    name: Box<[u8]>,
    kind: Kind,
}

/// A directory on the current path: its live fd and sorted listing (none when the
/// directory exists only in the archive), the cursor into that listing, and the last
/// archive name seen in it (to check the archive's order).
struct Frame {
    name: Box<[u8]>,
    fd: Option<OwnedFd>,
    children: Vec<LiveChild>,
    next: usize,
    last: Option<Box<[u8]>>,
}

/// The directory fd of the innermost frame (a frame being merged is always listed).
fn top_fd(stack: &[Frame]) -> &OwnedFd {
    stack.last().expect("a frame").fd.as_ref().expect("listed")
}

struct Merge<'a> {
    manifest: &'a Manifest,
    opts: &'a DiffOptions,
    live: LiveRoots,
    out: BTreeMap<u32, VolumeDiff>,
    seen: Vec<u32>,
    cur: Option<u32>,
    stack: Vec<Frame>,
    buf: Vec<u8>,
}

fn list_dir(fd: BorrowedFd<'_>, what: &dyn Fn() -> String) -> Result<Vec<LiveChild>, DiffError> {
    let mut out = vec![];
    let mut d = Dir::read_from(fd).map_err(|e| io_err(what(), e))?;
    while let Some(ent) = d.read() {
        let ent = ent.map_err(|e| io_err(what(), e))?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let kind = match ent.file_type() {
            FileType::Unknown => match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => kind_of(FileType::from_raw_mode(st.st_mode)),
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(io_err(what(), e)),
            },
            t => kind_of(t),
        };
        out.push(LiveChild {
            name: name.into(),
            kind,
        });
    }
    out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

impl<'a> Merge<'a> {
    fn new(
        manifest: &'a Manifest,
        live: LiveRoots,
        opts: &'a DiffOptions,
    ) -> Result<Self, DiffError> {
        let mut out = BTreeMap::new();
        for v in &manifest.volumes {
            if !live.contains_key(&v.index) {
                return Err(DiffError::VolumeUnmapped { index: v.index });
            }
            out.insert(
                v.index,
                VolumeDiff {
                    index: v.index,
                    target: v.target.clone(),
                    ..Default::default()
                },
            );
        }
        Ok(Merge {
            manifest,
            opts,
            live,
            out,
            seen: vec![],
            cur: None,
            stack: vec![],
            buf: vec![],
        })
    }

    fn vol(&mut self) -> &mut VolumeDiff {
        let i = self.cur.expect("inside a volume");
        self.out.get_mut(&i).expect("manifest volume")
    }

    /// The path (relative to the volume root) of `name` in the top frame.
    fn path_of(&self, name: &[u8], dir: bool) -> String {
        let mut p = Vec::new();
        for f in &self.stack[1..] {
            p.extend_from_slice(&f.name);
            p.push(b'/');
        }
        p.extend_from_slice(name);
        if dir {
            p.push(b'/');
        }
        show(&p)
    }

    fn entry<S: ChunkSource>(
        &mut self,
        e: Entry,
        stream: &mut TarStream<S>,
    ) -> Result<(), DiffError> {
        let limits = &self.opts.limits;
        let name = || show(&e.name);
        let placed = place_entry(&e, limits, |i| self.manifest.volume(i).is_some())?;
        let (index, rest) = (placed.index, placed.rest());
        let kind = match placed.kind {
            tree::Kind::Dir => Kind::Dir,
            tree::Kind::File => Kind::File,
            tree::Kind::Symlink => Kind::Symlink,
        };
        if kind != Kind::File && e.size != 0 {
            return Err(ArchiveError::CorruptTar {
                offset: e.offset,
                reason: format!("entry {:?} is not a file but has data", name()),
            }
            .into());
        }
        if kind == Kind::File && e.size > limits.max_entry_size {
            return Err(ArchiveError::EntrySizeCap {
                name: name(),
                size: e.size,
                limit: limits.max_entry_size,
            }
            .into());
        }
        let not_canonical = |reason| DiffError::NotCanonical {
            name: name(),
            reason,
        };

        // A new volume starts with its root directory.
        if self.cur != Some(index) {
            if self.seen.contains(&index) {
                return Err(not_canonical("a volume's entries are not contiguous"));
            }
            if !rest.is_empty() || kind != Kind::Dir {
                return Err(not_canonical("a volume does not start with its root"));
            }
            self.close_volume()?;
            self.cur = Some(index);
            self.seen.push(index);
            let fd = self.live.insert(index, None).flatten();
            let children = match &fd {
                Some(fd) => list_dir(fd.as_fd(), &|| format!("listing volume {index}"))?,
                None => vec![],
            };
            self.stack.push(Frame {
                name: Box::new([]),
                fd,
                children,
                next: 0,
                last: None,
            });
            return Ok(());
        }
        let Some((leaf, parents)) = rest.split_last() else {
            return Err(not_canonical("volume root twice"));
        };

        // Leave the directories this entry is not in.
        let depth = rest.len(); // the frame of its parent is stack[depth - 1]
        while self.stack.len() > depth {
            self.pop_frame()?;
        }
        if self.stack.len() < depth
            || parents
                .iter()
                .zip(&self.stack[1..])
                .any(|(p, f)| *p != &*f.name)
        {
            return Err(not_canonical(
                "an entry is not below the directory before it",
            ));
        }
        {
            let top = self.stack.last_mut().expect("root frame");
            if top.last.as_deref().is_some_and(|l| l >= *leaf) {
                return Err(not_canonical(
                    "a directory's entries are not sorted by name",
                ));
            }
            top.last = Some((*leaf).into());
        }

        // Live entries before this one are not in the archive: removed.
        loop {
            let top = self.stack.last().expect("root frame");
            let Some(c) = top.children.get(top.next) else {
                break;
            };
            if &*c.name >= *leaf {
                break;
            }
            let (cname, ckind) = (c.name.clone(), c.kind);
            self.stack.last_mut().expect("root frame").next += 1;
            self.removed(&cname, ckind)?;
        }
        let matched = {
            let top = self.stack.last_mut().expect("root frame");
            match top.children.get(top.next) {
                Some(c) if &*c.name == *leaf => {
                    top.next += 1;
                    Some(c.kind)
                }
                _ => None,
            }
        };
        let max = self.opts.samples;
        match (kind, matched) {
            (Kind::Dir, Some(Kind::Dir)) => {
                let parent = self.stack.last().expect("root frame").fd.as_ref();
                let fd =
                    match parent.map(|p| rustix::fs::openat(p, *leaf, DIR_FLAGS, Mode::empty())) {
                        Some(Ok(fd)) => Some(fd),
                        // Gone or replaced since the listing: the archive's directory is new.
                        Some(Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR)) | None => None,
                        Some(Err(e)) => {
                            return Err(io_err(format!("opening {}", self.path_of(leaf, true)), e));
                        }
                    };
                if fd.is_none() {
                    let p = self.path_of(leaf, true);
                    let v = self.vol();
                    v.added.dirs += 1;
                    v.added.note(max, || p);
                }
                self.push_dir(leaf, fd)?;
            }
            (Kind::Dir, other) => {
                if let Some(k) = other {
                    self.removed(leaf, k)?;
                }
                let p = self.path_of(leaf, true);
                let v = self.vol();
                v.added.dirs += 1;
                v.added.note(max, || p);
                self.push_dir(leaf, None)?;
            }
            (_, Some(Kind::Dir)) => {
                self.removed(leaf, Kind::Dir)?;
                self.added(leaf, e.size);
            }
            (_, None) => self.added(leaf, e.size),
            (Kind::File, Some(Kind::File)) => {
                let same = self.same_file(leaf, &e, stream)?;
                self.count_pair(leaf, same, e.size);
                return Ok(()); // data consumed by the comparison
            }
            (Kind::Symlink, Some(Kind::Symlink)) => {
                let parent = self
                    .stack
                    .last()
                    .expect("root frame")
                    .fd
                    .as_ref()
                    .expect("listed");
                let same = match rustix::fs::readlinkat(parent, *leaf, Vec::new()) {
                    Ok(t) => t.as_bytes() == &e.link[..],
                    Err(Errno::NOENT | Errno::INVAL) => false,
                    Err(err) => {
                        return Err(io_err(
                            format!("reading {}", self.path_of(leaf, false)),
                            err,
                        ));
                    }
                };
                self.count_pair(leaf, same, 0);
            }
            (_, Some(_)) => self.count_pair(leaf, false, e.size),
        }
        stream.read_data(e.size, |_| Ok(()))?;
        Ok(())
    }

    fn added(&mut self, leaf: &[u8], size: u64) {
        let max = self.opts.samples;
        let p = self.path_of(leaf, false);
        let v = self.vol();
        v.added.files += 1;
        v.added.bytes += size;
        v.added.note(max, || p);
    }

    fn count_pair(&mut self, leaf: &[u8], same: bool, size: u64) {
        let max = self.opts.samples;
        let p = (!same).then(|| self.path_of(leaf, false));
        let v = self.vol();
        if same {
            v.unchanged_files += 1;
            v.unchanged_bytes += size;
        } else {
            v.changed.files += 1;
            v.changed.bytes += size;
            v.changed.note(max, || p.expect("set"));
        }
    }

    fn push_dir(&mut self, leaf: &[u8], fd: Option<OwnedFd>) -> Result<(), DiffError> {
        if self.stack.len() > MAX_LIVE_DEPTH {
            return Err(DiffError::TooDeep {
                path: self.path_of(leaf, true),
                limit: MAX_LIVE_DEPTH,
            });
        }
        let children = match &fd {
            Some(fd) => {
                let p = self.path_of(leaf, true);
                list_dir(fd.as_fd(), &|| format!("listing {p}"))?
            }
            None => vec![],
        };
        self.stack.push(Frame {
            name: leaf.into(),
            fd,
            children,
            next: 0,
            last: None,
        });
        Ok(())
    }

    /// Leaves the top directory: its live entries not yet matched are removed.
    fn pop_frame(&mut self) -> Result<(), DiffError> {
        loop {
            let top = self.stack.last().expect("a frame");
            let Some(c) = top.children.get(top.next) else {
                break;
            };
            let (cname, ckind) = (c.name.clone(), c.kind);
            self.stack.last_mut().expect("a frame").next += 1;
            self.removed(&cname, ckind)?;
        }
        self.stack.pop();
        Ok(())
    }

    fn close_volume(&mut self) -> Result<(), DiffError> {
        while !self.stack.is_empty() {
            self.pop_frame()?;
        }
        Ok(())
    }

    /// A live entry of the top directory that the archive does not have, with
    /// everything below it.
    fn removed(&mut self, leaf: &[u8], kind: Kind) -> Result<(), DiffError> {
        let max = self.opts.samples;
        let base = self.path_of(leaf, false);
        let parent = top_fd(&self.stack);
        let v = self
            .out
            .get_mut(&self.cur.expect("in a volume"))
            .expect("volume");
        count_live(
            parent.as_fd(),
            leaf,
            kind,
            &base,
            &mut v.removed,
            max,
            self.stack.len(),
        )
    }

    /// Streams the archive's data of `e` against the live file `leaf`; true when the
    /// two are the same (type, permission bits, size, content).
    fn same_file<S: ChunkSource>(
        &mut self,
        leaf: &[u8],
        e: &Entry,
        stream: &mut TarStream<S>,
    ) -> Result<bool, DiffError> {
        let parent = top_fd(&self.stack);
        let mut file =
            match rustix::fs::openat(parent, OsStr::from_bytes(leaf), FILE_FLAGS, Mode::empty()) {
                Ok(fd) => {
                    let st = rustix::fs::fstat(&fd).map_err(|err| {
                        io_err(format!("inspecting {}", self.path_of(leaf, false)), err)
                    })?;
                    let regular = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
                    (regular
                        && st.st_size as u64 == e.size
                        && st.st_mode & 0o777 == e.meta.mode & 0o777)
                        .then(|| File::from(fd))
                }
                // Gone or replaced by a symlink since the listing.
                Err(Errno::NOENT | Errno::LOOP) => None,
                Err(err) => {
                    return Err(io_err(
                        format!("opening {}", self.path_of(leaf, false)),
                        err,
                    ));
                }
            };
        let buf = &mut self.buf;
        stream.read_data(e.size, |chunk| {
            if let Some(f) = file.as_mut() {
                if buf.len() < chunk.len() {
                    buf.resize(chunk.len(), 0);
                }
                let b = &mut buf[..chunk.len()];
                if f.read_exact(b).is_err() || b != chunk {
                    file = None;
                }
            }
            Ok(())
        })?;
        // Same so far; it must also end where the archive's file ends.
        Ok(match file.as_mut() {
            Some(f) => matches!(f.read(&mut [0u8; 1]), Ok(0)),
            None => false,
        })
    }
}

/// Counts a live entry and everything below it into `c`.
fn count_live(
    parent: BorrowedFd<'_>,
    name: &[u8],
    kind: Kind,
    path: &str,
    c: &mut Changes,
    max: usize,
    depth: usize,
) -> Result<(), DiffError> {
    match kind {
        Kind::Dir => {
            if depth > MAX_LIVE_DEPTH {
                return Err(DiffError::TooDeep {
                    path: path.to_owned(),
                    limit: MAX_LIVE_DEPTH,
                });
            }
            let fd = match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(()),
                // Replaced by something else since it was listed: count that instead.
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return count_live(parent, name, Kind::Other, path, c, max, depth);
                }
                Err(e) => return Err(io_err(format!("opening {path}"), e)),
            };
            c.dirs += 1;
            c.note(max, || format!("{path}/"));
            // Order does not matter here: no listing is kept, entries are counted as read.
            let mut d = Dir::read_from(&fd).map_err(|e| io_err(format!("listing {path}"), e))?;
            while let Some(ent) = d.read() {
                let ent = ent.map_err(|e| io_err(format!("listing {path}"), e))?;
                let n = ent.file_name().to_bytes();
                if n == b"." || n == b".." {
                    continue;
                }
                let k = match ent.file_type() {
                    FileType::Unknown => {
                        match rustix::fs::statat(&fd, n, AtFlags::SYMLINK_NOFOLLOW) {
                            Ok(st) => kind_of(FileType::from_raw_mode(st.st_mode)),
                            Err(Errno::NOENT) => continue,
                            Err(e) => return Err(io_err(format!("inspecting in {path}"), e)),
                        }
                    }
                    t => kind_of(t),
                };
                let sub = format!("{path}/{}", show(n));
                count_live(fd.as_fd(), n, k, &sub, c, max, depth + 1)?;
            }
        }
        _ => {
            c.files += 1;
            c.note(max, || path.to_owned());
            if kind != Kind::Symlink {
                match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                        c.bytes += st.st_size as u64;
                    }
                    Ok(_) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(io_err(format!("inspecting {path}"), e)),
                }
            }
        }
    }
    Ok(())
}
