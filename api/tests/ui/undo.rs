//! Undo from a job's page (issue 11): *Undo…* on a succeeded restore or undo, the dialog
//! that wants `project/stage/name` typed, `POST /api/jobs/{id}/undo` with
//! `X-Confirm-Restore: <job id>`, the new undo job's page, the API's 409s in the dialog, a
//! viewer's disabled button, the Russian dialog and an axe audit of it.
//!
//! As in the rest of this suite, what a worker would do (claim, finish) is done with SQL.

use fantoccini::key::Key;
use serde_json::json;
use sqlx::PgPool;
use volsnap_shared::domain::Workload;

use crate::common::*;
use crate::console::{axe_violations, enabled, jid, set_lang, set_theme, type_into, wl};
use crate::harness::*;

/// A restore of a fresh snapshot of `w`, made through the API and finished as `state`.
async fn restore_finished(ui: &Ui, pool: &PgPool, w: &Workload, state: &str) -> String {
    let sid = ready_snapshot(pool, w).await;
    let job = ui.restore_via_api(w.id, sid).await;
    start_job(pool, jid(&job)).await;
    let code = (state == "failed").then_some("docker_error");
    finish_job(pool, jid(&job), state, code).await;
    job
}

/// The undo jobs that name `source` as the job they revert: `(id, state, requested_by)`.
async fn undos_of(pool: &PgPool, source: &str) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT j.id::text, j.state, j.requested_by FROM jobs j \
         JOIN job_sources s ON s.job_id = j.id \
         WHERE s.source_job_id = $1::uuid AND j.kind = 'undo' ORDER BY j.created_at",
    )
    .bind(source)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn undo_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'undo'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Go to `#/jobs/{job}` and wait until the page shows that job in `state`.
async fn open_job(ui: &Ui, job: &str, state: &str) {
    ui.js_with(
        "location.hash = '#/jobs/' + arguments[0]; return null",
        vec![json!(job)],
    )
    .await;
    ui.wait_js(
        &format!("job {job}'s page to show {state}"),
        &format!(
            "const d = document.querySelector('dd[data-field=state]'); \
             return document.getElementById('job-id').textContent === '{job}' \
               && !!d && d.textContent.includes('{state}') || null"
        ),
    )
    .await;
}

async fn undo_shown(ui: &Ui) -> bool {
    ui.find("#job-undo").await.is_displayed().await.unwrap()
}

async fn open_undo(ui: &Ui) {
    ui.click("#job-undo").await;
    ui.wait_js(
        "the undo dialog to open",
        "return document.getElementById('undo-dialog').open",
    )
    .await;
}

