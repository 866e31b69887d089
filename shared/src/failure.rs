//! Job failure codes: the stable, client-facing classification of why a job failed.
//!
//! A code is either *client-actionable* (the operator can fix the input: a bad archive,
//! too little space, a config that no longer matches the snapshot) — the API answers
//! such a failed `?wait=` restore with 422 — or *internal* (500, detail only in logs).

use std::borrow::Cow;
use std::fmt;

/// Archive rules are reported as `archive_<rule>`, e.g. `archive_path_escape`.
pub const ARCHIVE_PREFIX: &str = "archive_";

/// Whether the client can act on a failure (HTTP 422) or it is internal (HTTP 500,
/// detail only in the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The operator can fix the input: a bad archive, too little space, a config that
    /// no longer matches the snapshot.
    ClientActionable,
    Internal,
}

impl FailureClass {
    /// The class of a stored code (`jobs.error_code`); unknown codes are internal.
    pub fn of(code: &str) -> FailureClass {
        if code.starts_with(ARCHIVE_PREFIX) {
            return FailureClass::ClientActionable;
        }
        FailureCode::KNOWN
            .iter()
            .find(|c| c.known_str() == Some(code))
            .map_or(FailureClass::Internal, |c| c.class())
    }
}

/// Why a job failed: each code has its stable string (stored in `jobs.error_code` and
/// answered by the API — a contract, see docs) and its [`FailureClass`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    SnapshotChecksumMismatch,
    SnapshotFileMissing,
    SnapshotNotReady,
    VolumeMismatch,
    PathEscapesBase,
    SystemPathRefused,
    InvalidVolume,
    InsufficientSpace,
    NotImageWorkload,
    WorkloadNotFound,
    CrossFilesystem,
    NoVolumes,
    /// A volume's host directory does not exist (capture refuses rather than record an
    /// empty volume that a later restore would use to wipe data).
    VolumeSourceMissing,
    /// A volume's directory (or one of its parents) was replaced or re-pointed (e.g. by
    /// a symlink) while the job ran; the job stopped before touching it.
    VolumeChanged,
    /// An `absolute` volume outside the node's `VOLSNAP_ABSOLUTE_ROOTS` (or none are set).
    AbsoluteVolumeNotAllowed,
    /// A volume's host path equals, contains or lies inside a volume of another workload
    /// of the same node.
    VolumeOverlap,
    /// A restore asked to verify found the restored volumes differ from the snapshot
    /// (after the redeploy; the pre-restore snapshot is kept).
    VerifyMismatch,
    /// An undo found neither the kept pre-restore directory nor a ready `pre-restore`
    /// snapshot of the job it was to revert.
    UndoUnavailable,
    Cancelled,
    Internal,
    DockerError,
    RedeployFailed,
    LeaseLost,
    IoError,
    /// The worker died mid-job; recovery rolled the node back to its state before the
    /// job (nothing changed) and the job may simply be enqueued again. A job that
    /// changed nothing is put back on the queue by itself (see
    /// [`is_transient_db_error`]) while it has retries left; this code ends it only
    /// once they are used up.
    Interrupted,
    /// The database could not be reached (connection lost, server restarting, pool
    /// exhausted) and the job had changed nothing: it is retried, and this code ends it
    /// only once its retries are used up.
    DatabaseUnavailable,
    /// The kept pre-restore copy an archive job was to archive is gone (released by an
    /// undo, or removed).
    PreRestoreCopyGone,
    /// An archive rule (`volsnap_archive::ArchiveError::rule`), reported as
    /// `archive_<rule>`: client-actionable.
    Archive(&'static str),
    /// A code another crate defines as it is (the archive diff's `diff_*`): internal.
    Other(&'static str),
}

impl FailureCode {
    /// Every code with a fixed string.
    pub const KNOWN: &[FailureCode] = &[
        FailureCode::SnapshotChecksumMismatch,
        FailureCode::SnapshotFileMissing,
        FailureCode::SnapshotNotReady,
        FailureCode::VolumeMismatch,
        FailureCode::PathEscapesBase,
        FailureCode::SystemPathRefused,
        FailureCode::InvalidVolume,
        FailureCode::InsufficientSpace,
        FailureCode::NotImageWorkload,
        FailureCode::WorkloadNotFound,
        FailureCode::CrossFilesystem,
        FailureCode::NoVolumes,
        FailureCode::VolumeSourceMissing,
        FailureCode::VolumeChanged,
        FailureCode::AbsoluteVolumeNotAllowed,
        FailureCode::VolumeOverlap,
        FailureCode::VerifyMismatch,
        FailureCode::UndoUnavailable,
        FailureCode::Cancelled,
        FailureCode::Internal,
        FailureCode::DockerError,
        FailureCode::RedeployFailed,
        FailureCode::LeaseLost,
        FailureCode::IoError,
        FailureCode::Interrupted,
        FailureCode::DatabaseUnavailable,
        FailureCode::PreRestoreCopyGone,
    ];

    /// The stable string of a code with a fixed one (`None` for `Archive`, whose string
    /// is built from its rule).
    pub const fn known_str(self) -> Option<&'static str> {
        use FailureCode::*;
        Some(match self {
            SnapshotChecksumMismatch => "snapshot_checksum_mismatch",
            SnapshotFileMissing => "snapshot_file_missing",
            SnapshotNotReady => "snapshot_not_ready",
            VolumeMismatch => "volume_mismatch",
            PathEscapesBase => "path_escapes_base",
            SystemPathRefused => "system_path_refused",
            InvalidVolume => "invalid_volume",
            InsufficientSpace => "insufficient_space",
            NotImageWorkload => "not_image_workload",
            WorkloadNotFound => "workload_not_found",
            CrossFilesystem => "cross_filesystem",
            NoVolumes => "no_volumes",
            VolumeSourceMissing => "volume_source_missing",
            VolumeChanged => "volume_changed",
            AbsoluteVolumeNotAllowed => "absolute_volume_not_allowed",
            VolumeOverlap => "volume_overlap",
            VerifyMismatch => "verify_mismatch",
            UndoUnavailable => "undo_unavailable",
            Cancelled => "cancelled",
            Internal => "internal",
            DockerError => "docker_error",
            RedeployFailed => "redeploy_failed",
            LeaseLost => "lease_lost",
            IoError => "io_error",
            Interrupted => "interrupted",
            DatabaseUnavailable => "database_unavailable",
            PreRestoreCopyGone => "pre_restore_copy_gone",
            Other(code) => code,
            Archive(_) => return None,
        })
    }

    /// The stable string, as stored and answered.
    pub fn as_str(self) -> Cow<'static, str> {
        match self {
            FailureCode::Archive(rule) => Cow::Owned(format!("{ARCHIVE_PREFIX}{rule}")),
            other => Cow::Borrowed(other.known_str().expect("a fixed code")),
        }
    }

    /// Whether the client can act on it.
    pub const fn class(self) -> FailureClass {
        use FailureCode::*;
        match self {
            SnapshotChecksumMismatch
            | SnapshotFileMissing
            | SnapshotNotReady
            | VolumeMismatch
            | PathEscapesBase
            | SystemPathRefused
            | InvalidVolume
            | InsufficientSpace
            | NotImageWorkload
            | WorkloadNotFound
            | CrossFilesystem
            | NoVolumes
            | VolumeSourceMissing
            | VolumeChanged
            | AbsoluteVolumeNotAllowed
            | VolumeOverlap
            | VerifyMismatch
            | UndoUnavailable
            | Archive(_) => FailureClass::ClientActionable,
            Cancelled | Internal | DockerError | RedeployFailed | LeaseLost | IoError
            | Interrupted | DatabaseUnavailable | PreRestoreCopyGone | Other(_) => {
                FailureClass::Internal
            }
        }
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureCode::Archive(rule) => write!(f, "{ARCHIVE_PREFIX}{rule}"),
            other => f.write_str(other.known_str().expect("a fixed code")),
        }
    }
}

