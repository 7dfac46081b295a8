//! Who is calling, and may they: the middleware of every route that needs an API key. It
//! reads `Authorization: Bearer onh_<id>_<secret>`, verifies the key, applies the key's
//! rate limit, checks the route's scope, and hands the route a [`Principal`].
//!
//! Verified keys are cached in memory, so that an authenticated read costs no database
//! round trip. A cached key is read again after `http.api_key_cache_ttl_s`: that is how
//! long a revoked key keeps working. When the database does not answer, a key seen before
//! keeps working on what was last read, as stock reads answer the last known levels; a key
//! never seen answers 503 `unavailable`.

use std::{
    num::NonZeroU32,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{header::AUTHORIZATION, HeaderMap},
    middleware::Next,
    response::Response,
};
use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota};
use moka::future::Cache;
use tokio::time::Instant;
use tracing::warn;

use super::error::ApiError;
use crate::{
    auth::{ApiKey, Scope, Scopes, Token},
    config::HttpConfig,
    store::Store,
    telemetry::Metrics,
};

/// Keys kept in memory. People create keys, so a deployment has few; this bounds memory
/// all the same.
const CACHED_KEYS_MAX: u64 = 10_000;
/// How long the first request with a key waits for the database to find it.
const LOAD_BUDGET: Duration = Duration::from_secs(2);

/// The caller of a request, for the routes that need to know: take
/// `Extension<Arc<Principal>>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The public id of the key (`onh_<id>_...`): stable and safe to log, to scope data by
    /// (idempotency keys) and to audit.
    pub key_id: String,
    pub name: String,
    pub scopes: Scopes,
}

/// A key as last read from the database.
#[derive(Debug)]
struct Cached {
    key: ApiKey,
    /// Handed to every request the key admits, shared rather than rebuilt.
    principal: Arc<Principal>,
    /// When the database was last asked about the key, whether it answered or not.
    checked_at: Instant,
    /// One request reads an expired key again; the others go on with the cached one
    /// meanwhile, so that an expiry is never a burst of database reads.
    refreshing: AtomicBool,
}

impl Cached {
    fn new(key: ApiKey) -> Arc<Cached> {
        let principal = Arc::new(Principal { key_id: key.id.clone(), name: key.name.clone(), scopes: key.scopes });
        Arc::new(Cached { key, principal, checked_at: Instant::now(), refreshing: AtomicBool::new(false) })
    }
}

/// Why a key could not be loaded; cheap to clone, as the cache shares a failed load
/// between the requests that waited for it.
#[derive(Debug, Clone, Copy)]
enum LoadError {
    Unknown,
    Unavailable,
}

/// Verifies keys and applies their rate limit; one per router, shared by its routes.
#[derive(Clone)]
pub(super) struct Authenticator {
    store: Arc<dyn Store>,
    keys: Cache<String, Arc<Cached>>,
    /// Only keys that verified reach the limiter, so it holds at most one bucket per key
    /// of the store: few, and no caller can make it grow by inventing keys.
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    ttl: Duration,
    refresh_budget: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `refresh_budget` is how long a request waits for the database to read an expired
    /// key again before it goes on with the cached one.
    pub(super) fn new(store: Arc<dyn Store>, http: &HttpConfig, refresh_budget: Duration, metrics: Metrics) -> Self {
        // Config::check refuses zeros; a zero here would be a bug, so be strict rather than unlimited.
        let per_s = NonZeroU32::new(http.rate_limit_per_s).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(http.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
        Authenticator {
            store,
            keys: Cache::builder().max_capacity(CACHED_KEYS_MAX).build(),
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(Quota::per_second(per_s).allow_burst(burst))),
            ttl: Duration::from_secs(http.api_key_cache_ttl_s),
            refresh_budget,
            metrics,
        }
    }

    /// The state of [`require`] for routes guarded by `scope`.
    pub(super) fn require(&self, scope: Scope) -> RequireScope {
        RequireScope { auth: Arc::new(self.clone()), scope }
    }

    /// The principal of a request that may do what `scope` guards, or why not.
    async fn admit(&self, headers: &HeaderMap, scope: Scope) -> Result<Arc<Principal>, ApiError> {
        let token = bearer(headers)?;
        let cached = self.key(&token).await?;
        let key = &cached.key;
        if !key.verifies(&token) {
            return Err(ApiError::InvalidApiKey);
        }
        self.limit(&key.id)?;
        if !key.scopes.allows(scope) {
            return Err(ApiError::InsufficientScope(scope));
        }
        Ok(Arc::clone(&cached.principal))
    }

