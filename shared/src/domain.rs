//! Domain types shared by the API and the worker. Every enum that is stored maps to a
//! lowercase text column guarded by a CHECK constraint in `migrations/`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::ids::{BatchId, JobId, SnapshotId, WorkloadId};

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
        #[sqlx(type_name = "text")]
        pub enum $name {
            $(
                #[serde(rename = $text)]
                #[sqlx(rename = $text)]
                $variant,
            )+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant { kind: stringify!($name), value: s.to_owned() }),
                }
            }
        }
    };
}

/// A string that names no variant of a stored enum.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
}

text_enum!(
    /// What a job does. A `plan` is a restore's dry run: read-only, outside the
    /// workload's single-flight and lock. `pre_restore_archive` archives a restore's kept
    /// pre-restore directory as a `pre-restore` snapshot in the background; `undo` puts a
    /// restore's pre-restore data back (issue 11).
    JobKind {
        Capture = "capture",
        Restore = "restore",
        Plan = "plan",
        PreRestoreArchive = "pre_restore_archive",
        Undo = "undo",
    }
);

impl JobKind {
    /// Whether jobs of this kind change the workload's live data: such jobs are under
    /// the workload's single-flight (one queued or running per workload, the
    /// `jobs_one_active_per_workload` index) and hold its lock while they run. A plan
    /// only reads; a pre-restore archive reads a kept copy that no longer is the live
    /// data (it has its own per-copy lock on the node), so a restore or undo of the
    /// workload never waits for one.
    pub fn changes_workload(self) -> bool {
        matches!(self, JobKind::Capture | JobKind::Restore | JobKind::Undo)
    }
}

/// The SQL form of [`JobKind::changes_workload`], written exactly as the
/// `jobs_one_active_per_workload` index's predicate (an `ON CONFLICT` clause must match it).
/// `concat!`-able as `changes_workload_sql!()`.
#[macro_export]
macro_rules! changes_workload_sql {
    () => {
        "kind NOT IN ('plan', 'pre_restore_archive')"
    };
}

text_enum!(
    /// Where a job is in its life. See docs/queue.md for the diagram.
    JobState {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

impl JobState {
    /// Final states never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

text_enum!(
    /// How a workload is deployed. Only `image` workloads may be restored.
    SourceKind { Image = "image", Git = "git", Compose = "compose" }
);

text_enum!(
    /// Why a snapshot exists.
    SnapshotKind { Manual = "manual", PreRestore = "pre-restore", Imported = "imported" }
);

text_enum!(
    /// A snapshot's life: only `ready` snapshots can be restored.
    SnapshotState { Capturing = "capturing", Ready = "ready", Failed = "failed" }
);

text_enum!(
    /// How a volume's `source` is resolved on the worker. See DESIGN.md "Volume scopes".
    VolumeScope { Absolute = "absolute", Project = "project", Stage = "stage" }
);

text_enum!(
    /// An API token's power.
    Role { Admin = "admin", Viewer = "viewer" }
);

/// The longest node name (the `workloads.node` CHECK constraint; a DNS name's limit).
pub const NODE_NAME_MAX: usize = 253;

/// The node-name grammar, `^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`: ASCII letters, digits,
/// `.`, `_` and `-`, starting with a letter or digit. Hostnames fit; zero-width, bidi,
/// control, whitespace and other look-alike characters do not (a job routed to a node
/// whose name no worker can type would wait forever).
pub fn check_node_name(name: &str) -> Result<(), NodeNameError> {
    let ok = !name.is_empty()
        && name.len() <= NODE_NAME_MAX
        && name
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'.' | b'_' | b'-')));
    if ok { Ok(()) } else { Err(NodeNameError) }
}

/// A node name outside [`check_node_name`]'s grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,252}}$ (ASCII letters, digits, '.', '_', '-'; \
     starting with a letter or digit; at most 253)"
)]
pub struct NodeNameError;

