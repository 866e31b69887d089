//! Restoring from the UI: the confirmation dialog, the job's row following the job
//! live, the API's 409 and a viewer's 403.

use fantoccini::key::Key;
use serde_json::json;
use sqlx::PgPool;
use volsnap_shared::domain::{SnapshotState, SourceKind, Workload};
use volsnap_shared::ids::SnapshotId;

use crate::common::*;
use crate::harness::*;

async fn jobs_of(pool: &PgPool, w: &Workload) -> Vec<(String, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT id::text, state, kind, requested_by FROM jobs WHERE workload_id = $1 ORDER BY created_at",
    )
    .bind(w.id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Show the workload's snapshots, open the restore dialog of `sid`.
async fn open_dialog(ui: &Ui, w: &Workload, sid: SnapshotId) {
    show_snapshots(ui, w).await;
    click_restore(ui, sid).await;
}

async fn show_snapshots(ui: &Ui, w: &Workload) {
    ui.click(&format!(
        "#workloads-table tr[data-workload-id=\"{}\"] button.show-snapshots",
        w.id
    ))
    .await;
}

async fn click_restore(ui: &Ui, sid: SnapshotId) {
    ui.click(&format!(
        "#snapshots-table tr[data-snapshot-id=\"{sid}\"] button.restore"
    ))
    .await;
    ui.wait_js(
        "the restore dialog to open",
        "return document.getElementById('restore-dialog').open",
    )
    .await;
}

async fn dialog_open(ui: &Ui) -> bool {
    ui.js("return document.getElementById('restore-dialog').open")
        .await
        .as_bool()
        .unwrap()
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn restore_needs_the_typed_name_and_its_row_follows_the_job_live(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = workload_row(&pool, "node-a", SourceKind::Image).await;
    let sid = ready_snapshot(&pool, &w).await;
    ui.sign_in_ok(&ui.admin).await;

    open_dialog(&ui, &w, sid).await;
    // The dialog names what is about to happen, and focus is in it.
    let what = ui.text("#restore-what").await;
    assert!(
        what.contains(&w.name) && what.contains(&sid.to_string()),
        "{what}"
    );
    assert_eq!(
        ui.js("return document.activeElement.id").await,
        json!("restore-confirm")
    );
    let submit = ui.find("#restore-submit").await;
    assert!(!submit.is_enabled().await.unwrap(), "enabled before typing");
    let input = ui.find("#restore-confirm").await;
    for wrong in [&w.name[..w.name.len() - 1], "shop", "yes"] {
        input.clear().await.unwrap();
        input.send_keys(wrong).await.unwrap();
        assert!(
            !submit.is_enabled().await.unwrap(),
            "enabled after typing {wrong:?}"
        );
    }

    // Escape closes it and nothing is asked of the API.
    input.send_keys(&Key::Escape.to_string()).await.unwrap();
    ui.wait_js(
        "Escape to close the dialog",
        "return !document.getElementById('restore-dialog').open",
    )
    .await;
    assert!(jobs_of(&pool, &w).await.is_empty());

    // Again, with the workload's name typed: the button enables, the job is made.
    open_dialog(&ui, &w, sid).await;
    let input = ui.find("#restore-confirm").await;
    assert_eq!(input.prop("value").await.unwrap().as_deref(), Some(""));
    input.send_keys(&full_name(&w)).await.unwrap();
    let submit = ui.find("#restore-submit").await;
    assert!(submit.is_enabled().await.unwrap());
    submit.click().await.unwrap();
    ui.wait_js(
        "the dialog to close after the restore was accepted",
        "return !document.getElementById('restore-dialog').open",
    )
    .await;
    let jobs = jobs_of(&pool, &w).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let (job, state, kind, by) = jobs[0].clone();
    assert_eq!(
        (state.as_str(), kind.as_str(), by.as_deref()),
        ("queued", "restore", Some(ADMIN_NAME))
    );
    ui.wait_text("#snapshots-notice", &[&job, "queued"]).await;
    ui.wait_row_state(&job, "queued").await;

    // A worker would now claim and finish it: the row follows without a reload.
    ui.js("window.__samePage = 'yes'; return null").await;
    start_job(&pool, job.parse().unwrap()).await;
    ui.wait_row_state(&job, "running").await;
    assert_eq!(
        ui.text(&format!("#jobs-table tr[data-job-id=\"{job}\"] td.attempt"))
            .await,
        "1"
    );
    finish_job(&pool, job.parse().unwrap(), "succeeded", None).await;
    ui.wait_row_state(&job, "succeeded").await;
    let finished = ui
        .text(&format!(
            "#jobs-table tr[data-job-id=\"{job}\"] td.finished"
        ))
        .await;
    assert_ne!(finished, "—");
    assert_eq!(ui.js("return window.__samePage").await, json!("yes"));
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn the_apis_400_and_409_are_shown_in_the_dialog(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = workload_row(&pool, "node-a", SourceKind::Image).await;
    let sid = ready_snapshot(&pool, &w).await;
    let elsewhere = snapshot_row(&pool, w.id, "node-b", SnapshotState::Ready).await;
    ui.sign_in_ok(&ui.admin).await;

    // A 400 with its reason.
    open_dialog(&ui, &w, elsewhere).await;
    confirm_and_submit(&ui, &full_name(&w)).await;
    let shown = ui
        .wait_text("#restore-error", &["400 snapshot_on_other_node"])
        .await;
    assert!(
        shown.contains("node-b") && shown.contains("node-a"),
        "{shown}"
    );
    assert!(
        dialog_open(&ui).await,
        "the dialog stays open with the error"
    );
    ui.click("#restore-cancel").await;

    // A restore made elsewhere while the dialog is open (the page shows a busy workload
    // without restore buttons, so only a race gets here): 409 naming it.
    click_restore(&ui, sid).await;
    let active = ui.restore_via_api(w.id, sid).await;
    assert!(
        !ui.find("#restore-error")
            .await
            .is_displayed()
            .await
            .unwrap(),
        "an old error is shown"
    );
    confirm_and_submit(&ui, &full_name(&w)).await;
    let shown = ui
        .wait_text("#restore-error", &["409 active_job", &active])
        .await;
    assert!(shown.contains("already has an active job"), "{shown}");
    assert!(
        dialog_open(&ui).await,
        "the dialog stays open with the error"
    );
    assert_eq!(jobs_of(&pool, &w).await.len(), 1);

    // The error links the active job.
    ui.click(&format!("#restore-error a[href=\"#/jobs/{active}\"]"))
        .await;
    ui.wait_text("#job-id", &[&active]).await;
    assert!(!dialog_open(&ui).await);
    ui.wait_text("dd[data-field=state]", &["queued"]).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_viewer_cannot_restore_or_cancel(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = workload_row(&pool, "node-a", SourceKind::Image).await;
    let sid = ready_snapshot(&pool, &w).await;
    let queued = ui.restore_via_api(w.id, sid).await;
    let w2 = workload_row(&pool, "node-a", SourceKind::Image).await;
    let sid2 = ready_snapshot(&pool, &w2).await;

    ui.sign_in_ok(&ui.viewer).await;
    // The role is known from GET /api/whoami before anything is tried: signing in only
    // read (no 403 could have told the page), yet the write buttons are disabled.
    assert_eq!(
        ui.text("#whoami").await,
        format!("signed in as {VIEWER_NAME} (viewer · read-only)")
    );
    ui.assert_sign_in_only_reads(0).await;
    ui.wait_row_state(&queued, "queued").await;
    let cancel = ui
        .find(&format!(
            "#jobs-table tr[data-job-id=\"{queued}\"] button.cancel"
        ))
        .await;
    assert!(
        !cancel.is_enabled().await.unwrap(),
        "cancel is enabled for a viewer"
    );
    show_snapshots(&ui, &w2).await;
    let restore_css = format!("#snapshots-table tr[data-snapshot-id=\"{sid2}\"] button.restore");
    let restore = ui.visible(&restore_css).await;
    assert!(
        !restore.is_enabled().await.unwrap(),
        "restore is enabled for a viewer"
    );
    assert!(
        restore
            .attr("title")
            .await
            .unwrap()
            .unwrap()
            .contains("admin token")
    );

    // The buttons are a courtesy; the API decides. Forced enabled, both are refused
    // with 403 and the answer is shown as it is.
    ui.js_with(
        "arguments[0].disabled = false; return null",
        vec![serde_json::to_value(&restore).unwrap()],
    )
    .await;
    click_restore(&ui, sid2).await;
    ui.find("#restore-confirm")
        .await
        .send_keys(&full_name(&w2))
        .await
        .unwrap();
    ui.click("#restore-submit").await;
    let shown = ui.wait_text("#restore-error", &["403 forbidden"]).await;
    assert!(shown.contains("viewer token"), "{shown}");
    assert!(jobs_of(&pool, &w2).await.is_empty(), "a viewer made a job");
    ui.click("#restore-cancel").await;

    ui.js_with(
        "document.querySelector(`#jobs-table tr[data-job-id=\"${arguments[0]}\"] button.cancel`).disabled = false; return null",
        vec![json!(queued)],
    )
    .await;
    ui.click(&format!(
        "#jobs-table tr[data-job-id=\"{queued}\"] button.cancel"
    ))
    .await;
    ui.wait_text("#jobs-error", &["403 forbidden"]).await;
    let jobs = jobs_of(&pool, &w).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].1, "queued", "a viewer cancelled a job");
}

/// Type the workload's name into the open dialog and submit it.
async fn confirm_and_submit(ui: &Ui, name: &str) {
    ui.find("#restore-confirm")
        .await
        .send_keys(name)
        .await
        .unwrap();
    ui.click("#restore-submit").await;
}
