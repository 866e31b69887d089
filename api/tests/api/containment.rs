//! Volume rules at registration and update (issue 9): no two workloads of a node share,
//! contain or nest host directories; `absolute` volumes only under the node's published
//! `VOLSNAP_ABSOLUTE_ROOTS`; the same refusals as the worker's pre-flight; no host path
//! in error bodies. Plus the bad cursor and the node-name grammar.

use std::path::PathBuf;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use volsnap_shared::db;
use volsnap_shared::domain::{SourceKind, VolumeScope, VolumeSpec};
use volsnap_shared::volume::{self, NodeRoots};

use crate::common::*;

fn body(name: &str, node: &str, volumes: Value) -> Value {
    let mut b = workload_body(name, node, SourceKind::Image);
    b["volumes"] = volumes;
    b
}

fn stage(source: &str) -> Value {
    json!([{"scope": "stage", "source": source, "target": "/data"}])
}

fn absolute(source: &str) -> Value {
    json!([{"scope": "absolute", "source": source, "target": "/data"}])
}

async fn publish(pool: &PgPool, node: &str, absolute_roots: &[&str]) {
    db::nodes::publish_roots(
        pool,
        node,
        &NodeRoots {
            volumes_root: "/srv/vols".into(),
            absolute_roots: absolute_roots.iter().map(PathBuf::from).collect(),
            state_dir: "/var/lib/volsnap".into(),
            snapshot_dir: "/var/lib/volsnap/snapshots".into(),
        },
    )
    .await
    .unwrap();
}

impl TestApp {
    async fn create(&self, body: Value) -> Resp {
        self.post("/api/workloads").json(body).send().await
    }

    async fn put(&self, id: &str, body: Value) -> Resp {
        self.req(Method::PUT, &format!("/api/workloads/{id}"))
            .token(&self.admin)
            .json(body)
            .send()
            .await
    }
}

