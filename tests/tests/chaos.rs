//! The chaos test of issue 10: two workers on one node, N workloads whose containers
//! ignore SIGTERM (every `docker stop` waits out its timeout), a batch of N restores,
//! and one fault injected mid-batch per scenario — PostgreSQL restart, backend kills,
//! connection-pool exhaustion, worker SIGKILL, repeated SIGKILLs, a worker frozen past
//! its lease. Each runs against a PRIVATE PostgreSQL cluster started by the test, the
//! real worker binary and the local Docker engine, and must end in the strict state
//! (see `volsnap_e2e::chaos::assert_strict`); faults that touch nothing on the node
//! must fail no job.
//!
//! Size: `VOLSNAP_CHAOS_WORKLOADS` (default 6, the CI size; the README's numbers come
//! from `VOLSNAP_CHAOS_WORKLOADS=30`). Each scenario prints one `chaos:` line with jobs
//! submitted, succeeded, retried, failed and the drain time.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use volsnap_e2e::chaos::*;
use volsnap_shared::domain::JobState;

const BIN: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    PostgresRestart,
    BackendKills,
    PoolExhaustion,
    WorkerKill,
    RepeatedKills,
    FrozenWorker,
}

impl Fault {
    /// Faults that never stop a worker mid-step: no job may fail.
    fn touches_nothing(self) -> bool {
        matches!(
            self,
            Fault::PostgresRestart | Fault::BackendKills | Fault::PoolExhaustion
        )
    }
}

fn workloads() -> usize {
    std::env::var("VOLSNAP_CHAOS_WORKLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

async fn scenario(fault: Fault) {
    let n = workloads();
    let pg = PrivatePg::start(80);
    let pool = pg.pool().await;
    volsnap_shared::MIGRATOR.run(&pool).await.unwrap();
    let mut w = World::new(pg.url(), pool, BIN).await;
    w.add_loads(n).await;
    let mut workers = vec![w.worker(&[]), w.worker(&[])];
    let ids = w.enqueue_restores().await;
    let t0 = Instant::now();
    // Mid-batch: some restore is stopping its containers or swapping.
    w.wait_jobs(
        &ids,
        "the batch under way",
        Duration::from_secs(120),
        |jobs| {
            jobs.iter().any(|j| {
                j.state == JobState::Running && matches!(j.phase.as_str(), "quiescing" | "swapping")
            }) || jobs.iter().any(|j| j.state.is_final())
        },
    )
    .await;
    match fault {
        Fault::PostgresRestart => {
            // Down for a few seconds, as a restart with crash recovery or a failover is.
            pg.pg_stop();
            tokio::time::sleep(Duration::from_secs(3)).await;
            pg.pg_start();
        }
        Fault::BackendKills => {
            for _ in 0..6 {
                let killed = terminate_backends(&w.pool).await;
                eprintln!("terminated {killed} backends");
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        }
        Fault::PoolExhaustion => {
            let took = exhaust_connections(&w.url, Duration::from_secs(5)).await;
            eprintln!("held {took} connections for 5 s");
        }
        Fault::WorkerKill => {
            workers.remove(0).kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            workers.push(w.worker(&[]));
        }
        Fault::RepeatedKills => {
            for _ in 0..3 {
                workers.remove(0).kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                workers.push(w.worker(&[]));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        Fault::FrozenWorker => {
            // The lease is 2 s: frozen well past it, then thawed.
            workers[0].signal(Signal::SIGSTOP);
            tokio::time::sleep(Duration::from_secs(5)).await;
            workers[0].signal(Signal::SIGCONT);
        }
    }
    let jobs = w
        .wait_jobs(&ids, "every job final", Duration::from_secs(900), |jobs| {
            jobs.iter().all(|j| j.state.is_final())
        })
        .await;
    let tally = Tally::of(&jobs, t0.elapsed());
    eprintln!(
        "chaos: fault={fault:?} workloads={n} submitted={} succeeded={} retried={} (retries {}) failed={} drain={:.1}s",
        tally.submitted,
        tally.succeeded,
        tally.retried,
        tally.retries,
        tally.failed,
        tally.drain.as_secs_f64()
    );
    for f in &tally.failures {
        eprintln!("chaos: failed job: {f}");
    }
    if std::env::var_os("VOLSNAP_CHAOS_LOGS").is_some() {
        for i in 0.. {
            let Ok(log) = std::fs::read_to_string(w.dir.path().join(format!("worker-{i}.log")))
            else {
                break;
            };
            for l in log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            {
                eprintln!("worker-{i}: {l}");
            }
        }
    }
    assert_strict(&w, &jobs).await;
    assert_eq!(tally.cancelled, 0);
    if fault.touches_nothing() {
        assert_eq!(
            tally.failed, 0,
            "{fault:?} touched nothing, yet jobs failed: {:?}",
            tally.failures
        );
    }
    for p in workers {
        p.terminate(Duration::from_secs(60));
    }
}

#[tokio::test]
async fn chaos_postgres_restart() {
    scenario(Fault::PostgresRestart).await;
}

#[tokio::test]
async fn chaos_backend_kills() {
    scenario(Fault::BackendKills).await;
}

#[tokio::test]
async fn chaos_pool_exhaustion() {
    scenario(Fault::PoolExhaustion).await;
}

#[tokio::test]
async fn chaos_worker_sigkill() {
    scenario(Fault::WorkerKill).await;
}

#[tokio::test]
async fn chaos_repeated_sigkills() {
    scenario(Fault::RepeatedKills).await;
}

#[tokio::test]
async fn chaos_frozen_worker() {
    scenario(Fault::FrozenWorker).await;
}
