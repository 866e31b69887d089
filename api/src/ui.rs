//! The web UI: one HTML page, one script and one stylesheet, embedded in the binary and
//! served at `GET /`, `GET /ui/app.js` and `GET /ui/app.css`. The page talks to the
//! JSON API with the operator's bearer token (kept in the tab's `sessionStorage`), so
//! these routes need no auth of their own.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles from this
//! origin only, no inline code, Trusted Types enforced so no string can become markup,
//! no framing) and `X-Content-Type-Options: nosniff`. The page references its assets
//! with `?v=<content hash>`: a matching version is cached for a year (immutable), any
//! other URL is revalidated; the page itself is always revalidated (`no-cache`, ETag).

use std::sync::LazyLock;

use axum::Router;
use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");
/// The message catalogues, one per language (`window.VOLSNAP_I18N.<lang>`).
const I18N_EN: &str = include_str!("../ui/i18n/en.js");
const I18N_RU: &str = include_str!("../ui/i18n/ru.js");

/// Where `index.html` writes the assets' version.
const VERSION_PLACEHOLDER: &str = "__ASSET_VERSION__";

/// The policy of every UI answer. `require-trusted-types-for 'script'` makes Chromium
/// refuse any string assigned to `innerHTML` and friends: the script builds the page
/// with DOM calls and `textContent` only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'; \
     require-trusted-types-for 'script'; trusted-types 'none'";

/// One embedded file as served.
struct Asset {
    body: String,
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: String, content_type: &'static str) -> Self {
        let etag = HeaderValue::from_str(&format!("\"{}\"", short_hash(&body)))
            .expect("a hex ETag is a valid header value");
        Asset {
            body,
            content_type,
            etag,
        }
    }
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..10])
}

struct Assets {
    index: Asset,
    js: Asset,
    css: Asset,
    en: Asset,
    ru: Asset,
    /// Hash of the scripts and stylesheet together: the `?v=` the page asks for.
    version: String,
}

static ASSETS: LazyLock<Assets> = LazyLock::new(|| {
    let version = short_hash(&format!(
        "{APP_JS}\u{0}{APP_CSS}\u{0}{I18N_EN}\u{0}{I18N_RU}"
    ));
    Assets {
        index: Asset::new(
            INDEX_HTML.replace(VERSION_PLACEHOLDER, &version),
            "text/html; charset=utf-8",
        ),
        js: Asset::new(APP_JS.to_owned(), "text/javascript; charset=utf-8"),
        css: Asset::new(APP_CSS.to_owned(), "text/css; charset=utf-8"),
        en: Asset::new(I18N_EN.to_owned(), "text/javascript; charset=utf-8"),
        ru: Asset::new(I18N_RU.to_owned(), "text/javascript; charset=utf-8"),
        version,
    }
});

/// `GET /` (in the OpenAPI document) and the two asset routes (not API surface).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .merge(OpenApiRouter::from(
            Router::new()
                .route("/ui/app.js", get(app_js))
                .route("/ui/app.css", get(app_css))
                .route("/ui/i18n/en.js", get(i18n_en))
                .route("/ui/i18n/ru.js", get(i18n_ru)),
        ))
}

/// The web UI: an HTML page that reads and acts through this JSON API.
///
/// The page asks for a token and sends it as `Authorization: Bearer` on every `/api`
/// request; the page itself needs none.
#[utoipa::path(get, path = "/", tag = "ops", security(()),
    responses(
        (status = 200, description = "the web UI's HTML page", content_type = "text/html", body = String),
        (status = 304, description = "not modified (`If-None-Match`)"),
    ))]
async fn index(headers: HeaderMap) -> Response {
    serve(&ASSETS.index, &headers, "no-cache")
}

async fn app_js(headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    serve(&ASSETS.js, &headers, asset_cache_control(q.as_deref()))
}

async fn app_css(headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    serve(&ASSETS.css, &headers, asset_cache_control(q.as_deref()))
}

async fn i18n_en(headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    serve(&ASSETS.en, &headers, asset_cache_control(q.as_deref()))
}

