//! Verification of a restore (`"verify": true`, issue 12): right after the swap's
//! commit point and before the redeploy — the app is still stopped, so nothing but the
//! restore has written the volumes — compare every restored volume with the snapshot
//! using the plan's diff engine ([`super::plan::diff_held`], through the held parents
//! and the swapped-in directories' recorded identities).
//!
//! The job carries on to its normal end either way (redeploy, pre-restore snapshot):
//! a mismatch does not undo the swap. It then fails with `verify_mismatch` and a
//! summary, its `result` holds the per-volume differences, and the pre-restore snapshot
//! it kept is the way back (`undo`). Verification adds its comparison time to the
//! downtime. A crash during it is recovered like any crash after the commit point
//! (rolled forward): the job then ends without a verification.

use std::fs::File;
use std::sync::Arc;

use serde::Serialize;
use volsnap_archive::diff::VolumeDiff;
use volsnap_shared::failure;
use volsnap_shared::queue::JobContext;

use super::context::Engine;
use super::dirs::ParentDir;
use super::error::Failure;
use super::journal::{Journal, Outcome};
use super::plan::{self, DiffFailure, Side, Totals};
use super::restore::{self, Plan};

/// What the verification of a restore found (`jobs.result.verify`).
#[derive(Debug, Serialize)]
pub struct Verification {
    /// True when every restored volume equals the snapshot.
    pub identical: bool,
    pub volumes: Vec<VolumeDiff>,
    pub totals: Totals,
}

/// Verify the swapped-in volumes when the job asks for it. `None`: not asked, or the
/// volumes equal the snapshot. `Some(failure)`: the job must end failed with it once
/// the rest of the restore (redeploy, pre-restore snapshot) is done.
#[tracing::instrument(skip_all, fields(job_id = %ctx.id()))]
pub async fn after_swap(
    eng: &Engine,
    ctx: &JobContext,
    plan: &Plan,
    j: &Journal,
    parents: &[Arc<ParentDir>],
) -> Option<Failure> {
    if !ctx.job.verify {
        return None;
    }
    let _ = ctx.set_phase("verifying restore").await;
    let volumes = restore::held(&j.volumes, parents);
    inject_corruption(&volumes);
    let file = match File::open(&plan.archive) {
        Ok(f) => f,
        Err(e) => {
            return Some(not_verified(Failure::io("opening the snapshot archive", e)));
        }
    };
    let summary = match plan::diff_held(
        eng,
        ctx,
        file,
        plan.expected_sha256.clone(),
        volumes,
        Side::Restored,
    )
    .await
    {
        Ok(s) => s,
        // Past the commit point a stop cannot interrupt the restore: it goes on to
        // its end, unverified.
        Err(DiffFailure::Stop(s)) => {
            return Some(not_verified(Failure::new(
                failure::INTERNAL,
                format!("the verification was interrupted ({s:?})"),
            )));
        }
        Err(DiffFailure::Refused(_, f)) => return Some(not_verified(f)),
    };
    let identical = summary.volumes.iter().all(VolumeDiff::is_identical);
    let totals = Totals::of(&summary.volumes);
    let message = (!identical).then(|| mismatch_message(&summary.volumes, &totals));
    let v = Verification {
        identical,
        totals,
        volumes: summary.volumes,
    };
    let result = serde_json::json!({ "verify": v });
    if let Err(e) = ctx.set_result(&result).await {
        tracing::warn!(error = %e, "recording the verification failed");
    }
    if identical {
        tracing::info!("the restored volumes equal the snapshot");
        return None;
    }
    let message = message.unwrap_or_default();
    tracing::error!(%message, "the restored volumes differ from the snapshot");
    Some(Failure::new(failure::VERIFY_MISMATCH, message))
}

fn not_verified(f: Failure) -> Failure {
    tracing::error!(error = %f, "the restore could not be verified");
    Failure {
        message: format!(
            "the data was restored but could not be verified: {}",
            f.message
        ),
        ..f
    }
}

fn mismatch_message(volumes: &[VolumeDiff], t: &Totals) -> String {
    let mut first: Vec<String> = vec![];
    for v in volumes {
        for (what, set) in [
            ("added", &v.added),
            ("changed", &v.changed),
            ("removed", &v.removed),
        ] {
            if let Some(p) = set.samples.first()
                && first.len() < 3
            {
                // The restore should have made the volume equal to the snapshot; name
                // the difference as seen from the snapshot.
                let seen = match what {
                    "added" => "missing",
                    "removed" => "unexpected",
                    _ => "different",
                };
                first.push(format!("{}: {seen} {p}", v.target));
            }
        }
    }
    format!(
        "the restored volumes differ from the snapshot: {} file(s) missing, {} different, {} unexpected (e.g. {}); the previous data is kept as the job's pre-restore snapshot",
        t.added_files,
        t.changed_files,
        t.removed_files,
        first.join(", ")
    )
}

/// The job's outcome once the restore has finished: a verification failure replaces a
/// success (and is added to a failure's message).
pub fn outcome(finished: Outcome, verified: Option<Failure>) -> Outcome {
    let Some(f) = verified else {
        return finished;
    };
    match finished {
        Outcome::Succeeded => Outcome::Failed {
            code: f.code.into(),
            message: f.message,
        },
        Outcome::Failed { code, message } => Outcome::Failed {
            code,
            message: format!("{message}; also: {}", f.message),
        },
        other => other,
    }
}

/// Failpoint (feature `failpoints`): `VOLSNAP_INJECT=verify.corrupt` overwrites the
/// start of the first regular file in the first restored volume's top directory, just
/// before the verification — what a faulty disk or a buggy swap would leave.
#[cfg(feature = "failpoints")]
fn inject_corruption(volumes: &[(super::journal::PlannedVolume, Arc<ParentDir>)]) {
    use rustix::fs::{Dir, FileType, Mode, OFlags};
    if std::env::var("VOLSNAP_INJECT").as_deref() != Ok("verify.corrupt") {
        return;
    }
    let Some((v, p)) = volumes.first() else {
        return;
    };
    let Ok(dir) = p.open_dir(v.name(), v.new_id) else {
        return;
    };
    let Ok(mut it) = Dir::read_from(&dir) else {
        return;
    };
    let mut names: Vec<std::ffi::CString> = vec![];
    while let Some(Ok(e)) = it.next() {
        if e.file_type() == FileType::RegularFile {
            names.push(e.file_name().to_owned());
        }
    }
    names.sort();
    let Some(name) = names.first() else {
        return;
    };
    let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if let Ok(fd) = rustix::fs::openat(&dir, name.as_c_str(), flags, Mode::empty()) {
        let _ = rustix::io::pwrite(&fd, b"volsnap-injected-corruption", 0);
        tracing::warn!(volume = %v.spec.target, file = ?name, "failpoint: corrupted a restored file");
    }
}

#[cfg(not(feature = "failpoints"))]
fn inject_corruption(_: &[(super::journal::PlannedVolume, Arc<ParentDir>)]) {}
