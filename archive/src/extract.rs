//! Reading archives: extract, verify, read_manifest.
//!
//! One pass over the stream. Every entry is judged against the manifest, the caps and
//! the in-memory [`Tree`] before anything is created for it; checks that need the whole
//! archive (declared counts, symlink chains, trailing data, the gzip trailer) run after
//! the last entry and before directory metadata is applied and the result is synced.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{ArchiveError, show};
use crate::fsops::{FsSink, NullSink, Sink, StagingAt};
use crate::gz::{Inflater, InlineSource, spawn_inflater};
use crate::limits::{ExtractOptions, Limits};
use crate::manifest::{Manifest, read_manifest_entry};
use crate::names::{check_symlink_target, place_entry};
use crate::tarfmt::{ChunkSource, Entry, TarStream};
use crate::tree::{InsertError, Kind, NodeId, ParentError, Tree};

/// Counts of what an archive held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryStats {
    /// Entries after the manifest (directories including volume roots, files, symlinks).
    pub entries: u64,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    /// Sum of regular file sizes.
    pub bytes: u64,
}

/// Result of [`extract`].
#[derive(Debug, Clone)]
pub struct ExtractSummary {
    pub manifest: Manifest,
    pub stats: EntryStats,
    /// Compressed bytes read.
    pub compressed_bytes: u64,
}

/// Result of [`verify`].
#[derive(Debug, Clone)]
pub struct VerifySummary {
    pub manifest: Manifest,
    pub stats: EntryStats,
    /// Size of the archive file in bytes.
    pub size: u64,
    /// SHA-256 of the archive file, lowercase hex.
    pub sha256: String,
}

/// Reads only `manifest.json` (the first entry) and validates it.
///
/// The rest of the archive is not looked at: use [`verify`] or [`extract`] for that.
pub fn read_manifest(path: &Path) -> Result<Manifest, ArchiveError> {
    let f = File::open(path).map_err(|e| ArchiveError::io(format!("opening {path:?}"), e))?;
    read_manifest_from(f)
}

/// [`read_manifest`] from any reader positioned at the start of the archive.
pub fn read_manifest_from<R: Read>(archive: R) -> Result<Manifest, ArchiveError> {
    let limits = Limits::default();
    let mut stream = TarStream::new(InlineSource(Inflater::new(archive, &limits)));
    read_manifest_entry(&mut stream, &limits)
}

