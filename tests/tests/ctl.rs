//! volsnapctl against the real thing: the API served over HTTP on a loopback port, the
//! real worker binary, Docker, real archives and volumes. Batches of 40 restores with
//! one failing (its archive file deleted), `--stop-after-failures`, `--canary`, exit
//! codes, Ctrl-C mid-batch, and the terminal experience in tmux.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::io::AsyncWriteExt as _;
use volsnap_api::{Limits, ServeConfig};
use volsnap_e2e::engine::*;
use volsnap_shared::domain::{Role, SourceKind, VolumeScope};
use volsnap_shared::ids::{SnapshotId, WorkloadId};

const WORKER: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");
const CTL: &str = env!("CARGO_BIN_EXE_volsnapctl-e2e");

/// One workload of the fixture: its volume, its snapshot and the two states of its data.
struct App {
    id: WorkloadId,
    name: String,
    host: PathBuf,
    sid: SnapshotId,
    /// Tree hash of the snapshot's data (what a restore brings back).
    snap_hash: String,
    /// Tree hash of the live data before any restore.
    live_hash: String,
}

struct World {
    env: Env,
    url: String,
    token: String,
    apps: Vec<App>,
    /// The running API's stop switch and task (see [`World::restart_api`]).
    api: std::sync::Mutex<
        Option<(
            tokio_util::sync::CancellationToken,
            tokio::task::JoinHandle<std::io::Result<()>>,
        )>,
    >,
    addr: std::net::SocketAddr,
}

async fn world(pool: PgPool, opts: PgConnectOptions, n: usize, containers: usize) -> World {
    let env = Env::new(pool.clone(), opts, WORKER).await;
    let server = volsnap_api::build(
        pool.clone(),
        &ServeConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            limits: Limits::default(),
            token_cache_ttl: Duration::from_secs(2),
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let url = format!("http://{addr}");
    let stop = tokio_util::sync::CancellationToken::new();
    let api = tokio::spawn(server.run(stop.clone().cancelled_owned()));
    let (token, hash) = volsnap_api::auth::generate_token();
    volsnap_shared::db::tokens::insert(&pool, "ctl-test", Role::Admin, &hash)
        .await
        .unwrap();
    let mut apps = vec![];
    for i in 0..n {
        let v = vol(VolumeScope::Stage, &format!("data{i}"), "/data");
        let host = env.host_path(&v);
        write_tree(&host, i as u64, 1);
        let id = env
            .add_workload(std::slice::from_ref(&v), SourceKind::Image, false)
            .await;
        let sid = env.make_snapshot(id, &[(v.clone(), host.clone())]).await;
        let snap_hash = tree_hash(&host);
        write_tree(&host, 1000 + i as u64, 2);
        let live_hash = tree_hash(&host);
        assert_ne!(snap_hash, live_hash);
        if i < containers {
            env.run_container(id, std::slice::from_ref(&v));
        }
        let name: String = sqlx::query_scalar("SELECT name FROM workloads WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        apps.push(App {
            id,
            name: format!("proj/prod/{name}"),
            host,
            sid,
            snap_hash,
            live_hash,
        });
    }
    World {
        env,
        url,
        token,
        apps,
        api: std::sync::Mutex::new(Some((stop, api))),
        addr,
    }
}

