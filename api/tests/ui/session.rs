//! Serving the page (headers), signing in and out, and what a refused token does.

use serde_json::json;
use sqlx::PgPool;
use volsnap_shared::db;
use volsnap_shared::domain::SourceKind;

use crate::common::*;
use crate::harness::*;

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn page_and_assets_carry_a_strict_csp(pool: PgPool) {
    let api = tokio::task::spawn_blocking({
        let url = database_url(&pool);
        move || ApiServer::start(&url)
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let get = |path: &str, etag: Option<&str>| {
        let mut req = http.get(format!("{}{path}", api.url));
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        req.send()
    };

    let page = get("/", None).await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(h["cache-control"], "no-cache");
    let html = page.text().await.unwrap();
    assert!(html.contains("/api/openapi.json"));

    // The page names its script and stylesheet by version; both come with the same
    // headers, their own content types, and a long cache life under that URL only.
    let asset_url = |kind: &str| {
        let start = html.find(&format!("/ui/app.{kind}?v=")).unwrap();
        let end = start + html[start..].find('"').unwrap();
        html[start..end].to_owned()
    };
    for (kind, content_type) in [("js", "text/javascript"), ("css", "text/css")] {
        let url = asset_url(kind);
        let r = get(&url, None).await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let h = r.headers();
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type)
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["content-security-policy"].to_str().unwrap(), csp);
        assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
        let etag = h["etag"].to_str().unwrap().to_owned();
        let again = get(&url, Some(&etag)).await.unwrap();
        assert_eq!(again.status(), 304, "revalidation of {url}");

        let unversioned = get(&format!("/ui/app.{kind}"), None).await.unwrap();
        assert_eq!(unversioned.headers()["cache-control"], "no-cache");
    }
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn admin_sees_workloads_snapshots_and_jobs(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = workload_row(&pool, "node-a", SourceKind::Image).await;
    let other = workload_row(&pool, "node-b", SourceKind::Git).await;
    let sid = ready_snapshot(&pool, &w).await;
    let job = ui.restore_via_api(w.id, sid).await;
    finish_job(
        &pool,
        job.parse().unwrap(),
        "failed",
        Some("insufficient_space"),
    )
    .await;

    ui.sign_in_ok(&ui.admin).await;
    // Name and role come from GET /api/whoami; signing in only read.
    let signed_in = format!("signed in as {ADMIN_NAME} (admin)");
    assert_eq!(ui.text("#whoami").await, signed_in);
    assert_eq!(
        ui.js("return document.getElementById('whoami').dataset.role")
            .await,
        json!("admin")
    );
    ui.assert_sign_in_only_reads(0).await;
    let names = ui
        .wait_text("#workloads-table tbody", &[&w.name, &other.name])
        .await;
    assert!(
        names.contains("shop/prod/") && names.contains("node-b"),
        "{names}"
    );

    // The job, with its kind, workload, state, attempt and error.
    ui.wait_row_state(&job, "failed").await;
    let row = ui
        .text(&format!("#jobs-table tr[data-job-id=\"{job}\"]"))
        .await;
    for part in [
        &job[job.len() - 8..],
        "restore",
        &w.name,
        "failed",
        "insufficient_space",
        "failed: insufficient_space",
    ] {
        assert!(row.contains(part), "{part} missing from the row: {row}");
    }

    // The workload's snapshots, restorable.
    ui.click(&format!(
        "#workloads-table tr[data-workload-id=\"{}\"] button.show-snapshots",
        w.id
    ))
    .await;
    ui.wait_text("#snapshots-title", &[&w.name]).await;
    let restore = ui
        .visible(&format!(
            "#snapshots-table tr[data-snapshot-id=\"{sid}\"] button.restore"
        ))
        .await;
    assert!(restore.is_enabled().await.unwrap());
    ui.wait_text(
        &format!("#snapshots-table tr[data-snapshot-id=\"{sid}\"]"),
        &[&sid.to_string()[28..], "manual", "ready", "1.2 kB"],
    )
    .await;

    // The job's own page.
    ui.click(&format!("#jobs-table tr[data-job-id=\"{job}\"] a.job-link"))
        .await;
    ui.wait_text("#job-fields", &["insufficient_space", "restore"])
        .await;
    assert_eq!(ui.text("#job-id").await, job);
    assert_eq!(ui.text("dd[data-field=requested-by]").await, ADMIN_NAME);
    assert_eq!(ui.text("dd[data-field=snapshot]").await, sid.to_string());
    assert!(
        ui.js("return location.hash")
            .await
            .as_str()
            .unwrap()
            .ends_with(&job)
    );
    ui.click("#job-view a[href=\"#/\"]").await;
    ui.visible("#jobs-table").await;

    // The token is in this tab's sessionStorage only: no other storage, no cookie, no URL.
    let kept = ui
        .js(
            "return [sessionStorage.getItem('volsnap.token'), localStorage.length, \
             document.cookie, location.href]",
        )
        .await;
    assert_eq!(kept[0], json!(ui.admin));
    assert_eq!(kept[1], json!(0));
    assert_eq!(kept[2], json!(""));
    assert!(!kept[3].as_str().unwrap().contains(&ui.admin));

    // A reload signs in again with the stored token: whoami again, still only reads.
    ui.client().refresh().await.unwrap();
    ui.wait_text("#whoami", &[&signed_in]).await;
    ui.assert_sign_in_only_reads(1).await;

    // Sign out forgets it.
    ui.click("#signout").await;
    ui.visible("#login-form").await;
    assert_eq!(ui.text("#login-message").await, "Signed out.");
    assert!(!ui.find("#app-view").await.is_displayed().await.unwrap());
    assert_eq!(
        ui.js("return sessionStorage.getItem('volsnap.token')")
            .await,
        json!(null)
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn a_refused_token_returns_to_the_login_form_with_a_message(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;

    ui.sign_in(&format!("volsnap_{}", "0".repeat(64))).await;
    let msg = ui.wait_text("#login-message", &["401"]).await;
    assert!(
        msg.contains("refused the token") && msg.contains("Sign in again"),
        "{msg}"
    );
    assert!(ui.find("#login-form").await.is_displayed().await.unwrap());
    assert!(!ui.find("#app-view").await.is_displayed().await.unwrap());
    assert_eq!(
        ui.js("return sessionStorage.getItem('volsnap.token')")
            .await,
        json!(null)
    );

    // A token revoked while the page is open: the next refresh is refused (the API's
    // token cache forgets it within 2 s) and the page goes back to the form.
    ui.sign_in_ok(&ui.admin).await;
    assert!(!ui.find("#login-view").await.is_displayed().await.unwrap());
    db::tokens::revoke(&pool, ADMIN_NAME).await.unwrap();
    let msg = ui
        .wait_text("#login-message", &["401", "Sign in again"])
        .await;
    assert!(msg.contains("unauthorized"), "{msg}");
    assert!(ui.find("#token").await.is_displayed().await.unwrap());
    assert!(!ui.find("#app-view").await.is_displayed().await.unwrap());
    assert_eq!(
        ui.js("return sessionStorage.getItem('volsnap.token')")
            .await,
        json!(null)
    );
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn an_unanswered_whoami_leaves_the_role_unknown_until_asked_again(pool: PgPool) {
    let ui = Ui::start(pool.clone()).await;
    let w = workload_row(&pool, "node-a", SourceKind::Image).await;
    let sid = ready_snapshot(&pool, &w).await;
    let queued = ui.restore_via_api(w.id, sid).await;
    let cancel_css = format!("#jobs-table tr[data-job-id=\"{queued}\"] button.cancel");

    // The page's GET /api/whoami fails as if the network dropped it (every other
    // request goes through), until the test lets it through.
    ui.client().goto(&format!("{}/", ui.api.url)).await.unwrap();
    ui.visible("#token").await;
    ui.js("window.__blockWhoami = true; window.__whoamiBlocked = 0; \
         const real = window.fetch; \
         window.fetch = function (input, init) { \
           if (window.__blockWhoami && String(input).endsWith('/api/whoami')) { \
             window.__whoamiBlocked++; \
             return Promise.reject(new TypeError('dropped by the test')); \
           } \
           return real.call(this, input, init); \
         }; return null")
        .await;
    ui.find("#token").await.send_keys(&ui.viewer).await.unwrap();
    ui.find("#signin").await.click().await.unwrap();

    // The page opens anyway, says it does not know the role, and leaves the buttons to
    // the API.
    ui.wait_row_state(&queued, "queued").await;
    assert_eq!(
        ui.text("#whoami").await,
        "signed in as (unknown token) (role unknown)"
    );
    let shown = ui
        .wait_text("#page-error", &["Could not tell", "network_error"])
        .await;
    assert!(shown.contains("dropped by the test"), "{shown}");
    assert!(ui.find(&cancel_css).await.is_enabled().await.unwrap());

    // Once whoami answers, the next jobs refresh learns the role: read-only now.
    ui.js("window.__blockWhoami = false; return null").await;
    ui.wait_text(
        "#whoami",
        &[&format!("signed in as {VIEWER_NAME} (viewer · read-only)")],
    )
    .await;
    ui.wait_js(
        "the cancel button to be disabled",
        &format!("return document.querySelector('{cancel_css}').disabled || null"),
    )
    .await;
    assert!(!ui.find("#page-error").await.is_displayed().await.unwrap());
    assert!(
        ui.js("return window.__whoamiBlocked")
            .await
            .as_u64()
            .unwrap()
            >= 1
    );
    // The page (from its load on) made nothing but reads, and whoami reached the API
    // once: the retry that got through.
    let asked: Vec<_> = ui
        .api
        .requests()
        .into_iter()
        .skip_while(|(m, u)| !(m == "GET" && u == "/"))
        .collect();
    assert_eq!(
        asked.iter().filter(|(_, u)| u == "/api/whoami").count(),
        1,
        "{asked:?}"
    );
    assert!(
        asked
            .iter()
            .filter(|(_, u)| u.starts_with("/api/"))
            .all(|(m, _)| m == "GET"),
        "{asked:?}"
    );
}
