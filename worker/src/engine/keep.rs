//! Kept pre-restore copies (issue 11): after a restore (or an undo) swaps its volumes,
//! the displaced data already sits in the side directory next to each target, durable
//! since the swap's parent fsync. Instead of archiving it on the job's critical path,
//! the job leaves it there and writes a **keep record**
//! (`$VOLSNAP_STATE_DIR/kept/<job>.json`, durable) before it reports success. Then:
//!
//! - this module's maintenance loop enqueues a `pre_restore_archive` job for the record
//!   (its job id and snapshot id are chosen when the record is written, so the enqueue
//!   is idempotent) once the job that kept it is final and the workload is free;
//! - the archive job ([`super::prearchive`]) writes the `pre-restore` snapshot from the
//!   directory and marks the record archived;
//! - an undo ([`super::undo`]) swaps the directory back in while it exists;
//! - once archived (or its archive was cancelled by an operator) and
//!   `VOLSNAP_PRE_RESTORE_KEEP` after the swap, the loop removes the directory
//!   (renamed to `<side>.del` in the held parent, then an `unlinkat` walk that never
//!   follows a symlink) and then the record. A copy whose archive failed is never
//!   removed: it is the only copy of that data.
//!
//! A record is only changed under its copy's node-local lock
//! ([`super::nodelock::try_lock_copy`]): the archive job holds it while it reads the
//! copy, an undo while it swaps the copy back (asking a running archive to hand it over
//! first), the sweep while it maintains the record; the sweep also takes the
//! workload's node lock and skips a workload with an unfinished journal on this node.
//! A restore or undo writes its own, new record under the workload's lock. The archive
//! holds no workload lock and is outside single-flight: a restore or undo of the
//! workload never waits for the archive of an earlier copy.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use volsnap_shared::db;
use volsnap_shared::domain::{JobKind, JobState, SnapshotState};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};

use super::context::{Engine, blocking};
use super::error::Failure;
use super::journal::{JournalState, PlannedVolume};
use super::restore::{held, reopen_parents};
use super::{fsops, nodelock, swap};
use crate::crash_point;

/// Where a kept copy's background archive is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ArchiveState {
    /// No archive job yet (the keeping job is not final, or the workload was busy).
    Pending,
    /// The archive job `archive_job_id` is on the queue.
    Enqueued,
    /// The `pre-restore` snapshot `snapshot_id` is ready.
    Archived,
    /// An operator cancelled the archive job: the copy is removed after the retention
    /// without an archive.
    Cancelled,
    /// The archive job failed after its retries: the copy is kept (never removed
    /// without an archive) and the failure counted in `volsnap_jobs_finished_total`.
    Failed,
}

/// One kept copy: the side directories of the job that displaced the data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeepRecord {
    pub format: u32,
    /// The restore (or undo) whose swap displaced the data.
    pub job_id: JobId,
    pub kind: JobKind,
    pub workload_id: WorkloadId,
    /// As journaled by that job after its commit point: each side directory holds the
    /// displaced data (`old_id`), each target the data the job put in (`new_id`).
    pub volumes: Vec<PlannedVolume>,
    /// When the job kept it (the retention counts from here).
    pub kept_at: DateTime<Utc>,
    /// Bytes of the displaced data (what its archive may need in the snapshot dir).
    pub bytes: u64,
    /// The `pre-restore` snapshot it is (to be) archived as.
    pub snapshot_id: SnapshotId,
    /// The job that archives it.
    pub archive_job_id: JobId,
    pub archive: ArchiveState,
}

pub const FORMAT: u32 = 1;

/// The node's keep records.
#[derive(Debug, Clone)]
pub struct KeepDir(PathBuf);

impl KeepDir {
    pub fn new(state_dir: &Path) -> KeepDir {
        KeepDir(state_dir.join("kept"))
    }

    pub fn ensure(&self) -> io::Result<()> {
        if !self.0.is_dir() {
            std::fs::create_dir_all(&self.0)?;
            fsops::fsync_dir(fsops::parent(&self.0))?;
        }
        Ok(())
    }

    fn path(&self, job: JobId) -> PathBuf {
        self.0.join(format!("{job}.json"))
    }