    /// The stored key of `token`'s id, from the cache when it is fresh.
    async fn key(&self, token: &Token) -> Result<Arc<Cached>, ApiError> {
        let cached = match self.keys.get(token.id()).await {
            Some(cached) => cached,
            // Concurrent first requests with one key wait for a single read.
            None => self.keys.try_get_with_by_ref(token.id(), self.load(token.id())).await.map_err(|e| match *e {
                LoadError::Unknown => ApiError::InvalidApiKey,
                LoadError::Unavailable => ApiError::Unavailable("the database"),
            })?,
        };
        if cached.checked_at.elapsed() < self.ttl || cached.refreshing.swap(true, Ordering::AcqRel) {
            return Ok(cached);
        }
        self.refresh(cached).await
    }

    async fn load(&self, id: &str) -> Result<Arc<Cached>, LoadError> {
        match tokio::time::timeout(LOAD_BUDGET, self.store.api_key(id)).await {
            Ok(Ok(Some(key))) => Ok(Cached::new(key)),
            // Unknown ids are not cached: anyone can invent them, and they would push the
            // real keys out.
            Ok(Ok(None)) => Err(LoadError::Unknown),
            Ok(Err(e)) => {
                warn!(error = %e, "api key read failed");
                Err(LoadError::Unavailable)
            }
            Err(_) => {
                warn!("api key read timed out");
                Err(LoadError::Unavailable)
            }
        }
    }

    /// Reads an expired key again. A key revoked since is cached as revoked, and refused;
    /// when the database does not answer in time, the key as last read is trusted for
    /// another ttl, since nothing newer can be known.
    async fn refresh(&self, stale: Arc<Cached>) -> Result<Arc<Cached>, ApiError> {
        let id = stale.key.id.clone();
        let key = match tokio::time::timeout(self.refresh_budget, self.store.api_key(&id)).await {
            Ok(Ok(Some(key))) => key,
            Ok(Ok(None)) => {
                self.keys.invalidate(&id).await;
                return Err(ApiError::InvalidApiKey);
            }
            Ok(Err(e)) => {
                warn!(error = %e, key_id = %id, "api key read failed; trusting the cached key");
                stale.key.clone()
            }
            Err(_) => {
                warn!(key_id = %id, "api key read timed out; trusting the cached key");
                stale.key.clone()
            }
        };
        let fresh = Cached::new(key);
        self.keys.insert(id, Arc::clone(&fresh)).await;
        Ok(fresh)
    }

    /// Takes one request from the key's token bucket.
    fn limit(&self, key_id: &String) -> Result<(), ApiError> {
        self.limiter.check_key(key_id).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            // Retry-After is in whole seconds: round up, so that a retry on time succeeds.
            let retry_after_s = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            ApiError::RateLimited { retry_after_s }
        })
    }
}

/// The bearer token of a request. No `Authorization`, or one of another scheme, is a
/// missing key; a bearer token that is not an onhand key is an invalid one.
fn bearer(headers: &HeaderMap) -> Result<Token, ApiError> {
    let value = headers.get(AUTHORIZATION).ok_or(ApiError::MissingApiKey)?;
    let text = value.to_str().map_err(|_| ApiError::InvalidApiKey)?.trim();
    let (scheme, credentials) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::MissingApiKey);
    }
    Token::parse(credentials.trim()).map_err(|_| ApiError::InvalidApiKey)
}

/// The state of [`require`]: which scope the routes of a group need.
#[derive(Debug, Clone)]
pub(super) struct RequireScope {
    /// Shared: the middleware clones its state for every request.
    auth: Arc<Authenticator>,
    scope: Scope,
}

