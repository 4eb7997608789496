//! `forward-auth`: ask an external service whether a request may pass, before it goes
//! upstream (Traefik's ForwardAuth, nginx's `auth_request`).
//!
//! For each request the gateway sends `GET <url>` to the auth service with the client's
//! `forward_headers` (default `Authorization`, `Cookie`) and `X-Forwarded-Method`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-Uri` (the canonical path and query)
//! and `X-Forwarded-For` (the client address). A 2xx answer lets the request through, with
//! the answer's `copy_response_headers` set on it (the client's own copies of those headers
//! are always removed). Any other answer goes to the client as it is: its status, headers
//! (a `Location` to a login page, `WWW-Authenticate`, `Set-Cookie`) and body. No answer
//! within `timeout` (or a connection failure) follows `on_error`: `deny` (the default) is a
//! 503 `auth_unavailable`, `allow` lets the request through without the copied headers.
//!
//! `cache: { ttl, key_headers, max_entries }` keeps decisions (2xx and 4xx answers, unless
//! the service said `Cache-Control: no-store`) for `ttl`, keyed by a SHA-256 of the values
//! of `key_headers` (default: the `forward_headers`) as sent to the service, so no
//! credential is held in clear. At most `max_entries` (default 10,000) per route: a full
//! cache first drops its expired entries, then (still full) its oldest tenth.

use crate::config::units::Dur;
use crate::config::Problems;
use crate::fetch::{Client, Reply, Target};
use crate::plugin::{Filter, Flow, LocalResponse, PhaseCtx, Plugin, RequestInfo};
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NAME: &str = "forward-auth";

/// Largest auth-service answer body kept (it may be shown to the client).
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default = "default_timeout")]
    timeout: Dur,
    #[serde(default = "default_forward")]
    forward_headers: Vec<String>,
    #[serde(default)]
    copy_response_headers: Vec<String>,
    #[serde(default)]
    cache: Option<CacheSettings>,
    #[serde(default)]
    on_error: OnError,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSettings {
    ttl: Dur,
    #[serde(default)]
    key_headers: Option<Vec<String>>,
    #[serde(default = "default_max_entries")]
    max_entries: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OnError {
    #[default]
    Deny,
    Allow,
}

fn default_timeout() -> Dur {
    Dur::secs(1)
}

fn default_forward() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}

fn default_max_entries() -> usize {
    10_000
}

static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The compiled plugin, shared by the route's requests.
struct Inner {
    client: Client,
    timeout: Duration,
    forward: Vec<HeaderName>,
    copy: Vec<HeaderName>,
    on_error: OnError,
    cache: Option<DecisionCache>,
    /// allowed, denied, unavailable, cache hits: resolved on the first request (the route's
    /// name comes with it).
    counters: std::sync::OnceLock<[prometheus::IntCounter; 4]>,
}

impl Inner {
    fn count(&self, route: &str, which: usize) {
        let c = self
            .counters
            .get_or_init(|| crate::observe::metrics::forward_auth(route));
        c[which].inc();
    }
}

const ALLOWED: usize = 0;
const DENIED: usize = 1;
const UNAVAILABLE: usize = 2;
const CACHE_HIT: usize = 3;

pub struct ForwardAuth {
    inner: Arc<Inner>,
}

fn header_names(list: &[String], key: &str, p: &mut Problems) -> Vec<HeaderName> {
    let mut out = Vec::with_capacity(list.len());
    for (i, n) in list.iter().enumerate() {
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) => out.push(h),
            Err(_) => p.push(
                [key, "[", itoa::Buffer::new().format(i), "]"].concat(),
                format!("`{n}` is not a valid header name"),
            ),
        }
    }
    out
}

