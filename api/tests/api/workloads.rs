//! Workload CRUD and validation.

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use volsnap_shared::domain::SourceKind;
use volsnap_shared::ids::WorkloadId;

use crate::common::*;

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn create_read_update_list_delete(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let body = workload_body("web", "node-a", SourceKind::Image);
    let r = app.post("/api/workloads").json(body.clone()).send().await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.headers["location"], format!("/api/workloads/{id}"));
    assert_eq!(r.body["volumes"][0]["target"], "/var/lib/app");

    app.post("/api/workloads")
        .json(body.clone())
        .send()
        .await
        .expect_error(StatusCode::CONFLICT, "workload_exists");

    let mut changed = body.clone();
    changed["image"] = json!("registry.local/shop:2");
    let r = app
        .req(Method::PUT, &format!("/api/workloads/{id}"))
        .token(&app.admin)
        .json(changed)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["image"], "registry.local/shop:2");

    app.workload("node-b", SourceKind::Git).await;
    let r = app.get("/api/workloads?node=node-a").send().await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let r = app.get("/api/workloads?limit=1").send().await;
    let next = r.body["next_cursor"].as_str().unwrap().to_owned();
    let r = app
        .get(&format!("/api/workloads?limit=1&cursor={next}"))
        .send()
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert!(r.body["next_cursor"].is_null());

    let r = app
        .req(Method::DELETE, &format!("/api/workloads/{id}"))
        .token(&app.admin)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.get(&format!("/api/workloads/{id}"))
        .send()
        .await
        .expect_error(StatusCode::NOT_FOUND, "workload_not_found");
    app.req(Method::DELETE, &format!("/api/workloads/{id}"))
        .token(&app.admin)
        .send()
        .await
        .expect_error(StatusCode::NOT_FOUND, "workload_not_found");
    app.req(
        Method::PUT,
        &format!("/api/workloads/{}", WorkloadId::new()),
    )
    .token(&app.admin)
    .json(body)
    .send()
    .await
    .expect_error(StatusCode::NOT_FOUND, "workload_not_found");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn validation_names_the_field(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = workload_body("web", "node-a", SourceKind::Image);
    let cases = [
        ("name", json!("Web")),
        ("project", json!("-p")),
        ("stage", json!("x".repeat(64))),
        ("node", json!("")),
        ("node", json!("a b")),
        ("image", json!(null)),
        ("image", json!("has space")),
    ];
    for (field, value) in cases {
        let mut b = base.clone();
        b[field] = value.clone();
        let r = app
            .post("/api/workloads")
            .json(b)
            .send()
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(r.body["error"]["field"], field, "{field}={value}");
    }
    let vols = [
        (
            json!([{"scope": "absolute", "source": "relative", "target": "/d"}]),
            "volumes[0].source",
        ),
        (
            json!([{"scope": "absolute", "source": "/srv/../etc", "target": "/d"}]),
            "volumes[0].source",
        ),
        (
            json!([{"scope": "absolute", "source": "/etc", "target": "/d"}]),
            "volumes[0].source",
        ),
        (
            json!([{"scope": "project", "source": "/abs", "target": "/d"}]),
            "volumes[0].source",
        ),
        (
            json!([{"scope": "stage", "source": "a/../../b", "target": "/d"}]),
            "volumes[0].source",
        ),
        (
            json!([{"scope": "stage", "source": "a", "target": "d"}]),
            "volumes[0].target",
        ),
        (
            json!([{"scope": "stage", "source": "a", "target": "/d"}, {"scope": "stage", "source": "b", "target": "/d"}]),
            "volumes[1].target",
        ),
    ];
    for (v, field) in vols {
        let mut b = base.clone();
        b["volumes"] = v.clone();
        let r = app
            .post("/api/workloads")
            .json(b)
            .send()
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(r.body["error"]["field"], field, "{v}");
    }
    // Unknown scopes and fields are refused by the body's schema, naming them.
    let mut b = base.clone();
    b["volumes"] = json!([{"scope": "global", "source": "a", "target": "/d"}]);
    let r = app
        .post("/api/workloads")
        .json(b)
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(r.text.contains("volumes[0].scope"), "{}", r.text);
    let mut b = base.clone();
    b["stop_for_captur"] = json!(true);
    let r = app
        .post("/api/workloads")
        .json(b)
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(r.text.contains("stop_for_captur"), "{}", r.text);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn delete_and_rehome_refused_while_a_job_is_active(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let w = app.workload("node-a", SourceKind::Image).await;
    let r = app
        .post(&format!("/api/workloads/{}/snapshots", w.id))
        .send()
        .await;
    let job = r.job_id();
    let r = app
        .req(Method::DELETE, &format!("/api/workloads/{}", w.id))
        .token(&app.admin)
        .send()
        .await
        .expect_error(StatusCode::CONFLICT, "active_job");
    assert_eq!(r.body["error"]["job_id"], job.to_string());

    let mut moved = workload_body(&w.name, "node-b", SourceKind::Image);
    let r = app
        .req(Method::PUT, &format!("/api/workloads/{}", w.id))
        .token(&app.admin)
        .json(moved.clone())
        .send()
        .await
        .expect_error(StatusCode::CONFLICT, "active_job");
    assert_eq!(r.body["error"]["job_id"], job.to_string());
    // Other changes are fine.
    moved["node"] = json!("node-a");
    moved["stop_for_capture"] = json!(true);
    let r = app
        .req(Method::PUT, &format!("/api/workloads/{}", w.id))
        .token(&app.admin)
        .json(moved)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Finished, but its snapshot has a file: delete the snapshot first.
    sqlx::query(
        "UPDATE snapshots SET state = 'ready', archive_path = 'x.tar.gz', size_bytes = 1, sha256 = $1, manifest = '{}'",
    )
    .bind("b".repeat(64))
    .execute(&pool)
    .await
    .unwrap();
    finish_job(&pool, job, "succeeded", None).await;
    app.req(Method::DELETE, &format!("/api/workloads/{}", w.id))
        .token(&app.admin)
        .send()
        .await
        .expect_error(StatusCode::CONFLICT, "workload_has_snapshots");
    sqlx::query("UPDATE snapshots SET deleted_at = now(), file_removed_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let r = app
        .req(Method::DELETE, &format!("/api/workloads/{}", w.id))
        .token(&app.admin)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
}
