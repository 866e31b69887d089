//! Job listing (filters, cursor pagination) and cancel outcomes.

use std::collections::HashSet;

use axum::http::StatusCode;
use sqlx::PgPool;
use volsnap_shared::domain::SourceKind;
use volsnap_shared::ids::JobId;

use crate::common::*;

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn list_filters_and_paginates(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let mut all = Vec::new();
    for i in 0..25 {
        let node = if i % 2 == 0 { "node-a" } else { "node-b" };
        let w = workload_row(&pool, node, SourceKind::Image).await;
        let r = app
            .post(&format!("/api/workloads/{}/snapshots", w.id))
            .send()
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let id = r.job_id();
        if i % 5 == 0 {
            finish_job(&pool, id, "succeeded", None).await;
        }
        all.push((id, w.id, node));
    }
    // Pages of 10, newest first, no duplicates, all found.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/api/jobs?limit=10&cursor={c}"),
            None => "/api/jobs?limit=10".to_owned(),
        };
        let r = app.get(&uri).token(&app.viewer).send().await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let items = r.body["items"].as_array().unwrap();
        assert!(items.len() <= 10);
        seen.extend(
            items
                .iter()
                .map(|j| j["id"].as_str().unwrap().parse::<JobId>().unwrap()),
        );
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<JobId> = all.iter().rev().map(|(id, _, _)| *id).collect();
    assert_eq!(seen, expected, "newest first, each once");

    let count = |uri: String| {
        let app = &app;
        async move {
            let r = app.get(&uri).send().await;
            assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text);
            r.body["items"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("/api/jobs?state=succeeded".into()).await, 5);
    assert_eq!(count("/api/jobs?state=queued".into()).await, 20);
    assert_eq!(count("/api/jobs?state=queued,succeeded".into()).await, 25);
    assert_eq!(count("/api/jobs?kind=restore".into()).await, 0);
    assert_eq!(count("/api/jobs?kind=capture&node=node-a".into()).await, 13);
    assert_eq!(count(format!("/api/jobs?workload={}", all[3].1)).await, 1);
    assert_eq!(
        count(format!("/api/jobs?workload_id={}", all[3].1)).await,
        1
    );
    assert_eq!(
        count("/api/jobs?node=node-b&state=succeeded".into()).await,
        2
    );

    for bad in [
        "state=done",
        "kind=backup",
        "limit=0",
        "limit=501",
        "cursor=abc",
    ] {
        let r = app.get(&format!("/api/jobs?{bad}")).send().await;
        let r = r.expect_error(StatusCode::BAD_REQUEST, "invalid_field");
        assert!(
            bad.starts_with(r.body["error"]["field"].as_str().unwrap()),
            "{bad}: {}",
            r.text
        );
    }
    let ids: HashSet<JobId> = seen.into_iter().collect();
    assert_eq!(ids.len(), 25);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn cancel_outcomes(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let capture = |w: volsnap_shared::ids::WorkloadId| {
        let app = &app;
        async move {
            let r = app
                .post(&format!("/api/workloads/{w}/snapshots"))
                .send()
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED);
            r.job_id()
        }
    };
    // Queued: cancelled at once.
    let w1 = workload_row(&pool, "n", SourceKind::Image).await;
    let queued = capture(w1.id).await;
    let r = app.post(&format!("/api/jobs/{queued}/cancel")).send().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["state"], "cancelled");
    // Again: already final.
    app.post(&format!("/api/jobs/{queued}/cancel"))
        .send()
        .await
        .expect_error(StatusCode::CONFLICT, "already_final");

    // Running before quiesce: the worker is asked to stop it.
    let w2 = workload_row(&pool, "n", SourceKind::Image).await;
    let running = capture(w2.id).await;
    start_job(&pool, running).await;
    let r = app
        .post(&format!("/api/jobs/{running}/cancel"))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["state"], "running");
    assert_eq!(r.body["cancel_requested"], true);

    // Past the point of no return: refused, clearly.
    let w3 = workload_row(&pool, "n", SourceKind::Image).await;
    let late = capture(w3.id).await;
    start_job(&pool, late).await;
    sqlx::query("UPDATE jobs SET past_point_of_no_return = true WHERE id = $1")
        .bind(late)
        .execute(&pool)
        .await
        .unwrap();
    let r = app
        .post(&format!("/api/jobs/{late}/cancel"))
        .send()
        .await
        .expect_error(StatusCode::CONFLICT, "too_late");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stopped")
    );
    assert_eq!(r.body["job"]["cancel_requested"], false);

    app.post(&format!("/api/jobs/{}/cancel", JobId::new()))
        .send()
        .await
        .expect_error(StatusCode::NOT_FOUND, "job_not_found");
    app.req(
        axum::http::Method::POST,
        &format!("/api/jobs/{late}/cancel"),
    )
    .token(&app.viewer)
    .send()
    .await
    .expect_error(StatusCode::FORBIDDEN, "forbidden");
}
