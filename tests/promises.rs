//! README promises that no other test checked (issue 23, item 4), through the real binary on
//! real sockets: route header rules, `preserve_host`, the Content-Security-Policy header,
//! retry safety (connect failures, bytes already sent, the replay buffer), `Connection:
//! close` while draining, revocations shared through Redis, and the access log's sampling,
//! error logging, rotation and drop accounting.

mod common;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn values(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn route_header_rules_and_preserve_host() {
    let up = Upstream::start("u").await;
    up.set_handler(Arc::new(|req| {
        req.uri().path().starts_with("/h/").then(|| {
            hyper::Response::builder()
                .status(200)
                .header("x-internal", "secret")
                .header("x-served-by", "upstream")
                .header("x-resp-add", "one")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
                .unwrap()
        })
    }));
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  security_headers: {{ content_security_policy: "default-src 'none'" }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
routes:
  - match: {{ path: "/h/**" }}
    upstream: u
    request_headers: {{ set: {{ x-set: forced }}, add: {{ x-add: extra }}, remove: [x-debug] }}
    response_headers: {{ set: {{ x-served-by: portcullis }}, add: {{ x-resp-add: two }}, remove: [x-internal] }}
  - {{ match: {{ path: "/keep/**" }}, upstream: u, preserve_host: true }}
  - {{ match: {{ path: "/backend/**" }}, upstream: u, preserve_host: false }}
"#,
        up = up.addr
    ))
    .await;
    let c = client();
    let r = c
        .get(gw.url("/h/x"))
        .header("x-set", "client-value")
        .header("x-add", "client")
        .header("x-debug", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // response rules: set replaces, add appends, remove removes
    assert_eq!(values(r.headers(), "x-served-by"), ["portcullis"]);
    let mut added = values(r.headers(), "x-resp-add");
    added.sort();
    assert_eq!(added, ["one", "two"]);
    assert!(r.headers().get("x-internal").is_none());
    // the default security headers apply to every route: the CSP is sent as configured
    assert_eq!(r.headers()["content-security-policy"], "default-src 'none'");
    // request rules, as the upstream saw them
    let h = up.last_headers().unwrap();
    assert_eq!(values(&h, "x-set"), ["forced"], "set replaces the client's");
    let mut added = values(&h, "x-add");
    added.sort();
    assert_eq!(added, ["client", "extra"], "add keeps the client's");
    assert!(h.get("x-debug").is_none(), "remove removes");

    // preserve_host: true sends the canonical client Host (lower case)...
    let resp = raw(
        gw.port,
        b"GET /keep/x HTTP/1.1\r\nHost: Api.Example.TEST\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        up.last_headers().unwrap()["host"],
        "api.example.test",
        "preserve_host: true"
    );
    // ...false the backend's address
    let resp = raw(
        gw.port,
        b"GET /backend/x HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        up.last_headers().unwrap()["host"],
        up.addr.to_string().as_str(),
        "preserve_host: false"
    );
}

/// A backend speaking raw HTTP/1.1 that sends the status line, the headers and 10 bytes of a
/// 100,000-byte body, then closes: a failure after bytes reached the client.
async fn truncating_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                break;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if got.starts_with(b"GET /health") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    return;
                }
                h.fetch_add(1, Ordering::SeqCst);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789")
                    .await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // dropped: the connection closes mid-body
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn retries_are_only_made_when_safe() {
    let a = Upstream::start("a").await;
    let dead = dead_port();
    let (trunc1, trunc_hits1) = truncating_backend().await;
    let (trunc2, trunc_hits2) = truncating_backend().await;
    let failing = Upstream::start("failing").await;
    failing.set_mode(Mode::Status(503));
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  conn:
    backends: [{{ addr: "127.0.0.1:{dead}" }}, {{ addr: "{a}" }}]
    lb: round_robin
    retry: {{ attempts: 2, backoff: 1ms }}
    circuit_breaker: {{ enabled: false }}
  trunc:
    backends: [{{ addr: "{trunc1}" }}, {{ addr: "{trunc2}" }}]
    retry: {{ attempts: 3, backoff: 1ms }}
    circuit_breaker: {{ enabled: false }}
  fail:
    backends: [{{ addr: "{failing}" }}]
    retry: {{ attempts: 2, backoff: 1ms }}
    circuit_breaker: {{ enabled: false }}
routes:
  - {{ match: {{ path: "/conn/**" }}, upstream: conn }}
  - {{ match: {{ path: "/trunc/**" }}, upstream: trunc }}
  - {{ match: {{ path: "/fail/**" }}, upstream: fail }}
"#,
        dead = dead.port,
        a = a.addr,
        failing = failing.addr,
    ))
    .await;
    let c = client();

    // a POST is retried after a connect failure (nothing reached a backend): round robin
    // sends every other first attempt to the refusing port, and every POST still succeeds
    let mut retried = 0;
    for i in 0..6 {
        let r = c
            .post(gw.url("/conn/x"))
            .body(format!("post-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "POST {i} after a connect failure");
        retried += r.headers().get("x-retry-count").is_some_and(|v| v == "1") as usize;
    }
    assert_eq!(a.hits(), 6, "each POST reached the live backend once");
    assert!(retried >= 1, "some POSTs first tried the refusing port");

    // a failure after the response started reaching the client is never retried: the
    // client gets a truncated body (or an error), and exactly one backend saw the GET
    let r = c.get(gw.url("/trunc/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await;
    assert!(
        body.as_ref().map(|b| b.len() < 100_000).unwrap_or(true),
        "the body was cut short"
    );
    assert_eq!(
        trunc_hits1.load(Ordering::SeqCst) + trunc_hits2.load(Ordering::SeqCst),
        1,
        "no retry once bytes reached the client"
    );

    // a PUT (idempotent) answered 503 is retried while its body fits the 64 KiB replay
    // buffer, and not once it does not
    let r = c
        .put(gw.url("/fail/small"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(failing.hits_for("/fail/small"), 3, "1 + 2 retries");
    let r = c
        .put(gw.url("/fail/big"))
        .body(vec![b'x'; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        failing.hits_for("/fail/big"),
        1,
        "a body over the replay buffer cannot be replayed"
    );
}

#[tokio::test]
async fn responses_close_the_connection_while_draining() {
    let up = Upstream::start("u").await;
    let mut gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
routes:
  - {{ match: {{ path: "/**" }}, upstream: u }}
"#,
        up = up.addr
    ))
    .await;
    // a grace period long enough that the in-flight request below is answered, not cut
    std::fs::write(
        gw.dir.path().join("pingora.yaml"),
        format!(
            "---\nversion: 1\nthreads: 2\npid_file: {d}/portcullis.pid\nupgrade_sock: {d}/upgrade.sock\ngrace_period_seconds: 30\ngraceful_shutdown_timeout_seconds: 5\n",
            d = gw.dir.path().display()
        ),
    )
    .unwrap();
    gw.restart_with(&[]).await;

    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    // before draining: a keep-alive response
    s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    // a request in flight (held by the upstream) when the gateway starts draining
    up.set_mode(Mode::Delay(Duration::from_secs(4)));
    s.write_all(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async { up.hits_for("/b") == 1 }).await,
        "the request reached the upstream"
    );
    gw.signal("TERM");
    // Pingora logs the broadcast; the supervisor, woken by the same broadcast, sets the
    // draining flag (it logs "draining: ..." only for the upgrade phases, not for SIGTERM).
    // The held response is written seconds later, after the flag is set.
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.log().contains("Broadcast graceful shutdown complete")
        })
        .await,
        "{}",
        gw.log()
    );
    assert_eq!(up.hits_for("/b"), 1);
    let second = read_response(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "a response sent while draining closes its connection: {second}"
    );
}

