//! The `body-guard` plugin through the real binary: sizes, media types and JSON shape
//! are refused with the gateway's JSON errors before anything reaches the upstream.

mod common;
use common::*;

fn config(up: &Upstream) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
routes:
  - name: json
    match: {{ path: "/json/**" }}
    upstream: u
    plugins:
      - name: body-guard
        config:
          max_bytes: 1KiB
          content_types: [application/json, "application/*+json"]
          json: {{ max_depth: 3, max_keys: 4 }}
  - name: upload
    match: {{ path: "/upload/**" }}
    upstream: u
    plugins:
      - name: body-guard
        config: {{ max_bytes: 2MiB, content_types: ["image/*"] }}
  - name: whole
    match: {{ path: "/whole/**" }}
    upstream: u
    plugins:
      - name: body-guard
        config: {{ json: {{ max_depth: 8 }} }}
"#,
        up = up.addr
    )
}

async fn post(gw: &Gateway, path: &str, ctype: Option<&str>, body: Vec<u8>) -> Reply {
    let mut rb = client().post(gw.url(path)).body(body);
    if let Some(t) = ctype {
        rb = rb.header("content-type", t);
    }
    let r = rb.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let body = r.bytes().await.unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

/// Send `head` and `body` on a new keep-alive connection (no `Connection: close`: the
/// gateway drains what it did not read, as it would for a client that reuses the
/// connection) and read one response: its head and `Content-Length` bytes of body.
async fn exchange(port: u16, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    let (mut rd, mut wr) = s.split();
    let write = async {
        let _ = wr.write_all(&req).await;
    };
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((h, b)) = text.split_once("\r\n\r\n") {
                let len = h
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if b.len() >= len {
                    return text;
                }
            }
            match tokio::time::timeout(std::time::Duration::from_secs(10), rd.read(&mut chunk))
                .await
            {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return String::from_utf8_lossy(&buf).to_string(),
            }
        }
    };
    let (_, text) = tokio::join!(write, read);
    text
}

