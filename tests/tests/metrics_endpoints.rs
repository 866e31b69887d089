//! Both binaries' `/metrics`, scraped from the real processes: a restore (with verify)
//! runs end to end through `volsnap-worker run --metrics-addr`, then the worker's
//! endpoint shows `volsnap_restore_step_seconds{step}` with at least one observation
//! for every step, and `promtool check metrics` accepts both the worker's and the
//! `volsnap-api` binary's output (the contract's names, types and HELP included).
//!
//! `promtool` comes with Debian's `prometheus` package (.ci/run installs it); without
//! it the promtool checks are skipped with a message, the rest still runs.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use volsnap_e2e::engine::*;
use volsnap_e2e::procs::{Proc, api_binary, free_addr, get_ok};
use volsnap_shared::domain::{JobKind, JobState, SourceKind, VolumeScope};
use volsnap_shared::queue::{self, JobOptions, NewJob};

const WORKER: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");

/// The step names the engine records (worker/src/engine/steps.rs, docs/engine.md).
const STEPS: &[&str] = &[
    "preflight",
    "extract",
    "stop",
    "swap",
    "redeploy",
    "verify",
    "keep",
];

/// `promtool check metrics` on `text` (stdin); panics with its report when it objects.
/// `false` when promtool is not installed.
fn promtool_accepts(what: &str, text: &str) -> bool {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED promtool on {what}: `promtool` is not installed (Debian `prometheus`)");
        return false;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics rejects {what}:\n{}{}\n---- the output ----\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    true
}