impl World {
    /// Stop the API, leave it down for `gap`, start it again on the same address.
    async fn restart_api(&self, gap: Duration) {
        let (stop, task) = self.api.lock().unwrap().take().expect("API running");
        stop.cancel();
        // Graceful: requests in flight finish; it must be down within a few seconds.
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the API stopped")
            .unwrap()
            .unwrap();
        tokio::time::sleep(gap).await;
        let server = volsnap_api::build(
            self.env.pool.clone(),
            &ServeConfig {
                addr: self.addr,
                limits: Limits::default(),
                token_cache_ttl: Duration::from_secs(2),
            },
        )
        .await
        .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone().cancelled_owned()));
        *self.api.lock().unwrap() = Some((stop, task));
    }

    fn ctl(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(CTL);
        c.env("VOLSNAP_URL", &self.url)
            .env("VOLSNAP_TOKEN", &self.token)
            .env_remove("VOLSNAP_TOKEN_FILE")
            .kill_on_drop(true);
        c
    }

    /// Run volsnapctl to its end: (exit code, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::time::timeout(
            Duration::from_secs(300),
            self.ctl().args(args).stdin(Stdio::null()).output(),
        )
        .await
        .expect("volsnapctl finished within 300 s")
        .unwrap();
        (
            out.status.code().expect("exit code"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A batch file: one CSV line per app (by name), `failing` (if any) in the list.
    fn batch_file(&self, idx: &[usize], tag: &str) -> PathBuf {
        let mut s = String::from("workload,snapshot\n");
        for &i in idx {
            s.push_str(&format!("{},{}\n", self.apps[i].name, self.apps[i].sid));
        }
        let p = self.env.root().join(format!("batch-{tag}.csv"));
        std::fs::write(&p, s).unwrap();
        p
    }

    /// Delete app `i`'s archive file: its restore fails with `snapshot_file_missing`.
    fn break_snapshot(&self, i: usize) {
        let a = &self.apps[i];
        std::fs::remove_file(
            self.env
                .snapshot_dir()
                .join(format!("{}/{}.tar.gz", a.id, a.sid)),
        )
        .unwrap();
    }

    fn state_of(&self, i: usize) -> &'static str {
        let h = tree_hash(&self.apps[i].host);
        if h == self.apps[i].snap_hash {
            "restored"
        } else if h == self.apps[i].live_hash {
            "untouched"
        } else {
            "other"
        }
    }
}

/// `--output json` of a batch: outcome per workload name, and the counts.
/// Wait until every succeeded restore's kept pre-restore copy has been archived by its
/// background job (issue 11): until then the workload has an active job and a new
/// restore of it is refused with 409 `active_job`.
async fn background_archives_done(pool: &PgPool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running') \
                OR (kind = 'restore' AND state = 'succeeded' AND pre_restore_snapshot_id IS NULL)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if pending == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pending} restores still wait for their background archive"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn outcomes(json: &str) -> (HashMap<String, String>, serde_json::Value) {
    let v: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("volsnapctl printed no JSON ({e}):\n{json}"));
    let m = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["workload"].as_str().unwrap().to_owned(),
                i["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (m, v)
}

