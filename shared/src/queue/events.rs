//! LISTEN/NOTIFY fan-out. One listening connection per process feeds a broadcast
//! channel; waiters filter it.
//!
//! A waiter reads its job once, then sleeps until a notification names it: it never
//! polls. Notifications can only be missed when the LISTEN connection is lost (Postgres
//! delivers them reliably on a live connection) or when a waiter falls too far behind
//! the in-process channel. Both cases are covered by ONE shared missed-notification
//! check per process ([`JobEvents`]): a single query over every job being waited on,
//! which re-announces the ones that became final. The listening connection proves it is
//! alive with one `SELECT 1` every [`HEARTBEAT`] (independent of how many waiters there
//! are); if that fails it is replaced and the shared check runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::Job;
use crate::ids::JobId;

/// Channel notified with a job id on every insert and state change.
pub const STATE_CHANNEL: &str = "volsnap_job_state";
/// Channel notified with a node name (or `*`) when a job becomes claimable.
pub const INSERT_CHANNEL: &str = "volsnap_job_insert";

/// How often the listening connection proves it is alive (one `SELECT 1` on it).
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long that proof may take before the connection is replaced.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// A notification: (channel, payload). A payload of `*` on the empty channel means
/// "the LISTEN connection was re-established; anything may have been missed".
pub type Notification = (String, String);

async fn connect_listener(pool: &PgPool, channels: &[String]) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all(channels.iter().map(String::as_str))
        .await?;
    Ok(listener)
}

/// Spawn a task that LISTENs on `channels` and forwards every notification. It
/// reconnects on error (and when the heartbeat fails), announcing each reconnect with
/// `("", "*")`, and ends when `stop` is cancelled.
pub async fn spawn_listener(
    pool: &PgPool,
    channels: &[&str],
    stop: CancellationToken,
) -> Result<broadcast::Sender<Notification>, sqlx::Error> {
    let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
    let mut listener = connect_listener(pool, &channels).await?;
    let (tx, _) = broadcast::channel(4096);
    let sender = tx.clone();
    let pool = pool.clone();
    tokio::spawn(async move {
        let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = heartbeat.tick() => {
                    let alive = tokio::time::timeout(
                        HEARTBEAT_TIMEOUT,
                        sqlx::query("SELECT 1").execute(&mut listener),
                    )
                    .await;
                    if !matches!(alive, Ok(Ok(_))) {
                        tracing::warn!("LISTEN connection failed its heartbeat; replacing it");
                        match connect_listener(&pool, &channels).await {
                            Ok(l) => {
                                listener = l;
                                let _ = sender.send((String::new(), "*".into()));
                            }
                            Err(e) => tracing::warn!(error = %e, "reconnecting LISTEN failed; retrying"),
                        }
                    }
                }
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => {
                        let _ = sender.send((n.channel().to_owned(), n.payload().to_owned()));
                    }
                    Ok(None) => {
                        // The connection was lost and re-established; anything sent in
                        // between is gone. Tell waiters to re-check.
                        tracing::warn!("LISTEN connection was re-established; re-checking waiters");
                        let _ = sender.send((String::new(), "*".into()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    });
    Ok(tx)
}

/// Counters of the waiter machinery, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct WaitStats {
    /// Shared missed-notification checks run (one query each).
    pub shared_checks: AtomicU64,
    /// Job re-reads by waiters (each after a notification naming the job).
    pub rereads: AtomicU64,
}

struct Inner {
    pool: PgPool,
    tx: broadcast::Sender<Notification>,
    /// Job id → number of waiters on it.
    waiting: Mutex<HashMap<JobId, usize>>,
    /// Asks the shared check to run (a waiter fell behind the channel).
    recheck: Arc<Notify>,
    stats: WaitStats,
    _stop: tokio_util::sync::DropGuard,
}

/// Job state notifications for one process (the API). Cheap to clone.
#[derive(Clone)]
pub struct JobEvents {
    inner: Arc<Inner>,
}

/// Removes a waiter from the shared set when it ends (however it ends).
struct Registration<'a> {
    inner: &'a Inner,
    id: JobId,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut w = self.inner.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.id);
            }
        }
    }
}

