//! What is stored and for how long: the compiled per-route settings and the HTTP rules
//! (RFC 9111 for a shared cache, RFC 9213 targeted fields), with the route's explicit
//! departures (`default_ttl`, `max_ttl`, `override`).

use super::freshness::{self, Directives, Received, RequestDirectives};
use super::stored;
use crate::config::{Problems, RouteCacheConfig, SetCookie};
use http::header::{AUTHORIZATION, ETAG, LAST_MODIFIED, SET_COOKIE, VARY};
use http::HeaderName;
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
const REASON_NO_FRESHNESS: &str = "no freshness";
const REASON_STALE: &str = "stale without validator";

/// Predictor hook: `true` for reasons that must not mark a key uncacheable.
pub fn transient_reason(reason: &'static str) -> bool {
    reason == REASON_SERVER_ERROR
}

/// A 5xx that is not stored says nothing lasting about its key: the predictor must not mark
/// the key uncacheable (the cache lock keeps coalescing requests to a failing upstream, and a
/// stale entry stays reachable for `stale-if-error`).
fn transient_for_5xx(status: u16, reason: &'static str) -> &'static str {
    if status >= 500 {
        REASON_SERVER_ERROR
    } else {
        reason
    }
}

/// Where a stored response's freshness lifetime comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetimes {
    /// The upstream's (RFC 9111): explicit, else `default` or a heuristic; capped by `max`.
    Follow {
        default: Option<Duration>,
        max: Option<Duration>,
    },
    /// The route's, whatever the upstream says.
    Override(Duration),
}

/// A route's compiled cache settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCache {
    pub lifetimes: Lifetimes,
    /// Sorted; `None`: the RFC's choice.
    pub statuses: Option<Vec<u16>>,
    pub key_headers: Vec<HeaderName>,
    /// The route authenticates and is not `shared`: entries are per identity.
    pub per_identity: bool,
    /// The route authenticates (a client `Authorization` is then the gateway's business).
    pub authenticated: bool,
    pub stale_while_revalidate: u32,
    pub stale_if_error: u32,
    pub set_cookie: SetCookie,
    /// Targeted cache-control fields, in precedence order.
    pub targeted: Vec<HeaderName>,
    /// Targeted fields reach the client.
    pub forward_targeted: bool,
    /// Hash of the settings, part of every key: a reload that changes them leaves the old
    /// entries unmatched (they age out or get evicted).
    pub tag: String,
}

fn ceil_secs(d: Duration) -> u32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(s).unwrap_or(u32::MAX)
}

