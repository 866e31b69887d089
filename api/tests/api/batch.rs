//! Batch restores: each item checked and enqueued on its own.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use volsnap_shared::domain::{SnapshotState, SourceKind};
use volsnap_shared::ids::{BatchId, JobId, SnapshotId, WorkloadId};

use crate::common::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Accepted,
    Busy(JobId),
    NoWorkload,
    NoSnapshot,
    NotReady,
    NotImage,
    OtherWorkload,
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn two_hundred_items_with_bad_and_busy_ones(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let mut items: Vec<(WorkloadId, SnapshotId, Expect)> = Vec::new();
    let mut good = Vec::new();
    for i in 0..200 {
        let w = workload_row(
            &pool,
            if i % 2 == 0 { "node-a" } else { "node-b" },
            SourceKind::Image,
        )
        .await;
        let s = ready_snapshot(&pool, &w).await;
        let item = match i % 10 {
            // 20 busy: an active capture already holds the workload.
            1 => {
                let r = app
                    .post(&format!("/api/workloads/{}/snapshots", w.id))
                    .send()
                    .await;
                assert_eq!(r.status, StatusCode::ACCEPTED);
                (w.id, s, Expect::Busy(r.job_id()))
            }
            3 => (WorkloadId::new(), s, Expect::NoWorkload),
            5 => (w.id, SnapshotId::new(), Expect::NoSnapshot),
            7 => {
                let s = snapshot_row(&pool, w.id, &w.node, SnapshotState::Capturing).await;
                (w.id, s, Expect::NotReady)
            }
            9 if i % 20 == 9 => {
                let g = workload_row(&pool, "node-a", SourceKind::Git).await;
                let s = ready_snapshot(&pool, &g).await;
                (g.id, s, Expect::NotImage)
            }
            9 => {
                let (_, other) = *good.first().unwrap();
                (w.id, other, Expect::OtherWorkload)
            }
            _ => {
                good.push((w.id, s));
                (w.id, s, Expect::Accepted)
            }
        };
        items.push(item);
    }
    let body = json!({
        "items": items.iter().map(|(w, s, _)| json!({"workload_id": w, "snapshot_id": s})).collect::<Vec<_>>(),
        "max_parallel": 5,
        "stop_after_failures": 3,
    });

    // The confirmation is the item count.
    app.post("/api/restores")
        .json(body.clone())
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "confirmation_required");
    app.post("/api/restores")
        .header("x-confirm-restore", "199")
        .json(body.clone())
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "confirmation_mismatch");

    let r = app
        .post("/api/restores")
        .header("x-confirm-restore", "200")
        .json(body)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let batch_id: BatchId = r.body["batch_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(r.headers["location"], format!("/api/batches/{batch_id}"));
    let outcomes = r.body["items"].as_array().unwrap();
    assert_eq!(outcomes.len(), 200);
    let mut accepted = 0;
    for ((w, s, expect), got) in items.iter().zip(outcomes) {
        assert_eq!(got["workload_id"], w.to_string());
        assert_eq!(got["snapshot_id"], s.to_string());
        let (status, code) = (
            got["status"].as_u64().unwrap(),
            got["error"]["code"].clone(),
        );
        match expect {
            Expect::Accepted => {
                assert_eq!(status, 202, "{got}");
                accepted += 1;
            }
            Expect::Busy(active) => {
                assert_eq!((status, code), (409, json!("active_job")), "{got}");
                assert_eq!(got["job_id"], active.to_string(), "names the active job");
            }
            Expect::NoWorkload => {
                assert_eq!((status, code), (404, json!("workload_not_found")), "{got}")
            }
            Expect::NoSnapshot => {
                assert_eq!((status, code), (404, json!("snapshot_not_found")), "{got}")
            }
            Expect::NotReady => {
                assert_eq!((status, code), (400, json!("snapshot_not_ready")), "{got}")
            }
            Expect::NotImage => {
                assert_eq!((status, code), (400, json!("not_image_workload")), "{got}")
            }
            Expect::OtherWorkload => {
                assert_eq!(
                    (status, code),
                    (400, json!("snapshot_of_other_workload")),
                    "{got}"
                )
            }
        }
    }
    assert_eq!(r.body["accepted"], accepted);
    assert_eq!(accepted, good.len());

    // The jobs carry the batch id and route to their workloads' nodes.
    let rows: Vec<(WorkloadId, String, Option<BatchId>)> = sqlx::query_as(
        "SELECT j.workload_id, j.node, j.batch_id FROM jobs j WHERE j.kind = 'restore'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), accepted);
    assert!(rows.iter().all(|(_, _, b)| *b == Some(batch_id)));

    // The batch row keeps the options the queue enforces.
    let (mp, saf, n): (Option<i32>, Option<i32>, i32) = sqlx::query_as(
        "SELECT max_parallel, stop_after_failures, item_count FROM batches WHERE id = $1",
    )
    .bind(batch_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((mp, saf, n), (Some(5), Some(3), 200));

    // Status: counts per state, rejected items, jobs in order.
    let status = app
        .get(&format!("/api/batches/{batch_id}"))
        .token(&app.viewer)
        .send()
        .await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.text);
    assert_eq!(status.body["counts"]["queued"], accepted);
    assert_eq!(status.body["rejected"], 200 - accepted);
    assert_eq!(status.body["done"], false);
    assert_eq!(status.body["batch"]["max_parallel"], 5);
    assert_eq!(status.body["batch"]["stop_after_failures"], 3);
    let jobs = status.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), accepted);

    // Finish some: the counts follow.
    let ids: Vec<JobId> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().parse().unwrap())
        .collect();
    start_job(&pool, ids[0]).await;
    finish_job(&pool, ids[1], "succeeded", None).await;
    finish_job(&pool, ids[2], "failed", Some("insufficient_space")).await;
    let status = app.get(&format!("/api/batches/{batch_id}")).send().await;
    let counts: &Value = &status.body["counts"];
    assert_eq!(counts["running"], 1);
    assert_eq!(counts["succeeded"], 1);
    assert_eq!(counts["failed"], 1);
    assert_eq!(counts["queued"], accepted - 3);
    assert_eq!(counts["cancelled"], 0);

    // Jobs can be listed by batch.
    let listed = app
        .get(&format!("/api/jobs?batch={batch_id}&limit=500"))
        .send()
        .await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), accepted);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn duplicate_workload_in_a_batch_first_wins(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let w = workload_row(&pool, "node-a", SourceKind::Image).await;
    let s = ready_snapshot(&pool, &w).await;
    let item = json!({"workload_id": w.id, "snapshot_id": s});
    let r = app
        .post("/api/restores")
        .header("x-confirm-restore", "2")
        .json(json!({"items": [item, item]}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items[0]["status"], 202);
    assert_eq!(items[1]["status"], 409);
    assert_eq!(items[1]["job_id"], items[0]["job_id"]);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn batch_with_nothing_enqueued_is_200_and_bad_options_are_400(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let body =
        json!({"items": [{"workload_id": WorkloadId::new(), "snapshot_id": SnapshotId::new()}]});
    let r = app
        .post("/api/restores")
        .header("x-confirm-restore", "1")
        .json(body)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["accepted"], 0);
    assert_eq!(r.body["items"][0]["status"], 404);

    for (body, field) in [
        (json!({"items": []}), "items"),
        (
            json!({"items": [{"workload_id": WorkloadId::new(), "snapshot_id": SnapshotId::new()}], "max_parallel": 0}),
            "max_parallel",
        ),
        (
            json!({"items": [{"workload_id": WorkloadId::new(), "snapshot_id": SnapshotId::new()}], "stop_after_failures": -1}),
            "stop_after_failures",
        ),
    ] {
        let n = body["items"].as_array().unwrap().len();
        let r = app
            .post("/api/restores")
            .header("x-confirm-restore", n.to_string())
            .json(body)
            .send()
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(r.body["error"]["field"], field);
    }
    // Malformed items are a 400 for the whole request.
    app.post("/api/restores")
        .header("x-confirm-restore", "1")
        .json(json!({"items": [{"workload_id": "nope", "snapshot_id": SnapshotId::new()}]}))
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    // A viewer may not.
    app.req(axum::http::Method::POST, "/api/restores")
        .token(&app.viewer)
        .header("x-confirm-restore", "1")
        .json(json!({"items": [{"workload_id": WorkloadId::new(), "snapshot_id": SnapshotId::new()}]}))
        .send()
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
}
