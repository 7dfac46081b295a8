//! Who is calling, and may they: the middleware of every route that needs an API key. It
//! reads `Authorization: Bearer onh_<id>_<secret>`, verifies the key, applies the key's
//! rate limit, checks the route's scope, and hands the route a [`Principal`].
//!
//! Verified keys are cached in memory, so that an authenticated read costs no database
//! round trip. A cached key is read again after `http.api_key_cache_ttl_s`: that is how
//! long a revoked key keeps working. When the database does not answer, a key seen before
//! keeps working on what was last read, as stock reads answer the last known levels, but
//! never longer than `http.api_key_max_age_s` after the database last confirmed it; a key
//! never seen answers 503 `unavailable`.
//!
//! Requests that cost a database read before they are verified (an id not cached yet) are
//! what a flood of invented keys is made of: an unknown id is remembered as unknown, and
//! such requests are limited per client address before any read. A known, cached key
//! never counts against that limit.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header::AUTHORIZATION, HeaderMap, HeaderValue},
    middleware::Next,
    response::Response,
};
use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota};
use moka::future::Cache;
use tokio::time::Instant;
use tracing::warn;

use super::error::ApiError;
use crate::{
    auth::{ApiKey, Binding, Scope, Scopes, Token},
    config::HttpConfig,
    db::Keys,
    telemetry::Metrics,
};

/// Keys kept in memory. People create keys, so a deployment has few; this bounds memory
/// all the same.
const CACHED_KEYS_MAX: u64 = 10_000;
/// Ids remembered as unknown, so that the same invented id costs one read, not one a
/// request.
const UNKNOWN_IDS_MAX: u64 = 100_000;
/// How long the first request with a key waits for the database to find it.
const LOAD_BUDGET: Duration = Duration::from_secs(2);
/// How often the per-address limiter forgets addresses that have been quiet.
const ADDRESSES_PRUNE_EVERY: u64 = 4_096;

/// The caller of a request, for the routes that need to know: take
/// `Extension<Arc<Principal>>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The public id of the key (`onh_<id>_...`): stable and safe to log, to scope data by
    /// (idempotency keys, reservations) and to audit.
    pub key_id: String,
    pub name: String,
    pub scopes: Scopes,
    /// The one source the key may speak for, when it is bound to one.
    pub binding: Option<Binding>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.scopes.allows(Scope::Admin) && self.binding.is_none()
    }
}

/// A key as last read from the database.
#[derive(Debug)]
struct Cached {
    key: ApiKey,
    /// Handed to every request the key admits, shared rather than rebuilt.
    principal: Arc<Principal>,
    /// When the database was last asked about the key, whether it answered or not.
    checked_at: Instant,
    /// When the database last answered about it: past `api_key_max_age_s`, the key is not
    /// honoured without a fresh read.
    confirmed_at: Instant,
    /// One request reads an expired key again; the others go on with the cached one
    /// meanwhile, so that an expiry is never a burst of database reads. The read runs in
    /// a task of its own, which always clears this, whatever becomes of the request.
    refreshing: Arc<AtomicBool>,
}

impl Cached {
    fn new(key: ApiKey, confirmed_at: Instant) -> Arc<Cached> {
        let principal = Arc::new(Principal {
            key_id: key.id.clone(),
            name: key.name.clone(),
            scopes: key.scopes,
            binding: key.bound_to.clone(),
        });
        let refreshing = Arc::new(AtomicBool::new(false));
        Arc::new(Cached { key, principal, checked_at: Instant::now(), confirmed_at, refreshing })
    }
}

/// Why a key could not be loaded; cheap to clone, as the cache shares a failed load
/// between the requests that waited for it.
#[derive(Debug, Clone, Copy)]
enum LoadError {
    Unknown,
    Unavailable,
}

/// Clears a refresh flag when dropped, so that no path out of a refresh leaves it set.
struct Refreshing(Arc<AtomicBool>);

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Verifies keys and applies their rate limit; one per router, shared by its routes.
#[derive(Clone)]
pub(super) struct Authenticator {
    db: Arc<dyn Keys>,
    keys: Cache<String, Arc<Cached>>,
    unknown: Cache<String, ()>,
    /// Only keys that verified reach the limiter, so it holds at most one bucket per key
    /// of the database: few, and no caller can make it grow by inventing keys.
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    /// Requests that cost a read before they are verified, or were refused, per address.
    addresses: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    address_checks: Arc<AtomicU64>,
    ttl: Duration,
    max_age: Duration,
    refresh_budget: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

fn quota(per_s: u32, burst: u32) -> Quota {
    // Config::check refuses zeros; a zero here would be a bug, so be strict rather than unlimited.
    let per_s = NonZeroU32::new(per_s).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_s).allow_burst(burst)
}

