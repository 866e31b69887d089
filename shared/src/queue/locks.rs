//! Workload advisory locks of one worker process, held on one dedicated connection.
//!
//! Every running job holds its workload's session-level advisory lock for its whole run.
//! Rather than pinning a connection per job, one task owns one connection and takes and
//! releases locks for all of this process's jobs, in batches (one round trip for all
//! requests that arrived meanwhile). Two rules keep this as strict as a connection per
//! job:
//! - session advisory locks are re-entrant within a session, so a key this process
//!   already holds is answered "busy" here, never asked of the server;
//! - if the connection fails, every lock it held is gone: each holder's `lease_lost`
//!   token is cancelled (the job must stop touching anything), then the task reconnects.
//!
//! A caller that needs one workload's lock outside a job run (the orphan check, the
//! engine's start-up recovery) takes it with [`try_workload_lock`]: a guard on a
//! connection of its own, released by [`WorkloadLock::unlock`] or, if dropped, by
//! closing that connection. Both paths use the same two statements
//! ([`TRY_LOCK_SQL`], [`UNLOCK_SQL`]), so the lock protocol is written once.

use std::collections::HashMap;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ids::WorkloadId;

/// The advisory-lock class id (first int of the two-int form): "vols".
pub const ADVISORY_LOCK_CLASS: i32 = 0x766f_6c73;

/// The second int of the advisory lock for a workload: all 128 bits folded into 32.
/// Two workloads may share a key; that only serialises them needlessly.
pub fn workload_lock_key(id: WorkloadId) -> i32 {
    let v = id.0.as_u128();
    let folded = (v as u32) ^ ((v >> 32) as u32) ^ ((v >> 64) as u32) ^ ((v >> 96) as u32);
    folded as i32
}

/// Try each key of `$2` (class `$1`); one row `(key, granted)` per key.
const TRY_LOCK_SQL: &str = "SELECT k, pg_try_advisory_lock($1, k) FROM unnest($2::int[]) k";
/// Release each key of `$2` (class `$1`); one row `(key, released)` per key.
const UNLOCK_SQL: &str = "SELECT k, pg_advisory_unlock($1, k) FROM unnest($2::int[]) k";

/// A workload's advisory lock, held by this guard's own session. Release it with
/// [`WorkloadLock::unlock`]; a guard dropped without that closes its connection (a
/// session lock dies with its session), so the lock never goes back to the pool.
pub struct WorkloadLock {
    conn: Option<PoolConnection<Postgres>>,
    key: i32,
}

/// Take `workload`'s advisory lock on a connection of the pool, without waiting.
/// `Ok(None)`: someone (another process, or another session of this one) holds it.
pub async fn try_workload_lock(
    pool: &PgPool,
    workload: WorkloadId,
) -> Result<Option<WorkloadLock>, sqlx::Error> {
    let key = workload_lock_key(workload);
    let mut conn = pool.acquire().await?;
    match sqlx::query_as::<_, (i32, bool)>(TRY_LOCK_SQL)
        .bind(ADVISORY_LOCK_CLASS)
        .bind([key].as_slice())
        .fetch_one(&mut *conn)
        .await
    {
        Ok((_, true)) => Ok(Some(WorkloadLock {
            conn: Some(conn),
            key,
        })),
        Ok((_, false)) => Ok(None),
        Err(e) => {
            // The lock may have been taken with the answer lost: never pool this session.
            conn.close_on_drop();
            Err(e)
        }
    }
}

impl WorkloadLock {
    /// The session that holds the lock, for statements that must run under it.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("held until unlock or drop")
    }

    /// Release the lock. If the server does not confirm, the connection is closed
    /// instead of going back to the pool (which releases the lock all the same).
    pub async fn unlock(mut self) -> Result<(), sqlx::Error> {
        let mut conn = self.conn.take().expect("held until unlock or drop");
        let released = sqlx::query_as::<_, (i32, bool)>(UNLOCK_SQL)
            .bind(ADVISORY_LOCK_CLASS)
            .bind([self.key].as_slice())
            .fetch_one(&mut *conn)
            .await;
        if !matches!(released, Ok((_, true))) {
            conn.close_on_drop();
        }
        released.map(|_| ())
    }
}

impl Drop for WorkloadLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            // Not released: end the session rather than pool a connection holding it.
            conn.close_on_drop();
        }
    }
}

type LockReply = oneshot::Sender<Result<bool, LockError>>;
type UnlockReply = oneshot::Sender<Result<(), LockError>>;

enum Request {
    Lock(
        i32,
        CancellationToken,
        oneshot::Sender<Result<bool, LockError>>,
    ),
    Unlock(i32, oneshot::Sender<Result<(), LockError>>),
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("workload lock connection failed: {0}")]
pub struct LockError(String);

impl From<LockError> for sqlx::Error {
    fn from(e: LockError) -> Self {
        sqlx::Error::Protocol(e.0)
    }
}

#[derive(Clone)]
pub(crate) struct Locks {
    tx: mpsc::Sender<Request>,
}

const BATCH: usize = 256;
/// How often the lock connection is checked while it holds locks.
const PING: std::time::Duration = std::time::Duration::from_secs(1);

