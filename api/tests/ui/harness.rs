//! What the browser tests drive: the real `volsnap-api` binary serving a per-test
//! database, a chromedriver on a free loopback port, and a headless Chromium with a
//! fresh profile. Missing browser tools fail the test with a message saying what to
//! install; they never skip it.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sqlx::PgPool;
use volsnap_shared::domain::Role;

use crate::common;

/// How long a condition may take to come true in the page: the jobs list polls every
/// 2 s and the auth cache forgets a revoked token within 2 s; the rest is headroom for
/// a loaded CI machine (a passing test never waits for it).
pub const WAIT: Duration = Duration::from_secs(20);

/// A browser tool: from its environment variable, else the Debian package's path.
fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    let executable = std::fs::metadata(&path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    assert!(
        executable,
        "{} is not an executable file: the web UI's browser tests need headless Chromium and \
         chromedriver (Debian packages `chromium` and `chromium-driver`, which .ci/run installs: \
         `apt-get install chromium chromium-driver`), or {var} set to the program's path",
        path.display()
    );
    path
}

/// Read a child's output lines on a thread: the first line `pick` accepts is sent back,
/// every line is kept for failure messages.
fn watch_lines(
    out: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<String>>,
    pick: impl Fn(&str) -> Option<String> + Send + 'static,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if !sent && let Some(v) = pick(&line) {
                let _ = tx.send(v);
                sent = true;
            }
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    rx
}

/// The URL of the per-test database `#[sqlx::test]` made.
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL must be set");
    let (server, _) = base.rsplit_once('/').expect("DATABASE_URL ends in /DBNAME");
    format!(
        "{server}/{}",
        pool.connect_options()
            .get_database()
            .expect("the test pool names its database")
    )
}

/// `volsnap-api serve` on a free loopback port. Its log includes one line per request
/// received (`tower_http` at debug), so a test can see what the page asked the API.
pub struct ApiServer {
    child: Child,
    pub url: String,
    log: Arc<Mutex<String>>,
}