/// Extracts a volsnap/1 archive, one staging directory per manifest volume.
///
/// `staging` must map exactly the manifest's volume indexes (checked before anything is
/// created: a missing index is `volume_unmapped`, an extra one `staging_invalid`). Each
/// staging directory must not exist and its parent must; they may be on different
/// filesystems. The extractor creates them, fills them, and on *any* error removes all
/// of them again; nothing outside them is created, modified or chmod-ed.
///
/// On success each staging directory is the volume root: its mode and mtime are those of
/// the archive's `volumes/<index>/` entry. `progress(done, total)` reports regular-file
/// bytes written against the manifest's declared total (a few calls per MiB at most,
/// always a final `(total, total)`).
///
/// Runs decompression on a second thread; call it from a blocking context.
#[tracing::instrument(skip_all, fields(volumes = staging.len()))]
pub fn extract<R: Read + Send>(
    archive: R,
    staging: &BTreeMap<u32, PathBuf>,
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExtractSummary, ArchiveError> {
    extract_with(archive, opts, progress, |m| {
        FsSink::create(staging, m, opts.preserve_owner, opts.fsync)
    })
}

/// The one extraction loop behind [`extract`] and [`extract_at`]; `sink` makes the
/// staging directories once the manifest is known.
fn extract_with<R: Read + Send>(
    archive: R,
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(u64, u64),
    sink: impl FnOnce(&Manifest) -> Result<FsSink, ArchiveError>,
) -> Result<ExtractSummary, ArchiveError> {
    std::thread::scope(|scope| {
        let mut stream = TarStream::new(spawn_inflater(scope, archive, &opts.limits));
        let manifest = read_manifest_entry(&mut stream, &opts.limits)?;
        check_declared(&manifest, &opts.limits)?;
        let mut sink = sink(&manifest)?;
        let stats = Walker::new(&manifest, &opts.limits, &mut sink, progress).run(&mut stream)?;
        sink.commit();
        let compressed_bytes = stream_compressed(&stream);
        tracing::info!(
            entries = stats.entries,
            bytes = stats.bytes,
            compressed_bytes,
            "archive extracted"
        );
        Ok(ExtractSummary {
            manifest,
            stats,
            compressed_bytes,
        })
    })
}

fn stream_compressed(stream: &TarStream<crate::gz::ThreadedSource>) -> u64 {
    stream.source().compressed_bytes()
}

/// [`extract`] into staging directories named relative to directory fds the caller
/// holds (see [`StagingAt`]): the caller resolved and pinned each parent itself, so no
/// path string is followed here at all.
#[tracing::instrument(skip_all, fields(volumes = staging.len()))]
pub fn extract_at<R: Read + Send>(
    archive: R,
    staging: &BTreeMap<u32, StagingAt<'_>>,
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExtractSummary, ArchiveError> {
    extract_with(archive, opts, progress, |m| {
        FsSink::create_at(staging, m, opts.preserve_owner, opts.fsync)
    })
}

/// [`extract`] from a file.
pub fn extract_file(
    path: &Path,
    staging: &BTreeMap<u32, PathBuf>,
    opts: &ExtractOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExtractSummary, ArchiveError> {
    let f = File::open(path).map_err(|e| ArchiveError::io(format!("opening {path:?}"), e))?;
    extract(f, staging, opts, progress)
}

/// Validates a whole archive file without extracting anything.
///
/// Every rule [`extract`] applies is applied here on the same in-memory model (names,
/// types, caps, duplicates, case, symlink chains, declared counts, trailing data, gzip
/// CRC); only filesystem errors that an actual extraction could meet (no space, a
/// staging parent that cannot hold the names) are out of its reach. Also returns the
/// file's size and SHA-256, computed in the same read.
pub fn verify(path: &Path, limits: &Limits) -> Result<VerifySummary, ArchiveError> {
    let f = File::open(path).map_err(|e| ArchiveError::io(format!("opening {path:?}"), e))?;
    let mut hashing = HashingReader {
        inner: f,
        sha: Sha256::new(),
        size: 0,
    };
    let (manifest, stats) = verify_stream(&mut hashing, limits)?;
    // The gzip layer stops at the end of its member and has checked nothing follows.
    Ok(VerifySummary {
        manifest,
        stats,
        size: hashing.size,
        sha256: hex::encode(hashing.sha.finalize()),
    })
}

/// [`verify`] on any reader.
pub fn verify_stream<R: Read + Send>(
    archive: R,
    limits: &Limits,
) -> Result<(Manifest, EntryStats), ArchiveError> {
    std::thread::scope(|scope| {
        let mut stream = TarStream::new(spawn_inflater(scope, archive, limits));
        let manifest = read_manifest_entry(&mut stream, limits)?;
        check_declared(&manifest, limits)?;
        let stats =
            Walker::new(&manifest, limits, &mut NullSink, &mut |_, _| {}).run(&mut stream)?;
        Ok((manifest, stats))
    })
}

struct HashingReader<R> {
    inner: R,
    sha: Sha256,
    size: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// The declared totals must be within the caps before anything is created.
fn check_declared(m: &Manifest, limits: &Limits) -> Result<(), ArchiveError> {
    let bytes = m.total_bytes();
    if bytes > limits.max_total_bytes {
        return Err(ArchiveError::TotalBytesCap {
            bytes,
            limit: limits.max_total_bytes,
        });
    }
    let files = m.total_files();
    if files > limits.max_entries {
        return Err(ArchiveError::EntryCountCap {
            count: files,
            limit: limits.max_entries,
        });
    }
    Ok(())
}

#[derive(Default, Clone)]
struct VolumeState {
    root: Option<NodeId>,
    files: u64,
    bytes: u64,
}

/// Progress reporting every this many bytes.
const PROGRESS_STEP: u64 = 4 << 20;

struct Walker<'a, K: Sink> {
    manifest: &'a Manifest,
    limits: &'a Limits,
    sink: &'a mut K,
    progress: &'a mut dyn FnMut(u64, u64),
    tree: Tree,
    volumes: BTreeMap<u32, VolumeState>,
    stats: EntryStats,
    total: u64,
    reported: u64,
}

impl<'a, K: Sink> Walker<'a, K> {
    fn new(
        manifest: &'a Manifest,
        limits: &'a Limits,
        sink: &'a mut K,
        progress: &'a mut dyn FnMut(u64, u64),
    ) -> Self {
        let volumes = manifest
            .volumes
            .iter()
            .map(|v| (v.index, VolumeState::default()))
            .collect();
        Walker {
            manifest,
            limits,
            sink,
            progress,
            tree: Tree::new(),
            volumes,
            stats: EntryStats::default(),
            total: manifest.total_bytes(),
            reported: 0,
        }
    }

    fn run<S: ChunkSource>(
        mut self,
        stream: &mut TarStream<S>,
    ) -> Result<EntryStats, ArchiveError> {
        (self.progress)(0, self.total);
        while let Some(entry) = stream.next_entry(self.limits)? {
            self.entry(entry, stream)?;
        }
        stream.finish()?;
        self.final_checks()?;
        self.sink.finish(&self.tree)?;
        (self.progress)(self.stats.bytes, self.total);
        Ok(self.stats)
    }

    fn entry<S: ChunkSource>(
        &mut self,
        e: Entry,
        stream: &mut TarStream<S>,
    ) -> Result<(), ArchiveError> {
        let limits = self.limits;
        self.stats.entries += 1;
        if self.stats.entries > limits.max_entries {
            return Err(ArchiveError::EntryCountCap {
                count: self.stats.entries,
                limit: limits.max_entries,
            });
        }
        let name = || show(&e.name);
        let placed = place_entry(&e, limits, |i| self.volumes.contains_key(&i))?;
        let (kind, index, rest) = (placed.kind, placed.index, placed.rest());
        match kind {
            Kind::File if e.size > limits.max_entry_size => {
                return Err(ArchiveError::EntrySizeCap {
                    name: name(),
                    size: e.size,
                    limit: limits.max_entry_size,
                });
            }
            Kind::Dir | Kind::Symlink if e.size != 0 => {
                return Err(ArchiveError::CorruptTar {
                    offset: e.offset,
                    reason: format!("{} entry {:?} has data", kind.describe(), name()),
                });
            }
            _ => {}
        }

        // The volume root itself.
        let Some((leaf, parents)) = rest.split_last() else {
            if kind != Kind::Dir {
                return Err(ArchiveError::OutsideVolumes {
                    name: name(),
                    reason: "volumes/<index> must be a directory",
                });
            }
            let vol = self.volumes.get_mut(&index).expect("checked");
            if vol.root.is_some() {
                return Err(ArchiveError::DuplicateEntry {
                    name: name(),
                    reason: "volume root twice",
                });
            }
            let root = self.tree.add_root(e.meta);
            vol.root = Some(root);
            self.sink.bind_root(index, root);
            self.stats.dirs += 1;
            return Ok(());
        };

        let root = self.volumes[&index]
            .root
            .ok_or_else(|| ArchiveError::MissingParent { name: name() })?;
        let parent = self.tree.find_dir(root, parents).map_err(|err| match err {
            ParentError::Missing => ArchiveError::MissingParent { name: name() },
            ParentError::Symlink => ArchiveError::SymlinkEscape {
                name: name(),
                target: String::new(),
                reason: "a symlink is used as a directory",
            },
            ParentError::NotDir => ArchiveError::DuplicateEntry {
                name: name(),
                reason: "a file is used as a directory",
            },
        })?;
        if kind == Kind::Symlink {
            check_symlink_target(&e.name, &e.link, parents.len(), limits)?;
        }
        let target = (kind == Kind::Symlink).then_some(&e.link[..]);
        self.tree
            .insert(parent, leaf, kind, e.meta, target)
            .map_err(|err| match err {
                InsertError::Duplicate { existing } => ArchiveError::DuplicateEntry {
                    name: name(),
                    reason: if existing == kind {
                        "the same name twice"
                    } else {
                        "a file/directory/symlink clash"
                    },
                },
                InsertError::CaseCollision { existing } => {
                    let mut p = format!("volumes/{index}/").into_bytes();
                    p.extend_from_slice(&self.tree.path(existing));
                    ArchiveError::CaseCollision {
                        name: name(),
                        existing: show(&p),
                    }
                }
            })?;
        if kind == Kind::File {
            let declared = self.manifest.volume(index).expect("checked");
            let vol = self.volumes.get_mut(&index).expect("checked");
            vol.files += 1;
            vol.bytes = vol.bytes.saturating_add(e.size);
            for (what, declared, actual) in [
                ("file count", declared.files, vol.files),
                ("byte total", declared.bytes, vol.bytes),
            ] {
                if actual > declared {
                    return Err(ArchiveError::ManifestMismatch {
                        index,
                        what,
                        declared,
                        actual,
                    });
                }
            }
            let total = self.stats.bytes.saturating_add(e.size);
            if total > limits.max_total_bytes {
                return Err(ArchiveError::TotalBytesCap {
                    bytes: total,
                    limit: limits.max_total_bytes,
                });
            }
        }
        match kind {
            Kind::Dir => {
                self.stats.dirs += 1;
                self.sink.mkdir(&self.tree, parent, leaf)?;
            }
            Kind::Symlink => {
                self.stats.symlinks += 1;
                self.sink
                    .symlink(&self.tree, parent, leaf, &e.link, &e.meta)?;
            }
            Kind::File => {
                self.stats.files += 1;
                self.sink.begin_file(&self.tree, parent, leaf)?;
                let sink = &mut *self.sink;
                let progress = &mut *self.progress;
                let (mut done, total, mut reported) = (self.stats.bytes, self.total, self.reported);
                stream.read_data(e.size, |chunk| {
                    sink.write(chunk)?;
                    done += chunk.len() as u64;
                    if done - reported >= PROGRESS_STEP {
                        reported = done;
                        progress(done, total);
                    }
                    Ok(())
                })?;
                self.stats.bytes = done;
                self.reported = reported;
                self.sink.end_file(&e.meta)?;
            }
        }
        Ok(())
    }

    fn final_checks(&self) -> Result<(), ArchiveError> {
        for v in &self.manifest.volumes {
            let st = &self.volumes[&v.index];
            if st.root.is_none() {
                return Err(ArchiveError::ManifestMismatch {
                    index: v.index,
                    what: "count of volumes/<index>/ root entries",
                    declared: 1,
                    actual: 0,
                });
            }
            for (what, declared, actual) in [
                ("file count", v.files, st.files),
                ("byte total", v.bytes, st.bytes),
            ] {
                if actual != declared {
                    return Err(ArchiveError::ManifestMismatch {
                        index: v.index,
                        what,
                        declared,
                        actual,
                    });
                }
            }
        }
        let mut budget = self.tree.symlink_budget();
        for id in self.tree.symlinks() {
            if let Err(reason) = self.tree.check_symlink(id, &mut budget) {
                let root = self.tree.root_of(id);
                let index = self
                    .volumes
                    .iter()
                    .find(|(_, v)| v.root == Some(root))
                    .map(|(i, _)| *i)
                    .unwrap_or_default();
                let mut p = format!("volumes/{index}/").into_bytes();
                p.extend_from_slice(&self.tree.path(id));
                return Err(ArchiveError::SymlinkEscape {
                    name: show(&p),
                    target: show(self.tree.node(id).target.as_deref().unwrap_or_default()),
                    reason,
                });
            }
        }
        Ok(())
    }
}
