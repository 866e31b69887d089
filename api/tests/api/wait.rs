//! `?wait=`: woken by LISTEN/NOTIFY when the job finishes, 202 at the deadline, and the
//! status mapping of a waited restore.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use sqlx::PgPool;
use volsnap_shared::domain::{SourceKind, Workload};
use volsnap_shared::ids::{JobId, SnapshotId};

use crate::common::*;

async fn setup(app: &TestApp) -> (Workload, SnapshotId) {
    let w = app.workload("node-a", SourceKind::Image).await;
    let s = ready_snapshot(&app.pool, &w).await;
    (w, s)
}

async fn job_of(pool: &PgPool, w: &Workload) -> JobId {
    for _ in 0..500 {
        let id: Option<JobId> = sqlx::query_scalar("SELECT id FROM jobs WHERE workload_id = $1")
            .bind(w.id)
            .fetch_optional(pool)
            .await
            .unwrap();
        if let Some(id) = id {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("job never appeared");
}

/// Start a waited restore, let it reach its wait, finish the job from SQL, and return
/// the answer and the time from the finishing UPDATE's commit to the answer.
async fn waited_restore(
    app: &TestApp,
    state: &'static str,
    code: Option<&'static str>,
) -> (Resp, Duration) {
    let (w, s) = setup(app).await;
    let uri = format!("/api/workloads/{}/snapshots/{s}/restore?wait=30", w.id);
    let req = app.post(&uri).header("x-confirm-restore", s.to_string());
    let (resp, finished_at) = tokio::join!(async { (req.send().await, Instant::now()) }, async {
        let id = job_of(&app.pool, &w).await;
        // Let the handler commit and start waiting (it subscribes before reading).
        tokio::time::sleep(Duration::from_millis(300)).await;
        finish_job(&app.pool, id, state, code).await;
        Instant::now()
    });
    let (resp, answered_at) = resp;
    (resp, answered_at.saturating_duration_since(finished_at))
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn waited_restore_answers_200_within_50ms_of_success(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (r, latency) = waited_restore(&app, "succeeded", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["job"]["state"], "succeeded");
    assert!(
        latency < Duration::from_millis(50),
        "woke after {latency:?}"
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn waited_restore_client_actionable_failure_is_422(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (r, latency) = waited_restore(&app, "failed", Some("insufficient_space")).await;
    let r = r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "insufficient_space");
    assert_eq!(r.body["job"]["state"], "failed");
    assert!(
        latency < Duration::from_millis(50),
        "woke after {latency:?}"
    );
    // Archive rule codes are client-actionable too.
    let (r, _) = waited_restore(&app, "failed", Some("archive_path_escape")).await;
    r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "archive_path_escape");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn waited_restore_internal_failure_is_500_generic_with_job_id(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (r, _) = waited_restore(&app, "failed", Some("docker_error")).await;
    let r = r.expect_error(StatusCode::INTERNAL_SERVER_ERROR, "docker_error");
    let id = r.body["error"]["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.body["error"]["message"],
        format!("internal error (job {id})")
    );
    assert!(
        r.body.get("job").is_none(),
        "no job detail in a 500: {}",
        r.text
    );
    assert!(
        !r.text.contains("failed: docker_error"),
        "the job's message is not sent"
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn waited_restore_cancelled_is_409(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (r, _) = waited_restore(&app, "cancelled", None).await;
    r.expect_error(StatusCode::CONFLICT, "job_cancelled");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn waited_restore_still_running_at_deadline_is_202(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, s) = setup(&app).await;
    let started = Instant::now();
    let r = app
        .post(&format!(
            "/api/workloads/{}/snapshots/{s}/restore?wait=1",
            w.id
        ))
        .header("x-confirm-restore", s.to_string())
        .send()
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["job"]["state"], "queued");
    assert!(r.headers.contains_key("location"));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn get_job_wait_wakes_on_finish_and_times_out_otherwise(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, s) = setup(&app).await;
    let r = app
        .post(&format!("/api/workloads/{}/snapshots/{s}/restore", w.id))
        .header("x-confirm-restore", s.to_string())
        .send()
        .await;
    let id = r.job_id();

    // Deadline: still queued after 0.5 s, answered 200 with the job.
    let started = Instant::now();
    let r = app
        .get(&format!("/api/jobs/{id}?wait=0.5"))
        .token(&app.viewer)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "queued");
    assert!(started.elapsed() >= Duration::from_millis(500));

    // Running is not final: the wait goes on until the job succeeds.
    let req = app.get(&format!("/api/jobs/{id}?wait=30"));
    let (resp, finished_at) = tokio::join!(async { (req.send().await, Instant::now()) }, async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        start_job(&app.pool, id).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        finish_job(&app.pool, id, "succeeded", None).await;
        Instant::now()
    });
    let (r, answered_at) = resp;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "succeeded");
    let latency = answered_at.saturating_duration_since(finished_at);
    assert!(
        latency < Duration::from_millis(50),
        "woke after {latency:?}"
    );

    // Unknown job, with or without wait.
    let unknown = JobId::new();
    app.get(&format!("/api/jobs/{unknown}?wait=1"))
        .send()
        .await
        .expect_error(StatusCode::NOT_FOUND, "job_not_found");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn wait_out_of_range_is_400(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, s) = setup(&app).await;
    for bad in ["301", "-1", "NaN", "inf", "soon"] {
        let r = app
            .post(&format!(
                "/api/workloads/{}/snapshots/{s}/restore?wait={bad}",
                w.id
            ))
            .header("x-confirm-restore", s.to_string())
            .send()
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "a rejected wait enqueues nothing");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn shutdown_answers_held_waits_at_once(pool: PgPool) {
    let admin = token(&pool, "admin", volsnap_shared::domain::Role::Admin).await;
    let w = workload_row(&pool, "node-a", SourceKind::Image).await;
    let s = ready_snapshot(&pool, &w).await;
    let server = volsnap_api::build(
        pool.clone(),
        &volsnap_api::ServeConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            limits: Default::default(),
            token_cache_ttl: Duration::from_secs(2),
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let held = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!(
                "http://{addr}/api/workloads/{}/snapshots/{s}/restore?wait=300",
                w.id
            ))
            .bearer_auth(admin)
            .header("x-confirm-restore", s.to_string())
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    stop_tx.send(()).unwrap();
    let r = held.await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        202,
        "still queued: answered 202 at shutdown"
    );
    served.await.unwrap().unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
}