async fn dialog_open(ui: &Ui) -> bool {
    ui.js("return document.getElementById('undo-dialog').open")
        .await
        .as_bool()
        .unwrap()
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn undo_is_offered_for_succeeded_restores_and_undos_only(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let a = wl(&pool, "acme", "prod", "alpha").await;
    let b = wl(&pool, "acme", "prod", "beta").await;
    let c = wl(&pool, "acme", "prod", "gamma").await;
    let d = wl(&pool, "acme", "prod", "delta").await;
    let failed = restore_finished(&ui, &pool, &a, "failed").await;
    let cancelled = restore_finished(&ui, &pool, &b, "cancelled").await;
    let queued = ui
        .restore_via_api(c.id, ready_snapshot(&pool, &c).await)
        .await;
    let (status, body) = ui
        .api_post(&format!("/api/workloads/{}/snapshots", d.id), &[])
        .await;
    assert_eq!(status, 202, "{body}");
    let capture = body["job"]["id"].as_str().unwrap().to_owned();
    start_job(&pool, jid(&capture)).await;
    finish_job(&pool, jid(&capture), "succeeded", None).await;
    let restored = restore_finished(&ui, &pool, &d, "succeeded").await;
    // An undo (made by a client), finished: it can be undone in turn.
    let (status, body) = ui
        .api_post(
            &format!("/api/jobs/{restored}/undo"),
            &[("x-confirm-restore", &restored)],
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let undo = body["job"]["id"].as_str().unwrap().to_owned();
    start_job(&pool, jid(&undo)).await;
    finish_job(&pool, jid(&undo), "succeeded", None).await;
    ui.sign_in_ok(&ui.admin).await;

    for (job, state) in [
        (&failed, "failed"),
        (&cancelled, "cancelled"),
        (&queued, "queued"),
        (&capture, "succeeded"),
    ] {
        open_job(&ui, job, state).await;
        assert!(!undo_shown(&ui).await, "Undo offered on {state} job {job}");
    }
    open_job(&ui, &restored, "succeeded").await;
    assert!(undo_shown(&ui).await, "no Undo on a succeeded restore");
    assert_eq!(ui.text("#job-undo").await, "Undo…");
    assert!(enabled(&ui, "#job-undo").await);
    open_job(&ui, &undo, "succeeded").await;
    assert_eq!(ui.text("dd[data-field=kind]").await, "undo");
    assert!(undo_shown(&ui).await, "no Undo on a succeeded undo");
    open_undo(&ui).await;
    let what = ui.text("#undo-what").await;
    assert!(
        what.contains(&undo)
            && what.contains("acme/prod/delta")
            && what.contains("this undo replaced"),
        "{what}"
    );
    // Back to the failed restore: its page offers nothing, even after a dialog was open.
    ui.click("#undo-cancel").await;
    open_job(&ui, &failed, "failed").await;
    assert!(!undo_shown(&ui).await);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn undo_needs_the_typed_name_and_opens_the_new_undo_job(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = wl(&pool, "acme", "prod", "crm").await;
    let restore = restore_finished(&ui, &pool, &w, "succeeded").await;
    ui.sign_in_ok(&ui.admin).await;
    open_job(&ui, &restore, "succeeded").await;

    open_undo(&ui).await;
    // It says what will happen, and focus is in it.
    let what = ui.text("#undo-what").await;
    for part in [
        restore.as_str(),
        "acme/prod/crm",
        "puts back the data this restore replaced",
        "stopped for about a second",
        "can itself be undone",
    ] {
        assert!(what.contains(part), "{part:?} missing from {what}");
    }
    assert_eq!(
        ui.js("return document.activeElement.id").await,
        json!("undo-confirm")
    );
    assert!(!enabled(&ui, "#undo-submit").await, "enabled before typing");
    for wrong in [
        "crm",
        "acme/prod/cr",
        "acme/prod/crm2",
        "ACME/prod/crm",
        "yes",
    ] {
        type_into(&ui, "#undo-confirm", wrong).await;
        assert!(
            !enabled(&ui, "#undo-submit").await,
            "enabled after typing {wrong:?}"
        );
    }

    // Escape closes it and nothing is asked of the API; so does Cancel.
    ui.find("#undo-confirm")
        .await
        .send_keys(&Key::Escape.to_string())
        .await
        .unwrap();
    ui.wait_js(
        "Escape to close the dialog",
        "return !document.getElementById('undo-dialog').open",
    )
    .await;
    open_undo(&ui).await;
    assert_eq!(
        ui.find("#undo-confirm")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("")
    );
    type_into(&ui, "#undo-confirm", "acme/prod/crm").await;
    ui.click("#undo-cancel").await;
    assert!(!dialog_open(&ui).await);
    assert_eq!(undo_count(&pool).await, 0, "closing the dialog made a job");
    assert!(
        !ui.api
            .requests()
            .iter()
            .any(|(m, u)| m == "POST" && u.contains("/undo")),
        "an undo was sent"
    );

    // With the exact name: the undo job is made and its page opens.
    open_undo(&ui).await;
    type_into(&ui, "#undo-confirm", "acme/prod/crm").await;
    assert!(enabled(&ui, "#undo-submit").await);
    ui.click("#undo-submit").await;
    let undo = eventually("the undo job in the database", || async {
        let jobs = undos_of(&pool, &restore).await;
        (jobs.len() == 1).then(|| jobs[0].clone())
    })
    .await;
    assert_eq!(
        (undo.1.as_str(), undo.2.as_deref()),
        ("queued", Some(ADMIN_NAME))
    );
    ui.wait_text("#job-id", &[&undo.0]).await;
    assert!(!dialog_open(&ui).await);
    assert_eq!(
        ui.js("return location.hash").await,
        json!(format!("#/jobs/{}", undo.0))
    );
    ui.wait_text("dd[data-field=kind]", &["undo"]).await;
    ui.wait_text("dd[data-field=state]", &["queued"]).await;
    assert!(!undo_shown(&ui).await, "Undo offered on a queued undo");
    // Its page follows it live, as any job's.
    start_job(&pool, jid(&undo.0)).await;
    ui.wait_text("dd[data-field=state]", &["running"]).await;
    finish_job(&pool, jid(&undo.0), "succeeded", None).await;
    ui.wait_text("dd[data-field=state]", &["succeeded"]).await;
    // Finished, it can be undone in turn: the workload is no longer busy.
    let again = ui.visible("#job-undo").await;
    eventually("Undo… to be enabled on the finished undo", || async {
        again.is_enabled().await.ok()?.then_some(())
    })
    .await;
    assert_eq!(undo_count(&pool).await, 1);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn the_apis_409_is_shown_in_the_dialog_and_links_the_later_job(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = wl(&pool, "acme", "prod", "crm").await;
    let first = restore_finished(&ui, &pool, &w, "succeeded").await;
    let later = restore_finished(&ui, &pool, &w, "succeeded").await;
    ui.sign_in_ok(&ui.admin).await;
    open_job(&ui, &first, "succeeded").await;

    open_undo(&ui).await;
    type_into(&ui, "#undo-confirm", "acme/prod/crm").await;
    ui.click("#undo-submit").await;
    let shown = ui
        .wait_text("#undo-error", &["409 not_latest_change", &later])
        .await;
    assert!(shown.contains("undo that one first"), "{shown}");
    assert!(
        dialog_open(&ui).await,
        "the dialog stays open with the error"
    );
    assert_eq!(
        ui.js("return location.hash").await,
        json!(format!("#/jobs/{first}"))
    );
    assert_eq!(undo_count(&pool).await, 0);
    // Not busy any more: the button is back (the name is still typed).
    assert!(enabled(&ui, "#undo-submit").await);
    assert_eq!(ui.text("#undo-submit").await, "Undo");

    // The error links the later restore.
    ui.click(&format!("#undo-error a[href=\"#/jobs/{later}\"]"))
        .await;
    ui.wait_text("#job-id", &[&later]).await;
    assert!(!dialog_open(&ui).await);
    ui.wait_text("dd[data-field=state]", &["succeeded"]).await;
    // The later one can be undone.
    open_undo(&ui).await;
    assert!(
        !ui.find("#undo-error").await.is_displayed().await.unwrap(),
        "an old error is shown"
    );
    type_into(&ui, "#undo-confirm", "acme/prod/crm").await;
    ui.click("#undo-submit").await;
    let undo = eventually("the undo of the later restore", || async {
        let jobs = undos_of(&pool, &later).await;
        (jobs.len() == 1).then(|| jobs[0].0.clone())
    })
    .await;
    ui.wait_text("#job-id", &[&undo]).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn the_submit_is_busy_while_the_request_is_out(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = wl(&pool, "acme", "prod", "crm").await;
    let restore = restore_finished(&ui, &pool, &w, "succeeded").await;
    ui.sign_in_ok(&ui.admin).await;
    open_job(&ui, &restore, "succeeded").await;
    open_undo(&ui).await;
    type_into(&ui, "#undo-confirm", "acme/prod/crm").await;
    // Record the submit button as the click leaves it, before the answer can arrive.
    let seen = ui
        .js(
            "const b = document.getElementById('undo-submit'); b.click(); \
             return [b.disabled, b.textContent, document.getElementById('undo-form').getAttribute('aria-busy')]",
        )
        .await;
    assert_eq!(seen, json!([true, "Undoing…", "true"]));
    eventually("the undo job", || async {
        (undos_of(&pool, &restore).await.len() == 1).then_some(())
    })
    .await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_viewer_sees_undo_disabled_and_the_api_refuses_it(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = wl(&pool, "acme", "prod", "crm").await;
    let restore = restore_finished(&ui, &pool, &w, "succeeded").await;
    ui.sign_in_ok(&ui.viewer).await;
    open_job(&ui, &restore, "succeeded").await;
    let btn = ui.visible("#job-undo").await;
    assert!(
        !btn.is_enabled().await.unwrap(),
        "Undo is enabled for a viewer"
    );
    let title = btn.attr("title").await.unwrap().unwrap_or_default();
    assert!(title.contains("admin token"), "{title}");

    // Forced enabled: the API refuses with 403, shown as it is, and nothing is made.
    ui.js("document.getElementById('job-undo').disabled = false; return null")
        .await;
    open_undo(&ui).await;
    type_into(&ui, "#undo-confirm", "acme/prod/crm").await;
    ui.click("#undo-submit").await;
    let shown = ui.wait_text("#undo-error", &["403 forbidden"]).await;
    assert!(shown.contains("viewer token"), "{shown}");
    assert!(dialog_open(&ui).await);
    assert_eq!(undo_count(&pool).await, 0, "a viewer made an undo");
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn the_russian_dialog_and_axe(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = wl(&pool, "acme", "prod", "crm").await;
    let restore = restore_finished(&ui, &pool, &w, "succeeded").await;
    ui.sign_in_ok(&ui.admin).await;
    open_job(&ui, &restore, "succeeded").await;

    // axe on the open dialog, in both themes (again below, in Russian with an error).
    open_undo(&ui).await;
    let mut problems = vec![];
    for theme in ["light", "dark"] {
        set_theme(&ui, theme).await;
        for v in axe_violations(&ui).await {
            problems.push(format!("undo dialog ({theme}): {v}"));
        }
    }
    ui.click("#undo-cancel").await;

    set_lang(&ui, "ru").await;
    ui.wait_text("#job-undo", &["Откатить…"]).await;
    let title = ui
        .find("#job-undo")
        .await
        .attr("title")
        .await
        .unwrap()
        .unwrap();
    assert!(title.contains("возвращает данные"), "{title}");
    open_undo(&ui).await;
    assert_eq!(ui.text("#undo-title").await, "Откат восстановления");
    let what = ui.text("#undo-what").await;
    for part in [
        "Откатить восстановление",
        "acme/prod/crm",
        "Приложение будет остановлено примерно на секунду",
        "можно будет откатить",
    ] {
        assert!(what.contains(part), "{part:?} missing from {what}");
    }
    assert!(
        ui.text("#undo-label").await.contains("введите полное имя"),
        "the label is not Russian"
    );
    assert_eq!(ui.text("#undo-submit").await, "Откатить");
    assert_eq!(ui.text("#undo-cancel").await, "Отмена");
    let later = restore_finished(&ui, &pool, &w, "succeeded").await;
    type_into(&ui, "#undo-confirm", "acme/prod/crm").await;
    ui.click("#undo-submit").await;
    let shown = ui
        .wait_text("#undo-error", &["409 not_latest_change", &later])
        .await;
    assert!(shown.contains("сначала откатите"), "{shown}");
    for theme in ["light", "dark"] {
        set_theme(&ui, theme).await;
        for v in axe_violations(&ui).await {
            problems.push(format!("Russian undo dialog with its error ({theme}): {v}"));
        }
    }
    assert!(problems.is_empty(), "axe found:\n{}", problems.join("\n"));
}
