//! `volsnap-worker snapshot import` refuses an archive whose manifest names another
//! workload than `--workload`, before anything is copied or registered.

use std::process::Command;

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use volsnap_e2e::engine::{Env, vol, write_tree};
use volsnap_shared::domain::{SourceKind, VolumeScope};
use volsnap_shared::ids::WorkloadId;

const BIN: &str = env!("CARGO_BIN_EXE_volsnap-worker-fp");

fn import(env: &Env, workload: WorkloadId, file: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["snapshot", "import", "--workload", &workload.to_string()])
        .args(["--database-url", &env.url, "--node", &env.node])
        .arg("--state-dir")
        .arg(env.state_dir())
        .arg("--snapshot-dir")
        .arg(env.snapshot_dir())
        .arg(file)
        .output()
        .unwrap()
}

async fn snapshots_of(pool: &PgPool, w: WorkloadId) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM snapshots WHERE workload_id = $1")
        .bind(w)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn import_refuses_an_archive_of_another_workload(
    _o: sqlx::pool::PoolOptions<sqlx::Postgres>,
    opts: PgConnectOptions,
) {
    let pool = PgPool::connect_with(opts.clone()).await.unwrap();
    let env = Env::new(pool, opts, BIN).await;
    let a_vols = vec![vol(VolumeScope::Stage, "a", "/data")];
    let b_vols = vec![vol(VolumeScope::Stage, "b", "/data")];
    let a = env.add_workload(&a_vols, SourceKind::Image, false).await;
    let b = env.add_workload(&b_vols, SourceKind::Image, false).await;
    let src = env.root().join("src");
    write_tree(&src, 5, 1);
    let sid = env.make_snapshot(a, &[(a_vols[0].clone(), src)]).await;
    let file = env.snapshot_dir().join(format!("{a}/{sid}.tar.gz"));

    let out = import(&env, b, &file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&a.to_string()) && stderr.contains("not of --workload"),
        "{stderr}"
    );
    assert_eq!(snapshots_of(&env.pool, b).await, 0);
    assert!(!env.snapshot_dir().join(b.to_string()).exists());

    // The same archive imports for the workload it belongs to.
    let before = snapshots_of(&env.pool, a).await;
    let out = import(&env, a, &file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshots_of(&env.pool, a).await, before + 1);
}
