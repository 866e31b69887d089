//! The single-object commands: listings, one job, capture, restore and undo.

use std::time::{Duration, Instant};

use crate::api::{Client, CtlError, Job, Result, Snapshot, Workload, exit};
use crate::term::{self, AnswerSource};
use crate::{Output, RestoreOpts, resolve};

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serialisable"));
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

pub async fn workloads(
    client: &Client,
    out: Output,
    project: Option<&str>,
    stage: Option<&str>,
) -> Result<u8> {
    let ws = client.workloads(project, stage).await?;
    if out == Output::Json {
        print_json(&ws);
        return Ok(exit::OK);
    }
    let rows = ws
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.path(),
                w.node.clone(),
                w.source_kind.clone(),
                w.volumes
                    .iter()
                    .map(|v| v.target.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    println!(
        "{}",
        term::table(&["id", "workload", "node", "kind", "volumes"], rows)
    );
    Ok(exit::OK)
}

pub async fn snapshots(client: &Client, out: Output, workload: &str, all: bool) -> Result<u8> {
    let w = resolve::workload(client, workload).await?;
    let mut ss = client.snapshots(&w.id).await?;
    if !all {
        ss.retain(|s| s.deleted_at.is_none());
    }
    if out == Output::Json {
        print_json(&ss);
        return Ok(exit::OK);
    }
    let rows = ss
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.kind.clone(),
                s.state.clone(),
                s.size_bytes.map(term::human_bytes).unwrap_or_default(),
                s.created_at.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        term::table(&["id", "kind", "state", "size", "created"], rows)
    );
    Ok(exit::OK)
}

pub async fn jobs(
    client: &Client,
    out: Output,
    state: Option<String>,
    batch: Option<String>,
    kind: Option<String>,
    workload: Option<String>,
    limit: usize,
) -> Result<u8> {
    let mut q: Vec<(&str, String)> = vec![];
    if let Some(s) = state {
        q.push(("state", s));
    }
    if let Some(b) = batch {
        q.push(("batch", b));
    }
    if let Some(k) = kind {
        q.push(("kind", k));
    }
    if let Some(w) = workload {
        q.push(("workload", resolve::workload(client, &w).await?.id));
    }
    let js = client.jobs(&q, limit.max(1)).await?;
    if out == Output::Json {
        print_json(&js);
        return Ok(exit::OK);
    }
    let rows = js.iter().map(job_row).collect();
    println!(
        "{}",
        term::table(
            &[
                "id", "kind", "workload", "state", "phase", "progress", "duration", "error"
            ],
            rows
        )
    );
    Ok(exit::OK)
}

fn job_row(j: &Job) -> Vec<String> {
    vec![
        j.id.clone(),
        j.kind.clone(),
        short(&j.workload_id),
        j.state.clone(),
        j.phase.clone(),
        if j.progress_total > 0 {
            format!(
                "{}/{}",
                term::human_bytes(j.progress_done),
                term::human_bytes(j.progress_total)
            )
        } else {
            String::new()
        },
        term::human_duration(j.duration()),
        j.error_text().unwrap_or_default(),
    ]
}

fn print_job(out: Output, j: &Job) {
    if out == Output::Json {
        print_json(j);
        return;
    }
    let mut rows = vec![
        vec!["id".into(), j.id.clone()],
        vec!["kind".into(), j.kind.clone()],
        vec!["workload".into(), j.workload_id.clone()],
        vec!["snapshot".into(), j.snapshot_id.clone().unwrap_or_default()],
        vec!["state".into(), j.state.clone()],
        vec!["phase".into(), j.phase.clone()],
        vec![
            "progress".into(),
            format!(
                "{} / {}",
                term::human_bytes(j.progress_done),
                term::human_bytes(j.progress_total)
            ),
        ],
        vec!["duration".into(), term::human_duration(j.duration())],
    ];
    if let Some(b) = &j.batch_id {
        rows.push(vec!["batch".into(), b.clone()]);
    }
    if let Some(p) = &j.pre_restore_snapshot_id {
        rows.push(vec!["pre-restore snapshot".into(), p.clone()]);
    }
    if let Some(e) = j.error_text() {
        rows.push(vec!["error".into(), e]);
    }
    if j.extra.get("verify").and_then(serde_json::Value::as_bool) == Some(true) {
        let verified = j
            .extra
            .get("result")
            .and_then(|r| r.pointer("/verify/identical"))
            .and_then(serde_json::Value::as_bool);
        rows.push(vec![
            "verify".into(),
            match verified {
                Some(true) => "the restored volumes equal the snapshot".into(),
                Some(false) => "the restored volumes DIFFER from the snapshot".into(),
                None => "asked (not done yet)".into(),
            },
        ]);
    }
    if j.kind == "plan" && j.state == "succeeded" {
        let (add, change, remove) = crate::plan::counts(j);
        rows.push(vec![
            "plan".into(),
            format!("restorable: add {add}, change {change}, remove {remove}"),
        ]);
    }
    println!("{}", term::table(&["field", "value"], rows));
}