/// One data volume of a workload: a host path (by scope) bind-mounted at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeSpec {
    pub scope: VolumeScope,
    pub source: String,
    /// Absolute path inside the container; the key that maps snapshot volumes.
    pub target: String,
}

/// Everything a client sets on a workload (create and full update): written once here,
/// carried by [`Workload`] (which adds its id and times) and bound once by
/// `db::workloads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WorkloadFields {
    pub name: String,
    pub project: String,
    pub stage: String,
    pub node: String,
    pub source_kind: SourceKind,
    pub image: Option<String>,
    #[sqlx(json)]
    pub volumes: Vec<VolumeSpec>,
    pub stop_for_capture: bool,
}

/// A workload row: its [`WorkloadFields`] (flattened in JSON and in the row; reached
/// through `Deref`, so `w.name` reads as before) plus its id and times.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Workload {
    pub id: WorkloadId,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub fields: WorkloadFields,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::ops::Deref for Workload {
    type Target = WorkloadFields;

    fn deref(&self) -> &WorkloadFields {
        &self.fields
    }
}

/// A snapshot row.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub workload_id: WorkloadId,
    pub node: String,
    pub kind: SnapshotKind,
    pub state: SnapshotState,
    pub archive_path: Option<String>,
    pub size_bytes: Option<i64>,
    pub sha256: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub manifest: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A job row: the queue entry and its status, as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub workload_id: WorkloadId,
    pub snapshot_id: Option<SnapshotId>,
    pub node: String,
    pub state: JobState,
    pub phase: String,
    pub progress_done: i64,
    pub progress_total: i64,
    pub attempt: i32,
    pub recovering: bool,
    pub cancel_requested: bool,
    pub past_point_of_no_return: bool,
    pub worker_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub pre_restore_snapshot_id: Option<SnapshotId>,
    pub batch_id: Option<BatchId>,
    pub requested_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// Times the job went back to `queued` after a transient fault that changed nothing.
    pub retries: i32,
    /// The last such fault (`code: message`).
    pub last_transient_error: Option<String>,
    /// A queued job is not claimed before this time (retry backoff).
    pub run_after: Option<DateTime<Utc>>,
    /// What the job found: a plan's verdict and per-volume diff, a verified restore's
    /// verification (see docs/api.md "Restore plans").
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// A restore that compares the restored volumes with the snapshot before it succeeds.
    pub verify: bool,
}

/// The column list matching [`Job`], for `SELECT`/`RETURNING`, as a literal so it can
/// be `concat!`-ed into static SQL (sqlx 0.9 refuses unaudited dynamic SQL strings).
#[macro_export]
macro_rules! job_columns {
    () => {
        "id, kind, workload_id, snapshot_id, node, state, phase, progress_done, \
     progress_total, attempt, recovering, cancel_requested, past_point_of_no_return, worker_id, \
     error_code, error_message, pre_restore_snapshot_id, batch_id, requested_by, created_at, \
     started_at, finished_at, heartbeat_at, retries, last_transient_error, run_after, result, \
     verify"
    };
}

/// The column list matching [`Job`], for `SELECT`/`RETURNING`.
pub const JOB_COLUMNS: &str = job_columns!();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for ok in [
            "node-a",
            "ip-10-0-0-1.ec2.internal",
            "N1",
            "a_b",
            &"a".repeat(253),
        ] {
            check_node_name(ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            ".a",
            "a b",
            "a/b",
            "node\u{200b}a",
            "node\u{202e}a",
            "nod\u{0435}",
            "a\n",
            "a\0",
            &"a".repeat(254),
        ] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn enums_round_trip_through_text() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), *s);
        }
        assert_eq!(SnapshotKind::PreRestore.as_str(), "pre-restore");
        assert!("bogus".parse::<JobKind>().is_err());
        assert_eq!(
            serde_json::to_string(&SnapshotKind::PreRestore).unwrap(),
            "\"pre-restore\""
        );
    }
}
