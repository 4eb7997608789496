//! Prometheus metrics. Hot-path recording uses label handles resolved once (per route,
//! per upstream, per policy) so a request costs a few atomic increments, never a label
//! lookup or string formatting. Gauges that describe state (breakers, health, cache
//! size) are computed when `/metrics` is scraped.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{LazyLock, OnceLock};

const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub in_flight: IntGauge,
    pub auth_failures: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub cluster_sync_errors: IntCounter,
    pub circuit_state: IntGaugeVec,
    pub backend_healthy: IntGaugeVec,
    pub retries: IntCounterVec,
    pub stale_connection_retries: IntCounterVec,
    pub retry_budget_exhausted: IntCounter,
    pub cache_requests: IntCounterVec,
    pub cache_bytes: IntGauge,
    pub cache_evictions: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub access_log_dropped: IntCounter,
    pub build_info: IntGaugeVec,
    /// Answers the gateway made itself (4xx/5xx), by the reason code of their JSON body.
    pub rejections: IntCounterVec,
    /// Per backend: attempts by outcome (as the breaker saw them), and response latency.
    pub backend_attempts: IntCounterVec,
    pub backend_duration: HistogramVec,
    /// Credentials naming a rate-limit tier the config does not have.
    pub unknown_tiers: IntCounter,
    /// Trace spans sent to the collector, and those dropped (queue full, export failed).
    pub spans_exported: IntCounter,
    pub spans_dropped: IntCounterVec,
    /// Plugin phases that failed (`crate::plugin::Flow::Error`), by route and plugin.
    pub plugin_errors: IntCounterVec,
}

// Definitions are constants: a bad one fails the first test that records a metric.
#[allow(clippy::panic)]
fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

// Definitions are constants: a bad one fails the first test that records a metric.
#[allow(clippy::panic)]
fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(g.clone()));
    g
}

// Definitions are constants: a bad one fails the first test that records a metric.
#[allow(clippy::panic)]
fn hist_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(h.clone()));
    h
}

// Definitions are constants: a bad one fails the first test that records a metric.
#[allow(clippy::panic)]
fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(g.clone()));
    g
}

// Definitions are constants: a bad one fails the first test that records a metric.
#[allow(clippy::panic)]
fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

