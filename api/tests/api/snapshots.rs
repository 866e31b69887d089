//! Capture enqueue, snapshot listing and deletion.

use axum::http::{Method, StatusCode};
use sqlx::PgPool;
use volsnap_shared::domain::SourceKind;
use volsnap_shared::ids::{SnapshotId, WorkloadId};

use crate::common::*;

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn capture_creates_snapshot_and_job_together(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let w = app.workload("node-a", SourceKind::Git).await;
    let r = app
        .post(&format!("/api/workloads/{}/snapshots", w.id))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job_id = r.job_id();
    assert_eq!(r.headers["location"], format!("/api/jobs/{job_id}"));
    let sid: SnapshotId = r.body["snapshot_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(r.body["job"]["kind"], "capture");
    assert_eq!(r.body["job"]["snapshot_id"], sid.to_string());
    assert_eq!(r.body["job"]["node"], "node-a");

    let s = app
        .get(&format!("/api/snapshots/{sid}"))
        .token(&app.viewer)
        .send()
        .await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.body["state"], "capturing");
    assert_eq!(s.body["kind"], "manual");
    assert_eq!(s.body["node"], "node-a");

    // A second capture while the first is active: 409, and no orphan snapshot row.
    let r = app
        .post(&format!("/api/workloads/{}/snapshots", w.id))
        .send()
        .await
        .expect_error(StatusCode::CONFLICT, "active_job");
    assert_eq!(r.body["error"]["job_id"], job_id.to_string());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshots")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "the rejected capture's snapshot row was rolled back");

    // The capturing snapshot is in use: it cannot be deleted.
    let r = app
        .req(Method::DELETE, &format!("/api/snapshots/{sid}"))
        .token(&app.admin)
        .send()
        .await
        .expect_error(StatusCode::CONFLICT, "snapshot_in_use");
    assert_eq!(r.body["error"]["job_id"], job_id.to_string());

    app.post(&format!("/api/workloads/{}/snapshots", WorkloadId::new()))
        .send()
        .await
        .expect_error(StatusCode::NOT_FOUND, "workload_not_found");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn capture_of_a_workload_without_volumes_is_400(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut body = workload_body("empty", "n", SourceKind::Image);
    body["volumes"] = serde_json::json!([]);
    let r = app.post("/api/workloads").json(body).send().await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    app.post(&format!("/api/workloads/{id}/snapshots"))
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "no_volumes");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn list_hides_deleted_and_paginates(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let w = app.workload("node-a", SourceKind::Image).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(ready_snapshot(&pool, &w).await);
    }
    let uri = format!("/api/workloads/{}/snapshots", w.id);
    let r = app.get(&format!("{uri}?limit=3")).send().await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 3);
    let next = r.body["next_cursor"].as_str().unwrap().to_owned();
    let r2 = app
        .get(&format!("{uri}?limit=3&cursor={next}"))
        .send()
        .await;
    assert_eq!(r2.body["items"].as_array().unwrap().len(), 2);
    assert!(r2.body["next_cursor"].is_null());
    assert_eq!(r.body["items"][0]["id"], ids[4].to_string(), "newest first");

    let del = app
        .req(Method::DELETE, &format!("/api/snapshots/{}", ids[0]))
        .token(&app.admin)
        .send()
        .await;
    assert_eq!(del.status, StatusCode::OK, "{}", del.text);
    assert!(del.body["deleted_at"].is_string());
    let r = app.get(&uri).send().await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 4);
    let r = app.get(&format!("{uri}?include_deleted=true")).send().await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 5);
    // Still readable by id, with deleted_at; deleting again is 404.
    let r = app.get(&format!("/api/snapshots/{}", ids[0])).send().await;
    assert!(r.body["deleted_at"].is_string());
    app.req(Method::DELETE, &format!("/api/snapshots/{}", ids[0]))
        .token(&app.admin)
        .send()
        .await
        .expect_error(StatusCode::NOT_FOUND, "snapshot_not_found");

    app.get(&format!("/api/workloads/{}/snapshots", WorkloadId::new()))
        .send()
        .await
        .expect_error(StatusCode::NOT_FOUND, "workload_not_found");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_snapshot_being_restored_cannot_be_deleted(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let w = app.workload("node-a", SourceKind::Image).await;
    let s = ready_snapshot(&pool, &w).await;
    let r = app
        .post(&format!("/api/workloads/{}/snapshots/{s}/restore", w.id))
        .header("x-confirm-restore", s.to_string())
        .send()
        .await;
    let job = r.job_id();
    app.req(Method::DELETE, &format!("/api/snapshots/{s}"))
        .token(&app.admin)
        .send()
        .await
        .expect_error(StatusCode::CONFLICT, "snapshot_in_use");
    finish_job(&pool, job, "succeeded", None).await;
    let r = app
        .req(Method::DELETE, &format!("/api/snapshots/{s}"))
        .token(&app.admin)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK);
}
