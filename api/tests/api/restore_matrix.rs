//! The restore route's status-code matrix, in DESIGN.md's order, one case per test.
//! Each test sets up a request that passes every earlier check, so it proves the
//! order as well as the case.

use axum::http::{Method, StatusCode};
use sqlx::PgPool;
use volsnap_shared::domain::{SnapshotState, SourceKind, Workload};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};

use crate::common::*;

fn path(w: WorkloadId, s: SnapshotId) -> String {
    format!("/api/workloads/{w}/snapshots/{s}/restore")
}

/// An image workload on node-a with a ready snapshot: every check passes.
async fn happy(app: &TestApp) -> (Workload, SnapshotId) {
    let w = app.workload("node-a", SourceKind::Image).await;
    let s = ready_snapshot(&app.pool, &w).await;
    (w, s)
}

async fn restore(app: &TestApp, w: WorkloadId, s: SnapshotId) -> Resp {
    app.post(&path(w, s))
        .header("x-confirm-restore", s.to_string())
        .send()
        .await
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn no_token_is_401(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, s) = happy(&app).await;
    app.req(Method::POST, &path(w.id, s))
        .header("x-confirm-restore", s.to_string())
        .send()
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // A wrong token and a malformed header are 401 too.
    for auth in ["Bearer volsnap_nope", "Basic abc", "Bearer", "bearer "] {
        app.req(Method::POST, &path(w.id, s))
            .header("authorization", auth)
            .header("x-confirm-restore", s.to_string())
            .send()
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn viewer_is_403(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, s) = happy(&app).await;
    app.req(Method::POST, &path(w.id, s))
        .token(&app.viewer)
        .header("x-confirm-restore", s.to_string())
        .send()
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
    assert_no_jobs(&app.pool).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn unknown_workload_is_404(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (_, s) = happy(&app).await;
    // Checked before the confirmation header: none is sent.
    app.post(&path(WorkloadId::new(), s))
        .send()
        .await
        .expect_error(StatusCode::NOT_FOUND, "workload_not_found");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn unknown_snapshot_is_404(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, _) = happy(&app).await;
    app.post(&path(w.id, SnapshotId::new()))
        .send()
        .await
        .expect_error(StatusCode::NOT_FOUND, "snapshot_not_found");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn deleted_snapshot_is_404(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, s) = happy(&app).await;
    let r = app
        .req(Method::DELETE, &format!("/api/snapshots/{s}"))
        .token(&app.admin)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    restore(&app, w.id, s)
        .await
        .expect_error(StatusCode::NOT_FOUND, "snapshot_not_found");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn missing_confirmation_is_400(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, s) = happy(&app).await;
    let r = app
        .post(&path(w.id, s))
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "confirmation_required");
    assert!(
        r.text.contains(&s.to_string()),
        "message tells the value: {}",
        r.text
    );
    assert_no_jobs(&app.pool).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn wrong_confirmation_is_400(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, s) = happy(&app).await;
    for wrong in [
        SnapshotId::new().to_string(),
        w.id.to_string(),
        "yes".into(),
        "".into(),
    ] {
        app.post(&path(w.id, s))
            .header("x-confirm-restore", wrong)
            .send()
            .await
            .expect_error(StatusCode::BAD_REQUEST, "confirmation_mismatch");
    }
    assert_no_jobs(&app.pool).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn snapshot_of_other_workload_is_400(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, _) = happy(&app).await;
    let (_, other_snapshot) = happy(&app).await;
    restore(&app, w.id, other_snapshot)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "snapshot_of_other_workload");
    assert_no_jobs(&app.pool).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn not_image_workload_is_400(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for kind in [SourceKind::Git, SourceKind::Compose] {
        let w = app.workload("node-a", kind).await;
        let s = ready_snapshot(&app.pool, &w).await;
        restore(&app, w.id, s)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "not_image_workload");
    }
    assert_no_jobs(&app.pool).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn snapshot_not_ready_is_400(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let w = app.workload("node-a", SourceKind::Image).await;
    for state in [SnapshotState::Capturing, SnapshotState::Failed] {
        let s = snapshot_row(&app.pool, w.id, "node-a", state).await;
        restore(&app, w.id, s)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "snapshot_not_ready");
    }
    assert_no_jobs(&app.pool).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn snapshot_on_other_node_is_400(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let w = app.workload("node-a", SourceKind::Image).await;
    let s = snapshot_row(&app.pool, w.id, "node-b", SnapshotState::Ready).await;
    restore(&app, w.id, s)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "snapshot_on_other_node");
    assert_no_jobs(&app.pool).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn active_job_is_409_naming_it(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, s) = happy(&app).await;
    // A capture job is active for the workload.
    let capture = app
        .post(&format!("/api/workloads/{}/snapshots", w.id))
        .send()
        .await;
    assert_eq!(capture.status, StatusCode::ACCEPTED, "{}", capture.text);
    let active = capture.job_id();
    let r = restore(&app, w.id, s)
        .await
        .expect_error(StatusCode::CONFLICT, "active_job");
    assert_eq!(r.body["error"]["job_id"], active.to_string());
    assert!(r.text.contains(&active.to_string()));
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn accepted_is_202_with_location(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, s) = happy(&app).await;
    let r = restore(&app, w.id, s).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id = r.job_id();
    assert_eq!(r.headers["location"], format!("/api/jobs/{id}"));
    let job = &r.body["job"];
    assert_eq!(job["kind"], "restore");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["node"], "node-a", "routed to the workload's node");
    assert_eq!(job["snapshot_id"], s.to_string());
    assert_eq!(job["workload_id"], w.id.to_string());
    assert_eq!(job["requested_by"], "admin");
    // The Location answers.
    let got = app
        .get(&format!("/api/jobs/{id}"))
        .token(&app.viewer)
        .send()
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["id"], id.to_string());
    // The confirmation compares ids, not spelling.
    finish_job(&app.pool, id, "succeeded", None).await;
    let r = app
        .post(&path(w.id, s))
        .header("x-confirm-restore", s.to_string().to_uppercase())
        .send()
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
}

async fn assert_no_jobs(pool: &PgPool) {
    let ids: Vec<JobId> = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_all(pool)
        .await
        .unwrap();
    assert!(ids.is_empty(), "no job may be enqueued: {ids:?}");
}
