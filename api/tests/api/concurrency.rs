//! Single-flight over real connections: many restores of one workload at once.

use std::collections::HashSet;

use serde_json::Value;
use sqlx::PgPool;
use volsnap_shared::domain::SourceKind;

use crate::common::*;

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn fifty_concurrent_restores_one_202_fortynine_409_naming_it(pool: PgPool) {
    let admin = token(&pool, "admin", volsnap_shared::domain::Role::Admin).await;
    let w = workload_row(&pool, "node-a", SourceKind::Image).await;
    let s = ready_snapshot(&pool, &w).await;
    let addr = spawn_server(pool.clone()).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/workloads/{}/snapshots/{s}/restore", w.id);

    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (client, url, admin, barrier) =
            (client.clone(), url.clone(), admin.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let r = client
                .post(&url)
                .bearer_auth(&admin)
                .header("x-confirm-restore", s.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        });
    }
    let results = tasks.join_all().await;
    let accepted: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| b)
        .collect();
    let conflicts: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 409)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(accepted.len(), 1, "{results:?}");
    assert_eq!(conflicts.len(), 49, "{results:?}");
    let winner = accepted[0]["job"]["id"].as_str().unwrap();
    let named: HashSet<&str> = conflicts
        .iter()
        .map(|b| b["error"]["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        named,
        HashSet::from([winner]),
        "every 409 names the one active job"
    );
    assert!(conflicts.iter().all(|b| b["error"]["code"] == "active_job"));
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
}
