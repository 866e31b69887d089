//! Data access for the API's resources: workloads, snapshots, tokens, job listings and
//! batch summaries. SQL lives here so handlers read like the contract (validate,
//! authorise, call, map). Queue mutations (enqueue, claim, finish, cancel) live in
//! `crate::queue`.
//!
//! Row locks taken here follow one order — workload, then snapshot — so concurrent
//! requests cannot deadlock: a restore holds both rows `FOR SHARE` while it enqueues;
//! deleting or re-homing a workload and deleting a snapshot take `FOR UPDATE` first and
//! then look for active jobs in a fresh statement (which, under READ COMMITTED, sees a
//! job that a concurrent restore just committed).

pub mod batches;
pub mod console;
pub mod jobs;
pub mod nodes;
pub mod schema;
pub mod snapshots;
pub mod tokens;
pub mod workloads;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Page size when the client does not ask for one.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest page a client may ask for.
pub const MAX_LIMIT: i64 = 500;

/// A keyset position in a `(created_at DESC, id DESC)` listing. Clients see it only as
/// an opaque string ([`Cursor::encode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    /// 48 hex digits: the timestamp in microseconds (big-endian i64), then the id.
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&self.created_at.timestamp_micros().to_be_bytes());
        bytes[8..].copy_from_slice(self.id.as_bytes());
        hex::encode(bytes)
    }

    /// `None` for anything [`Cursor::encode`] did not produce.
    pub fn decode(s: &str) -> Option<Cursor> {
        let bytes: [u8; 24] = hex::decode(s).ok()?.try_into().ok()?;
        let micros = i64::from_be_bytes(bytes[..8].try_into().ok()?);
        let created_at = DateTime::<Utc>::from_timestamp_micros(micros)?;
        let id = Uuid::from_slice(&bytes[8..]).ok()?;
        Some(Cursor { created_at, id })
    }
}

/// One page of a listing, newest first.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back to get the next (older) page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Clamp a client's page size into `1..=MAX_LIMIT`.
pub fn clamp_limit(limit: Option<i64>) -> i64 {
    limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

/// Cut a `limit + 1` fetch down to a page, with the cursor of its last item.
fn page_of<T>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> Cursor) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| key(r).encode())
    } else {
        None
    };
    Page {
        items: rows,
        next_cursor,
    }
}

/// Whether a database error is a violation of the named unique constraint or index.
pub fn is_unique_violation(err: &sqlx::Error, constraint: &str) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            created_at: DateTime::<Utc>::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode(""), None);
        assert_eq!(Cursor::decode(&"0".repeat(46)), None);
    }

    #[test]
    fn limits_are_clamped() {
        assert_eq!(clamp_limit(None), DEFAULT_LIMIT);
        assert_eq!(clamp_limit(Some(0)), 1);
        assert_eq!(clamp_limit(Some(10_000)), MAX_LIMIT);
    }
}
