//! The gateway's metrics about filters (`portcullis_wasm_errors_total`) and the metrics
//! filters define themselves (`proxy_define_metric`), exported as
//! `portcullis_wasm_filter_{counter,gauge,histogram}{filter,name}`.

use super::abi::metric;
use crate::observe::metrics::METRICS;
use parking_lot::Mutex;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge};
use prometheus::{IntGaugeVec, Opts};
use std::collections::HashSet;
use std::sync::LazyLock;

/// Distinct filter metrics the process accepts, so a filter cannot grow `/metrics` unbounded.
const MAX_SERIES: usize = 2000;

pub struct WasmMetrics {
    /// Failures that answered 500: `kind` is `trap`, `timeout`, `memory` or `abi`.
    pub errors: IntCounterVec,
    /// Instances created (on load and when the pool runs dry), by filter.
    pub instances: IntCounterVec,
    counters: IntCounterVec,
    gauges: IntGaugeVec,
    histograms: HistogramVec,
    series: Mutex<HashSet<(String, String, i32)>>,
}

// Definitions are constants: a bad one fails the first test that records a metric.
#[allow(clippy::expect_used)]
pub static WASM_METRICS: LazyLock<WasmMetrics> = LazyLock::new(|| {
    let r = &METRICS.registry;
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
        let _ = r.register(Box::new(c.clone()));
        c
    };
    let gauges = IntGaugeVec::new(
        Opts::new(
            "portcullis_wasm_filter_gauge",
            "Gauges defined by wasm filters",
        ),
        &["filter", "name"],
    )
    .expect("metric");
    let _ = r.register(Box::new(gauges.clone()));
    let histograms = HistogramVec::new(
        HistogramOpts::new(
            "portcullis_wasm_filter_histogram",
            "Histograms defined by wasm filters",
        )
        .buckets(prometheus::exponential_buckets(1.0, 4.0, 12).expect("buckets")),
        &["filter", "name"],
    )
    .expect("metric");
    let _ = r.register(Box::new(histograms.clone()));
    WasmMetrics {
        errors: counter(
            "portcullis_wasm_errors_total",
            "Wasm filter failures answered with a 500, by kind (trap, timeout, memory, abi)",
            &["route", "filter", "kind"],
        ),
        instances: counter(
            "portcullis_wasm_instances_created_total",
            "Wasm filter instances created",
            &["filter"],
        ),
        counters: counter(
            "portcullis_wasm_filter_counter",
            "Counters defined by wasm filters",
            &["filter", "name"],
        ),
        gauges,
        histograms,
        series: Mutex::new(HashSet::new()),
    }
});

/// One metric a filter defined, resolved to its series once.
#[derive(Clone)]
pub enum FilterMetric {
    Counter(String, IntCounter),
    Gauge(String, IntGauge),
    Histogram(String, Histogram),
}

impl FilterMetric {
    pub fn same(&self, other: &FilterMetric) -> bool {
        match (self, other) {
            (FilterMetric::Counter(a, _), FilterMetric::Counter(b, _))
            | (FilterMetric::Gauge(a, _), FilterMetric::Gauge(b, _))
            | (FilterMetric::Histogram(a, _), FilterMetric::Histogram(b, _)) => a == b,
            _ => false,
        }
    }

    pub fn increment(&self, by: i64) {
        match self {
            FilterMetric::Counter(_, c) => c.inc_by(by.max(0) as u64),
            FilterMetric::Gauge(_, g) => g.add(by),
            FilterMetric::Histogram(_, h) => h.observe(by as f64),
        }
    }

    pub fn record(&self, v: u64) {
        match self {
            FilterMetric::Counter(_, c) => c.inc_by(v.saturating_sub(c.get())),
            FilterMetric::Gauge(_, g) => g.set(i64::try_from(v).unwrap_or(i64::MAX)),
            FilterMetric::Histogram(_, h) => h.observe(v as f64),
        }
    }

    pub fn get(&self) -> u64 {
        match self {
            FilterMetric::Counter(_, c) => c.get(),
            FilterMetric::Gauge(_, g) => g.get().max(0) as u64,
            FilterMetric::Histogram(_, h) => h.get_sample_count(),
        }
    }
}

/// The series for metric `name` of type `typ` defined by `filter`.
pub fn define(filter: &str, typ: i32, name: &str) -> Option<FilterMetric> {
    let m = &*WASM_METRICS;
    if name.is_empty() || name.len() > 200 {
        return None;
    }
    {
        let mut seen = m.series.lock();
        let key = (filter.to_string(), name.to_string(), typ);
        if !seen.contains(&key) {
            if seen.len() >= MAX_SERIES {
                return None;
            }
            seen.insert(key);
        }
    }
    let labels = [filter, name];
    let n = name.to_string();
    Some(match typ {
        metric::COUNTER => FilterMetric::Counter(n, m.counters.with_label_values(&labels)),
        metric::GAUGE => FilterMetric::Gauge(n, m.gauges.with_label_values(&labels)),
        metric::HISTOGRAM => FilterMetric::Histogram(n, m.histograms.with_label_values(&labels)),
        _ => return None,
    })
}