pub fn factory(config: &serde_yaml::Value, at: &str, p: &mut Problems) -> Option<Arc<dyn Plugin>> {
    let s: Settings = crate::plugin::settings::parse(config, at, p)?;
    let before = p.len();
    let key = |k: &str| [at, ".", k].concat();
    let target = Target::parse(&s.url)
        .map_err(|e| p.push(key("url"), e))
        .ok();
    if s.timeout.get().is_zero() {
        p.push(key("timeout"), "must be above 0");
    }
    let forward = header_names(&s.forward_headers, &key("forward_headers"), p);
    let copy = header_names(&s.copy_response_headers, &key("copy_response_headers"), p);
    let cache = s.cache.as_ref().map(|c| {
        if c.ttl.get().is_zero() {
            p.push(
                key("cache.ttl"),
                "must be above 0 (leave `cache` out to cache nothing)",
            );
        }
        if c.max_entries == 0 {
            p.push(key("cache.max_entries"), "must be at least 1");
        }
        let keys = match &c.key_headers {
            Some(list) => header_names(list, &key("cache.key_headers"), p),
            None => forward.clone(),
        };
        DecisionCache::new(c.ttl.get(), c.max_entries, keys)
    });
    if p.len() != before {
        return None;
    }
    Some(Arc::new(ForwardAuth {
        inner: Arc::new(Inner {
            client: Client::new(target?),
            timeout: s.timeout.get(),
            forward,
            copy,
            on_error: s.on_error,
            cache,
            counters: std::sync::OnceLock::new(),
        }),
    }))
}

impl Plugin for ForwardAuth {
    fn name(&self) -> &str {
        NAME
    }

    fn start(&self, _info: &RequestInfo<'_>) -> Box<dyn Filter> {
        Box::new(ForwardAuthFilter {
            inner: self.inner.clone(),
        })
    }
}

/// What the auth service decided.
#[derive(Debug)]
enum Decision {
    /// 2xx: these headers go onto the request.
    Allow(Vec<(HeaderName, HeaderValue)>),
    /// Anything else: this answer goes to the client.
    Deny(LocalResponse),
}

struct ForwardAuthFilter {
    inner: Arc<Inner>,
}

#[async_trait::async_trait]
impl Filter for ForwardAuthFilter {
    async fn request_head(&mut self, cx: &mut PhaseCtx<'_>, req: &mut RequestHeader) -> Flow {
        let inner = &self.inner;
        let headers = auth_request_headers(inner, cx, req);
        let key = inner.cache.as_ref().map(|c| c.key(&headers));
        let cached = match (&inner.cache, &key) {
            (Some(c), Some(k)) => c.get(k),
            _ => None,
        };
        let decision = match cached {
            Some(d) => {
                inner.count(cx.route, CACHE_HIT);
                d
            }
            None => {
                // boxed: inline, the call's future would make every request's future (a
                // cached decision's too) several KiB larger, copied on each request
                let answer = Box::pin(inner.client.send(
                    &http::Method::GET,
                    &headers,
                    inner.timeout,
                    MAX_ANSWER,
                ))
                .await;
                match answer {
                    Ok(reply) => {
                        let (decision, keep) = decide(inner, reply);
                        let decision = Arc::new(decision);
                        if let (Some(c), Some(k), true) = (&inner.cache, key, keep) {
                            c.put(k, decision.clone());
                        }
                        decision
                    }
                    Err(e) => {
                        inner.count(cx.route, UNAVAILABLE);
                        return unavailable(inner, cx, req, &e);
                    }
                }
            }
        };
        for h in &inner.copy {
            req.remove_header(h);
        }
        match &*decision {
            Decision::Allow(copied) => {
                inner.count(cx.route, ALLOWED);
                for (k, v) in copied {
                    if let Err(e) = req.append_header(k.clone(), v.clone()) {
                        return Flow::Error(format!("cannot copy `{k}`: {e}"));
                    }
                }
                Flow::Continue
            }
            Decision::Deny(answer) => {
                inner.count(cx.route, DENIED);
                Flow::Respond(answer.clone())
            }
        }
    }
}

