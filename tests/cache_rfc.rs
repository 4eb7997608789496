//! HTTP caching by RFC 9111 (and RFC 9213's targeted fields) through the real binary and a
//! real upstream, one test per cause the conformance work fixed: freshness that follows the
//! upstream (and the route's explicit departures from it), `Age`, `Date` and `Expires`, `304`
//! header updates, invalidation by unsafe methods, `Connection`-listed and `Set-Cookie`
//! fields, `no-cache` and the request's directives, HEAD and `Vary` normalisation, stale
//! serving, `CDN-Cache-Control`, and the key rules invalidation keeps to.
//!
//! Staleness is made without waiting: a response arrives old (`Age`, or a `Date` in the past),
//! or `no-cache` makes every use a revalidation.

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

async fn send(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    // redirects are responses like others here
    let c = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    common::send(&c, method, &gw.url(path), headers).await
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(gw, "GET", path, headers).await
}

fn respond(
    status: u16,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> hyper::Response<Full<Bytes>> {
    let mut b = hyper::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// An HTTP date `offset` seconds from now.
fn date(offset: i64) -> String {
    let now = SystemTime::now();
    let t = if offset >= 0 {
        now + Duration::from_secs(offset as u64)
    } else {
        now - Duration::from_secs(offset.unsigned_abs())
    };
    httpdate::fmt_http_date(t)
}

/// One scripted answer: status, headers, body.
type Answer = (u16, Vec<(String, String)>, String);

/// Responses by path: the upstream answers each path with the next of its list (the last one
/// repeats), and records each request's headers.
#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<HashMap<String, Vec<Answer>>>>,
    seen: Arc<Mutex<HashMap<String, Vec<http::HeaderMap>>>>,
}

impl Script {
    fn on(&self, path: &str, status: u16, headers: &[(&str, &str)], body: &str) -> &Self {
        let h = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.answers
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .push((status, h, body.to_string()));
        self
    }

    /// The headers of the `n`th request (from 1) the upstream got for `path`.
    fn request(&self, path: &str, n: usize) -> Option<http::HeaderMap> {
        self.seen.lock().unwrap().get(path)?.get(n - 1).cloned()
    }

    fn install(&self, up: &Upstream) {
        let me = self.clone();
        let counter = Arc::new(AtomicUsize::new(0));
        up.set_handler(Arc::new(move |req| {
            counter.fetch_add(1, Ordering::SeqCst);
            let path = req.uri().path().to_string();
            let mut seen = me.seen.lock().unwrap();
            let list = seen.entry(path.clone()).or_default();
            list.push(req.headers().clone());
            let n = list.len();
            drop(seen);
            let answers = me.answers.lock().unwrap();
            let script = answers.get(&path)?;
            let (status, headers, body) = script.get(n - 1).or(script.last())?.clone();
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            Some(respond(status, &h, body))
        }));
    }
}

const ROUTES: &str = r#"
server:
  listen: ["127.0.0.1:{port}"]
upstreams:
  u: { backends: [{ addr: "{up}" }], retry: { attempts: 0 }, circuit_breaker: { enabled: false } }
routes:
  - { name: rfc, match: { path: "/rfc/**" }, upstream: u, cache: {} }
  - { name: dflt, match: { path: "/default/**" }, upstream: u, cache: { default_ttl: 1h } }
  - { name: capped, match: { path: "/capped/**" }, upstream: u, cache: { max_ttl: 10s } }
  - { name: over, match: { path: "/override/**" }, upstream: u, cache: { override: 1h } }
  - { name: serve, match: { path: "/serve/**" }, upstream: u, cache: { set_cookie: serve } }
  - { name: bypass, match: { path: "/bypass/**" }, upstream: u, cache: { set_cookie: bypass } }
  - { name: edge, match: { path: "/edge/**" }, upstream: u, cache: { targeted: { fields: [Edge-Cache-Control], forward: true } } }
  - { name: plain, match: { path: "/plain/**" }, upstream: u }
"#;

async fn setup(script: &Script) -> (Upstream, Gateway) {
    let up = Upstream::start("u").await;
    script.install(&up);
    let gw = Gateway::start(&ROUTES.replace("{up}", &up.addr.to_string())).await;
    (up, gw)
}

/// Two GETs of `path`: their `X-Cache` values.
async fn twice(gw: &Gateway, path: &str) -> (String, String) {
    let a = get(gw, path, &[]).await.x_cache().to_string();
    let b = get(gw, path, &[]).await.x_cache().to_string();
    (a, b)
}

fn stored() -> (String, String) {
    ("MISS".into(), "HIT".into())
}

fn not_stored() -> (String, String) {
    ("BYPASS".into(), "BYPASS".into())
}

#[tokio::test]
async fn cache_block_follows_the_upstream_unless_told_otherwise() {
    let s = Script::default();
    let lm = date(-10 * 86_400);
    s.on("/rfc/none", 200, &[], "x")
        .on(
            "/rfc/maxage",
            200,
            &[("cache-control", "max-age=3600")],
            "x",
        )
        .on(
            "/rfc/negative",
            200,
            &[("cache-control", "max-age=-1")],
            "x",
        )
        .on(
            "/rfc/quoted",
            200,
            &[("cache-control", "max-age='3600'")],
            "x",
        )
        .on("/rfc/heuristic", 200, &[("last-modified", &lm)], "x")
        .on("/rfc/heuristic-403", 403, &[("last-modified", &lm)], "x")
        .on(
            "/rfc/fresh-500",
            500,
            &[("cache-control", "max-age=3600")],
            "x",
        )
        .on(
            "/rfc/fresh-302",
            302,
            &[("cache-control", "max-age=3600"), ("location", "/x")],
            "x",
        )
        .on("/default/none", 200, &[], "x")
        .on("/default/403", 403, &[], "x")
        .on(
            "/default/short",
            200,
            &[("cache-control", "max-age=1"), ("age", "5")],
            "x",
        )
        // max-age 1 h, 30 s old on arrival: fresh, but not with a 10 s ceiling
        .on(
            "/capped/old",
            200,
            &[("cache-control", "max-age=3600"), ("age", "30")],
            "x",
        )
        .on(
            "/capped/young",
            200,
            &[("cache-control", "max-age=3600")],
            "x",
        )
        .on(
            "/override/zero",
            200,
            &[("cache-control", "max-age=0")],
            "x",
        )
        .on(
            "/override/nostore",
            200,
            &[("cache-control", "no-store")],
            "x",
        );
    let (up, gw) = setup(&s).await;

    // `cache: {}`: explicit freshness, heuristic freshness where allowed, nothing else
    assert_eq!(twice(&gw, "/rfc/none").await, not_stored());
    assert_eq!(twice(&gw, "/rfc/maxage").await, stored());
    assert_eq!(twice(&gw, "/rfc/negative").await, not_stored());
    assert_eq!(twice(&gw, "/rfc/quoted").await, not_stored());
    assert_eq!(twice(&gw, "/rfc/heuristic").await, stored());
    assert_eq!(twice(&gw, "/rfc/heuristic-403").await, not_stored());
    // any status with explicit freshness may be stored
    assert_eq!(twice(&gw, "/rfc/fresh-500").await, stored());
    assert_eq!(get(&gw, "/rfc/fresh-302", &[]).await.x_cache(), "MISS");
    let r = get(&gw, "/rfc/fresh-302", &[]).await;
    assert_eq!(
        (r.status, r.x_cache(), r.h("location")),
        (302, "HIT", Some("/x"))
    );
    for p in [
        "/rfc/none",
        "/rfc/negative",
        "/rfc/quoted",
        "/rfc/heuristic-403",
    ] {
        assert_eq!(up.hits_for(p), 2, "{p}");
    }
    for p in [
        "/rfc/maxage",
        "/rfc/heuristic",
        "/rfc/fresh-500",
        "/rfc/fresh-302",
    ] {
        assert_eq!(up.hits_for(p), 1, "{p}");
    }

    // default_ttl: responses without freshness, heuristically cacheable statuses only; the
    // upstream's own freshness still rules (max-age=1 arriving 5 s old is stale)
    assert_eq!(twice(&gw, "/default/none").await, stored());
    assert_eq!(twice(&gw, "/default/403").await, not_stored());
    assert_eq!(twice(&gw, "/default/short").await, not_stored());
    // max_ttl: a ceiling, counted from the response's age
    assert_eq!(twice(&gw, "/capped/old").await, not_stored());
    assert_eq!(twice(&gw, "/capped/young").await, stored());
    // override: the route's lifetime whatever the upstream says, but never no-store
    assert_eq!(twice(&gw, "/override/zero").await, stored());
    assert_eq!(twice(&gw, "/override/nostore").await, not_stored());
}

#[tokio::test]
async fn the_upstreams_age_counts_and_is_carried_on() {
    let s = Script::default();
    s.on(
        "/rfc/old",
        200,
        &[("cache-control", "max-age=3600"), ("age", "7200")],
        "x",
    )
    .on(
        "/rfc/huge",
        200,
        &[("cache-control", "max-age=3600"), ("age", "2147483648")],
        "x",
    )
    .on(
        "/rfc/aged",
        200,
        &[("cache-control", "max-age=3600"), ("age", "30")],
        "x",
    )
    .on(
        "/rfc/apparent",
        200,
        &[("cache-control", "max-age=3600"), ("date", &date(-100))],
        "x",
    )
    .on(
        "/rfc/junk-age",
        200,
        &[("cache-control", "max-age=3600"), ("age", "abc")],
        "x",
    );
    let (_up, gw) = setup(&s).await;

    assert_eq!(twice(&gw, "/rfc/old").await, not_stored());
    assert_eq!(twice(&gw, "/rfc/huge").await, not_stored());
    assert_eq!(twice(&gw, "/rfc/junk-age").await, stored());

    let miss = get(&gw, "/rfc/aged", &[]).await;
    assert_eq!((miss.x_cache(), miss.age()), ("MISS", Some(30)));
    let hit = get(&gw, "/rfc/aged", &[]).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(hit.age().is_some_and(|a| a >= 30), "{:?}", hit.headers);
    // a Date 100 s in the past: the response was already that old (less the second of
    // resolution Date has)
    get(&gw, "/rfc/apparent", &[]).await;
    let hit = get(&gw, "/rfc/apparent", &[]).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(hit.age().is_some_and(|a| a >= 99), "{:?}", hit.headers);
}

#[tokio::test]
async fn date_is_kept_and_expires_is_measured_against_it() {
    let s = Script::default();
    let origin_date = date(-50);
    s.on(
        "/rfc/dated",
        200,
        &[("cache-control", "max-age=3600"), ("date", &origin_date)],
        "x",
    )
    // the upstream's clock is 400 s ahead: Expires 300 s ahead of ours is already past
    .on(
        "/rfc/fast-clock",
        200,
        &[("date", &date(400)), ("expires", &date(300))],
        "x",
    )
    .on(
        "/rfc/expires",
        200,
        &[("date", &date(0)), ("expires", &date(3600))],
        "x",
    )
    .on("/rfc/expires-invalid", 200, &[("expires", "0")], "x")
    .on(
        "/rfc/expires-twice",
        200,
        &[("expires", &date(3600)), ("expires", &date(7200))],
        "x",
    )
    .on(
        "/rfc/asctime",
        200,
        &[("expires", "Thu Aug  8 02:01:18 2050")],
        "x",
    )
    .on(
        "/rfc/rfc850",
        200,
        &[("expires", "Thursday, 18-Aug-50 02:01:18 GMT")],
        "x",
    )
    .on(
        "/rfc/utc",
        200,
        &[("expires", "Thu, 18 Aug 2050 02:01:18 UTC")],
        "x",
    );
    let (_up, gw) = setup(&s).await;

    let miss = get(&gw, "/rfc/dated", &[]).await;
    assert_eq!(
        miss.h("date"),
        Some(origin_date.as_str()),
        "a forwarded response keeps Date"
    );
    let hit = get(&gw, "/rfc/dated", &[]).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(
        hit.h("date"),
        Some(origin_date.as_str()),
        "a hit keeps the stored Date"
    );

    assert_eq!(twice(&gw, "/rfc/fast-clock").await, not_stored());
    assert_eq!(twice(&gw, "/rfc/expires").await, stored());
    assert_eq!(twice(&gw, "/rfc/expires-invalid").await, not_stored());
    assert_eq!(twice(&gw, "/rfc/expires-twice").await, not_stored());
    assert_eq!(twice(&gw, "/rfc/asctime").await, stored());
    assert_eq!(twice(&gw, "/rfc/rfc850").await, stored());
    assert_eq!(twice(&gw, "/rfc/utc").await, not_stored());

    // a response the gateway makes itself gets the current Date
    let r = get(&gw, "/nowhere", &[]).await;
    assert_eq!(r.status, 404);
    let d = httpdate::parse_http_date(r.h("date").unwrap_or("")).expect("a Date");
    let skew = SystemTime::now()
        .duration_since(d)
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(60), "{:?}", r.h("date"));
}

