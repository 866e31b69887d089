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

pub const INTERNAL: &str = "internal";
pub const DOCKER: &str = "docker_error";
pub const REDEPLOY_FAILED: &str = "redeploy_failed";
pub const LEASE_LOST: &str = "lease_lost";
pub const IO: &str = "io_error";
/// A volume's host directory does not exist (capture refuses rather than record an
/// empty volume that a later restore would use to wipe data).
pub const VOLUME_SOURCE_MISSING: &str = "volume_source_missing";
/// The worker died mid-job; recovery rolled the node back to its state before the
/// job (nothing changed) and the job may simply be enqueued again.
pub const INTERRUPTED: &str = "interrupted";

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
];

/// Whether a failure with this code is something the client can act on (HTTP 422)
/// rather than an internal error (HTTP 500).
pub fn is_client_actionable(code: &str) -> bool {
    code.starts_with(ARCHIVE_PREFIX) || CLIENT_ACTIONABLE.contains(&code)
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
    }
}
