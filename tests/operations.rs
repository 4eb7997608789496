//! Operations through the real binary: hot reload (SIGHUP, admin, file watch) with state
//! kept across reloads, a bad config that never replaces the running one, a 10,000-route
//! reload under load, and zero-downtime binary upgrades over Pingora's upgrade socket.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn base(a: &Upstream, b: &Upstream, routes: &str, extra: &str) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  a: {{ backends: [{{ addr: "{a}" }}] }}
  b:
    backends: [{{ addr: "{b}" }}]
    circuit_breaker: {{ failure_threshold: 2, open_for: 60s }}
    retry: {{ attempts: 0 }}
  dynamic: {{ backends: [] }}
rate_limits:
  policies:
    small: {{ key: ip, requests: 3, per: 60s }}
{extra}
routes:
{routes}
"#,
        a = a.addr,
        b = b.addr
    )
}

const ROUTES_V1: &str = r#"  - { name: svc, match: { path: "/svc/**" }, upstream: a }
  - { name: flaky, match: { path: "/flaky/**" }, upstream: b }
  - { name: limited, match: { path: "/limited/**" }, upstream: a, rate_limit: [small] }
  - { name: dyn, match: { path: "/dyn/**" }, upstream: dynamic }"#;

const ROUTES_V2: &str = r#"  - { name: svc, match: { path: "/svc/**" }, upstream: b }
  - { name: flaky, match: { path: "/flaky/**" }, upstream: b }
  - { name: limited, match: { path: "/limited/**" }, upstream: a, rate_limit: [small] }
  - { name: dyn, match: { path: "/dyn/**" }, upstream: dynamic }
  - { name: new, match: { path: "/new/**" }, upstream: a }"#;

async fn upstream_of(gw: &Gateway, path: &str) -> (u16, String) {
    let Ok(r) = client().get(gw.url(path)).send().await else {
        return (0, String::new());
    };
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (s, v["upstream"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn reload_by_signal_admin_and_watch_keeps_state() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let n = Upstream::start("n").await;
    let gw = Gateway::start(&base(&a, &b, ROUTES_V1, "")).await;
    let c = client();

    // build up state: an open breaker on b, a used rate limit, a registered backend
    b.set_mode(Mode::Status(503));
    for _ in 0..3 {
        c.get(gw.url("/flaky/x")).send().await.unwrap();
    }
    let (_, v) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(v["upstreams"]["b"]["backends"][0]["circuit"], "open");
    for _ in 0..2 {
        assert_eq!(
            c.get(gw.url("/limited/x")).send().await.unwrap().status(),
            200
        );
    }
    let (s, _) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/upstreams/dynamic/backends",
            Some(json!({ "addr": n.addr.to_string() })),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(upstream_of(&gw, "/dyn/x").await, (200, "n".to_string()));

    // SIGHUP with routes changed
    gw.write_config(&base(&a, &b, ROUTES_V2, ""));
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            upstream_of(&gw, "/new/x").await.0 == 200
        })
        .await,
        "SIGHUP reload applied:\n{}",
        gw.log()
    );
    let (_, v) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(v["generation"], 2);
    // state of unchanged entities survived
    assert_eq!(
        v["upstreams"]["b"]["backends"][0]["circuit"], "open",
        "breaker state kept"
    );
    assert_eq!(
        c.get(gw.url("/limited/x")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(gw.url("/limited/x")).send().await.unwrap().status(),
        429,
        "rate-limit counters kept"
    );
    assert_eq!(
        upstream_of(&gw, "/dyn/x").await,
        (200, "n".to_string()),
        "registered backend kept"
    );

    // a broken config: 400 with the errors, the old config keeps serving, a metric counts it
    gw.write_config(&base(
        &a,
        &b,
        "  - { match: { path: /x }, upstream: nope }",
        "",
    ));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 400);
    let errors = v["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("routes[0].upstream")),
        "{v}"
    );
    assert!(
        errors[0].as_str().unwrap().contains("portcullis.yaml:"),
        "errors name file and line: {v}"
    );
    assert_eq!(upstream_of(&gw, "/new/x").await, (200, "a".to_string()));
    assert!(gw.log().contains("config reload rejected"));
    let m = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("portcullis_config_reloads_total{result=\"failure\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_config_reloads_total{result=\"success\"} 1"),
        "{m}"
    );
    assert!(m.contains("portcullis_config_generation 2"));

    // a syntax error is no different
    std::fs::write(&gw.config_path, "routes: [ {").unwrap();
    let (s, _) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 400);
    assert_eq!(upstream_of(&gw, "/new/x").await, (200, "a".to_string()));

    // the admin endpoint applies a good config
    gw.write_config(&base(&a, &b, ROUTES_V1, ""));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(upstream_of(&gw, "/svc/x").await, (200, "a".to_string()));
    assert_eq!(upstream_of(&gw, "/new/x").await.0, 404);
}

