//! Connecting to PostgreSQL: the configured `DATABASE_URL`, or — when it is unset — a
//! private cluster under the state dir (the embedded default, for trying volsnap out on
//! one machine). Also the schema check both binaries run before serving.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] sqlx::Error),
    #[error(
        "the database schema is behind this build ({applied} of {known} migrations applied); \
         run `volsnap-api migrate` first"
    )]
    MigrationsBehind { applied: usize, known: usize },
    #[error("the database has migration {0} that this build does not know; upgrade volsnap first")]
    UnknownMigration(i64),
    #[error("reading the migration table failed")]
    Inspect(#[source] sqlx::Error),
    #[error("embedded PostgreSQL: {0}")]
    Embedded(String),
}

/// Open a pool to `url`, or to the embedded cluster under `state_dir` when `url` is None.
pub async fn connect(
    url: Option<&str>,
    state_dir: &Path,
    max_connections: u32,
) -> Result<PgPool, DatabaseError> {
    let opts: PgConnectOptions = match url {
        Some(u) => u.parse().map_err(DatabaseError::Connect)?,
        None => {
            let dir = state_dir.join("postgres");
            let socket_dir = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || ensure_embedded(&dir)
            })
            .await
            .map_err(|e| DatabaseError::Embedded(e.to_string()))??;
            PgConnectOptions::new()
                .host(&socket_dir.to_string_lossy())
                .username("volsnap")
                .database("postgres")
        }
    };
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // A dead connection fails its first query anyway; a ping per acquire would cost
        // a round trip on every queue operation.
        .test_before_acquire(false)
        .connect_with(opts)
        .await
        .map_err(DatabaseError::Connect)
}

/// Refuse to run against a schema that is behind (or ahead of) this build.
pub async fn ensure_migrated(pool: &PgPool) -> Result<(), DatabaseError> {
    let status = crate::db::schema::status(pool)
        .await
        .map_err(DatabaseError::Inspect)?;
    if let Some(v) = status.unknown.first() {
        return Err(DatabaseError::UnknownMigration(*v));
    }
    if !status.is_current() {
        let known = crate::MIGRATOR.iter().count();
        return Err(DatabaseError::MigrationsBehind {
            applied: known - status.pending.len(),
            known,
        });
    }
    Ok(())
}

fn pg_bin_dir() -> Result<PathBuf, DatabaseError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| {
            DatabaseError::Embedded(
                "DATABASE_URL is unset and no PostgreSQL server is installed under /usr/lib/postgresql \
                 (install postgresql, or set DATABASE_URL)"
                    .into(),
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .ok_or_else(|| DatabaseError::Embedded("no initdb found under /usr/lib/postgresql".into()))
}

/// Create (once) and start (if needed) a private cluster in `dir` that listens only on
/// a unix socket inside `dir`. Returns the socket directory. Serialised by a file lock
/// so an API and a worker starting together do not both run initdb.
fn ensure_embedded(dir: &Path) -> Result<PathBuf, DatabaseError> {
    use nix::fcntl::{Flock, FlockArg};
    let err =
        |what: &str, e: &dyn std::fmt::Display| DatabaseError::Embedded(format!("{what}: {e}"));
    let parent = dir.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(|e| err("creating the state dir", &e))?;
    let lock_file = std::fs::File::create(parent.join("postgres.lock"))
        .map_err(|e| err("creating the lock file", &e))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| err("locking the embedded cluster", &e))?;

    let bin = pg_bin_dir()?;
    let root = nix::unistd::geteuid().is_root();
    // PostgreSQL refuses to run as root; run it as the `postgres` system user then.
    let run = |program: &str, args: &[&str]| -> Result<std::process::Output, DatabaseError> {
        let exe = bin.join(program);
        let mut cmd = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .output()
            .map_err(|e| err(&format!("running {program}"), &e))
    };
    let d = dir.to_string_lossy().into_owned();
    if !dir.join("PG_VERSION").exists() {
        std::fs::create_dir_all(dir).map_err(|e| err("creating the data dir", &e))?;
        if root {
            let status = Command::new("chown")
                .args(["postgres:", &d])
                .status()
                .map_err(|e| err("chown", &e))?;
            if !status.success() {
                return Err(DatabaseError::Embedded(format!(
                    "chown postgres: {d} failed"
                )));
            }
        }
        tracing::info!(dir = %d, "DATABASE_URL is unset: initialising a private PostgreSQL cluster");
        let out = run(
            "initdb",
            &["-D", &d, "-U", "volsnap", "--auth=trust", "-E", "UTF8"],
        )?;
        if !out.status.success() {
            return Err(DatabaseError::Embedded(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    let status = run("pg_ctl", &["-D", &d, "status"])?;
    if !status.status.success() {
        let opts = format!("-c listen_addresses='' -k {d} -c max_connections=200");
        let log = format!("{d}/server.log");
        let out = run(
            "pg_ctl",
            &["-D", &d, "-w", "-t", "60", "-l", &log, "-o", &opts, "start"],
        )?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            return Err(DatabaseError::Embedded(format!(
                "starting PostgreSQL failed: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        tracing::info!(dir = %d, "private PostgreSQL started (it keeps running; stop it with pg_ctl -D {d} stop)");
    }
    Ok(dir.to_path_buf())
}
