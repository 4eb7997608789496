//! A client that hangs up before or during the response: logged and counted as 499 (client
//! closed request), at INFO, never as an upstream failure or on the breaker.

mod common;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(up: &Upstream, slow: std::net::SocketAddr) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  a:
    backends: [{{ addr: "{}" }}]
    circuit_breaker: {{ failure_threshold: 2, open_for: 60s }}
  streaming:
    backends: [{{ addr: "{slow}" }}]
    circuit_breaker: {{ failure_threshold: 2, open_for: 60s }}
routes:
  - {{ name: stream, match: {{ path: "/stream/**" }}, upstream: streaming }}
  - {{ name: all, match: {{ path: "/**" }}, upstream: a }}
"#,
        up.addr
    )
}

/// A backend that sends a response header and the first bytes of a 1 MB body, then
/// trickles the rest slowly.
async fn streaming_backend() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let total = 1_000_000;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {total}\r\n\r\n"
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 1000];
                for _ in 0..1000 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
    });
    addr
}

fn access_line<'a>(log: &'a str, path: &str) -> Option<&'a str> {
    log.lines()
        .find(|l| l.starts_with('{') && l.contains(&format!("\"path\":\"{path}\"")))
}

/// One complete request, and its access-log line: the log's writer (started by a background
/// service beside the proxy) is running before the hang-ups are looked for.
async fn warm_up(gw: &Gateway) {
    assert_eq!(
        client().get(gw.url("/warm")).send().await.unwrap().status(),
        200
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            access_line(&gw.log(), "/warm").is_some()
        })
        .await,
        "{}",
        gw.log()
    );
}

async fn hang_up_after(gw: &Gateway, path: &str, read_first: bool) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    if read_first {
        // the response has started: read a piece of it
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    drop(s);
}

async fn check_499(gw: &Gateway, path: &str, route: &str, upstream: &str) {
    let ok = eventually(Duration::from_secs(10), || async {
        access_line(&gw.log(), path).is_some()
    })
    .await;
    let log = gw.log();
    assert!(ok, "no access-log line for {path}:\n{log}");
    let line = access_line(&log, path).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["status"], 499, "{line}");
    let m = metrics(gw).await;
    let counted = m.lines().any(|l| {
        l.starts_with("portcullis_requests_total")
            && l.contains(&format!("route=\"{route}\""))
            && l.contains("status=\"499\"")
            && l.contains(&format!("upstream=\"{upstream}\""))
    });
    assert!(counted, "no 499 in portcullis_requests_total:\n{m}");
    assert!(
        !m.lines().any(|l| l.starts_with("portcullis_requests_total")
            && l.contains(&format!("route=\"{route}\""))
            && l.contains("status=\"502\"")),
        "{m}"
    );
    // logged at INFO, not as an error of the proxy
    let path_lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with('{') && l.contains(path))
        .collect();
    assert!(
        path_lines
            .iter()
            .all(|l| !l.contains("ERROR") && !l.contains("WARN")),
        "{path_lines:#?}"
    );
    assert!(path_lines.iter().any(|l| l.contains("INFO")), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test]
async fn client_hanging_up_while_the_upstream_works_is_499() {
    let up = Upstream::start("a").await;
    let slow = streaming_backend().await;
    let gw = Gateway::start(&config(&up, slow)).await;
    warm_up(&gw).await;
    up.set_mode(Mode::Delay(Duration::from_millis(1500)));
    for i in 0..2 {
        let path = format!("/wait/{i}");
        hang_up_after(&gw, &path, false).await;
        check_499(&gw, &path, "all", "a").await;
    }
    // two hang-ups (the breaker's threshold) did not open the breaker
    let (_, v) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(
        v["upstreams"]["a"]["backends"][0]["circuit"], "closed",
        "{v}"
    );
    up.set_mode(Mode::Echo);
    assert_eq!(
        client()
            .get(gw.url("/after"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn client_hanging_up_mid_body_is_499() {
    let up = Upstream::start("a").await;
    let slow = streaming_backend().await;
    let gw = Gateway::start(&config(&up, slow)).await;
    warm_up(&gw).await;
    for i in 0..2 {
        let path = format!("/stream/{i}");
        hang_up_after(&gw, &path, true).await;
        check_499(&gw, &path, "stream", "streaming").await;
    }
    let (_, v) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(
        v["upstreams"]["streaming"]["backends"][0]["circuit"], "closed",
        "{v}"
    );
}
