//! API tokens. Only the SHA-256 of a token is stored; the secret is shown once, when
//! `volsnap-api token create` makes it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::domain::Role;
use crate::ids::TokenId;

/// A token's row, without its hash.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TokenRow {
    pub id: TokenId,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What authentication needs of an active token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActiveToken {
    pub id: TokenId,
    pub name: String,
    pub role: Role,
    pub token_sha256: Vec<u8>,
}

pub async fn insert(
    pool: &PgPool,
    name: &str,
    role: Role,
    sha256: &[u8; 32],
) -> Result<TokenRow, sqlx::Error> {
    sqlx::query_as::<_, TokenRow>(
        "INSERT INTO api_tokens (id, name, role, token_sha256) VALUES ($1, $2, $3, $4) \
         RETURNING id, name, role, created_at, revoked_at",
    )
    .bind(TokenId::new())
    .bind(name)
    .bind(role)
    .bind(&sha256[..])
    .fetch_one(pool)
    .await
}

/// All tokens, revoked ones included, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<TokenRow>, sqlx::Error> {
    sqlx::query_as::<_, TokenRow>(
        "SELECT id, name, role, created_at, revoked_at FROM api_tokens ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await
}

/// Every token that is not revoked, with its hash (the API's in-memory auth cache).
pub async fn active(pool: &PgPool) -> Result<Vec<ActiveToken>, sqlx::Error> {
    sqlx::query_as::<_, ActiveToken>(
        "SELECT id, name, role, token_sha256 FROM api_tokens WHERE revoked_at IS NULL",
    )
    .fetch_all(pool)
    .await
}

/// Revoke the token with this id, or every active token with this name. Returns the
/// tokens revoked now (empty when nothing matched).
pub async fn revoke(pool: &PgPool, id_or_name: &str) -> Result<Vec<TokenRow>, sqlx::Error> {
    let by_id: Option<TokenId> = id_or_name.parse().ok();
    sqlx::query_as::<_, TokenRow>(
        "UPDATE api_tokens SET revoked_at = now() \
         WHERE revoked_at IS NULL AND (id = $1 OR ($1 IS NULL AND name = $2)) \
         RETURNING id, name, role, created_at, revoked_at",
    )
    .bind(by_id)
    .bind(id_or_name)
    .fetch_all(pool)
    .await
}
