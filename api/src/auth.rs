//! Bearer-token authentication and the admin/viewer rule.
//!
//! Tokens are 256-bit random secrets; only their SHA-256 is stored. Every request is
//! checked against an in-memory copy of the active tokens' hashes, compared in constant
//! time, so auth costs no database round trip. The copy is reloaded when it is older
//! than [`TokenCache::ttl`] (so a revocation takes effect within that time, 2 s by
//! default), and on a miss when it was loaded before the request arrived (so a token
//! made a moment ago works at once). Reloads are coalesced: requests that miss while a
//! reload runs share the next one, so a flood of bad tokens costs at most one query at
//! a time.
//!
//! Authorisation is one rule: `GET`/`HEAD` need any valid token, every other method an
//! admin token — except restore plans (`POST …/plan`, `POST /api/restores?plan=true`),
//! which change nothing and are open to viewers too. `GET /api/whoami` tells a client which token it holds (name and role),
//! so a client such as the web UI never has to probe a write route to find out.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use volsnap_shared::db;
use volsnap_shared::domain::Role;
use volsnap_shared::ids::TokenId;

use crate::AppState;
use crate::error::{Error, ErrorBody};

/// A token's prefix: makes leaked tokens easy to recognise (and to scan for).
pub const TOKEN_PREFIX: &str = "volsnap_";

/// Who is calling: put in the request's extensions by [`require_token`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: TokenId,
    pub name: String,
    pub role: Role,
}

/// A new random token (shown once) and the hash to store.
pub fn generate_token() -> (String, [u8; 32]) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    let hash = hash_token(&token);
    (token, hash)
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

struct Loaded {
    at: Instant,
    tokens: Vec<([u8; 32], Caller)>,
}

impl Loaded {
    /// Constant-time in the token: every entry is compared, whatever matches.
    fn find(&self, hash: &[u8; 32]) -> Option<Caller> {
        let mut found = None;
        for (h, caller) in &self.tokens {
            if bool::from(h.ct_eq(hash)) {
                found = Some(caller);
            }
        }
        found.cloned()
    }
}

/// The in-memory copy of the active tokens.
pub struct TokenCache {
    pool: PgPool,
    ttl: Duration,
    loaded: RwLock<Arc<Loaded>>,
    reload: tokio::sync::Mutex<()>,
}

impl TokenCache {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        // Starts "expired": the first request loads it.
        let stale = Instant::now()
            .checked_sub(ttl * 2)
            .unwrap_or_else(Instant::now);
        TokenCache {
            pool,
            ttl,
            loaded: RwLock::new(Arc::new(Loaded {
                at: stale,
                tokens: Vec::new(),
            })),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .expect("token cache lock poisoned")
            .clone()
    }

    /// Reload unless a reload started at or after `not_before` has already finished
    /// (then its result is as fresh as this caller needs).
    async fn reload(&self, not_before: Instant) -> Result<Arc<Loaded>, sqlx::Error> {
        let _one_at_a_time = self.reload.lock().await;
        let now = self.current();
        if now.at >= not_before {
            return Ok(now);
        }
        let started = Instant::now();
        let rows = db::tokens::active(&self.pool).await?;
        let tokens = rows
            .into_iter()
            .filter_map(|t| {
                let hash: [u8; 32] = t.token_sha256.as_slice().try_into().ok()?;
                Some((
                    hash,
                    Caller {
                        token_id: t.id,
                        name: t.name,
                        role: t.role,
                    },
                ))
            })
            .collect();
        let fresh = Arc::new(Loaded {
            at: started,
            tokens,
        });
        *self.loaded.write().expect("token cache lock poisoned") = fresh.clone();
        Ok(fresh)
    }

    /// The caller a presented token belongs to, if it is valid and not revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Caller>, sqlx::Error> {
        let arrived = Instant::now();
        let hash = hash_token(token);
        let mut loaded = self.current();
        if loaded.at.elapsed() >= self.ttl {
            // Any copy loaded within the TTL will do.
            loaded = self
                .reload(arrived.checked_sub(self.ttl).unwrap_or(arrived))
                .await?;
        }
        if let Some(c) = loaded.find(&hash) {
            return Ok(Some(c));
        }
        if loaded.at < arrived {
            loaded = self.reload(arrived).await?;
            return Ok(loaded.find(&hash));
        }
        Ok(None)
    }
}

/// Middleware on every `/api` route except the OpenAPI document.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, Error> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(Error::unauthorized)?;
    let caller = state
        .tokens
        .authenticate(token)
        .await?
        .ok_or_else(Error::unauthorized)?;
    // Plans (dry runs) change nothing: the one POST a viewer may make.
    let read_only =
        matches!(*req.method(), Method::GET | Method::HEAD) || crate::plans::is_plan_request(&req);
    if !read_only && caller.role != Role::Admin {
        return Err(Error::forbidden());
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// `GET /api/whoami` (behind [`require_token`] like every `/api` route).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(whoami))
}

/// The token a request was made with: never the secret or its hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct Whoami {
    /// The token's row id (as in `volsnap-api token list`; `token revoke` takes it).
    pub token_id: TokenId,
    /// The name given at `volsnap-api token create --name`; jobs it enqueues carry it as
    /// `requested_by`.
    pub name: String,
    /// `admin` may call every route, `viewer` only `GET`/`HEAD` ones.
    pub role: Role,
}

/// The calling token's name and role. Any valid token may ask; it changes nothing.
#[utoipa::path(get, path = "/api/whoami", tag = "auth",
    responses(
        (status = 200, description = "the token the request was made with", body = Whoami),
        (status = 401, description = "no valid token", body = ErrorBody),
    ))]
async fn whoami(Extension(caller): Extension<Caller>) -> axum::Json<Whoami> {
    axum::Json(Whoami {
        token_id: caller.token_id,
        name: caller.name,
        role: caller.role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_distinct_and_hash_as_stored() {
        let (a, ha) = generate_token();
        let (b, _) = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a), ha);
    }
}