/// Exit code of a final job.
fn outcome_code(j: &Job) -> u8 {
    if j.state == "succeeded" {
        exit::OK
    } else {
        exit::FAILED
    }
}

/// Follow a job with a progress bar (drawn on stderr, only on a terminal) until it is
/// final (polled every 250 ms, so the bar and its rate move smoothly).
pub async fn follow(client: &Client, id: &str, label: &str) -> Result<Job> {
    let pb = term::job_bar(label);
    let mut downtime = Downtime::default();
    let job = loop {
        let j = client.job(id, None).await?;
        downtime.observe(&j);
        term::update_bar(&pb, &j);
        if j.is_final() {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    pb.finish_and_clear();
    Ok(job)
}

pub async fn job(client: &Client, out: Output, id: &str, follow_it: bool) -> Result<u8> {
    let j = if follow_it {
        let j = client.job(id, None).await?;
        let label = format!("{} {}", j.kind, short(&j.id));
        follow(client, id, &label).await?
    } else {
        client.job(id, None).await?
    };
    print_job(out, &j);
    Ok(if follow_it || j.is_final() {
        outcome_code(&j)
    } else {
        exit::OK
    })
}

pub async fn capture(client: &Client, out: Output, workload: &str, wait: bool) -> Result<u8> {
    let w = resolve::workload(client, workload).await?;
    let acc = client.capture(&w.id).await?;
    if !wait {
        if out == Output::Json {
            print_json(&serde_json::json!({"job": acc.job, "snapshot_id": acc.snapshot_id}));
        } else {
            println!(
                "capture of {} queued: job {} → snapshot {}",
                w.path(),
                acc.job.id,
                acc.snapshot_id
            );
        }
        return Ok(exit::OK);
    }
    let j = follow(client, &acc.job.id, &format!("capture {}", w.path())).await?;
    print_job(out, &j);
    if j.state != "succeeded" {
        eprintln!(
            "volsnapctl: capture {}: {}",
            j.state,
            j.error_text().unwrap_or_default()
        );
    }
    Ok(outcome_code(&j))
}

/// What a restore will do, shown before the question.
fn describe_restore(w: &Workload, s: &Snapshot) {
    let rows = vec![
        vec!["workload".into(), format!("{} ({})", w.path(), w.id)],
        vec!["node".into(), w.node.clone()],
        vec![
            "volumes".into(),
            w.volumes
                .iter()
                .map(|v| v.target.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ],
        vec![
            "snapshot".into(),
            format!("{} ({}, {})", s.id, s.kind, s.created_at),
        ],
        vec![
            "size".into(),
            s.size_bytes.map(term::human_bytes).unwrap_or_default(),
        ],
    ];
    eprintln!("{}", term::table(&["restore", ""], rows));
    eprintln!(
        "The workload's containers are stopped for the swap; the current data is kept as a pre-restore snapshot."
    );
}

pub async fn restore(
    client: &Client,
    out: Output,
    workload: &str,
    which: &str,
    opts: &RestoreOpts,
) -> Result<u8> {
    let w = resolve::workload(client, workload).await?;
    let s = resolve::snapshot(client, &w, which).await?;
    restore_resolved(client, out, &w, &s, opts).await
}

async fn restore_resolved(
    client: &Client,
    out: Output,
    w: &Workload,
    s: &Snapshot,
    opts: &RestoreOpts,
) -> Result<u8> {
    // A snapshot of another workload is the API's to refuse (400
    // `snapshot_of_other_workload`, exit 3), like every other restore rule.
    if !opts.yes {
        // The plan first: what the restore would change, or why it would be refused.
        let plan = crate::plan::run_plan(client, w, s).await?;
        eprintln!("{}", crate::plan::render(w, s, &plan));
        if plan.state != "succeeded" {
            eprintln!("volsnapctl: not restoring: the plan says the restore would not succeed");
            return Ok(exit::FAILED);
        }
        describe_restore(w, s);
        term::confirm_typed(
            &format!("Type the workload's name ({}) to restore it: ", w.path()),
            &w.path(),
            AnswerSource::Stdin,
        )?;
    }
    let job = client
        .restore_with(&w.id, &s.id, opts.verify.then_some(true))
        .await?;
    if !opts.wait {
        if out == Output::Json {
            print_json(&job);
        } else {
            println!("restore of {} queued: job {}", w.path(), job.id);
        }
        return Ok(exit::OK);
    }
    let started = Instant::now();
    let j = follow(client, &job.id, &w.path()).await?;
    print_job(out, &j);
    if j.state == "succeeded" {
        eprintln!(
            "restored {} to snapshot {} in {}",
            w.path(),
            short(&s.id),
            term::human_duration(Some(started.elapsed()))
        );
    } else {
        eprintln!(
            "volsnapctl: restore of {} {}: {}",
            w.path(),
            j.state,
            j.error_text().unwrap_or_default()
        );
    }
    Ok(outcome_code(&j))
}

pub async fn undo(client: &Client, out: Output, job_id: &str, opts: &RestoreOpts) -> Result<u8> {
    let j = client.job(job_id, None).await?;
    if j.kind != "restore" && j.kind != "undo" {
        return Err(CtlError::Usage(format!(
            "job {job_id} is a {} job; only restores (and undos) can be undone",
            j.kind
        )));
    }
    if opts.verify {
        return Err(CtlError::Usage(
            "--verify does not apply to undo (it puts back the data the restore displaced)".into(),
        ));
    }
    let w = client.workload(&j.workload_id).await?;
    if !opts.yes {
        eprintln!(
            "Undo {} job {} of {}: its containers are stopped while the data it displaced is put back;\nthe data it restored is kept in turn (undo the undo to go back).",
            j.kind,
            j.id,
            w.path()
        );
        term::confirm_typed(
            &format!("Type the workload's name ({}) to undo: ", w.path()),
            &w.path(),
            AnswerSource::Stdin,
        )?;
    }
    let job = client.undo(&j.id).await?;
    if !opts.wait {
        if out == Output::Json {
            print_json(&job);
        } else {
            println!("undo of {} queued: job {}", w.path(), job.id);
        }
        return Ok(exit::OK);
    }
    let started = Instant::now();
    let done = follow(client, &job.id, &format!("undo {}", w.path())).await?;
    print_job(out, &done);
    if done.state == "succeeded" {
        eprintln!(
            "undid job {} of {} in {}",
            short(&j.id),
            w.path(),
            term::human_duration(Some(started.elapsed()))
        );
    } else {
        eprintln!(
            "volsnapctl: undo of {} {}: {}",
            w.path(),
            done.state,
            done.error_text().unwrap_or_default()
        );
    }
    Ok(outcome_code(&done))
}

/// The stopped window of a restore as seen from outside: from the first poll that
/// shows it quiescing (or later) to the first that shows it past redeploying. Polls are
/// 0.5 s apart at most, so this is an estimate; the exact figure is the worker's
/// `volsnap_restore_downtime_seconds`.
#[derive(Debug, Default, Clone)]
pub struct Downtime {
    down: Option<Instant>,
    up: Option<Instant>,
}

impl Downtime {
    pub fn observe(&mut self, j: &Job) {
        let stopped = matches!(j.phase.as_str(), "quiescing" | "swapping" | "redeploying")
            || j.past_point_of_no_return;
        let now = Instant::now();
        if self.down.is_none() && stopped && !j.is_final() {
            self.down = Some(now);
        }
        if self.down.is_some()
            && self.up.is_none()
            && (j.is_final()
                || matches!(
                    j.phase.as_str(),
                    "archiving pre-restore copy" | "cleaning up"
                ))
        {
            self.up = Some(now);
        }
    }

    pub fn get(&self) -> Option<Duration> {
        Some(self.up?.duration_since(self.down?))
    }
}