/// The headers of the auth request: the client's `forward_headers` and the request's facts.
fn auth_request_headers(
    inner: &Inner,
    cx: &PhaseCtx<'_>,
    req: &RequestHeader,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(inner.forward.len() + 5);
    for name in &inner.forward {
        for v in req.headers.get_all(name) {
            out.push((name.clone(), v.clone()));
        }
    }
    let view = cx.view;
    let mut facts = [
        (
            &X_FORWARDED_METHOD,
            HeaderValue::from_str(cx.method.as_str()).ok(),
        ),
        (
            &X_FORWARDED_PROTO,
            Some(HeaderValue::from_static(if view.https {
                "https"
            } else {
                "http"
            })),
        ),
        (
            &X_FORWARDED_HOST,
            HeaderValue::from_str(&view.authority).ok(),
        ),
        (
            &X_FORWARDED_URI,
            HeaderValue::from_str(&view.path_and_query()).ok(),
        ),
        (&X_FORWARDED_FOR, cx.client_ip.map(crate::hdr::ip_header)),
    ];
    for (name, value) in facts.iter_mut() {
        if let Some(v) = value.take() {
            out.push(((*name).clone(), v));
        }
    }
    out
}

/// The auth service's answer as a decision, and whether it may be cached.
fn decide(inner: &Inner, reply: Reply) -> (Decision, bool) {
    let no_store = reply
        .headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
        });
    if (200..300).contains(&reply.status) {
        let mut copied = Vec::new();
        for name in &inner.copy {
            for v in reply.headers.get_all(name) {
                copied.push((name.clone(), v.clone()));
            }
        }
        return (Decision::Allow(copied), !no_store);
    }
    let status = if (300..600).contains(&reply.status) {
        reply.status
    } else {
        // a 1xx or nonsense: not a decision the client can use
        502
    };
    let mut answer = LocalResponse::new(status).body(reply.body);
    answer.reason = Some("forward_auth_denied");
    for (k, v) in &reply.headers {
        if hop_by_hop(k) {
            continue;
        }
        if let Ok(v) = v.to_str() {
            answer.headers.push((k.as_str().to_string(), v.to_string()));
        }
    }
    // a decision, not an outage: 4xx answers are cached, 3xx and 5xx are not
    let keep = (400..500).contains(&reply.status) && !no_store;
    (Decision::Deny(answer), keep)
}

