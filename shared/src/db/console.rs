//! What the web console reads beyond the plain resources: a job's phase timeline (kept
//! by a trigger, see migration `20261130000003_console`), the triage counts, the job
//! listing's project/stage/text filters, and snapshots whose archive file the node's
//! worker found missing (set and cleared by the worker).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};

use super::jobs::{FILTER_WHERE, JobFilter};
use super::{Cursor, Page};
use crate::domain::{JOB_COLUMNS, Job};
use crate::ids::{JobId, SnapshotId};

/// One entry of a job's timeline: the job entered `phase` (and `state`) at `at`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct JobPhase {
    pub attempt: i32,
    pub state: String,
    pub phase: String,
    /// The job's byte progress when it entered the phase.
    pub progress_done: i64,
    pub progress_total: i64,
    pub at: DateTime<Utc>,
}

/// The job's timeline, oldest first (empty for an unknown job): `queued` at its
/// creation, `starting` when its current attempt was claimed, every phase its worker
/// entered (logged by the `jobs_phase_log` trigger), and its final state when it ended.
pub async fn job_phases(pool: &PgPool, job: JobId) -> Result<Vec<JobPhase>, sqlx::Error> {
    sqlx::query_as::<_, JobPhase>(
        "SELECT attempt, state, phase, progress_done, progress_total, at FROM ( \
           SELECT 0 AS ord, 0::bigint AS seq, 0 AS attempt, 'queued' AS state, 'queued' AS phase, \
                  0::bigint AS progress_done, 0::bigint AS progress_total, created_at AS at \
             FROM jobs WHERE id = $1 \
           UNION ALL \
           SELECT 1, 0, attempt, 'running', 'starting', 0, 0, started_at \
             FROM jobs WHERE id = $1 AND started_at IS NOT NULL \
           UNION ALL \
           SELECT 2, seq, attempt, state, phase, progress_done, progress_total, at \
             FROM job_phases WHERE job_id = $1 \
           UNION ALL \
           SELECT 3, 0, attempt, state, state, progress_done, progress_total, finished_at \
             FROM jobs WHERE id = $1 AND finished_at IS NOT NULL \
         ) t ORDER BY at, ord, seq",
    )
    .bind(job)
    .fetch_all(pool)
    .await
}

/// Filters of the job listing that need the workload's row, or free text.
#[derive(Debug, Clone, Default)]
pub struct JobSearch {
    pub project: Option<String>,
    pub stage: Option<String>,
    /// Case-insensitive substring of the job id, its workload's name, project or stage,
    /// its node, error code or message, or who requested it.
    pub text: Option<String>,
}

impl JobSearch {
    pub fn is_empty(&self) -> bool {
        self.project.is_none() && self.stage.is_none() && self.text.is_none()
    }
}

/// [`super::jobs::list`] with the [`JobSearch`] filters too; same order and cursor.
pub async fn list_jobs(
    pool: &PgPool,
    f: &JobFilter,
    s: &JobSearch,
) -> Result<Page<Job>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE {FILTER_WHERE} \
               AND ($9::text IS NULL AND $10::text IS NULL OR workload_id IN ( \
                     SELECT w.id FROM workloads w \
                     WHERE ($9::text IS NULL OR w.project = $9) AND ($10::text IS NULL OR w.stage = $10))) \
               AND ($11::text IS NULL \
                    OR strpos(id::text, lower($11)) > 0 \
                    OR strpos(lower(node), lower($11)) > 0 \
                    OR strpos(lower(coalesce(error_code, '')), lower($11)) > 0 \
                    OR strpos(lower(coalesce(error_message, '')), lower($11)) > 0 \
                    OR strpos(lower(coalesce(requested_by, '')), lower($11)) > 0 \
                    OR workload_id IN (SELECT w.id FROM workloads w WHERE \
                          strpos(lower(w.project || '/' || w.stage || '/' || w.name), lower($11)) > 0)) \
             ORDER BY created_at DESC, id DESC LIMIT $8"
        )
    });
    let (q, limit) = super::jobs::filtered(SQL.as_str(), f);
    let rows = q
        .bind(&s.project)
        .bind(&s.stage)
        .bind(&s.text)
        .fetch_all(pool)
        .await?;
    Ok(super::page_of(rows, limit, |j| Cursor {
        created_at: j.created_at,
        id: j.id.0,
    }))
}

/// What needs an operator's eye: jobs running and queued now, failures of the last
/// 24 hours.
#[derive(Debug, Clone, Default, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Triage {
    pub running: i64,
    pub queued: i64,
    pub failed_24h: i64,
    /// Of `failed_24h`, the restores.
    pub failed_restores_24h: i64,
}

pub async fn triage(pool: &PgPool) -> Result<Triage, sqlx::Error> {
    sqlx::query_as::<_, Triage>(
        "SELECT \
           (SELECT count(*) FROM jobs WHERE state = 'running') AS running, \
           (SELECT count(*) FROM jobs WHERE state = 'queued') AS queued, \
           (SELECT count(*) FROM jobs WHERE state = 'failed' \
              AND finished_at > now() - interval '24 hours') AS failed_24h, \
           (SELECT count(*) FROM jobs WHERE state = 'failed' AND kind = 'restore' \
              AND finished_at > now() - interval '24 hours') AS failed_restores_24h",
    )
    .fetch_one(pool)
    .await
}

/// A ready snapshot of a node, with where its file should be and whether it was found
/// missing before.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredFile {
    pub id: SnapshotId,
    pub archive_path: String,
    pub file_missing_at: Option<DateTime<Utc>>,
}

/// The node's ready, not deleted snapshots and their archive paths (relative to the
/// node's snapshot directory).
pub async fn ready_files_of_node(
    pool: &PgPool,
    node: &str,
) -> Result<Vec<StoredFile>, sqlx::Error> {
    sqlx::query_as::<_, StoredFile>(
        "SELECT id, archive_path, file_missing_at FROM snapshots \
         WHERE node = $1 AND state = 'ready' AND deleted_at IS NULL AND archive_path IS NOT NULL \
         ORDER BY created_at",
    )
    .bind(node)
    .fetch_all(pool)
    .await
}

/// Record that the snapshot's archive file is missing (`true`; the first time found is
/// kept) or present again (`false`). True when the row changed.
pub async fn set_snapshot_file_missing<'e>(
    exec: impl PgExecutor<'e>,
    id: SnapshotId,
    missing: bool,
) -> Result<bool, sqlx::Error> {
    let sql = if missing {
        "UPDATE snapshots SET file_missing_at = clock_timestamp() \
         WHERE id = $1 AND file_missing_at IS NULL"
    } else {
        "UPDATE snapshots SET file_missing_at = NULL WHERE id = $1 AND file_missing_at IS NOT NULL"
    };
    let done = sqlx::query(sql).bind(id).execute(exec).await?;
    Ok(done.rows_affected() > 0)
}

/// Of `ids`, the snapshots whose file was found missing, and since when.
pub async fn files_missing(
    pool: &PgPool,
    ids: &[SnapshotId],
) -> Result<Vec<(SnapshotId, DateTime<Utc>)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<uuid::Uuid> = ids.iter().map(|i| i.0).collect();
    sqlx::query_as::<_, (SnapshotId, DateTime<Utc>)>(
        "SELECT id, file_missing_at FROM snapshots WHERE id = ANY($1) AND file_missing_at IS NOT NULL",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}
