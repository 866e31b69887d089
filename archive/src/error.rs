//! The one error type of the crate.
//!
//! Every way an archive can be refused is its own variant, carrying the entry name (or
//! the offset) that broke the rule, and [`ArchiveError::rule`] names the rule with a
//! stable snake_case string. The worker turns that string into the job error code
//! `archive_<rule>`, so the strings are part of the contract: never rename one.

use std::io;
use std::path::PathBuf;

/// Why an archive (or a capture) was refused, or the I/O that failed.
///
/// Entry names are kept lossily decoded as UTF-8 and are printed with `{:?}` so that a
/// hostile name cannot forge log lines or terminal escapes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// An entry name starts with `/`.
    #[error("entry {name:?} has an absolute path")]
    AbsolutePath { name: String },

    /// An entry name has a `..` component.
    #[error("entry {name:?} contains a `..` component")]
    PathTraversal { name: String },

    /// An entry name is not a normalised relative path (empty, `//`, a `.` component,
    /// a NUL byte, a trailing `/` on a non-directory) or a symlink target is empty.
    #[error("entry {name:?} has an invalid name: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// A symlink whose target is absolute or resolves outside its volume (directly,
    /// through a chain of symlinks, or after more than 40 hops), or a later entry that
    /// uses a symlink as a directory.
    #[error("symlink escape at entry {name:?} (target {target:?}): {reason}")]
    SymlinkEscape {
        name: String,
        target: String,
        reason: &'static str,
    },

    /// A hard link entry (type `1`).
    #[error("entry {name:?} is a hard link to {target:?}; hard links are refused")]
    Hardlink { name: String, target: String },

    /// A character device, block device or fifo entry.
    #[error("entry {name:?} is a {kind}; special files are refused")]
    SpecialFile { name: String, kind: &'static str },

    /// Any other tar entry type (GNU sparse, volume label, global PAX header, ...).
    #[error("entry {name:?} has unsupported type {type_flag:?}")]
    UnknownType { name: String, type_flag: char },

    /// The same name twice, or a name that clashes with an earlier entry of another type
    /// (a file used as a directory, a directory replacing a file).
    #[error("entry {name:?} clashes with an earlier entry: {reason}")]
    DuplicateEntry { name: String, reason: &'static str },

    /// Two names of one directory that differ only by letter case.
    #[error("entry {name:?} differs only by case from the earlier entry {existing:?}")]
    CaseCollision { name: String, existing: String },

    /// An entry whose parent directory (or volume root) was not declared earlier.
    #[error("entry {name:?} comes before its parent directory")]
    MissingParent { name: String },

    /// The declared or actual total of regular file bytes is over the cap.
    #[error("total size {bytes} bytes is over the cap of {limit} bytes")]
    TotalBytesCap { bytes: u64, limit: u64 },

    /// The declared or actual number of entries is over the cap.
    #[error("{count} entries is over the cap of {limit}")]
    EntryCountCap { count: u64, limit: u64 },

    /// One entry (or an extension header) is larger than allowed.
    #[error("entry {name:?} has {size} bytes, over the cap of {limit} bytes")]
    EntrySizeCap { name: String, size: u64, limit: u64 },

    /// An entry name, a name component or a symlink target is too long.
    #[error("entry {name:?}: {what} of {len} bytes is over the cap of {limit} bytes")]
    PathLengthCap {
        name: String,
        what: &'static str,
        len: u64,
        limit: u64,
    },

    /// An entry is nested too deeply below its volume root.
    #[error("entry {name:?} is {depth} levels deep, over the cap of {limit}")]
    DepthCap {
        name: String,
        depth: u64,
        limit: u64,
    },

    /// The decompressed stream grew too fast relative to the compressed input.
    #[error(
        "compression ratio over the cap: {decompressed} bytes out of {compressed} compressed bytes (cap {limit}:1)"
    )]
    CompressionRatioCap {
        decompressed: u64,
        compressed: u64,
        limit: u64,
    },

    /// The gzip layer is truncated, corrupt, or fails its CRC/size check.
    #[error("corrupt or truncated gzip stream after {compressed_offset} compressed bytes")]
    CorruptGzip {
        compressed_offset: u64,
        #[source]
        source: io::Error,
    },

    /// The tar layer is malformed (bad header checksum, unsupported header format,
    /// malformed PAX record, truncated entry, missing end-of-archive marker).
    #[error("corrupt tar stream at offset {offset}: {reason}")]
    CorruptTar { offset: u64, reason: String },

    /// Non-zero bytes after the tar end-of-archive marker, too much zero padding, or
    /// bytes after the gzip member that are not a gzip member.
    #[error("unexpected data after the end of the archive at offset {offset}")]
    TrailingData { offset: u64 },

    /// A second gzip member follows the first.
    #[error("a second gzip member starts at compressed offset {compressed_offset}")]
    MultipleGzipMembers { compressed_offset: u64 },

    /// An entry that is neither `manifest.json` nor under `volumes/<index>/`.
    #[error("entry {name:?} is outside volumes/<index>/: {reason}")]
    OutsideVolumes { name: String, reason: &'static str },

    /// An entry under `volumes/<index>/` whose index the manifest does not list.
    #[error("entry {name:?} names volume {index}, which the manifest does not list")]
    IndexOutOfBounds { name: String, index: u32 },

    /// The first entry is not a regular file named `manifest.json`.
    #[error("the first entry is {first:?}, not manifest.json")]
    ManifestMissing { first: String },

    /// `manifest.json` is larger than 1 MiB.
    #[error("manifest.json has {size} bytes, over the cap of {limit} bytes")]
    ManifestTooLarge { size: u64, limit: u64 },

    /// `manifest.json` is not valid volsnap/1 JSON.
    #[error("manifest.json is invalid: {reason}")]
    ManifestInvalid {
        reason: String,
        #[source]
        source: Option<serde_json::Error>,
    },

    /// The archive content does not match what the manifest declares for a volume
    /// (file count, byte total, missing volume root).
    #[error("volume {index}: {what} is {actual}, the manifest declares {declared}")]
    ManifestMismatch {
        index: u32,
        what: &'static str,
        declared: u64,
        actual: u64,
    },

    /// The caller gave no staging directory for a manifest volume (nothing was created).
    #[error("no staging directory was given for manifest volume {index}")]
    VolumeUnmapped { index: u32 },

    /// A staging directory cannot be used (it exists, its parent is missing, it was given
    /// for an index the manifest does not list, two volumes share it, ...).
    #[error("staging directory {path:?} cannot be used: {reason}")]
    StagingInvalid { path: PathBuf, reason: String },

    /// A volume to capture is not usable (not a directory, a symlink, ...).
    #[error("volume {index} at {path:?} cannot be captured: {reason}")]
    SourceInvalid {
        index: u32,
        path: PathBuf,
        reason: String,
    },

    /// A file changed type or size (or vanished) between the capture's scan and its read.
    #[error("volume {index}: {name:?} changed during capture: {reason}")]
    SourceChanged {
        index: u32,
        name: String,
        reason: &'static str,
    },

    /// A write failed because a filesystem is full (ENOSPC) or over quota (EDQUOT).
    #[error("no space left while {context}")]
    NoSpace {
        context: String,
        #[source]
        source: io::Error,
    },

    /// Any other I/O failure.
    #[error("I/O error while {context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// Every rule name [`ArchiveError::rule`] can return, for documentation and tests.
pub const RULES: &[&str] = &[
    "absolute_path",
    "path_traversal",
    "invalid_name",
    "symlink_escape",
    "hardlink",
    "special_file",
    "unknown_type",
    "duplicate_entry",
    "case_collision",
    "missing_parent",
    "total_bytes_cap",
    "entry_count_cap",
    "entry_size_cap",
    "path_length_cap",
    "depth_cap",
    "compression_ratio_cap",
    "corrupt_gzip",
    "corrupt_tar",
    "trailing_data",
    "multiple_gzip_members",
    "outside_volumes",
    "index_out_of_bounds",
    "manifest_missing",
    "manifest_too_large",
    "manifest_invalid",
    "manifest_mismatch",
    "volume_unmapped",
    "staging_invalid",
    "source_invalid",
    "source_changed",
    "no_space",
    "io",
];

impl ArchiveError {
    /// The stable snake_case name of the broken rule (`archive_<rule>` is the job error
    /// code). I/O failures are `io`, a full filesystem is `no_space`.
    pub fn rule(&self) -> &'static str {
        use ArchiveError::*;
        match self {
            AbsolutePath { .. } => "absolute_path",
            PathTraversal { .. } => "path_traversal",
            InvalidName { .. } => "invalid_name",
            SymlinkEscape { .. } => "symlink_escape",
            Hardlink { .. } => "hardlink",
            SpecialFile { .. } => "special_file",
            UnknownType { .. } => "unknown_type",
            DuplicateEntry { .. } => "duplicate_entry",
            CaseCollision { .. } => "case_collision",
            MissingParent { .. } => "missing_parent",
            TotalBytesCap { .. } => "total_bytes_cap",
            EntryCountCap { .. } => "entry_count_cap",
            EntrySizeCap { .. } => "entry_size_cap",
            PathLengthCap { .. } => "path_length_cap",
            DepthCap { .. } => "depth_cap",
            CompressionRatioCap { .. } => "compression_ratio_cap",
            CorruptGzip { .. } => "corrupt_gzip",
            CorruptTar { .. } => "corrupt_tar",
            TrailingData { .. } => "trailing_data",
            MultipleGzipMembers { .. } => "multiple_gzip_members",
            OutsideVolumes { .. } => "outside_volumes",
            IndexOutOfBounds { .. } => "index_out_of_bounds",
            ManifestMissing { .. } => "manifest_missing",
            ManifestTooLarge { .. } => "manifest_too_large",
            ManifestInvalid { .. } => "manifest_invalid",
            ManifestMismatch { .. } => "manifest_mismatch",
            VolumeUnmapped { .. } => "volume_unmapped",
            StagingInvalid { .. } => "staging_invalid",
            SourceInvalid { .. } => "source_invalid",
            SourceChanged { .. } => "source_changed",
            NoSpace { .. } => "no_space",
            Io { .. } => "io",
        }
    }

    /// True when the archive itself was refused (the file is bad; retrying will not
    /// help). False for caller mistakes (`volume_unmapped`, `staging_invalid`), capture
    /// source problems and I/O (`io`, `no_space`).
    pub fn is_archive_rejection(&self) -> bool {
        !matches!(
            self,
            ArchiveError::VolumeUnmapped { .. }
                | ArchiveError::StagingInvalid { .. }
                | ArchiveError::SourceInvalid { .. }
                | ArchiveError::SourceChanged { .. }
                | ArchiveError::NoSpace { .. }
                | ArchiveError::Io { .. }
        )
    }

    /// Wraps an I/O error, classifying ENOSPC/EDQUOT as [`ArchiveError::NoSpace`].
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        match source.raw_os_error() {
            Some(code) if code == libc_enospc() || code == libc_edquot() => {
                ArchiveError::NoSpace { context, source }
            }
            _ if source.kind() == io::ErrorKind::StorageFull
                || source.kind() == io::ErrorKind::QuotaExceeded =>
            {
                ArchiveError::NoSpace { context, source }
            }
            _ => ArchiveError::Io { context, source },
        }
    }
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

fn libc_edquot() -> i32 {
    rustix::io::Errno::DQUOT.raw_os_error()
}

/// Converts a rustix errno into an [`ArchiveError`] (ENOSPC → `no_space`).
pub(crate) fn errno(context: impl Into<String>, e: rustix::io::Errno) -> ArchiveError {
    ArchiveError::io(context, io::Error::from(e))
}

/// Lossy, printable form of an entry name for error messages.
pub(crate) fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_no_space() {
        let e = ArchiveError::io("writing", io::Error::from_raw_os_error(libc_enospc()));
        assert_eq!(e.rule(), "no_space");
        let e = ArchiveError::io("writing", io::Error::from_raw_os_error(libc_edquot()));
        assert_eq!(e.rule(), "no_space");
        let e = ArchiveError::io("writing", io::Error::other("boom"));
        assert_eq!(e.rule(), "io");
        assert!(!e.is_archive_rejection());
    }

    #[test]
    fn rule_names_are_snake_case_and_listed() {
        for r in RULES {
            assert!(r.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{r}");
        }
        let e = ArchiveError::Hardlink {
            name: "a".into(),
            target: "b".into(),
        };
        assert!(RULES.contains(&e.rule()));
        assert!(e.is_archive_rejection());
    }
}
