//! Response caching through the real binary: X-Cache / Age and upstream hit counts, TTL and
//! upstream Cache-Control, Vary and key headers, per-identity entries, the cache lock under
//! 100 concurrent misses, stale-while-revalidate and stale-if-error, purges, reloads and the
//! size bound.

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(&client(), reqwest::Method::GET, &gw.url(path), headers).await
}

/// `yaml` with `{up}` replaced by the upstream's address, started.
async fn start(yaml: &str, up: &Upstream) -> Gateway {
    Gateway::start(&yaml.replace("{up}", &up.addr.to_string())).await
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

fn header<'a>(req: &'a hyper::Request<hyper::body::Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

const BASIC: &str = r#"
server:
  listen: ["127.0.0.1:{port}"]
  admin: { listen: "127.0.0.1:{admin_port}", token_sha256: "{admin_sha}" }
upstreams:
  u: { backends: [{ addr: "{up}" }] }
routes:
  - { name: cached, match: { path: "/c/**" }, upstream: u, cache: { default_ttl: 30s } }
  - { name: short, match: { path: "/short/**" }, upstream: u, cache: { default_ttl: 1s } }
  - { name: override, match: { path: "/override/**" }, upstream: u, cache: { override: 30s } }
  - { name: tenant, match: { path: "/tenant/**" }, upstream: u, cache: { default_ttl: 30s, key_headers: [x-tenant] } }
  - { name: other, match: { path: "/o/**" }, upstream: u, cache: { default_ttl: 30s } }
  - { name: plain, match: { path: "/p/**" }, upstream: u }
"#;

#[tokio::test]
async fn hits_misses_headers_and_upstream_count() {
    let up = Upstream::start("u").await;
    up.set_handler(Arc::new(|req| match req.uri().path() {
        "/c/missing" => Some(respond(404, &[("content-type", "text/plain")], "gone")),
        "/c/broken" => Some(respond(500, &[], "oops")),
        _ => None,
    }));
    let gw = start(BASIC, &up).await;

    let first = get(&gw, "/c/a", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(first.age(), Some(0));
    let second = get(&gw, "/c/a", &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.x_cache(), "HIT");
    assert!(second.age().is_some(), "a hit carries Age");
    assert_eq!(second.body, first.body, "the stored body is served");
    assert_ne!(
        second.headers["x-request-id"], first.headers["x-request-id"],
        "a hit gets its own request id"
    );
    assert_eq!(up.hits_for("/c/a"), 1);

    // HEAD is answered from the GET's entry; other methods pass through
    let head = send(&client(), reqwest::Method::HEAD, &gw.url("/c/a"), &[]).await;
    assert_eq!((head.status, head.x_cache()), (200, "HIT"));
    assert!(head.body.is_empty());
    let post = send(&client(), reqwest::Method::POST, &gw.url("/c/a"), &[]).await;
    assert_eq!((post.status, post.x_cache()), (200, "BYPASS"));
    assert_eq!(up.hits_for("/c/a"), 2);

    // the key is what is forwarded: the query byte for byte (an upstream may read
    // `?b=2&a=1` differently from `?a=1&b=2`), the path normalised
    assert_eq!(get(&gw, "/c/q?b=2&a=1", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/c/q?b=2&a=1", &[]).await.x_cache(), "HIT");
    assert_eq!(get(&gw, "/c/q?a=1&b=2", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/c/q?a=1&b=3", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/c/./q?a=1&b=2", &[]).await.x_cache(), "HIT");

    // 404 is cacheable by default, 500 is not
    let r = get(&gw, "/c/missing", &[]).await;
    assert_eq!((r.status, r.x_cache()), (404, "MISS"));
    let r = get(&gw, "/c/missing", &[]).await;
    assert_eq!(
        (r.status, r.x_cache(), r.text().as_str()),
        (404, "HIT", "gone")
    );
    assert_eq!(up.hits_for("/c/missing"), 1);
    for _ in 0..2 {
        let r = get(&gw, "/c/broken", &[]).await;
        assert_eq!((r.status, r.x_cache()), (500, "BYPASS"));
    }

    // routes without `cache` say nothing
    let r = get(&gw, "/p/a", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-cache").is_none());

    let (s, stats) = gw
        .admin(reqwest::Method::GET, "/admin/cache/stats", None)
        .await;
    assert_eq!(s, 200, "{stats}");
    assert!(stats["hits"].as_u64().unwrap() >= 4, "{stats}");
    assert!(stats["misses"].as_u64().unwrap() >= 4, "{stats}");
    assert!(stats["entries"].as_u64().unwrap() >= 3, "{stats}");
    assert!(stats["bytes_stored"].as_u64().unwrap() > 0, "{stats}");
}

#[tokio::test]
async fn ttl_expiry_and_upstream_freshness() {
    let up = Upstream::start("u").await;
    up.set_handler(Arc::new(|req| {
        let p = req.uri().path();
        if p.ends_with("/maxage") {
            return Some(respond(
                200,
                &[("cache-control", "max-age=1")],
                p.to_string(),
            ));
        }
        None
    }));
    let gw = start(BASIC, &up).await;

    // the route's default TTL (the upstream says nothing)
    assert_eq!(get(&gw, "/short/a", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/short/a", &[]).await.x_cache(), "HIT");
    wait_out(Duration::from_secs(1)).await; // the 1 s TTL
    assert_eq!(get(&gw, "/short/a", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/short/a", &[]).await.x_cache(), "HIT");
    assert_eq!(up.hits_for("/short/a"), 2);

    // upstream max-age rules over the route's default...
    assert_eq!(get(&gw, "/c/maxage", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/c/maxage", &[]).await.x_cache(), "HIT");
    // ...unless the route overrides it
    assert_eq!(get(&gw, "/override/maxage", &[]).await.x_cache(), "MISS");
    wait_out(Duration::from_secs(1)).await; // the 1 s TTL
    assert_eq!(get(&gw, "/c/maxage", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/override/maxage", &[]).await.x_cache(), "HIT");
    assert_eq!(up.hits_for("/c/maxage"), 2);
    assert_eq!(up.hits_for("/override/maxage"), 1);

    // a client's `Cache-Control: no-cache` refetches, and the refreshed entry serves others
    assert_eq!(get(&gw, "/c/fresh", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/c/fresh", &[]).await.x_cache(), "HIT");
    let r = get(&gw, "/c/fresh", &[("cache-control", "no-cache")]).await;
    assert_eq!((r.status, r.x_cache()), (200, "MISS"));
    assert_eq!(up.hits_for("/c/fresh"), 2);
    assert_eq!(get(&gw, "/c/fresh", &[]).await.x_cache(), "HIT");
    assert_eq!(up.hits_for("/c/fresh"), 2);
}

#[tokio::test]
async fn no_store_private_and_no_cache_without_validator_are_not_stored() {
    let up = Upstream::start("u").await;
    up.set_handler(Arc::new(|req| match req.uri().path() {
        "/c/nostore" => Some(respond(200, &[("cache-control", "no-store")], "x")),
        "/c/private" => Some(respond(
            200,
            &[("cache-control", "private, max-age=60")],
            "x",
        )),
        "/c/nocache" => Some(respond(200, &[("cache-control", "no-cache")], "x")),
        "/override/private" => Some(respond(200, &[("cache-control", "private")], "x")),
        _ => None,
    }));
    let gw = start(BASIC, &up).await;
    for path in [
        "/c/nostore",
        "/c/private",
        "/c/nocache",
        "/override/private",
    ] {
        for _ in 0..3 {
            let r = get(&gw, path, &[]).await;
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(r.x_cache(), "BYPASS", "{path}");
        }
        assert_eq!(
            up.hits_for(path),
            3,
            "{path} reaches the upstream every time"
        );
    }
}

#[tokio::test]
async fn vary_and_key_headers_separate_entries() {
    let up = Upstream::start("u").await;
    up.set_handler(Arc::new(|req| {
        if req.uri().path() == "/c/vary" {
            let lang = header(req, "accept-language").to_string();
            return Some(respond(200, &[("vary", "Accept-Language")], lang));
        }
        None
    }));
    let gw = start(BASIC, &up).await;

    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    let r = get(&gw, "/c/vary", &en).await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("MISS", "en"));
    let r = get(&gw, "/c/vary", &en).await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("HIT", "en"));
    let r = get(&gw, "/c/vary", &fr).await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("MISS", "fr"));
    let r = get(&gw, "/c/vary", &fr).await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("HIT", "fr"));
    let r = get(&gw, "/c/vary", &en).await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("HIT", "en"));
    assert_eq!(up.hits_for("/c/vary"), 2);

    // configured key headers
    let a = [("x-tenant", "a")];
    let b = [("x-tenant", "b")];
    assert_eq!(get(&gw, "/tenant/x", &a).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/tenant/x", &a).await.x_cache(), "HIT");
    let r = get(&gw, "/tenant/x", &b).await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.json()["headers"]["x-tenant"], "b");
    assert_eq!(get(&gw, "/tenant/x", &b).await.x_cache(), "HIT");
    assert_eq!(up.hits_for("/tenant/x"), 2);
}

const ALICE: &str = "alice-key-0123456789abcdefghijklmnop";
const BOB: &str = "bob-key-0123456789abcdefghijklmnopqrs";

#[tokio::test]
async fn authenticated_routes_cache_per_identity() {
    let up = Upstream::start("u").await;
    let yaml = r#"
server:
  listen: ["127.0.0.1:{port}"]
upstreams:
  u: { backends: [{ addr: "{up}" }] }
auth:
  api_keys:
    header: x-api-key
    query_param: api_key
    keys:
      - { id: alice, sha256: "ALICE_SHA" }
      - { id: bob, sha256: "BOB_SHA" }
rate_limits:
  policies:
    tight: { key: client, requests: 2, per: 60s }
routes:
  - { name: mine, match: { path: "/mine/**" }, upstream: u, auth: { any_of: [api_key] }, cache: { default_ttl: 30s } }
  - { name: shared, match: { path: "/shared/**" }, upstream: u, auth: { any_of: [api_key] }, cache: { default_ttl: 30s, shared: true } }
  - { name: limited, match: { path: "/limited/**" }, upstream: u, auth: { any_of: [api_key] }, rate_limit: [tight], cache: { default_ttl: 30s } }
"#
    .replace("ALICE_SHA", &sha(ALICE))
    .replace("BOB_SHA", &sha(BOB));
    let gw = start(&yaml, &up).await;
    let alice = [("x-api-key", ALICE)];
    let bob = [("x-api-key", BOB)];

    let r = get(&gw, "/mine/profile", &alice).await;
    assert_eq!((r.status, r.x_cache()), (200, "MISS"));
    assert_eq!(r.json()["headers"]["x-auth-subject"], "alice");
    let r = get(&gw, "/mine/profile", &alice).await;
    assert_eq!((r.status, r.x_cache()), (200, "HIT"));
    assert_eq!(r.json()["headers"]["x-auth-subject"], "alice");
    let r = get(&gw, "/mine/profile", &bob).await;
    assert_eq!(
        (r.status, r.x_cache()),
        (200, "MISS"),
        "bob never gets alice's entry"
    );
    assert_eq!(r.json()["headers"]["x-auth-subject"], "bob");
    let r = get(&gw, "/mine/profile", &bob).await;
    assert_eq!(
        (r.x_cache(), r.json()["headers"]["x-auth-subject"].clone()),
        ("HIT", json!("bob"))
    );
    // the key in the query string identifies the same client, and is not part of the key
    let r = get(&gw, &format!("/mine/profile?api_key={ALICE}"), &[]).await;
    assert_eq!((r.status, r.x_cache()), (200, "HIT"));
    assert_eq!(up.hits_for("/mine/profile"), 2);

    // a cached response is only served to authenticated clients
    let r = get(&gw, "/mine/profile", &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.headers.get("x-cache").is_none());
    let r = get(&gw, "/mine/profile", &[("x-api-key", "wrong")]).await;
    assert_eq!(r.status, 401);

    // shared: one entry for everyone
    let r = get(&gw, "/shared/catalog", &alice).await;
    assert_eq!(r.x_cache(), "MISS");
    let r = get(&gw, "/shared/catalog", &bob).await;
    assert_eq!((r.status, r.x_cache()), (200, "HIT"));
    assert_eq!(up.hits_for("/shared/catalog"), 1);

    // and only to clients within their rate limit
    assert_eq!(get(&gw, "/limited/x", &alice).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/limited/x", &alice).await.x_cache(), "HIT");
    let r = get(&gw, "/limited/x", &alice).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.get("x-cache").is_none());
}

#[tokio::test]
async fn hundred_concurrent_misses_reach_the_upstream_once() {
    let up = Upstream::start("u").await;
    up.set_mode(Mode::Delay(Duration::from_millis(700)));
    let gw = start(BASIC, &up).await;
    let c = client();
    let url = gw.url("/c/slow");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move { send(&c, reqwest::Method::GET, &url, &[]).await })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *statuses.entry(r.x_cache().to_string()).or_insert(0) += 1;
    }
    assert_eq!(up.hits_for("/c/slow"), 1, "{statuses:?}");
    assert_eq!(statuses.get("MISS"), Some(&1), "{statuses:?}");
    assert_eq!(statuses.get("HIT"), Some(&99), "{statuses:?}");
}

#[tokio::test]
async fn stale_while_revalidate_refreshes_in_the_background() {
    let up = Upstream::start("u").await;
    let version = Arc::new(AtomicUsize::new(0));
    let v = version.clone();
    up.set_handler(Arc::new(move |_| {
        let n = v.fetch_add(1, Ordering::SeqCst) + 1;
        Some(respond(200, &[], format!("v{n}")))
    }));
    let yaml = r#"
server:
  listen: ["127.0.0.1:{port}"]
upstreams:
  u: { backends: [{ addr: "{up}" }] }
routes:
  - { match: { path: "/swr/**" }, upstream: u, cache: { default_ttl: 1s, stale_while_revalidate: 30s } }
"#;
    let gw = start(yaml, &up).await;
    let r = get(&gw, "/swr/a", &[]).await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("MISS", "v1"));
    wait_out(Duration::from_secs(1)).await; // the 1 s TTL
    let r = get(&gw, "/swr/a", &[]).await;
    assert_eq!(
        (r.status, r.x_cache(), r.text().as_str()),
        (200, "STALE", "v1")
    );
    assert!(r.age().is_some_and(|a| a >= 1), "{:?}", r.headers);
    let refreshed = eventually(Duration::from_secs(5), || async {
        let r = get(&gw, "/swr/a", &[]).await;
        r.x_cache() == "HIT" && r.text() == "v2"
    })
    .await;
    assert!(refreshed, "the background refresh stored v2");
    assert_eq!(up.hits_for("/swr/a"), 2);
}

#[tokio::test]
async fn stale_if_error_when_the_upstream_fails() {
    let mut up = Upstream::start("u").await;
    let yaml = r#"
server:
  listen: ["127.0.0.1:{port}"]
upstreams:
  u: { backends: [{ addr: "{up}" }], retry: { attempts: 1, backoff: 10ms } }
routes:
  - { match: { path: "/sie/**" }, upstream: u, cache: { default_ttl: 1s, stale_if_error: 60s } }
  - { match: { path: "/nostale/**" }, upstream: u, cache: { default_ttl: 1s } }
"#;
    let gw = start(yaml, &up).await;
    let fresh = get(&gw, "/sie/a", &[]).await;
    assert_eq!(fresh.x_cache(), "MISS");
    assert_eq!(get(&gw, "/nostale/a", &[]).await.x_cache(), "MISS");
    wait_out(Duration::from_secs(1)).await; // the 1 s TTL

    // the upstream answers 503: the stale entry is served instead
    up.set_mode(Mode::Status(503));
    let r = get(&gw, "/sie/a", &[]).await;
    assert_eq!((r.status, r.x_cache()), (200, "STALE"), "{}", r.text());
    assert_eq!(r.body, fresh.body);
    let r = get(&gw, "/nostale/a", &[]).await;
    assert_eq!(r.status, 503);

    // the upstream is gone
    up.kill();
    wait_refused(up.addr).await;
    let r = get(&gw, "/sie/a", &[]).await;
    assert_eq!((r.status, r.x_cache()), (200, "STALE"), "{}", r.text());
    assert_eq!(r.body, fresh.body);
    assert!(r.age().is_some_and(|a| a >= 1));
    let r = get(&gw, "/nostale/a", &[]).await;
    assert!(
        r.status == 502 || r.status == 503,
        "{} {}",
        r.status,
        r.text()
    );
    assert_eq!(
        r.json()["error"].as_str().map(|s| !s.is_empty()),
        Some(true)
    );
}

#[tokio::test]
async fn purge_by_key_prefix_and_all() {
    let up = Upstream::start("u").await;
    let gw = start(BASIC, &up).await;
    for p in ["/c/x?a=1", "/c/x?a=2", "/c/y", "/o/z"] {
        assert_eq!(get(&gw, p, &[]).await.x_cache(), "MISS", "{p}");
        assert_eq!(get(&gw, p, &[]).await.x_cache(), "HIT", "{p}");
    }

    // one key: only that path and query
    let (s, v) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/cache/purge",
            Some(json!({"key": "/c/x?a=1"})),
        )
        .await;
    assert_eq!((s, v["purged"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(get(&gw, "/c/x?a=1", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/c/x?a=2", &[]).await.x_cache(), "HIT");

    // a prefix: everything under it
    let (s, v) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/cache/purge",
            Some(json!({"prefix": "/c/"})),
        )
        .await;
    assert_eq!((s, v["purged"].as_u64()), (200, Some(3)), "{v}");
    for p in ["/c/x?a=1", "/c/x?a=2", "/c/y"] {
        assert_eq!(get(&gw, p, &[]).await.x_cache(), "MISS", "{p}");
    }
    assert_eq!(get(&gw, "/o/z", &[]).await.x_cache(), "HIT");

    // everything
    let (s, v) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/cache/purge",
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!((s, v["purged"].as_u64()), (200, Some(4)), "{v}");
    assert_eq!(get(&gw, "/o/z", &[]).await.x_cache(), "MISS");

    // bad requests, and the token is required
    for body in [
        json!({}),
        json!({"key": "c/x"}),
        json!({"key": "/a", "prefix": "/"}),
    ] {
        let (s, _) = gw
            .admin(
                reqwest::Method::POST,
                "/admin/cache/purge",
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, 400, "{body}");
    }
    let r = client()
        .post(gw.admin_url("/admin/cache/purge"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (_, stats) = gw
        .admin(reqwest::Method::GET, "/admin/cache/stats", None)
        .await;
    assert_eq!(stats["purged"].as_u64(), Some(8), "{stats}");
}

#[tokio::test]
async fn reload_with_new_cache_settings_does_not_serve_old_entries() {
    let up = Upstream::start("u").await;
    let yaml = |ttl: &str| {
        format!(
            r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
routes:
  - {{ match: {{ path: "/c/**" }}, upstream: u, cache: {{ default_ttl: {ttl} }} }}
"#,
            up = up.addr
        )
    };
    let gw = Gateway::start(&yaml("60s")).await;
    assert_eq!(get(&gw, "/c/a", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/c/a", &[]).await.x_cache(), "HIT");

    // same cache settings: entries survive a reload
    gw.write_config(&(yaml("60s") + "# touched\n"));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(get(&gw, "/c/a", &[]).await.x_cache(), "HIT");

    // new settings: old entries no longer match
    gw.write_config(&yaml("120s"));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(get(&gw, "/c/a", &[]).await.x_cache(), "MISS");
    assert_eq!(get(&gw, "/c/a", &[]).await.x_cache(), "HIT");
    assert_eq!(up.hits_for("/c/a"), 2);
}

#[tokio::test]
async fn size_bound_holds_under_a_fill() {
    let up = Upstream::start("u").await;
    up.set_handler(Arc::new(|req| {
        let p = req.uri().path();
        let size = if p.starts_with("/fill/big") {
            200 * 1024
        } else {
            16 * 1024
        };
        Some(respond(
            200,
            &[("content-type", "text/plain")],
            vec![b'x'; size],
        ))
    }));
    let yaml = r#"
server:
  listen: ["127.0.0.1:{port}"]
  admin: { listen: "127.0.0.1:{admin_port}", token_sha256: "{admin_sha}" }
upstreams:
  u: { backends: [{ addr: "{up}" }] }
cache: { max_size: 1MiB, max_object_size: 64KiB }
routes:
  - { match: { path: "/fill/**" }, upstream: u, cache: { default_ttl: 60s } }
"#;
    let gw = start(yaml, &up).await;
    let c = client();
    for round in 0..10 {
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let c = c.clone();
                let url = gw.url(&format!("/fill/{}", round * 30 + i));
                tokio::spawn(async move { send(&c, reqwest::Method::GET, &url, &[]).await })
            })
            .collect();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), 16 * 1024);
        }
        let (_, stats) = gw
            .admin(reqwest::Method::GET, "/admin/cache/stats", None)
            .await;
        let stored = stats["bytes_stored"].as_u64().unwrap();
        assert!(stored <= 1 << 20, "round {round}: {stats}");
    }
    let (_, stats) = gw
        .admin(reqwest::Method::GET, "/admin/cache/stats", None)
        .await;
    assert_eq!(stats["max_bytes"].as_u64(), Some(1 << 20), "{stats}");
    assert!(stats["evictions"].as_u64().unwrap() > 0, "{stats}");
    // Each 16 KiB object weighs 16,958 bytes stored (body, headers, key), so 1 MiB holds
    // floor(1,048,576 / 16,958) = 61. Eviction frees what the new object needs, no more: after
    // 300 inserts the cache is full (61 on this machine; 3 of slack for the 30 concurrent
    // inserts of the last round). The old bound (> 10) passed a cache that kept a sixth of
    // what it may, e.g. one that emptied the main queue on overflow or kept only the small
    // queue (10% of max_bytes ≈ 6 entries would fail it now, as would 30 for "evict half").
    let entries = stats["entries"].as_u64().unwrap();
    assert!((58..=61).contains(&entries), "{stats}");
    let stored = stats["bytes_stored"].as_u64().unwrap();
    assert!(
        stored >= (1 << 20) - 4 * 16_958,
        "the cache is filled: {stats}"
    );

    // an object over max_object_size is served, never stored
    for _ in 0..2 {
        let r = get(&gw, "/fill/big", &[]).await;
        assert_eq!((r.status, r.body.len()), (200, 200 * 1024));
        assert_ne!(r.x_cache(), "HIT");
    }
    assert_eq!(up.hits_for("/fill/big"), 2);
}

#[test]
fn cache_config_is_validated() {
    let base = |route_cache: &str, global: &str| {
        format!(
            "upstreams:\n  a: {{ backends: [{{ addr: \"127.0.0.1:3001\" }}] }}\n{global}routes:\n  - match: {{ path: /a }}\n    upstream: a\n    cache: {route_cache}\n"
        )
    };
    let (ok, out) = validate(&base(
        "{ default_ttl: 30s, max_ttl: 1h, stale_if_error: 1m, key_headers: [x-t], set_cookie: serve, targeted: { fields: [Edge-Cache-Control], forward: true } }",
        "cache: { max_size: 64MiB }\n",
    ));
    assert!(ok, "{out}");
    for (route_cache, global, want) in [
        // `ttl` is gone; the error says what replaces it
        (
            "{ ttl: 30s }",
            "",
            "routes[0].cache.ttl: `ttl` was replaced",
        ),
        (
            "{ default_ttl: 0s }",
            "",
            "routes[0].cache.default_ttl: must be greater than 0",
        ),
        (
            "{ override: 30s, max_ttl: 1m }",
            "",
            "routes[0].cache.max_ttl: has no effect with `override`",
        ),
        (
            "{ default_ttl: 2m, max_ttl: 1m }",
            "",
            "routes[0].cache.default_ttl",
        ),
        ("{ override: true }", "", "override"),
        ("{ statuses: [200, 99] }", "", "routes[0].cache.statuses[1]"),
        ("{ statuses: [206] }", "", "not a cacheable status"),
        ("{ key_headers: [\"bad header\"] }", "", "key_headers[0]"),
        ("{ set_cookie: always }", "", "set_cookie"),
        (
            "{ targeted: { fields: [Cache-Control] } }",
            "",
            "routes[0].cache.targeted.fields[0]",
        ),
        ("{ bogus: 1 }", "", "bogus"),
        ("{}", "cache: { max_size: 1KiB }\n", "cache.max_size"),
        (
            "{}",
            "cache: { max_size: 1MiB, max_object_size: 2MiB }\n",
            "cache.max_object_size",
        ),
        ("{}", "cache: { lock_timeout: 0s }\n", "cache.lock_timeout"),
    ] {
        assert_refused(&base(route_cache, global), &[want]);
    }
}