impl JobEvents {
    pub async fn start(pool: PgPool) -> Result<JobEvents, sqlx::Error> {
        let stop = CancellationToken::new();
        let tx = spawn_listener(&pool, &[STATE_CHANNEL], stop.clone()).await?;
        let inner = Arc::new(Inner {
            pool,
            tx,
            waiting: Mutex::new(HashMap::new()),
            recheck: Arc::new(Notify::new()),
            stats: WaitStats::default(),
            _stop: stop.clone().drop_guard(),
        });
        tokio::spawn(shared_check_task(
            Arc::downgrade(&inner),
            inner.recheck.clone(),
            inner.tx.subscribe(),
            stop,
        ));
        Ok(JobEvents { inner })
    }

    pub fn stats(&self) -> &WaitStats {
        &self.inner.stats
    }

    /// Number of requests waiting on a job right now.
    pub fn waiters(&self) -> usize {
        let w = self.inner.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.values().sum()
    }

    /// Wait until the job is final or `timeout` passes, sleeping on notifications.
    /// Returns the job as it is then (final or not), or `None` for an unknown id.
    /// Reads the job at the start, after each notification naming it, and at the
    /// deadline — never periodically.
    pub async fn wait_for_final(
        &self,
        id: JobId,
        timeout: Duration,
    ) -> Result<Option<Job>, sqlx::Error> {
        let inner = &*self.inner;
        // Subscribe and register before reading, so a change between the read and the
        // wait is seen (by the notification or by the shared check).
        let mut rx = inner.tx.subscribe();
        *inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default() += 1;
        let _registration = Registration { inner, id };
        let deadline = Instant::now() + timeout;
        let wanted = id.to_string();
        loop {
            let Some(job) = super::get_job(&inner.pool, id).await? else {
                return Ok(None);
            };
            if job.state.is_final() || Instant::now() >= deadline {
                return Ok(Some(job));
            }
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => break, // deadline: read once more and answer
                    Ok(Ok((_, payload))) if payload == wanted => {
                        inner.stats.rereads.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    // Reconnects ("*") are handled by the shared check, which
                    // re-announces every waited job that became final.
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                        inner.recheck.notify_one();
                        continue;
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                }
            }
        }
    }
}

/// The one missed-notification check of a process: after a LISTEN reconnect or when a
/// waiter fell behind, one query finds which waited-on jobs are final and announces
/// them to their waiters.
async fn shared_check_task(
    inner: std::sync::Weak<Inner>,
    recheck: Arc<Notify>,
    mut rx: broadcast::Receiver<Notification>,
    stop: CancellationToken,
) {
    loop {
        // No strong reference is held while sleeping, so dropping the last JobEvents
        // stops this task (through `stop`).
        let needed = tokio::select! {
            _ = stop.cancelled() => return,
            _ = recheck.notified() => true,
            m = rx.recv() => match m {
                Ok((channel, payload)) => channel.is_empty() && payload == "*",
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if !needed {
            continue;
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let ids: Vec<JobId> = {
            let w = strong.waiting.lock().unwrap_or_else(|e| e.into_inner());
            w.keys().copied().collect()
        };
        if ids.is_empty() {
            continue;
        }
        strong.stats.shared_checks.fetch_add(1, Ordering::Relaxed);
        let finished: Result<Vec<JobId>, sqlx::Error> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE id = ANY($1) \
             AND state IN ('succeeded', 'failed', 'cancelled')",
        )
        .bind(&ids)
        .fetch_all(&strong.pool)
        .await;
        match finished {
            Ok(done) => {
                tracing::info!(
                    waited = ids.len(),
                    final_now = done.len(),
                    "missed-notification check"
                );
                for id in done {
                    let _ = strong.tx.send((STATE_CHANNEL.to_owned(), id.to_string()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "missed-notification check failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                strong.recheck.notify_one();
            }
        }
    }
}
