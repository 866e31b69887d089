//! The operator console (issue 13): English/Russian, the busy state, the point of no
//! return, `project/stage/name` confirmations, capture and delete, undo, batches, deep
//! links, the 390 px layout, an axe-core audit in both themes, and the screenshots in
//! docs/ui/.
//!
//! A worker's state changes are made with SQL (as in the rest of this suite): the api
//! crate's tests cannot build the worker binary as a dependency (binary dependencies are
//! unstable in Cargo), and a real restore needs Docker and volumes. What the worker
//! would write — claim, phase, progress, point of no return, finish — is written the
//! same way here, and the database's phase trigger sees the same updates.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::{Value, json};
use sqlx::PgPool;
use volsnap_shared::db;
use volsnap_shared::domain::{SnapshotState, SourceKind, Workload};
use volsnap_shared::ids::{JobId, SnapshotId};

use crate::common::*;
use crate::harness::*;

const AXE: &str = include_str!("vendor/axe.min.js");

/// A workload with the given project, stage and name.
pub(crate) async fn wl(pool: &PgPool, project: &str, stage: &str, name: &str) -> Workload {
    let mut f = workload_fields(name, "node-a", SourceKind::Image);
    f.project = project.into();
    f.stage = stage.into();
    db::workloads::insert(pool, &f).await.unwrap()
}

async fn set_phase(pool: &PgPool, job: &str, phase: &str, done: i64, total: i64) {
    sqlx::query(
        "UPDATE jobs SET phase = $2, progress_done = $3, progress_total = $4, heartbeat_at = now() \
         WHERE id = $1::uuid",
    )
    .bind(job)
    .bind(phase)
    .bind(done)
    .bind(total)
    .execute(pool)
    .await
    .unwrap();
}

async fn jobs_of(pool: &PgPool, w: &Workload) -> Vec<(String, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT id::text, state, kind, snapshot_id::text FROM jobs WHERE workload_id = $1 ORDER BY created_at",
    )
    .bind(w.id)
    .fetch_all(pool)
    .await
    .unwrap()
}

pub(crate) fn jid(s: &str) -> JobId {
    s.parse().unwrap()
}

fn wrow(w: &Workload) -> String {
    format!("#workloads-table tr[data-workload-id=\"{}\"]", w.id)
}