/// A 409 `volume_overlap` naming the other workload by id and project/stage/name.
#[track_caller]
fn expect_overlap(r: Resp, other_id: &str, other_name: &str) {
    let r = r.expect_error(StatusCode::CONFLICT, "volume_overlap");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(other_id), "{msg}");
    assert!(msg.contains(&format!("shop/prod/{other_name}")), "{msg}");
    assert_eq!(r.body["error"]["field"], "volumes[0].source");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn nested_and_identical_stage_paths_are_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let r = app.create(body("one", "node-a", stage("data"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let one = r.body["id"].as_str().unwrap().to_owned();

    // Registration: inside, identical (also spelled differently), containing.
    for v in [
        stage("data/sub"),
        stage("data"),
        stage("./data/"),
        json!([{"scope": "project", "source": "prod", "target": "/data"}]),
        json!([{"scope": "project", "source": "prod/data/x", "target": "/data"}]),
    ] {
        expect_overlap(app.create(body("two", "node-a", v)).await, &one, "one");
    }
    // A sibling, and the same path on another node, are fine.
    let r = app.create(body("two", "node-a", stage("data2"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let two = r.body["id"].as_str().unwrap().to_owned();
    let r = app.create(body("three", "node-b", stage("data"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // Update: moving two into one's directory is refused and changes nothing.
    expect_overlap(
        app.put(&two, body("two", "node-a", stage("data/sub")))
            .await,
        &one,
        "one",
    );
    // Moving three onto node-a, where one already owns `data`, likewise.
    let three = r.body["id"].as_str().unwrap().to_owned();
    expect_overlap(
        app.put(&three, body("three", "node-a", stage("data")))
            .await,
        &one,
        "one",
    );
    let r = app.get(&format!("/api/workloads/{two}")).send().await;
    assert_eq!(r.body["volumes"][0]["source"], "data2");
    // Re-saving a workload does not overlap with itself.
    let r = app.put(&one, body("one", "node-a", stage("data"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn absolute_and_stage_volumes_on_the_same_directory_are_refused(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    // The volumes root /srv/vols lies under the absolute root /srv.
    publish(&pool, "node-a", &["/srv"]).await;
    let r = app.create(body("one", "node-a", stage("data"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let one = r.body["id"].as_str().unwrap().to_owned();
    for p in [
        "/srv/vols/shop/prod/data",
        "/srv/vols/shop/prod/data/x",
        "/srv/vols/shop/prod",
    ] {
        expect_overlap(
            app.create(body("two", "node-a", absolute(p))).await,
            &one,
            "one",
        );
    }
    let r = app
        .create(body("two", "node-a", absolute("/srv/apps/x")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let two = r.body["id"].as_str().unwrap().to_owned();
    expect_overlap(
        app.put(
            &two,
            body("two", "node-a", absolute("/srv/vols/shop/prod/data")),
        )
        .await,
        &one,
        "one",
    );
    // And the other way round: a stage volume onto an absolute one's directory.
    let r = app
        .create(body("three", "node-a", absolute("/srv/vols/shop/prod/db")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let three = r.body["id"].as_str().unwrap().to_owned();
    expect_overlap(
        app.put(&one, body("one", "node-a", stage("db/inner")))
            .await,
        &three,
        "three",
    );
    let r = app.get(&format!("/api/workloads/{one}")).send().await;
    assert_eq!(r.body["volumes"][0]["source"], "data");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn absolute_volumes_need_the_nodes_absolute_roots(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let refused = |r: Resp, secret: &str| {
        let r = r.expect_error(StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(r.body["error"]["field"], "volumes[0].source");
        let msg = r.body["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains("VOLSNAP_ABSOLUTE_ROOTS"), "{msg}");
        assert!(
            !r.text.contains(secret),
            "host path in the body: {}",
            r.text
        );
    };
    // The node's worker has not published anything yet.
    refused(
        app.create(body("w", "node-a", absolute("/data/apps/x")))
            .await,
        "/data/apps",
    );
    // It published, without absolute roots.
    publish(&pool, "node-a", &[]).await;
    refused(
        app.create(body("w", "node-a", absolute("/data/apps/x")))
            .await,
        "/data/apps",
    );
    // With roots: outside them is refused, inside is fine.
    publish(&pool, "node-a", &["/data/apps"]).await;
    refused(
        app.create(body("w", "node-a", absolute("/data/other/x")))
            .await,
        "/data/other",
    );
    refused(
        app.create(body("w", "node-a", absolute("/home/u/.ssh")))
            .await,
        "/home/u",
    );
    let r = app
        .create(body("w", "node-a", absolute("/data/apps/x/")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["volumes"][0]["source"], "/data/apps/x");
    // An update onto a node without absolute roots is refused too.
    let id = r.body["id"].as_str().unwrap().to_owned();
    refused(
        app.put(&id, body("w", "node-b", absolute("/data/apps/x")))
            .await,
        "/data/apps",
    );
}

/// `/run/x` is refused by the API exactly as the worker's pre-flight refuses it (the
/// worker's test `run_is_refused_like_the_api_refuses_it` compares the same text).
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn run_is_refused_like_the_worker_refuses_it(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let spec = VolumeSpec {
        scope: VolumeScope::Absolute,
        source: "/run/x".into(),
        target: "/data".into(),
    };
    let rule = volume::check_config("shop", "prod", &[spec], None)
        .unwrap_err()
        .to_string();
    // Even a node whose roots would allow it (a worker refuses such a root at start).
    publish(&pool, "node-b", &["/run"]).await;
    for node in ["node-a", "node-b"] {
        let r = app
            .create(body("w", node, absolute("/run/x")))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(r.body["error"]["field"], "volumes[0].source");
        assert_eq!(
            r.body["error"]["message"],
            format!("volumes[0].source: {rule}")
        );
        assert!(!r.text.contains("/run/x"), "{}", r.text);
    }
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_300_byte_component_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let long = "x".repeat(300);
    let r = app
        .create(body("w", "node-a", stage(&format!("data/{long}"))))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_field");
    assert_eq!(r.body["error"]["field"], "volumes[0].source");
    assert!(!r.text.contains(&long));
    let r = app
        .create(body(
            "w",
            "node-a",
            json!([{"scope": "stage", "source": "data", "target": format!("/{long}")}]),
        ))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_field");
    assert_eq!(r.body["error"]["field"], "volumes[0].target");
    // 255 bytes is the limit, and fine.
    let r = app
        .create(body("w", "node-a", stage(&"y".repeat(255))))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app.get("/api/workloads").send().await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn node_names_with_invisible_characters_are_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let w = app.workload("node-a", SourceKind::Image).await;
    for bad in [
        "node\u{200b}-a",
        "node\u{202e}a-",
        "nod\u{0435}-a",
        "node\u{00a0}a",
    ] {
        let r = app
            .create(workload_body("w", bad, SourceKind::Image))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(r.body["error"]["field"], "node", "{bad:?}");
        let r = app
            .put(
                &w.id.to_string(),
                workload_body(&w.name, bad, SourceKind::Image),
            )
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(r.body["error"]["field"], "node", "{bad:?}");
    }
    for q in [
        "/api/jobs?node=node%E2%80%8Ba",
        "/api/workloads?node=node%E2%80%AEa",
    ] {
        app.get(q)
            .send()
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_field");
    }
    let r = app.get(&format!("/api/workloads/{}", w.id)).send().await;
    assert_eq!(r.body["node"], "node-a");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_cursor_with_an_out_of_range_timestamp_is_a_400(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let w = app.workload("node-a", SourceKind::Image).await;
    // Valid hex of the right length, timestamp far beyond what PostgreSQL stores.
    let far = db::Cursor {
        created_at: chrono::DateTime::from_timestamp_micros(i64::MAX / 2).unwrap(),
        id: uuid::Uuid::nil(),
    }
    .encode();
    let early = db::Cursor {
        created_at: chrono::DateTime::from_timestamp_micros(-i64::MAX / 2).unwrap(),
        id: uuid::Uuid::nil(),
    }
    .encode();
    for c in [&early, &far] {
        for uri in [
            format!("/api/jobs?cursor={c}"),
            format!("/api/workloads/{}/snapshots?cursor={c}", w.id),
        ] {
            let r = app
                .get(&uri)
                .send()
                .await
                .expect_error(StatusCode::BAD_REQUEST, "invalid_field");
            assert_eq!(r.body["error"]["field"], "cursor", "{uri}");
        }
    }
}

/// Registrations on one node are serialised: of twenty concurrent registrations of one
/// directory (or nested ones) under different names, exactly one wins. Ten rounds, on
/// ten nodes, to give a missing lock every chance to show (without the per-node lock
/// most runs fail).
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn concurrent_registrations_of_one_directory_one_wins(pool: PgPool) {
    let admin = token(&pool, "admin", volsnap_shared::domain::Role::Admin).await;
    let addr = spawn_server(pool.clone()).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/workloads");
    for round in 0..10 {
        let node = format!("node-{round}");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            let (client, url, admin, barrier, node) = (
                client.clone(),
                url.clone(),
                admin.clone(),
                barrier.clone(),
                node.clone(),
            );
            tasks.spawn(async move {
                let source = if i % 2 == 0 { "data" } else { "data/nested" };
                let b = body(&format!("w{round}-{i}"), &node, stage(source));
                barrier.wait().await;
                let r = client
                    .post(&url)
                    .bearer_auth(&admin)
                    .json(&b)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            });
        }
        let results = tasks.join_all().await;
        let created = results.iter().filter(|(s, _)| *s == 201).count();
        assert_eq!(created, 1, "round {round}: {results:?}");
        for (s, b) in &results {
            assert!(
                *s == 201 || (*s == 409 && b["error"]["code"] == "volume_overlap"),
                "{s} {b}"
            );
        }
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM workloads")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 10);
}
