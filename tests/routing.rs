//! Foundation behaviour through the real binary: routing, rewrites, errors, load
//! balancing, health checks, DNS names and forwarded headers.

mod common;
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

fn two_upstreams(a: &Upstream, b: &Upstream) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  a: {{ backends: [{{ addr: "{a}" }}] }}
  b: {{ backends: [{{ addr: "{b}" }}] }}
routes:
  - {{ name: catch-all, match: {{ path: "/api/**" }}, upstream: a }}
  - {{ name: users-any, match: {{ path: "/api/users/*" }}, upstream: a }}
  - {{ name: user, match: {{ path: "/api/users/:id", methods: [GET] }}, upstream: b, rewrite: "/v2/people/:id", method_fallthrough: true }}
  - {{ name: me, match: {{ path: /api/users/me }}, upstream: a, rewrite: /whoami }}
  - {{ name: files, match: {{ path: "/files/:bucket/**" }}, upstream: b, rewrite: "/store/:bucket/**" }}
  - {{ name: strip, match: {{ path: "/svc/**" }}, upstream: b, strip_prefix: /svc }}
  - {{ name: host, match: {{ host: "*.example.com", path: "/api/**" }}, upstream: b }}
  - {{ name: only-post, match: {{ path: /submit, methods: [POST, PUT] }}, upstream: a }}
  - {{ name: canary, match: {{ path: "/app/**", headers: {{ x-canary: "1" }} }}, upstream: b }}
  - {{ name: app, match: {{ path: "/app/**" }}, upstream: a }}
"#,
        a = a.addr,
        b = b.addr
    )
}

#[tokio::test]
async fn routing_precedence_rewrites_and_errors() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&two_upstreams(&a, &b)).await;
    let c = client();

    // literal beats param beats star beats double star
    let (s, _, v) = get_json(&c, &gw.url("/api/users/me")).await;
    assert_eq!(
        (s, v["upstream"].as_str(), v["path"].as_str()),
        (200, Some("a"), Some("/whoami"))
    );
    let (_, _, v) = get_json(&c, &gw.url("/api/users/42?x=1&y=2")).await;
    assert_eq!(v["upstream"], "b");
    assert_eq!(
        v["path"], "/v2/people/42",
        "param captured into the rewrite"
    );
    assert_eq!(v["query"], "x=1&y=2", "query kept on rewrite");
    let (_, _, v) = get_json(&c, &gw.url("/api/orders/1")).await;
    assert_eq!(
        (v["upstream"].as_str(), v["path"].as_str()),
        (Some("a"), Some("/api/orders/1"))
    );
    // a DELETE does not match the GET-only param route, which lets other methods fall
    // through (`method_fallthrough`): the star route takes it
    let r = c.delete(gw.url("/api/users/42")).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["upstream"].as_str(), v["path"].as_str()),
        (Some("a"), Some("/api/users/42"))
    );

    // ** captured into the rewrite, strip_prefix
    let (_, _, v) = get_json(&c, &gw.url("/files/pics/2024/cat.png")).await;
    assert_eq!(v["path"], "/store/pics/2024/cat.png");
    let (_, _, v) = get_json(&c, &gw.url("/svc/inner/x")).await;
    assert_eq!(v["path"], "/inner/x");
    let (_, _, v) = get_json(&c, &gw.url("/svc")).await;
    assert_eq!(v["path"], "/");

    // wildcard host beats the any-host route; Host with port and upper case
    let r = c
        .get(gw.url("/api/users/me"))
        .header("host", "Shop.Example.com:8080")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["upstream"], "b");

    // header-match routing
    let r = c
        .get(gw.url("/app/x"))
        .header("x-canary", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["upstream"], "b");
    let (_, _, v) = get_json(&c, &gw.url("/app/x")).await;
    assert_eq!(v["upstream"], "a");

    // 404 JSON with request id
    let (s, h, v) = get_json(&c, &gw.url("/nothing/here")).await;
    assert_eq!(s, 404);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(v["error"], "not_found");
    assert_eq!(v["request_id"].as_str(), h["x-request-id"].to_str().ok());

    // 405 with Allow
    let (s, h, v) = get_json(&c, &gw.url("/submit")).await;
    assert_eq!(s, 405);
    assert_eq!(h["allow"], "POST, PUT");
    assert_eq!(v["error"], "method_not_allowed");
    let r = c.post(gw.url("/submit")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn path_normalisation() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&two_upstreams(&a, &b)).await;

    // dot segments, repeated slashes and encoded unreserved characters are normalised
    let resp = raw(
        gw.port,
        b"GET /api//x/../users/%6De HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains("\"path\":\"/whoami\""),
        "normalised path routed to the literal route: {resp}"
    );

    // escaping the root is a 400 with the JSON body
    let resp = raw(
        gw.port,
        b"GET /api/%2e%2e/../etc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("\"error\":\"bad_request\""), "{resp}");
    // a bad escape is a 400
    let resp = raw(
        gw.port,
        b"GET /api/%zz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");

    // %2F and %5C are ambiguous (upstreams disagree on whether they separate segments):
    // refused by default, before routing
    for target in [
        &b"/api/users/..%2f..%2fadmin"[..],
        b"/api/users/a%5Cb",
        b"/api/users/a\\b",
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let resp = raw(gw.port, &req).await;
        assert!(
            resp.starts_with("HTTP/1.1 400") && resp.contains("bad_request"),
            "{}: {resp}",
            String::from_utf8_lossy(target)
        );
    }
}