impl Authenticator {
    /// `refresh_budget` is how long a request waits for the database to read an expired
    /// key again before it goes on with the cached one.
    pub(super) fn new(db: Arc<dyn Keys>, http: &HttpConfig, refresh_budget: Duration, metrics: Metrics) -> Self {
        let ttl = Duration::from_secs(http.api_key_cache_ttl_s);
        let unknown_ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        Authenticator {
            db,
            keys: Cache::builder().max_capacity(CACHED_KEYS_MAX).build(),
            unknown: Cache::builder().max_capacity(UNKNOWN_IDS_MAX).time_to_live(unknown_ttl).build(),
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(quota(http.rate_limit_per_s, http.rate_limit_burst))),
            addresses: Arc::new(DefaultKeyedRateLimiter::keyed(quota(
                http.unverified_per_address_per_s,
                http.unverified_per_address_burst,
            ))),
            address_checks: Arc::default(),
            ttl,
            max_age: Duration::from_secs(http.api_key_max_age_s),
            refresh_budget,
            metrics,
        }
    }

    /// The state of [`require`] for routes guarded by `scope`.
    pub(super) fn require(self: &Arc<Self>, scope: Scope) -> RequireScope {
        RequireScope { auth: Arc::clone(self), scope }
    }

    /// The principal of a request from `client` that may do what `scope` guards, or why
    /// not.
    pub(super) async fn admit(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        scope: Scope,
    ) -> Result<Arc<Principal>, ApiError> {
        let admitted = self.verify(headers, client).await;
        if let (Err(ApiError::MissingApiKey | ApiError::InvalidApiKey), Some(client)) = (&admitted, client) {
            // A refused request counts against its address, so that guessing is slow.
            let _ = self.limit_address(client);
        }
        let cached = admitted?;
        self.limit(&cached.key.id, 1)?;
        if !cached.key.scopes.allows(scope) {
            return Err(ApiError::InsufficientScope(scope));
        }
        Ok(Arc::clone(&cached.principal))
    }

    /// As [`admit`](Self::admit), for a key sent in another way than the `Authorization`
    /// header (a WebSocket's first message: browsers cannot set headers there).
    pub(super) async fn admit_key(
        &self,
        key: &str,
        client: Option<IpAddr>,
        scope: Scope,
    ) -> Result<Arc<Principal>, ApiError> {
        let value = HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| ApiError::InvalidApiKey)?;
        self.admit(&HeaderMap::from_iter([(AUTHORIZATION, value)]), client, scope).await
    }

    async fn verify(&self, headers: &HeaderMap, client: Option<IpAddr>) -> Result<Arc<Cached>, ApiError> {
        let token = bearer(headers)?;
        let cached = self.key(&token, client).await?;
        if !cached.key.verifies(&token) {
            return Err(ApiError::InvalidApiKey);
        }
        Ok(cached)
    }

    /// The stored key of `token`'s id, from the cache when it is fresh.
    async fn key(&self, token: &Token, client: Option<IpAddr>) -> Result<Arc<Cached>, ApiError> {
        let cached = match self.keys.get(token.id()).await {
            Some(cached) => cached,
            None => {
                if self.unknown.contains_key(token.id()) {
                    return Err(ApiError::InvalidApiKey);
                }
                if let Some(client) = client {
                    self.limit_address(client)?;
                }
                // Concurrent first requests with one key wait for a single read.
                let loaded = self.keys.try_get_with_by_ref(token.id(), self.load(token.id())).await;
                loaded.map_err(|e| match *e {
                    LoadError::Unknown => ApiError::InvalidApiKey,
                    LoadError::Unavailable => ApiError::Unavailable("the database"),
                })?
            }
        };
        if cached.checked_at.elapsed() < self.ttl {
            return Ok(cached);
        }
        let too_old = cached.confirmed_at.elapsed() >= self.max_age;
        let first = !cached.refreshing.swap(true, Ordering::AcqRel);
        if !first && !too_old {
            return Ok(cached);
        }
        // The read runs in a task of its own: a request dropped while it waits (a client
        // that hung up) cannot leave the flag set, nor the entry unrefreshed.
        let refresh = tokio::spawn(self.clone().refresh(Arc::clone(&cached), first));
        if too_old {
            // Past its age, a key is honoured only on a fresh answer of the database.
            return match refresh.await {
                Ok(Ok(fresh)) if fresh.confirmed_at > cached.confirmed_at => Ok(fresh),
                Ok(Err(e)) => Err(e),
                _ => Err(ApiError::Unavailable("the database")),
            };
        }
        match tokio::time::timeout(self.refresh_budget, refresh).await {
            Ok(Ok(result)) => result,
            // Slower than the budget: go on with the key as last read; the read goes on.
            _ => Ok(cached),
        }
    }

    async fn load(&self, id: &str) -> Result<Arc<Cached>, LoadError> {
        match tokio::time::timeout(LOAD_BUDGET, self.db.api_key(id)).await {
            Ok(Ok(Some(key))) => Ok(Cached::new(key, Instant::now())),
            Ok(Ok(None)) => {
                self.unknown.insert(id.to_string(), ()).await;
                Err(LoadError::Unknown)
            }
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
    /// when the database does not answer, the key as last read is kept for another ttl,
    /// still as confirmed only when it last was. `owns_flag`: this refresh set the flag,
    /// and clears it when done.
    async fn refresh(self, stale: Arc<Cached>, owns_flag: bool) -> Result<Arc<Cached>, ApiError> {
        let _flag = owns_flag.then(|| Refreshing(Arc::clone(&stale.refreshing)));
        let id = stale.key.id.clone();
        let fresh = match tokio::time::timeout(LOAD_BUDGET, self.db.api_key(&id)).await {
            Ok(Ok(Some(key))) => Cached::new(key, Instant::now()),
            Ok(Ok(None)) => {
                self.keys.invalidate(&id).await;
                self.unknown.insert(id, ()).await;
                return Err(ApiError::InvalidApiKey);
            }
            Ok(Err(e)) => {
                warn!(error = %e, key_id = %id, "api key read failed; keeping the key as last read");
                Cached::new(stale.key.clone(), stale.confirmed_at)
            }
            Err(_) => {
                warn!(key_id = %id, "api key read timed out; keeping the key as last read");
                Cached::new(stale.key.clone(), stale.confirmed_at)
            }
        };
        self.keys.insert(id, Arc::clone(&fresh)).await;
        Ok(fresh)
    }

    /// Takes `n` requests' worth from the key's token bucket (a query of many SKUs costs
    /// as many; one larger than the bucket takes the whole bucket).
    pub(super) fn limit(&self, key_id: &String, n: u32) -> Result<(), ApiError> {
        let Some(n) = NonZeroU32::new(n) else { return Ok(()) };
        let checked = match self.limiter.check_key_n(key_id, n) {
            Ok(checked) => checked,
            Err(governor::InsufficientCapacity(capacity)) => {
                let capacity = NonZeroU32::new(capacity).unwrap_or(NonZeroU32::MIN);
                self.limiter.check_key_n(key_id, capacity).unwrap_or(Ok(()))
            }
        };
        checked.map_err(|not_until| rate_limited(not_until.wait_time_from(self.limiter.clock().now())))
    }

    /// Takes one request from the address's bucket of unverified requests.
    fn limit_address(&self, client: IpAddr) -> Result<(), ApiError> {
        if self.address_checks.fetch_add(1, Ordering::Relaxed) % ADDRESSES_PRUNE_EVERY == 0 {
            self.addresses.retain_recent();
            self.addresses.shrink_to_fit();
        }
        self.addresses
            .check_key(&client)
            .map_err(|not_until| rate_limited(not_until.wait_time_from(self.addresses.clock().now())))
    }
}

/// A 429 that says when to retry, in whole seconds, rounded up so that a retry on time
/// succeeds.
fn rate_limited(wait: Duration) -> ApiError {
    ApiError::RateLimited { retry_after_s: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1) }
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
    let client = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    match guard.auth.admit(request.headers(), client, guard.scope).await {
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
    use crate::db::SqliteDb;

    struct Setup {
        db: SqliteDb,
        _dir: tempfile::TempDir,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        Setup { db, _dir: dir }
    }

    fn authenticator(setup: &Setup, http: HttpConfig) -> Authenticator {
        Authenticator::new(Arc::new(setup.db.clone()), &http, Duration::from_millis(500), Metrics::new())
    }

    async fn key(setup: &Setup, scopes: &str) -> String {
        let token = Token::generate();
        setup.db.create_api_key(&ApiKey::new(&token, "test", Scopes::parse(scopes).unwrap()).unwrap()).await.unwrap();
        token.reveal()
    }

    fn headers(authorization: &str) -> HeaderMap {
        HeaderMap::from_iter([(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap())])
    }

    async fn code(auth: &Authenticator, authorization: Option<&str>, scope: Scope) -> &'static str {
        let headers = authorization.map(headers).unwrap_or_default();
        auth.admit(&headers, None, scope).await.map_or_else(|e| e.code(), |_| "ok")
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
        let principal = auth.admit(&headers(&format!("Bearer {reader}")), None, Scope::StockRead).await.unwrap();
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
        setup.db.revoke_api_key(&admin[11..23]).await.unwrap();
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
        setup.db.pool().close().await;
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
        let refused = auth.admit(&headers(&a), None, Scope::StockRead).await.unwrap_err();
        assert!(matches!(refused, ApiError::RateLimited { retry_after_s: 1 }), "{refused:?}");
        assert_eq!(code(&auth, Some(&b), Scope::StockRead).await, "ok", "another key is not limited");
        // A request refused for its key never reaches the limiter.
        assert_eq!(code(&auth, Some("Bearer nope"), Scope::StockRead).await, "invalid_api_key");
        assert_eq!(auth.limiter.len(), 2);
    }

    /// H1: an invented id costs one database read, not one a request; requests that cost
    /// a read are limited per client address, and a known key is never held back by it.
    #[tokio::test]
    async fn unknown_ids_are_remembered_and_unverified_requests_are_limited_per_address() {
        let setup = setup().await;
        let http =
            HttpConfig { unverified_per_address_per_s: 1, unverified_per_address_burst: 3, ..HttpConfig::default() };
        let auth = authenticator(&setup, http);
        let known = format!("Bearer {}", key(&setup, "stock:read").await);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let admit = |authorization: String| {
            let auth = auth.clone();
            async move {
                auth.admit(&headers(&authorization), Some(client), Scope::StockRead)
                    .await
                    .map_or_else(|e| e.code(), |_| "ok")
            }
        };
        assert_eq!(admit(known.clone()).await, "ok", "a first read of the known key costs one unit");
        let invented = format!("Bearer {}", Token::generate().reveal());
        assert_eq!(admit(invented.clone()).await, "invalid_api_key");
        // With the database gone, the same invented id is still known to be unknown.
        setup.db.pool().close().await;
        assert_eq!(admit(invented.clone()).await, "invalid_api_key", "remembered, not read again");
        // Each new invented id would cost a read: the address runs out of them.
        let codes: Vec<&str> =
            futures::future::join_all((0..4).map(|_| admit(format!("Bearer {}", Token::generate().reveal())))).await;
        assert!(codes.contains(&"rate_limited"), "{codes:?}");
        assert_eq!(admit(known).await, "ok", "a cached key does not count against the address");
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let stranger = headers(&format!("Bearer {}", Token::generate().reveal()));
        let elsewhere = auth.admit(&stranger, Some(other), Scope::StockRead).await;
        assert_eq!(elsewhere.unwrap_err().code(), "unavailable", "another address is not limited");
    }

    /// H2: a request dropped while it refreshes a key (a client that hung up) does not
    /// leave the key refreshing for ever: a revoked key is refused all the same.
    #[tokio::test]
    async fn a_dropped_request_cannot_keep_a_revoked_key_working() {
        let setup = setup().await;
        let auth = authenticator(&setup, HttpConfig { api_key_cache_ttl_s: 0, ..HttpConfig::default() });
        let admin = format!("Bearer {}", key(&setup, "admin").await);
        assert_eq!(code(&auth, Some(&admin), Scope::Admin).await, "ok");
        setup.db.revoke_api_key(&admin[11..23]).await.unwrap();
        // Polled once, then dropped: its refresh has begun and not finished.
        let dropped = futures::FutureExt::now_or_never(code(&auth, Some(&admin), Scope::Admin));
        assert!(dropped.is_none(), "the request was dropped mid-refresh");
        let mut refused = false;
        for _ in 0..50 {
            if code(&auth, Some(&admin), Scope::Admin).await == "invalid_api_key" {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "the revoked key is refused once the refresh ran");
    }

    /// H2: with the database down, a key seen before is honoured on what was last read only
    /// up to its maximum age.
    #[tokio::test]
    async fn a_key_past_its_maximum_age_needs_the_database() {
        let setup = setup().await;
        let http = HttpConfig { api_key_cache_ttl_s: 0, api_key_max_age_s: 0, ..HttpConfig::default() };
        let auth = authenticator(&setup, http);
        let known = format!("Bearer {}", key(&setup, "stock:read").await);
        assert_eq!(code(&auth, Some(&known), Scope::StockRead).await, "ok");
        setup.db.pool().close().await;
        assert_eq!(code(&auth, Some(&known), Scope::StockRead).await, "unavailable");
    }
}
