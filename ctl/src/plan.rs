//! Restore plans from the terminal: `volsnapctl plan WORKLOAD SNAPSHOT`, the plan shown
//! by `restore` before its question, and `batch-restore --plan-only`.
//!
//! A plan is a `plan` job (the API's `POST …/plan`): the worker runs the restore's
//! pre-flight against the current config and compares the live volumes with the
//! snapshot, changing nothing. Its `result` says per volume what a restore would add,
//! change and remove; a refusing pre-flight fails the job with the restore's code.

use serde_json::Value;

use crate::api::{Client, Job, Result, Snapshot, Workload, exit};
use crate::commands::follow;
use crate::term;
use crate::{Output, resolve};

/// Enqueue a plan and follow it to its end (a bar on a terminal).
pub async fn run_plan(client: &Client, w: &Workload, s: &Snapshot) -> Result<Job> {
    let job = client.plan(&w.id, &s.id).await?;
    follow(client, &job.id, &format!("plan {}", w.path())).await
}

/// `volsnapctl plan WORKLOAD SNAPSHOT|latest`: exit 0 when a restore would pass its
/// pre-flight, 1 when it would be refused (or the plan failed).
pub async fn command(client: &Client, out: Output, workload: &str, which: &str) -> Result<u8> {
    let w = resolve::workload(client, workload).await?;
    let s = resolve::snapshot(client, &w, which).await?;
    let j = run_plan(client, &w, &s).await?;
    if out == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&j).expect("serialisable")
        );
    } else {
        println!("{}", render(&w, &s, &j));
    }
    Ok(if j.state == "succeeded" {
        exit::OK
    } else {
        exit::FAILED
    })
}

fn num(v: &Value, path: &str) -> i64 {
    v.pointer(path).and_then(Value::as_i64).unwrap_or(0)
}

/// `N files (size)` of one set of a volume's diff.
fn set_text(v: &Value, set: &str) -> String {
    let files = num(v, &format!("/{set}/files"));
    let dirs = num(v, &format!("/{set}/dirs"));
    let bytes = num(v, &format!("/{set}/bytes"));
    let mut s = format!("{files} files ({})", term::human_bytes(bytes));
    if dirs > 0 {
        s.push_str(&format!(", {dirs} dirs"));
    }
    s
}

/// The plan as people read it: the verdict, a table per volume, sample paths.
pub fn render(w: &Workload, s: &Snapshot, j: &Job) -> String {
    let result = j.extra.get("result").cloned().unwrap_or(Value::Null);
    let mut out = format!(
        "Plan for restoring {} to snapshot {} ({}, {}):\n",
        w.path(),
        s.id,
        s.kind,
        s.created_at
    );
    if j.state != "succeeded" {
        let step = result
            .pointer("/refused/step")
            .and_then(Value::as_str)
            .unwrap_or("-");
        out.push_str(&format!(
            "a restore now would be REFUSED (step {step}): {}\n",
            j.error_text()
                .unwrap_or_else(|| format!("the plan job is {}", j.state))
        ));
        return out;
    }
    let rows = result
        .get("volumes")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .map(|v| {
                    vec![
                        v.get("target")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        set_text(v, "added"),
                        set_text(v, "changed"),
                        set_text(v, "removed"),
                        format!(
                            "{} files ({})",
                            num(v, "/unchanged_files"),
                            term::human_bytes(num(v, "/unchanged_bytes"))
                        ),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&term::table(
        &["volume", "add", "change", "remove", "unchanged"],
        rows,
    ));
    out.push('\n');
    for v in result
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let target = v.get("target").and_then(Value::as_str).unwrap_or("");
        for set in ["added", "changed", "removed"] {
            let samples: Vec<&str> = v
                .pointer(&format!("/{set}/samples"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if !samples.is_empty() {
                out.push_str(&format!("  {target} {set}: {}\n", samples.join(", ")));
            }
        }
    }
    out.push_str("Every pre-flight check passed: a restore now would proceed.\n");
    out
}

/// Counts of one batch item's plan for the table: (add, change, remove).
pub fn counts(j: &Job) -> (String, String, String) {
    let t = j
        .extra
        .get("result")
        .and_then(|r| r.get("totals"))
        .cloned()
        .unwrap_or(Value::Null);
    if t.is_null() {
        return ("-".into(), "-".into(), "-".into());
    }
    let one = |k: &str| {
        format!(
            "{} ({})",
            num(&t, &format!("/{k}_files")),
            term::human_bytes(num(&t, &format!("/{k}_bytes")))
        )
    };
    (one("added"), one("changed"), one("removed"))
}
