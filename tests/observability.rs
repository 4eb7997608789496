//! Observability and the admin API through the real binary: metrics after a known
//! sequence of requests, the access-log line, admin auth, runtime backend registration,
//! and trace context propagation.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const KEY: &str = "observability-test-key-0123456789abcdef";

fn config(a: &Upstream, b: &Upstream, extra: &str) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  main: {{ backends: [{{ addr: "{a}" }}] }}
  flaky:
    backends: [{{ addr: "{b}" }}]
    circuit_breaker: {{ failure_threshold: 2, open_for: 60s }}
    retry: {{ attempts: 0 }}
  dynamic:
    backends: []
auth:
  api_keys:
    keys: [{{ id: metrics-user, sha256: "{key}" }}]
rate_limits:
  policies:
    tiny: {{ key: ip, requests: 1, per: 60s }}
access_log: {{ path: "{{dir}}/access.log" }}
routes:
  - {{ name: main, match: {{ path: "/main/**" }}, upstream: main }}
  - {{ name: secure, match: {{ path: "/secure/**" }}, upstream: main, auth: {{ any_of: [api_key] }} }}
  - {{ name: limited, match: {{ path: "/limited/**" }}, upstream: main, rate_limit: [tiny] }}
  - {{ name: flaky, match: {{ path: "/flaky/**" }}, upstream: flaky }}
  - {{ name: dynamic, match: {{ path: "/dyn/**" }}, upstream: dynamic }}
{extra}
"#,
        a = a.addr,
        b = b.addr,
        key = sha(KEY),
    )
}

