//! Unauthenticated routes, the OpenAPI document, and the JSON shape of framework-level
//! failures (unknown route, wrong method, malformed input).

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::*;

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn health_readiness_metrics_and_index(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let r = app.req(Method::GET, "/healthz").send().await;
    assert_eq!(
        (r.status, r.body["status"].clone()),
        (StatusCode::OK, "ok".into())
    );
    let r = app.req(Method::GET, "/readyz").send().await;
    assert_eq!(
        (r.status, r.body["status"].clone()),
        (StatusCode::OK, "ready".into())
    );

    let r = app.req(Method::GET, "/metrics").send().await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    for name in [
        "volsnap_jobs_finished_total",
        "volsnap_jobs{",
        "volsnap_restore_bytes_total",
    ] {
        assert!(r.text.contains(name), "{name} missing from:\n{}", r.text);
    }

    let r = app.req(Method::GET, "/").send().await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text.contains("/api/openapi.json"));

    // Readiness fails while a migration is missing.
    sqlx::query("UPDATE _sqlx_migrations SET success = false")
        .execute(&pool)
        .await
        .unwrap();
    app.req(Method::GET, "/readyz")
        .send()
        .await
        .expect_error(StatusCode::SERVICE_UNAVAILABLE, "migrations_pending");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn build_refuses_a_database_with_pending_migrations(pool: PgPool) {
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&pool)
        .await
        .unwrap();
    let err = volsnap_api::build(
        pool,
        &volsnap_api::ServeConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            limits: Default::default(),
            token_cache_ttl: std::time::Duration::from_secs(2),
        },
    )
    .await
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("volsnap-api migrate"), "{err}");
}

/// The API refuses a schema a newer build migrated, as the worker does (one check,
/// `volsnap_shared::database::ensure_migrated`).
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn build_refuses_a_database_with_a_newer_schema(pool: PgPool) {
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999999999999, 'from a newer build', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = volsnap_api::build(
        pool,
        &volsnap_api::ServeConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            limits: Default::default(),
            token_cache_ttl: std::time::Duration::from_secs(2),
        },
    )
    .await
    .err()
    .expect("must refuse a schema newer than the binary");
    assert!(err.to_string().contains("upgrade volsnap"), "{err}");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn openapi_describes_every_route(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.req(Method::GET, "/api/openapi.json").send().await;
    assert_eq!(r.status, StatusCode::OK, "no token needed");
    let doc: &Value = &r.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/whoami", &["get"][..]),
        ("/api/workloads", &["get", "post"]),
        ("/api/workloads/{id}", &["get", "put", "delete"]),
        ("/api/workloads/{id}/snapshots", &["get", "post"]),
        ("/api/snapshots/{sid}", &["get", "delete"]),
        ("/api/workloads/{id}/snapshots/{sid}/restore", &["post"]),
        ("/api/restores", &["post"]),
        ("/api/jobs", &["get"]),
        ("/api/jobs/{id}", &["get"]),
        ("/api/jobs/{id}/cancel", &["post"]),
        ("/api/batches/{id}", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} missing"
            );
        }
    }
    let restore = &paths["/api/workloads/{id}/snapshots/{sid}/restore"]["post"]["responses"];
    for code in [
        "200", "202", "400", "401", "403", "404", "409", "422", "500",
    ] {
        assert!(
            restore.get(code).is_some(),
            "restore response {code} undocumented"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // whoami: bearer-protected like every /api route (no per-route `security: []`
    // override, as the open routes have), 200 and 401 documented, role an enum.
    let whoami = &paths["/api/whoami"]["get"];
    assert!(whoami.get("security").is_none(), "{whoami}");
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    for code in ["200", "401"] {
        assert!(whoami["responses"].get(code).is_some(), "whoami {code}");
    }
    let schema = &doc["components"]["schemas"]["Whoami"];
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["name", "role", "token_id"], "{schema}");
    assert_eq!(
        doc["components"]["schemas"]["Role"]["enum"],
        json!(["admin", "viewer"])
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn malformed_input_gets_json_4xx_never_5xx(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.get("/api/nope")
        .send()
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    app.req(Method::PATCH, "/api/jobs")
        .token(&app.admin)
        .send()
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    app.get("/api/workloads/not-a-uuid")
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_path");
    app.get("/api/jobs/%00")
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_path");
    app.get("/api/jobs?limit=abc")
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_query");
    app.get("/api/jobs?workload=zzz")
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_query");
    app.post("/api/workloads")
        .raw("application/json", "{not json")
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    app.post("/api/workloads")
        .raw("text/plain", "{}")
        .send()
        .await
        .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    app.post("/api/workloads")
        .raw("application/json", vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let r = app
        .post("/api/workloads")
        .raw(
            "application/json",
            r#"{"name":"a","project":"p","stage":"s","node":"n","source_kind":"vm"}"#,
        )
        .send()
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    assert!(
        r.text.contains("source_kind"),
        "names the field: {}",
        r.text
    );
    // NUL bytes never reach Postgres.
    let r = app.get("/api/jobs?node=a%00b").send().await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
}