impl ApiServer {
    pub fn start(database_url: &str) -> ApiServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_volsnap-api"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "info,sqlx=warn,tower_http=debug")
            .env("NO_COLOR", "1")
            .env_remove("VOLSNAP_API_ADDR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting volsnap-api");
        let log = Arc::new(Mutex::new(String::new()));
        let addr = watch_lines(child.stderr.take().unwrap(), log.clone(), |line| {
            line.contains("volsnap-api listening")
                .then(|| {
                    line.split_once("addr=")?
                        .1
                        .split_whitespace()
                        .next()
                        .map(str::to_owned)
                })
                .flatten()
        })
        .recv_timeout(Duration::from_secs(30));
        let Ok(addr) = addr else {
            let _ = child.kill();
            panic!(
                "volsnap-api did not report its address; its log:\n{}",
                log.lock().unwrap()
            );
        };
        ApiServer {
            child,
            url: format!("http://{addr}"),
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Every request the API has received so far, in order: `(method, path?query)`.
    /// From the `tower_http` trace lines: `request{method=GET uri=/api/jobs …}: … started
    /// processing request`.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains("started processing request"))
            .filter_map(|l| {
                let span = l.split_once("request{")?.1.split_once('}')?.0;
                let field = |k: &str| {
                    span.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(k))
                        .map(str::to_owned)
                };
                Some((field("method=")?, field("uri=")?))
            })
            .collect()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- volsnap-api's log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver (in its own process group, with the Chromium it starts) and one
/// WebDriver session.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let chromedriver = tool("VOLSNAP_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = tool("VOLSNAP_CHROMIUM", "/usr/bin/chromium");
        let profile = tempfile::Builder::new()
            .prefix("volsnap-ui-chromium-")
            .tempdir()
            .expect("a temporary Chromium profile");
        let mut driver = Command::new(&chromedriver)
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let log = Arc::new(Mutex::new(String::new()));
        let port = watch_lines(driver.stdout.take().unwrap(), log.clone(), |line| {
            line.split_once("started successfully on port ")
                .map(|(_, p)| p.trim_end_matches('.').trim().to_owned())
        })
        .recv_timeout(Duration::from_secs(20));
        let port = match port {
            Ok(p) => p,
            Err(_) => {
                let _ = killpg(Pid::from_raw(driver.id() as i32), Signal::SIGKILL);
                panic!(
                    "chromedriver did not start; its output:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let client = match connect(&port, &chromium, &profile).await {
            Ok(c) => c,
            Err(e) => {
                let _ = killpg(Pid::from_raw(driver.id() as i32), Signal::SIGKILL);
                panic!("no WebDriver session with {}: {e}", chromium.display())
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }
}

async fn connect(
    port: &str,
    chromium: &std::path::Path,
    profile: &tempfile::TempDir,
) -> Result<Client, fantoccini::error::NewSessionError> {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and every Chromium process share its process group.
        let _ = killpg(Pid::from_raw(self.driver.id() as i32), Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// Poll `probe` until it gives `Some`, or fail naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the restore dialog asks to be typed: `project/stage/name`.
pub fn full_name(w: &volsnap_shared::domain::Workload) -> String {
    format!("{}/{}/{}", w.project, w.stage, w.name)
}

/// The names of [`Ui`]'s two tokens: not their roles' words, so a page that shows the
/// role where the name belongs (or the other way round) is caught.
pub const ADMIN_NAME: &str = "ops-admin";
pub const VIEWER_NAME: &str = "ops-viewer";

/// One test's world: the database, the API binary on it, a browser, two tokens.
pub struct Ui {
    pub api: ApiServer,
    pub browser: Browser,
    pub admin: String,
    pub viewer: String,
    http: reqwest::Client,
}

impl Ui {
    pub async fn start(pool: PgPool) -> Ui {
        let admin = common::token(&pool, ADMIN_NAME, Role::Admin).await;
        let viewer = common::token(&pool, VIEWER_NAME, Role::Viewer).await;
        let url = database_url(&pool);
        let api = tokio::task::spawn_blocking(move || ApiServer::start(&url));
        let browser = Browser::start().await;
        Ui {
            api: api.await.unwrap(),
            browser,
            admin,
            viewer,
            http: reqwest::Client::new(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.browser.client
    }

    /// Load the page and sign in with `token` (not waiting for the outcome).
    pub async fn sign_in(&self, token: &str) {
        self.client()
            .goto(&format!("{}/", self.api.url))
            .await
            .unwrap();
        let input = self.visible("#token").await;
        input.send_keys(token).await.unwrap();
        self.find("#signin").await.click().await.unwrap();
    }

    /// Sign in and wait until the app shows its first jobs page.
    pub async fn sign_in_ok(&self, token: &str) {
        self.sign_in(token).await;
        self.wait_js(
            "the app view with its jobs list loaded",
            "return !document.getElementById('app-view').hidden \
             && document.getElementById('jobs-count').textContent !== '' || null",
        )
        .await;
    }

    pub async fn find(&self, css: &str) -> Element {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// The element once it exists and is displayed.
    pub async fn visible(&self, css: &str) -> Element {
        eventually(&format!("{css} to be displayed"), || async {
            let el = self.client().find(Locator::Css(css)).await.ok()?;
            el.is_displayed().await.ok()?.then_some(el)
        })
        .await
    }

    /// Click the element once it is displayed (retried while the page re-renders it).
    pub async fn click(&self, css: &str) {
        eventually(&format!("a click on {css}"), || async {
            let el = self.client().find(Locator::Css(css)).await.ok()?;
            if !el.is_displayed().await.ok()? {
                return None;
            }
            el.click().await.ok()
        })
        .await
    }

    /// The rendered text of an element (empty while it is hidden).
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// Wait until the rendered text of `css` contains every one of `parts`.
    pub async fn wait_text(&self, css: &str, parts: &[&str]) -> String {
        eventually(&format!("{css} to show {parts:?}"), || async {
            let el = self.client().find(Locator::Css(css)).await.ok()?;
            let text = el.text().await.ok()?;
            parts.iter().all(|p| text.contains(p)).then_some(text)
        })
        .await
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client()
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    pub async fn js_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.client()
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Run `script` until it returns something other than null/false.
    pub async fn wait_js(&self, what: &str, script: &str) -> Value {
        eventually(what, || async {
            let v = self.client().execute(script, vec![]).await.ok()?;
            (!v.is_null() && v != Value::Bool(false)).then_some(v)
        })
        .await
    }

    /// The `data-state` of a job's row in the jobs list (None: no such row).
    pub async fn row_state(&self, job: impl std::fmt::Display) -> Option<String> {
        self.js_with(
            "const r = document.querySelector(`#jobs-table tr[data-job-id=\"${arguments[0]}\"]`); \
             return r ? r.dataset.state : null;",
            vec![json!(job.to_string())],
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Wait until the job's row shows `state`.
    pub async fn wait_row_state(&self, job: impl std::fmt::Display, state: &str) {
        let job = job.to_string();
        eventually(&format!("job {job}'s row to show {state}"), || async {
            (self.row_state(&job).await.as_deref() == Some(state)).then_some(())
        })
        .await
    }

    /// The requests the API received from the page's `n`-th sign-in (0: the first) up to
    /// its first jobs list read, once that read has arrived. A sign-in (with the form
    /// or from the tab's stored token) starts with `GET /api/whoami`.
    pub async fn sign_in_requests(&self, n: usize) -> Vec<(String, String)> {
        eventually(
            "the API to log the page's sign-in and its first jobs read",
            || async {
                let all = self.api.requests();
                let start = all
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, uri))| uri == "/api/whoami")
                    .nth(n)?
                    .0;
                let end = start
                    + all[start..]
                        .iter()
                        .position(|(m, uri)| m == "GET" && uri.starts_with("/api/jobs?"))?;
                Some(all[start..=end].to_vec())
            },
        )
        .await
    }

    /// Signing in asked `GET /api/whoami` once, first, and made no other request than
    /// reads: in particular no `POST …/cancel` used as a role probe.
    pub async fn assert_sign_in_only_reads(&self, n: usize) {
        let seen = self.sign_in_requests(n).await;
        let all = self.api.requests();
        assert_eq!(
            seen[0],
            ("GET".to_owned(), "/api/whoami".to_owned()),
            "{seen:?}"
        );
        assert_eq!(
            seen.iter().filter(|(_, u)| u == "/api/whoami").count(),
            1,
            "{seen:?}"
        );
        assert!(
            seen.iter().all(|(m, _)| m == "GET"),
            "signing in made a non-GET request: {seen:?}"
        );
        assert!(
            !all.iter().any(|(_, u)| u.contains("/cancel")),
            "a cancel was sent: {all:?}"
        );
    }

    /// A request to the API as a client (not the browser) would make it.
    pub async fn api_post(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.api.url))
            .bearer_auth(&self.admin);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Enqueue a restore through the API as an admin client; the job's id.
    pub async fn restore_via_api(
        &self,
        workload: impl std::fmt::Display,
        sid: impl std::fmt::Display,
    ) -> String {
        let sid = sid.to_string();
        let (status, body) = self
            .api_post(
                &format!("/api/workloads/{workload}/snapshots/{sid}/restore"),
                &[("x-confirm-restore", &sid)],
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["job"]["id"].as_str().unwrap().to_owned()
    }

    /// Save a screenshot (for looking at a failing page by hand).
    #[allow(dead_code)]
    pub async fn screenshot(&self, path: &str) {
        let png = self.client().screenshot().await.unwrap();
        std::fs::write(path, png).unwrap();
    }
}
