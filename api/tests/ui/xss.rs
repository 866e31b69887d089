//! Data from the API is text, never markup: hostile names render as the characters they
//! are and run nothing.

use serde_json::json;
use sqlx::PgPool;
use volsnap_shared::db;
use volsnap_shared::db::workloads::WorkloadFields;
use volsnap_shared::domain::{Role, SnapshotState, SourceKind};

use crate::common::*;
use crate::harness::*;

const NAME: &str = "<img src=x onerror=window.__xss=1>";
const NODE: &str = "<svg/onload=window.__xss=2>";
const IMAGE: &str = "<img/src=x/onerror=window.__xss=3>";
const TOKEN_NAME: &str = "<img src=x onerror=window.__xss=4>";
const ERROR: &str = "<img src=x onerror=window.__xss=5>";

/// No element the payloads could create exists, and none of them ran.
async fn nothing_ran(ui: &Ui) {
    assert_eq!(
        ui.js("return [typeof window.__xss, document.querySelectorAll('img, svg, script:not([src])').length]")
            .await,
        json!(["undefined", 0])
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn hostile_names_render_as_text(pool: PgPool) {
    // The API refuses such a name (and the schema's CHECK does too); the page must not
    // depend on that. This test's own database drops the CHECK to store one.
    sqlx::query("ALTER TABLE workloads DROP CONSTRAINT workloads_name_check")
        .execute(&pool)
        .await
        .unwrap();
    let w = db::workloads::insert(
        &pool,
        &WorkloadFields {
            image: Some(IMAGE.into()),
            ..workload_fields(NAME, NODE, SourceKind::Image)
        },
    )
    .await
    .unwrap();
    let old = snapshot_row(&pool, w.id, NODE, SnapshotState::Ready).await;
    let sid = snapshot_row(&pool, w.id, NODE, SnapshotState::Ready).await;
    // A failed job whose worker reported a hostile message.
    sqlx::query(
        "INSERT INTO jobs (id, kind, workload_id, snapshot_id, node, state, phase, error_code, \
                           error_message, requested_by, finished_at, created_at) \
         VALUES (gen_random_uuid(), 'restore', $1, $2, $3, 'failed', $4, $4, $4, $4, now(), \
                 now() - interval '1 minute')",
    )
    .bind(w.id)
    .bind(old)
    .bind(NODE)
    .bind(ERROR)
    .execute(&pool)
    .await
    .unwrap();
    let ui = Ui::start(pool.clone()).await;
    // The token's name becomes the jobs' requested_by.
    let token = token(&pool, TOKEN_NAME, Role::Admin).await;

    ui.sign_in_ok(&token).await;
    // The header names the token (from GET /api/whoami) as text.
    assert_eq!(ui.text("#whoami-name").await, TOKEN_NAME);
    let row = format!("#workloads-table tr[data-workload-id=\"{}\"]", w.id);
    ui.visible(&row).await;
    assert_eq!(ui.text(&format!("{row} td.name")).await, full_name(&w));
    let cells = ui.text(&row).await;
    assert!(cells.contains(NODE) && cells.contains(IMAGE), "{cells}");
    let failed = ui.wait_text("#jobs-table tbody", &[NAME, ERROR]).await;
    assert!(failed.contains(ERROR), "{failed}");
    nothing_ran(&ui).await;

    // Through the restore dialog, which names the workload and wants its name typed.
    ui.click(&format!("{row} button.show-snapshots")).await;
    ui.wait_text("#snapshots-title", &[NAME]).await;
    ui.click(&format!(
        "#snapshots-table tr[data-snapshot-id=\"{sid}\"] button.restore"
    ))
    .await;
    assert_eq!(ui.text("#restore-workload").await, full_name(&w));
    assert!(
        ui.text("#restore-expected")
            .await
            .ends_with(&format!("/{NAME}"))
    );
    ui.find("#restore-confirm")
        .await
        .send_keys(&full_name(&w))
        .await
        .unwrap();
    ui.click("#restore-submit").await;
    let notice = ui.wait_text("#snapshots-notice", &[NAME, "queued"]).await;
    assert!(notice.contains(NAME));
    let job: String =
        sqlx::query_scalar("SELECT id::text FROM jobs WHERE workload_id = $1 AND state = 'queued'")
            .bind(w.id)
            .fetch_one(&pool)
            .await
            .unwrap();

    // The job's page shows every field as text.
    ui.click(&format!("#jobs-table tr[data-job-id=\"{job}\"] a.job-link"))
        .await;
    ui.wait_text("dd[data-field=requested-by]", &[TOKEN_NAME])
        .await;
    assert!(
        ui.text("dd[data-field=workload]")
            .await
            .contains(&full_name(&w))
    );
    assert_eq!(ui.text("dd[data-field=node]").await, NODE);
    nothing_ran(&ui).await;
}