/// The middleware of a group of routes (`route_layer`): lets a request through with its
/// [`Principal`] when its key may do what the group's scope guards.
pub(super) async fn require(
    State(guard): State<RequireScope>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match guard.auth.admit(request.headers(), guard.scope).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            Ok(next.run(request).await)
        }
        Err(e) => {
            guard.auth.metrics.api_requests_refused_total.with_label_values(&[e.code()]).inc();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::store::SqliteStore;

    struct Setup {
        store: SqliteStore,
        _dir: tempfile::TempDir,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        Setup { store, _dir: dir }
    }

    fn authenticator(setup: &Setup, http: HttpConfig) -> Authenticator {
        Authenticator::new(Arc::new(setup.store.clone()), &http, Duration::from_millis(500), Metrics::new())
    }

    async fn key(setup: &Setup, scopes: &str) -> String {
        let token = Token::generate();
        setup
            .store
            .create_api_key(&ApiKey::new(&token, "test", Scopes::parse(scopes).unwrap()).unwrap())
            .await
            .unwrap();
        token.reveal()
    }

    fn headers(authorization: &str) -> HeaderMap {
        HeaderMap::from_iter([(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap())])
    }

    async fn code(auth: &Authenticator, authorization: Option<&str>, scope: Scope) -> &'static str {
        let headers = authorization.map(headers).unwrap_or_default();
        auth.admit(&headers, scope).await.map_or_else(|e| e.code(), |_| "ok")
    }

    #[tokio::test]
    async fn a_key_is_missing_invalid_short_of_scope_or_admitted() {
        let setup = setup().await;
        let auth = authenticator(&setup, HttpConfig::default());
        let reader = key(&setup, "stock:read").await;
        let stranger = Token::generate().reveal();
        let mut wrong_secret = reader.clone();
        wrong_secret.replace_range(20..21, if &reader[20..21] == "0" { "1" } else { "0" });
        let cases = [
            (None, Scope::StockRead, "missing_api_key"),
            (Some(format!("Basic {reader}")), Scope::StockRead, "missing_api_key"),
            (Some("Bearer sk_live_123".into()), Scope::StockRead, "invalid_api_key"),
            (Some(format!("Bearer {stranger}")), Scope::StockRead, "invalid_api_key"),
            (Some(format!("Bearer {wrong_secret}")), Scope::StockRead, "invalid_api_key"),
            (Some(format!("Bearer {reader}")), Scope::MovementsWrite, "insufficient_scope"),
            (Some(format!("Bearer {reader}")), Scope::StockRead, "ok"),
            (Some(format!("bearer  {reader} ")), Scope::StockRead, "ok"),
        ];
        for (authorization, scope, expected) in cases {
            assert_eq!(code(&auth, authorization.as_deref(), scope).await, expected, "{authorization:?} {scope}");
        }
        let principal = auth.admit(&headers(&format!("Bearer {reader}")), Scope::StockRead).await.unwrap();
        assert_eq!((principal.key_id.as_str(), principal.name.as_str()), (&reader[4..16], "test"));
    }

    #[tokio::test]
    async fn a_revoked_key_works_until_its_cache_entry_expires() {
        let setup = setup().await;
        let (cached, uncached) = (authenticator(&setup, HttpConfig::default()), {
            authenticator(&setup, HttpConfig { api_key_cache_ttl_s: 0, ..HttpConfig::default() })
        });
        let admin = format!("Bearer {}", key(&setup, "admin").await);
        for auth in [&cached, &uncached] {
            assert_eq!(code(auth, Some(&admin), Scope::Admin).await, "ok");
        }
        setup.store.revoke_api_key(&admin[11..23]).await.unwrap();
        assert_eq!(code(&cached, Some(&admin), Scope::Admin).await, "ok", "within the ttl, from the cache");
        assert_eq!(code(&uncached, Some(&admin), Scope::Admin).await, "invalid_api_key");
        assert_eq!(code(&uncached, Some(&admin), Scope::Admin).await, "invalid_api_key");
    }

    #[tokio::test]
    async fn with_the_database_down_known_keys_work_and_others_are_unavailable() {
        let setup = setup().await;
        let auth = authenticator(&setup, HttpConfig { api_key_cache_ttl_s: 0, ..HttpConfig::default() });
        let known = format!("Bearer {}", key(&setup, "stock:read").await);
        let unseen = format!("Bearer {}", key(&setup, "stock:read").await);
        assert_eq!(code(&auth, Some(&known), Scope::StockRead).await, "ok");
        setup.store.pool().close().await;
        // Expired at once (ttl 0), so each request tries the database and goes on without it.
        assert_eq!(code(&auth, Some(&known), Scope::StockRead).await, "ok");
        assert_eq!(code(&auth, Some(&known), Scope::StockRead).await, "ok");
        assert_eq!(code(&auth, Some(&unseen), Scope::StockRead).await, "unavailable");
    }

    #[tokio::test]
    async fn each_key_has_its_own_token_bucket() {
        let setup = setup().await;
        let http = HttpConfig { rate_limit_per_s: 1, rate_limit_burst: 2, ..HttpConfig::default() };
        let auth = authenticator(&setup, http);
        let (a, b) =
            (format!("Bearer {}", key(&setup, "admin").await), format!("Bearer {}", key(&setup, "admin").await));
        assert_eq!(code(&auth, Some(&a), Scope::StockRead).await, "ok");
        assert_eq!(code(&auth, Some(&a), Scope::StockRead).await, "ok");
        let refused = auth.admit(&headers(&a), Scope::StockRead).await.unwrap_err();
        assert!(matches!(refused, ApiError::RateLimited { retry_after_s: 1 }), "{refused:?}");
        assert_eq!(code(&auth, Some(&b), Scope::StockRead).await, "ok", "another key is not limited");
        // A request refused for its key never reaches the limiter.
        assert_eq!(code(&auth, Some("Bearer nope"), Scope::StockRead).await, "invalid_api_key");
        assert_eq!(auth.limiter.len(), 2);
    }
}
