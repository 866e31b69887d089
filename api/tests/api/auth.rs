//! Tokens: 401 without a valid one, 403 for a viewer on admin routes, revocation
//! within the cache time.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use volsnap_shared::db;
use volsnap_shared::domain::{Role, SourceKind};
use volsnap_shared::ids::{JobId, SnapshotId, WorkloadId};

use crate::common::*;

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn every_api_route_needs_a_token_and_writes_need_admin(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (w, s, j, b) = (
        WorkloadId::new(),
        SnapshotId::new(),
        JobId::new(),
        uuid::Uuid::new_v4(),
    );
    let reads = [
        "/api/whoami".to_owned(),
        "/api/workloads".to_owned(),
        format!("/api/workloads/{w}"),
        format!("/api/workloads/{w}/snapshots"),
        format!("/api/snapshots/{s}"),
        "/api/jobs".to_owned(),
        format!("/api/jobs/{j}"),
        format!("/api/batches/{b}"),
    ];
    let writes = [
        (Method::POST, "/api/workloads".to_owned()),
        (Method::PUT, format!("/api/workloads/{w}")),
        (Method::DELETE, format!("/api/workloads/{w}")),
        (Method::POST, format!("/api/workloads/{w}/snapshots")),
        (Method::DELETE, format!("/api/snapshots/{s}")),
        (
            Method::POST,
            format!("/api/workloads/{w}/snapshots/{s}/restore"),
        ),
        (Method::POST, "/api/restores".to_owned()),
        (Method::POST, format!("/api/jobs/{j}/cancel")),
    ];
    for uri in &reads {
        app.req(Method::GET, uri)
            .send()
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        let r = app.req(Method::GET, uri).token(&app.viewer).send().await;
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::NOT_FOUND,
            "{uri}: {}",
            r.text
        );
    }
    for (m, uri) in &writes {
        let r = app.req(m.clone(), uri).json(json!({})).send().await;
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        r.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        app.req(m.clone(), uri)
            .token(&app.viewer)
            .json(json!({}))
            .send()
            .await
            .expect_error(StatusCode::FORBIDDEN, "forbidden");
    }
    // The scheme is case-insensitive.
    let r = app
        .req(Method::GET, "/api/jobs")
        .header("authorization", format!("bearer {}", app.viewer))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_new_token_works_at_once_and_a_revoked_one_stops_within_the_ttl(pool: PgPool) {
    let app = TestApp::with_ttl(pool.clone(), Duration::from_millis(300)).await;
    // Warm the cache, then make a token: it works without waiting for the TTL.
    assert_eq!(app.get("/api/jobs").send().await.status, StatusCode::OK);
    let fresh = token(&pool, "fresh", Role::Admin).await;
    let r = app.req(Method::GET, "/api/jobs").token(&fresh).send().await;
    assert_eq!(r.status, StatusCode::OK);

    let revoked = db::tokens::revoke(&pool, "fresh").await.unwrap();
    assert_eq!(revoked.len(), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    app.req(Method::GET, "/api/jobs")
        .token(&fresh)
        .send()
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // Others are unaffected.
    assert_eq!(app.get("/api/jobs").send().await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn only_the_hash_is_stored(pool: PgPool) {
    let secret = token(&pool, "x", Role::Viewer).await;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT token_sha256 FROM api_tokens WHERE name = 'x'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, volsnap_api::auth::hash_token(&secret).to_vec());
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM api_tokens t")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!dump.contains(&secret[8..]));
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn viewer_reads_what_admin_wrote(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let w = app.workload("node-a", SourceKind::Image).await;
    let r = app
        .req(Method::GET, &format!("/api/workloads/{}", w.id))
        .token(&app.viewer)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["name"], w.name);
}