    /// Durably record `r` (temp file, fsync, rename, directory fsync).
    pub fn write(&self, r: &KeepRecord) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(r).map_err(io::Error::other)?;
        fsops::write_durably(&self.path(r.job_id), &bytes)
    }

    pub fn read(&self, job: JobId) -> io::Result<Option<KeepRecord>> {
        match std::fs::read(self.path(job)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn remove(&self, job: JobId) -> io::Result<()> {
        fsops::remove_file(&self.path(job))
    }

    /// Every record (unreadable ones are logged and skipped).
    pub fn list(&self) -> io::Result<Vec<KeepRecord>> {
        let rd = match std::fs::read_dir(&self.0) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let mut out = vec![];
        for ent in rd {
            let name = ent?.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|s| s.parse::<JobId>().ok())
            else {
                continue;
            };
            match self.read(id) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(job_id = %id, error = %e, "an unreadable keep record is left alone")
                }
            }
        }
        out.sort_by_key(|r| r.kept_at);
        Ok(out)
    }

    /// The record whose archive job is `job`.
    pub fn by_archive_job(&self, job: JobId) -> io::Result<Option<KeepRecord>> {
        Ok(self.list()?.into_iter().find(|r| r.archive_job_id == job))
    }

    /// Bytes of kept copies whose archive is still to be written (the snapshot dir must
    /// be able to hold them as well as a new restore's).
    pub fn unarchived_bytes(&self) -> io::Result<u64> {
        Ok(self
            .list()?
            .iter()
            .filter(|r| matches!(r.archive, ArchiveState::Pending | ArchiveState::Enqueued))
            .map(|r| r.bytes)
            .sum())
    }
}

/// After a restore's or an undo's commit and redeploy: record its side directories
/// as the kept pre-restore copy (idempotent: a record already written keeps its ids).
/// An undo then releases the record of the job it reverted: that directory is now
/// live again and the data the undo displaced sits under the same side names.
pub async fn keep_after_commit(
    eng: &Engine,
    j: &super::journal::Journal,
) -> Result<KeepRecord, Failure> {
    let kept = eng.kept.clone();
    let existing = kept
        .read(j.job_id)
        .map_err(|e| Failure::io("reading the keep record", e))?;
    let rec = match existing {
        Some(r) => r,
        None => {
            // A journal of the former inline archive (before issue 11) already chose
            // the snapshot id, or finished the archive.
            let (snapshot_id, archive) = match j.state {
                JournalState::Archiving { snapshot_id } => (snapshot_id, ArchiveState::Pending),
                JournalState::Archived { snapshot_id } => (snapshot_id, ArchiveState::Archived),
                _ => (SnapshotId::new(), ArchiveState::Pending),
            };
            let rec = KeepRecord {
                format: FORMAT,
                job_id: j.job_id,
                kind: j.kind,
                workload_id: j.workload_id,
                volumes: j.volumes.clone(),
                kept_at: Utc::now(),
                bytes: j.kept_bytes,
                snapshot_id,
                archive_job_id: JobId::new(),
                archive,
            };
            let (k, r) = (kept.clone(), rec.clone());
            blocking(move || {
                k.write(&r)
                    .map_err(|e| Failure::io("writing the keep record", e))
            })
            .await?;
            rec
        }
    };
    if j.kind == JobKind::Undo {
        crash_point!("undo.kept");
        if let Some(source) = j.undoes {
            let dir = eng.cfg.state_dir.clone();
            blocking(move || {
                kept.remove(source)
                    .map_err(|e| Failure::io("releasing the reverted job's keep record", e))?;
                nodelock::remove_copy_lock_file(&dir, source);
                Ok(())
            })
            .await?;
        }
        crash_point!("undo.released");
    } else {
        crash_point!("restore.kept");
    }
    Ok(rec)
}

/// Mark a record archived (the archive job's last step).
pub async fn mark_archived(eng: &Engine, mut rec: KeepRecord) -> Result<(), Failure> {
    rec.archive = ArchiveState::Archived;
    let kept = eng.kept.clone();
    blocking(move || {
        kept.write(&rec)
            .map_err(|e| Failure::io("writing the keep record", e))
    })
    .await
}

/// The maintenance loop: every `every`, [`sweep`].
pub async fn run_loop(eng: std::sync::Weak<Engine>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(eng) = eng.upgrade() else { return };
        let swept = tokio::select! {
            _ = stop.cancelled() => return,
            r = sweep(&eng) => r,
        };
        if let Err(e) = swept {
            tracing::warn!(error = %e, "maintenance of kept pre-restore copies failed; will retry");
        }
    }
}

