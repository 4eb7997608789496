//! OpenTelemetry traces through the real binary, received by a real OTLP/HTTP receiver in
//! the test (hyper), decoded with the `opentelemetry-proto` messages.

mod common;
use common::*;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY: &str = "tracing-test-key";

/// An OTLP/HTTP receiver: every span of every export it is sent.
struct Collector {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    services: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let services: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s2, v2) = (spans.clone(), services.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (spans, services) = (s2.clone(), v2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (spans, services) = (spans.clone(), services.clone());
                            async move {
                                let ok = req.uri().path() == "/v1/traces"
                                    && req
                                        .headers()
                                        .get("content-type")
                                        .is_some_and(|v| v == "application/x-protobuf");
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let status = match ExportTraceServiceRequest::decode(body.as_ref())
                                {
                                    Ok(export) if ok => {
                                        for rs in export.resource_spans {
                                            if let Some(r) = rs.resource {
                                                for kv in r.attributes {
                                                    if kv.key == "service.name" {
                                                        services
                                                            .lock()
                                                            .unwrap()
                                                            .push(string(&kv.value));
                                                    }
                                                }
                                            }
                                            for ss in rs.scope_spans {
                                                spans.lock().unwrap().extend(ss.spans);
                                            }
                                        }
                                        200
                                    }
                                    _ => 400,
                                };
                                Ok::<_, std::convert::Infallible>(resp(
                                    status,
                                    Vec::new(),
                                    "application/x-protobuf",
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector {
            addr,
            spans,
            services,
        }
    }

    fn of_trace(&self, trace: &[u8]) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect()
    }
}

fn string(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        _ => String::new(),
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| string(&kv.value))
}

fn hex16(b: &[u8]) -> String {
    hex::encode(b)
}

fn config(collector: &str, live: &Upstream, dead: std::net::SocketAddr) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
tracing:
  otlp_endpoint: "http://{collector}/v1/traces"
  service_name: edge-gw
  sample_ratio: 1.0
upstreams:
  shop:
    backends: [{{ addr: "{dead}" }}, {{ addr: "{live}" }}]
    retry: {{ attempts: 2, backoff: 1ms }}
    circuit_breaker: {{ enabled: false }}
auth:
  api_keys:
    keys: [{{ id: tracer, sha256: "{key}" }}]
routes:
  - {{ name: items, match: {{ path: "/items/**" }}, upstream: shop, auth: {{ any_of: [api_key] }}, cache: {{ default_ttl: 60s }} }}
"#,
        live = live.addr,
        key = hex::encode(Sha256::digest(KEY.as_bytes())),
    )
}

/// A reserved address that refuses connections (kept while `d` lives).
fn addr_of(d: &DeadPort) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], d.port))
}

