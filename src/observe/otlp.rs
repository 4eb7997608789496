//! OpenTelemetry traces over OTLP/HTTP (protobuf), off the request path.
//!
//! A traced request yields one server span (route, method, status, client, auth outcome and
//! identity, rate-limit decision, cache status) and one client span per upstream attempt
//! (backend, timing, error, retry number), parented on the caller's `traceparent`. The
//! `logging` phase hands the finished spans to a bounded channel (`tracing.queue` requests)
//! and never waits: when it is full the spans are dropped and counted. One exporter thread
//! batches them (up to 512 requests or 1 s), encodes an `ExportTraceServiceRequest` and POSTs
//! it to `tracing.otlp_endpoint` with a 2 s timeout; a failed export drops that batch and
//! counts it. The endpoint, headers and service name are read from the current config at
//! each export, so a reload applies to the next batch.
//!
//! Sampling is decided once per request in `early_request_filter`: the caller's sampled flag
//! when `parent_based` (the default) and the caller sent one, else `sample_ratio`.

use crate::config::TracingConfig;
use crate::observe::metrics::METRICS;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Whether this request is traced.
pub fn sample(cfg: Option<&TracingConfig>, parent_sampled: Option<bool>) -> bool {
    let Some(c) = cfg else { return false };
    match parent_sampled {
        Some(s) if c.parent_based => s,
        _ => {
            c.sample_ratio >= 1.0
                || (c.sample_ratio > 0.0 && rand::random::<f64>() < c.sample_ratio)
        }
    }
}

/// One upstream attempt of a traced request.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub backend: String,
    pub retry: u32,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
}

/// An attribute value.
pub enum Value {
    Str(String),
    Int(i64),
}

/// The spans of one request, ready to encode.
pub struct RequestSpans {
    pub trace_id: [u8; 16],
    pub server_span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub error: bool,
    pub attributes: Vec<(&'static str, Value)>,
    pub tracestate: String,
    pub attempts: Vec<Attempt>,
}

static SINK: OnceLock<SyncSender<RequestSpans>> = OnceLock::new();

/// Hand a traced request's spans to the exporter; never blocks.
pub fn submit(spans: RequestSpans) {
    let Some(tx) = SINK.get() else {
        METRICS
            .spans_dropped
            .with_label_values(&["no_exporter"])
            .inc();
        return;
    };
    match tx.try_send(spans) {
        Ok(()) => {}
        Err(TrySendError::Full(s)) | Err(TrySendError::Disconnected(s)) => {
            let n = 1 + s.attempts.len() as u64;
            METRICS
                .spans_dropped
                .with_label_values(&["queue_full"])
                .inc_by(n);
        }
    }
}

/// Start the exporter thread (once). `config` reads the current tracing config.
pub fn start<F>(queue: usize, config: F)
where
    F: Fn() -> Option<TracingConfig> + Send + 'static,
{
    if SINK.get().is_some() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(queue.max(16));
    if SINK.set(tx).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || export_loop(rx, config));
    if let Err(e) = spawned {
        log::error!("tracing: cannot start the exporter thread: {e}");
    }
}