/// Serialised as its stable string, unchanged.
impl serde::Serialize for FailureCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl From<FailureCode> for Cow<'static, str> {
    fn from(c: FailureCode) -> Cow<'static, str> {
        c.as_str()
    }
}

impl From<FailureCode> for String {
    fn from(c: FailureCode) -> String {
        c.to_string()
    }
}

impl PartialEq<str> for FailureCode {
    fn eq(&self, other: &str) -> bool {
        match self {
            FailureCode::Archive(rule) => other
                .strip_prefix(ARCHIVE_PREFIX)
                .is_some_and(|r| r == *rule),
            c => c.known_str() == Some(other),
        }
    }
}

impl PartialEq<&str> for FailureCode {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl PartialEq<FailureCode> for String {
    fn eq(&self, other: &FailureCode) -> bool {
        *other == *self.as_str()
    }
}

impl PartialEq<FailureCode> for &str {
    fn eq(&self, other: &FailureCode) -> bool {
        *other == **self
    }
}

// The names call sites have used since codes were strings.
/// A kept pre-restore copy was gone when its archive job ran (undone or removed).
pub const PRE_RESTORE_COPY_GONE: FailureCode = FailureCode::PreRestoreCopyGone;
pub const CHECKSUM_MISMATCH: FailureCode = FailureCode::SnapshotChecksumMismatch;
pub const SNAPSHOT_FILE_MISSING: FailureCode = FailureCode::SnapshotFileMissing;
pub const SNAPSHOT_NOT_READY: FailureCode = FailureCode::SnapshotNotReady;
pub const VOLUME_MISMATCH: FailureCode = FailureCode::VolumeMismatch;
pub const PATH_ESCAPES_BASE: FailureCode = FailureCode::PathEscapesBase;
pub const SYSTEM_PATH: FailureCode = FailureCode::SystemPathRefused;
pub const INVALID_VOLUME: FailureCode = FailureCode::InvalidVolume;
pub const INSUFFICIENT_SPACE: FailureCode = FailureCode::InsufficientSpace;
pub const NOT_IMAGE_WORKLOAD: FailureCode = FailureCode::NotImageWorkload;
pub const WORKLOAD_NOT_FOUND: FailureCode = FailureCode::WorkloadNotFound;
pub const CROSS_FILESYSTEM: FailureCode = FailureCode::CrossFilesystem;
pub const NO_VOLUMES: FailureCode = FailureCode::NoVolumes;
pub const CANCELLED: FailureCode = FailureCode::Cancelled;
pub const ABSOLUTE_NOT_ALLOWED: FailureCode = FailureCode::AbsoluteVolumeNotAllowed;
pub const VOLUME_OVERLAP: FailureCode = FailureCode::VolumeOverlap;
pub const INTERNAL: FailureCode = FailureCode::Internal;
pub const DOCKER: FailureCode = FailureCode::DockerError;
pub const REDEPLOY_FAILED: FailureCode = FailureCode::RedeployFailed;
pub const LEASE_LOST: FailureCode = FailureCode::LeaseLost;
pub const IO: FailureCode = FailureCode::IoError;
pub const VOLUME_SOURCE_MISSING: FailureCode = FailureCode::VolumeSourceMissing;
pub const INTERRUPTED: FailureCode = FailureCode::Interrupted;
pub const DATABASE_UNAVAILABLE: FailureCode = FailureCode::DatabaseUnavailable;
pub const VOLUME_CHANGED: FailureCode = FailureCode::VolumeChanged;
pub const UNDO_UNAVAILABLE: FailureCode = FailureCode::UndoUnavailable;
pub const VERIFY_MISMATCH: FailureCode = FailureCode::VerifyMismatch;

/// Whether a failure with this stored code is something the client can act on (HTTP
/// 422) rather than an internal error (HTTP 500).
pub fn is_client_actionable(code: &str) -> bool {
    FailureClass::of(code) == FailureClass::ClientActionable
}

/// Whether a database error is a transient fault — the connection or the server, not
/// the statement: lost or refused connections (I/O, SQLSTATE class 08), a server
/// shutting down or starting (57P01 admin shutdown, which `pg_terminate_backend` also
/// sends, 57P02, 57P03), too many connections (53300), an exhausted or closed pool, a
/// serialization failure or deadlock victim (40001, 40P01). A job that failed with one
/// of these before it changed anything is put back on the queue (docs/queue.md).
pub fn is_transient_db_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08")
                || matches!(
                    &*c,
                    "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
                )
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_the_contract() {
        // The strings clients see (docs/api): changing one is a breaking change.
        for (code, s) in [
            (CHECKSUM_MISMATCH, "snapshot_checksum_mismatch"),
            (SYSTEM_PATH, "system_path_refused"),
            (ABSOLUTE_NOT_ALLOWED, "absolute_volume_not_allowed"),
            (DOCKER, "docker_error"),
            (IO, "io_error"),
            (DATABASE_UNAVAILABLE, "database_unavailable"),
            (
                FailureCode::Archive("path_traversal"),
                "archive_path_traversal",
            ),
            (
                FailureCode::Other("diff_live_too_deep"),
                "diff_live_too_deep",
            ),
        ] {
            assert_eq!(code.to_string(), s);
            assert_eq!(code.as_str(), s);
            assert_eq!(code, s);
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(s));
        }
        let mut seen = std::collections::HashSet::new();
        for c in FailureCode::KNOWN {
            let s = c.known_str().unwrap();
            assert!(seen.insert(s), "{s} twice");
            assert!(!s.starts_with(ARCHIVE_PREFIX), "{s}");
            assert_eq!(FailureClass::of(s), c.class(), "{s}");
        }
    }

    #[test]
    fn classification() {
        assert!(is_client_actionable("archive_path_escape"));
        assert!(is_client_actionable("insufficient_space"));
        assert!(!is_client_actionable("internal"));
        assert!(!is_client_actionable("redeploy_failed"));
        assert!(!is_client_actionable(&DATABASE_UNAVAILABLE.as_str()));
        assert!(is_client_actionable(&UNDO_UNAVAILABLE.as_str()));
        assert!(!is_client_actionable("pre_restore_copy_gone"));
        assert!(!is_client_actionable("diff_live_too_deep"));
        assert!(!is_client_actionable("something_new"));
        assert_eq!(
            FailureCode::Archive("hardlink").class(),
            FailureClass::ClientActionable
        );
    }

    #[test]
    fn transient_database_errors() {
        assert!(is_transient_db_error(&sqlx::Error::PoolTimedOut));
        assert!(is_transient_db_error(&sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset)
        )));
        assert!(!is_transient_db_error(&sqlx::Error::RowNotFound));
        assert!(!is_transient_db_error(&sqlx::Error::Protocol("bad".into())));
    }
}