#[tokio::test]
async fn spans_of_an_authenticated_cached_retried_request() {
    let collector = Collector::start().await;
    let live = Upstream::start("live").await;
    let dead = dead_port();
    let gw = Gateway::start(&config(&collector.addr.to_string(), &live, addr_of(&dead))).await;
    let c = client();
    let parent = "00f067aa0ba902b7";
    // round robin over a dead and a live backend: of four first requests, some go to the
    // dead one first and are retried on the live one
    let mut traces = Vec::new();
    for i in 0..4 {
        let trace = format!("4bf92f3577b34da6a3ce929d0e0e47{i:02x}");
        let r = c
            .get(gw.url(&format!("/items/{i}")))
            .header("x-api-key", KEY)
            .header("traceparent", format!("00-{trace}-{parent}-01"))
            .header("tracestate", "vendor=abc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        traces.push(trace);
    }
    // the same resource again: a cache hit, no upstream attempt
    let hit_trace = "4bf92f3577b34da6a3ce929d0e0e47ff".to_string();
    let r = c
        .get(gw.url("/items/0"))
        .header("x-api-key", KEY)
        .header("traceparent", format!("00-{hit_trace}-{parent}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");

    let want = traces.len() + 1;
    let got = eventually(Duration::from_secs(15), || {
        let n = traces
            .iter()
            .chain([&hit_trace])
            .filter(|t| !collector.of_trace(&hex::decode(t).unwrap()).is_empty())
            .count();
        async move { n == want }
    })
    .await;
    assert!(got, "spans of every trace reached the collector");
    assert!(collector
        .services
        .lock()
        .unwrap()
        .iter()
        .all(|s| s == "edge-gw"));

    let mut retried = 0;
    for t in &traces {
        let spans = collector.of_trace(&hex::decode(t).unwrap());
        let server: Vec<&Span> = spans.iter().filter(|s| s.kind == 2).collect();
        assert_eq!(server.len(), 1, "one server span for {t}: {spans:?}");
        let server = server[0];
        assert_eq!(
            hex16(&server.parent_span_id),
            parent,
            "parented on the caller's span"
        );
        assert_eq!(server.trace_state, "vendor=abc", "tracestate kept");
        assert!(server.name.contains("items"), "{}", server.name);
        assert_eq!(attr(server, "http.route").as_deref(), Some("items"));
        assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(
            attr(server, "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(
            attr(server, "portcullis.auth").as_deref(),
            Some("authenticated")
        );
        assert_eq!(attr(server, "enduser.id").as_deref(), Some("tracer"));
        assert_eq!(attr(server, "portcullis.cache").as_deref(), Some("MISS"));
        assert_eq!(attr(server, "client.address").as_deref(), Some("127.0.0.1"));
        assert!(server.end_time_unix_nano >= server.start_time_unix_nano);
        let attempts: Vec<&Span> = spans.iter().filter(|s| s.kind == 3).collect();
        assert!(!attempts.is_empty(), "an attempt span for {t}");
        for a in &attempts {
            assert_eq!(
                a.parent_span_id, server.span_id,
                "attempts are children of the server span"
            );
            assert!(a.start_time_unix_nano >= server.start_time_unix_nano);
        }
        let last = attempts.last().unwrap();
        assert_eq!(attr(last, "server.address"), Some(live.addr.to_string()));
        assert_eq!(
            attr(last, "http.response.status_code").as_deref(),
            Some("200")
        );
        if attempts.len() == 2 {
            retried += 1;
            assert_eq!(attr(attempts[0], "portcullis.retry").as_deref(), Some("0"));
            assert_eq!(
                attr(attempts[0], "error.type").as_deref(),
                Some("connect_error")
            );
            assert_eq!(attr(attempts[1], "portcullis.retry").as_deref(), Some("1"));
        }
    }
    assert!(
        retried >= 1,
        "at least one request was retried and traced as two attempts"
    );

    let hit = collector.of_trace(&hex::decode(&hit_trace).unwrap());
    assert_eq!(hit.len(), 1, "a cache hit has no attempt span: {hit:?}");
    assert_eq!(attr(&hit[0], "portcullis.cache").as_deref(), Some("HIT"));
}

#[tokio::test]
async fn a_dead_collector_costs_requests_nothing_and_drops_are_counted() {
    let live = Upstream::start("live").await;
    let dead_collector = dead_port();
    let yaml = config(&addr_of(&dead_collector).to_string(), &live, live.addr)
        .replace(", cache: { default_ttl: 60s }", "");
    let gw = Gateway::start(&yaml).await;
    let c = client();
    for i in 0..20 {
        let r = c
            .get(gw.url(&format!("/items/x{i}")))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "requests are unaffected by the collector");
    }
    let dropped = eventually(Duration::from_secs(15), || {
        let url = gw.admin_url("/metrics");
        let c = c.clone();
        async move {
            let Ok(r) = c.get(url).send().await else {
                return false;
            };
            let text = r.text().await.unwrap_or_default();
            text.lines()
                .find(|l| {
                    l.starts_with(
                        "portcullis_tracing_spans_dropped_total{reason=\"export_failed\"}",
                    )
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v >= 20.0)
        }
    })
    .await;
    assert!(
        dropped,
        "the spans the dead collector could not take are counted"
    );
}

#[test]
fn tracing_config_is_validated() {
    let (ok, out) = validate(
        "tracing: { otlp_endpoint: \"http://127.0.0.1:4318/v1/traces\", sample_ratio: 1.5 }\nupstreams: {}\nroutes: []\n",
    );
    assert!(!ok && out.contains("tracing.sample_ratio"), "{out}");
    let (ok, out) = validate(
        "tracing: { otlp_endpoint: \"https://collector:4318/v1/traces\" }\nupstreams: {}\nroutes: []\n",
    );
    assert!(!ok && out.contains("tracing.otlp_endpoint"), "{out}");
}