fn export_loop<F>(rx: Receiver<RequestSpans>, config: F)
where
    F: Fn() -> Option<TracingConfig>,
{
    const MAX_BATCH: usize = 512;
    let mut batch: Vec<RequestSpans> = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = match rx.recv() {
            Ok(s) => s,
            Err(_) => return,
        };
        batch.push(first);
        let deadline = Instant::now() + Duration::from_secs(1);
        while batch.len() < MAX_BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        let spans: u64 = batch.iter().map(|r| 1 + r.attempts.len() as u64).sum();
        let Some(cfg) = config() else {
            // tracing was switched off by a reload: what was queued is not exported
            METRICS
                .spans_dropped
                .with_label_values(&["disabled"])
                .inc_by(spans);
            batch.clear();
            continue;
        };
        let body = encode(&cfg, &batch).encode_to_vec();
        batch.clear();
        match post(&cfg, &body) {
            Ok(()) => METRICS.spans_exported.inc_by(spans),
            Err(e) => {
                METRICS
                    .spans_dropped
                    .with_label_values(&["export_failed"])
                    .inc_by(spans);
                log::debug!("tracing: export to {} failed: {e}", cfg.otlp_endpoint);
            }
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn kv(key: &str, v: Value) -> KeyValue {
    let value = match v {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn encode(cfg: &TracingConfig, batch: &[RequestSpans]) -> ExportTraceServiceRequest {
    let mut spans = Vec::new();
    for r in batch {
        let mut attrs = Vec::with_capacity(r.attributes.len());
        for (k, v) in &r.attributes {
            let v = match v {
                Value::Str(s) => Value::Str(s.clone()),
                Value::Int(i) => Value::Int(*i),
            };
            attrs.push(kv(k, v));
        }
        spans.push(Span {
            trace_id: r.trace_id.to_vec(),
            span_id: r.server_span_id.to_vec(),
            trace_state: r.tracestate.clone(),
            parent_span_id: r.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: r.name.clone(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: nanos(r.start),
            end_time_unix_nano: nanos(r.end),
            attributes: attrs,
            status: Some(Status {
                code: if r.error {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
                ..Default::default()
            }),
            ..Default::default()
        });
        for a in &r.attempts {
            let mut attrs = vec![
                kv("server.address", Value::Str(a.backend.clone())),
                kv("portcullis.retry", Value::Int(i64::from(a.retry))),
            ];
            if let Some(s) = a.status {
                attrs.push(kv("http.response.status_code", Value::Int(i64::from(s))));
            }
            if let Some(e) = a.error {
                attrs.push(kv("error.type", Value::Str(e.to_string())));
            }
            let failed = a.error.is_some() || a.status.is_some_and(|s| s >= 500);
            spans.push(Span {
                trace_id: r.trace_id.to_vec(),
                span_id: rand::random::<u64>().max(1).to_be_bytes().to_vec(),
                trace_state: r.tracestate.clone(),
                parent_span_id: r.server_span_id.to_vec(),
                name: "upstream attempt".to_string(),
                kind: span::SpanKind::Client as i32,
                start_time_unix_nano: nanos(a.start),
                end_time_unix_nano: nanos(a.end.unwrap_or(r.end)),
                attributes: attrs,
                status: Some(Status {
                    code: if failed {
                        status::StatusCode::Error as i32
                    } else {
                        status::StatusCode::Unset as i32
                    },
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::Str(cfg.service_name.clone())),
                    kv(
                        "service.version",
                        Value::Str(env!("CARGO_PKG_VERSION").into()),
                    ),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "portcullis".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// POST the body to the collector over plain HTTP/1.1 (a blocking socket with timeouts:
/// this runs on the exporter thread only).
fn post(cfg: &TracingConfig, body: &[u8]) -> Result<(), String> {
    use std::io::{Read, Write};
    let uri: http::Uri = cfg
        .otlp_endpoint
        .parse()
        .map_err(|e| format!("bad endpoint: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// OTLP endpoints are supported".into());
    }
    let host = uri.host().ok_or("no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/v1/traces", |p| p.as_str());
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the endpoint does not resolve")?;
    let timeout = Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n",
        uri.authority().map_or(host, |a| a.as_str()),
        body.len()
    );
    for (k, v) in &cfg.headers {
        if k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
            continue;
        }
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&buf[..n]);
    match line.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        Some(code) => Err(format!("the collector answered {code}")),
        None => Err("no answer from the collector".into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn cfg(ratio: f64, parent_based: bool) -> TracingConfig {
        TracingConfig {
            otlp_endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            sample_ratio: ratio,
            parent_based,
            service_name: "gw".into(),
            headers: Default::default(),
            queue: 16,
        }
    }

    #[test]
    fn sampling_follows_the_parent_then_the_ratio() {
        assert!(!sample(None, Some(true)));
        assert!(sample(Some(&cfg(0.0, true)), Some(true)));
        assert!(!sample(Some(&cfg(1.0, true)), Some(false)));
        assert!(sample(Some(&cfg(1.0, false)), Some(false)));
        assert!(!sample(Some(&cfg(0.0, false)), Some(true)));
        assert!(sample(Some(&cfg(1.0, true)), None));
        let n = (0..2000)
            .filter(|_| sample(Some(&cfg(0.25, true)), None))
            .count();
        assert!((300..700).contains(&n), "{n} of 2000 at 0.25");
    }

    #[test]
    fn encodes_a_server_span_and_its_attempts() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let r = RequestSpans {
            trace_id: [7; 16],
            server_span_id: [1; 8],
            parent_span_id: Some([2; 8]),
            name: "GET users".into(),
            start: t0,
            end: t0 + Duration::from_millis(5),
            error: false,
            attributes: vec![("http.route", Value::Str("users".into()))],
            tracestate: "k=v".into(),
            attempts: vec![Attempt {
                backend: "127.0.0.1:1".into(),
                retry: 0,
                start: t0,
                end: Some(t0 + Duration::from_millis(1)),
                status: None,
                error: Some("connect_error"),
            }],
        };
        let req = encode(&cfg(1.0, true), &[r]);
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].parent_span_id, vec![2; 8]);
        assert_eq!(spans[1].parent_span_id, vec![1; 8]);
        assert_eq!(spans[1].trace_id, vec![7; 16]);
        assert_eq!(
            spans[1].status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        let bytes = req.encode_to_vec();
        let back = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            back.resource_spans[0].scope_spans[0].spans[0].name,
            "GET users"
        );
    }
}
