//! Response cache on pingora-cache: the process-wide store, lock and predictor, the compiled
//! per-route policy ([`RouteCache`]), keys ([`key`]), purges ([`purge`]) and counters
//! ([`CacheStats`]). The proxy phases in `crate::proxy` call the functions here and nothing else.
//!
//! Request flow (pingora runs the cache phases after `request_filter`, so only authenticated,
//! non-limited requests ever reach a cached response):
//!
//! 1. [`enable`]: GET/HEAD on a caching route turns pingora's cache on for this request.
//! 2. [`key::build`]: the primary key (normalised path + query as forwarded, then method, host, route,
//!    a hash of the route's cache settings, the identity, the configured key headers).
//! 3. Lookup; [`variance`] picks the variant named by the stored response's `Vary`;
//!    [`hit_filter`] forces revalidation for a request's `Cache-Control: no-cache`.
//! 4. On a miss the cache lock lets one request fetch; [`policy::response`] decides whether the
//!    response is stored and for how long.
//! 5. [`status`] / [`decorate`]: `X-Cache` and `Age` in `response_filter`, and the counters.

pub mod key;
pub mod policy;
pub mod purge;
pub mod storage;

pub use policy::RouteCache;
pub use storage::MemoryStorage;

use crate::config::CacheConfig;
use http::header::AGE;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::Predictor;
use pingora_cache::{CacheOptionOverrides, CachePhase, ForcedFreshness, HttpCache};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

/// Sizes fixed at start-up (see [`init`]).
#[derive(Debug, Clone, Copy)]
struct Settings {
    max_bytes: usize,
    max_object_bytes: usize,
    lock_age: Duration,
}

impl Settings {
    fn from_config(cfg: &CacheConfig) -> Settings {
        let max_bytes = usize::try_from(cfg.max_size.0).unwrap_or(usize::MAX);
        let max_object_bytes = cfg
            .max_object_size
            .map(|s| usize::try_from(s.0).unwrap_or(usize::MAX))
            .unwrap_or(max_bytes / storage::DEFAULT_MAX_OBJECT_DIVISOR);
        Settings {
            max_bytes,
            max_object_bytes,
            lock_age: cfg.lock_timeout.get(),
        }
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn settings() -> &'static Settings {
    SETTINGS.get_or_init(|| Settings::from_config(&CacheConfig::default()))
}

// pingora-cache wants `'static` storage, lock and predictor. Their sizes come from the config
// given to `init` at start-up; a reload cannot resize them (MemoryStorage's bound is fixed at
// construction), so `cache.max_size`, `cache.max_object_size` and the lock's age timeout take
// effect at the next restart or graceful upgrade. The lock's *wait* timeout is per request and
// follows reloads.
static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(|| {
    let s = settings();
    MemoryStorage::with_max_object_bytes(s.max_bytes, s.max_object_bytes)
});
static LOCK: LazyLock<Box<CacheKeyLockImpl>> =
    LazyLock::new(|| CacheLock::new_boxed(settings().lock_age));
/// Keys whose last response was uncacheable skip the lock (and the lookup) until a response
/// becomes cacheable again: 16 shards × 1024 keys.
static PREDICTOR: LazyLock<Predictor<16>> =
    LazyLock::new(|| Predictor::new(1024, Some(policy::transient_reason)));

/// Size the store from the config. Call once at start-up, before serving; later calls (and
/// configs loaded by reloads) do not change it. Returns false if it was already sized.
pub fn init(cfg: &CacheConfig) -> bool {
    let fresh = SETTINGS.set(Settings::from_config(cfg)).is_ok();
    LazyLock::force(&STORAGE);
    LazyLock::force(&LOCK);
    LazyLock::force(&PREDICTOR);
    fresh
}

/// Whether `cfg` asks for a different store than the running one (a reload cannot apply it).
pub fn needs_restart(cfg: &CacheConfig) -> bool {
    let Some(now) = SETTINGS.get() else {
        return false;
    };
    let want = Settings::from_config(cfg);
    now.max_bytes != want.max_bytes
        || now.max_object_bytes != want.max_object_bytes
        || now.lock_age != want.lock_age
}

/// The process-wide store (for purges and stats).
pub fn storage() -> &'static MemoryStorage {
    &STORAGE
}

/// What `X-Cache` says about a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache (fresh, or revalidated with the upstream).
    Hit,
    /// Fetched from the upstream and stored.
    Miss,
    /// Neither served from nor stored in the cache (request or response not cacheable).
    Bypass,
    /// A stale entry served while it refreshes or because the upstream failed.
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// Per-request cache state carried in the proxy context (what `X-Cache` reported is in
/// `Outcome::cache_status` of the proxy context, for the access log).
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheCtx {
    /// The route caches: its responses carry `X-Cache`.
    pub route: bool,
    /// The request was not eligible, so the cache was never enabled for it.
    pub bypass: bool,
}

/// Counters for the observability work to export. Updated from the proxy phases; the storage
/// figures (evictions, bytes, entries) are read from the store itself.
#[derive(Debug)]
pub struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    bypasses: AtomicU64,
    purged: AtomicU64,
}

pub static STATS: CacheStats = CacheStats::new();

impl Default for CacheStats {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheStats {
    pub const fn new() -> CacheStats {
        CacheStats {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            bypasses: AtomicU64::new(0),
            purged: AtomicU64::new(0),
        }
    }