/// A chunked POST sent as raw bytes: the answer.
async fn chunked(gw: &Gateway, path: &str, ctype: &str, body: &[u8]) -> String {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut framed = Vec::new();
    for part in body.chunks(1000) {
        framed.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        framed.extend_from_slice(part);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    exchange(gw.port, &head, &framed).await
}

fn refused(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"], code, "{}", r.text());
    assert!(r.json()["request_id"].is_string());
    assert_eq!(r.h("content-type"), Some("application/json"));
}

#[tokio::test]
async fn bodies_of_the_wrong_size_type_or_shape_never_reach_the_upstream() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(&up)).await;
    let j = Some("application/json");
    let ok = post(
        &gw,
        "/json/a",
        Some("application/json; charset=utf-8"),
        br#"{"a":{"b":[1,2]},"c":"x"}"#.to_vec(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(up.last_body().unwrap(), r#"{"a":{"b":[1,2]},"c":"x"}"#);
    let vendor = post(
        &gw,
        "/json/a",
        Some("application/problem+json"),
        b"[]".to_vec(),
    )
    .await;
    assert_eq!(vendor.status, 200);
    assert_eq!(up.hits(), 2);

    refused(
        &post(&gw, "/json/a", Some("text/plain"), b"{}".to_vec()).await,
        415,
        "unsupported_media_type",
    );
    refused(
        &post(&gw, "/json/a", None, b"{}".to_vec()).await,
        415,
        "unsupported_media_type",
    );
    refused(
        &post(&gw, "/json/a", j, vec![b' '; 2000]).await,
        413,
        "body_too_large",
    );
    refused(
        &post(&gw, "/json/a", j, br#"{"a":"#.to_vec()).await,
        400,
        "invalid_json",
    );
    refused(
        &post(&gw, "/json/a", j, br#"[[[[1]]]]"#.to_vec()).await,
        400,
        "json_too_deep",
    );
    refused(
        &post(
            &gw,
            "/json/a",
            j,
            br#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#.to_vec(),
        )
        .await,
        400,
        "json_too_many_keys",
    );
    // a chunked body: no length to judge by, read whole and measured
    let r = chunked(&gw, "/json/a", "application/json", &vec![b' '; 3000]).await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("body_too_large"), "{r}");
    assert_eq!(up.hits(), 2, "nothing refused reached the upstream");

    // a request without a body passes whatever the rules
    let r = send(&client(), reqwest::Method::GET, &gw.url("/json/a"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 3);
    let m = metrics(&gw).await;
    assert_eq!(
        series(&m, "portcullis_rejections_total{reason=\"json_too_deep\"}"),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_body_beyond_the_buffer_is_refused_not_passed_unchecked() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(&up)).await;
    // /whole checks JSON without a max_bytes of its own: the 64 KiB buffer is the limit
    let mut big = b"[".to_vec();
    big.extend(std::iter::repeat_n(b"1,".as_slice(), 40_000).flatten());
    big.extend_from_slice(b"1]");
    assert!(big.len() > 64 * 1024);
    let r = post(&gw, "/whole/x", Some("application/json"), big.clone()).await;
    refused(&r, 413, "body_too_large");
    let r = chunked(&gw, "/whole/x", "application/json", &big).await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert_eq!(up.hits(), 0);
    // just under the buffer: checked, then forwarded whole
    let mut fits = b"[".to_vec();
    fits.extend(std::iter::repeat_n(b"1,".as_slice(), 30_000).flatten());
    fits.extend_from_slice(b"1]");
    let r = chunked(&gw, "/whole/x", "application/json", &fits).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(up.last_body().unwrap().len(), fits.len());
}

#[tokio::test]
async fn a_large_upload_is_checked_by_its_head_and_streamed() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(&up)).await;
    let image = vec![7u8; 1024 * 1024];
    let r = post(&gw, "/upload/x", Some("image/png"), image).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_bytes"], 1024 * 1024);
    // a declared length over the limit is refused on the head alone: the answer comes
    // before the client has sent one byte of the body (sending the 3 MiB regardless would
    // race the gateway's close, which does not drain a refused body, with the client's
    // writes: the client may then see a reset instead of the 413)
    let head = format!(
        "POST /upload/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        3 * 1024 * 1024
    );
    let resp = raw(gw.port, head.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"body_too_large\""), "{resp}");
    let head = head
        .replace("image/png", "application/pdf")
        .replace(&(3 * 1024 * 1024).to_string(), &(1024 * 1024).to_string());
    let resp = raw(gw.port, head.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 415"), "{resp}");
    assert!(resp.contains("\"unsupported_media_type\""), "{resp}");
    assert_eq!(up.hits(), 1);
}

#[test]
fn body_guard_settings_are_checked_at_load() {
    let yaml = r#"upstreams:
  u: { backends: [{ addr: "127.0.0.1:9" }] }
routes:
  - match: { path: /a }
    upstream: u
    plugins:
      - name: body-guard
        config:
          max_bytes: 1MiB
          json: { max_depth: 4 }
  - match: { path: /b }
    upstream: u
    plugins:
      - name: body-guard
        config: { content_type: [application/json] }
"#;
    assert_refused(
        yaml,
        &[
            ":9: routes[0].plugins[0].config.max_bytes: with `json` checks the body is held whole",
            ":15: routes[1].plugins[0].config.content_type: unknown field `content_type`",
        ],
    );
}

#[tokio::test]
async fn a_client_waiting_for_100_continue_gets_it_before_the_body_is_checked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(&up)).await;
    let body = br#"{"a":[1,2,3]}"#;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let head = format!(
        "POST /json/x HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // like curl, the body waits for the interim answer
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no 100 Continue")
            .unwrap();
        assert!(n > 0, "closed");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(body).await.unwrap();
    let mut rest = Vec::new();
    while !String::from_utf8_lossy(&rest).contains("\"upstream\"") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed");
        rest.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&rest).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(up.last_body().unwrap(), &body[..]);
    // the upstream got the body, not a second Expect
    assert!(up.last_headers().unwrap().get("expect").is_none());
}
