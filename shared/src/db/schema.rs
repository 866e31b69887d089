//! Whether the database's schema is the one this binary was built for. Both binaries
//! refuse to start while migrations are pending; `/readyz` reports the same check.

use sqlx::PgPool;

/// How the database's applied migrations compare with [`crate::MIGRATOR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Versions this binary knows that the database has not applied (successfully).
    pub pending: Vec<i64>,
    /// Versions the database has applied that this binary does not know (a newer build
    /// migrated it).
    pub unknown: Vec<i64>,
}

impl SchemaStatus {
    pub fn is_current(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Compare `_sqlx_migrations` with the embedded migrations. A database that has never
/// been migrated reports every migration as pending.
pub async fn status(pool: &PgPool) -> Result<SchemaStatus, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    let known: Vec<i64> = crate::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    let pending = known
        .iter()
        .copied()
        .filter(|v| !applied.contains(v))
        .collect();
    let unknown = applied.into_iter().filter(|v| !known.contains(v)).collect();
    Ok(SchemaStatus { pending, unknown })
}