#[tokio::test]
async fn metrics_after_a_known_sequence() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    b.set_mode(Mode::Status(503));
    let gw = Gateway::start(&config(&a, &b, "")).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/main/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        c.get(gw.url("/nowhere")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        c.get(gw.url("/secure/x")).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        c.get(gw.url("/limited/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(gw.url("/limited/x")).send().await.unwrap().status(),
        429
    );
    for _ in 0..2 {
        assert_eq!(
            c.get(gw.url("/flaky/x")).send().await.unwrap().status(),
            503
        );
    }
    assert_eq!(
        c.get(gw.url("/flaky/x")).send().await.unwrap().status(),
        503
    ); // breaker open now

    // logging (and so counting) runs just after each response is sent: let it settle
    let settled = eventually(Duration::from_secs(5), || async {
        let m = metrics(&gw).await;
        series(&m, "portcullis_requests_in_flight") == Some(0.0)
            && series(&m, "portcullis_requests_total{method=\"GET\",route=\"flaky\",status=\"503\",upstream=\"flaky\"}") == Some(3.0)
    })
    .await;
    assert!(settled, "metrics settle");
    let m = metrics(&gw).await;
    let get = |p: &str| series(&m, p).unwrap_or_else(|| panic!("no series {p} in:\n{m}"));
    assert_eq!(get("portcullis_requests_total{method=\"GET\",route=\"main\",status=\"200\",upstream=\"main\"}"), 3.0);
    assert_eq!(
        get("portcullis_requests_total{method=\"GET\",route=\"\",status=\"404\",upstream=\"\"}"),
        1.0
    );
    assert_eq!(get("portcullis_requests_total{method=\"GET\",route=\"secure\",status=\"401\",upstream=\"\"}"), 1.0);
    assert_eq!(get("portcullis_requests_total{method=\"GET\",route=\"limited\",status=\"429\",upstream=\"\"}"), 1.0);
    assert_eq!(get("portcullis_requests_total{method=\"GET\",route=\"flaky\",status=\"503\",upstream=\"flaky\"}"), 3.0);
    assert_eq!(
        get("portcullis_auth_failures_total{reason=\"missing\"}"),
        1.0
    );
    assert_eq!(get("portcullis_rate_limited_total{policy=\"tiny\"}"), 1.0);
    assert_eq!(
        get(&format!(
            "portcullis_circuit_state{{backend=\"{}\",upstream=\"flaky\"}}",
            b.addr
        )),
        1.0
    );
    assert_eq!(
        get(&format!(
            "portcullis_backend_healthy{{backend=\"{}\",upstream=\"main\"}}",
            a.addr
        )),
        1.0
    );
    assert_eq!(
        get("portcullis_request_duration_seconds_count{route=\"main\"}"),
        3.0
    );
    assert_eq!(
        get("portcullis_upstream_duration_seconds_count{upstream=\"main\"}"),
        4.0
    );
    assert_eq!(get("portcullis_requests_in_flight"), 0.0);
    assert_eq!(get("portcullis_config_generation"), 1.0);
    assert!(m.contains("portcullis_build_info{version="));
    // raw paths never become labels
    assert!(!m.contains("/main/x"));
}

#[tokio::test]
async fn access_log_line_has_the_fields() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&config(&a, &b, "")).await;
    let r = client()
        .get(gw.url("/secure/thing?q=1"))
        .header("x-request-id", "log-test-1")
        .header("x-api-key", KEY)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let path = gw.dir.path().join("access.log");
    let mut line = None;
    for _ in 0..50 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("log-test-1")) {
            line = Some(l.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = line.expect("access log line written");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["request_id"], "log-test-1");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/secure/thing");
    assert_eq!(v["route"], "secure");
    assert_eq!(v["upstream"], "main");
    assert_eq!(v["backend"], a.addr.to_string());
    assert_eq!(v["status"], 200);
    assert_eq!(v["identity"], "api_key:metrics-user");
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["bytes_in"], 5);
    assert!(v["bytes_out"].as_u64().unwrap() > 0);
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(v["upstream_ms"].as_f64().is_some());
    assert_eq!(v["retries"], 0);
    assert_eq!(v["trace_id"].as_str().unwrap().len(), 32);
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn admin_auth_and_health_endpoints() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&config(&a, &b, "")).await;
    let c = client();
    assert_eq!(
        c.get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // /readyz: `dynamic` has no backend yet
    let r = c.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["upstreams"]["dynamic"]["ready"], false);
    assert_eq!(v["upstreams"]["main"]["ready"], true);

    assert_eq!(
        c.get(gw.admin_url("/admin/status"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = c
        .get(gw.admin_url("/admin/status"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let (s, v) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["generation"], 1);
    assert_eq!(
        v["upstreams"]["main"]["backends"][0]["addr"],
        a.addr.to_string()
    );
    assert_eq!(v["upstreams"]["main"]["backends"][0]["healthy"], true);
    assert_eq!(v["upstreams"]["main"]["backends"][0]["circuit"], "closed");
    assert!(v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "secure"));
}

#[tokio::test]
async fn admin_api_is_disabled_without_a_token() {
    let a = Upstream::start("a").await;
    let gw = Gateway::start(&format!(
        "server:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin_port}}\" }}\nupstreams:\n  u: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ match: {{ path: \"/**\" }}, upstream: u }}\n",
        a.addr
    ))
    .await;
    let r = client()
        .get(gw.admin_url("/admin/status"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        client()
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn backend_registration_heartbeat_and_deregistration() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let n1 = Upstream::start("n1").await;
    let n2 = Upstream::start("n2").await;
    let gw = Gateway::start(&config(&a, &b, "")).await;
    let c = client();
    let (s, _, v) = get_json(&c, &gw.url("/dyn/x")).await;
    assert_eq!(s, 503, "{v}");

    let (s, _) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/upstreams/dynamic/backends",
            Some(json!({ "addr": n1.addr.to_string() })),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/upstreams/dynamic/backends",
            Some(json!({ "addr": n2.addr.to_string(), "weight": 1, "ttl": "2s" })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let registered = Instant::now();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let (s, _, v) = get_json(&c, &gw.url("/dyn/x")).await;
        assert_eq!(s, 200);
        seen.insert(v["upstream"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "both registered backends serve: {seen:?}");

    let backends = |v: &Value| {
        v["upstreams"]["dynamic"]["backends"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0)
    };
    let heartbeat = || async {
        gw.admin(
            reqwest::Method::PUT,
            &format!("/admin/upstreams/dynamic/backends/{}/heartbeat", n2.addr),
            None,
        )
        .await
        .0
    };
    // Heartbeats keep n2 past twice its 2 s TTL. They go every 200 ms, so each one renews
    // with 1.8 s to spare: nine times the 200 ms of jitter this shared machine shows.
    let mut last_beat = Instant::now();
    while registered.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last_beat = Instant::now();
        assert_eq!(heartbeat().await, 200, "kept alive by its heartbeats");
    }
    let (_, v) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(backends(&v), 2, "{v}");
    // once they stop, its TTL lapses and it leaves rotation: awaited on the admin status,
    // then checked not to have gone early (a lapse is never before the TTL is up)
    assert!(
        eventually(Duration::from_secs(15), || async {
            let (_, v) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
            backends(&v) == 1
        })
        .await,
        "the registration without heartbeats expired"
    );
    assert!(
        last_beat.elapsed() >= Duration::from_secs(2),
        "expired {:?} after the last heartbeat, before its 2 s TTL",
        last_beat.elapsed()
    );
    n2.reset_hits();
    for _ in 0..6 {
        let (_, _, v) = get_json(&c, &gw.url("/dyn/x")).await;
        assert_eq!(v["upstream"], "n1");
    }
    assert_eq!(n2.hits(), 0);
    let (s, _) = gw
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/upstreams/dynamic/backends/{}/heartbeat", n2.addr),
            None,
        )
        .await;
    assert_eq!(s, 404, "an expired registration is gone");

    // deregistration
    let (s, _) = gw
        .admin(
            reqwest::Method::DELETE,
            &format!("/admin/upstreams/dynamic/backends/{}", n1.addr),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(get_json(&c, &gw.url("/dyn/x")).await.0, 503);

    // bad input gets a 400 and changes nothing
    let (s, _) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/upstreams/dynamic/backends",
            Some(json!({ "addr": "nope" })),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/upstreams/missing/backends",
            Some(json!({ "addr": "127.0.0.1:1" })),
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn trace_context_is_propagated() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&config(&a, &b, "")).await;
    let c = client();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c
        .get(gw.url("/main/x"))
        .header("traceparent", incoming)
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let tp = v["headers"]["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert_ne!(tp, incoming, "this hop has its own span id");
    assert_eq!(v["headers"]["tracestate"], "vendor=abc");
    // none incoming: one is created
    let (_, _, v) = get_json(&c, &gw.url("/main/x")).await;
    let tp = v["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(tp.len(), 55);
    assert!(tp.starts_with("00-"));
}
