//! Named crash points for crash tests. With the cargo feature `failpoints`,
//! `VOLSNAP_CRASH_AT=<point>` aborts the process (no unwinding, no cleanup — like a
//! power cut for the process) when execution reaches that point. Without the feature
//! the macro compiles to nothing.

/// Every point, in execution order. `volsnap-worker failpoints` prints this list;
/// the engine asserts (in debug builds) that each point it hits is listed here.
pub const POINTS: &[&str] = &[];

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