impl Locks {
    pub(crate) fn start(pool: PgPool) -> (Locks, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BATCH * 4);
        let task = tokio::spawn(holder(pool, rx));
        (Locks { tx }, task)
    }

    /// Try to take `key`; `lost` is cancelled if the lock is later lost with the
    /// connection. Ok(false): someone (maybe this process) holds it.
    pub(crate) async fn try_lock(
        &self,
        key: i32,
        lost: CancellationToken,
    ) -> Result<bool, LockError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Lock(key, lost, tx))
            .await
            .map_err(|_| LockError("lock task stopped".into()))?;
        rx.await
            .map_err(|_| LockError("lock task stopped".into()))?
    }

    pub(crate) async fn unlock(&self, key: i32) -> Result<(), LockError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Unlock(key, tx))
            .await
            .map_err(|_| LockError("lock task stopped".into()))?;
        rx.await
            .map_err(|_| LockError("lock task stopped".into()))?
    }
}

async fn holder(pool: PgPool, mut rx: mpsc::Receiver<Request>) {
    let mut conn: Option<PgConnection> = None;
    let mut held: HashMap<i32, CancellationToken> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut ping = tokio::time::interval(PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let got_requests = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                true
            }
            _ = ping.tick() => false,
        };
        if !got_requests {
            // While locks are held, check the connection is alive, so a lost lock is
            // noticed within a second even when no job starts or ends.
            if let (Some(c), false) = (conn.as_mut(), held.is_empty())
                && let Err(e) = sqlx::query("SELECT 1").execute(&mut *c).await
            {
                tracing::error!(error = %e, held = held.len(), "workload lock connection failed; its jobs lose their lease");
                for (_, token) in held.drain() {
                    token.cancel();
                }
                conn = None;
            }
            continue;
        }
        if conn.is_none() {
            match pool.acquire().await {
                Ok(c) => conn = Some(c.detach()),
                Err(e) => {
                    let err = LockError(e.to_string());
                    fail_all(batch.drain(..), &err);
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        let mut unlocks: Vec<(i32, UnlockReply)> = vec![];
        let mut locks: Vec<(i32, CancellationToken, LockReply)> = vec![];
        for r in batch.drain(..) {
            match r {
                Request::Unlock(k, tx) => unlocks.push((k, tx)),
                Request::Lock(k, t, tx) => locks.push((k, t, tx)),
            }
        }
        let result = run_batch(c, &mut held, &mut unlocks, &mut locks).await;
        if let Err(e) = result {
            // The connection is unusable; every lock it held is gone with it.
            tracing::error!(error = %e, held = held.len(), "workload lock connection failed; its jobs lose their lease");
            for (_, token) in held.drain() {
                token.cancel();
            }
            conn = None;
            let err = LockError(e.to_string());
            for (_, tx) in unlocks {
                let _ = tx.send(Err(err.clone()));
            }
            for (_, _, tx) in locks {
                let _ = tx.send(Err(err.clone()));
            }
        }
    }
    // All senders gone (the runner stopped): close the connection, releasing any lock.
    if let Some(c) = conn {
        let _ = sqlx::Connection::close(c).await;
    }
}

async fn run_batch(
    c: &mut PgConnection,
    held: &mut HashMap<i32, CancellationToken>,
    unlocks: &mut Vec<(i32, UnlockReply)>,
    locks: &mut Vec<(i32, CancellationToken, LockReply)>,
) -> Result<(), sqlx::Error> {
    if !unlocks.is_empty() {
        let keys: Vec<i32> = unlocks
            .iter()
            .map(|u| u.0)
            .filter(|k| held.contains_key(k))
            .collect();
        if !keys.is_empty() {
            sqlx::query(UNLOCK_SQL)
                .bind(ADVISORY_LOCK_CLASS)
                .bind(&keys)
                .execute(&mut *c)
                .await?;
        }
        for (k, tx) in unlocks.drain(..) {
            held.remove(&k);
            let _ = tx.send(Ok(()));
        }
    }
    if !locks.is_empty() {
        // Keys held here already, or asked twice in this batch, are busy without asking.
        let mut ask: Vec<i32> = vec![];
        for (k, _, _) in locks.iter() {
            if !held.contains_key(k) && !ask.contains(k) {
                ask.push(*k);
            }
        }
        let got: Vec<(i32, bool)> = if ask.is_empty() {
            vec![]
        } else {
            sqlx::query_as(TRY_LOCK_SQL)
                .bind(ADVISORY_LOCK_CLASS)
                .bind(&ask)
                .fetch_all(&mut *c)
                .await?
        };
        for (k, token, tx) in locks.drain(..) {
            let granted = !held.contains_key(&k) && got.iter().any(|(gk, ok)| *gk == k && *ok);
            if granted {
                held.insert(k, token);
            }
            let _ = tx.send(Ok(granted));
        }
    }
    Ok(())
}

fn fail_all(reqs: impl Iterator<Item = Request>, err: &LockError) {
    for r in reqs {
        match r {
            Request::Lock(_, _, tx) => {
                let _ = tx.send(Err(err.clone()));
            }
            Request::Unlock(_, tx) => {
                let _ = tx.send(Err(err.clone()));
            }
        }
    }
}