fn secs_u32(s: u64) -> u32 {
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
        if cfg.ttl.is_some() {
            p.push(
                format!("{path}.ttl"),
                "`ttl` was replaced: `cache: {}` follows the upstream (RFC 9111); use `max_ttl` \
                 to cap lifetimes, `default_ttl` for responses without freshness (both, to keep \
                 the old meaning of `ttl`), or `override` to ignore the upstream",
            );
        }
        for (key, d) in [
            ("default_ttl", cfg.default_ttl),
            ("max_ttl", cfg.max_ttl),
            ("override", cfg.override_ttl),
        ] {
            if d.is_some_and(|d| d.get().is_zero()) {
                p.push(format!("{path}.{key}"), "must be greater than 0");
            }
        }
        if cfg.override_ttl.is_some() {
            for (key, set) in [
                ("default_ttl", cfg.default_ttl.is_some()),
                ("max_ttl", cfg.max_ttl.is_some()),
            ] {
                if set {
                    p.push(
                        format!("{path}.{key}"),
                        "has no effect with `override`, which sets every lifetime; remove one",
                    );
                }
            }
        }
        if let (Some(d), Some(m)) = (cfg.default_ttl, cfg.max_ttl) {
            if d > m {
                p.push(
                    format!("{path}.default_ttl"),
                    format!("`{d}` is above `max_ttl` (`{m}`)"),
                );
            }
        }
        if let Some(statuses) = &cfg.statuses {
            if statuses.is_empty() {
                p.push(
                    format!("{path}.statuses"),
                    "an empty list caches nothing; remove `cache` instead",
                );
            }
            for (i, s) in statuses.iter().enumerate() {
                if !(200..=599).contains(s) || matches!(s, 206 | 304) {
                    p.push(
                        format!("{path}.statuses[{i}]"),
                        format!("`{s}` is not a cacheable status (200-599, except 206 and 304)"),
                    );
                }
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
        let mut targeted: Vec<HeaderName> = Vec::new();
        for (i, h) in cfg.targeted.fields.iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) if matches!(n.as_str(), "cache-control" | "expires" | "pragma") => p.push(
                    format!("{path}.targeted.fields[{i}]"),
                    format!("`{h}` is not a targeted field (RFC 9213); name one such as `CDN-Cache-Control`"),
                ),
                Ok(n) if !targeted.contains(&n) => targeted.push(n),
                Ok(_) => {}
                Err(_) => p.push(
                    format!("{path}.targeted.fields[{i}]"),
                    format!("`{h}` is not a valid header name"),
                ),
            }
        }
        if p.errors.len() != before {
            return None;
        }
        key_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        key_headers.dedup();
        let statuses = cfg.statuses.clone().map(|mut s| {
            s.sort_unstable();
            s.dedup();
            s
        });
        let lifetimes = match cfg.override_ttl {
            Some(d) => Lifetimes::Override(d.get()),
            None => Lifetimes::Follow {
                default: cfg.default_ttl.map(|d| d.get()),
                max: cfg.max_ttl.map(|d| d.get()),
            },
        };
        let digest = Sha256::digest(format!("{cfg:?}").as_bytes());
        Some(RouteCache {
            lifetimes,
            statuses,
            key_headers,
            per_identity: authenticated && !cfg.shared,
            authenticated,
            stale_while_revalidate: ceil_secs(cfg.stale_while_revalidate.get()),
            stale_if_error: ceil_secs(cfg.stale_if_error.get()),
            set_cookie: cfg.set_cookie,
            targeted,
            forward_targeted: cfg.targeted.forward,
            tag: hex::encode(&digest[..8]),
        })
    }

    /// The route lists its statuses and `status` is one of them.
    fn lists_status(&self, status: u16) -> bool {
        self.statuses
            .as_ref()
            .is_some_and(|s| s.binary_search(&status).is_ok())
    }

    /// `status` may be stored at all.
    fn may_store_status(&self, status: u16) -> bool {
        match &self.statuses {
            Some(_) => self.lists_status(status),
            None => (200..=599).contains(&status) && !matches!(status, 206 | 304),
        }
    }

    /// A response of `status` without explicit freshness may get a default or heuristic one.
    fn may_assume_freshness(&self, status: u16, d: &Directives) -> bool {
        match &self.statuses {
            Some(_) => self.lists_status(status),
            None => freshness::heuristically_cacheable(status) || d.public,
        }
    }
}

