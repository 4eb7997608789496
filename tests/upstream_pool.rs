//! The pooled-connection race through the real binary: a backend that closes a reused
//! keep-alive connection without answering (as one whose keep-alive timeout is shorter than
//! the pool's does) must not turn into 502s, even with retries off; a POST whose bytes were
//! written is never resent.

mod common;
use common::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Requests the backend read completely, by "METHOD path", and how many it dropped.
#[derive(Default)]
struct Seen {
    requests: HashMap<String, usize>,
    dropped: usize,
}

/// A raw HTTP/1.1 backend: answers the first request on each connection (keep-alive), reads
/// the second one completely and closes the connection without answering.
async fn closing_backend() -> (std::net::SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(stream, s.clone()));
        }
    });
    (addr, seen)
}

/// Read one request (header and Content-Length body); its "METHOD path", None at EOF.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..end + 4 + len);
            let line = head.lines().next().unwrap_or("");
            let mut parts = line.split(' ');
            let method = parts.next().unwrap_or("");
            let path = parts.next().unwrap_or("");
            return Some(format!("{method} {path}"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    let mut n = 0;
    while let Some(req) = read_request(&mut stream, &mut buf).await {
        n += 1;
        *seen.lock().unwrap().requests.entry(req).or_insert(0) += 1;
        if n >= 2 {
            // the reused connection: read the request, close without a word
            seen.lock().unwrap().dropped += 1;
            return;
        }
        let body = b"{\"ok\":true}";
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(body).await.is_err()
        {
            return;
        }
    }
}

fn config(addr: std::net::SocketAddr) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  a:
    backends: [{{ addr: "{addr}" }}]
    retry: {{ attempts: 0 }}
    circuit_breaker: {{ failure_threshold: 2, open_for: 60s }}
routes:
  - {{ name: all, match: {{ path: "/**" }}, upstream: a }}
"#
    )
}

async fn metric(gw: &Gateway, name: &str, labels: &str) -> f64 {
    let text = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn reused_connection_closed_by_the_backend_is_resent_once_on_a_fresh_one() {
    let (addr, seen) = closing_backend().await;
    let gw = Gateway::start(&config(addr)).await;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..10 {
        let r = c.get(gw.url(&format!("/get/{i}"))).send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    for i in 0..10 {
        let r = c
            .put(gw.url(&format!("/put/{i}")))
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "GET and PUT with retry attempts 0: {statuses:?}\n{}",
        gw.log()
    );
    // routine: no WARN line per resent request
    assert!(
        !gw.log().contains("WARN  pingora_proxy] Fail to proxy"),
        "{}",
        gw.log()
    );
    let dropped = seen.lock().unwrap().dropped;
    // the race happened, and each time the request was resent (the backend saw it twice)
    assert!(dropped >= 5, "the backend dropped only {dropped} requests");
    let stale = metric(
        &gw,
        "portcullis_upstream_stale_connection_retries_total",
        "upstream=\"a\"",
    )
    .await;
    assert_eq!(stale as usize, dropped);
    // not the backend's failure: no breaker trip (threshold 2), no retry counted
    let (_, v) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(
        v["upstreams"]["a"]["backends"][0]["circuit"], "closed",
        "{v}"
    );
    assert_eq!(
        metric(&gw, "portcullis_retries_total", "upstream=\"a\"").await,
        0.0
    );
    assert_eq!(
        metric(&gw, "portcullis_retry_budget_exhausted_total", "").await,
        0.0
    );
}

#[tokio::test]
async fn a_post_whose_bytes_were_written_is_not_resent() {
    let (addr, seen) = closing_backend().await;
    let gw = Gateway::start(&config(addr)).await;
    let c = client();
    for i in 0..2 {
        // a first request leaves a pooled connection; the POST goes out on it and is dropped
        assert_eq!(c.get(gw.url("/warm")).send().await.unwrap().status(), 200);
        let path = format!("/orders/{i}");
        let r = c
            .post(gw.url(&path))
            .body(format!("{{\"id\":\"order-{i}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502, "{}", gw.log());
        assert_eq!(
            seen.lock()
                .unwrap()
                .requests
                .get(&format!("POST {path}"))
                .copied(),
            Some(1),
            "the POST was replayed"
        );
    }
    // the stale connection is not the backend's failure: two of them (the breaker's
    // threshold) leave it closed
    let (_, v) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(
        v["upstreams"]["a"]["backends"][0]["circuit"], "closed",
        "{v}"
    );
    assert_eq!(
        metric(
            &gw,
            "portcullis_upstream_stale_connection_retries_total",
            "upstream=\"a\""
        )
        .await,
        0.0
    );
}