// Metric definitions are constants: a failure here is a programming error caught by the
// first test that touches metrics, never something a request can trigger.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let m = Metrics {
        requests: counter_vec(
            &r,
            "portcullis_requests_total",
            "Requests by route, method, status and upstream",
            &["route", "method", "status", "upstream"],
        ),
        request_duration: hist_vec(
            &r,
            "portcullis_request_duration_seconds",
            "Time from request start to the end of the response",
            &["route"],
        ),
        upstream_duration: hist_vec(
            &r,
            "portcullis_upstream_duration_seconds",
            "Time from choosing a backend to its response header",
            &["upstream"],
        ),
        in_flight: gauge(
            &r,
            "portcullis_requests_in_flight",
            "Requests being handled",
        ),
        auth_failures: counter_vec(
            &r,
            "portcullis_auth_failures_total",
            "Rejected credentials by reason",
            &["reason"],
        ),
        rate_limited: counter_vec(
            &r,
            "portcullis_rate_limited_total",
            "Requests refused with 429 by policy",
            &["policy"],
        ),
        cluster_sync_errors: counter(
            &r,
            "portcullis_ratelimit_cluster_sync_errors_total",
            "Failed rate-limit syncs with Redis",
        ),
        circuit_state: gauge_vec(
            &r,
            "portcullis_circuit_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            &["upstream", "backend"],
        ),
        backend_healthy: gauge_vec(
            &r,
            "portcullis_backend_healthy",
            "1 if the backend passes health checks",
            &["upstream", "backend"],
        ),
        retries: counter_vec(
            &r,
            "portcullis_retries_total",
            "Retried upstream attempts by reason",
            &["upstream", "reason"],
        ),
        stale_connection_retries: counter_vec(
            &r,
            "portcullis_upstream_stale_connection_retries_total",
            "Requests resent on a fresh connection because a reused pooled connection was closed by the backend without an answer (not counted as retries, failures or budget)",
            &["upstream"],
        ),
        retry_budget_exhausted: counter(
            &r,
            "portcullis_retry_budget_exhausted_total",
            "Retries refused because the retry budget was spent",
        ),
        cache_requests: counter_vec(
            &r,
            "portcullis_cache_requests_total",
            "Cacheable requests by result",
            &["result"],
        ),
        cache_bytes: gauge(
            &r,
            "portcullis_cache_bytes",
            "Bytes held by the response cache",
        ),
        cache_evictions: gauge(
            &r,
            "portcullis_cache_evictions",
            "Entries evicted from the response cache since start",
        ),
        config_reloads: counter_vec(
            &r,
            "portcullis_config_reloads_total",
            "Config reloads by result",
            &["result"],
        ),
        config_generation: gauge(
            &r,
            "portcullis_config_generation",
            "Generation of the config being served",
        ),
        access_log_dropped: counter(
            &r,
            "portcullis_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind",
        ),
        build_info: gauge_vec(
            &r,
            "portcullis_build_info",
            "Build information",
            &["version"],
        ),
        rejections: counter_vec(
            &r,
            "portcullis_rejections_total",
            "Responses the gateway made itself, by reason (the JSON body's error code)",
            &["reason"],
        ),
        backend_attempts: counter_vec(
            &r,
            "portcullis_backend_attempts_total",
            "Upstream attempts per backend by outcome (success or failure, as the breaker counts)",
            &["upstream", "backend", "outcome"],
        ),
        backend_duration: hist_vec(
            &r,
            "portcullis_backend_response_duration_seconds",
            "Time from choosing a backend to its response header, per backend",
            &["upstream", "backend"],
        ),
        unknown_tiers: counter(
            &r,
            "portcullis_ratelimit_unknown_tier_total",
            "Requests whose credential named a tier absent from rate_limits.tiers",
        ),
        spans_exported: counter(
            &r,
            "portcullis_tracing_spans_exported_total",
            "Trace spans accepted by the OTLP collector",
        ),
        spans_dropped: counter_vec(
            &r,
            "portcullis_tracing_spans_dropped_total",
            "Trace spans dropped, by reason (queue_full, export_failed, disabled)",
            &["reason"],
        ),
        plugin_errors: counter_vec(
            &r,
            "portcullis_plugin_errors_total",
            "Plugin phases that failed (answered 500 plugin_error, or cut a response short), by route and plugin",
            &["route", "plugin"],
        ),
        registry: r,
    };
    // process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ...
    #[cfg(target_os = "linux")]
    {
        let _ = m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    m
});

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "OTHER",
];
const STATUSES: [u16; 30] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 414,
    415, 422, 429, 431, 499, 500, 501, 502, 503, 504, 101,
];

fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        http::Method::TRACE => 7,
        http::Method::CONNECT => 8,
        _ => 9,
    }
}

/// Pre-resolved request metrics for one route (or for unmatched requests).
/// Handles are resolved on first use, so routes that see no traffic cost a few words.
pub struct RouteMetrics {
    route: String,
    /// Upstream label values; index 0 is "" (answered by the gateway itself).
    upstreams: Vec<String>,
    cells: OnceLock<Box<[OnceLock<IntCounter>]>>,
    duration: OnceLock<Histogram>,
}

impl RouteMetrics {
    pub fn new(route: &str, upstreams: &[&str]) -> RouteMetrics {
        let mut ups = vec![String::new()];
        ups.extend(upstreams.iter().map(|s| s.to_string()));
        RouteMetrics {
            route: route.to_string(),
            cells: OnceLock::new(),
            upstreams: ups,
            duration: OnceLock::new(),
        }
    }

