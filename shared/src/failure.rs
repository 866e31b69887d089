//! Job failure codes: the stable, client-facing classification of why a job failed.
//!
//! A code is either *client-actionable* (the operator can fix the input: a bad archive,
//! too little space, a config that no longer matches the snapshot) — the API answers
//! such a failed `?wait=` restore with 422 — or *internal* (500, detail only in logs).

/// Archive rules are reported as `archive_<rule>`, e.g. `archive_path_escape`.
pub const ARCHIVE_PREFIX: &str = "archive_";

pub const CHECKSUM_MISMATCH: &str = "snapshot_checksum_mismatch";
pub const SNAPSHOT_FILE_MISSING: &str = "snapshot_file_missing";
pub const SNAPSHOT_NOT_READY: &str = "snapshot_not_ready";
pub const VOLUME_MISMATCH: &str = "volume_mismatch";
pub const PATH_ESCAPES_BASE: &str = "path_escapes_base";
pub const SYSTEM_PATH: &str = "system_path_refused";
pub const INVALID_VOLUME: &str = "invalid_volume";
pub const INSUFFICIENT_SPACE: &str = "insufficient_space";
pub const NOT_IMAGE_WORKLOAD: &str = "not_image_workload";
pub const WORKLOAD_NOT_FOUND: &str = "workload_not_found";
pub const CROSS_FILESYSTEM: &str = "cross_filesystem";
pub const NO_VOLUMES: &str = "no_volumes";
pub const CANCELLED: &str = "cancelled";
/// An `absolute` volume outside the node's `VOLSNAP_ABSOLUTE_ROOTS` (or none are set).
pub const ABSOLUTE_NOT_ALLOWED: &str = "absolute_volume_not_allowed";
/// A volume's host path equals, contains or lies inside a volume of another workload
/// of the same node.
pub const VOLUME_OVERLAP: &str = "volume_overlap";

pub const INTERNAL: &str = "internal";
pub const DOCKER: &str = "docker_error";
pub const REDEPLOY_FAILED: &str = "redeploy_failed";
pub const LEASE_LOST: &str = "lease_lost";
pub const IO: &str = "io_error";
/// A volume's host directory does not exist (capture refuses rather than record an
/// empty volume that a later restore would use to wipe data).
pub const VOLUME_SOURCE_MISSING: &str = "volume_source_missing";
/// The worker died mid-job; recovery rolled the node back to its state before the
/// job (nothing changed) and the job may simply be enqueued again. A job that changed
/// nothing is put back on the queue by itself (see [`is_transient_db_error`]) while it
/// has retries left; this code ends it only once they are used up.
pub const INTERRUPTED: &str = "interrupted";
/// The database could not be reached (connection lost, server restarting, pool
/// exhausted) and the job had changed nothing: it is retried, and this code ends it
/// only once its retries are used up.
pub const DATABASE_UNAVAILABLE: &str = "database_unavailable";
/// A volume's directory (or one of its parents) was replaced or re-pointed (e.g. by a
/// symlink) while the job ran; the job stopped before touching it.
pub const VOLUME_CHANGED: &str = "volume_changed";
/// An undo found neither the kept pre-restore directory nor a ready `pre-restore`
/// snapshot of the job it was to revert.
pub const UNDO_UNAVAILABLE: &str = "undo_unavailable";

/// A restore asked to verify found the restored volumes differ from the snapshot
/// (after the redeploy; the pre-restore snapshot is kept).
pub const VERIFY_MISMATCH: &str = "verify_mismatch";

const CLIENT_ACTIONABLE: &[&str] = &[
    CHECKSUM_MISMATCH,
    SNAPSHOT_FILE_MISSING,
    SNAPSHOT_NOT_READY,
    VOLUME_MISMATCH,
    PATH_ESCAPES_BASE,
    SYSTEM_PATH,
    INVALID_VOLUME,
    INSUFFICIENT_SPACE,
    NOT_IMAGE_WORKLOAD,
    WORKLOAD_NOT_FOUND,
    CROSS_FILESYSTEM,
    NO_VOLUMES,
    VOLUME_SOURCE_MISSING,
    VOLUME_CHANGED,
    ABSOLUTE_NOT_ALLOWED,
    VOLUME_OVERLAP,
    VERIFY_MISMATCH,
    UNDO_UNAVAILABLE,
];

/// Whether a failure with this code is something the client can act on (HTTP 422)
/// rather than an internal error (HTTP 500).
pub fn is_client_actionable(code: &str) -> bool {
    code.starts_with(ARCHIVE_PREFIX) || CLIENT_ACTIONABLE.contains(&code)
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
    fn classification() {
        assert!(is_client_actionable("archive_path_escape"));
        assert!(is_client_actionable(INSUFFICIENT_SPACE));
        assert!(!is_client_actionable(INTERNAL));
        assert!(!is_client_actionable(REDEPLOY_FAILED));
        assert!(!is_client_actionable(DATABASE_UNAVAILABLE));
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
