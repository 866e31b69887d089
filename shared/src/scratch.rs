//! A scratch database for benchmarks and examples: a uniquely named database on the
//! server that `DATABASE_URL` points at, migrated to this build's schema, and dropped
//! at the end.
//!
//! Tests do not need it (`#[sqlx::test]` gives each test its own database); the
//! benchmark binaries and examples do, and each used to carry its own copy of the
//! create / migrate / drop steps. Names are unique (`<prefix>_<8 hex digits>`), so two
//! runs on one server never share or drop each other's database.
//!
//! ```no_run
//! # async fn f() -> Result<(), volsnap_shared::scratch::ScratchError> {
//! let db = volsnap_shared::scratch::ScratchDb::create("volsnap_example").await?;
//! // ... use db.pool(), or hand db.url() to a child process ...
//! db.drop_database().await?;
//! # Ok(()) }
//! ```
//!
//! A `ScratchDb` dropped without [`ScratchDb::drop_database`] (a panic, an early `?`)
//! still drops its database, from a short-lived thread of its own.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// Why a scratch database could not be made or dropped.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("DATABASE_URL is not set (scripts/pg.sh prints one)")]
    NoDatabaseUrl,
    #[error("DATABASE_URL is not a PostgreSQL URL")]
    BadUrl(#[source] sqlx::Error),
    #[error("{what}")]
    Sql {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the scratch database")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

fn sql(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> ScratchError {
    let what = what.into();
    move |source| ScratchError::Sql { what, source }
}

/// How to make a scratch database: see [`ScratchDb::builder`].
#[derive(Debug, Clone)]
pub struct ScratchBuilder {
    prefix: String,
    settings: Vec<(&'static str, i64)>,
    max_connections: u32,
}

impl ScratchBuilder {
    /// A per-database server setting (`ALTER DATABASE … SET key = value`), applied
    /// before the pool connects, so every session of the scratch database has it.
    ///
    /// # Panics
    /// When `key` is not a plain setting name (lowercase letters, digits, `_`, `.`).
    pub fn setting(mut self, key: &'static str, value: i64) -> Self {
        assert!(
            !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'_'
                    || b == b'.'),
            "not a setting name: {key:?}"
        );
        self.settings.push((key, value));
        self
    }

    /// The pool's size (default 10, sqlx's default).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Creates and migrates the database on `DATABASE_URL`'s server.
    pub async fn create(self) -> Result<ScratchDb, ScratchError> {
        let base = std::env::var("DATABASE_URL").map_err(|_| ScratchError::NoDatabaseUrl)?;
        self.create_on(&base).await
    }

    /// Creates and migrates the database on the server of `base_url` (any database of
    /// it: the connection only runs `CREATE DATABASE` and, at the end, `DROP DATABASE`).
    pub async fn create_on(self, base_url: &str) -> Result<ScratchDb, ScratchError> {
        let base: PgConnectOptions = base_url.parse().map_err(ScratchError::BadUrl)?;
        let base = base.disable_statement_logging();
        let name = format!("{}_{:08x}", self.prefix, rand::random::<u32>());
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(base.clone())
            .await
            .map_err(sql("connecting to DATABASE_URL"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .map_err(sql(format!("creating database {name}")))?;
        // From here on the guard drops the database on any error.
        let options = base.clone().database(&name);
        let mut db = ScratchDb {
            url: options.to_url_lossy().to_string(),
            name,
            options,
            admin,
            admin_options: base,
            pool: None,
        };
        for (key, value) in &self.settings {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {} SET {key} = {value}",
                db.name
            )))
            .execute(&db.admin)
            .await
            .map_err(sql(format!("setting {key} on {}", db.name)))?;
        }
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .connect_with(db.options.clone())
            .await
            .map_err(sql(format!("connecting to {}", db.name)))?;
        crate::MIGRATOR
            .run(&pool)
            .await
            .map_err(ScratchError::Migrate)?;
        db.pool = Some(pool);
        Ok(db)
    }
}

/// A migrated scratch database and a pool on it. Drop it with
/// [`ScratchDb::drop_database`] (or let it go out of scope: see the module docs).
#[derive(Debug)]
pub struct ScratchDb {
    name: String,
    url: String,
    options: PgConnectOptions,
    /// A pool on the server's `DATABASE_URL` database, for `CREATE`/`DROP DATABASE`.
    admin: PgPool,
    admin_options: PgConnectOptions,
    /// `None` only while being made, and after [`ScratchDb::drop_database`].
    pool: Option<PgPool>,
}

impl ScratchDb {
    /// Creates a database named `<prefix>_<8 hex digits>` on `DATABASE_URL`'s server
    /// and migrates it, with default options (see [`ScratchDb::builder`] for others).
    pub async fn create(prefix: &str) -> Result<ScratchDb, ScratchError> {
        Self::builder(prefix).create().await
    }

    /// Options for a scratch database whose name starts with `prefix`.
    ///
    /// # Panics
    /// When `prefix` is not a plain lowercase identifier (`[a-z_][a-z0-9_]*`, at most
    /// 40 bytes): it becomes part of an SQL identifier.
    pub fn builder(prefix: &str) -> ScratchBuilder {
        assert!(
            !prefix.is_empty()
                && prefix.len() <= 40
                && !prefix.as_bytes()[0].is_ascii_digit()
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "not a plain lowercase identifier: {prefix:?}"
        );
        ScratchBuilder {
            prefix: prefix.to_owned(),
            settings: Vec::new(),
            max_connections: 10,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL of the database, for child processes (`DATABASE_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connect options of the database, for more pools or connections.
    pub fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// A pool on the database (migrated).
    pub fn pool(&self) -> &PgPool {
        self.pool.as_ref().expect("a scratch database's pool")
    }

    /// A pool on the server's own `DATABASE_URL` database, for server-wide views such
    /// as `pg_stat_database`.
    pub fn admin(&self) -> &PgPool {
        &self.admin
    }

    /// Closes the pool and drops the database (`WITH (FORCE)`: connections that child
    /// processes still hold are ended).
    pub async fn drop_database(mut self) -> Result<(), ScratchError> {
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        let name = std::mem::take(&mut self.name);
        sqlx::query(sqlx::AssertSqlSafe(drop_statement(&name)))
            .execute(&self.admin)
            .await
            .map_err(sql(format!("dropping database {name}")))?;
        self.admin.close().await;
        Ok(())
    }
}

fn drop_statement(name: &str) -> String {
    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return; // dropped by drop_database
        }
        // Not dropped explicitly (a panic, an early return). Pools cannot be awaited
        // here, so a thread with its own runtime drops the database over a fresh
        // connection; FORCE ends this process's remaining sessions on it.
        let name = std::mem::take(&mut self.name);
        let admin = self.admin_options.clone();
        let statement = drop_statement(&name);
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect_with(&admin).await.ok()?;
                let r = sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
                r.ok()
            })
        })
        .join();
        if !matches!(done, Ok(Some(_))) {
            eprintln!("warning: could not drop the scratch database {name}; drop it by hand");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exists(admin: &PgPool, name: &str) -> bool {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        )
        .bind(name)
        .fetch_one(admin)
        .await
        .unwrap()
    }

    async fn admin() -> PgPool {
        PgPool::connect(&std::env::var("DATABASE_URL").expect("DATABASE_URL"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn creates_migrates_sets_and_drops_a_unique_database() {
        let admin = admin().await;
        let a = ScratchDb::builder("volsnap_scratch_test")
            .setting("commit_siblings", 7)
            .max_connections(2)
            .create()
            .await
            .unwrap();
        let b = ScratchDb::create("volsnap_scratch_test").await.unwrap();
        assert_ne!(a.name(), b.name());
        assert!(a.name().starts_with("volsnap_scratch_test_"));
        // Migrated, and the URL reaches the same database.
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(a.pool())
            .await
            .unwrap();
        assert_eq!(applied as usize, crate::MIGRATOR.iter().count());
        let mut by_url = PgConnection::connect(a.url()).await.unwrap();
        let (db, siblings): (String, String) =
            sqlx::query_as("SELECT current_database(), current_setting('commit_siblings')")
                .fetch_one(&mut by_url)
                .await
                .unwrap();
        assert_eq!((db.as_str(), siblings.as_str()), (a.name(), "7"));
        let (an, bn) = (a.name().to_owned(), b.name().to_owned());
        // An explicit drop ends sessions still open on it; so does the guard.
        a.drop_database().await.unwrap();
        assert!(!exists(&admin, &an).await);
        drop(b);
        assert!(!exists(&admin, &bn).await);
        let _ = by_url.close().await;
    }

    #[test]
    #[should_panic(expected = "not a plain lowercase identifier")]
    fn refuses_a_prefix_that_is_not_an_identifier() {
        let _ = ScratchDb::builder("x; DROP DATABASE postgres");
    }
}
