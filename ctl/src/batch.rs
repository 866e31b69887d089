//! `volsnapctl batch-restore`: many restores, a canary first if asked, followed with a
//! bar per running job and an overall bar, ending with a table and an exit code.
//!
//! The batch goes to the API's `POST /api/restores` (one request per stage: the canary,
//! then the rest), so `--max-parallel` and `--stop-after-failures` are enforced by the
//! queue, and the web UI and `jobs --batch` see the same batch. Ctrl-C stops submitting
//! (a request already sent is waited for, so every submitted item is accounted for),
//! asks whether to cancel the queued rest, and ends with the same final table.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::api::{BatchItem, Client, CtlError, Job, Result, Workload, exit};
use crate::commands::Downtime;
use crate::term::{self, AnswerSource};
use crate::{Output, resolve};

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// A file of items, or `-` for standard input: CSV lines `workload,snapshot` (an
    /// optional header line `workload,snapshot`) or JSON lines
    /// `{"workload": …, "snapshot": …}`; `snapshot` may be `latest`.
    #[arg(conflicts_with = "select", required_unless_present = "select")]
    pub file: Option<String>,
    /// Pick workloads by filter instead of a file: `project=P,stage=S,node=N` (any of
    /// them); needs --latest.
    #[arg(long, requires = "latest")]
    pub select: Option<String>,
    /// Restore each workload's newest ready snapshot (for --select, or file lines
    /// without a snapshot).
    #[arg(long)]
    pub latest: bool,
    /// At most this many of the batch's restores run at once (enforced by the queue).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel: Option<u32>,
    /// Once this many restores have failed, the batch's queued rest is cancelled.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub stop_after_failures: Option<u32>,
    /// Restore the first N items first; go on with the rest only if all N succeed.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub canary: Option<u32>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// What Ctrl-C does with the batch's queued restores: ask, cancel them, or keep them.
    #[arg(long, value_enum, default_value_t = OnInterrupt::Ask)]
    pub on_interrupt: OnInterrupt,
    /// Only plan every item (a dry run per item, changing nothing; no confirmation):
    /// a table of what each restore would add, change and remove, or why it would be
    /// refused. Exit 0 only if every restore would pass its pre-flight.
    #[arg(long, conflicts_with_all = ["canary", "max_parallel", "stop_after_failures"])]
    pub plan_only: bool,
    /// Verify every restore against its snapshot (`verify_mismatch` otherwise).
    #[arg(long, conflicts_with = "plan_only")]
    pub verify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnInterrupt {
    Ask,
    Cancel,
    Keep,
}

/// Consecutive failed polls of a submitted batch (1 s apart) before giving up on
/// following it; the final table is printed either way.
const MAX_POLL_FAILURES: u32 = 30;

/// One line of the batch, resolved.
#[derive(Debug, Clone)]
struct Item {
    workload: Workload,
    snapshot_id: String,
}

/// What became of an item.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    workload: String,
    workload_id: String,
    snapshot_id: String,
    /// succeeded | failed | cancelled | rejected | not submitted | queued | running |
    /// unknown (lost contact with the API)
    outcome: String,
    job_id: Option<String>,
    batch_id: Option<String>,
    duration_secs: Option<f64>,
    /// Observed stopped window (see `Downtime`).
    downtime_secs: Option<f64>,
    error: Option<String>,
}