    pub fn record(&self, status: CacheStatus) {
        let c = match status {
            CacheStatus::Hit => &self.hits,
            CacheStatus::Miss => &self.misses,
            CacheStatus::Bypass => &self.bypasses,
            CacheStatus::Stale => &self.stale,
        };
        c.fetch_add(1, Ordering::Relaxed);
        static PROM: std::sync::LazyLock<[prometheus::IntCounter; 4]> =
            std::sync::LazyLock::new(|| {
                let m = &crate::observe::metrics::METRICS.cache_requests;
                ["HIT", "MISS", "BYPASS", "STALE"].map(|r| m.with_label_values(&[r]))
            });
        let i = match status {
            CacheStatus::Hit => 0,
            CacheStatus::Miss => 1,
            CacheStatus::Bypass => 2,
            CacheStatus::Stale => 3,
        };
        PROM[i].inc();
    }

    pub fn record_purged(&self, entries: usize) {
        self.purged.fetch_add(entries as u64, Ordering::Relaxed);
    }

    /// Responses served from the cache (fresh or revalidated).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    /// Responses fetched from the upstream to be stored.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
    /// Stale responses served (while revalidating, or because the upstream failed).
    pub fn stale_serves(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }
    /// Responses on caching routes that neither came from nor went to the cache.
    pub fn bypasses(&self) -> u64 {
        self.bypasses.load(Ordering::Relaxed)
    }
    /// Entries removed by purges.
    pub fn purged(&self) -> u64 {
        self.purged.load(Ordering::Relaxed)
    }
    /// Entries removed to make room.
    pub fn evictions(&self) -> u64 {
        storage().evictions()
    }
    /// Bytes held by stored entries (always at most [`CacheStats::max_bytes`]).
    pub fn bytes_stored(&self) -> usize {
        storage().bytes_stored()
    }
    pub fn entries(&self) -> usize {
        storage().entries()
    }
    pub fn max_bytes(&self) -> usize {
        storage().max_bytes()
    }

    /// Everything above as JSON (admin API).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "hits": self.hits(),
            "misses": self.misses(),
            "stale": self.stale_serves(),
            "bypasses": self.bypasses(),
            "purged": self.purged(),
            "evictions": self.evictions(),
            "rejections": storage().rejections(),
            "bytes_stored": self.bytes_stored(),
            "entries": self.entries(),
            "max_bytes": self.max_bytes(),
            "max_object_bytes": storage().max_object_bytes(),
        })
    }
}

/// Whether this request may use the cache of its route: GET or HEAD, not an upgrade, and on
/// an identity-keyed route an identity to key by.
pub fn eligible(req: &RequestHeader, route: &RouteCache, has_identity: bool) -> bool {
    matches!(req.method, http::Method::GET | http::Method::HEAD)
        && !is_upgrade(req)
        && (has_identity || !route.per_identity)
}

/// Turn pingora's cache on for this request (`request_cache_filter`), with the process-wide
/// store, cache lock and predictor; readers wait at most `lock_wait` behind the one fetching.
pub fn enable(cache: &mut HttpCache, lock_wait: Duration) {
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(lock_wait);
    cache.enable(
        &*STORAGE,
        None, // MemoryStorage evicts by itself
        Some(&*PREDICTOR),
        Some(LOCK.as_ref()),
        Some(overrides),
    );
    cache.set_max_file_size_bytes(STORAGE.max_object_bytes());
}

fn is_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::UPGRADE)
}

/// `cache_hit_filter`: a request's `Cache-Control: no-cache` (or `max-age=0`, or
/// `Pragma: no-cache` without `Cache-Control`) makes a fresh entry revalidate with the upstream.
pub fn hit_filter(req: &RequestHeader, is_fresh: bool) -> Option<ForcedFreshness> {
    (is_fresh && policy::request_wants_revalidation(req)).then_some(ForcedFreshness::ForceExpired)
}

/// `cache_vary_filter`: the variance of a stored response for this request, from the response's
/// `Vary` header names and the request's values of them.
pub fn variance(
    resp: &ResponseHeader,
    req: &RequestHeader,
) -> Option<pingora_cache::key::HashBinary> {
    let mut builder = pingora_cache::VarianceBuilder::new();
    for name in policy::vary_names(resp) {
        let mut value = Vec::new();
        for (i, v) in req.headers.get_all(name.as_str()).iter().enumerate() {
            if i > 0 {
                value.push(b',');
            }
            value.extend_from_slice(v.as_bytes());
        }
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

/// `should_serve_stale`: during revalidation (`error` is `None`) pingora has already checked the
/// entry's stale-while-revalidate window, so yes; after an error, yes unless the client caused it.
pub fn serve_stale(error: Option<&Error>) -> bool {
    match error {
        None => true,
        Some(e) => match e.etype() {
            ErrorType::HTTPStatus(code) => *code >= 500,
            _ => !matches!(e.esource(), ErrorSource::Downstream),
        },
    }
}

/// What `X-Cache` reports for the response about to be sent.
pub fn status(cache: &HttpCache, bypassed: bool) -> CacheStatus {
    if bypassed {
        return CacheStatus::Bypass;
    }
    match cache.phase() {
        CachePhase::Hit | CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
            CacheStatus::Hit
        }
        CachePhase::Stale | CachePhase::StaleUpdating => CacheStatus::Stale,
        CachePhase::Miss | CachePhase::Expired => CacheStatus::Miss,
        _ => CacheStatus::Bypass,
    }
}

/// Set `X-Cache`, and `Age` on responses that are (or are about to be) cached.
pub fn decorate(
    resp: &mut ResponseHeader,
    status: CacheStatus,
    cache: &HttpCache,
) -> pingora_error::Result<()> {
    resp.insert_header("x-cache", status.as_str())?;
    if status != CacheStatus::Bypass && !resp.headers.contains_key(AGE) {
        let age = cache
            .maybe_cache_meta()
            .map(|m| m.age().as_secs())
            .unwrap_or(0);
        resp.insert_header(AGE, age.to_string())?;
    }
    Ok(())
}
