//! LISTEN/NOTIFY fan-out. One listening connection per process feeds a broadcast
//! channel; waiters filter it. Notifications lost while the connection was down are
//! covered by re-reading the job after every wake-up and by a slow fallback re-check,
//! so a waiter never depends on a notification alone.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::Job;
use crate::ids::JobId;

/// Channel notified with a job id on every insert and state change.
pub const STATE_CHANNEL: &str = "volsnap_job_state";
/// Channel notified with a node name (or `*`) when a job becomes claimable.
pub const INSERT_CHANNEL: &str = "volsnap_job_insert";

/// Re-check period when no notification arrives (covers a dropped LISTEN connection).
const FALLBACK_RECHECK: Duration = Duration::from_secs(2);

/// A notification: (channel, payload).
pub type Notification = (String, String);

/// Spawn a task that LISTENs on `channels` and forwards every notification. It
/// reconnects on error (PgListener does) and ends when `stop` is cancelled.
pub async fn spawn_listener(
    pool: &PgPool,
    channels: &[&str],
    stop: CancellationToken,
) -> Result<broadcast::Sender<Notification>, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all(channels.iter().copied()).await?;
    let (tx, _) = broadcast::channel(4096);
    let sender = tx.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => {
                        let _ = sender.send((n.channel().to_owned(), n.payload().to_owned()));
                    }
                    Ok(None) => {
                        // The connection was lost and re-established; anything sent in
                        // between is gone. Tell waiters to re-check.
                        tracing::warn!("LISTEN connection was re-established; waking all waiters");
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

/// Job state notifications for one process (the API). Cheap to clone.
#[derive(Clone)]
pub struct JobEvents {
    pool: PgPool,
    tx: broadcast::Sender<Notification>,
    _stop: std::sync::Arc<tokio_util::sync::DropGuard>,
}

impl JobEvents {
    pub async fn start(pool: PgPool) -> Result<JobEvents, sqlx::Error> {
        let stop = CancellationToken::new();
        let tx = spawn_listener(&pool, &[STATE_CHANNEL], stop.clone()).await?;
        Ok(JobEvents {
            pool,
            tx,
            _stop: std::sync::Arc::new(stop.drop_guard()),
        })
    }

    /// Wait until the job is final or `timeout` passes, sleeping on notifications.
    /// Returns the job as it is then (final or not), or `None` for an unknown id.
    pub async fn wait_for_final(
        &self,
        id: JobId,
        timeout: Duration,
    ) -> Result<Option<Job>, sqlx::Error> {
        // Subscribe before reading, so a change between the read and the wait is seen.
        let mut rx = self.tx.subscribe();
        let deadline = Instant::now() + timeout;
        let wanted = id.to_string();
        loop {
            let Some(job) = super::get_job(&self.pool, id).await? else {
                return Ok(None);
            };
            if job.state.is_final() || Instant::now() >= deadline {
                return Ok(Some(job));
            }
            let recheck = (Instant::now() + FALLBACK_RECHECK).min(deadline);
            loop {
                match tokio::time::timeout_at(recheck, rx.recv()).await {
                    Err(_) => break, // deadline or fallback re-check
                    Ok(Ok((_, payload))) if payload == wanted || payload == "*" => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        tokio::time::sleep_until(recheck).await;
                        break;
                    }
                }
            }
        }
    }
}