async fn open_restore(ui: &Ui, w: &Workload, sid: SnapshotId) {
    ui.click(&format!("{} button.show-snapshots", wrow(w)))
        .await;
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

pub(crate) async fn type_into(ui: &Ui, css: &str, text: &str) {
    let input = ui.find(css).await;
    input.clear().await.unwrap();
    input.send_keys(text).await.unwrap();
}

pub(crate) async fn enabled(ui: &Ui, css: &str) -> bool {
    ui.find(css).await.is_enabled().await.unwrap()
}

/// Every visible text node (outside elements marked as another language) that holds a
/// fragment of an English message that the Russian catalogue does not share.
const ENGLISH_LEFT: &str = r#"
const en = window.VOLSNAP_I18N.en, ru = window.VOLSNAP_I18N.ru;
const vals = (v) => (v && typeof v === 'object') ? Object.values(v) : [String(v)];
const frags = new Set();
for (const [k, v] of Object.entries(en)) {
  const r = vals(ru[k]).join('\n');
  for (const s of vals(v)) for (const f of s.split(/\{\w+\}/)) {
    const x = f.trim().replace(/^[^A-Za-z]+|[^A-Za-z.…]+$/g, '');
    if (x.length >= 4 && /[A-Za-z]{3}/.test(x) && !r.includes(x)) frags.add(x);
  }
}
const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const res = [...frags].map((f) => [f, new RegExp('(^|[^A-Za-z])' + esc(f) + '([^A-Za-z]|$)')]);
const found = [];
const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
while (w.nextNode()) {
  const n = w.currentNode, el = n.parentElement, text = n.textContent.trim();
  if (!el || !text) continue;
  if (!el.checkVisibility()) continue;
  if (el.closest('[translate=no]')) continue; // names: other people's data, never translated
  const tagged = el.closest('[lang]');
  if (tagged && tagged.lang !== 'ru') continue;
  for (const [f, re] of res) if (re.test(text)) found.push(f + ' in: ' + text);
}
const attrs = [...document.querySelectorAll('[title],[aria-label],[placeholder]')]
  .filter((e) => e.checkVisibility())
  .flatMap((e) => ['title', 'aria-label', 'placeholder'].map((a) => e.getAttribute(a)).filter(Boolean));
for (const text of attrs) for (const [f, re] of res) if (re.test(text)) found.push(f + ' in attribute: ' + text);
return [frags.size, found];
"#;

async fn english_left(ui: &Ui) -> Vec<String> {
    let v = ui.js(ENGLISH_LEFT).await;
    assert!(
        v[0].as_u64().unwrap() > 150,
        "too few English fragments: {v}"
    );
    serde_json::from_value(v[1].clone()).unwrap()
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn russian_shows_no_english_and_is_remembered(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = wl(&pool, "acme", "prod", "reports").await;
    let sid = ready_snapshot(&pool, &w).await;
    let job = ui.restore_via_api(w.id, sid).await;
    start_job(&pool, jid(&job)).await;
    set_phase(&pool, &job, "extracting", 300, 700).await;
    finish_job(&pool, jid(&job), "failed", Some("insufficient_space")).await;
    sqlx::query("UPDATE jobs SET error_message = 'диск 7' WHERE id = $1::uuid")
        .bind(&job)
        .execute(&pool)
        .await
        .unwrap();
    let w2 = wl(&pool, "acme", "staging", "reports").await;
    let running = ui
        .restore_via_api(w2.id, ready_snapshot(&pool, &w2).await)
        .await;
    start_job(&pool, jid(&running)).await;
    set_phase(&pool, &running, "verifying", 100, 700).await;
    ui.sign_in_ok(&ui.admin).await;
    assert_eq!(
        ui.js("return document.documentElement.lang").await,
        json!("en")
    );
    ui.wait_text("#triage-failed", &["1 failed in the last 24 h"])
        .await;

    // Switch: the page, the catalogue and the remembered choice.
    ui.js(
        "const s = document.getElementById('lang'); s.value = 'ru'; \
           s.dispatchEvent(new Event('change')); return null",
    )
    .await;
    assert_eq!(
        ui.js("return document.documentElement.lang").await,
        json!("ru")
    );
    assert_eq!(
        ui.js("return localStorage.getItem('volsnap.lang')").await,
        json!("ru")
    );
    ui.click(&format!("{} button.show-snapshots", wrow(&w)))
        .await;
    ui.wait_text("#snapshots-table tbody", &["готов"]).await;
    ui.wait_text("#triage-failed", &["1 сбой за 24 ч"]).await;
    ui.wait_text("#jobs-count", &["Показано 2 задания"]).await;
    ui.wait_text(&format!("{} a.busy", wrow(&w2)), &["Восстановление"])
        .await;
    let left = english_left(&ui).await;
    assert!(
        left.is_empty(),
        "English text in the Russian page: {left:#?}"
    );

    // The job page and the batch launcher, in Russian too.
    ui.click(&format!("#jobs-table tr[data-job-id=\"{job}\"] a.job-link"))
        .await;
    ui.wait_text(
        "dd[data-field=error]",
        &["insufficient_space", "на узле не хватает места"],
    )
    .await;
    ui.wait_text("#job-timeline", &["распаковка"]).await;
    let left = english_left(&ui).await;
    assert!(
        left.is_empty(),
        "English text in the Russian job page: {left:#?}"
    );
    ui.client()
        .goto(&format!("{}/#/batches/new", ui.api.url))
        .await
        .unwrap();
    ui.wait_text("#batch-items tbody", &["acme/prod/reports"])
        .await;
    let left = english_left(&ui).await;
    assert!(
        left.is_empty(),
        "English text in the Russian launcher: {left:#?}"
    );

    // A reload keeps Russian (localStorage), and a dialog is Russian as well.
    ui.client()
        .goto(&format!("{}/#/", ui.api.url))
        .await
        .unwrap();
    ui.wait_js(
        "the page to come back signed in",
        "return !document.getElementById('app-view').hidden && document.documentElement.lang === 'ru' || null",
    )
    .await;
    open_restore(&ui, &w, sid).await;
    ui.wait_text(
        "#restore-label",
        &["введите полное имя", "acme/prod/reports"],
    )
    .await;
    let left = english_left(&ui).await;
    assert!(
        left.is_empty(),
        "English text in the Russian dialog: {left:#?}"
    );
    // Russian plural forms: 1 задание, 2 задания, 5 заданий.
    let forms = ui
        .js("const r = new Intl.PluralRules('ru'); return [1, 2, 5, 21].map((n) => r.select(n))")
        .await;
    assert_eq!(forms, json!(["one", "few", "many", "one"]));
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn busy_state_within_a_second_and_cancel_stops_at_the_point_of_no_return(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = wl(&pool, "acme", "prod", "payments").await;
    let sid = ready_snapshot(&pool, &w).await;
    ui.sign_in_ok(&ui.admin).await;
    ui.visible(&format!("{} button.capture", wrow(&w))).await;

    open_restore(&ui, &w, sid).await;
    type_into(&ui, "#restore-confirm", &full_name(&w)).await;
    // Time from the submit click to the busy link on the workload's row, in the page.
    ui.js_with(
        "const row = document.querySelector(`#workloads-table tr[data-workload-id=\"${arguments[0]}\"]`); \
         window.__busyAt = null; \
         new MutationObserver(() => { \
           const r = document.querySelector(`#workloads-table tr[data-workload-id=\"${arguments[0]}\"] a.busy`); \
           if (r && window.__busyAt === null) window.__busyAt = performance.now(); \
         }).observe(row.parentNode, { childList: true, subtree: true }); \
         document.getElementById('restore-submit').addEventListener('click', () => { window.__clickAt = performance.now(); }, true); \
         return null",
        vec![json!(w.id.to_string())],
    )
    .await;
    ui.click("#restore-submit").await;
    let ms = ui
        .wait_js(
            "the busy link to appear",
            "return window.__busyAt !== null && window.__clickAt ? window.__busyAt - window.__clickAt : null",
        )
        .await
        .as_f64()
        .unwrap();
    assert!(ms < 1000.0, "busy state after {ms} ms");
    let jobs = jobs_of(&pool, &w).await;
    let job = jobs[0].0.clone();
    let busy = format!("{} a.busy", wrow(&w));
    assert_eq!(
        ui.find(&busy).await.attr("href").await.unwrap().unwrap(),
        format!("#/jobs/{job}")
    );
    ui.wait_text(&busy, &["Restoring", "queued"]).await;
    // No capture button while busy; the snapshot offers no Restore either.
    assert_eq!(
        ui.js_with(
            "return document.querySelectorAll(`#workloads-table tr[data-workload-id=\"${arguments[0]}\"] button.capture, #snapshots-table button.restore`).length",
            vec![json!(w.id.to_string())]
        )
        .await,
        json!(0)
    );
    ui.wait_text("#snapshots-notice", &[&job, "queued"]).await;

    // Running: phase and one overall percentage (extracting 50 % = 15 + 40 * 0.5 = 35 %).
    start_job(&pool, jid(&job)).await;
    set_phase(&pool, &job, "extracting", 350, 700).await;
    ui.wait_text(&busy, &["Restoring — extracting, 35%"]).await;
    let cancel = format!("#jobs-table tr[data-job-id=\"{job}\"] button.cancel");
    ui.wait_js(
        "cancel to be enabled before the point of no return",
        &format!(
            "const b = document.querySelector('{}'); return b && !b.disabled || null",
            cancel.replace('\'', "\\'")
        ),
    )
    .await;

    // Focus survives a refresh that redraws the row.
    ui.js(&format!(
        "document.querySelector('{}').focus(); return null",
        cancel.replace('\'', "\\'")
    ))
    .await;
    set_phase(&pool, &job, "extracting", 560, 700).await;
    ui.wait_text(
        &format!("#jobs-table tr[data-job-id=\"{job}\"] td.phase"),
        &["47%"],
    )
    .await;
    assert_eq!(
        ui.js("return document.activeElement.dataset.fk || document.activeElement.tagName")
            .await,
        json!(format!("cancel:{job}")),
        "the focus left the cancel button when its row was redrawn"
    );

    // Past the point of no return: cancel is disabled, with the reason, in the list and
    // on the job page; the overall figure does not drop when archiving starts counting.
    sqlx::query("UPDATE jobs SET past_point_of_no_return = true, phase = 'quiescing', progress_done = 0 WHERE id = $1::uuid")
        .bind(&job)
        .execute(&pool)
        .await
        .unwrap();
    ui.wait_js(
        "cancel to be disabled past the point of no return",
        &format!("const b = document.querySelector('{}'); return b && b.disabled && b.title.includes('point of no return') || null", cancel.replace('\'', "\\'")),
    )
    .await;
    ui.click(&format!("#jobs-table tr[data-job-id=\"{job}\"] a.job-link"))
        .await;
    ui.wait_text("#job-cancel-why", &["point of no return"])
        .await;
    assert!(!enabled(&ui, "#job-cancel").await);
    set_phase(&pool, &job, "archiving pre-restore copy", 100, 700).await;
    let overall = ui.wait_text("#job-overall", &["67%"]).await;
    assert!(overall.contains("archiving"), "{overall}");
    // More bytes of the same phase: a rate and the phase's ETA (400 B in about 2 s at
    // ~100 B/s leaves about 4 s).
    set_phase(&pool, &job, "archiving pre-restore copy", 300, 700).await;
    let overall = ui
        .wait_text("#job-overall", &["77%", "B/s", "left in this phase"])
        .await;
    assert!(overall.contains("about"), "{overall}");
    ui.wait_text(
        "#job-timeline",
        &["extracting", "stopping the app", "archiving"],
    )
    .await;
    ui.wait_text("dd[data-field=duration]", &["s"]).await;

    // Finished: the busy link goes, the row keeps the result, Capture comes back.
    ui.client()
        .goto(&format!("{}/#/", ui.api.url))
        .await
        .unwrap();
    ui.wait_text(&busy, &["archiving"]).await;
    sqlx::query("UPDATE jobs SET phase = 'redeploying' WHERE id = $1::uuid")
        .bind(&job)
        .execute(&pool)
        .await
        .unwrap();
    finish_job(&pool, jid(&job), "succeeded", None).await;
    ui.wait_text(&format!("{} a.last", wrow(&w)), &["restore succeeded"])
        .await;
    ui.visible(&format!("{} button.capture", wrow(&w))).await;
    assert_eq!(
        ui.js_with(
            "return document.querySelectorAll(`#workloads-table tr[data-workload-id=\"${arguments[0]}\"] a.busy`).length",
            vec![json!(w.id.to_string())]
        )
        .await,
        json!(0)
    );
    // Downtime from the phase times: quiescing until the phase after redeploying.
    ui.client()
        .goto(&format!("{}/#/jobs/{job}", ui.api.url))
        .await
        .unwrap();
    let down = ui
        .wait_text("dd[data-field=downtime]", &["phase times"])
        .await;
    assert!(!down.starts_with('—'), "{down}");
    // The whole timeline, in order: queued, claimed, every phase the worker entered, the end.
    let phases = ui
        .js("return [...document.querySelectorAll('#job-timeline li')].map((li) => li.dataset.phase)")
        .await;
    assert_eq!(
        phases,
        json!([
            "queued",
            "starting",
            "extracting",
            "quiescing",
            "archiving pre-restore copy",
            "redeploying",
            "succeeded"
        ])
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn same_names_in_two_stages_need_project_stage_name(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let prod = wl(&pool, "acme", "prod", "reports").await;
    let staging = wl(&pool, "acme", "staging", "reports").await;
    let sid = ready_snapshot(&pool, &prod).await;
    let other = ui
        .restore_via_api(staging.id, ready_snapshot(&pool, &staging).await)
        .await;
    ui.sign_in_ok(&ui.admin).await;
    ui.wait_text(
        &format!("#jobs-table tr[data-job-id=\"{other}\"] td.workload"),
        &["acme/staging/reports"],
    )
    .await;
    assert_eq!(
        ui.text(&format!("{} td.name", wrow(&prod))).await,
        "acme/prod/reports"
    );

    open_restore(&ui, &prod, sid).await;
    assert_eq!(ui.text("#restore-expected").await, "acme/prod/reports");
    for wrong in [
        "reports",
        "acme/staging/reports",
        "prod/reports",
        "acme/prod/report",
    ] {
        type_into(&ui, "#restore-confirm", wrong).await;
        assert!(
            !enabled(&ui, "#restore-submit").await,
            "enabled for {wrong:?}"
        );
    }
    type_into(&ui, "#restore-confirm", "acme/prod/reports").await;
    assert!(enabled(&ui, "#restore-submit").await);
    ui.click("#restore-submit").await;
    eventually("the restore of acme/prod/reports", || async {
        (jobs_of(&pool, &prod).await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(jobs_of(&pool, &staging).await.len(), 1);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn capture_delete_and_a_missing_file(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = wl(&pool, "acme", "prod", "shop").await;
    let keep = ready_snapshot(&pool, &w).await;
    let gone = ready_snapshot(&pool, &w).await;
    let missing = ready_snapshot(&pool, &w).await;
    // What the worker's file check does when the archive is not on disk.
    assert!(
        db::console::set_snapshot_file_missing(&pool, missing, true)
            .await
            .unwrap()
    );
    ui.sign_in_ok(&ui.admin).await;

    // Capture: a capture job, and the row shows "Capturing…" until it ends.
    ui.click(&format!("{} button.capture", wrow(&w))).await;
    let busy = format!("{} a.busy", wrow(&w));
    ui.wait_text(&busy, &["Capturing"]).await;
    let jobs = jobs_of(&pool, &w).await;
    assert_eq!((jobs.len(), jobs[0].2.as_str()), (1, "capture"));
    ui.wait_text("#workloads-notice", &[&jobs[0].0, "queued"])
        .await;
    start_job(&pool, jid(&jobs[0].0)).await;
    set_phase(&pool, &jobs[0].0, "capturing", 50, 100).await;
    ui.wait_text(&busy, &["Capturing… 52%"]).await;
    finish_job(&pool, jid(&jobs[0].0), "succeeded", None).await;
    ui.wait_text(&format!("{} a.last", wrow(&w)), &["capture succeeded"])
        .await;

    // The missing file is marked and offers no Restore.
    ui.click(&format!("{} button.show-snapshots", wrow(&w)))
        .await;
    let mrow = format!("#snapshots-table tr[data-snapshot-id=\"{missing}\"]");
    ui.wait_text(&mrow, &["file missing"]).await;
    assert_eq!(
        ui.js_with(
            "return document.querySelectorAll(`#snapshots-table tr[data-snapshot-id=\"${arguments[0]}\"] button.restore`).length",
            vec![json!(missing.to_string())]
        )
        .await,
        json!(0)
    );
    ui.visible(&format!(
        "#snapshots-table tr[data-snapshot-id=\"{keep}\"] button.restore"
    ))
    .await;

    // Delete: a confirmation, then the row goes and the database says deleted.
    ui.click(&format!(
        "#snapshots-table tr[data-snapshot-id=\"{gone}\"] button.delete"
    ))
    .await;
    ui.wait_text("#delete-what", &[&gone.to_string(), "acme/prod/shop"])
        .await;
    ui.click("#delete-cancel").await;
    let deleted = || async {
        sqlx::query_scalar::<_, bool>("SELECT deleted_at IS NOT NULL FROM snapshots WHERE id = $1")
            .bind(gone)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert!(!deleted().await, "cancel deleted it");
    ui.click(&format!(
        "#snapshots-table tr[data-snapshot-id=\"{gone}\"] button.delete"
    ))
    .await;
    ui.click("#delete-submit").await;
    ui.wait_text("#snapshots-notice", &["deleted"]).await;
    assert!(deleted().await);
    ui.wait_js(
        "the deleted snapshot's row to go",
        &format!("return !document.querySelector('#snapshots-table tr[data-snapshot-id=\"{gone}\"]') || null"),
    )
    .await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn undo_restores_the_pre_restore_snapshot(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = wl(&pool, "acme", "prod", "crm").await;
    let sid = ready_snapshot(&pool, &w).await;
    let job = ui.restore_via_api(w.id, sid).await;
    start_job(&pool, jid(&job)).await;
    let pre = snapshot_row(&pool, w.id, "node-a", SnapshotState::Ready).await;
    sqlx::query("UPDATE snapshots SET kind = 'pre-restore' WHERE id = $1")
        .bind(pre)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET pre_restore_snapshot_id = $2 WHERE id = $1::uuid")
        .bind(&job)
        .bind(pre)
        .execute(&pool)
        .await
        .unwrap();
    finish_job(&pool, jid(&job), "succeeded", None).await;
    ui.sign_in_ok(&ui.admin).await;
    ui.client()
        .goto(&format!("{}/#/jobs/{job}", ui.api.url))
        .await
        .unwrap();
    ui.wait_text("dd[data-field=pre-restore]", &[&pre.to_string()])
        .await;
    // The links of the job page.
    let wl_href = ui
        .find("dd[data-field=workload] a")
        .await
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    assert!(wl_href.contains(&format!("workload={}", w.id)), "{wl_href}");

    ui.click("#job-undo").await;
    ui.wait_js(
        "the undo dialog to open",
        "return document.getElementById('undo-dialog').open",
    )
    .await;
    assert_eq!(ui.text("#undo-job").await, job);
    type_into(&ui, "#undo-confirm", "crm").await;
    assert!(!enabled(&ui, "#undo-submit").await);
    type_into(&ui, "#undo-confirm", "acme/prod/crm").await;
    ui.click("#undo-submit").await;
    let undo = eventually("the undo job", || async {
        let jobs = jobs_of(&pool, &w).await;
        (jobs.len() == 2).then(|| jobs[1].clone())
    })
    .await;
    // An undo job (not a restore), carrying the restore's pre-restore snapshot.
    assert_eq!(undo.2, "undo");
    assert_eq!(undo.3.as_deref(), Some(pre.to_string().as_str()));
    assert_eq!(undo.1, "queued");
    ui.wait_text("#job-id", &[&undo.0]).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_batch_from_the_launcher_to_its_finished_page(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let a = wl(&pool, "acme", "prod", "alpha").await;
    let b = wl(&pool, "acme", "prod", "beta").await;
    let c = wl(&pool, "acme", "prod", "gamma").await;
    let other = wl(&pool, "acme", "staging", "alpha").await;
    for w in [&a, &b, &c, &other] {
        ready_snapshot(&pool, w).await;
    }
    // The newest ready snapshot is the one used.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let newest_a = ready_snapshot(&pool, &a).await;
    // gamma is busy: the API refuses its item (409), which the batch page lists.
    let busy = ui
        .restore_via_api(c.id, ready_snapshot(&pool, &c).await)
        .await;
    ui.sign_in_ok(&ui.admin).await;

    ui.click("#batch-new").await;
    ui.visible("#batch-project").await;
    type_into(&ui, "#batch-project", "acme").await;
    type_into(&ui, "#batch-stage", "prod").await;
    ui.wait_text("#batch-count", &["3 workloads will be restored"])
        .await;
    ui.wait_text(
        "#batch-items tbody",
        &["acme/prod/alpha", "acme/prod/beta", "acme/prod/gamma"],
    )
    .await;
    assert!(!ui.text("#batch-items tbody").await.contains("staging"));
    ui.wait_text(
        &format!("#batch-items tr[data-workload-id=\"{}\"]", a.id),
        &[&newest_a.to_string()[28..]],
    )
    .await;
    type_into(&ui, "#batch-max-parallel", "1").await;
    type_into(&ui, "#batch-confirm", "2").await;
    assert!(
        !enabled(&ui, "#batch-submit").await,
        "enabled for a wrong count"
    );
    type_into(&ui, "#batch-confirm", "3").await;
    assert!(enabled(&ui, "#batch-submit").await);
    ui.click("#batch-submit").await;

    let batch: String = eventually("the batch page", || async {
        let hash = ui.js("return location.hash").await;
        hash.as_str()?
            .strip_prefix("#/batches/")
            .filter(|s| s.len() == 36)
            .map(str::to_owned)
    })
    .await;
    let (mp, items): (Option<i32>, i32) =
        sqlx::query_as("SELECT max_parallel, item_count FROM batches WHERE id = $1::uuid")
            .bind(&batch)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((mp, items), (Some(1), 3));
    let jobs: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT id::text, workload_id::text, snapshot_id::text FROM jobs WHERE batch_id = $1::uuid ORDER BY created_at",
    )
    .bind(&batch)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0].2.as_deref(), Some(newest_a.to_string().as_str()));
    ui.wait_text(
        "#batch-jobs tbody",
        &["acme/prod/gamma", "refused", "409 active_job"],
    )
    .await;
    ui.wait_text("#batch-overall-text", &["0 of 2 finished"])
        .await;
    ui.wait_text("#batch-counts", &["1 refused"]).await;

    // The jobs finish: one fails, one succeeds; the page follows to "finished".
    start_job(&pool, jid(&jobs[0].0)).await;
    finish_job(&pool, jid(&jobs[0].0), "failed", Some("io_error")).await;
    start_job(&pool, jid(&jobs[1].0)).await;
    finish_job(&pool, jid(&jobs[1].0), "succeeded", None).await;
    ui.wait_text("#batch-overall-text", &["2 of 2 finished"])
        .await;
    ui.wait_text("#batch-summary", &["finished"]).await;
    let counts = ui.text("#batch-counts").await;
    assert!(
        counts.contains("succeeded: 1") && counts.contains("failed: 1"),
        "{counts}"
    );
    assert!(!enabled(&ui, "#batch-cancel-rest").await);

    // The list's batch filter (a deep link) shows exactly its jobs.
    ui.client()
        .goto(&format!("{}/#/?batch={batch}", ui.api.url))
        .await
        .unwrap();
    ui.wait_text("#jobs-count", &["2 jobs shown"]).await;
    ui.wait_text("#filter-batch", &[&batch[28..]]).await;
    assert!(ui.row_state(&busy).await.is_none());

    // "Restore the failed again": a new batch of the failed item, confirmed by its count.
    ui.client()
        .goto(&format!("{}/#/batches/{batch}", ui.api.url))
        .await
        .unwrap();
    ui.wait_text("#batch-overall-text", &["2 of 2 finished"])
        .await;
    ui.wait_js(
        "Restore the failed again to be enabled",
        "return !document.getElementById('batch-retry').disabled || null",
    )
    .await;
    ui.click("#batch-retry").await;
    type_into(&ui, "#batch-retry-confirm", "2").await;
    assert!(
        !enabled(&ui, "#batch-retry-submit").await,
        "enabled for a wrong count"
    );
    type_into(&ui, "#batch-retry-confirm", "1").await;
    assert!(enabled(&ui, "#batch-retry-submit").await);
    ui.click("#batch-retry-submit").await;
    let again: String = eventually("the second batch's page", || async {
        let hash = ui.js("return location.hash").await;
        hash.as_str()?
            .strip_prefix("#/batches/")
            .filter(|s| s.len() == 36 && *s != batch)
            .map(str::to_owned)
    })
    .await;
    let retried: (String, String) =
        sqlx::query_as("SELECT id::text, workload_id::text FROM jobs WHERE batch_id = $1::uuid")
            .bind(&again)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(retried.1, a.id.to_string());
    ui.wait_text("#batch-jobs tbody", &["acme/prod/alpha"])
        .await;

    // "Cancel the rest": the queued job is cancelled.
    ui.wait_js(
        "Cancel the rest to be enabled",
        "return !document.getElementById('batch-cancel-rest').disabled || null",
    )
    .await;
    ui.click("#batch-cancel-rest").await;
    eventually("the rest to be cancelled", || async {
        let s: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1::uuid")
            .bind(&retried.0)
            .fetch_one(&pool)
            .await
            .unwrap();
        (s == "cancelled").then_some(())
    })
    .await;
    ui.wait_text("#batch-notice", &["1 job cancelled"]).await;
    ui.wait_text("#batch-summary", &["finished"]).await;
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn every_filter_is_in_the_url(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let a = wl(&pool, "acme", "prod", "billing").await;
    let b = wl(&pool, "acme", "staging", "billing").await;
    let c = wl(&pool, "zeta", "prod", "search").await;
    let mut ids = vec![];
    for w in [&a, &b, &c] {
        let j = ui
            .restore_via_api(w.id, ready_snapshot(&pool, w).await)
            .await;
        start_job(&pool, jid(&j)).await;
        finish_job(&pool, jid(&j), "failed", Some("io_error")).await;
        ids.push(j);
    }
    ui.sign_in_ok(&ui.admin).await;
    ui.wait_text("#jobs-count", &["3 jobs shown"]).await;
    ui.wait_text(
        "#failed-restores-list",
        &["acme/prod/billing", "zeta/prod/search"],
    )
    .await;

    // The alert's link: failed restores of one project, opened in a fresh page.
    ui.client()
        .goto(&format!(
            "{}/#/?state=failed&kind=restore&project=acme",
            ui.api.url
        ))
        .await
        .unwrap();
    ui.wait_text("#jobs-count", &["2 jobs shown"]).await;
    assert_eq!(
        ui.find("#filter-state")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("failed")
    );
    assert_eq!(
        ui.find("#filter-kind")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("restore")
    );
    assert_eq!(
        ui.find("#filter-project")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("acme")
    );
    assert!(ui.row_state(&ids[2]).await.is_none());

    // A control changes the URL: stage, then free text, then node.
    type_into(&ui, "#filter-stage", "staging").await;
    ui.wait_js(
        "the stage in the URL",
        "return location.hash.includes('stage=staging') || null",
    )
    .await;
    ui.wait_text("#jobs-count", &["1 job shown"]).await;
    assert_eq!(ui.row_state(&ids[1]).await.as_deref(), Some("failed"));
    ui.click("#filter-clear").await;
    ui.wait_text("#jobs-count", &["3 jobs shown"]).await;
    type_into(&ui, "#filter-text", "search").await;
    ui.wait_js(
        "q in the URL",
        "return location.hash.includes('q=search') || null",
    )
    .await;
    ui.wait_text("#jobs-count", &["1 job shown"]).await;
    assert_eq!(ui.row_state(&ids[2]).await.as_deref(), Some("failed"));
    ui.client()
        .goto(&format!("{}/#/?node=node-b", ui.api.url))
        .await
        .unwrap();
    ui.wait_text("#jobs-count", &["0 jobs shown"]).await;
    ui.client()
        .goto(&format!("{}/#/?workload={}&state=failed", ui.api.url, c.id))
        .await
        .unwrap();
    ui.wait_text("#jobs-count", &["1 job shown"]).await;
    ui.wait_text("#filter-workload", &["zeta/prod/search"])
        .await;
    // Back in history restores the earlier filter.
    ui.client().back().await.unwrap();
    ui.wait_text("#jobs-count", &["0 jobs shown"]).await;
}

/// The page fits 390 px: no horizontal scroll, and the dialog's button is on screen.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_phone_sized_window_scrolls_only_down(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = wl(
        &pool,
        "acme",
        "production-eu-west",
        "payments-reconciliation",
    )
    .await;
    let sid = ready_snapshot(&pool, &w).await;
    let j = ui.restore_via_api(w.id, sid).await;
    start_job(&pool, jid(&j)).await;
    finish_job(&pool, jid(&j), "failed", Some("insufficient_space")).await;
    ui.client().set_window_size(390, 844).await.unwrap();
    ui.sign_in_ok(&ui.admin).await;
    let width = ui.js("return window.innerWidth").await.as_f64().unwrap();
    assert!((380.0..=400.0).contains(&width), "inner width {width}");
    let no_hscroll = "return document.documentElement.scrollWidth <= window.innerWidth";
    ui.wait_text("#jobs-table tbody", &["payments-reconciliation"])
        .await;
    let wide = "return [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1 && e.checkVisibility()).slice(0, 8).map((e) => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))";
    assert_eq!(
        ui.js(no_hscroll).await,
        json!(true),
        "the list scrolls sideways: {}",
        ui.js(wide).await
    );
    open_restore(&ui, &w, sid).await;
    assert_eq!(ui.js(no_hscroll).await, json!(true));
    type_into(&ui, "#restore-confirm", &full_name(&w)).await;
    let inside = ui
        .js("const r = document.getElementById('restore-submit').getBoundingClientRect(); \
             return [r.left >= 0, r.right <= window.innerWidth, r.top >= 0, r.bottom <= window.innerHeight]")
        .await;
    assert_eq!(inside, json!([true, true, true, true]));
    ui.click("#restore-cancel").await;
    ui.client()
        .goto(&format!("{}/#/jobs/{j}", ui.api.url))
        .await
        .unwrap();
    ui.wait_text("dd[data-field=error]", &["insufficient_space"])
        .await;
    assert_eq!(
        ui.js(no_hscroll).await,
        json!(true),
        "the job page scrolls sideways"
    );
}

/// At the desktop widths where names used to break mid-word ("paymen ts", 1280–1400 px)
/// and at 1920 px: no horizontal scroll, and every name on one line.
#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn desktop_widths_keep_names_whole(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let mut ws = vec![];
    for (stage, name) in [
        ("prod", "payments"),
        ("staging", "payments"),
        ("prod", "reconciliation"),
    ] {
        let w = wl(&pool, "acme-financial", stage, name).await;
        let j = ui
            .restore_via_api(w.id, ready_snapshot(&pool, &w).await)
            .await;
        start_job(&pool, jid(&j)).await;
        finish_job(&pool, jid(&j), "failed", Some("insufficient_space")).await;
        ws.push(w);
    }
    ui.sign_in_ok(&ui.admin).await;
    ui.click(&format!("{} button.show-snapshots", wrow(&ws[0])))
        .await;
    ui.visible("#snapshots-table tbody tr").await;
    for width in [1280u32, 1340, 1400, 1920] {
        ui.client().set_window_size(width, 1000).await.unwrap();
        ui.wait_text("#jobs-count", &["3 jobs shown"]).await;
        let (scroll, lines) = eventually(&format!("the layout at {width} px"), || async {
            let v = ui
                .js(
                    "return [document.documentElement.scrollWidth <= window.innerWidth, \
                     [...document.querySelectorAll('.wl-name')].filter((e) => e.checkVisibility()) \
                       .map((e) => e.getClientRects().length)]",
                )
                .await;
            let lines: Vec<u64> = serde_json::from_value(v[1].clone()).ok()?;
            (lines.len() >= 9).then(|| (v[0].clone(), lines))
        })
        .await;
        assert_eq!(scroll, json!(true), "horizontal scroll at {width} px");
        assert!(
            lines.iter().all(|&n| n == 1),
            "a name broken across lines at {width} px: {lines:?}"
        );
    }
}

/// axe-core's serious and critical violations of the page as it is now.
pub(crate) async fn axe_violations(ui: &Ui) -> Vec<Value> {
    let loaded = ui.js("return typeof window.axe").await;
    if loaded != json!("object") {
        ui.js(&format!("{AXE}\nreturn null;")).await;
    }
    let v = ui
        .client()
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             axe.run(document, { resultTypes: ['violations'] }).then((r) => done(r.violations \
               .filter((v) => v.impact === 'serious' || v.impact === 'critical') \
               .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ') + ': ' + n.failureSummary) })))) \
               .catch((e) => done([{ id: 'axe-error', impact: String(e) }]));",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// Chromium's own `prefers-color-scheme`, set through chromedriver's CDP endpoint: the
/// dark theme is tested the way a browser in dark mode gets it, not by a page switch.
#[derive(Debug)]
struct Cdp(Value);

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &reqwest::Url,
        session: Option<&str>,
    ) -> Result<reqwest::Url, <reqwest::Url as std::str::FromStr>::Err> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.expect("a WebDriver session")
        ))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(self.0.to_string()))
    }
}

pub(crate) async fn set_theme(ui: &Ui, theme: &str) {
    ui.client()
        .issue_cmd(Cdp(json!({
            "cmd": "Emulation.setEmulatedMedia",
            "params": {"features": [{"name": "prefers-color-scheme", "value": theme}]},
        })))
        .await
        .unwrap();
    let dark = ui
        .js("return matchMedia('(prefers-color-scheme: dark)').matches")
        .await;
    assert_eq!(dark, json!(theme == "dark"));
    // The page follows: its background is dark exactly in the dark theme.
    let bg = ui
        .js("return getComputedStyle(document.body).backgroundColor")
        .await;
    let dark_bg = bg.as_str() == Some("rgb(17, 21, 28)");
    assert_eq!(
        dark_bg,
        theme == "dark",
        "body background {bg} in the {theme} theme"
    );
}

pub(crate) async fn set_lang(ui: &Ui, lang: &str) {
    ui.js_with(
        "const s = document.getElementById('lang'); s.value = arguments[0]; \
         s.dispatchEvent(new Event('change')); return null",
        vec![json!(lang)],
    )
    .await;
}

/// Where `VOLSNAP_UI_SCREENSHOTS` points (relative to the repository), if set.
fn screenshot_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("VOLSNAP_UI_SCREENSHOTS")?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    Some(dir)
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn main_screens_pass_axe_in_both_themes(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = wl(&pool, "acme", "prod", "payments").await;
    let sid = ready_snapshot(&pool, &w).await;
    let w2 = wl(&pool, "acme", "staging", "payments").await;
    ready_snapshot(&pool, &w2).await;
    let w3 = wl(&pool, "acme", "prod", "reports").await;
    let s3 = ready_snapshot(&pool, &w3).await;
    let failed = ui.restore_via_api(w.id, sid).await;
    start_job(&pool, jid(&failed)).await;
    set_phase(&pool, &failed, "extracting", 200, 700).await;
    finish_job(&pool, jid(&failed), "failed", Some("insufficient_space")).await;
    let done = ui
        .restore_via_api(w2.id, ready_snapshot(&pool, &w2).await)
        .await;
    start_job(&pool, jid(&done)).await;
    for p in [
        "preflight",
        "verifying",
        "extracting",
        "quiescing",
        "swapping",
        "redeploying",
        "archiving pre-restore copy",
    ] {
        set_phase(&pool, &done, p, 700, 700).await;
    }
    finish_job(&pool, jid(&done), "succeeded", None).await;
    let running = ui.restore_via_api(w3.id, s3).await;
    start_job(&pool, jid(&running)).await;
    set_phase(&pool, &running, "extracting", 420, 700).await;
    let shots = screenshot_dir();

    // The sign-in form.
    ui.client().goto(&format!("{}/", ui.api.url)).await.unwrap();
    ui.visible("#token").await;
    let mut problems = vec![];
    for theme in ["light", "dark"] {
        set_theme(&ui, theme).await;
        for v in axe_violations(&ui).await {
            problems.push(format!("sign-in ({theme}): {v}"));
        }
    }
    ui.sign_in_ok(&ui.admin).await;
    let screens: [(&str, String); 3] = [
        ("list", format!("{}/#/", ui.api.url)),
        ("job", format!("{}/#/jobs/{running}", ui.api.url)),
        ("launcher", format!("{}/#/batches/new", ui.api.url)),
    ];
    for (name, url) in &screens {
        ui.client().goto(url).await.unwrap();
        match *name {
            "list" => {
                ui.wait_text("#jobs-count", &["3 jobs shown"]).await;
                ui.click(&format!("{} button.show-snapshots", wrow(&w)))
                    .await;
                ui.visible("#snapshots-table tbody tr").await;
            }
            "job" => {
                ui.wait_text("#job-timeline", &["extracting"]).await;
            }
            _ => {
                ui.wait_text("#batch-items tbody", &["acme/prod/payments"])
                    .await;
            }
        }
        for theme in ["light", "dark"] {
            set_theme(&ui, theme).await;
            for v in axe_violations(&ui).await {
                problems.push(format!("{name} ({theme}): {v}"));
            }
        }
    }
    // The restore dialog, open.
    ui.client().goto(&screens[0].1).await.unwrap();
    open_restore(&ui, &w, sid).await;
    for theme in ["light", "dark"] {
        set_theme(&ui, theme).await;
        for v in axe_violations(&ui).await {
            problems.push(format!("dialog ({theme}): {v}"));
        }
    }
    assert!(problems.is_empty(), "axe found:\n{}", problems.join("\n"));

    // Screenshots for docs/ui/ (only when asked: CI leaves the tree alone).
    let Some(dir) = shots else { return };
    ui.client()
        .find(Locator::Css("#restore-cancel"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    for (width, height, size) in [(1400u32, 1000u32, "desktop"), (390, 844, "phone")] {
        ui.client().set_window_size(width, height).await.unwrap();
        for lang in ["en", "ru"] {
            set_lang(&ui, lang).await;
            for theme in ["light", "dark"] {
                set_theme(&ui, theme).await;
                for (name, url) in &screens[..2] {
                    ui.client().goto(url).await.unwrap();
                    set_theme(&ui, theme).await;
                    if *name == "list" {
                        ui.wait_text("#jobs-count", &[]).await;
                        ui.click(&format!("{} button.show-snapshots", wrow(&w)))
                            .await;
                        ui.visible("#snapshots-table tbody tr").await;
                    } else {
                        ui.wait_text("#job-timeline", &[]).await;
                        ui.visible("#job-timeline li").await;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    ui.screenshot(
                        dir.join(format!("{name}-{lang}-{theme}-{size}.png"))
                            .to_str()
                            .unwrap(),
                    )
                    .await;
                }
            }
        }
    }
}