    /// Position of `name` in the upstream labels (0 when none).
    pub fn upstream_index(&self, name: Option<&str>) -> usize {
        match name {
            None => 0,
            Some(n) => self.upstreams.iter().position(|u| u == n).unwrap_or(0),
        }
    }

    pub fn record(&self, method: &http::Method, status: u16, upstream: usize, seconds: f64) {
        self.duration
            .get_or_init(|| {
                METRICS
                    .request_duration
                    .with_label_values(&[self.route.as_str()])
            })
            .observe(seconds);
        let mi = method_index(method);
        let up = upstream.min(self.upstreams.len() - 1);
        let status_label = |s: u16| -> String { s.to_string() };
        match STATUSES.iter().position(|s| *s == status) {
            Some(si) => {
                let idx = (up * METHODS.len() + mi) * STATUSES.len() + si;
                let cells = self.cells.get_or_init(|| {
                    (0..self.upstreams.len() * METHODS.len() * STATUSES.len())
                        .map(|_| OnceLock::new())
                        .collect()
                });
                if let Some(cell) = cells.get(idx) {
                    cell.get_or_init(|| {
                        METRICS.requests.with_label_values(&[
                            self.route.as_str(),
                            METHODS[mi],
                            &status_label(status),
                            self.upstreams[up].as_str(),
                        ])
                    })
                    .inc();
                }
            }
            // uncommon status: the slow path with a label lookup
            None => METRICS
                .requests
                .with_label_values(&[
                    self.route.as_str(),
                    METHODS[mi],
                    &status_label(status),
                    self.upstreams[up].as_str(),
                ])
                .inc(),
        }
    }
}

/// Count a failed plugin phase.
pub fn plugin_error(route: &str, plugin: &str) {
    METRICS
        .plugin_errors
        .with_label_values(&[route, plugin])
        .inc();
}

/// Count an answer the gateway made itself (`reason` is its JSON error code).
pub fn rejection(reason: &'static str) {
    METRICS.rejections.with_label_values(&[reason]).inc();
}

/// One backend's series, resolved once when the backend is created.
pub struct BackendMetrics {
    pub success: IntCounter,
    pub failure: IntCounter,
    pub duration: Histogram,
}

impl BackendMetrics {
    pub fn new(upstream: &str, backend: &str) -> BackendMetrics {
        let m = &METRICS;
        BackendMetrics {
            success: m
                .backend_attempts
                .with_label_values(&[upstream, backend, "success"]),
            failure: m
                .backend_attempts
                .with_label_values(&[upstream, backend, "failure"]),
            duration: m.backend_duration.with_label_values(&[upstream, backend]),
        }
    }
}

pub static UNMATCHED: LazyLock<RouteMetrics> = LazyLock::new(|| RouteMetrics::new("", &[]));

/// Pre-resolved auth failure counters.
pub fn auth_failure(reason: &'static str) {
    static CELLS: LazyLock<Vec<(&'static str, IntCounter)>> = LazyLock::new(|| {
        [
            "missing",
            "malformed",
            "unknown_key",
            "expired",
            "not_yet_valid",
            "bad_signature",
            "wrong_audience",
            "wrong_issuer",
            "bad_algorithm",
            "missing_claim",
            "revoked",
            "insufficient_scope",
            "keys_unavailable",
        ]
        .iter()
        .map(|r| (*r, METRICS.auth_failures.with_label_values(&[r])))
        .collect()
    });
    match CELLS.iter().find(|(r, _)| *r == reason) {
        Some((_, c)) => c.inc(),
        None => METRICS.auth_failures.with_label_values(&[reason]).inc(),
    }
}

/// Render the registry in the Prometheus text format.
pub fn render() -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    let families = METRICS.registry.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        log::error!("cannot encode metrics: {e}");
    }
    out
}