pub async fn run(client: &Client, out: Output, a: BatchArgs) -> Result<u8> {
    let answers = if a.file.as_deref() == Some("-") {
        AnswerSource::Tty
    } else {
        AnswerSource::Stdin
    };
    let items = load_items(client, &a).await?;
    if items.is_empty() {
        return Err(CtlError::Usage("the batch has no items".into()));
    }
    if items.len() > 1000 {
        return Err(CtlError::Usage(format!(
            "the batch has {} items; the API takes at most 1000 at once",
            items.len()
        )));
    }
    if a.plan_only {
        return plan_only(client, out, &items).await;
    }
    if !a.yes {
        let rows = items
            .iter()
            .map(|i| {
                vec![
                    i.workload.path(),
                    i.snapshot_id.clone(),
                    i.workload.node.clone(),
                ]
            })
            .collect();
        eprintln!("{}", term::table(&["workload", "snapshot", "node"], rows));
        let canary = a
            .canary
            .map(|n| format!(", the first {n} as a canary"))
            .unwrap_or_default();
        eprintln!(
            "{} restores{canary}. Each stops its workload's containers for the swap and keeps the current data as a pre-restore snapshot.",
            items.len()
        );
        term::confirm_typed(
            &format!(
                "Type the number of restores ({}) to start them: ",
                items.len()
            ),
            &items.len().to_string(),
            answers,
        )?;
    }

    // Ctrl-C: each press is one message; the first stops submitting, the second stops
    // waiting.
    let (tx, mut interrupts) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });

    let mut run = Run::new(client, items.len() as u64, a.on_interrupt, answers);
    run.verify = a.verify;
    let stages: Vec<&[Item]> = match a.canary {
        Some(n) if (n as usize) < items.len() => {
            let (c, rest) = items.split_at(n as usize);
            vec![c, rest]
        }
        _ => vec![&items[..]],
    };
    let mut outcomes: Vec<Outcome> = vec![];
    let mut stopped_why: Option<&str> = None;
    for (i, stage) in stages.iter().enumerate() {
        if let Some(why) = stopped_why {
            outcomes.extend(stage.iter().map(|it| not_submitted(it, why)));
            continue;
        }
        let is_canary = a.canary.is_some() && stages.len() > 1 && i == 0;
        let stage_out = run
            .stage(
                stage,
                a.max_parallel,
                a.stop_after_failures,
                &mut interrupts,
            )
            .await;
        let stage_out = match stage_out {
            Ok(o) => o,
            Err(e) if outcomes.is_empty() => return Err(e),
            Err(e) => {
                // A later stage was refused: report what ran, then the refusal.
                eprintln!("volsnapctl: {e}");
                outcomes.extend(stage.iter().map(|it| not_submitted(it, "batch refused")));
                stopped_why = Some("batch refused");
                continue;
            }
        };
        let all_ok = stage_out.iter().all(|o| o.outcome == "succeeded");
        outcomes.extend(stage_out);
        if run.interrupted {
            stopped_why = Some("interrupted");
        } else if is_canary && !all_ok {
            stopped_why = Some("canary failed");
            run.say("canary failed: the rest of the batch is not submitted");
        }
    }
    run.overall.finish_and_clear();
    let _ = run.mp.clear();
    report(out, &outcomes, &run.batch_ids, run.interrupted);
    Ok(if outcomes.iter().all(|o| o.outcome == "succeeded") {
        exit::OK
    } else {
        exit::FAILED
    })
}

fn not_submitted(it: &Item, why: &str) -> Outcome {
    Outcome {
        workload: it.workload.path(),
        workload_id: it.workload.id.clone(),
        snapshot_id: it.snapshot_id.clone(),
        outcome: "not submitted".into(),
        job_id: None,
        batch_id: None,
        duration_secs: None,
        downtime_secs: None,
        error: Some(why.into()),
    }
}

/// Parse `--select`'s `key=value,…`.
fn parse_select(s: &str) -> Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(CtlError::Usage(format!(
                "--select: {part:?} is not key=value"
            )));
        };
        let k = k.trim();
        if !matches!(k, "project" | "stage" | "node") {
            return Err(CtlError::Usage(format!(
                "--select: unknown key {k:?} (project, stage, node)"
            )));
        }
        m.insert(k.to_owned(), v.trim().to_owned());
    }
    if m.is_empty() {
        return Err(CtlError::Usage(
            "--select needs at least one key=value".into(),
        ));
    }
    Ok(m)
}

