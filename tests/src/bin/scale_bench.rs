//! Scale benchmark: three `volsnap-worker` processes on three node names (separate
//! volume roots), the real `volsnap-api`, N workloads (default 300) with running
//! containers spread over the nodes, one capture each, then ONE `POST /api/restores` of
//! all of them with `max_parallel` 12. Reports wall time, restores/s, per-node spread,
//! p50/p99 job duration, downtime (from the downtime histogram), peak RSS of the API and
//! workers, PostgreSQL transactions per restore, and checks: every restore succeeded,
//! max_parallel never exceeded, no node idle while it had queued work (sampled every
//! 100 ms), wall time vs Docker's own stop+start time × N / 12. Then the same batch
//! again while one worker is SIGKILLed and restarted mid-way: all final, every volume
//! all-old or all-new matching its job's outcome.
//!
//!   cargo build --bins && DATABASE_URL=postgres://… target/debug/scale-bench [--workloads 300]
//!
//! Needs a Docker engine and the `volsnap-test-busybox:latest` image (scripts/test-image.sh).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};
use sqlx::PgPool;
use volsnap_e2e::engine::{tree_hash, write_tree};
use volsnap_shared::scratch::ScratchDb;

const IMAGE: &str = "volsnap-test-busybox:latest";
const NODES: [&str; 3] = ["scale-a", "scale-b", "scale-c"];

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 300)]
    workloads: usize,
    #[arg(long, default_value_t = 12)]
    max_parallel: i32,
    /// Jobs each worker runs at once.
    #[arg(long, default_value_t = 6)]
    concurrency: usize,
    /// Skip the SIGKILL run.
    #[arg(long)]
    no_kill: bool,
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin(name: &str) -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join(name)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn worker(root: &Path, node: &str, url: &str, concurrency: usize, n: u32) -> Proc {
    let d = root.join(node);
    let log = std::fs::File::create(root.join(format!("{node}-{n}.log"))).unwrap();
    Proc(
        Command::new(bin("volsnap-worker"))
            .args(["run", "--database-url", url, "--node", node])
            .arg("--state-dir")
            .arg(d.join("state"))
            .arg("--snapshot-dir")
            .arg(d.join("snapshots"))
            .arg("--volumes-root")
            .arg(d.join("volumes"))
            .args(["--concurrency", &concurrency.to_string()])
            .args([
                "--heartbeat-secs",
                "0.5",
                "--lease-secs",
                "3",
                "--poll-secs",
                "0.5",
            ])
            .args(["--docker-stop-timeout-secs", "5"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn volsnap-worker"),
    )
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output()?;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn xacts(admin: &PgPool, db: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_one(admin)
    .await?)
}

struct Ctx {
    http: reqwest::Client,
    api: String,
    token: String,
    pool: PgPool,
}

impl Ctx {
    async fn wait_job(&self, id: &str) -> anyhow::Result<Value> {
        loop {
            let j: Value = self
                .http
                .get(format!("{}/api/jobs/{id}?wait=120", self.api))
                .bearer_auth(&self.token)
                .send()
                .await?
                .json()
                .await?;
            if matches!(
                j["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return Ok(j);
            }
        }
    }
}

struct Sample {
    max_running: i64,
    idle_with_work: usize,
    samples: usize,
}

/// Sample the batch every 100 ms until every job is final.
async fn watch(pool: &PgPool, batch: &str, max_parallel: i64) -> anyhow::Result<Sample> {
    let mut s = Sample {
        max_running: 0,
        idle_with_work: 0,
        samples: 0,
    };
    let batch: uuid::Uuid = batch.parse()?;
    loop {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT node, state, count(*) FROM jobs WHERE batch_id = $1 GROUP BY 1, 2",
        )
        .bind(batch)
        .fetch_all(pool)
        .await?;
        let get = |n: &str, st: &str| {
            rows.iter()
                .filter(|r| (n == "*" || r.0 == n) && r.1 == st)
                .map(|r| r.2)
                .sum::<i64>()
        };
        let running = get("*", "running");
        let queued = get("*", "queued");
        s.samples += 1;
        s.max_running = s.max_running.max(running);
        if running < max_parallel {
            for n in NODES {
                if get(n, "queued") > 0 && get(n, "running") == 0 {
                    s.idle_with_work += 1;
                }
            }
        }
        if running == 0 && queued == 0 {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scratch = ScratchDb::create("volsnap_scale").await?;
    let (admin, db, url) = (
        scratch.admin().clone(),
        scratch.name().to_owned(),
        scratch.url().to_owned(),
    );
    let pool = scratch.pool().clone();
    let root = tempfile::Builder::new()
        .prefix("volsnap-scale-")
        .tempdir()?;
    let root = root.path().to_path_buf();
    eprintln!("database {db}, files under {}", root.display());
    for n in NODES {
        for d in ["state", "snapshots", "volumes/proj/prod"] {
            std::fs::create_dir_all(root.join(n).join(d))?;
        }
    }

    // The API binary and three workers.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let api_proc = Proc(
        Command::new(bin("volsnap-api"))
            .args(["serve", "--addr", &addr.to_string()])
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("api.log"))?)
            .spawn()?,
    );
    let mut workers: Vec<Proc> = NODES
        .iter()
        .map(|n| worker(&root, n, &url, args.concurrency, 0))
        .collect();
    let (token, hash) = volsnap_api_token();
    volsnap_shared::db::tokens::insert(&pool, "scale", volsnap_shared::domain::Role::Admin, &hash)
        .await?;
    let ctx = Ctx {
        http: reqwest::Client::new(),
        api: format!("http://{addr}"),
        token,
        pool: pool.clone(),
    };
    let t = Instant::now();
    while ctx
        .http
        .get(format!("{}/readyz", ctx.api))
        .send()
        .await
        .map(|r| r.status().is_success())
        .ok()
        != Some(true)
    {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the API did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Wait for the three workers' heartbeats (they publish their nodes).
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(DISTINCT node) FROM workers")
            .fetch_one(&pool)
            .await?;
        if n == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // N workloads, each with data and a running container.
    let mut wl: Vec<(String, String, PathBuf, String)> = vec![]; // id, node, host, container
    let mut containers = vec![];
    let setup = Instant::now();
    for i in 0..args.workloads {
        let node = NODES[i % 3];
        let r = ctx
            .http
            .post(format!("{}/api/workloads", ctx.api))
            .bearer_auth(&ctx.token)
            .json(&json!({
                "name": format!("app{i}"), "project": "proj", "stage": "prod", "node": node,
                "source_kind": "image", "image": IMAGE,
                "volumes": [{"scope": "stage", "source": format!("data{i}"), "target": "/data"}],
            }))
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            bail!("register workload {i}: {}", r.text().await?);
        }
        let w: Value = r.json().await?;
        let id = w["id"].as_str().unwrap().to_owned();
        let host = root.join(node).join(format!("volumes/proj/prod/data{i}"));
        write_tree(&host, i as u64, 1);
        let c = docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            &format!("volsnap.workload={id}"),
            "--label",
            "volsnap.bench=scale",
            "-v",
            &format!("{}:/data", host.display()),
            IMAGE,
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done",
        ])?;
        containers.push(c.clone());
        wl.push((id, node.to_owned(), host, c));
    }
    let _cleanup = Cleanup(containers.clone());
    eprintln!(
        "{} workloads with containers in {:.1?}",
        wl.len(),
        setup.elapsed()
    );

    // Capture each (the queue spreads them over the nodes).
    let cap_t = Instant::now();
    let mut cap_jobs = vec![];
    for (id, ..) in &wl {
        let r = ctx
            .http
            .post(format!("{}/api/workloads/{id}/snapshots", ctx.api))
            .bearer_auth(&ctx.token)
            .send()
            .await?;
        let v: Value = r.json().await?;
        cap_jobs.push((
            v["job"]["id"].as_str().context("capture job")?.to_owned(),
            v["snapshot_id"].as_str().unwrap().to_owned(),
        ));
    }
    for (j, _) in &cap_jobs {
        let job = ctx.wait_job(j).await?;
        if job["state"] != "succeeded" {
            bail!("capture failed: {job}");
        }
    }
    eprintln!("{} captures in {:.1?}", cap_jobs.len(), cap_t.elapsed());
    let snap_hash: Vec<String> = wl.iter().map(|w| tree_hash(&w.2)).collect();

    // Docker's own stop+start time, on 12 of the containers.
    let mut ss = vec![];
    for w in wl.iter().take(12) {
        let t = Instant::now();
        docker(&["stop", "-t", "5", &w.3])?;
        docker(&["start", &w.3])?;
        ss.push(t.elapsed().as_secs_f64());
    }
    let stop_start = ss.iter().sum::<f64>() / ss.len() as f64;
    // The real alternative at the same parallelism: Docker alone stopping and starting
    // every container, `max_parallel` at a time (what the engine's quiesce + redeploy
    // cost under the same contention, with no restore work at all).
    let (parallel_docker, parallel_each) = {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let each = std::sync::Mutex::new(Vec::with_capacity(wl.len()));
        let ids: Vec<&str> = wl.iter().map(|w| w.3.as_str()).collect();
        let t = Instant::now();
        std::thread::scope(|sc| {
            for _ in 0..args.max_parallel {
                sc.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(c) = ids.get(i) else { break };
                        let t = Instant::now();
                        docker(&["stop", "-t", "5", c]).expect("docker stop");
                        docker(&["start", c]).expect("docker start");
                        each.lock().unwrap().push(t.elapsed().as_secs_f64());
                    }
                });
            }
        });
        let each = each.into_inner().unwrap();
        (
            t.elapsed().as_secs_f64(),
            each.iter().sum::<f64>() / each.len().max(1) as f64,
        )
    };
    eprintln!(
        "Docker alone: stop+start of all {} containers, {} at a time: {parallel_docker:.1} s ({parallel_each:.2} s each)",
        wl.len(),
        args.max_parallel
    );

    for run in 0..if args.no_kill { 1 } else { 2 } {
        // New live data, so a restore visibly brings the snapshot back.
        let live_hash: Vec<String> = wl
            .iter()
            .enumerate()
            .map(|(i, w)| {
                write_tree(&w.2, 10_000 + (run * 1000 + i) as u64, 1);
                tree_hash(&w.2)
            })
            .collect();
        let x0 = xacts(&admin, &db).await?;
        let down0: f64 = sqlx::query_scalar("SELECT downtime_sum FROM restore_stats WHERE id = 1")
            .fetch_optional(&ctx.pool)
            .await?
            .unwrap_or(0.0);
        let items: Vec<Value> = wl
            .iter()
            .zip(&cap_jobs)
            .map(|(w, c)| json!({"workload_id": w.0, "snapshot_id": c.1}))
            .collect();
        let t0 = Instant::now();
        let r = ctx
            .http
            .post(format!("{}/api/restores", ctx.api))
            .bearer_auth(&ctx.token)
            .header("x-confirm-restore", items.len().to_string())
            .json(&json!({"items": items, "max_parallel": args.max_parallel}))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        if !status.is_success() {
            bail!("POST /api/restores: {status} {body}");
        }
        let batch = body["batch_id"].as_str().context("batch_id")?.to_owned();
        let killer = if run == 1 {
            // SIGKILL node b's worker once a third of the batch is final; restart 2 s later.
            let pool = pool.clone();
            let b: uuid::Uuid = batch.parse()?;
            let n = wl.len() as i64;
            let pid = workers[1].0.id();
            Some(tokio::spawn(async move {
                loop {
                    let done: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM jobs WHERE batch_id = $1 AND finished_at IS NOT NULL",
                    )
                    .bind(b)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    if done >= n / 3 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                eprintln!("SIGKILLed the worker of {}", NODES[1]);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }))
        } else {
            None
        };
        let watcher = {
            let pool = pool.clone();
            let batch = batch.clone();
            let mp = args.max_parallel as i64;
            tokio::spawn(async move { watch(&pool, &batch, mp).await })
        };
        if let Some(k) = killer {
            k.await?;
            workers[1] = worker(&root, NODES[1], &url, args.concurrency, 1);
            eprintln!("restarted the worker of {}", NODES[1]);
        }
        let sample = watcher.await??;
        let wall = t0.elapsed().as_secs_f64();
        let x1 = xacts(&admin, &db).await?;

        let rows: Vec<(uuid::Uuid, String, String, Option<f64>)> = sqlx::query_as(
            "SELECT workload_id, node, state, extract(epoch FROM finished_at - started_at)::float8 \
             FROM jobs WHERE batch_id = $1",
        )
        .bind(batch.parse::<uuid::Uuid>()?)
        .fetch_all(&ctx.pool)
        .await?;
        let mut per_node: HashMap<String, usize> = HashMap::new();
        let mut states: HashMap<String, usize> = HashMap::new();
        let mut durs = vec![];
        let mut mismatched = 0;
        for (w, node, state, d) in &rows {
            *per_node.entry(node.clone()).or_default() += 1;
            *states.entry(state.clone()).or_default() += 1;
            if let Some(d) = d {
                durs.push(*d);
            }
            let i = wl.iter().position(|x| x.0 == w.to_string()).unwrap();
            let h = tree_hash(&wl[i].2);
            let expect = if state == "succeeded" {
                &snap_hash[i]
            } else {
                &live_hash[i]
            };
            if &h != expect {
                mismatched += 1;
                eprintln!("workload {w} ({state}): volume is neither matching its outcome");
            }
        }
        let (dcount, dsum, dbuckets): (i64, f64, Vec<i64>) = sqlx::query_as(
            "SELECT downtime_count, downtime_sum, downtime_buckets FROM restore_stats WHERE id = 1",
        )
        .fetch_one(&ctx.pool)
        .await?;
        let dsum_run = dsum - down0;
        let hist_q = |q: f64| {
            let total: i64 = dbuckets.iter().sum();
            let want = (total as f64 * q).ceil() as i64;
            let mut acc = 0;
            for (i, c) in dbuckets.iter().enumerate() {
                acc += c;
                if acc >= want {
                    return volsnap_shared::queue::stats::DOWNTIME_BUCKETS
                        .get(i)
                        .map_or("+Inf".to_owned(), |b| format!("≤ {b} s"));
                }
            }
            "?".into()
        };
        let n = rows.len() as f64;
        let goal = stop_start * n / args.max_parallel as f64;
        let label = if run == 0 {
            "clean"
        } else {
            "worker SIGKILLed + restarted"
        };
        println!(
            "== scale bench ({label}): {} restores, max_parallel {}",
            rows.len(),
            args.max_parallel
        );
        println!("wall {wall:.1} s, {:.2} restores/s", n / wall);
        println!("outcomes {states:?}; per node {per_node:?}");
        println!(
            "job duration p50 {:.2} s, p99 {:.2} s",
            pct(&mut durs.clone(), 0.5),
            pct(&mut durs, 0.99)
        );
        println!(
            "downtime (all restores so far: {dcount}, mean {:.2} s) p50 {}, p99 {}",
            dsum / dcount.max(1) as f64,
            hist_q(0.5),
            hist_q(0.99)
        );
        println!(
            "max running {} (limit {}); node idle with queued work in {} of {} samples",
            sample.max_running, args.max_parallel, sample.idle_with_work, sample.samples
        );
        println!(
            "docker stop+start {stop_start:.2} s each → ideal {goal:.1} s; wall/ideal {:.2} (goal ≤ 1.5)",
            wall / goal
        );
        let goal_same_load = parallel_each * n / args.max_parallel as f64;
        println!(
            "Docker alone, stop+start of the same {} containers {} at a time: {parallel_docker:.1} s wall, {parallel_each:.2} s each → sum/{} = {goal_same_load:.1} s; wall / that {:.2} (goal ≤ 1.5)",
            wl.len(),
            args.max_parallel,
            args.max_parallel,
            wall / goal_same_load
        );
        println!(
            "downtime inside the restores (sum / max_parallel): {:.1} s of the {wall:.1} s wall",
            dsum_run / args.max_parallel as f64
        );
        println!(
            "PostgreSQL transactions per restore {:.1}",
            (x1 - x0) as f64 / n
        );
        println!(
            "peak RSS: api {} MiB, workers {:?} MiB",
            peak_rss_kib(api_proc.0.id()) / 1024,
            workers
                .iter()
                .map(|w| peak_rss_kib(w.0.id()) / 1024)
                .collect::<Vec<_>>()
        );
        println!("volumes not matching their job's outcome: {mismatched}");
        if sample.max_running > args.max_parallel as i64 {
            bail!("max_parallel exceeded");
        }
        if mismatched > 0 {
            bail!("{mismatched} volumes do not match their job's outcome");
        }
        if run == 0 && states.get("succeeded") != Some(&wl.len()) {
            bail!("not every restore succeeded: {states:?}");
        }
    }
    drop(workers);
    drop(api_proc);
    let _ = scratch.drop_database().await;
    Ok(())
}

fn volsnap_api_token() -> (String, [u8; 32]) {
    volsnap_api::auth::generate_token()
}

struct Cleanup(Vec<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.0.chunks(50) {
            let mut a = vec!["rm", "-f"];
            a.extend(c.iter().map(String::as_str));
            let _ = Command::new("docker").args(&a).output();
        }
    }
}
