//! Named crash points for crash tests. With the cargo feature `failpoints`,
//! `VOLSNAP_CRASH_AT=<point>` aborts the process (no unwinding, no cleanup — like a
//! power cut for the process) when execution reaches that point. Without the feature
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
    "restore.marked",
    "swap.parked",
    "swap.placed",
    "restore.swap.first",
    "restore.swapped",
    "restore.journal.committed",
    // restore, after the commit point (roll forward)
    "restore.markers_cleared",
    "restore.start.first",
    "restore.started",
    "restore.journal.redeployed",
    "restore.journal.archiving",
    "restore.archive.row",
    "restore.archive.written",
    "restore.archive.ready",
    "restore.journal.archived",
    "restore.backups_removed",
    "journal.closed",
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
}