/// One pass over the node's keep records: enqueue missing archive jobs, follow their
/// outcome, remove copies past their retention.
pub async fn sweep(eng: &Engine) -> Result<(), Failure> {
    let kept = eng.kept.clone();
    let records = blocking(move || {
        kept.list()
            .map_err(|e| Failure::io("listing keep records", e))
    })
    .await?;
    for rec in records {
        let Some(_lock) = nodelock::try_lock(&eng.cfg.state_dir, rec.workload_id)
            .map_err(|e| Failure::io("taking the workload's node lock", e))?
        else {
            continue;
        };
        if eng.journals.any_open(|j| j.workload_id == rec.workload_id) {
            continue;
        }
        // The copy's own lock: its archive job (which holds no workload lock) or an
        // undo may be at it.
        let Some(_copy_lock) = nodelock::try_lock_copy(&eng.cfg.state_dir, rec.job_id)
            .map_err(|e| Failure::io("taking a kept copy's lock", e))?
        else {
            continue;
        };
        // Re-read under the lock: a job may have changed or released it meanwhile.
        let Some(rec) = eng
            .kept
            .read(rec.job_id)
            .map_err(|e| Failure::io("reading a keep record", e))?
        else {
            continue;
        };
        if let Err(f) = maintain(eng, rec.clone()).await {
            tracing::warn!(job_id = %rec.job_id, error = %f, "maintaining a kept pre-restore copy failed; will retry");
        }
    }
    Ok(())
}

async fn maintain(eng: &Engine, mut rec: KeepRecord) -> Result<(), Failure> {
    // The keeping job first ends (a recovering one may still be deciding).
    if db::jobs::state(&eng.pool, rec.job_id)
        .await?
        .is_some_and(|s| !s.is_final())
    {
        return Ok(());
    }
    let before = rec.archive.clone();
    match rec.archive {
        ArchiveState::Pending => {
            if db::jobs::enqueue_pre_restore_archive(&eng.pool, &rec, &eng.cfg.node).await? {
                tracing::info!(job_id = %rec.job_id, archive_job_id = %rec.archive_job_id, "pre-restore copy: archive job enqueued");
                rec.archive = ArchiveState::Enqueued;
            }
        }
        ArchiveState::Enqueued => match db::jobs::state(&eng.pool, rec.archive_job_id).await? {
            Some(JobState::Succeeded) => rec.archive = ArchiveState::Archived,
            Some(JobState::Cancelled) => rec.archive = ArchiveState::Cancelled,
            Some(JobState::Failed) => {
                tracing::error!(job_id = %rec.job_id, archive_job_id = %rec.archive_job_id, "the pre-restore copy's archive failed; the copy is kept until an operator acts");
                rec.archive = ArchiveState::Failed;
            }
            Some(_) => {}
            // Pruned long after it finished: the snapshot tells.
            None => {
                rec.archive = match db::snapshots::state(&eng.pool, rec.snapshot_id).await? {
                    Some(SnapshotState::Ready) => ArchiveState::Archived,
                    _ => ArchiveState::Pending,
                }
            }
        },
        ArchiveState::Archived | ArchiveState::Cancelled => {
            let age = Utc::now()
                .signed_duration_since(rec.kept_at)
                .to_std()
                .unwrap_or_default();
            if age >= eng.cfg.pre_restore_keep {
                return remove_kept(eng, &rec).await;
            }
        }
        ArchiveState::Failed => {}
    }
    if rec.archive != before {
        let kept = eng.kept.clone();
        blocking(move || {
            kept.write(&rec)
                .map_err(|e| Failure::io("writing a keep record", e))
        })
        .await?;
    }
    Ok(())
}

/// Remove a kept copy past its retention: each side directory (only if it still is
/// the recorded one) is renamed to its trash name in the held parent and deleted
/// without following symlinks; the record goes last. Idempotent.
async fn remove_kept(eng: &Engine, rec: &KeepRecord) -> Result<(), Failure> {
    let parents = reopen_parents(&rec.volumes)?;
    let volumes = held(&rec.volumes, &parents);
    blocking(move || {
        swap::remove_backups(&volumes).map_err(|e| Failure::io("removing a kept copy", e))
    })
    .await?;
    crash_point!("keep.removed");
    let (kept, job) = (eng.kept.clone(), rec.job_id);
    blocking(move || {
        kept.remove(job)
            .map_err(|e| Failure::io("removing a keep record", e))
    })
    .await?;
    nodelock::remove_copy_lock_file(&eng.cfg.state_dir, rec.job_id);
    tracing::info!(job_id = %rec.job_id, "kept pre-restore copy removed after its retention");
    Ok(())
}

/// Parse a retention such as `24h`, `90m`, `2s`, `1d`, `1h30m` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return if secs.is_finite() && secs >= 0.0 {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(format!("invalid duration {s:?}"))
        };
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: a number must precede {unit:?}"))?;
        num.clear();
        let mult = match unit.as_str() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {unit:?} (ms, s, m, h, d)"
                ));
            }
        };
        total += v * mult;
    }
    if !num.is_empty() {
        return Err(format!("invalid duration {s:?}: {num:?} has no unit"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        for bad in ["", "h", "5x", "1h5", "-3", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