#[tokio::test]
async fn watch_reloads_on_file_change() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let mut gw = Gateway::start(&base(&a, &b, ROUTES_V1, "")).await;
    // restart the same config with --watch
    gw.restart_with(&["--watch"]).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            upstream_of(&gw, "/svc/x").await.0 == 200
        })
        .await
    );
    // The watcher compares the file's mtime once a second with the one it saw last. Rather
    // than sleeping past a tick and hoping the write lands after the watcher started, the
    // new config is written again on every poll until the gateway serves it.
    let v2 = base(&a, &b, ROUTES_V2, "");
    assert!(
        eventually(Duration::from_secs(15), || async {
            if upstream_of(&gw, "/new/x").await.0 == 200 {
                return true;
            }
            gw.write_config(&v2);
            false
        })
        .await,
        "{}",
        gw.log()
    );
}

fn many_routes(n: usize) -> String {
    let mut s = String::from(ROUTES_V1);
    s.push('\n');
    for i in 0..n {
        s.push_str(&format!(
            "  - {{ match: {{ path: \"/r{i}/items/:id\" }}, upstream: a }}\n"
        ));
    }
    s
}

#[tokio::test]
async fn reload_of_ten_thousand_routes_under_load() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&base(&a, &b, &many_routes(10_000), "")).await;
    assert_eq!(upstream_of(&gw, "/r9999/items/1").await.0, 200);

    let urls: Vec<String> = (0..4)
        .map(|t| gw.url(&format!("/r{}/items/7", t * 1000)))
        .collect();
    let load = Load::start(&urls, 4);
    let mut reload_ms = Vec::new();
    for i in 0..3 {
        // let the load run for some requests (counted, not timed) before each reload
        load.progress(20).await;
        // alternate between two 10,000-route configs
        let routes = if i % 2 == 0 {
            many_routes(10_001)
        } else {
            many_routes(10_000)
        };
        gw.write_config(&base(&a, &b, &routes, ""));
        let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
        assert_eq!(s, 200, "{v}");
        reload_ms.push(v["millis"].as_f64().unwrap());
    }
    load.progress(20).await;
    let stats = load.stop().await;
    println!(
        "RELOAD 10k routes (debug build): {reload_ms:?} ms; {} requests during reloads, slowest {} ms",
        stats.done, stats.slowest_ms
    );
    assert_eq!(stats.failures, 0, "no request failed during reloads");
    assert!(stats.done > 50);
    // A stall shows as a request waiting for the reload. Four clients loop without pause,
    // so in a gateway that blocked requests while compiling, some request would arrive in
    // the first half of a reload and wait at least half of it. The bound is therefore half
    // the fastest reload measured in this run (about 1 s of a 2-3 s debug-build reload on
    // this machine; a request normally takes well under 100 ms, the slowest seen 300 ms),
    // not a fixed figure that a fast reload would slip under.
    let fastest = reload_ms.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        (stats.slowest_ms as f64) < fastest / 2.0,
        "a request stalled for {} ms during reloads of {reload_ms:?} ms",
        stats.slowest_ms
    );
    assert_eq!(upstream_of(&gw, "/r10000/items/1").await.0, 200);
}