fn count(m: &HashMap<String, String>, outcome: &str) -> usize {
    m.values().filter(|o| *o == outcome).count()
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn batches_of_40_canary_stop_after_failures_and_exit_codes(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let w = world(pool.clone(), opts, 40, 2).await;
    let _worker = w.env.worker(None);
    let failing = 2;
    w.break_snapshot(failing);
    let all: Vec<usize> = (0..40).collect();
    let file = w.batch_file(&all, "all");
    let file = file.to_str().unwrap();

    // Usage and refusal exit codes, before anything runs.
    let out = w
        .ctl()
        .env_remove("VOLSNAP_TOKEN")
        .args(["workloads"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no token is a usage error");
    let other = w.apps[1].sid.to_string();
    let (code, _, err) = w.run(&["restore", &w.apps[0].name, &other, "--yes"]).await;
    assert_eq!(code, 3, "a snapshot of another workload is refused: {err}");
    assert!(err.contains("snapshot"), "{err}");
    // Without --yes and no answer, nothing is done.
    let (code, _, err) = w.run(&["batch-restore", file]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not confirmed"), "{err}");
    assert!((0..40).all(|i| w.state_of(i) == "untouched"));

    // 1. The canary (first 5) holds the failing item: 4 restored, 1 failed, the
    //    other 35 never submitted.
    let (code, stdout, err) = w
        .run(&[
            "batch-restore",
            file,
            "--yes",
            "--canary",
            "5",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(code, 1, "{err}");
    let (m, v) = outcomes(&stdout);
    assert_eq!(m.len(), 40);
    assert_eq!(count(&m, "succeeded"), 4, "{stdout}");
    assert_eq!(count(&m, "failed"), 1);
    assert_eq!(count(&m, "not submitted"), 35);
    assert_eq!(m[&w.apps[failing].name], "failed");
    assert_eq!(
        v["batches"].as_array().unwrap().len(),
        1,
        "one API batch only"
    );
    let err_text = v["items"][failing]["error"].as_str().unwrap();
    assert!(err_text.contains("snapshot_file_missing"), "{err_text}");
    for i in 0..40 {
        let want = match i {
            0..5 if i != failing => "restored",
            _ => "untouched",
        };
        assert_eq!(w.state_of(i), want, "app {i} after the canary run");
    }

    background_archives_done(&pool).await;
    // 2. The 40 again, one at a time, stopping after the first failure: the two before
    //    it succeed, it fails, the queue cancels the other 37 (their data untouched).
    let (code, stdout, err) = w
        .run(&[
            "batch-restore",
            file,
            "--yes",
            "--max-parallel",
            "1",
            "--stop-after-failures",
            "1",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(code, 1, "{err}");
    let (m, _) = outcomes(&stdout);
    assert_eq!(count(&m, "failed"), 1, "{stdout}");
    assert_eq!(count(&m, "succeeded"), 2, "{stdout}");
    assert_eq!(count(&m, "cancelled"), 37, "{stdout}");
    for i in 5..40 {
        assert_eq!(w.state_of(i), "untouched", "app {i} was cancelled");
    }

    background_archives_done(&pool).await;
    // 3. A 40-restore batch with the canary passing (the failing item moved to the
    //    end) and no stop: 39 restored, 1 failed, exit 1; the final table names it.
    let mut order: Vec<usize> = (0..40).filter(|&i| i != failing).collect();
    order.push(failing);
    let file3 = w.batch_file(&order, "canary-ok");
    let (code, stdout, err) = w
        .run(&[
            "batch-restore",
            file3.to_str().unwrap(),
            "--yes",
            "--canary",
            "5",
            "--max-parallel",
            "4",
        ])
        .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        stdout.contains("40 items: 39 succeeded, 1 failed"),
        "{stdout}"
    );
    for h in ["workload", "outcome", "duration", "downtime", "error"] {
        assert!(stdout.contains(h), "table header {h}: {stdout}");
    }
    let failing_row = stdout
        .lines()
        .find(|l| l.contains(&w.apps[failing].name))
        .unwrap();
    assert!(
        failing_row.contains("failed") && failing_row.contains("snapshot_file_missing"),
        "{failing_row}"
    );
    for i in (0..40).filter(|&i| i != failing) {
        assert_eq!(w.state_of(i), "restored", "app {i}");
    }
    assert_eq!(w.state_of(failing), "untouched");

    background_archives_done(&pool).await;
    // 4. All good, as JSON lines on standard input with ids and `latest` (which must
    //    skip the pre-restore snapshots the runs above made): exit 0.
    let mut lines = String::new();
    for i in (0..40).filter(|&i| i != failing) {
        lines.push_str(&format!(
            "{{\"workload\": \"{}\", \"snapshot\": \"latest\"}}\n",
            w.apps[i].id
        ));
    }
    let mut child = w
        .ctl()
        .args([
            "batch-restore",
            "-",
            "--yes",
            "--max-parallel",
            "4",
            "-o",
            "json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (m, _) = outcomes(&stdout);
    assert_eq!(count(&m, "succeeded"), 39);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn ctrl_c_mid_batch_stops_submitting_cancels_the_queued_rest_and_reports_all(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let w = world(pool.clone(), opts, 20, 0).await;
    let _worker = w.env.worker(None);
    let idx: Vec<usize> = (0..20).collect();
    let file = w.batch_file(&idx, "ctrlc");
    // The canary (3) runs first; the interrupt comes during the rest.
    let mut child = w
        .ctl()
        .args([
            "batch-restore",
            file.to_str().unwrap(),
            "--yes",
            "--canary",
            "3",
            "--max-parallel",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the second batch (the 17) is submitted and two of its jobs are done.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded' AND batch_id = \
             (SELECT id FROM batches ORDER BY created_at DESC LIMIT 1) \
             AND (SELECT count(*) FROM batches) = 2",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if done >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the batch did not progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    // The question is read from standard input: yes, cancel the queued rest.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"y\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("volsnapctl ended after Ctrl-C")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Cancel this batch's queued restores"),
        "{stderr}"
    );
    assert!(stdout.contains("(interrupted)"), "{stdout}");
    // Every item is in the final table, once.
    for a in &w.apps {
        assert_eq!(
            stdout.lines().filter(|l| l.contains(&a.name)).count(),
            1,
            "{} in the table:\n{stdout}",
            a.name
        );
    }
    // Nothing is left queued or running; every job is succeeded or cancelled, and the
    // table agrees with the database and with the volumes.
    let rows: Vec<(WorkloadId, String)> =
        sqlx::query_as("SELECT workload_id, state FROM jobs WHERE kind = 'restore'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 20, "all 20 were submitted (3 + 17)");
    let mut cancelled = 0;
    for (wid, state) in rows {
        let i = w.apps.iter().position(|a| a.id == wid).unwrap();
        let line = stdout
            .lines()
            .find(|l| l.contains(&w.apps[i].name))
            .unwrap();
        assert!(line.contains(&state), "{line} vs {state}");
        match state.as_str() {
            "succeeded" => assert_eq!(w.state_of(i), "restored"),
            "cancelled" => {
                cancelled += 1;
                assert_eq!(w.state_of(i), "untouched")
            }
            s => panic!("job of app {i} left {s}"),
        }
    }
    assert!(
        cancelled >= 10,
        "the queued rest was cancelled ({cancelled})"
    );
}

/// A tmux server of this test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        let t = Tmux {
            socket: format!("volsnapctl-test-{}", uuid::Uuid::new_v4().simple()),
        };
        // A session that outlives the test's own: killing the last session makes the
        // server exit, and a `new-session` racing that exit fails with "server exited
        // unexpectedly" (seen in CI).
        t.cmd(&["new-session", "-d", "-s", "keep", "sleep 3600"]);
        t
    }
    fn cmd(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn start(&self, shell_cmd: &str) {
        self.cmd(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "200",
            "-y",
            "60",
            shell_cmd,
        ]);
    }
    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "t"])
    }
    /// Capture the screen until `pred` holds; every capture is kept.
    async fn until(&self, what: &str, pred: impl Fn(&str) -> bool, seen: &mut Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.screen();
            let ok = pred(&s);
            seen.push(s);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}; the screen:\n{}",
                seen.last().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn terminal_prompt_progress_bars_and_final_table_in_tmux(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let w = world(pool.clone(), opts, 6, 6).await;
    // A bigger volume for app 0 so its bar has bytes to show.
    let big = vol(VolumeScope::Stage, "big", "/big");
    let big_host = w.env.host_path(&big);
    std::fs::create_dir_all(&big_host).unwrap();
    let mut x: u64 = 88172645463325252;
    for f in 0..8 {
        let data: Vec<u8> = (0..8 * 1024 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(big_host.join(format!("blob{f}")), data).unwrap();
    }
    let wid = w
        .env
        .add_workload(std::slice::from_ref(&big), SourceKind::Image, false)
        .await;
    let sid = w
        .env
        .make_snapshot(wid, &[(big.clone(), big_host.clone())])
        .await;
    std::fs::write(big_host.join("blob0"), b"changed").unwrap();
    w.env.run_container(wid, std::slice::from_ref(&big));
    let name: String = sqlx::query_scalar("SELECT name FROM workloads WHERE id = $1")
        .bind(wid)
        .fetch_one(&pool)
        .await
        .unwrap();
    let name = format!("proj/prod/{name}");
    // Held half-way through extraction until the bar has been seen: a 64 MiB restore is
    // over faster than the terminal is sampled.
    let (_worker, pause) = w.env.worker_paused("restore.extract.half");

    let env = format!(
        "env VOLSNAP_URL={} VOLSNAP_TOKEN={} TERM=xterm-256color",
        w.url, w.token
    );
    let tmux = Tmux::new();
    let mut seen = vec![];
    tmux.start(&format!(
        "{env} {CTL} restore {name} {sid} --wait; echo EXIT=$?; sleep 600"
    ));
    // The plan of the restore and the question.
    tmux.until(
        "the confirmation prompt",
        |s| s.contains("Type the workload's name"),
        &mut seen,
    )
    .await;
    let prompt = seen.last().unwrap().clone();
    assert!(
        prompt.contains(&name) && prompt.contains(&sid.to_string()),
        "{prompt}"
    );
    assert!(prompt.contains("pre-restore snapshot"), "{prompt}");
    // Above the question, the restore's plan: the one changed file named.
    assert!(
        prompt.contains("Plan for restoring")
            && prompt.contains("/big changed: blob0")
            && prompt.contains("a restore now would proceed"),
        "{prompt}"
    );
    tmux.cmd(&["send-keys", "-t", "t", &name, "Enter"]);
    tmux.until(
        "the bar mid-extraction",
        |s| s.contains("extracting") && s.contains("MiB/s ETA"),
        &mut seen,
    )
    .await;
    pause.release();
    tmux.until("the end", |s| s.contains("EXIT="), &mut seen)
        .await;
    let end = seen.last().unwrap().clone();
    assert!(end.contains("EXIT=0"), "{end}");
    assert!(
        end.contains("succeeded") && end.contains("restored "),
        "{end}"
    );
    // Some screen showed the live bar: the workload, a phase, bytes and the ETA.
    let bar = seen
        .iter()
        .flat_map(|s| s.lines())
        .find(|l| {
            l.contains(&name)
                && ["extracting", "archiving pre-restore copy"]
                    .iter()
                    .any(|p| l.contains(p))
                && l.contains("MiB/")
                && l.contains("MiB/s ETA")
        })
        .unwrap_or_else(|| {
            let mut lines: Vec<&str> = seen
                .iter()
                .flat_map(|s| s.lines())
                .filter(|l| l.contains(&name))
                .collect();
            lines.dedup();
            panic!(
                "no progress bar with bytes seen in {} screens:\n{}",
                seen.len(),
                lines.join("\n")
            )
        });
    eprintln!("restore bar: {bar}");
    tmux.cmd(&["kill-session", "-t", "t"]);

    // A batch in the terminal: per-job bars, the overall bar, the final table.
    let idx: Vec<usize> = (0..6).collect();
    let file = w.batch_file(&idx, "tmux");
    let mut seen = vec![];
    tmux.start(&format!(
        "{env} {CTL} batch-restore {} --max-parallel 2; echo EXIT=$?; sleep 600",
        file.display()
    ));
    tmux.until(
        "the batch question",
        |s| s.contains("Type the number of restores (6)"),
        &mut seen,
    )
    .await;
    tmux.cmd(&["send-keys", "-t", "t", "6", "Enter"]);
    tmux.until("the end", |s| s.contains("EXIT="), &mut seen)
        .await;
    let end = seen.last().unwrap().clone();
    assert!(end.contains("EXIT=0"), "{end}");
    assert!(end.contains("6 items: 6 succeeded"), "{end}");
    for h in ["workload", "outcome", "duration", "downtime", "error"] {
        assert!(end.contains(h), "{end}");
    }
    let overall = seen
        .iter()
        .flat_map(|s| s.lines())
        .find(|l| l.starts_with("batch [") && l.contains("finished"));
    assert!(overall.is_some(), "the overall bar was never on screen");
    let job_bar = seen
        .iter()
        .flat_map(|s| s.lines())
        .find(|l| l.contains("proj/prod/") && l.contains("ETA"));
    assert!(job_bar.is_some(), "no per-job bar was on screen");
    eprintln!(
        "overall: {}\njob: {}\n{end}",
        overall.unwrap(),
        job_bar.unwrap()
    );
    for i in 0..6 {
        assert_eq!(w.state_of(i), "restored");
    }
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn single_commands_listings_capture_restore_follow_and_undo(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let w = world(pool.clone(), opts, 2, 1).await;
    let _worker = w.env.worker(None);
    let a = &w.apps[0];

    // Listings, by name and as JSON.
    let (code, out, err) = w.run(&["workloads", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let ws: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ws.as_array().unwrap().len(), 2);
    let (code, out, _) = w.run(&["workloads"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(&a.name) && out.contains("/data"), "{out}");
    let (code, out, _) = w.run(&["snapshots", &a.name, "-o", "json"]).await;
    assert_eq!(code, 0);
    let ss: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ss[0]["id"], a.sid.to_string());
    let (code, _, err) = w.run(&["snapshots", "proj/prod/nope"]).await;
    assert_eq!(code, 2, "an unknown name is a usage error: {err}");

    // Token from a file; capture and follow it.
    let tf = w.env.root().join("token");
    std::fs::write(&tf, format!("{}\n", w.token)).unwrap();
    let out = w
        .ctl()
        .env_remove("VOLSNAP_TOKEN")
        .args(["capture", &a.name, "--wait", "-o", "json", "--token-file"])
        .arg(&tf)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["kind"], "capture");

    // Restore by name to the fixture's snapshot (by id: `--latest` would now pick the
    // capture just made), following it to the end.
    let (code, out, err) = w
        .run(&[
            "restore",
            &a.name,
            &a.sid.to_string(),
            "--yes",
            "--wait",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(w.state_of(0), "restored");
    let restore_id = job["id"].as_str().unwrap().to_owned();
    // The pre-restore copy is archived by a background job (issue 11) and linked then.
    w.env
        .wait_pre_restore(restore_id.parse().unwrap(), Duration::from_secs(90))
        .await;
    // …and the workload is free again once that job has ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while volsnap_shared::db::jobs::active_for_workload(&w.env.pool, a.id)
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the workload stays busy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `job --follow` of a finished job, `jobs` filters.
    let (code, out, _) = w.run(&["job", &restore_id, "--follow"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("succeeded"), "{out}");
    let (code, out, _) = w
        .run(&[
            "jobs",
            "--kind",
            "restore",
            "--workload",
            &a.name,
            "-o",
            "json",
        ])
        .await;
    assert_eq!(code, 0);
    let js: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(js.as_array().unwrap().len(), 1);

    // Undo: back to the data before the restore.
    let (code, _, err) = w.run(&["undo", &restore_id, "--yes", "--wait"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(w.state_of(0), "untouched", "undo brought the old data back");
    // Through the API's undo (its own job kind), not a plain restore.
    let (code, out, _) = w
        .run(&[
            "jobs",
            "--kind",
            "undo",
            "--workload",
            &a.name,
            "-o",
            "json",
        ])
        .await;
    assert_eq!(code, 0);
    let js: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(js.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(js[0]["state"], "succeeded", "{out}");

    // A failing restore followed: exit 1 with the job's error.
    w.break_snapshot(1);
    let b = &w.apps[1];
    let (code, _, err) = w
        .run(&["restore", &b.name, &b.sid.to_string(), "--yes", "--wait"])
        .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("snapshot_file_missing"), "{err}");
    // The confirmation wants the exact name; a wrong one does nothing (exit 2).
    let mut child = w
        .ctl()
        .args(["restore", &a.name, &a.sid.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"proj/prod/wrong\n")
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not confirmed"));
    assert_eq!(w.state_of(0), "untouched");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn an_api_outage_mid_batch_is_ridden_out_and_every_item_reported(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    // Containers make each restore take a second or so (stop, start).
    let w = world(pool.clone(), opts, 10, 10).await;
    let _worker = w.env.worker(None);
    let idx: Vec<usize> = (0..10).collect();
    let file = w.batch_file(&idx, "outage");
    let child = w
        .ctl()
        .args([
            "batch-restore",
            file.to_str().unwrap(),
            "--yes",
            "--max-parallel",
            "1",
            "-o",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if done >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the batch did not progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The API goes away for 3 s while the worker goes on.
    w.restart_api(Duration::from_secs(3)).await;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("volsnapctl ended")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("retrying"),
        "the outage was noticed: {stderr}"
    );
    let (m, _) = outcomes(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(count(&m, "succeeded"), 10);
    assert!((0..10).all(|i| w.state_of(i) == "restored"));
}
