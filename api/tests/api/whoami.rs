//! `GET /api/whoami`: the calling token's id, name and role for any valid token, never
//! its secret or hash; 401 in the usual error shape without a valid one.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use volsnap_shared::db;
use volsnap_shared::domain::Role;

use crate::common::*;

/// A token made as `volsnap-api token create` makes one: its secret and its row.
async fn made(pool: &PgPool, name: &str, role: Role) -> (String, db::tokens::TokenRow) {
    let (secret, hash) = volsnap_api::auth::generate_token();
    let row = db::tokens::insert(pool, name, role, &hash).await.unwrap();
    (secret, row)
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn whoami_names_the_token_and_its_role(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let (bot, bot_row) = made(&pool, "ops-bot", Role::Viewer).await;
    let (ci, ci_row) = made(&pool, "ci-deploy", Role::Admin).await;

    for (secret, row, role) in [(&bot, &bot_row, "viewer"), (&ci, &ci_row, "admin")] {
        let r = app
            .req(Method::GET, "/api/whoami")
            .token(secret)
            .send()
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(
            r.body,
            json!({"token_id": row.id.to_string(), "name": row.name, "role": role}),
            "exactly these members"
        );
        // Neither the secret nor its hash is ever echoed.
        let hash = hex::encode(volsnap_api::auth::hash_token(secret));
        assert!(!r.text.contains(&secret[8..]) && !r.text.contains(&hash));
    }

    // The harness's own tokens, by the name they were made with.
    let r = app
        .req(Method::GET, "/api/whoami")
        .token(&app.viewer)
        .send()
        .await;
    assert_eq!(
        (&r.body["name"], &r.body["role"]),
        (&json!("viewer"), &json!("viewer"))
    );
    let r = app.get("/api/whoami").send().await;
    assert_eq!(
        (&r.body["name"], &r.body["role"]),
        (&json!("admin"), &json!("admin"))
    );

    // Read-only: a write method is not a way to ask (and not a route).
    app.req(Method::POST, "/api/whoami")
        .token(&ci)
        .send()
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn whoami_without_a_valid_token_is_401(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let wrong = format!("volsnap_{}", "0".repeat(64));
    let cases: [(&str, Option<String>); 5] = [
        ("no header", None),
        ("empty bearer", Some("Bearer ".to_owned())),
        ("another scheme", Some(format!("Basic {}", app.admin))),
        ("unknown token", Some(format!("Bearer {wrong}"))),
        ("garbage", Some("Bearer not-a-token".to_owned())),
    ];
    for (what, header) in cases {
        let mut req = app.req(Method::GET, "/api/whoami");
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        let r = req.send().await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text);
        assert_eq!(r.headers["www-authenticate"], "Bearer", "{what}");
        let r = r.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(r.body.get("name").is_none() && r.body.get("role").is_none());
    }
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn whoami_refuses_a_revoked_token_within_the_cache_time(pool: PgPool) {
    let app = TestApp::with_ttl(pool.clone(), Duration::from_millis(300)).await;
    let (secret, row) = made(&pool, "leaving", Role::Admin).await;
    let r = app
        .req(Method::GET, "/api/whoami")
        .token(&secret)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["name"], "leaving");

    let revoked = db::tokens::revoke(&pool, &row.id.to_string())
        .await
        .unwrap();
    assert_eq!(revoked.len(), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    app.req(Method::GET, "/api/whoami")
        .token(&secret)
        .send()
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // Other tokens still answer.
    assert_eq!(app.get("/api/whoami").send().await.status, StatusCode::OK);
}
