//! Batch rows and their summaries. Creating a batch and enforcing `max_parallel` /
//! `stop_after_failures` belong to the queue (`crate::queue`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};
use std::sync::LazyLock;

use crate::domain::{JOB_COLUMNS, Job, JobState};
use crate::ids::BatchId;

/// A batch of restore jobs.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Batch {
    pub id: BatchId,
    pub requested_by: Option<String>,
    /// Items in the request, accepted or not.
    pub item_count: i32,
    pub max_parallel: Option<i32>,
    pub stop_after_failures: Option<i32>,
    pub created_at: DateTime<Utc>,
}

pub async fn get(pool: &PgPool, id: BatchId) -> Result<Option<Batch>, sqlx::Error> {
    sqlx::query_as::<_, Batch>(
        "SELECT id, requested_by, item_count, max_parallel, stop_after_failures, created_at \
         FROM batches WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// How many of the batch's jobs are in each state (states with none are left out).
pub async fn counts(pool: &PgPool, id: BatchId) -> Result<Vec<(JobState, i64)>, sqlx::Error> {
    sqlx::query_as::<_, (JobState, i64)>(
        "SELECT state, count(*) FROM jobs WHERE batch_id = $1 GROUP BY state ORDER BY state",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// The batch's jobs in the order they were enqueued.
pub async fn jobs(pool: &PgPool, id: BatchId) -> Result<Vec<Job>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = $1 ORDER BY created_at, id")
    });
    sqlx::query_as::<_, Job>(AssertSqlSafe(SQL.as_str()))
        .bind(id)
        .fetch_all(pool)
        .await
}
