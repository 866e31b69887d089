//! How an engine step stops: a classified failure (code + client-safe message, with
//! the cause kept for the logs), or one of the control-flow stops the queue defines
//! (cancel, graceful shutdown, lost lease).

use std::fmt;

use volsnap_shared::failure::{self, FailureCode};
use volsnap_shared::queue::PointOfNoReturnError;
use volsnap_shared::queue::QueueError;

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A job failure: a stable code (see `volsnap_shared::failure`), a message safe to show
/// the client, and (for the logs only) the underlying cause.
#[derive(Debug)]
pub struct Failure {
    pub code: FailureCode,
    pub message: String,
    pub cause: Option<Cause>,
    /// The cause is a transient fault (see `failure::is_transient_db_error`): before
    /// any change, [`Stop::before_any_change`] turns it into a retry.
    pub transient: bool,
}

impl Failure {
    /// A failure whose message is meant for the client as it is.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            cause: None,
            transient: false,
        }
    }

    pub fn with_cause(mut self, cause: impl Into<Cause>) -> Failure {
        self.cause = Some(cause.into());
        self
    }

    /// An internal failure: the client sees `what` only, the cause goes to the logs.
    pub fn internal(
        code: FailureCode,
        what: impl Into<String>,
        cause: impl Into<Cause>,
    ) -> Failure {
        Failure::new(code, what).with_cause(cause)
    }

    /// An I/O failure: no space is client-actionable, anything else is internal.
    pub fn io(what: impl Into<String>, err: std::io::Error) -> Failure {
        let what = what.into();
        if is_no_space(&err) {
            Failure::new(
                failure::INSUFFICIENT_SPACE,
                format!("{what}: no space left on the filesystem"),
            )
            .with_cause(err)
        } else {
            Failure::internal(failure::IO, what, err)
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(c) = &self.cause {
            write!(f, " ({c})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as _)
    }
}

/// Whether an I/O error (or anything it wraps) means the filesystem is full.
pub fn is_no_space(err: &std::io::Error) -> bool {
    if err.raw_os_error() == Some(nix::libc::ENOSPC)
        || err.raw_os_error() == Some(nix::libc::EDQUOT)
    {
        return true;
    }
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .is_some_and(is_no_space)
}

/// Why a step did not run to its end.
#[derive(Debug)]
pub enum Stop {
    Failed(Failure),
    /// The client cancelled before the point of no return.
    Cancelled,
    /// The process is stopping; before the point of no return the job goes back to
    /// the queue untouched.
    Shutdown,
    /// The job is no longer ours: touch nothing more.
    LeaseLost,
    /// The job changed nothing and failed for a transient cause: it goes back to the
    /// queue with a backoff (while it has retries left). Made by
    /// [`Stop::before_any_change`] only.
    Retry(Failure),
    /// The node could not be brought back to a consistent state in-line (e.g. a rollback
    /// failed): the journal stays, and the job goes back as `recovering`.
    NeedsRecovery(Failure),
}

impl Stop {
    /// Mark a stop as happening before the job changed anything on the node (before
    /// the journal's first destructive entry, or after the job itself undid all it
    /// did): a transient failure then becomes [`Stop::Retry`]. Every other stop is
    /// returned as it is. Apply it only where that is provably true.
    pub fn before_any_change(self) -> Stop {
        match self {
            Stop::Failed(f) if f.transient => Stop::Retry(f),
            other => other,
        }
    }
}

/// [`Stop::before_any_change`] for a step's result: `step().await.before_any_change()?`.
pub trait BeforeAnyChange<T> {
    fn before_any_change(self) -> Result<T, Stop>;
}

impl<T, E: Into<Stop>> BeforeAnyChange<T> for Result<T, E> {
    fn before_any_change(self) -> Result<T, Stop> {
        self.map_err(|e| e.into().before_any_change())
    }
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Stop {
        Stop::Failed(f)
    }
}

impl From<QueueError> for Stop {
    fn from(e: QueueError) -> Stop {
        match e {
            QueueError::LeaseLost(_) => Stop::LeaseLost,
            QueueError::Db(e) => Stop::Failed(e.into()),
        }
    }
}

impl From<PointOfNoReturnError> for Stop {
    fn from(e: PointOfNoReturnError) -> Stop {
        match e {
            PointOfNoReturnError::Cancelled => Stop::Cancelled,
            PointOfNoReturnError::Queue(q) => q.into(),
        }
    }
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Stop {
        Stop::Failed(e.into())
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Failure {
        if failure::is_transient_db_error(&e) {
            let mut f = Failure::internal(
                failure::DATABASE_UNAVAILABLE,
                "the database could not be reached",
                e,
            );
            f.transient = true;
            f
        } else {
            Failure::internal(failure::INTERNAL, "database error", e)
        }
    }
}