/// The value of the series `line_start` (name and labels exactly as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_restore_shows_every_step_and_both_outputs_pass_promtool(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool.clone(), opts, WORKER).await;

    // A running app on one volume, a snapshot of other data, and a restore of it that
    // verifies the result: every step of a restore runs.
    let v = vol(VolumeScope::Stage, "data", "/data");
    let host = env.host_path(&v);
    let source = env.root().join("source");
    write_tree(&source, 3, 2);
    write_tree(&host, 4, 1);
    let w = env
        .add_workload(std::slice::from_ref(&v), SourceKind::Image, false)
        .await;
    let sid = env.make_snapshot(w, &[(v.clone(), source.clone())]).await;
    let c = env.run_container(w, std::slice::from_ref(&v));
    let job = {
        let mut conn = pool.acquire().await.unwrap();
        queue::enqueue_with(
            &mut conn,
            &NewJob {
                kind: JobKind::Restore,
                workload_id: w,
                snapshot_id: Some(sid),
                node: env.node.clone(),
                batch_id: None,
                requested_by: Some("e2e".into()),
            },
            &JobOptions { verify: true },
        )
        .await
        .unwrap()
        .id
    };

    let worker_addr = free_addr();
    let _worker = env.worker_with(None, &["--metrics-addr", &worker_addr.to_string()]);
    let done = env.wait_final(job, Duration::from_secs(60)).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert!(container_running(&c));
    assert_eq!(tree_hash(&host), tree_hash(&source));

    let text = get_ok(&format!("http://{worker_addr}/metrics"), "metrics").await;
    assert!(
        text.contains(
            "# HELP volsnap_restore_step_seconds Time each step of a restore or an undo took on this worker."
        ),
        "{text}"
    );
    assert!(
        text.contains("# TYPE volsnap_restore_step_seconds histogram"),
        "{text}"
    );
    for step in STEPS {
        let n = value(
            &text,
            &format!("volsnap_restore_step_seconds_count{{step=\"{step}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(n >= 1.0, "step {step} never recorded:\n{text}");
        for le in ["0.001", "60", "+Inf"] {
            assert!(
                text.contains(&format!(
                    "volsnap_restore_step_seconds_bucket{{step=\"{step}\",le=\"{le}\"}}"
                )),
                "bucket {le} of {step} missing:\n{text}"
            );
        }
    }
    // Where this restore's time went (printed for the record).
    let took: Vec<String> = STEPS
        .iter()
        .map(|step| {
            let sum = value(
                &text,
                &format!("volsnap_restore_step_seconds_sum{{step=\"{step}\"}}"),
            )
            .unwrap_or(f64::NAN);
            format!("{step} {:.1} ms", sum * 1000.0)
        })
        .collect();
    eprintln!("restore steps: {}", took.join(", "));
    // The process metrics keep their names, labels and types.
    let node = &env.node;
    for (series, ty) in [
        ("volsnap_worker_up", "gauge"),
        ("volsnap_worker_last_heartbeat_timestamp_seconds", "gauge"),
        ("volsnap_worker_running_jobs", "gauge"),
        ("volsnap_worker_jobs_done_total", "counter"),
    ] {
        assert!(
            value(&text, &format!("{series}{{node=\"{node}\"}}")).is_some(),
            "{series}: {text}"
        );
        assert!(text.contains(&format!("# TYPE {series} {ty}")), "{text}");
    }
    assert_eq!(
        value(&text, &format!("volsnap_worker_up{{node=\"{node}\"}}")),
        Some(1.0)
    );
    let promtool = promtool_accepts("the worker's /metrics", &text);

    // The API binary over the same database: the durable counters include the restore.
    let api_addr = free_addr();
    let _api = Proc(
        Command::new(api_binary(WORKER))
            .args(["serve", "--addr", &api_addr.to_string()])
            .env("DATABASE_URL", &env.url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let text = get_ok(&format!("http://{api_addr}/metrics"), "metrics").await;
    assert_eq!(
        value(
            &text,
            "volsnap_jobs_finished_total{kind=\"restore\",outcome=\"succeeded\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "volsnap_jobs_finished_total{kind=\"capture\",outcome=\"failed\"}"
        ),
        Some(0.0),
        "every series has a zero baseline: {text}"
    );
    assert_eq!(
        value(
            &text,
            "volsnap_job_duration_seconds_count{kind=\"restore\",outcome=\"succeeded\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "volsnap_restore_downtime_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert!(
        value(&text, "volsnap_restore_bytes_total").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            &format!("volsnap_worker_last_heartbeat_timestamp_seconds{{node=\"{node}\"}}")
        )
        .is_some(),
        "{text}"
    );
    for (name, ty, help) in [
        (
            "volsnap_jobs_finished_total",
            "counter",
            "Jobs that reached a final state.",
        ),
        (
            "volsnap_job_duration_seconds",
            "histogram",
            "Time from a job's start to its end.",
        ),
        (
            "volsnap_jobs",
            "gauge",
            "Jobs currently in the table, by kind and state.",
        ),
        (
            "volsnap_restore_downtime_seconds",
            "histogram",
            "Time a restore kept the workload's containers stopped.",
        ),
        (
            "volsnap_restore_bytes_total",
            "counter",
            "Bytes written into volumes by restores.",
        ),
        (
            "volsnap_worker_last_heartbeat_timestamp_seconds",
            "gauge",
            "Newest heartbeat of any worker of a node.",
        ),
        (
            "volsnap_api_waiters",
            "gauge",
            "Requests held by ?wait= in this API process.",
        ),
        (
            "volsnap_api_waiter_limit",
            "gauge",
            "The most ?wait= requests held at once.",
        ),
        (
            "volsnap_api_wait_shared_checks_total",
            "counter",
            "Missed-notification checks run (one query each).",
        ),
        (
            "volsnap_api_wait_rereads_total",
            "counter",
            "Job re-reads by waiters after a notification named their job.",
        ),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {ty}\n")),
            "{name}: {text}"
        );
        assert!(
            text.contains(&format!("# HELP {name} {help}\n")),
            "{name}: {text}"
        );
    }
    if promtool {
        promtool_accepts("the API's /metrics", &text);
    }
}
