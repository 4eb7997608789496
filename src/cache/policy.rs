//! What is stored and for how long: the compiled per-route settings and the HTTP rules
//! (RFC 9111 for a shared cache, with the route's TTL as the ceiling).

use crate::config::{Problems, RouteCacheConfig};
use http::header::{AUTHORIZATION, PRAGMA, SET_COOKIE, VARY};
use http::HeaderName;
use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora_cache::filters::calculate_expires_header_time;
use pingora_cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora_http::{RequestHeader, ResponseHeader};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};

/// Reason for a status the route does not store; remembered by the predictor (the key skips the
/// cache lock until a response becomes cacheable again).
const REASON_STATUS: &str = "uncacheable status";
/// Reason for a 5xx the route does not store: transient, so not remembered (the cache lock
/// keeps coalescing requests to a failing upstream).
const REASON_SERVER_ERROR: &str = "server error";
const REASON_SET_COOKIE: &str = "set-cookie";
const REASON_VARY_STAR: &str = "vary *";
const REASON_AUTHORIZATION: &str = "authorization";

/// Predictor hook: `true` for reasons that must not mark a key uncacheable.
pub fn transient_reason(reason: &'static str) -> bool {
    reason == REASON_SERVER_ERROR
}

/// A route's compiled cache settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCache {
    pub ttl: Duration,
    /// Sorted.
    pub statuses: Vec<u16>,
    pub key_headers: Vec<HeaderName>,
    /// The route authenticates and is not `shared`: entries are per identity.
    pub per_identity: bool,
    /// The route authenticates (a client `Authorization` is then the gateway's business).
    pub authenticated: bool,
    pub override_upstream: bool,
    pub stale_while_revalidate: u32,
    pub stale_if_error: u32,
    /// Hash of the settings, part of every key: a reload that changes them leaves the old
    /// entries unmatched (they age out or get evicted).
    pub tag: String,
}

fn ceil_secs(d: Duration) -> u32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(s).unwrap_or(u32::MAX)
}

impl RouteCache {
    /// Validate and compile `cfg` (at key path `path`, e.g. `routes[3].cache`); problems go to `p`.
    pub fn build(
        cfg: &RouteCacheConfig,
        authenticated: bool,
        path: &str,
        p: &mut Problems,
    ) -> Option<RouteCache> {
        let before = p.errors.len();
        if cfg.ttl.get().is_zero() {
            p.push(format!("{path}.ttl"), "must be greater than 0");
        }
        if cfg.statuses.is_empty() {
            p.push(
                format!("{path}.statuses"),
                "an empty list caches nothing; remove `cache` instead",
            );
        }
        for (i, s) in cfg.statuses.iter().enumerate() {
            if !(200..=599).contains(s) || matches!(s, 206 | 304) {
                p.push(
                    format!("{path}.statuses[{i}]"),
                    format!("`{s}` is not a cacheable status (200-599, except 206 and 304)"),
                );
            }
        }
        let mut key_headers = Vec::with_capacity(cfg.key_headers.len());
        for (i, h) in cfg.key_headers.iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => key_headers.push(n),
                Err(_) => p.push(
                    format!("{path}.key_headers[{i}]"),
                    format!("`{h}` is not a valid header name"),
                ),
            }
        }
        if p.errors.len() != before {
            return None;
        }
        key_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        key_headers.dedup();
        let mut statuses = cfg.statuses.clone();
        statuses.sort_unstable();
        statuses.dedup();
        let digest = Sha256::digest(format!("{cfg:?}").as_bytes());
        Some(RouteCache {
            ttl: cfg.ttl.get(),
            statuses,
            key_headers,
            per_identity: authenticated && !cfg.shared,
            authenticated,
            override_upstream: cfg.override_upstream,
            stale_while_revalidate: ceil_secs(cfg.stale_while_revalidate.get()),
            stale_if_error: ceil_secs(cfg.stale_if_error.get()),
            tag: hex::encode(&digest[..8]),
        })
    }

    pub fn stores_status(&self, status: u16) -> bool {
        self.statuses.binary_search(&status).is_ok()
    }
}

/// The request asks for a fresh answer: `Cache-Control: no-cache` or `max-age=0`, or
/// `Pragma: no-cache` when there is no `Cache-Control`.
pub fn request_wants_revalidation(req: &RequestHeader) -> bool {
    match CacheControl::from_req_headers(req) {
        Some(cc) => cc.no_cache() || matches!(cc.max_age(), Ok(Some(0))),
        None => req
            .headers
            .get_all(PRAGMA)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache")),
    }
}

