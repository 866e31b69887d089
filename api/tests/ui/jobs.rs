//! The jobs list and a job's page: cancelling, paging through many jobs, filtering.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use volsnap_shared::domain::{SourceKind, Workload};

use crate::common::*;
use crate::harness::*;

async fn job_state(pool: &PgPool, id: &str) -> String {
    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Enqueue a capture through the API; the job's id.
async fn capture_via_api(ui: &Ui, w: &Workload) -> String {
    let (status, body) = ui
        .api_post(&format!("/api/workloads/{}/snapshots", w.id), &[])
        .await;
    assert_eq!(status, 202, "{body}");
    body["job"]["id"].as_str().unwrap().to_owned()
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn cancel_from_the_list_and_from_the_job_page(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = workload_row(&pool, "node-a", SourceKind::Image).await;
    let sid = ready_snapshot(&pool, &w).await;
    let restore = ui.restore_via_api(w.id, sid).await;
    let w2 = workload_row(&pool, "node-a", SourceKind::Image).await;
    let capture = capture_via_api(&ui, &w2).await;
    ui.sign_in_ok(&ui.admin).await;

    // From the list.
    ui.wait_row_state(&restore, "queued").await;
    ui.click(&format!(
        "#jobs-table tr[data-job-id=\"{restore}\"] button.cancel"
    ))
    .await;
    eventually("the restore to be cancelled in the database", || async {
        (job_state(&pool, &restore).await == "cancelled").then_some(())
    })
    .await;
    ui.wait_row_state(&restore, "cancelled").await;
    ui.wait_text("#jobs-notice", &[&restore, "cancelled"]).await;
    assert_eq!(
        ui.js_with(
            "return document.querySelectorAll(`#jobs-table tr[data-job-id=\"${arguments[0]}\"] button.cancel`).length",
            vec![json!(restore)]
        )
        .await,
        json!(0),
        "a cancelled job offers no cancel"
    );

    // From the job's page.
    ui.click(&format!(
        "#jobs-table tr[data-job-id=\"{capture}\"] a.job-link"
    ))
    .await;
    ui.wait_text("dd[data-field=state]", &["queued"]).await;
    assert_eq!(ui.text("dd[data-field=kind]").await, "capture");
    ui.click("#job-cancel").await;
    eventually("the capture to be cancelled in the database", || async {
        (job_state(&pool, &capture).await == "cancelled").then_some(())
    })
    .await;
    ui.wait_text("dd[data-field=state]", &["cancelled"]).await;
    assert!(!ui.find("#job-cancel").await.is_displayed().await.unwrap());

    // A job that can no longer be cancelled: the API's 409 is shown.
    let w3 = workload_row(&pool, "node-a", SourceKind::Image).await;
    let late = capture_via_api(&ui, &w3).await;
    ui.js(&format!("location.hash = '#/jobs/{late}'; return null"))
        .await;
    ui.wait_text("dd[data-field=state]", &["queued"]).await;
    sqlx::query(
        "UPDATE jobs SET state = 'running', worker_id = 'w', started_at = now(), \
         heartbeat_at = now(), attempt = 1, past_point_of_no_return = true WHERE id = $1::uuid",
    )
    .bind(&late)
    .execute(&pool)
    .await
    .unwrap();
    ui.click("#job-cancel").await;
    ui.wait_text(
        "#job-error",
        &["409 too_late", "can no longer be cancelled"],
    )
    .await;
    assert_eq!(job_state(&pool, &late).await, "running");
}

/// The ids of the rows shown, top to bottom.
async fn shown_rows(ui: &Ui) -> Vec<String> {
    let v = ui
        .js("return [...document.querySelectorAll('#jobs-table tbody tr')].map(r => r.dataset.jobId)")
        .await;
    serde_json::from_value(v).unwrap()
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn twelve_hundred_jobs_come_a_page_at_a_time_and_filter_by_state(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = workload_row(&pool, "node-a", SourceKind::Image).await;
    // 1,200 finished captures, one second apart; every tenth failed.
    sqlx::query(
        "INSERT INTO jobs (id, kind, workload_id, node, state, phase, error_code, error_message, \
                           created_at, finished_at) \
         SELECT gen_random_uuid(), 'capture', $1, $2, \
                CASE WHEN g % 10 = 0 THEN 'failed' ELSE 'succeeded' END, 'done', \
                CASE WHEN g % 10 = 0 THEN 'docker_error' END, \
                CASE WHEN g % 10 = 0 THEN 'docker failed' END, \
                now() - g * interval '1 second', now() \
         FROM generate_series(1, 1200) AS g",
    )
    .bind(w.id)
    .bind(&w.node)
    .execute(&pool)
    .await
    .unwrap();
    let newest: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM jobs ORDER BY created_at DESC, id DESC LIMIT 200")
            .fetch_all(&pool)
            .await
            .unwrap();

    ui.sign_in_ok(&ui.admin).await;
    assert_eq!(
        shown_rows(&ui).await,
        newest[..100],
        "the newest page, in order"
    );
    ui.wait_text("#jobs-count", &["100 jobs shown", "older ones"])
        .await;

    ui.click("#jobs-more").await;
    ui.wait_text("#jobs-count", &["200 jobs shown"]).await;
    assert_eq!(
        shown_rows(&ui).await,
        newest,
        "two pages, no gap, no repeat"
    );

    // Refreshes merge into what is shown: a new job goes on top, nothing repeats.
    let w2 = workload_row(&pool, "node-a", SourceKind::Image).await;
    let fresh = capture_via_api(&ui, &w2).await;
    ui.wait_row_state(&fresh, "queued").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rows = shown_rows(&ui).await;
    assert_eq!(rows.len(), 201);
    assert_eq!(rows[0], fresh);
    assert_eq!(rows[1..], newest[..]);

    // Filter by state: failed jobs only, 120 of them over two pages.
    ui.find("#filter-state")
        .await
        .select_by_value("failed")
        .await
        .unwrap();
    ui.wait_text("#jobs-count", &["100 jobs shown", "older ones"])
        .await;
    let states = ui
        .js("return [...new Set([...document.querySelectorAll('#jobs-table tbody tr')].map(r => r.dataset.state))]")
        .await;
    assert_eq!(states, json!(["failed"]));
    ui.click("#jobs-more").await;
    ui.wait_text("#jobs-count", &["120 jobs shown"]).await;
    assert!(!ui.find("#jobs-more").await.is_displayed().await.unwrap());

    // Active only: just the new capture; once it finishes it leaves the filtered list.
    ui.find("#filter-state")
        .await
        .select_by_value("queued,running")
        .await
        .unwrap();
    ui.wait_text("#jobs-count", &["1 job shown"]).await;
    assert_eq!(shown_rows(&ui).await, vec![fresh.clone()]);
    finish_job(&pool, fresh.parse().unwrap(), "succeeded", None).await;
    ui.wait_text("#jobs-count", &["0 jobs shown"]).await;
    assert!(ui.find("#jobs-empty").await.is_displayed().await.unwrap());
}