/// One raw line: (workload, snapshot or None for latest).
fn parse_line(line: &str, latest: bool, n: usize) -> Result<Option<(String, Option<String>)>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (w, s) = if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| CtlError::Usage(format!("line {n}: not JSON: {e}")))?;
        let get = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| v.get(*k).and_then(|x| x.as_str()).map(str::to_owned))
        };
        let w = get(&["workload", "workload_id"])
            .ok_or_else(|| CtlError::Usage(format!("line {n}: no \"workload\"")))?;
        (w, get(&["snapshot", "snapshot_id"]))
    } else {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if n == 1 && fields.first() == Some(&"workload") {
            return Ok(None); // header
        }
        match fields[..] {
            [w] => (w.to_owned(), None),
            [w, s] => (w.to_owned(), (!s.is_empty()).then(|| s.to_owned())),
            _ => {
                return Err(CtlError::Usage(format!(
                    "line {n}: expected workload,snapshot — got {} fields",
                    fields.len()
                )));
            }
        }
    };
    let s = match s {
        Some(s) if s == "latest" => None,
        Some(s) => Some(s),
        None if latest => None,
        None => {
            return Err(CtlError::Usage(format!(
                "line {n}: no snapshot (give one, `latest`, or --latest)"
            )));
        }
    };
    Ok(Some((w, s)))
}

/// Every item resolved to ids before anything is submitted: a bad line submits nothing.
async fn load_items(client: &Client, a: &BatchArgs) -> Result<Vec<Item>> {
    let all = client.workloads(None, None).await?;
    let by_key: HashMap<String, &Workload> = all
        .iter()
        .flat_map(|w| [(w.id.clone(), w), (w.path(), w)])
        .collect();
    let mut raw: Vec<(Workload, Option<String>)> = vec![];
    if let Some(sel) = &a.select {
        let m = parse_select(sel)?;
        for w in &all {
            let ok = m.get("project").is_none_or(|p| *p == w.project)
                && m.get("stage").is_none_or(|s| *s == w.stage)
                && m.get("node").is_none_or(|n| *n == w.node);
            if ok {
                raw.push((w.clone(), None));
            }
        }
    } else {
        let file = a.file.as_deref().expect("clap requires FILE or --select");
        let text = if file == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CtlError::Usage(format!("reading standard input: {e}")))?;
            s
        } else {
            std::fs::read_to_string(PathBuf::from(file))
                .map_err(|e| CtlError::Usage(format!("cannot read {file}: {e}")))?
        };
        let mut bad = vec![];
        for (i, line) in text.lines().enumerate() {
            match parse_line(line, a.latest, i + 1)? {
                None => {}
                Some((w, s)) => match by_key.get(&w) {
                    Some(wl) => raw.push(((*wl).clone(), s)),
                    None => bad.push(format!("line {}: no workload {w}", i + 1)),
                },
            }
        }
        if !bad.is_empty() {
            return Err(CtlError::Usage(format!(
                "nothing was submitted:\n  {}",
                bad.join("\n  ")
            )));
        }
    }
    let mut items = vec![];
    for (w, s) in raw {
        let snapshot_id = match s {
            Some(s) => s,
            None => resolve::snapshot(client, &w, "latest").await?.id,
        };
        items.push(Item {
            workload: w,
            snapshot_id,
        });
    }
    Ok(items)
}

/// The state of a batch run across its stages.
struct Run<'a> {
    client: &'a Client,
    mp: MultiProgress,
    overall: ProgressBar,
    bars: HashMap<String, ProgressBar>,
    downtime: HashMap<String, Downtime>,
    batch_ids: Vec<String>,
    interrupted: bool,
    on_interrupt: OnInterrupt,
    answers: AnswerSource,
    /// Ask for every restore to be verified.
    verify: bool,
}

impl<'a> Run<'a> {
    fn new(
        client: &'a Client,
        total: u64,
        on_interrupt: OnInterrupt,
        answers: AnswerSource,
    ) -> Self {
        let mp = MultiProgress::new();
        let overall = mp.add(term::overall_bar(total));
        overall.enable_steady_tick(Duration::from_millis(250));
        Run {
            client,
            mp,
            overall,
            bars: HashMap::new(),
            downtime: HashMap::new(),
            batch_ids: vec![],
            interrupted: false,
            on_interrupt,
            answers,
            verify: false,
        }
    }

    /// A line above the bars; on stderr as such when no bars are drawn (not a
    /// terminal), so logs of scripted runs keep it.
    fn say(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if self.mp.is_hidden() {
            eprintln!("{msg}");
        } else {
            let _ = self.mp.println(msg);
        }
    }

