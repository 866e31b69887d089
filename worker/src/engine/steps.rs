//! Where a restore's time goes: `volsnap_restore_step_seconds{step}`, a histogram of
//! how long each named step of a restore (or an undo) took on this worker, served on
//! the worker's own `/metrics` (`--metrics-addr`).
//!
//! A step is timed by a guard taken at its start ([`Step::start`]) and recorded when
//! the guard is dropped, so an early return (a failure, a stop) still counts the time
//! the step took. The names are a contract (dashboards and alerts use them), listed in
//! [`Step::ALL`] and in docs/engine.md.
//!
//! Without an installed recorder (no `--metrics-addr`, in-process tests) recording is
//! a no-op of the `metrics` facade.

use std::time::Instant;

/// The histogram's name.
pub const METRIC: &str = "volsnap_restore_step_seconds";
/// Its HELP text.
pub const HELP: &str = "Time each step of a restore or an undo took on this worker.";
/// Upper bounds (seconds): 1 ms to 60 s, roughly ×2.5 apart.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// One named step of a restore or an undo, in the order a restore runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Decide everything from the database and the config; nothing touched.
    Preflight,
    /// Read the archive, check its checksum in the same read, unpack into staging
    /// (the workload still runs). Restores only: an undo has nothing to unpack.
    Extract,
    /// Stop the workload's containers (the downtime starts).
    Stop,
    /// Re-check identities, exchange the volumes, journal the commit point.
    Swap,
    /// Start the containers again and wait until they run (the downtime ends).
    Redeploy,
    /// Compare the restored volumes with the snapshot (only restores asked to verify).
    Verify,
    /// Keep the displaced data (the keep record; its archive runs as its own job).
    Keep,
}

impl Step {
    pub const ALL: &'static [Step] = &[
        Step::Preflight,
        Step::Extract,
        Step::Stop,
        Step::Swap,
        Step::Redeploy,
        Step::Verify,
        Step::Keep,
    ];

    /// The `step` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::Extract => "extract",
            Step::Stop => "stop",
            Step::Swap => "swap",
            Step::Redeploy => "redeploy",
            Step::Verify => "verify",
            Step::Keep => "keep",
        }
    }

    /// Start timing this step; the time is recorded when the guard is dropped.
    pub fn start(self) -> StepTimer {
        StepTimer {
            step: self,
            since: Instant::now(),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Times one step from [`Step::start`] until dropped (or until [`StepTimer::next`]).
#[must_use = "a step is timed until this guard is dropped"]
#[derive(Debug)]
pub struct StepTimer {
    step: Step,
    since: Instant,
}

impl StepTimer {
    /// End this step and start timing `step` from now.
    pub fn next(&mut self, step: Step) {
        self.record();
        self.step = step;
        self.since = Instant::now();
    }

    fn record(&self) {
        metrics::histogram!(METRIC, "step" => self.step.as_str())
            .record(self.since.elapsed().as_secs_f64());
    }
}

impl Drop for StepTimer {
    fn drop(&mut self) {
        self.record();
    }
}

/// Give the histogram its HELP text in the current recorder.
pub fn describe() {
    metrics::describe_histogram!(METRIC, HELP);
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

    #[test]
    fn names_are_distinct_and_prometheus_safe() {
        let mut seen = std::collections::HashSet::new();
        for s in Step::ALL {
            assert!(seen.insert(s.as_str()), "{s} twice");
            assert!(
                s.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
    }

    #[test]
    fn a_guard_records_once_per_step_into_the_buckets() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(METRIC.into()), BUCKETS)
            .unwrap()
            .build_recorder();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let mut t = Step::Stop.start();
            t.next(Step::Swap);
            drop(t);
            {
                let _t = Step::Keep.start();
            }
        });
        let out = recorder.handle().render();
        assert!(out.contains(&format!("# HELP {METRIC} {HELP}")), "{out}");
        assert!(out.contains(&format!("# TYPE {METRIC} histogram")), "{out}");
        for step in ["stop", "swap", "keep"] {
            assert!(
                out.contains(&format!("{METRIC}_count{{step=\"{step}\"}} 1")),
                "{step}: {out}"
            );
            assert!(
                out.contains(&format!("{METRIC}_bucket{{step=\"{step}\",le=\"0.001\"}}")),
                "{out}"
            );
            assert!(
                out.contains(&format!("{METRIC}_bucket{{step=\"{step}\",le=\"60\"}}")),
                "{out}"
            );
        }
        assert!(!out.contains("step=\"preflight\""), "{out}");
    }
}