#[tokio::test]
async fn zero_downtime_binary_upgrade_twice() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let mut gw = Gateway::start(&base(&a, &b, ROUTES_V1, "")).await;
    let server_conf = gw.dir.path().join("pingora.yaml");
    let sock = gw.dir.path().join("upgrade.sock");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    // Pingora drops a connection it accepted but has not read a request from when its
    // graceful shutdown begins (pingora-proxy `handle_new_request`): a brand-new connection
    // landing on the old process in that instant fails. Only such drops are excused, and only
    // while an old process is shutting down (from its SIGQUIT to its exit, `old_draining`):
    // the same error at any other time is a failure like any other.
    let fresh_conn_drops = Arc::new(AtomicUsize::new(0));
    let old_draining = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (stop, failures, done, drops, draining) = (
            stop.clone(),
            failures.clone(),
            done.clone(),
            fresh_conn_drops.clone(),
            old_draining.clone(),
        );
        let url = gw.url("/svc/x");
        tasks.push(tokio::spawn(async move {
            // two clients reuse keep-alive connections, two open a new connection each time
            let keepalive = t < 2;
            let mut c = client();
            while !stop.load(Ordering::Relaxed) {
                if !keepalive {
                    c = reqwest::Client::builder()
                        .no_proxy()
                        .pool_max_idle_per_host(0)
                        .build()
                        .unwrap();
                }
                let during_drain = draining.load(Ordering::SeqCst);
                let res = c.get(&url).send().await;
                let during_drain = during_drain || draining.load(Ordering::SeqCst);
                match res {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => {
                        eprintln!("status {}", r.status());
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e)
                        if !keepalive
                            && during_drain
                            && format!("{e:?}").contains("IncompleteMessage") =>
                    {
                        eprintln!("new connection dropped by the old process at shutdown: {e:?}");
                        drops.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("error (keepalive={keepalive}) {e:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    let mut old = gw.child.take().unwrap();
    let first_pid = old.id() as u64;
    assert_eq!(healthz_pid(&gw).await, Some(first_pid));
    let mut pids = vec![first_pid];
    // let the load run for some requests (counted, not timed) before each step
    let some_requests = |done: Arc<AtomicUsize>| async move {
        let from = done.load(Ordering::Relaxed);
        assert!(
            eventually(Duration::from_secs(20), || async {
                done.load(Ordering::Relaxed) >= from + 40
            })
            .await,
            "the load loop makes progress"
        );
    };
    for round in 0..2 {
        some_requests(done.clone()).await;
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&gw.log_path)
            .unwrap();
        let new = Command::new(bin())
            .args(["-u", "-c"])
            .arg(&gw.config_path)
            .arg("--server-conf")
            .arg(&server_conf)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        // the new process waits on the upgrade socket; then the old one hands over
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "upgrade socket never appeared:\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // no sleep needed here: the socket file exists once the new process has bound it,
        // and the old one retries its connect on ECONNREFUSED until it listens
        // (pingora-core transfer_fd::send_fds_to)
        old_draining.store(true, Ordering::SeqCst);
        let _ = Command::new("kill")
            .arg("-QUIT")
            .arg(old.id().to_string())
            .status();
        let new_pid = new.id() as u64;
        assert!(
            eventually(Duration::from_secs(15), || async {
                healthz_pid(&gw).await == Some(new_pid)
            })
            .await,
            "round {round}: the new process never served:\n{}",
            gw.log()
        );
        // the old process drains and exits by itself
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = old.try_wait() {
                break;
            }
            assert!(Instant::now() < deadline, "old process did not exit");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        old_draining.store(false, Ordering::SeqCst);
        pids.push(new_pid);
        old = new;
    }
    some_requests(done.clone()).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    gw.child = Some(old);
    println!(
        "UPGRADE: {} requests across two upgrades, {} brand-new connections dropped at shutdown, pids {pids:?}",
        done.load(Ordering::Relaxed),
        fresh_conn_drops.load(Ordering::Relaxed)
    );
    // Pingora's shutdown race (above) can only hit a connection the old process accepted and
    // had not read from at the instant its shutdown began. Each of the two new-connection
    // clients has at most one connection open at any instant, and each upgrade has one such
    // instant: at most 2 per upgrade, 4 over two. Any other drop (a keep-alive connection, or
    // outside an old process's shutdown) is counted in `failures`, which must be 0.
    assert!(
        fresh_conn_drops.load(Ordering::Relaxed) <= 4,
        "brand-new connections dropped at shutdown: {}",
        fresh_conn_drops.load(Ordering::Relaxed)
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "zero failed requests:\n{}",
        gw.log()
    );
    assert_eq!(
        healthz_pid(&gw).await,
        Some(pids[2]),
        "the newest binary is serving"
    );
}