#[tokio::test]
async fn request_ids_and_forwarded_headers() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&two_upstreams(&a, &b)).await;
    let c = client();

    // a valid incoming id is kept and echoed
    let r = c
        .get(gw.url("/api/x"))
        .header("x-request-id", "abc-123.def:9")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123.def:9");
    let v: Value = r.json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(h["x-request-id"], "abc-123.def:9");
    // the peer (127.0.0.1) is not a trusted proxy here: client values are replaced
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{}", gw.port));

    // an invalid id is replaced by a generated one
    let r = c
        .get(gw.url("/api/x"))
        .header("x-request-id", "bad id!")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "bad id!");
    assert_eq!(id.len(), 32);

    // hop-by-hop headers are not forwarded
    let r = c
        .get(gw.url("/api/x"))
        .header("connection", "keep-alive, x-secret-hop")
        .header("x-secret-hop", "1")
        .header("te", "gzip")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["headers"].get("x-secret-hop").is_none(), "{v}");
    assert!(v["headers"].get("te").is_none(), "{v}");
}

#[tokio::test]
async fn trusted_proxies_extend_forwarded_for() {
    let a = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  trusted_proxies: ["127.0.0.0/8"]
upstreams:
  a: {{ backends: [{{ addr: "{}" }}] }}
routes:
  - {{ match: {{ path: "/**" }}, upstream: a }}
"#,
        a.addr
    ))
    .await;
    let r = client()
        .get(gw.url("/x"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    assert_eq!(v["headers"]["x-real-ip"], "203.0.113.7");
}

#[tokio::test]
async fn weighted_round_robin_and_split() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c1 = Upstream::start("c").await;
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  weighted:
    lb: round_robin
    backends: [{{ addr: "{a}", weight: 3 }}, {{ addr: "{b}", weight: 1 }}]
  v1: {{ backends: [{{ addr: "{a}" }}] }}
  v2: {{ backends: [{{ addr: "{c}" }}] }}
  rnd:
    lb: random
    backends: [{{ addr: "{a}", weight: 1 }}, {{ addr: "{b}", weight: 1 }}]
  least:
    lb: least_request
    backends: [{{ addr: "{a}" }}, {{ addr: "{b}" }}]
routes:
  - {{ match: {{ path: "/w/**" }}, upstream: weighted }}
  - {{ match: {{ path: "/s/**" }}, split: [{{ upstream: v1, weight: 80 }}, {{ upstream: v2, weight: 20 }}] }}
  - {{ match: {{ path: "/r/**" }}, upstream: rnd }}
  - {{ match: {{ path: "/l/**" }}, upstream: least }}
"#,
        a = a.addr,
        b = b.addr,
        c = c1.addr
    ))
    .await;
    let c = client();
    let count = |v: &Value, m: &mut HashMap<String, usize>| {
        *m.entry(v["upstream"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    };

    // round robin with weights 3:1 is exact over a multiple of the weight sum
    let mut m = HashMap::new();
    for _ in 0..400 {
        let (_, _, v) = get_json(&c, &gw.url("/w/x")).await;
        count(&v, &mut m);
    }
    assert_eq!((m["a"], m["b"]), (300, 100), "{m:?}");

    // an 80/20 split over 1000 requests: within ±6 percentage points
    let mut m = HashMap::new();
    for _ in 0..1000 {
        let (_, _, v) = get_json(&c, &gw.url("/s/x")).await;
        count(&v, &mut m);
    }
    let share = m.get("c").copied().unwrap_or(0) as f64 / 1000.0;
    assert!(
        (0.14..=0.26).contains(&share),
        "canary share {share} from {m:?}"
    );

    // random 1:1 over 600 requests: each side 40–60% (a binomial(600, 0.5) has σ ≈ 12.2, so
    // ±60 is ±4.9σ). That share alone is also met, exactly, by round robin; what tells random
    // from round robin is the sequence: with independent picks about half of the 599
    // consecutive pairs go to the same backend (σ ≈ 12.2 again), with round robin none,
    // with a stuck picker all of them.
    let mut m = HashMap::new();
    let mut seq = Vec::new();
    for _ in 0..600 {
        let (_, _, v) = get_json(&c, &gw.url("/r/x")).await;
        count(&v, &mut m);
        seq.push(v["upstream"].as_str().unwrap_or("?").to_string());
    }
    let share = m.get("a").copied().unwrap_or(0) as f64 / 600.0;
    assert!(
        (0.4..=0.6).contains(&share),
        "random share {share} from {m:?}"
    );
    let repeats = seq.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(
        (240..=360).contains(&repeats),
        "{repeats} of 599 consecutive picks repeated the previous backend: not random"
    );

    // least request: a slow backend gets fewer of the concurrent requests
    a.set_mode(Mode::Delay(Duration::from_millis(200)));
    a.reset_hits();
    b.reset_hits();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let c = c.clone();
        let url = gw.url("/l/x");
        tasks.push(tokio::spawn(async move {
            let _ = c.get(url).send().await;
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    // the slow backend holds more requests in flight, so the fast one wins most choices
    assert!(
        b.hits() > a.hits(),
        "least_request: fast {} vs slow {}",
        b.hits(),
        a.hits()
    );
}

#[tokio::test]
async fn consistent_hash_is_sticky() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  h:
    lb: consistent_hash
    hash_key: "header:x-user"
    backends: [{{ addr: "{}" }}, {{ addr: "{}" }}, {{ addr: "{}" }}]
  ck:
    lb: consistent_hash
    hash_key: "cookie:sid"
    backends: [{{ addr: "{}" }}, {{ addr: "{}" }}, {{ addr: "{}" }}]
routes:
  - {{ match: {{ path: "/h/**" }}, upstream: h }}
  - {{ match: {{ path: "/c/**" }}, upstream: ck }}
"#,
        ups[0].addr, ups[1].addr, ups[2].addr, ups[0].addr, ups[1].addr, ups[2].addr
    ))
    .await;
    let c = client();
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let mut first = None;
        for _ in 0..5 {
            let r = c
                .get(gw.url("/h/x"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            let v: Value = r.json().await.unwrap();
            let u = v["upstream"].as_str().unwrap().to_string();
            match &first {
                None => first = Some(u.clone()),
                Some(f) => assert_eq!(f, &u, "user-{user} moved between backends"),
            }
            seen.insert(u);
        }
    }
    assert_eq!(seen.len(), 3, "30 keys spread over all three backends");
    for sid in 0..10 {
        let mut first = None;
        for _ in 0..3 {
            let r = c
                .get(gw.url("/c/x"))
                .header("cookie", format!("theme=dark; sid=s{sid}"))
                .send()
                .await
                .unwrap();
            let v: Value = r.json().await.unwrap();
            let u = v["upstream"].as_str().unwrap().to_string();
            assert_eq!(first.get_or_insert(u.clone()), &u);
        }
    }
}

#[tokio::test]
async fn health_checks_remove_and_restore_backends() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}" }}
upstreams:
  u:
    backends: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }}
