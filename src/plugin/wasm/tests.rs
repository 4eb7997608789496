//! The host against the real test filters of tests/wasm (AssemblyScript SDK and WAT).

use super::*;
use pingora_http::{RequestHeader, ResponseHeader};

fn filter_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/wasm/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn spec(name: &str, root_id: &str, config: &str) -> Spec {
    Spec {
        info: FilterInfo {
            name: Arc::from(name),
            route: Arc::from("test-route"),
            root_id: root_id.to_string(),
            vm_id: format!("unit-{name}"),
            config: Bytes::from(config.to_string()),
            vm_config: Bytes::new(),
            call_targets: Vec::new(),
        },
        limits: InstanceLimits {
            max_memory: 16 << 20,
            time_limit: Duration::from_millis(50),
            max_idle: 4,
        },
    }
}

fn load(file: &str, root_id: &str, config: &str) -> WasmFilter {
    WasmFilter::load(&filter_bytes(file), spec(file, root_id, config)).unwrap()
}

fn request(headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/things?x=1", None).unwrap();
    req.insert_header("host", "example.com").unwrap();
    for (k, v) in headers {
        req.append_header(k.to_string(), *v).unwrap();
    }
    req
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn errors(filter: &str, kind: &str) -> u64 {
    metrics::WASM_METRICS
        .errors
        .with_label_values(&["test-route", filter, kind])
        .get()
}

#[tokio::test]
async fn add_header_filter_changes_request_and_response() {
    let f = load("add_header", "add_header", "from-config");
    let mut s = f.stream(Props::default());
    let mut req = request(&[]);
    assert!(matches!(
        s.request_headers(&mut req).await,
        Outcome::Continue
    ));
    assert_eq!(header(&req.headers, "x-wasm-added"), Some("from-config"));
    assert_eq!(req.uri.path(), "/things", "the head is swapped back intact");
    let mut resp = ResponseHeader::build(200, None).unwrap();
    assert!(matches!(s.response_headers(&mut resp), Outcome::Continue));
    assert_eq!(header(&resp.headers, "x-wasm-filter"), Some("add-header"));
    s.finish(200);
    assert_eq!(f.idle_instances(), 1, "the instance went back to the pool");
}

#[tokio::test]
async fn deny_filter_answers_403_only_when_the_header_is_there() {
    let f = load("deny", "deny", "x-block");
    let mut s = f.stream(Props::default());
    let mut req = request(&[("x-block", "1")]);
    match s.request_headers(&mut req).await {
        Outcome::Respond(l) => {
            assert_eq!(l.status, 403);
            assert_eq!(&l.body[..], b"denied by wasm filter\n");
            assert!(l.headers.contains(&("x-denied-by".into(), "wasm".into())));
        }
        other => panic!("expected a local response, got {other:?}"),
    }
    s.finish(403);
    let mut s = f.stream(Props::default());
    let mut req = request(&[("x-other", "1")]);
    assert!(matches!(
        s.request_headers(&mut req).await,
        Outcome::Continue
    ));
}

#[tokio::test]
async fn body_filter_buffers_and_rewrites_the_response() {
    let f = load("body_rewrite", "body_rewrite", "hello=HELLO");
    let mut s = f.stream(Props::default());
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("content-length", "16").unwrap();
    assert!(matches!(s.response_headers(&mut resp), Outcome::Continue));
    assert!(resp.headers.get("content-length").is_none());
    let mut chunk = Some(Bytes::from_static(b"say hel"));
    assert!(matches!(s.body(true, &mut chunk, false), Outcome::Continue));
    assert_eq!(chunk, None, "held while the filter buffers");
    let mut chunk = Some(Bytes::from_static(b"lo, hello"));
    assert!(matches!(s.body(true, &mut chunk, true), Outcome::Continue));
    assert_eq!(chunk.as_deref(), Some(&b"say HELLO, HELLO"[..]));
}

#[tokio::test]
async fn a_trap_a_loop_and_a_runaway_allocation_fail_the_request_only() {
    let f = load("misbehave", "misbehave", "");
    for (header, kind) in [
        ("x-trap", "trap"),
        ("x-loop", "timeout"),
        ("x-oom", "memory"),
    ] {
        let before = errors("misbehave", kind);
        let mut s = f.stream(Props::default());
        let mut req = request(&[(header, "1")]);
        match s.request_headers(&mut req).await {
            Outcome::Failed(e) => assert_eq!(e.kind(), kind, "{header}: {e}"),
            other => panic!("{header}: expected a failure, got {other:?}"),
        }
        assert_eq!(errors("misbehave", kind), before + 1);
        assert_eq!(
            header_count(&req),
            2,
            "{header}: the request head is intact"
        );
        s.finish(500);
        // The next request gets a working instance.
        let mut s = f.stream(Props::default());
        let mut req = request(&[]);
        assert!(matches!(
            s.request_headers(&mut req).await,
            Outcome::Continue
        ));
        s.finish(200);
    }
}

fn header_count(req: &RequestHeader) -> usize {
    req.headers.len()
}

#[tokio::test]
async fn properties_metrics_and_shared_data() {
    let f = load("props", "", "props-config");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let props = Props {
            client_ip: Some("192.0.2.7".parse().unwrap()),
            ..Props::default()
        };
        let mut s = f.stream(props);
        let mut req = request(&[]);
        assert!(matches!(
            s.request_headers(&mut req).await,
            Outcome::Continue
        ));
        assert_eq!(header(&req.headers, "x-route"), Some("test-route"));
        assert_eq!(header(&req.headers, "x-client"), Some("192.0.2.7"));
        assert_eq!(header(&req.headers, "x-path"), Some("/things?x=1"));
        assert_eq!(header(&req.headers, "x-subject"), None, "not authenticated");
        seen.push(header(&req.headers, "x-hits").unwrap().to_string());
        s.finish(200);
    }
    assert_eq!(seen, ["1", "2", "3"]);
    let requests = metrics::define("props", abi::metric::COUNTER, "requests").unwrap();
    assert_eq!(requests.get(), 3);
}

#[tokio::test]
async fn a_call_to_an_unknown_upstream_is_refused_and_the_filter_answers() {
    let f = load("http_call", "http_call", "nowhere");
    let mut s = f.stream(Props::default());
    let mut req = request(&[("x-user", "ann")]);
    match s.request_headers(&mut req).await {
        Outcome::Respond(l) => assert_eq!(l.status, 403),
        other => panic!("expected the filter's 403, got {other:?}"),
    }
}

#[test]
fn modules_that_are_not_proxy_wasm_are_refused_at_load() {
    let err = WasmFilter::load(b"not wasm", spec("x", "", ""))
        .err()
        .unwrap();
    assert!(err.contains("not a valid module"), "{err}");
    let bare = b"\0asm\x01\0\0\0";
    let err = WasmFilter::load(bare, spec("x", "", "")).err().unwrap();
    assert!(err.contains("proxy_abi_version"), "{err}");
}

#[test]
fn a_root_id_the_module_does_not_know_fails_the_load() {
    // The SDK aborts when no root context is registered under the configured root id.
    let err = WasmFilter::load(&filter_bytes("deny"), spec("deny", "nope", ""))
        .err()
        .unwrap();
    assert!(err.contains("trapped"), "{err}");
}

#[test]
fn the_same_bytes_compile_once() {
    let bytes = filter_bytes("noop");
    let a = engine::compile(&bytes).unwrap();
    let b = engine::compile(&bytes).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.abi, engine::Abi::V0_2_1);
    assert_eq!(
        engine::compile(&filter_bytes("deny")).unwrap().abi,
        engine::Abi::V0_2_0
    );
}