    /// Submit one stage as one API batch and follow it until every job is final.
    async fn stage(
        &mut self,
        items: &[Item],
        max_parallel: Option<u32>,
        stop_after_failures: Option<u32>,
        interrupts: &mut mpsc::UnboundedReceiver<()>,
    ) -> Result<Vec<Outcome>> {
        let req: Vec<BatchItem> = items
            .iter()
            .map(|i| BatchItem {
                workload_id: i.workload.id.clone(),
                snapshot_id: i.snapshot_id.clone(),
                verify: self.verify.then_some(true),
            })
            .collect();
        // Not raced with Ctrl-C: once sent, its answer says what was enqueued.
        let acc = self
            .client
            .batch_restore(&req, max_parallel, stop_after_failures)
            .await?;
        self.batch_ids.push(acc.batch_id.clone());
        self.overall.set_message(format!("batch {}", acc.batch_id));
        // Presses during the request count now.
        if interrupts.try_recv().is_ok() {
            self.on_interrupt_pressed(&acc.batch_id).await;
        }

        let names: HashMap<&str, &Item> =
            items.iter().map(|i| (i.workload.id.as_str(), i)).collect();
        let mut finished: HashMap<String, Job> = HashMap::new();
        let mut jobs: Vec<Job> = vec![];
        let mut poll_failures = 0u32;
        let rejected = acc
            .items
            .iter()
            .filter(|o| o.job_id.is_none() || o.status != 202)
            .count();
        self.overall.inc(rejected as u64);
        loop {
            if acc.accepted == 0 {
                break;
            }
            // The batch is submitted: from here on an API hiccup must not lose the
            // report. Retry for a while, then report what is known.
            let st = match self.client.batch(&acc.batch_id).await {
                Ok(st) => {
                    poll_failures = 0;
                    st
                }
                Err(e) => {
                    poll_failures += 1;
                    if poll_failures > MAX_POLL_FAILURES {
                        self.say(format!("giving up following batch {}: {e}", acc.batch_id));
                        break;
                    }
                    self.say(format!("following the batch: {e} (retrying)"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for j in &st.jobs {
                self.downtime.entry(j.id.clone()).or_default().observe(j);
                let name = names
                    .get(j.workload_id.as_str())
                    .map(|i| i.workload.path())
                    .unwrap_or_else(|| j.workload_id.clone());
                if j.is_final() {
                    if !finished.contains_key(&j.id) {
                        if let Some(pb) = self.bars.remove(&j.id) {
                            pb.finish_and_clear();
                            self.mp.remove(&pb);
                        }
                        self.overall.inc(1);
                        let line = match j.state.as_str() {
                            "succeeded" => format!(
                                "✔ {name} succeeded in {}",
                                term::human_duration(j.duration())
                            ),
                            s => format!(
                                "✘ {name} {s}{}",
                                j.error_text().map(|e| format!(": {e}")).unwrap_or_default()
                            ),
                        };
                        self.say(line);
                        finished.insert(j.id.clone(), j.clone());
                    }
                } else if j.state == "running" {
                    let pb = self
                        .bars
                        .entry(j.id.clone())
                        .or_insert_with(|| self.mp.add(term::job_bar(&name)));
                    term::update_bar(pb, j);
                }
            }
            jobs = st.jobs;
            if st.done {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                Some(()) = interrupts.recv() => {
                    if self.interrupted {
                        // Second press: stop waiting; report what is known.
                        self.say("second Ctrl-C: not waiting for the running restores");
                        break;
                    }
                    self.on_interrupt_pressed(&acc.batch_id).await;
                }
            }
        }
        for pb in self.bars.drain() {
            pb.1.finish_and_clear();
            self.mp.remove(&pb.1);
        }
        // One outcome per item, in request order.
        let by_id: HashMap<&str, &Job> = jobs.iter().map(|j| (j.id.as_str(), j)).collect();
        Ok(acc
            .items
            .iter()
            .zip(items)
            .map(|(o, it)| {
                let job = o
                    .job_id
                    .as_deref()
                    .filter(|_| o.status == 202)
                    .and_then(|id| by_id.get(id).copied());
                let accepted = o.status == 202 && o.job_id.is_some();
                match job {
                    None if accepted => Outcome {
                        workload: it.workload.path(),
                        workload_id: it.workload.id.clone(),
                        snapshot_id: it.snapshot_id.clone(),
                        outcome: "unknown".into(),
                        job_id: o.job_id.clone(),
                        batch_id: Some(acc.batch_id.clone()),
                        duration_secs: None,
                        downtime_secs: None,
                        error: Some(format!(
                            "lost contact with the API; see `volsnapctl jobs --batch {}`",
                            acc.batch_id
                        )),
                    },
                    Some(j) => Outcome {
                        workload: it.workload.path(),
                        workload_id: it.workload.id.clone(),
                        snapshot_id: it.snapshot_id.clone(),
                        outcome: j.state.clone(),
                        job_id: Some(j.id.clone()),
                        batch_id: Some(acc.batch_id.clone()),
                        duration_secs: j.duration().map(|d| d.as_secs_f64()),
                        downtime_secs: self
                            .downtime
                            .get(&j.id)
                            .and_then(Downtime::get)
                            .map(|d| d.as_secs_f64()),
                        error: j.error_text(),
                    },
                    None => Outcome {
                        workload: it.workload.path(),
                        workload_id: it.workload.id.clone(),
                        snapshot_id: it.snapshot_id.clone(),
                        outcome: "rejected".into(),
                        job_id: o.job_id.clone(),
                        batch_id: Some(acc.batch_id.clone()),
                        duration_secs: None,
                        downtime_secs: None,
                        error: Some(match &o.error {
                            Some(e) => format!("{} {}: {}", o.status, e.code, e.message),
                            None => format!("{}", o.status),
                        }),
                    },
                }
            })
            .collect())
    }

    /// The first Ctrl-C: stop submitting, and cancel the queued rest if so decided.
    async fn on_interrupt_pressed(&mut self, batch_id: &str) {
        self.interrupted = true;
        let cancel = match self.on_interrupt {
            OnInterrupt::Cancel => true,
            OnInterrupt::Keep => false,
            OnInterrupt::Ask => {
                let answers = self.answers;
                let ans = self.mp.suspend(|| {
                    term::ask(
                        "\nInterrupted: no more restores will be submitted. Cancel this batch's queued restores too? [y/N] ",
                        answers,
                    )
                });
                matches!(ans, Ok(Some(a)) if a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes"))
            }
        };
        if !cancel {
            self.say(
                "keeping the queued restores; waiting for the batch (Ctrl-C again to stop waiting)",
            );
            return;
        }
        let queued = match self
            .client
            .jobs(
                &[("batch", batch_id.to_owned()), ("state", "queued".into())],
                1000,
            )
            .await
        {
            Ok(j) => j,
            Err(e) => {
                self.say(format!("could not list the queued restores: {e}"));
                return;
            }
        };
        let mut n = 0;
        for j in &queued {
            // A job that started meanwhile answers 409 (too late / already final): it
            // simply runs on and is reported.
            if self.client.cancel(&j.id).await.is_ok() {
                n += 1;
            }
        }
        self.say(format!(
                "cancelled {n} queued restores; waiting for the running ones (Ctrl-C again to stop waiting)"
            ));
    }
}

fn report(out: Output, outcomes: &[Outcome], batch_ids: &[String], interrupted: bool) {
    let mut counts: Vec<(String, usize)> = vec![];
    for o in outcomes {
        match counts.iter_mut().find(|(k, _)| *k == o.outcome) {
            Some((_, n)) => *n += 1,
            None => counts.push((o.outcome.clone(), 1)),
        }
    }
    let summary = counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    if out == Output::Json {
        let c: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(k, n)| (k.clone(), (*n).into()))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "batches": batch_ids, "interrupted": interrupted,
                "counts": c, "items": outcomes,
            }))
            .expect("serialisable")
        );
        return;
    }
    let rows = outcomes
        .iter()
        .map(|o| {
            vec![
                o.workload.clone(),
                o.outcome.clone(),
                term::human_duration(o.duration_secs.map(Duration::from_secs_f64)),
                o.downtime_secs
                    .map(|d| format!("~{:.1}s", d))
                    .unwrap_or_else(|| "-".into()),
                o.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!(
        "{}",
        term::table(
            &["workload", "outcome", "duration", "downtime", "error"],
            rows
        )
    );
    println!(
        "{} items: {summary}{}",
        outcomes.len(),
        if interrupted { " (interrupted)" } else { "" }
    );
    if !batch_ids.is_empty() {
        println!("batch {}", batch_ids.join(", "));
    }
}

/// `--plan-only`: one `plan` job per item in one API batch, followed to the end, then a
/// table of what each restore would do.
async fn plan_only(client: &Client, out: Output, items: &[Item]) -> Result<u8> {
    let req: Vec<BatchItem> = items
        .iter()
        .map(|i| BatchItem {
            workload_id: i.workload.id.clone(),
            snapshot_id: i.snapshot_id.clone(),
            verify: None,
        })
        .collect();
    let acc = client.batch_plan(&req).await?;
    let overall = term::overall_bar(items.len() as u64);
    overall.set_prefix("plans");
    if !std::io::stderr().is_terminal() {
        overall.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let status = loop {
        let st = client.batch(&acc.batch_id).await?;
        overall.set_position(st.jobs.iter().filter(|j| j.is_final()).count() as u64);
        if st.done {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    overall.finish_and_clear();
    let by_job: HashMap<&str, &Job> = status.jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    let mut rows = vec![];
    let mut json_items = vec![];
    let mut all_ok = true;
    for (it, o) in items.iter().zip(&acc.items) {
        let job = o.job_id.as_deref().and_then(|id| by_job.get(id).copied());
        let (outcome, error) = match (job, &o.error) {
            (Some(j), _) if j.state == "succeeded" => ("restorable".to_owned(), None),
            (Some(j), _) if j.state == "failed" => ("refused".to_owned(), j.error_text()),
            (Some(j), _) => (j.state.clone(), j.error_text()),
            (None, Some(e)) => (
                "rejected".to_owned(),
                Some(format!("{}: {}", e.code, e.message)),
            ),
            (None, None) => ("unknown".to_owned(), None),
        };
        all_ok &= outcome == "restorable";
        let (add, change, remove) = job
            .map(crate::plan::counts)
            .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        rows.push(vec![
            it.workload.path(),
            outcome.clone(),
            add,
            change,
            remove,
            error.clone().unwrap_or_default(),
        ]);
        json_items.push(serde_json::json!({
            "workload": it.workload.path(), "workload_id": it.workload.id,
            "snapshot_id": it.snapshot_id, "outcome": outcome,
            "job_id": o.job_id, "error": error,
            "result": job.and_then(|j| j.extra.get("result").cloned()),
        }));
    }
    let restorable = json_items
        .iter()
        .filter(|i| i["outcome"] == "restorable")
        .count();
    if out == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "batch_id": acc.batch_id, "restorable": restorable, "items": json_items,
            }))
            .expect("serialisable")
        );
    } else {
        println!(
            "{}",
            term::table(
                &["workload", "plan", "add", "change", "remove", "error"],
                rows
            )
        );
        println!(
            "{} items: {restorable} restorable, {} not (plans only: nothing was changed)",
            items.len(),
            items.len() - restorable
        );
        println!("batch {}", acc.batch_id);
    }
    Ok(if all_ok { exit::OK } else { exit::FAILED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_csv_json_header_and_latest() {
        assert_eq!(parse_line("workload,snapshot", false, 1).unwrap(), None);
        assert_eq!(
            parse_line("a/b/c, 123", false, 2).unwrap(),
            Some(("a/b/c".into(), Some("123".into())))
        );
        assert_eq!(
            parse_line(r#"{"workload":"x","snapshot":"latest"}"#, false, 3).unwrap(),
            Some(("x".into(), None))
        );
        assert_eq!(
            parse_line("a/b/c", true, 4).unwrap(),
            Some(("a/b/c".into(), None))
        );
        assert!(parse_line("a/b/c", false, 4).is_err());
        assert!(parse_line("a,b,c", false, 5).is_err());
        assert_eq!(parse_line("  # comment", false, 6).unwrap(), None);
        assert!(parse_select("project=p,bogus=1").is_err());
        assert_eq!(parse_select("project=p, stage=s").unwrap().len(), 2);
    }
}
