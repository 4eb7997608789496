//! proxy-wasm filters through the real binary: the test filters of tests/wasm (built with
//! the AssemblyScript SDK `@solo-io/proxy-runtime`, or hand-written WAT) on real routes, in
//! front of real upstreams.

mod common;
use common::*;
use std::time::Duration;

fn filter(name: &str) -> String {
    format!("{}/tests/wasm/{name}.wasm", env!("CARGO_MANIFEST_DIR"))
}

/// Server, upstreams `u` at `up` (and `authz` at `authz` when given), then `routes`.
fn config(up: &Upstream, authz: Option<&Upstream>, routes: &str) -> String {
    let authz = authz
        .map(|a| format!("  authz: {{ backends: [{{ addr: \"{}\" }}] }}\n", a.addr))
        .unwrap_or_default();
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
{authz}auth:
  api_keys:
    header: x-api-key
    keys:
      - {{ id: app, sha256: "{key}" }}
routes:
{routes}"#,
        up = up.addr,
        key = sha("wasm-test-key-0123456789abcdefghijkl"),
    )
}

fn errors(m: &str, route: &str, filter: &str, kind: &str) -> f64 {
    series(
        m,
        &format!(
            "portcullis_wasm_errors_total{{filter=\"{filter}\",kind=\"{kind}\",route=\"{route}\"}}"
        ),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_header_filter_changes_the_request_and_the_response() {
    let up = Upstream::start("u").await;
    let routes = format!(
        r#"  - name: hdr
    match: {{ path: "/**" }}
    upstream: u
    wasm:
      - {{ file: "{}", root_id: add_header, config: "from the config" }}
"#,
        filter("add_header")
    );
    let gw = Gateway::start(&config(&up, None, &routes)).await;
    let r = send(&client(), reqwest::Method::GET, &gw.url("/a"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.h("x-wasm-filter"), Some("add-header"));
    assert_eq!(r.json()["headers"]["x-wasm-added"], "from the config");
    assert!(r.h("x-request-id").is_some());
}

#[tokio::test]
async fn pseudo_headers_rewrite_the_path_and_show_the_status() {
    let up = Upstream::start("u").await;
    let routes = format!(
        r#"  - name: pseudo
    match: {{ path: "/**" }}
    upstream: u
    wasm:
      - {{ file: "{}" }}
"#,
        filter("headers")
    );
    let gw = Gateway::start(&config(&up, None, &routes)).await;
    let r = send(
        &client(),
        reqwest::Method::GET,
        &gw.url("/orig?q=1"),
        &[("x-remove-me", "1")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("x-status-seen"), Some("200"));
    let echo = r.json();
    assert_eq!(echo["path"], "/rewritten", "{echo}");
    assert!(echo["headers"].get("x-remove-me").is_none(), "{echo}");
    // :method, :path, :authority, :scheme and the headers the gateway saw (at least
    // host, x-remove-me, accept).
    let count: u32 = echo["headers"]["x-pair-count"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(count >= 7, "{echo}");
}

#[tokio::test]
async fn a_deny_filter_answers_403_itself_and_nothing_goes_upstream() {
    let up = Upstream::start("u").await;
    let routes = format!(
        r#"  - name: deny
    match: {{ path: "/**" }}
    upstream: u
    wasm:
      - {{ file: "{}", root_id: deny, config: x-block }}
"#,
        filter("deny")
    );
    let gw = Gateway::start(&config(&up, None, &routes)).await;
    let c = client();
    let r = send(
        &c,
        reqwest::Method::GET,
        &gw.url("/a"),
        &[("x-block", "yes")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "denied by wasm filter\n");
    assert_eq!(r.h("x-denied-by"), Some("wasm"));
    assert_eq!(r.h("content-type"), Some("text/plain"));
    assert!(r.h("x-request-id").is_some());
    assert_eq!(up.hits(), 0, "a denied request never reaches the upstream");
    let r = send(&c, reqwest::Method::GET, &gw.url("/a"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_body_filter_rewrites_the_response_body() {
    let up = Upstream::start("u").await;
    up.set_handler(std::sync::Arc::new(|_req| {
        Some(resp(200, b"hello world, hello".to_vec(), "text/plain"))
    }));
    let routes = format!(
        r#"  - name: body
    match: {{ path: "/**" }}
    upstream: u
    wasm:
      - {{ file: "{}", root_id: body_rewrite, config: "hello=goodbye" }}
"#,
        filter("body_rewrite")
    );
    let gw = Gateway::start(&config(&up, None, &routes)).await;
    let r = send(&client(), reqwest::Method::GET, &gw.url("/page"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "goodbye world, goodbye");
}

#[tokio::test]
async fn a_body_filter_given_the_whole_request_body_rewrites_what_goes_upstream() {
    let up = Upstream::start("u").await;
    let routes = format!(
        r#"  - name: body
    match: {{ path: "/**" }}
    upstream: u
    wasm:
      - {{ file: "{}", root_id: body_rewrite, config: "hello=goodbye", buffer_request_body: true }}
"#,
        filter("body_rewrite")
    );
    let gw = Gateway::start(&config(&up, None, &routes)).await;
    let r = client()
        .post(gw.url("/submit"))
        .body("hello there, hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await.unwrap();
    // The upstream got the rewritten body, with its length.
    assert_eq!(echo["body_bytes"], "goodbye there, goodbye".len());
    assert_eq!(echo["headers"]["content-length"], "22");
}

#[tokio::test]
async fn a_filter_asks_another_upstream_with_dispatch_http_call() {
    let up = Upstream::start("u").await;
    let authz = Upstream::start("authz").await;
    authz.set_handler(std::sync::Arc::new(|req| {
        let user = req
            .headers()
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Some(if user == "ann" && req.uri().path() == "/check" {
            resp(200, b"ok:ann".to_vec(), "text/plain")
        } else {
            resp(403, b"no".to_vec(), "text/plain")
        })
    }));
    let routes = format!(
        r#"  - name: called
    match: {{ path: "/**" }}
    upstream: u
    wasm:
      - {{ file: "{}", root_id: http_call, config: authz }}
"#,
        filter("http_call")
    );
    let gw = Gateway::start(&config(&up, Some(&authz), &routes)).await;
    let c = client();
    let r = send(
        &c,
        reqwest::Method::GET,
        &gw.url("/x"),
        &[("x-user", "ann")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-authz"], "ok:ann");
    let r = send(
        &c,
        reqwest::Method::GET,
        &gw.url("/x"),
        &[("x-user", "bob")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "authz said no\n");
    assert_eq!(authz.hits(), 2, "one call per request");
    assert_eq!(up.hits(), 1, "only ann's request went on");
}

#[tokio::test]
async fn a_trapping_or_looping_filter_costs_one_500_and_a_metric_never_the_gateway() {
    let up = Upstream::start("u").await;
    let routes = format!(
        r#"  - name: bad
    match: {{ path: "/**" }}
    upstream: u
    wasm:
      - {{ file: "{}", root_id: misbehave, time_limit: 50ms, max_memory: 8MiB }}
"#,
        filter("misbehave")
    );
    let gw = Gateway::start(&config(&up, None, &routes)).await;
    let c = client();
    for (header, kind) in [
        ("x-trap", "trap"),
        ("x-loop", "timeout"),
        ("x-oom", "memory"),
    ] {
        let r = send(&c, reqwest::Method::GET, &gw.url("/a"), &[(header, "1")]).await;
        assert_eq!(r.status, 500, "{header}");
        assert_eq!(r.json()["error"], "plugin_error", "{header}: {}", r.text());
        let m = metrics(&gw).await;
        assert_eq!(errors(&m, "bad", "misbehave", kind), 1.0, "{header}:\n{m}");
        // The workers are free: the next requests are served.
        for _ in 0..3 {
            let r = send(&c, reqwest::Method::GET, &gw.url("/a"), &[]).await;
            assert_eq!(r.status, 200, "after {header}");
        }
    }
    // Loops on both workers at once, while a well-behaved client keeps going.
    let loops = (0..4).map(|_| {
        let (c, url) = (c.clone(), gw.url("/a"));
        tokio::spawn(async move { send(&c, reqwest::Method::GET, &url, &[("x-loop", "1")]).await })
    });
    let load = Load::start(&[gw.url("/a")], 2);
    for l in loops {
        assert_eq!(l.await.unwrap().status, 500);
    }
    load.progress(20).await;
    let stats = load.stop().await;
    assert_eq!(stats.failures, 0, "{stats:?}");
    let m = metrics(&gw).await;
    assert_eq!(errors(&m, "bad", "misbehave", "timeout"), 5.0, "{m}");
    assert_eq!(
        up.hits(),
        9 + stats.done,
        "failed requests never went upstream"
    );
}

#[tokio::test]
async fn properties_shared_data_metrics_and_timers() {
    let up = Upstream::start("u").await;
    let routes = format!(
        r#"  - name: props
    match: {{ path: "/**" }}
    upstream: u
    auth: {{ any_of: [api_key] }}
    wasm:
      - {{ file: "{}", config: "props says hi" }}
"#,
        filter("props")
    );
    let gw = Gateway::start(&config(&up, None, &routes)).await;
    let c = client();
    let key = ("x-api-key", "wasm-test-key-0123456789abcdefghijkl");
    let mut hits = Vec::new();
    for _ in 0..3 {
        let r = send(&c, reqwest::Method::GET, &gw.url("/p?q=1"), &[key]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let h = &r.json()["headers"];
        assert_eq!(h["x-route"], "props");
        assert_eq!(h["x-client"], "127.0.0.1");
        assert_eq!(h["x-subject"], "app");
        assert_eq!(h["x-path"], "/p?q=1");
        hits.push(h["x-hits"].as_str().unwrap().parse::<u32>().unwrap());
    }
    assert_eq!(hits, [1, 2, 3], "shared data counts across instances");
    let m = metrics(&gw).await;
    assert_eq!(
        series(
            &m,
            "portcullis_wasm_filter_counter{filter=\"props\",name=\"requests\"}"
        ),
        Some(3.0),
        "{m}"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            let m = metrics(&gw).await;
            series(
                &m,
                "portcullis_wasm_filter_counter{filter=\"props\",name=\"ticks\"}",
            )
            .is_some_and(|t| t >= 2.0)
        })
        .await,
        "the root context's timer ticks"
    );
    assert!(
        gw.log().contains("props says hi"),
        "proxy_log reaches the log"
    );
}

#[tokio::test]
async fn a_reload_with_a_changed_module_takes_it_with_no_failed_request() {
    let up = Upstream::start("u").await;
    let route = |file: &str| {
        format!(
            r#"  - name: swap
    match: {{ path: "/**" }}
    upstream: u
    wasm:
      - {{ file: "{file}", root_id: add_header, config: v2 }}
"#
        )
    };
    let gw = Gateway::start(&config(&up, None, &route(&filter("noop")))).await;
    let c = client();
    let r = send(&c, reqwest::Method::GET, &gw.url("/a"), &[]).await;
    assert_eq!((r.status, r.h("x-wasm-filter")), (200, None));
    // From now on the file is relative to the config's directory.
    let file = gw.dir.path().join("filter.wasm");
    std::fs::copy(filter("noop"), &file).unwrap();
    gw.write_config(&config(&up, None, &route("filter.wasm")));
    let load = Load::start(&[gw.url("/a")], 4);
    load.progress(20).await;
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    load.progress(20).await;
    // The same config, a different module behind the same file name.
    std::fs::copy(filter("add_header"), &file).unwrap();
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    load.progress(50).await;
    let stats = load.stop().await;
    assert_eq!(stats.failures, 0, "{stats:?}");
    let r = send(&c, reqwest::Method::GET, &gw.url("/a"), &[]).await;
    assert_eq!(r.h("x-wasm-filter"), Some("add-header"));
    assert_eq!(r.json()["headers"]["x-wasm-added"], "v2");
    // A broken module is refused and the running one stays.
    std::fs::write(&file, b"not wasm").unwrap();
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_ne!(s, 200, "{v}");
    assert!(v.to_string().contains("wasm[0].file"), "{v}");
    let r = send(&c, reqwest::Method::GET, &gw.url("/a"), &[]).await;
    assert_eq!(r.h("x-wasm-filter"), Some("add-header"));
}

#[test]
fn bad_wasm_entries_are_config_errors_with_key_and_line() {
    let yaml = |entry: &str| {
        format!(
            "server:\n  listen: [\"127.0.0.1:1\"]\nupstreams:\n  u: {{ backends: [{{ addr: \"127.0.0.1:9\" }}] }}\nroutes:\n  - match: {{ path: /a }}\n    upstream: u\n    wasm:\n      - {entry}\n"
        )
    };
    assert_refused(
        &yaml("{ file: /nonexistent/f.wasm }"),
        &[":9:", "routes[0].wasm[0].file", "cannot read"],
    );
    let text = format!("{}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
    assert_refused(
        &yaml(&format!("{{ file: \"{text}\" }}")),
        &[":9:", "routes[0].wasm[0].file", "not a valid module"],
    );
    assert_refused(
        &yaml(&format!(
            "{{ file: \"{}\", root_id: nope }}",
            filter("deny")
        )),
        &["routes[0].wasm[0].file", "trapped"],
    );
    assert_refused(
        &yaml(&format!("{{ file: \"{}\", colour: red }}", filter("noop"))),
        &["routes[0].wasm[0]", "colour"],
    );
    assert_refused(
        &yaml(&format!(
            "{{ file: \"{}\", time_limit: 0s }}",
            filter("noop")
        )),
        &["routes[0].wasm[0].time_limit"],
    );
    let (ok, out) = validate(&yaml(&format!("{{ file: \"{}\" }}", filter("noop"))));
    assert!(ok, "{out}");
}

/// Ends the daemon at the end of the test, whatever happens.
/// A daemon forks after loading its config: the time limit and the timers must run in the
/// process that serves (threads do not survive a fork). The modules are relative to the
/// config file, which the shell names relatively.
#[tokio::test]
async fn time_limits_and_timers_hold_in_a_daemon() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    std::fs::copy(filter("misbehave"), dir.path().join("misbehave.wasm")).unwrap();
    std::fs::copy(filter("props"), dir.path().join("props.wasm")).unwrap();
    let yaml = format!(
        r#"
server:
  listen: ["127.0.0.1:{port}"]
  admin: {{ listen: "127.0.0.1:{admin_port}", token_sha256: "{sha}" }}
upstreams:
  u: {{ backends: [{{ addr: "{addr}" }}] }}
routes:
  - name: d
    match: {{ path: "/**" }}
    upstream: u
    wasm:
      - {{ file: misbehave.wasm, root_id: misbehave, time_limit: 50ms }}
      - {{ file: props.wasm }}
"#,
        sha = admin_token_sha256(),
        addr = up.addr
    );
    std::fs::write(dir.path().join("portcullis.yaml"), yaml).unwrap();
    launch_daemon(dir.path());
    let read_pid = || daemon_pid(dir.path());
    let error_log = || std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
    let c = client();
    let url = format!("http://127.0.0.1:{port}/x");
    let started = eventually(Duration::from_secs(20), || async {
        read_pid().is_some() && c.get(&url).send().await.is_ok()
    })
    .await;
    let _daemon = Daemon(read_pid());
    assert!(started, "the daemon did not start:\n{}", error_log());
    let r = send(&c, reqwest::Method::GET, &url, &[("x-loop", "1")]).await;
    assert_eq!(r.status, 500, "{}", error_log());
    let r = send(&c, reqwest::Method::GET, &url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-route"], "d");
    let metrics_url = format!("http://127.0.0.1:{admin_port}/metrics");
    let ticking = eventually(Duration::from_secs(10), || async {
        let m = c
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        series(
            &m,
            "portcullis_wasm_filter_counter{filter=\"props\",name=\"ticks\"}",
        )
        .is_some_and(|t| t >= 2.0)
    })
    .await;
    assert!(ticking, "the timer ticks in the daemon:\n{}", error_log());
}

/// A filter's new `:path` is checked like a client's target and then is the request: the
/// cache key and the target forwarded are the new one, in its canonical form, and an
/// ambiguous one is a 400 that never reaches the upstream.
#[tokio::test]
async fn a_path_a_filter_sets_is_checked_keyed_and_forwarded_as_one() {
    let up = Upstream::start("u").await;
    let routes = format!(
        r#"  - name: rw
    match: {{ path: "/**" }}
    upstream: u
    cache: {{ default_ttl: 60s }}
    wasm:
      - {{ file: "{}" }}
"#,
        filter("set_path")
    );
    let gw = Gateway::start(&config(&up, None, &routes)).await;
    let c = client();
    // `/two/./x` is normalised to `/two/x`: that is what goes upstream and what is keyed
    let first = send(
        &c,
        reqwest::Method::GET,
        &gw.url("/one"),
        &[("x-new-path", "/two/./x?q=1")],
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(first.json()["path"], "/two/x", "{}", first.text());
    assert_eq!(up.hits_for("/two/x"), 1);
    // a client asking for the canonical target gets what the filter's request stored
    let second = send(&c, reqwest::Method::GET, &gw.url("/two/x?q=1"), &[]).await;
    assert_eq!(second.x_cache(), "HIT", "{}", second.text());
    assert_eq!(second.body, first.body);
    assert_eq!(up.hits(), 1);
    // targets a client could not send are refused the same way when a filter sets them
    for bad in ["/a/..%2fsecret", "/..", "/a/%2e%2e/%2e%2e/b"] {
        let req = format!(
            "GET /one HTTP/1.1\r\nHost: 127.0.0.1\r\nx-new-path: {bad}\r\nConnection: close\r\n\r\n"
        );
        let resp = raw(gw.port, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{bad}: {resp}");
        assert!(resp.contains("\"bad_request\""), "{bad}: {resp}");
        assert!(
            resp.contains("the target a plugin set is refused"),
            "{bad}: {resp}"
        );
    }
    assert_eq!(up.hits(), 1, "no refused target reached the upstream");
}
