//! Named crash points for crash tests. With the cargo feature `failpoints`,
//! `VOLSNAP_CRASH_AT=<point>` aborts the process (no unwinding, no cleanup — like a
//! power cut for the process) when execution reaches that point, and
//! `VOLSNAP_PAUSE_AT=<point>` (with `VOLSNAP_PAUSE_FILE`) holds it there until the test
//! lets it go. Without the feature
//! the macro compiles to nothing.

/// Every point, in execution order. `volsnap-worker failpoints` prints this list;
/// the engine asserts (in debug builds) that each point it hits is listed here.
pub const POINTS: &[&str] = &[
    // restore, before the point of no return (targets untouched)
    "restore.journal.staging",
    "restore.extract.half",
    "restore.extracted",
    // restore, after it: quiesce and swap (roll back before the commit point)
    "restore.journal.quiescing",
    "restore.stop.first",
    "restore.stopped",
    "restore.journal.swapping",
    "swap.parked",
    "swap.placed",
    "restore.swap.first",
    "restore.swapped",
    "restore.journal.committed",
    // restore, after the commit point (roll forward)
    "restore.swap.checked",
    "restore.start.first",
    "restore.started",
    "restore.journal.redeployed",
    "restore.kept",
    "journal.closed",
    // the background archive of a kept pre-restore copy (its own job)
    "archive.row",
    "archive.written",
    "archive.ready",
    "archive.linked",
    "archive.recorded",
    // removal of a kept copy past its retention (maintenance)
    "keep.trashed",
    "keep.removed",
    // undo by directory (quiesce, swap and redeploy are the restore's steps)
    "undo.journal.quiescing",
    "undo.stopped",
    "undo.journal.swapping",
    "undo.swapped",
    "undo.journal.committed",
    "undo.started",
    "undo.kept",
    "undo.released",
    // capture
    "capture.journal",
    "capture.stopped",
    "capture.written",
    "capture.started",
    "capture.ready",
    // recovery itself
    "recovery.begin",
    "recovery.swapped_back",
    "recovery.rolled_back",
    "recovery.capture",
    "recovery.finished",
];

/// Abort here if `VOLSNAP_CRASH_AT` names this point (feature `failpoints` only).
#[macro_export]
macro_rules! crash_point {
    ($name:expr) => {{
        #[cfg(feature = "failpoints")]
        $crate::failpoints::hit($name);
    }};
}

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    debug_assert!(
        POINTS.contains(&name),
        "crash point {name:?} is not listed in POINTS"
    );
    if std::env::var("VOLSNAP_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("volsnap: VOLSNAP_CRASH_AT={name}: aborting");
        std::process::abort();
    }
    if std::env::var("VOLSNAP_PAUSE_AT").is_ok_and(|v| v == name) {
        pause(name);
    }
}

/// `VOLSNAP_PAUSE_AT=<point>` with `VOLSNAP_PAUSE_FILE=<path>`: at that point, create
/// `<path>.reached` and block until `<path>.go` exists (at most 5 minutes; with
/// `VOLSNAP_PAUSE_ONCE` set, only the first hit pauses). Tests use it
/// to change the world between two steps (e.g. swap a directory for a symlink).
#[cfg(feature = "failpoints")]
fn pause(name: &str) {
    let Ok(base) = std::env::var("VOLSNAP_PAUSE_FILE") else {
        return;
    };
    let reached = format!("{base}.reached");
    // With VOLSNAP_PAUSE_ONCE set, only the first hit in this run pauses.
    if std::env::var_os("VOLSNAP_PAUSE_ONCE").is_some() && std::path::Path::new(&reached).exists() {
        return;
    }
    eprintln!("volsnap: VOLSNAP_PAUSE_AT={name}: waiting for {base}.go");
    let _ = std::fs::write(&reached, name);
    let go = std::path::PathBuf::from(format!("{base}.go"));
    let wait = move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while !go.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // On a runtime worker thread, hand the thread's other tasks to the rest of the
    // runtime first: the paused process goes on running its other jobs.
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}