/// Lower-case header names listed in the response's `Vary` (may include `*`).
pub fn vary_names(resp: &ResponseHeader) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for v in resp.headers.get_all(VARY) {
        let Ok(s) = v.to_str() else { continue };
        for name in s.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// `response_cache_filter`: whether the upstream response is stored, and its freshness.
///
/// - only the route's statuses; never with `Set-Cookie` or `Vary: *`;
/// - `no-store` and `private` (without field names) are never stored;
/// - the TTL is the route's, capped by `s-maxage`, else `max-age`, else `Expires`; `no-cache`
///   (or a cap of 0) means not stored. `override` ignores these, but not `no-store`/`private`;
/// - stale-while-revalidate / stale-if-error come from the upstream's directives when present
///   (`must-revalidate`, `proxy-revalidate` and `s-maxage` forbid them), else from the route;
/// - a client `Authorization` header on a route the gateway does not authenticate is the
///   upstream's business: stored only if it says `public`, `s-maxage` or `must-revalidate`.
pub fn response(route: &RouteCache, req: &RequestHeader, resp: &ResponseHeader) -> RespCacheable {
    use RespCacheable::Uncacheable;
    let status = resp.status.as_u16();
    if !route.stores_status(status) {
        let reason = if status >= 500 {
            REASON_SERVER_ERROR
        } else {
            REASON_STATUS
        };
        return Uncacheable(NoCacheReason::Custom(reason));
    }
    if resp.headers.contains_key(SET_COOKIE) {
        return Uncacheable(NoCacheReason::Custom(REASON_SET_COOKIE));
    }
    if vary_names(resp).iter().any(|n| n == "*") {
        return Uncacheable(NoCacheReason::Custom(REASON_VARY_STAR));
    }
    let cc = CacheControl::from_resp_headers(resp);
    if cc.as_ref().is_some_and(|c| c.no_store() || c.private()) {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    if !route.authenticated
        && req.headers.contains_key(AUTHORIZATION)
        && !cc
            .as_ref()
            .is_some_and(|c| c.allow_caching_authorized_req())
    {
        return Uncacheable(NoCacheReason::Custom(REASON_AUTHORIZATION));
    }

    let now = SystemTime::now();
    let mut ttl = route.ttl;
    let (mut swr, mut sie) = (route.stale_while_revalidate, route.stale_if_error);
    if !route.override_upstream {
        let upstream_ttl = match cc.as_ref().and_then(|c| c.fresh_duration()) {
            Some(d) => Some(d),
            None => calculate_expires_header_time(resp)
                .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)),
        };
        if let Some(cap) = upstream_ttl {
            ttl = ttl.min(cap);
        }
        if let Some(c) = cc.as_ref() {
            if let Some(d) = c.serve_stale_while_revalidate_duration() {
                swr = ceil_secs(d);
            }
            if let Some(d) = c.serve_stale_if_error_duration() {
                sie = ceil_secs(d);
            }
        }
    }
    if ttl.is_zero() {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    let mut header = resp.clone();
    if let Some(c) = cc.as_ref() {
        // `private="x"` / `no-cache="x"` name headers a shared cache must not store
        c.strip_private_headers(&mut header);
    }
    RespCacheable::Cacheable(CacheMeta::new(now + ttl, now, swr, sie, header))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn cfg(ttl: u64) -> RouteCacheConfig {
        RouteCacheConfig {
            ttl: Dur::secs(ttl),
            statuses: vec![200, 203, 204, 301, 404],
            key_headers: vec![],
            shared: false,
            override_upstream: false,
            stale_while_revalidate: Dur::secs(0),
            stale_if_error: Dur::secs(0),
        }
    }

    fn compile(c: &RouteCacheConfig, auth: bool) -> Result<RouteCache, Vec<String>> {
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let r = RouteCache::build(c, auth, "routes[0].cache", &mut p);
        match r {
            Some(r) if p.errors.is_empty() => Ok(r),
            _ => Err(p.errors.iter().map(|e| e.to_string()).collect()),
        }
    }

    fn req() -> RequestHeader {
        RequestHeader::build(http::Method::GET, b"/x", None).unwrap()
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn ttl_of(r: RespCacheable) -> Option<u64> {
        match r {
            RespCacheable::Cacheable(m) => Some(m.fresh_sec()),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn validation() {
        assert!(compile(&cfg(0), false).unwrap_err()[0].contains("routes[0].cache.ttl"));
        let mut c = cfg(10);
        c.statuses = vec![200, 99, 206];
        let errs = compile(&c, false).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("statuses[1]"));
        c = cfg(10);
        c.key_headers = vec!["bad header".into()];
        assert!(compile(&c, false).unwrap_err()[0].contains("key_headers[0]"));
    }

    #[test]
    fn settings_hash_changes_with_settings() {
        let a = compile(&cfg(10), false).unwrap();
        let b = compile(&cfg(10), false).unwrap();
        let c = compile(&cfg(11), false).unwrap();
        assert_eq!(a.tag, b.tag);
        assert_ne!(a.tag, c.tag);
    }

    #[test]
    fn upstream_directives_cap_the_ttl() {
        let r = compile(&cfg(60), false).unwrap();
        assert_eq!(ttl_of(response(&r, &req(), &resp(200, &[]))), Some(60));
        let capped = resp(200, &[("cache-control", "max-age=5")]);
        assert_eq!(ttl_of(response(&r, &req(), &capped)), Some(5));
        let s = resp(200, &[("cache-control", "max-age=5, s-maxage=7")]);
        assert_eq!(ttl_of(response(&r, &req(), &s)), Some(7));
        let long = resp(200, &[("cache-control", "max-age=600")]);
        assert_eq!(ttl_of(response(&r, &req(), &long)), Some(60));
        for cc in ["no-store", "private", "no-cache", "max-age=0"] {
            let x = resp(200, &[("cache-control", cc)]);
            assert_eq!(ttl_of(response(&r, &req(), &x)), None, "{cc}");
        }
        let mut o = cfg(60);
        o.override_upstream = true;
        let o = compile(&o, false).unwrap();
        assert_eq!(ttl_of(response(&o, &req(), &capped)), Some(60));
        let ns = resp(200, &[("cache-control", "no-store")]);
        assert_eq!(ttl_of(response(&o, &req(), &ns)), None);
    }

    #[test]
    fn statuses_cookies_vary_authorization() {
        let r = compile(&cfg(60), false).unwrap();
        assert!(ttl_of(response(&r, &req(), &resp(404, &[]))).is_some());
        assert!(ttl_of(response(&r, &req(), &resp(500, &[]))).is_none());
        assert!(ttl_of(response(&r, &req(), &resp(200, &[("set-cookie", "a=b")]))).is_none());
        assert!(ttl_of(response(&r, &req(), &resp(200, &[("vary", "*")]))).is_none());
        let mut authed = req();
        authed.insert_header("authorization", "Bearer x").unwrap();
        assert!(ttl_of(response(&r, &authed, &resp(200, &[]))).is_none());
        let public = resp(200, &[("cache-control", "public, max-age=30")]);
        assert_eq!(ttl_of(response(&r, &authed, &public)), Some(30));
        // the gateway authenticates this route: the key carries the identity
        let ra = compile(&cfg(60), true).unwrap();
        assert!(ttl_of(response(&ra, &authed, &resp(200, &[]))).is_some());
    }

    #[test]
    fn stale_windows() {
        let mut c = cfg(60);
        c.stale_while_revalidate = Dur::secs(10);
        c.stale_if_error = Dur::millis(1500);
        let r = compile(&c, false).unwrap();
        let m = match response(&r, &req(), &resp(200, &[])) {
            RespCacheable::Cacheable(m) => m,
            _ => panic!(),
        };
        assert_eq!(m.stale_while_revalidate_sec(), 10);
        assert_eq!(m.stale_if_error_sec(), 2);
        let up = resp(200, &[("cache-control", "max-age=30, stale-if-error=99")]);
        let m = match response(&r, &req(), &up) {
            RespCacheable::Cacheable(m) => m,
            _ => panic!(),
        };
        assert_eq!(m.stale_if_error_sec(), 99);
        assert_eq!(m.stale_while_revalidate_sec(), 10);
        let mr = resp(200, &[("cache-control", "max-age=30, must-revalidate")]);
        let m = match response(&r, &req(), &mr) {
            RespCacheable::Cacheable(m) => m,
            _ => panic!(),
        };
        assert_eq!(m.stale_if_error_sec(), 0);
    }

    #[test]
    fn revalidation_requests() {
        let mut r = req();
        assert!(!request_wants_revalidation(&r));
        r.insert_header("pragma", "no-cache").unwrap();
        assert!(request_wants_revalidation(&r));
        r.insert_header("cache-control", "max-age=0").unwrap();
        assert!(request_wants_revalidation(&r));
        r.insert_header("cache-control", "max-age=10").unwrap();
        assert!(!request_wants_revalidation(&r));
        r.insert_header("cache-control", "no-cache").unwrap();
        assert!(request_wants_revalidation(&r));
    }

    #[test]
    fn vary_parsing() {
        let r = resp(
            200,
            &[
                ("vary", "Accept-Encoding, accept-language"),
                ("vary", "X-A"),
            ],
        );
        assert_eq!(
            vary_names(&r),
            ["accept-encoding", "accept-language", "x-a"]
        );
    }
}