#[tokio::test]
async fn a_304_updates_the_stored_headers() {
    let s = Script::default();
    let etag = "\"v1\"";
    let nc = "no-cache";
    s.on(
        "/rfc/r",
        200,
        &[
            ("cache-control", nc),
            ("etag", etag),
            ("x-version", "1"),
            ("x-kept", "k"),
            ("content-type", "text/plain"),
        ],
        "body-1",
    )
    .on(
        "/rfc/r",
        304,
        &[
            ("cache-control", nc),
            ("etag", etag),
            ("x-version", "2"),
            ("content-length", "3"),
            ("content-type", "text/html"),
        ],
        "",
    )
    .on("/rfc/r", 304, &[("cache-control", nc), ("etag", etag)], "");
    let (up, gw) = setup(&s).await;

    let first = get(&gw, "/rfc/r", &[]).await;
    assert_eq!((first.x_cache(), first.h("x-version")), ("MISS", Some("1")));
    // no-cache: stored, and every use is a conditional request
    let second = get(&gw, "/rfc/r", &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.x_cache(), "HIT", "revalidated with a 304");
    assert_eq!(second.text(), "body-1");
    assert_eq!(
        second.h("x-version"),
        Some("2"),
        "the 304's fields replace the stored ones"
    );
    assert_eq!(
        second.h("x-kept"),
        Some("k"),
        "fields the 304 leaves out stay"
    );
    assert_eq!(second.h("content-type"), Some("text/html"));
    assert_eq!(
        second.h("content-length"),
        Some("6"),
        "Content-Length is never updated"
    );
    let cond = s.request("/rfc/r", 2).expect("a second request");
    assert_eq!(
        cond.get("if-none-match").map(|v| v.as_bytes()),
        Some(etag.as_bytes())
    );
    // the update was stored: a 304 without x-version keeps the updated value
    let third = get(&gw, "/rfc/r", &[]).await;
    assert_eq!((third.x_cache(), third.h("x-version")), ("HIT", Some("2")));
    assert_eq!(third.text(), "body-1");
    assert_eq!(up.hits_for("/rfc/r"), 3);
}