async fn i18n_ru(headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    serve(&ASSETS.ru, &headers, asset_cache_control(q.as_deref()))
}

/// Immutable only under the URL of this exact build's assets, so an old page never
/// pins a new file (or the reverse) in a cache.
fn asset_cache_control(query: Option<&str>) -> &'static str {
    let current = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .any(|kv| kv.strip_prefix("v=") == Some(ASSETS.version.as_str()));
    if current {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
}

fn serve(asset: &'static Asset, req: &HeaderMap, cache_control: &'static str) -> Response {
    let not_modified = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.trim_start_matches("W/") == asset.etag)
        });
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, asset.content_type)],
            asset.body.as_str(),
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, asset.etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    security_headers(h);
    resp
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script builds the page with DOM calls only; these sinks would turn API data
    /// (workload names are user input) into markup or code.
    #[test]
    fn script_uses_no_markup_or_code_sinks() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setTimeout('",
            "setTimeout(\"",
            "document.cookie",
        ] {
            for (name, js) in [("app.js", APP_JS), ("en.js", I18N_EN), ("ru.js", I18N_RU)] {
                assert!(!js.contains(sink), "{name} must not use {sink}");
            }
        }
        // Persistent storage holds the chosen language and nothing else (the token
        // lives in sessionStorage only).
        for (i, _) in APP_JS.match_indices("localStorage") {
            let rest = &APP_JS[i + "localStorage".len()..];
            assert!(
                rest.starts_with(".getItem(LANG_KEY)") || rest.starts_with(".setItem(LANG_KEY, "),
                "app.js uses localStorage for something else than the language: {}",
                &APP_JS[i..(i + 60).min(APP_JS.len())]
            );
        }
        assert!(!I18N_EN.contains("localStorage") && !I18N_RU.contains("localStorage"));
    }

    /// Both catalogues have the same keys (a missing Russian string would show English).
    #[test]
    fn catalogues_have_the_same_keys() {
        let keys = |js: &str| -> Vec<String> {
            js.lines()
                .filter_map(|l| l.trim().strip_prefix('\''))
                .filter_map(|l| l.split_once("':").map(|(k, _)| k.to_owned()))
                .collect()
        };
        let (en, ru) = (keys(I18N_EN), keys(I18N_RU));
        assert!(en.len() > 100, "{}", en.len());
        assert_eq!(en, ru);
    }

    #[test]
    fn page_has_no_inline_code_and_names_its_versioned_assets() {
        let html = &ASSETS.index.body;
        assert!(!html.contains(VERSION_PLACEHOLDER));
        assert!(html.contains(&format!("/ui/app.js?v={}", ASSETS.version)));
        assert!(html.contains(&format!("/ui/app.css?v={}", ASSETS.version)));
        assert!(html.contains(&format!("/ui/i18n/ru.js?v={}", ASSETS.version)));
        assert!(!html.contains(" style="), "no inline styles (CSP)");
        assert!(!html.contains("<style"), "no inline styles (CSP)");
        // Every script is external (src=), none inline.
        assert_eq!(
            html.matches("<script").count(),
            html.matches("<script src=").count()
        );
        let handler = html.split(|c: char| c.is_whitespace()).find(|w| {
            w.strip_prefix("on").is_some_and(|rest| {
                rest.split_once('=').is_some_and(|(name, _)| {
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase())
                })
            })
        });
        assert_eq!(handler, None, "no inline event handlers (CSP)");
    }

    #[test]
    fn policy_is_strict() {
        let p = CONTENT_SECURITY_POLICY;
        assert!(p.contains("default-src 'self'"));
        assert!(p.contains("frame-ancestors 'none'"));
        assert!(!p.contains("unsafe"), "{p}");
    }

    #[test]
    fn asset_cache_control_follows_the_version() {
        let v = format!("v={}", ASSETS.version);
        assert_eq!(
            asset_cache_control(Some(&v)),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(asset_cache_control(Some("v=old")), "no-cache");
        assert_eq!(asset_cache_control(None), "no-cache");
    }
}