fn hop_by_hop(name: &HeaderName) -> bool {
    use http::header::*;
    [
        CONNECTION,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        TE,
        TRAILER,
        UPGRADE,
        PROXY_AUTHENTICATE,
        DATE,
        SERVER,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// No answer from the auth service: `on_error` decides.
fn unavailable(inner: &Inner, cx: &PhaseCtx<'_>, req: &mut RequestHeader, why: &str) -> Flow {
    log::warn!(
        "forward-auth on route `{}`: no answer from `{}`: {why} (request {}, on_error: {:?})",
        cx.route,
        inner.client.target().url,
        cx.request_id,
        inner.on_error
    );
    match inner.on_error {
        OnError::Deny => Flow::Respond(
            LocalResponse::error(
                503,
                "auth_unavailable",
                "the authentication service is unavailable",
                cx.request_id,
            )
            .header("retry-after", "5"),
        ),
        OnError::Allow => {
            for h in &inner.copy {
                req.remove_header(h);
            }
            Flow::Continue
        }
    }
}

/// Cached decisions by key hash, with when they were stored.
type Entries = HashMap<[u8; 32], (Instant, Arc<Decision>)>;

/// Decisions by key, for `ttl`, at most `max` of them.
struct DecisionCache {
    ttl: Duration,
    max: usize,
    keys: Vec<HeaderName>,
    map: parking_lot::Mutex<Entries>,
}

impl DecisionCache {
    fn new(ttl: Duration, max: usize, keys: Vec<HeaderName>) -> DecisionCache {
        DecisionCache {
            ttl,
            max,
            keys,
            map: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// SHA-256 over the key headers' values as sent (names and values delimited).
    fn key(&self, sent: &[(HeaderName, HeaderValue)]) -> [u8; 32] {
        let mut h = Sha256::new();
        for name in &self.keys {
            h.update(name.as_str().as_bytes());
            h.update([0]);
            for (_, v) in sent.iter().filter(|(n, _)| n == name) {
                h.update(v.as_bytes());
                h.update([1]);
            }
            h.update([2]);
        }
        h.finalize().into()
    }

    fn get(&self, key: &[u8; 32]) -> Option<Arc<Decision>> {
        let map = self.map.lock();
        let (at, d) = map.get(key)?;
        (at.elapsed() < self.ttl).then(|| d.clone())
    }

    fn put(&self, key: [u8; 32], d: Arc<Decision>) {
        let mut map = self.map.lock();
        if map.len() >= self.max && !map.contains_key(&key) {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= self.max {
                // still full of live entries: drop the oldest tenth
                let n = (self.max / 10).max(1);
                let mut oldest: Vec<([u8; 32], Instant)> =
                    map.iter().map(|(k, (at, _))| (*k, *at)).collect();
                oldest.sort_by_key(|(_, at)| *at);
                for (k, _) in oldest.into_iter().take(n) {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, (Instant::now(), d));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn allow() -> Arc<Decision> {
        Arc::new(Decision::Allow(Vec::new()))
    }

    #[test]
    fn the_cache_is_bounded_and_expires() {
        let c = DecisionCache::new(Duration::from_secs(60), 20, vec![]);
        for i in 0..50u8 {
            c.put([i; 32], allow());
            assert!(c.len() <= 20, "{}", c.len());
        }
        // the newest entry is kept
        assert!(c.get(&[49; 32]).is_some());
        let c = DecisionCache::new(Duration::ZERO, 5, vec![]);
        c.put([1; 32], allow());
        assert!(c.get(&[1; 32]).is_none(), "expired at once");
    }

    #[test]
    fn keys_depend_on_the_key_headers_only() {
        let auth = HeaderName::from_static("authorization");
        let c = DecisionCache::new(Duration::from_secs(1), 5, vec![auth.clone()]);
        let v = |s: &'static str| HeaderValue::from_static(s);
        let a = c.key(&[
            (auth.clone(), v("Bearer a")),
            (X_FORWARDED_URI.clone(), v("/x")),
        ]);
        let a2 = c.key(&[
            (auth.clone(), v("Bearer a")),
            (X_FORWARDED_URI.clone(), v("/y")),
        ]);
        let b = c.key(&[(auth.clone(), v("Bearer b"))]);
        let none = c.key(&[]);
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_ne!(a, none);
    }

    #[test]
    fn answers_become_decisions() {
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let cfg: serde_yaml::Value = serde_yaml::from_str(
            "{ url: \"http://127.0.0.1:1/auth\", copy_response_headers: [x-user] }",
        )
        .unwrap();
        assert!(factory(&cfg, "c", &mut p).is_some(), "{:?}", p.errors);
        let inner = Inner {
            client: Client::new(Target::parse("http://127.0.0.1:1/").unwrap()),
            timeout: Duration::from_secs(1),
            forward: vec![],
            copy: vec![HeaderName::from_static("x-user")],
            on_error: OnError::Deny,
            cache: None,
            counters: std::sync::OnceLock::new(),
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("u-1"));
        headers.insert("x-other", HeaderValue::from_static("o"));
        let ok = Reply {
            status: 204,
            headers: headers.clone(),
            body: Default::default(),
        };
        match decide(&inner, ok) {
            (Decision::Allow(h), true) => assert_eq!(h.len(), 1),
            other => panic!("{other:?}"),
        }
        headers.insert(
            "cache-control",
            HeaderValue::from_static("private, no-store"),
        );
        headers.insert("connection", HeaderValue::from_static("close"));
        let denied = Reply {
            status: 401,
            headers,
            body: "nope".into(),
        };
        match decide(&inner, denied) {
            (Decision::Deny(l), false) => {
                assert_eq!(l.status, 401);
                assert!(l.headers.iter().any(|(k, _)| k == "x-other"));
                assert!(!l.headers.iter().any(|(k, _)| k == "connection"));
            }
            other => panic!("{other:?}"),
        }
    }
}
