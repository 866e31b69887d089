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
    assert_eq!(ui.text("#whoami").await, "admin");
    let names = ui
        .wait_text("#workloads-table tbody", &[&w.name, &other.name])
        .await;
    assert!(
        names.contains("shop / prod") && names.contains("node-b"),
        "{names}"
    );

    // The job, with its kind, workload, state, attempt and error.
    ui.wait_row_state(&job, "failed").await;
    let row = ui
        .text(&format!("#jobs-table tr[data-job-id=\"{job}\"]"))
        .await;
    for part in [
        &job[..8],
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
        &[&sid.to_string()[..8], "manual", "ready", "1.2 KiB"],
    )
    .await;

    // The job's own page.
    ui.click(&format!("#jobs-table tr[data-job-id=\"{job}\"] a.job-link"))
        .await;
    ui.wait_text("#job-fields", &["insufficient_space", "restore"])
        .await;
    assert_eq!(ui.text("#job-id").await, job);
    assert_eq!(ui.text("dd[data-field=requested-by]").await, "admin");
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
    db::tokens::revoke(&pool, "admin").await.unwrap();
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
