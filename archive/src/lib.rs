//! volsnap/1 snapshot archives: the writer and a hostile-archive extractor.
//!
//! A volsnap/1 archive is one gzip member holding a POSIX tar stream whose first entry
//! is `manifest.json` and whose other entries live under `volumes/<index>/`. See
//! `docs/archive.md` for the format, every rule and its name, the defaults, and the
//! benchmark.
//!
//! - [`write_archive`] / [`write_archive_file`] capture volume directories.
//! - [`extract`] / [`extract_file`] unpack into fresh staging directories, treating the
//!   archive as hostile: any violation aborts, removes every staging directory, and
//!   returns an [`ArchiveError`] whose [`ArchiveError::rule`] names the rule.
//! - [`verify`] applies every rule without writing anything; [`read_manifest`] reads the
//!   first entry only.
//!
//! Everything here blocks and uses helper threads (capture: one compressor per CPU plus
//! a writer, see [`WriteOptions::threads`]; extraction: one decompressor); async
//! callers should run it in `spawn_blocking`.

mod deflate;
pub mod diff;
mod error;
mod extract;
mod fsops;
mod gz;
mod limits;
mod manifest;
mod names;
mod tarfmt;
mod tree;
mod write;

pub use error::{ArchiveError, RULES};
pub use extract::{
    EntryStats, ExtractSummary, VerifySummary, extract, extract_at, extract_file, read_manifest,
    read_manifest_from, verify, verify_stream,
};
pub use fsops::{StagingAt, remove_tree_at};
pub use limits::{ExtractOptions, Limits, MANIFEST_MAX_BYTES, MAX_COMPONENT_LEN, MAX_SYMLINK_HOPS};
pub use manifest::{FORMAT, MANIFEST_NAME, MAX_VOLUMES, Manifest, ManifestVolume};
pub use write::{VolumeInput, WriteOptions, WriteSummary, write_archive, write_archive_file};
