//! How a queue runner behaves ([`WorkerConfig`], [`RetryPolicy`]) and what it reports
//! about itself while it runs ([`WorkerStatus`]).

use std::sync::Arc;
use std::time::Duration;

/// How a worker behaves. Defaults suit production; tests shorten the intervals.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub node: String,
    /// Unique per process; recorded on the jobs it runs.
    pub worker_id: String,
    /// Handlers run at once by this process. A job holds its slot from claim until its
    /// handler returns; writing its outcome and releasing its workload lock follow
    /// without the slot, so the next claim is not held up by those commits (at most
    /// `concurrency` more jobs can be in that tail at once).
    pub concurrency: usize,
    /// How often running jobs' heartbeats are written.
    pub heartbeat_interval: Duration,
    /// A running job whose heartbeat is older than this is rescued (queued + recovering).
    pub lease: Duration,
    /// Fallback poll when no notification arrives.
    pub poll_interval: Duration,
    /// How long a graceful stop waits for running jobs.
    pub shutdown_grace: Duration,
    /// Finished jobs older than this are deleted (None: never).
    pub prune_after: Option<Duration>,
    /// A job that changed nothing and failed for a transient cause is put back on the
    /// queue at most this many times (see [`JobOutcome::Retry`]).
    pub retry: RetryPolicy,
    /// What the runner reports about itself (for the worker's own metrics endpoint).
    pub status: Arc<WorkerStatus>,
}

/// Live facts about a running agent, updated by the runner.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    /// Unix time (ms) of the last heartbeat the database accepted; 0 before the first.
    pub last_heartbeat_ms: std::sync::atomic::AtomicU64,
    /// Jobs running in this process now.
    pub running_jobs: std::sync::atomic::AtomicUsize,
    /// Jobs this process finished (any outcome) since it started.
    pub jobs_done: std::sync::atomic::AtomicU64,
    /// Claim statements that took at least one job (each is one durable commit).
    pub claim_commits: std::sync::atomic::AtomicU64,
    /// Batched finish statements the completer committed (each is one durable commit).
    pub finish_commits: std::sync::atomic::AtomicU64,
    /// Jobs whose lease the heartbeat gave up: the row was no longer theirs, or the
    /// database could not be reached for most of a lease.
    pub leases_lost: std::sync::atomic::AtomicU64,
}

impl WorkerConfig {
    pub fn new(node: impl Into<String>) -> Self {
        let node = node.into();
        let worker_id = format!(
            "{node}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        WorkerConfig {
            node,
            worker_id,
            concurrency: 2,
            heartbeat_interval: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(600),
            prune_after: Some(Duration::from_secs(30 * 24 * 3600)),
            retry: RetryPolicy::default(),
            status: Arc::default(),
        }
    }
}

/// How a job that changed nothing and failed for a transient cause is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Put back at most this many times; the next such failure ends the job.
    pub max_retries: u32,
    /// Wait before the first retry; doubled for each further one, at most `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// The pool a worker with `concurrency` slots should have: the lock holder keeps one
/// connection; claims, heartbeats, the completer, each running handler's own queries
/// and the outcome writes of up to `concurrency` jobs past their handler share the rest.
pub fn min_pool_size(concurrency: usize) -> u32 {
    concurrency as u32 * 2 + 4
}