#[tokio::test]
async fn unsafe_methods_invalidate_their_targets() {
    let s = Script::default();
    let fresh = [("cache-control", "max-age=3600")];
    for p in ["/rfc/a", "/rfc/b", "/rfc/c", "/rfc/d", "/rfc/failed"] {
        s.on(p, 200, &fresh, p);
    }
    let (_up, gw) = setup(&s).await;
    for p in ["/rfc/a", "/rfc/b", "/rfc/c", "/rfc/d", "/rfc/failed"] {
        assert_eq!(twice(&gw, p).await, stored(), "{p}");
    }
    // POST to /rfc/a: its entry goes
    let post = send(&gw, "POST", "/rfc/a", &[]).await;
    assert_eq!((post.status, post.x_cache()), (200, "BYPASS"));
    assert_eq!(get(&gw, "/rfc/a", &[]).await.x_cache(), "MISS");
    // an extension method is proxied (not refused) and invalidates too
    let m = send(&gw, "M-SEARCH", "/rfc/b", &[]).await;
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(get(&gw, "/rfc/b", &[]).await.x_cache(), "MISS");
    // Location and Content-Location on the same host are invalidated as well
    s.on(
        "/rfc/writer",
        201,
        &[("location", "/rfc/c"), ("content-location", "d")],
        "",
    );
    let put = send(&gw, "PUT", "/rfc/writer", &[]).await;
    assert_eq!(put.status, 201);
    assert_eq!(get(&gw, "/rfc/c", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/rfc/d", &[]).await.x_cache(), "MISS");
    // an error response invalidates nothing
    s.on("/rfc/failed", 500, &[], "no");
    let del = send(&gw, "DELETE", "/rfc/failed", &[]).await;
    assert_eq!(del.status, 500);
    assert_eq!(get(&gw, "/rfc/failed", &[]).await.x_cache(), "HIT");
    // safe methods invalidate nothing
    let opt = send(&gw, "OPTIONS", "/rfc/c", &[]).await;
    assert_eq!((opt.status, opt.x_cache()), (200, "BYPASS"));
    assert_eq!(get(&gw, "/rfc/c", &[]).await.x_cache(), "HIT");
}

#[tokio::test]
async fn invalidation_stays_on_the_requests_host() {
    let s = Script::default();
    s.on("/rfc/h", 200, &[("cache-control", "max-age=3600")], "h");
    let (_up, gw) = setup(&s).await;
    let req = |method: &str, host: &str| {
        format!("{method} /rfc/h HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let x_cache = |raw: &str| {
        raw.lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-cache: ")
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    for host in ["a.test", "b.test"] {
        assert_eq!(
            x_cache(&raw(gw.port, req("GET", host).as_bytes()).await),
            "miss"
        );
        assert_eq!(
            x_cache(&raw(gw.port, req("GET", host).as_bytes()).await),
            "hit"
        );
    }
    raw(gw.port, req("POST", "a.test").as_bytes()).await;
    assert_eq!(
        x_cache(&raw(gw.port, req("GET", "a.test").as_bytes()).await),
        "miss"
    );
    assert_eq!(
        x_cache(&raw(gw.port, req("GET", "b.test").as_bytes()).await),
        "hit",
        "another host's entry is another resource"
    );
}

#[tokio::test]
async fn fields_named_in_connection_are_neither_stored_nor_forwarded() {
    let s = Script::default();
    s.on(
        "/rfc/conn",
        200,
        &[
            ("cache-control", "max-age=3600"),
            ("connection", "x-a, x-b"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-c", "3"),
        ],
        "x",
    );
    let (_up, gw) = setup(&s).await;
    for want in ["MISS", "HIT"] {
        let r = get(&gw, "/rfc/conn", &[]).await;
        assert_eq!(r.x_cache(), want);
        assert_eq!(r.h("x-c"), Some("3"));
        assert_eq!(
            (r.h("x-a"), r.h("x-b")),
            (None, None),
            "{want}: {:?}",
            r.headers
        );
    }
}

#[tokio::test]
async fn set_cookie_is_stored_but_not_served_unless_the_route_opts_in() {
    let s = Script::default();
    let fresh_cookie = [
        ("cache-control", "max-age=3600"),
        ("set-cookie", "session=abc"),
    ];
    s.on("/rfc/cookie", 200, &fresh_cookie, "x")
        .on("/serve/cookie", 200, &fresh_cookie, "x")
        .on(
            "/serve/named",
            200,
            &[
                ("cache-control", "max-age=3600, no-cache=\"set-cookie\""),
                ("set-cookie", "session=abc"),
            ],
            "x",
        )
        .on(
            "/serve/private-named",
            200,
            &[
                ("cache-control", "max-age=3600, private=\"Set-Cookie\""),
                ("set-cookie", "session=abc"),
            ],
            "x",
        )
        .on("/bypass/cookie", 200, &fresh_cookie, "x");
    let (_up, gw) = setup(&s).await;

    let miss = get(&gw, "/rfc/cookie", &[]).await;
    assert_eq!(
        (miss.x_cache(), miss.h("set-cookie")),
        ("MISS", Some("session=abc")),
        "the client that fetched it gets its cookie"
    );
    let hit = get(&gw, "/rfc/cookie", &[]).await;
    assert_eq!((hit.x_cache(), hit.h("set-cookie")), ("HIT", None));

    get(&gw, "/serve/cookie", &[]).await;
    let hit = get(&gw, "/serve/cookie", &[]).await;
    assert_eq!(
        (hit.x_cache(), hit.h("set-cookie")),
        ("HIT", Some("session=abc"))
    );
    for p in ["/serve/named", "/serve/private-named"] {
        get(&gw, p, &[]).await;
        let hit = get(&gw, p, &[]).await;
        assert_eq!((hit.x_cache(), hit.h("set-cookie")), ("HIT", None), "{p}");
    }
    assert_eq!(twice(&gw, "/bypass/cookie").await, not_stored());
}

#[tokio::test]
async fn request_directives_are_honoured() {
    let s = Script::default();
    let etag = [
        ("cache-control", "max-age=60"),
        ("etag", "\"e\""),
        ("age", "120"),
    ];
    s.on(
        "/rfc/fresh",
        200,
        &[("cache-control", "max-age=3600"), ("etag", "\"f\"")],
        "f",
    )
    .on(
        "/rfc/fresh",
        304,
        &[("cache-control", "max-age=3600"), ("etag", "\"f\"")],
        "",
    )
    // stored stale (it has a validator), revalidated on use
    .on("/rfc/stale", 200, &etag, "s")
    .on("/rfc/stale", 200, &etag, "s2");
    let (up, gw) = setup(&s).await;

    assert_eq!(get(&gw, "/rfc/fresh", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/rfc/fresh", &[]).await.x_cache(), "HIT");
    // max-age=0, no-cache, a max-age below its age, min-fresh beyond its lifetime: revalidate
    for cc in ["max-age=0", "no-cache", "min-fresh=7200"] {
        let before = up.hits_for("/rfc/fresh");
        let r = get(&gw, "/rfc/fresh", &[("cache-control", cc)]).await;
        assert_eq!(r.status, 200, "{cc}");
        assert_eq!(
            up.hits_for("/rfc/fresh"),
            before + 1,
            "{cc} goes to the upstream"
        );
    }
    assert_eq!(
        get(&gw, "/rfc/fresh", &[("cache-control", "max-age=3600")])
            .await
            .x_cache(),
        "HIT"
    );
    // only-if-cached: the stored response, or a 504 rather than the upstream
    assert_eq!(
        get(&gw, "/rfc/fresh", &[("cache-control", "only-if-cached")])
            .await
            .x_cache(),
        "HIT"
    );
    let r = get(
        &gw,
        "/rfc/never-stored",
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(up.hits_for("/rfc/never-stored"), 0);

    // a stale entry: max-stale serves it as it is
    assert_eq!(get(&gw, "/rfc/stale", &[]).await.x_cache(), "MISS");
    let r = get(&gw, "/rfc/stale", &[("cache-control", "max-stale=3600")]).await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("HIT", "s"));
    assert_eq!(up.hits_for("/rfc/stale"), 1);
    let r = get(&gw, "/rfc/stale", &[("cache-control", "max-stale=10")]).await;
    assert_eq!(r.text(), "s2", "10 s of staleness is not enough");
    assert_eq!(up.hits_for("/rfc/stale"), 2);
}

#[tokio::test]
async fn head_and_normalised_vary_use_the_stored_get() {
    let s = Script::default();
    s.on(
        "/rfc/page",
        200,
        &[("cache-control", "max-age=3600")],
        "page",
    )
    .on(
        "/rfc/lang",
        200,
        &[
            ("cache-control", "max-age=3600"),
            ("vary", "Accept-Language"),
        ],
        "lang",
    )
    .on(
        "/rfc/foo",
        200,
        &[("cache-control", "max-age=3600"), ("vary", "X-Foo")],
        "foo",
    );
    let (up, gw) = setup(&s).await;

    assert_eq!(get(&gw, "/rfc/page", &[]).await.x_cache(), "MISS");
    let head = send(&gw, "HEAD", "/rfc/page", &[]).await;
    assert_eq!((head.status, head.x_cache()), (200, "HIT"));
    assert!(head.body.is_empty());
    assert_eq!(up.hits_for("/rfc/page"), 1);

    let miss = get(&gw, "/rfc/lang", &[("accept-language", "en, de;q=0.5, fr")]).await;
    assert_eq!(miss.x_cache(), "MISS");
    for same in ["fr,EN, de;q=0.5", " en ,fr,   DE;q=0.50"] {
        let r = get(&gw, "/rfc/lang", &[("accept-language", same)]).await;
        assert_eq!(r.x_cache(), "HIT", "{same}");
    }
    let r = get(&gw, "/rfc/lang", &[("accept-language", "de, en, fr")]).await;
    assert_eq!(r.x_cache(), "MISS", "other weights, another variant");
    get(&gw, "/rfc/foo", &[("x-foo", "1,2")]).await;
    assert_eq!(
        get(&gw, "/rfc/foo", &[("x-foo", " 1, 2 ")]).await.x_cache(),
        "HIT"
    );
    assert_eq!(
        get(&gw, "/rfc/foo", &[("x-foo", "2, 1")]).await.x_cache(),
        "MISS",
        "order matters in other fields"
    );
}

#[tokio::test]
async fn stale_is_served_only_where_allowed() {
    let s = Script::default();
    // stored stale on arrival (it has a validator); stale-if-error allows a stale answer
    let sie = [
        ("cache-control", "max-age=60, stale-if-error=3600"),
        ("etag", "\"x\""),
        ("age", "120"),
    ];
    let mr = [
        (
            "cache-control",
            "max-age=60, stale-if-error=3600, must-revalidate",
        ),
        ("etag", "\"x\""),
        ("age", "120"),
    ];
    s.on("/rfc/sie", 200, &sie, "stale")
        .on("/rfc/sie", 503, &[], "down")
        .on("/rfc/mr", 200, &mr, "stale")
        .on("/rfc/mr", 503, &[], "down");
    let (_up, gw) = setup(&s).await;
    assert_eq!(get(&gw, "/rfc/sie", &[]).await.x_cache(), "MISS");
    let r = get(&gw, "/rfc/sie", &[]).await;
    assert_eq!(
        (r.status, r.x_cache(), r.text().as_str()),
        (200, "STALE", "stale")
    );
    assert_eq!(get(&gw, "/rfc/mr", &[]).await.x_cache(), "MISS");
    let r = get(&gw, "/rfc/mr", &[]).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, "down"),
        "must-revalidate: no stale answer"
    );
}

#[tokio::test]
async fn cdn_cache_control_rules_and_stays_here() {
    let s = Script::default();
    s.on(
        "/rfc/cdn",
        200,
        &[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=3600"),
        ],
        "x",
    )
    .on(
        "/rfc/cdn-short",
        200,
        &[
            ("cache-control", "max-age=3600"),
            ("cdn-cache-control", "max-age=0"),
        ],
        "x",
    )
    .on(
        "/rfc/cdn-private",
        200,
        &[
            ("cache-control", "max-age=3600"),
            ("cdn-cache-control", "private"),
        ],
        "x",
    )
    .on(
        "/rfc/cdn-invalid",
        200,
        &[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=\"3600\""),
        ],
        "x",
    )
    .on(
        "/edge/named",
        200,
        &[
            ("cache-control", "no-store"),
            ("edge-cache-control", "max-age=3600"),
            ("cdn-cache-control", "no-store"),
        ],
        "x",
    )
    .on(
        "/plain/cdn",
        200,
        &[("cdn-cache-control", "max-age=3600")],
        "x",
    );
    let (_up, gw) = setup(&s).await;

    for want in ["MISS", "HIT"] {
        let r = get(&gw, "/rfc/cdn", &[]).await;
        assert_eq!(r.x_cache(), want);
        assert_eq!(
            r.h("cdn-cache-control"),
            None,
            "not forwarded downstream ({want})"
        );
        assert_eq!(
            r.h("cache-control"),
            Some("no-store"),
            "Cache-Control is for the next caches"
        );
    }
    assert_eq!(twice(&gw, "/rfc/cdn-short").await, not_stored());
    assert_eq!(twice(&gw, "/rfc/cdn-private").await, not_stored());
    assert_eq!(
        twice(&gw, "/rfc/cdn-invalid").await,
        not_stored(),
        "an invalid field is ignored"
    );
    // a route naming another field: that one rules, CDN-Cache-Control is just a header
    let miss = get(&gw, "/edge/named", &[]).await;
    assert_eq!(miss.x_cache(), "MISS");
    assert_eq!(
        miss.h("edge-cache-control"),
        Some("max-age=3600"),
        "forward: true"
    );
    assert_eq!(miss.h("cdn-cache-control"), Some("no-store"));
    assert_eq!(get(&gw, "/edge/named", &[]).await.x_cache(), "HIT");
    // routes without a cache pass it through
    assert_eq!(
        get(&gw, "/plain/cdn", &[]).await.h("cdn-cache-control"),
        Some("max-age=3600")
    );
}

#[test]
fn cache_block_errors_name_key_and_line() {
    let yaml = "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:3001\" }] }\nroutes:\n  - match: { path: /a }\n    upstream: a\n    cache:\n      ttl: 30s\n";
    let (ok, out) = validate(yaml);
    assert!(!ok, "{out}");
    assert!(
        out.contains(":7: routes[0].cache.ttl: `ttl` was replaced"),
        "{out}"
    );
    assert!(
        out.contains("max_ttl") && out.contains("default_ttl") && out.contains("override"),
        "{out}"
    );
}