routes:
  - {{ match: {{ path: "/**" }}, upstream: u }}
"#,
        a.addr, b.addr
    ))
    .await;
    let c = client();
    // b reports unhealthy: it leaves rotation
    b.set_mode(Mode::Status(503));
    let gone = eventually(Duration::from_secs(10), || async {
        let (s, _, v) = get_json(&c, &gw.admin_url("/readyz")).await;
        s == 200 && v["upstreams"]["u"]["healthy_backends"] == 1
    })
    .await;
    assert!(gone, "b should be marked unhealthy");
    b.reset_hits();
    for _ in 0..20 {
        let (s, _, v) = get_json(&c, &gw.url("/x")).await;
        assert_eq!((s, v["upstream"].as_str()), (200, Some("a")));
    }
    assert_eq!(b.hits(), 0);

    // both down: readyz is 503 and requests get a JSON 503
    a.set_mode(Mode::Status(503));
    let down = eventually(Duration::from_secs(10), || async {
        get_json(&c, &gw.admin_url("/readyz")).await.0 == 503
    })
    .await;
    assert!(down, "readyz should fail with no healthy backend");
    let (s, h, v) = get_json(&c, &gw.url("/x")).await;
    assert_eq!(s, 503);
    assert_eq!(v["error"], "no_healthy_backend");
    assert!(h.contains_key("retry-after"));

    // recovery puts both back
    a.set_mode(Mode::Echo);
    b.set_mode(Mode::Echo);
    let back = eventually(Duration::from_secs(10), || async {
        let (_, _, v) = get_json(&c, &gw.admin_url("/readyz")).await;
        v["upstreams"]["u"]["healthy_backends"] == 2
    })
    .await;
    assert!(back, "both backends should come back");
    let mut m = HashMap::new();
    for _ in 0..10 {
        let (_, _, v) = get_json(&c, &gw.url("/x")).await;
        *m.entry(v["upstream"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(m.len(), 2, "{m:?}");
}

#[tokio::test]
async fn tcp_health_check_and_dns_names() {
    let mut a = Upstream::start("a").await;
    let port = a.addr.port();
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}" }}
upstreams:
  byname:
    backends: [{{ addr: "localhost:{port}" }}]
    dns_refresh: 1s
    health_check: {{ type: tcp, interval: 200ms, timeout: 300ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
routes:
  - {{ match: {{ path: "/**" }}, upstream: byname }}
"#
    ))
    .await;
    let c = client();
    let (s, _, v) = get_json(&c, &gw.url("/x")).await;
    assert_eq!(
        (s, v["upstream"].as_str()),
        (200, Some("a")),
        "localhost resolved"
    );
    a.kill();
    let down = eventually(Duration::from_secs(10), || async {
        get_json(&c, &gw.admin_url("/readyz")).await.0 == 503
    })
    .await;
    assert!(down, "the TCP check should see the dead backend");
    a.revive().await;
    let up = eventually(Duration::from_secs(10), || async {
        get_json(&c, &gw.admin_url("/readyz")).await.0 == 200
    })
    .await;
    assert!(up, "the TCP check should see the backend again");
    let (s, _, _) = get_json(&c, &gw.url("/x")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn dead_backend_connect_failures_go_elsewhere() {
    let a = Upstream::start("a").await;
    let dead_reserved = dead_port(); // refuses, and no parallel test can bind it
    let dead = dead_reserved.port;
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  u: {{ backends: [{{ addr: "127.0.0.1:{dead}" }}, {{ addr: "{}" }}] }}
  gone: {{ backends: [{{ addr: "127.0.0.1:{dead}" }}] }}
routes:
  - {{ match: {{ path: "/u/**" }}, upstream: u }}
  - {{ match: {{ path: "/gone/**" }}, upstream: gone }}
"#,
        a.addr
    ))
    .await;
    let c = client();
    for _ in 0..10 {
        let (s, _, v) = get_json(&c, &gw.url("/u/x")).await;
        assert_eq!((s, v["upstream"].as_str()), (200, Some("a")));
    }
    let (s, h, v) = get_json(&c, &gw.url("/gone/x")).await;
    assert_eq!(s, 502);
    assert_eq!(v["error"], "bad_gateway");
    assert_eq!(h["content-type"], "application/json");
}