/// Read one HTTP/1.1 response with a Content-Length body from `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        if n == 0 {
            return String::from_utf8_lossy(&got).into_owned();
        }
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn revocations_are_shared_through_redis() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    const SECRET: &str = "promises-shared-revocation-secret-0123456789";
    let up = Upstream::start("u").await;
    let redis_port = free_port();
    let _redis = Redis::start(redis_port);
    let yaml = format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
auth:
  jwt:
    - {{ name: hs, issuer: "https://hs.test/", audiences: [api], algorithms: [HS256], secret_env: PROMISES_HS, leeway: 5s }}
rate_limits:
  policies:
    p: {{ key: ip, requests: 100000, per: 1s }}
  cluster: {{ redis: "redis://127.0.0.1:{redis_port}", sync_interval: 100ms }}
routes:
  - {{ match: {{ path: "/**" }}, upstream: u, auth: {{ jwt: hs }}, rate_limit: [p] }}
"#,
        up = up.addr
    );
    let env = [("PROMISES_HS", SECRET)];
    let gws = [
        Gateway::start_with(&yaml, &env).await,
        Gateway::start_with(&yaml, &env).await,
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "iss": "https://hs.test/", "aud": "api", "sub": "s", "exp": now + 3600,
                 "jti": "shared-jti-1" }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let bearer = format!("Bearer {token}");
    let c = client();
    let status = |g: &Gateway| {
        let (c, url, bearer) = (c.clone(), g.url("/x"), bearer.clone());
        async move { get_with(&c, &url, &[("authorization", &bearer)]).await.0 }
    };
    // both accept the token (and cache its verification)
    for g in &gws {
        assert_eq!(status(g).await, 200);
        assert_eq!(status(g).await, 200);
    }
    // revoked on the first instance...
    let (s, v) = gws[0]
        .admin(
            reqwest::Method::POST,
            "/admin/revocations",
            Some(json!({ "jti": "shared-jti-1", "until": now + 3600 })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(status(&gws[0]).await, 401);
    // ...and refused by the second once it syncs (revocations are read every 10th sync)
    assert!(
        eventually(Duration::from_secs(15), || async {
            status(&gws[1]).await == 401
        })
        .await,
        "the second instance never learnt of the revocation:\n{}",
        gws[1].log()
    );
}

async fn access_log_gateway(up: &Upstream, log: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
access_log: {{ path: "{{dir}}/access.log", {log} }}
routes:
  - {{ match: {{ path: "/ok/**" }}, upstream: u }}
"#,
        up = up.addr
    ))
    .await
}

