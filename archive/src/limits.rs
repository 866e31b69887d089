//! Caps that bound what an archive may make the extractor do, and extraction options.

/// Caps applied to every archive read (extract, verify) and, so that a capture never
/// produces an archive the extractor would refuse, to every capture.
///
/// The manifest's declared totals are checked against these caps before anything is
/// created, and the archive content must then match the declared counts exactly (see
/// the crate docs), so a caller may use the declared bytes for a free-space check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Sum of all regular file sizes, over all volumes. Default 64 GiB.
    pub max_total_bytes: u64,
    /// Number of entries (directories including volume roots, files, symlinks; the
    /// manifest and extension headers are not counted). Default 1,000,000.
    pub max_entries: u64,
    /// Size of one regular file. Default 16 GiB.
    pub max_entry_size: u64,
    /// Byte length of an entry name in the archive (`volumes/<i>/...`, without the
    /// trailing `/` of a directory) and of a symlink target. Default 4096.
    /// One name component is always capped at 255 bytes (NAME_MAX).
    pub max_path_len: u64,
    /// Number of components below the volume root. Default 128.
    pub max_depth: u64,
    /// Decompressed bytes per compressed byte, over the stream so far. Default 200.
    pub max_compression_ratio: u64,
    /// The ratio is enforced once this many bytes have been decompressed, so that a
    /// small, legitimately sparse volume (zero-filled database files) is not refused.
    /// Default 256 MiB.
    pub ratio_grace_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: 64 << 30,
            max_entries: 1_000_000,
            max_entry_size: 16 << 30,
            max_path_len: 4096,
            max_depth: 128,
            max_compression_ratio: 200,
            ratio_grace_bytes: 256 << 20,
        }
    }
}

/// The fixed cap on `manifest.json` (not configurable: it is part of the format).
pub const MANIFEST_MAX_BYTES: u64 = 1 << 20;

/// One name component (NAME_MAX on Linux).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Symlink hops followed while checking that a symlink chain stays inside its volume
/// (the kernel's own limit is 40; a longer chain is refused as `symlink_escape`).
pub const MAX_SYMLINK_HOPS: u32 = 40;

/// Options of [`crate::extract`].
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Caps; see [`Limits`].
    pub limits: Limits,
    /// Make the extracted trees durable before returning: `syncfs(2)` on the filesystem
    /// of every staging directory after the last entry (one flush per filesystem instead
    /// of one `fsync` per file). Default true.
    pub fsync: bool,
    /// Restore numeric uid/gid from the archive (`fchown`). Default: true when running
    /// as root (euid 0), false otherwise (files then belong to the extracting user).
    pub preserve_owner: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            limits: Limits::default(),
            fsync: true,
            preserve_owner: rustix::process::geteuid().is_root(),
        }
    }
}