/// The request asks for a fresh answer: `Cache-Control: no-cache` or `max-age=0`, or
/// `Pragma: no-cache` when there is no `Cache-Control`.
pub fn request_wants_revalidation(req: &RequestHeader) -> bool {
    let d = RequestDirectives::new(req);
    d.no_cache || d.max_age == Some(0)
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

/// The directives that rule this response on `route`: a targeted field when one is present
/// and valid, else `Cache-Control`.
pub fn directives(route: &RouteCache, resp: &ResponseHeader) -> Directives {
    Directives::from_targeted(resp, &route.targeted)
        .unwrap_or_else(|| Directives::from_cache_control(resp))
}

/// `response_cache_filter`: whether the upstream response is stored, and its freshness.
///
/// - only statuses 200-599 but 206 and 304 (or the route's `statuses`); never `Vary: *`;
///   with `Set-Cookie` only as the route's `set_cookie` says;
/// - `no-store` (unless `must-understand` and a status whose rules the gateway knows) and
///   `private` (without field names) are never stored;
/// - the lifetime is the explicit one (`s-maxage`, `max-age`, `Expires - Date`), else the
///   route's `default_ttl` or a heuristic one (a tenth of the time since `Last-Modified`) for
///   heuristically cacheable statuses (or `public`), capped by `max_ttl`; `override` replaces
///   all of this. `no-cache` stores the response stale, to be revalidated on every use;
/// - its age counts from its `Date` and `Age`, so an old response arrives less fresh, and a
///   response that arrives stale without a validator is not stored;
/// - stale-while-revalidate / stale-if-error come from the upstream's directives when present
///   (`must-revalidate`, `proxy-revalidate`, `s-maxage` and `no-cache` forbid them), else from
///   the route;
/// - a client `Authorization` header on a route the gateway does not authenticate is the
///   upstream's business: stored only if it says `public`, `s-maxage` or `must-revalidate`.
pub fn response(route: &RouteCache, req: &RequestHeader, resp: &ResponseHeader) -> RespCacheable {
    response_at(route, req, resp, SystemTime::now())
}

pub fn response_at(
    route: &RouteCache,
    req: &RequestHeader,
    resp: &ResponseHeader,
    now: SystemTime,
) -> RespCacheable {
    use RespCacheable::Uncacheable;
    let status = resp.status.as_u16();
    let uncacheable_status = || {
        let reason = if status >= 500 {
            REASON_SERVER_ERROR
        } else {
            REASON_STATUS
        };
        Uncacheable(NoCacheReason::Custom(reason))
    };
    if !route.may_store_status(status) {
        return uncacheable_status();
    }
    if route.set_cookie == SetCookie::Bypass && resp.headers.contains_key(SET_COOKIE) {
        return Uncacheable(NoCacheReason::Custom(REASON_SET_COOKIE));
    }
    if vary_names(resp).iter().any(|n| n == "*") {
        return Uncacheable(NoCacheReason::Custom(REASON_VARY_STAR));
    }
    let d = directives(route, resp);
    let no_store = d.no_store && !(d.must_understand && freshness::understood(status));
    if no_store || d.private {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    if d.must_understand && !freshness::understood(status) {
        return uncacheable_status();
    }
    if !route.authenticated && req.headers.contains_key(AUTHORIZATION) && !d.allows_authorized() {
        return Uncacheable(NoCacheReason::Custom(REASON_AUTHORIZATION));
    }

    let rx = Received::new(resp, now);
    let (mut swr, mut sie) = (route.stale_while_revalidate, route.stale_if_error);
    let lifetime = match route.lifetimes {
        Lifetimes::Override(d) => d,
        Lifetimes::Follow { default, max } => {
            let assumed = || {
                if !route.may_assume_freshness(status, &d) {
                    return None;
                }
                default.or_else(|| freshness::heuristic_lifetime(resp, &rx))
            };
            // `no-cache`: stored to be revalidated on every use, whatever its freshness
            let l = if d.no_cache {
                Some(Duration::ZERO)
            } else {
                freshness::explicit_lifetime(&d, resp, &rx).or_else(assumed)
            };
            let Some(l) = l else {
                return Uncacheable(NoCacheReason::Custom(transient_for_5xx(
                    status,
                    REASON_NO_FRESHNESS,
                )));
            };
            if d.forbids_stale() {
                (swr, sie) = (0, 0);
            }
            if let Some(s) = d.stale_while_revalidate.filter(|_| !d.forbids_stale()) {
                swr = secs_u32(s);
            }
            if let Some(s) = d.stale_if_error.filter(|_| !d.forbids_stale()) {
                sie = secs_u32(s);
            }
            max.map_or(l, |m| l.min(m))
        }
    };
    let override_ttl = matches!(route.lifetimes, Lifetimes::Override(_));
    // with `override` the lifetime runs from arrival; otherwise from the response's birth
    let epoch = rx.epoch();
    let fresh_until = if override_ttl {
        now + lifetime
    } else {
        epoch + lifetime
    };
    let has_validator = resp.headers.contains_key(ETAG) || resp.headers.contains_key(LAST_MODIFIED);
    if fresh_until <= now && !has_validator {
        return Uncacheable(NoCacheReason::Custom(transient_for_5xx(
            status,
            REASON_STALE,
        )));
    }
    let mut header = resp.clone();
    stored::strip(&mut header, &d, route.set_cookie);
    let mut meta = CacheMeta::new(fresh_until, now, swr, sie, header);
    meta.set_epoch_override(epoch);
    RespCacheable::Cacheable(meta)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn cfg() -> RouteCacheConfig {
        RouteCacheConfig::default()
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

    fn meta(r: RespCacheable) -> Option<CacheMeta> {
        match r {
            RespCacheable::Cacheable(m) => Some(m),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    /// The lifetime of a stored response, `None` if it is not stored.
    fn ttl_of(r: RespCacheable) -> Option<u64> {
        meta(r).map(|m| m.fresh_sec())
    }

    fn date(offset: i64) -> String {
        let now = SystemTime::now();
        let t = if offset >= 0 {
            now + Duration::from_secs(offset as u64)
        } else {
            now - Duration::from_secs(offset.unsigned_abs())
        };
        httpdate::fmt_http_date(t)
    }

    #[test]
    fn only_server_errors_are_transient() {
        assert_eq!(
            transient_for_5xx(500, REASON_NO_FRESHNESS),
            REASON_SERVER_ERROR
        );
        assert_eq!(transient_for_5xx(503, REASON_STALE), REASON_SERVER_ERROR);
        assert_eq!(
            transient_for_5xx(499, REASON_NO_FRESHNESS),
            REASON_NO_FRESHNESS
        );
        assert!(transient_reason(REASON_SERVER_ERROR));
        assert!(!transient_reason(REASON_SET_COOKIE));
    }

    #[test]
    fn a_status_list_decides_what_is_stored() {
        let mut c = cfg();
        c.statuses = Some(vec![404, 200]);
        let r = compile(&c, false).unwrap();
        assert!(r.may_store_status(200) && r.may_store_status(404));
        assert!(!r.may_store_status(500) && !r.may_store_status(301));
        let d = compile(&cfg(), false).unwrap();
        assert!(d.may_store_status(500) && !d.may_store_status(206));
    }

    #[test]
    fn equal_default_and_max_ttl_are_fine_and_targeted_fields_are_deduplicated() {
        let mut c = cfg();
        c.default_ttl = Some(Dur::secs(10));
        c.max_ttl = Some(Dur::secs(10));
        assert!(compile(&c, false).is_ok());
        c.default_ttl = Some(Dur::secs(11));
        assert!(compile(&c, false).unwrap_err()[0].contains("default_ttl"));
        let mut c = cfg();
        c.targeted.fields = vec!["CDN-Cache-Control".into(), "cdn-cache-control".into()];
        assert_eq!(compile(&c, false).unwrap().targeted.len(), 1);
    }

    #[test]
    fn vary_names_are_lower_case_once_each() {
        let r = resp(
            200,
            &[("vary", "Accept, , accept-encoding"), ("vary", "ACCEPT")],
        );
        assert_eq!(vary_names(&r), ["accept", "accept-encoding"]);
    }

    #[test]
    fn validation() {
        let mut c = cfg();
        c.ttl = Some(Dur::secs(10));
        let errs = compile(&c, false).unwrap_err();
        assert!(errs[0].contains("routes[0].cache.ttl"), "{errs:?}");
        assert!(errs[0].contains("max_ttl") && errs[0].contains("default_ttl"));
        let mut c = cfg();
        c.override_ttl = Some(Dur::secs(10));
        c.max_ttl = Some(Dur::secs(10));
        assert!(compile(&c, false).unwrap_err()[0].contains("routes[0].cache.max_ttl"));
        let mut c = cfg();
        c.default_ttl = Some(Dur::secs(60));
        c.max_ttl = Some(Dur::secs(10));
        assert!(compile(&c, false).unwrap_err()[0].contains("default_ttl"));
        let mut c = cfg();
        c.default_ttl = Some(Dur::secs(0));
        assert!(compile(&c, false).unwrap_err()[0].contains("must be greater than 0"));
        let mut c = cfg();
        c.statuses = Some(vec![200, 99, 206]);
        let errs = compile(&c, false).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("statuses[1]"));
        let mut c = cfg();
        c.key_headers = vec!["bad header".into()];
        assert!(compile(&c, false).unwrap_err()[0].contains("key_headers[0]"));
        let mut c = cfg();
        c.targeted.fields = vec!["Cache-Control".into()];
        assert!(compile(&c, false).unwrap_err()[0].contains("targeted.fields[0]"));
        assert!(compile(&cfg(), false).is_ok());
    }

    #[test]
    fn settings_hash_changes_with_settings() {
        let a = compile(&cfg(), false).unwrap();
        let b = compile(&cfg(), false).unwrap();
        let mut c = cfg();
        c.max_ttl = Some(Dur::secs(11));
        let c = compile(&c, false).unwrap();
        assert_eq!(a.tag, b.tag);
        assert_ne!(a.tag, c.tag);
    }

    #[test]
    fn follows_the_upstream() {
        let r = compile(&cfg(), false).unwrap();
        // nothing to go by: not stored
        assert_eq!(ttl_of(response(&r, &req(), &resp(200, &[]))), None);
        let capped = resp(200, &[("cache-control", "max-age=5")]);
        assert_eq!(ttl_of(response(&r, &req(), &capped)), Some(5));
        let s = resp(200, &[("cache-control", "max-age=5, s-maxage=7")]);
        assert_eq!(ttl_of(response(&r, &req(), &s)), Some(7));
        for cc in [
            "no-store",
            "private",
            "max-age=0",
            "max-age=-1",
            "max-age='60'",
        ] {
            let x = resp(200, &[("cache-control", cc)]);
            assert_eq!(ttl_of(response(&r, &req(), &x)), None, "{cc}");
        }
        // no-cache with a validator: stored, always revalidated
        let nc = resp(200, &[("cache-control", "no-cache"), ("etag", "\"a\"")]);
        assert_eq!(ttl_of(response(&r, &req(), &nc)), Some(0));
        // Expires against Date
        let e = resp(200, &[("date", &date(0)), ("expires", &date(100))]);
        let t = ttl_of(response(&r, &req(), &e)).unwrap();
        assert!((99..=100).contains(&t), "{t}");
        let old = resp(200, &[("date", &date(400)), ("expires", &date(300))]);
        assert_eq!(ttl_of(response(&r, &req(), &old)), None);
        // heuristic: a tenth of the time since Last-Modified
        let lm = resp(200, &[("date", &date(0)), ("last-modified", &date(-1000))]);
        let t = ttl_of(response(&r, &req(), &lm)).unwrap();
        assert!((99..=100).contains(&t), "{t}");
        // not for statuses that are not heuristically cacheable, unless public
        let lm403 = resp(403, &[("date", &date(0)), ("last-modified", &date(-1000))]);
        assert_eq!(ttl_of(response(&r, &req(), &lm403)), None);
        let lm599 = resp(
            599,
            &[
                ("date", &date(0)),
                ("last-modified", &date(-1000)),
                ("cache-control", "public"),
            ],
        );
        assert!(ttl_of(response(&r, &req(), &lm599)).is_some());
        // any status with explicit freshness
        let fresh500 = resp(500, &[("cache-control", "max-age=60")]);
        assert_eq!(ttl_of(response(&r, &req(), &fresh500)), Some(60));
    }

    #[test]
    fn age_counts() {
        let r = compile(&cfg(), false).unwrap();
        let aged = resp(200, &[("cache-control", "max-age=3600"), ("age", "600")]);
        let m = meta(response(&r, &req(), &aged)).unwrap();
        assert!((600..=601).contains(&m.age().as_secs()), "{:?}", m.age());
        assert!(m.is_fresh(SystemTime::now()));
        let stale = resp(200, &[("cache-control", "max-age=3600"), ("age", "7200")]);
        assert!(meta(response(&r, &req(), &stale)).is_none());
        // apparent age from Date
        let old = resp(
            200,
            &[("cache-control", "max-age=100"), ("date", &date(-60))],
        );
        let m = meta(response(&r, &req(), &old)).unwrap();
        assert!((59..=60).contains(&m.age().as_secs()), "{:?}", m.age());
    }

    #[test]
    fn explicit_choices() {
        let mut c = cfg();
        c.default_ttl = Some(Dur::secs(60));
        c.max_ttl = Some(Dur::secs(120));
        let r = compile(&c, false).unwrap();
        assert_eq!(ttl_of(response(&r, &req(), &resp(200, &[]))), Some(60));
        let long = resp(200, &[("cache-control", "max-age=600")]);
        assert_eq!(ttl_of(response(&r, &req(), &long)), Some(120));
        let short = resp(200, &[("cache-control", "max-age=5")]);
        assert_eq!(ttl_of(response(&r, &req(), &short)), Some(5));
        // a 403 has no default lifetime
        assert_eq!(ttl_of(response(&r, &req(), &resp(403, &[]))), None);
        let mut o = cfg();
        o.override_ttl = Some(Dur::secs(60));
        let o = compile(&o, false).unwrap();
        assert_eq!(ttl_of(response(&o, &req(), &short)), Some(60));
        let nc = resp(200, &[("cache-control", "no-cache")]);
        assert_eq!(ttl_of(response(&o, &req(), &nc)), Some(60));
        let ns = resp(200, &[("cache-control", "no-store")]);
        assert_eq!(ttl_of(response(&o, &req(), &ns)), None);
        let mut l = cfg();
        l.statuses = Some(vec![200]);
        let l = compile(&l, false).unwrap();
        let fresh404 = resp(404, &[("cache-control", "max-age=60")]);
        assert_eq!(ttl_of(response(&l, &req(), &fresh404)), None);
    }

    #[test]
    fn targeted_fields_rule() {
        let r = compile(&cfg(), false).unwrap();
        let t = resp(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ],
        );
        assert_eq!(ttl_of(response(&r, &req(), &t)), Some(60));
        let t = resp(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("cdn-cache-control", "max-age=1"),
            ],
        );
        assert_eq!(ttl_of(response(&r, &req(), &t)), Some(1));
        for cdn in ["private", "no-store", "max-age=0"] {
            let t = resp(
                200,
                &[("cache-control", "max-age=600"), ("cdn-cache-control", cdn)],
            );
            assert_eq!(ttl_of(response(&r, &req(), &t)), None, "{cdn}");
        }
        // Expires does not count under a targeted field
        let t = resp(
            200,
            &[("cdn-cache-control", "max-age=60"), ("expires", "0")],
        );
        assert_eq!(ttl_of(response(&r, &req(), &t)), Some(60));
        // an invalid targeted field is ignored
        let t = resp(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=\"60\""),
            ],
        );
        assert_eq!(ttl_of(response(&r, &req(), &t)), None);
        // another name, configured
        let mut c = cfg();
        c.targeted.fields = vec!["Edge-Cache-Control".into()];
        let e = compile(&c, false).unwrap();
        let t = resp(
            200,
            &[
                ("edge-cache-control", "max-age=9"),
                ("cdn-cache-control", "max-age=60"),
            ],
        );
        assert_eq!(ttl_of(response(&e, &req(), &t)), Some(9));
    }

    #[test]
    fn statuses_cookies_vary_authorization() {
        let r = compile(&cfg(), false).unwrap();
        let fresh = |s: u16, extra: &[(&str, &str)]| {
            let mut h = vec![("cache-control", "max-age=60")];
            h.extend_from_slice(extra);
            resp(s, &h)
        };
        assert!(ttl_of(response(&r, &req(), &fresh(404, &[]))).is_some());
        assert!(ttl_of(response(&r, &req(), &fresh(206, &[]))).is_none());
        // Set-Cookie: stored without it by default
        let m = meta(response(&r, &req(), &fresh(200, &[("set-cookie", "a=b")]))).unwrap();
        assert!(!m.headers().contains_key("set-cookie"));
        let mut c = cfg();
        c.set_cookie = SetCookie::Serve;
        let serve = compile(&c, false).unwrap();
        let m = meta(response(
            &serve,
            &req(),
            &fresh(200, &[("set-cookie", "a=b")]),
        ))
        .unwrap();
        assert!(m.headers().contains_key("set-cookie"));
        c.set_cookie = SetCookie::Bypass;
        let bypass = compile(&c, false).unwrap();
        assert!(ttl_of(response(
            &bypass,
            &req(),
            &fresh(200, &[("set-cookie", "a=b")])
        ))
        .is_none());
        // no-cache="set-cookie" wins over `serve`
        let named = resp(
            200,
            &[
                ("cache-control", "max-age=60, no-cache=\"set-cookie\""),
                ("set-cookie", "a=b"),
            ],
        );
        let m = meta(response(&serve, &req(), &named)).unwrap();
        assert!(!m.headers().contains_key("set-cookie"));
        assert!(ttl_of(response(&r, &req(), &fresh(200, &[("vary", "*")]))).is_none());
        let mut authed = req();
        authed.insert_header("authorization", "Bearer x").unwrap();
        assert!(ttl_of(response(&r, &authed, &fresh(200, &[]))).is_none());
        let public = resp(200, &[("cache-control", "public, max-age=30")]);
        assert_eq!(ttl_of(response(&r, &authed, &public)), Some(30));
        // the gateway authenticates this route: the key carries the identity
        let ra = compile(&cfg(), true).unwrap();
        assert!(ttl_of(response(&ra, &authed, &fresh(200, &[]))).is_some());
        // must-understand: no-store is ignored for statuses the gateway understands
        let mu = "max-age=60, no-store, must-understand";
        assert!(ttl_of(response(&r, &req(), &resp(200, &[("cache-control", mu)]))).is_some());
        assert!(ttl_of(response(&r, &req(), &resp(599, &[("cache-control", mu)]))).is_none());
    }

    #[test]
    fn stale_windows() {
        let mut c = cfg();
        c.default_ttl = Some(Dur::secs(60));
        c.stale_while_revalidate = Dur::secs(10);
        c.stale_if_error = Dur::millis(1500);
        let r = compile(&c, false).unwrap();
        let m = meta(response(&r, &req(), &resp(200, &[]))).unwrap();
        assert_eq!(m.stale_while_revalidate_sec(), 10);
        assert_eq!(m.stale_if_error_sec(), 2);
        let up = resp(200, &[("cache-control", "max-age=30, stale-if-error=99")]);
        let m = meta(response(&r, &req(), &up)).unwrap();
        assert_eq!(m.stale_if_error_sec(), 99);
        assert_eq!(m.stale_while_revalidate_sec(), 10);
        let up = resp(
            200,
            &[("cache-control", "max-age=30, stale-while-revalidate=45")],
        );
        let m = meta(response(&r, &req(), &up)).unwrap();
        assert_eq!(
            m.stale_while_revalidate_sec(),
            45,
            "the upstream's directive wins"
        );
        assert_eq!(m.stale_if_error_sec(), 2);
        for cc in [
            "max-age=30, must-revalidate",
            "max-age=30, no-cache, stale-if-error=9",
        ] {
            let mr = resp(200, &[("cache-control", cc), ("etag", "\"e\"")]);
            let m = meta(response(&r, &req(), &mr)).unwrap();
            assert_eq!(m.stale_if_error_sec(), 0, "{cc}");
            assert_eq!(m.stale_while_revalidate_sec(), 0, "{cc}");
        }
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