fn log_lines(gw: &Gateway, needle: &str) -> usize {
    std::fs::read_to_string(gw.dir.path().join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

async fn metric(gw: &Gateway, name: &str) -> f64 {
    let (_, text) = {
        let r = client()
            .get(gw.admin_url("/metrics"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    };
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn access_log_sampling_and_errors() {
    let up = Upstream::start("u").await;
    let gw = access_log_gateway(&up, "sample: 0.0, always_log_errors: true").await;
    let c = client();
    for i in 0..20 {
        assert_eq!(
            c.get(gw.url(&format!("/ok/s{i}")))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            c.get(gw.url(&format!("/nope/e{i}")))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
    }
    // every error is logged whatever the sample; awaited on the file
    assert!(
        eventually(Duration::from_secs(10), || async {
            log_lines(&gw, "\"/nope/e") == 20
        })
        .await,
        "20 errors logged, found {}",
        log_lines(&gw, "\"/nope/e")
    );
    // the writer is in order, so once the last error is in, no sampled-out 200 can follow
    assert_eq!(log_lines(&gw, "\"/ok/s"), 0, "sample 0.0 logs no success");
    drop(gw);

    // sample: 0.5 over 400 successes: binomial σ = 10, so 140..260 is ±6σ, and rejects both
    // "sample ignored" (400) and "nothing logged" (0)
    let gw = access_log_gateway(&up, "sample: 0.5, always_log_errors: true").await;
    for i in 0..400 {
        let _ = c.get(gw.url(&format!("/ok/h{i}"))).send().await.unwrap();
    }
    // an error is always logged, after every sampled line before it: the marker to await
    let _ = c.get(gw.url("/nope/marker")).send().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            log_lines(&gw, "/nope/marker") == 1
        })
        .await
    );
    let n = log_lines(&gw, "\"/ok/h");
    assert!((140..=260).contains(&n), "{n} of 400 logged at sample 0.5");
}

#[tokio::test]
async fn access_log_reopens_after_rotation_and_counts_drops() {
    let up = Upstream::start("u").await;
    let gw = access_log_gateway(&up, "buffer: 16").await;
    let c = client();
    assert_eq!(
        c.get(gw.url("/ok/before")).send().await.unwrap().status(),
        200
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            log_lines(&gw, "/ok/before") == 1
        })
        .await
    );
    // rotated away (as logrotate does): the gateway notices and writes to a new file
    let path = gw.dir.path().join("access.log");
    std::fs::rename(&path, gw.dir.path().join("access.log.1")).unwrap();
    let mut i = 0;
    assert!(
        eventually(Duration::from_secs(10), || {
            i += 1;
            let url = gw.url(&format!("/ok/after-{i}"));
            let c = c.clone();
            let gw = &gw;
            async move {
                let _ = c.get(url).send().await;
                log_lines(gw, "/ok/after-") > 0
            }
        })
        .await,
        "the log was reopened after rotation"
    );
    let old = std::fs::read_to_string(gw.dir.path().join("access.log.1")).unwrap();
    assert!(old.contains("/ok/before"));
    drop(old);

    // a 16-line buffer flooded by concurrent requests: what cannot be queued is dropped and
    // counted; every request is either a line or a count, never both, never neither
    let mut total = 0;
    let mut sent = 0;
    for round in 0..10 {
        let tasks: Vec<_> = (0..300)
            .map(|j| {
                let c = c.clone();
                let url = gw.url(&format!("/ok/flood-{round}-{j}"));
                tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 200);
        }
        sent += 300;
        // a line is queued (or dropped) after its response is sent: wait until the file and
        // the counter together account for every request
        let accounted = eventually(Duration::from_secs(10), || async {
            let dropped = metric(&gw, "portcullis_access_log_dropped_total").await as usize;
            log_lines(&gw, "/ok/flood-") + dropped == sent
        })
        .await;
        let dropped = metric(&gw, "portcullis_access_log_dropped_total").await as usize;
        assert!(
            accounted,
            "{} lines + {dropped} dropped != {sent} requests",
            log_lines(&gw, "/ok/flood-")
        );
        total = dropped;
        if dropped > 0 {
            break;
        }
    }
    assert!(total > 0, "a flooded 16-line buffer dropped lines");
}
