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
//! 3. Lookup; [`variance`] picks the variant named by the stored response's `Vary` (values
//!    normalised); [`hit_filter`] applies the request's `Cache-Control` (`no-cache`,
//!    `max-age`, `min-fresh`, `max-stale`).
//! 4. On a miss the cache lock lets one request fetch; [`policy::response`] decides whether the
//!    response is stored and for how long ([`freshness`], [`dates`]), and what of it is
//!    stored ([`stored`]); a `304` updates the stored headers ([`stored::merge_304`]).
//! 5. [`status`] / [`decorate`]: `X-Cache` and `Age` in `response_filter`, and the counters.
//! 6. A successful unsafe request invalidates what is stored for its URI ([`invalidate`]).

pub mod dates;
pub mod freshness;
pub mod invalidate;
pub mod key;
pub mod policy;
pub mod purge;
pub mod storage;
pub mod stored;

pub use policy::RouteCache;
pub use storage::MemoryStorage;

use crate::config::CacheConfig;
use http::header::AGE;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::Predictor;
use pingora_cache::{CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, HttpCache};
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
#[derive(Debug, Default, Clone)]
pub struct CacheCtx {
    /// The route caches: its responses carry `X-Cache`.
    pub route: bool,
    /// The request was not eligible, so the cache was never enabled for it.
    pub bypass: bool,
    /// The upstream's `304` to a revalidation, kept to update the stored headers with.
    pub not_modified: Option<Box<ResponseHeader>>,
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
    invalidated: AtomicU64,
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
            invalidated: AtomicU64::new(0),
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

    pub fn record_invalidated(&self, entries: usize) {
        self.invalidated
            .fetch_add(entries as u64, Ordering::Relaxed);
    }

    /// Entries removed by successful unsafe requests to their URI (RFC 9111 §4.4).
    pub fn invalidated(&self) -> u64 {
        self.invalidated.load(Ordering::Relaxed)
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
            "invalidated": self.invalidated(),
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

/// `cache_hit_filter`: the request's own `Cache-Control` (RFC 9111 §5.2.1). `no-cache`,
/// `max-age=0` (or `Pragma: no-cache` without `Cache-Control`) make a fresh entry revalidate,
/// as do a `max-age` below its age and a `min-fresh` above what is left of its lifetime;
/// `max-stale` lets a stale one be served as it is, unless it must be revalidated.
pub fn hit_filter(
    route: &RouteCache,
    req: &RequestHeader,
    meta: &CacheMeta,
    is_fresh: bool,
) -> Option<ForcedFreshness> {
    let d = freshness::RequestDirectives::new(req);
    let age = meta.age().as_secs();
    let now = std::time::SystemTime::now();
    if is_fresh {
        let left = meta
            .fresh_until()
            .duration_since(now)
            .unwrap_or_default()
            .as_secs();
        let revalidate = d.no_cache
            || d.max_age.is_some_and(|m| age > m || m == 0)
            || d.min_fresh.is_some_and(|m| left < m);
        return revalidate.then_some(ForcedFreshness::ForceExpired);
    }
    let max_stale = d.max_stale?;
    let stale_for = now
        .duration_since(meta.fresh_until())
        .unwrap_or_default()
        .as_secs();
    let stored = policy::directives(route, meta.response_header());
    let usable = stale_for <= max_stale
        && !d.no_cache
        && !stored.forbids_stale()
        && d.max_age.is_none_or(|m| age <= m);
    usable.then_some(ForcedFreshness::ForceFresh)
}

/// `cache_vary_filter`: the variance of a stored response for this request, from the response's
/// `Vary` header names and the request's values of them (normalised: [`vary_value`]).
pub fn variance(
    resp: &ResponseHeader,
    req: &RequestHeader,
) -> Option<pingora_cache::key::HashBinary> {
    let mut builder = pingora_cache::VarianceBuilder::new();
    for name in policy::vary_names(resp) {
        let value = vary_value(&name, req);
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

/// A request's value of a varied header in a canonical form: every line's list members,
/// trimmed, joined by `,`. For the `Accept-*` headers of languages, encodings and charsets,
/// whose members are case-insensitive and ordered only by their weights, the members are
/// also lower-cased and sorted by weight, then by name: `en, DE` and `de,en` select the same
/// variant.
pub fn vary_value(name: &str, req: &RequestHeader) -> Vec<u8> {
    let mut members: Vec<String> = Vec::new();
    for line in req.headers.get_all(name) {
        let text = String::from_utf8_lossy(line.as_bytes());
        members.extend(
            text.split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty()),
        );
    }
    if matches!(
        name,
        "accept-language" | "accept-encoding" | "accept-charset"
    ) {
        let mut weighted: Vec<(u16, String)> = members
            .iter()
            .map(|m| {
                let m = m.to_ascii_lowercase();
                let mut parts = m.split(';').map(str::trim);
                let token = parts.next().unwrap_or("").to_string();
                let q = parts
                    .find_map(|p| p.strip_prefix("q="))
                    .map_or(1000, quality);
                let canonical = if q == 1000 {
                    token
                } else {
                    format!("{token};q={}", f64::from(q) / 1000.0)
                };
                (q, canonical)
            })
            .collect();
        weighted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        members = weighted.into_iter().map(|(_, m)| m).collect();
    }
    members.join(",").into_bytes()
}

/// A weight (`q=0.5`) in thousandths; an invalid one counts as 1.
fn quality(v: &str) -> u16 {
    v.parse::<f64>()
        .ok()
        .filter(|q| (0.0..=1.0).contains(q))
        .map_or(1000, |q| (q * 1000.0).round() as u16)
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

/// Set `X-Cache`, and `Age` on responses that are (or are about to be) cached: a response
/// served from the store gets its current age (its age on arrival plus its time here); one
/// fetched to be stored keeps the upstream's `Age` (or gets `0`). Targeted cache-control
/// fields are removed unless the route forwards them.
pub fn decorate(
    resp: &mut ResponseHeader,
    status: CacheStatus,
    cache: &HttpCache,
    route: &RouteCache,
) -> pingora_error::Result<()> {
    resp.insert_header("x-cache", status.as_str())?;
    if !route.forward_targeted {
        for name in &route.targeted {
            resp.remove_header(name);
        }
    }
    let from_store = matches!(status, CacheStatus::Hit | CacheStatus::Stale);
    if from_store || (status == CacheStatus::Miss && !resp.headers.contains_key(AGE)) {
        let age = match (from_store, cache.maybe_cache_meta()) {
            (true, Some(m)) => m.age().as_secs(),
            _ => 0,
        };
        resp.insert_header(AGE, age.to_string())?;
    }
    Ok(())
}
