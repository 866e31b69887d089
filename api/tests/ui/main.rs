//! Browser tests of the web UI served at `GET /`: real PostgreSQL (one database per
//! test), the real `volsnap-api` binary serving it, and a real headless Chromium driven
//! through chromedriver (WebDriver). Job state changes that a worker would make are
//! made with SQL, as the API tests do; no worker runs.
//!
//! Needs `DATABASE_URL` (`scripts/pg.sh`), and `/usr/bin/chromium` and
//! `/usr/bin/chromedriver` (or `VOLSNAP_CHROMIUM` / `VOLSNAP_CHROMEDRIVER`): without
//! them every test here fails and says what to install.

#[path = "../api/common.rs"]
#[allow(dead_code)]
mod common;
mod harness;

mod console;
mod jobs;
mod restore;
mod session;
mod undo;
mod xss;
