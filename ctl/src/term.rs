//! Talking to the person at the terminal: questions (confirmations, the Ctrl-C
//! question), tables (comfy-table) and progress bars (indicatif).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Duration;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};

use crate::api::{CtlError, Job, Result};

/// Where answers to questions come from. Normally standard input; when standard input
/// carries the batch itself (`batch-restore -`), the controlling terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerSource {
    Stdin,
    Tty,
}

/// Ask `question` on stderr and read one line. `None` at end of input.
pub fn ask(question: &str, from: AnswerSource) -> Result<Option<String>> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let n = match from {
        AnswerSource::Stdin => std::io::stdin().lock().read_line(&mut line),
        AnswerSource::Tty => {
            let tty = std::fs::File::open("/dev/tty").map_err(|e| {
                CtlError::Usage(format!(
                    "a question needs a terminal (/dev/tty: {e}); pass --yes to go on without one"
                ))
            })?;
            std::io::BufReader::new(tty).read_line(&mut line)
        }
    }
    .map_err(|e| CtlError::Usage(format!("reading the answer: {e}")))?;
    if n == 0 {
        eprintln!();
        return Ok(None);
    }
    Ok(Some(line.trim().to_owned()))
}

/// Ask for `expected` to be typed; anything else is a usage error and nothing is done.
pub fn confirm_typed(question: &str, expected: &str, from: AnswerSource) -> Result<()> {
    match ask(question, from)? {
        Some(a) if a == expected => Ok(()),
        Some(a) => Err(CtlError::Usage(format!(
            "not confirmed ({a:?} is not {expected:?}); nothing was done"
        ))),
        None => Err(CtlError::Usage(
            "not confirmed (no answer); nothing was done — pass --yes to skip the question".into(),
        )),
    }
}

/// A table with `header` and `rows`, wrapped to the terminal's width when there is one.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(if std::io::stdout().is_terminal() {
            ContentArrangement::Dynamic
        } else {
            ContentArrangement::Disabled
        })
        .set_header(header.iter().copied());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

pub fn human_bytes(n: i64) -> String {
    indicatif::BinaryBytes(n.max(0) as u64).to_string()
}

pub fn human_duration(d: Option<Duration>) -> String {
    match d {
        Some(d) if d.as_secs() >= 60 => format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60),
        Some(d) => format!("{:.1}s", d.as_secs_f64()),
        None => "-".into(),
    }
}

const BYTES_TEMPLATE: &str = "{spinner:.green} {prefix:.bold} {msg:<26} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";
const PHASE_TEMPLATE: &str = "{spinner:.green} {prefix:.bold} {msg:<26} {elapsed}";

/// The bar of one job: spinner, label, phase; once the job reports a byte total, also
/// bytes done of total, rate and ETA.
pub fn job_bar(label: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(ProgressStyle::with_template(PHASE_TEMPLATE).expect("valid template"));
    pb.set_prefix(label.to_owned());
    pb.set_message("submitted");
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Show a job's progress on its bar.
pub fn update_bar(pb: &ProgressBar, j: &Job) {
    let msg = if j.state == "queued" {
        "queued".to_owned()
    } else {
        j.phase.clone()
    };
    if msg != pb.message() {
        // A new phase counts its own bytes: restart the rate and ETA estimate.
        pb.reset();
        pb.set_message(msg);
    }
    if j.progress_total > 0 {
        if pb.length() == Some(0) {
            // The first byte total: switch to the bar with bytes, rate and ETA.
            pb.set_style(
                ProgressStyle::with_template(BYTES_TEMPLATE)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            pb.reset_eta();
        }
        pb.set_length(j.progress_total as u64);
    }
    pb.set_position(j.progress_done.max(0) as u64);
}

/// The batch's overall bar: items finished of all.
pub fn overall_bar(total: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{bar:40.green/white}] {pos}/{len} finished  {msg}  elapsed {elapsed_precise}",
        )
        .expect("valid template")
        .progress_chars("##-"),
    );
    pb.set_prefix("batch");
    pb
}
