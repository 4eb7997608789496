//! Tracing export and the access log.

use super::*;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `tracing`: where spans go and which requests make them. Reloadable.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: String,
    /// Share of new traces (requests without a sampled parent) that are recorded, 0..=1.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Follow the caller's `traceparent` sampling flag when there is one (default).
    #[serde(default = "default_true")]
    pub parent_based: bool,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Extra HTTP headers on every export (e.g. an API key of a hosted collector).
    #[serde(default, deserialize_with = "crate::config::unique::map")]
    pub headers: BTreeMap<String, String>,
    /// Finished requests waiting for export; beyond it spans are dropped and counted.
    #[serde(default = "default_trace_queue")]
    pub queue: usize,
}

pub(crate) fn default_sample_ratio() -> f64 {
    1.0
}
pub(crate) fn default_service_name() -> String {
    "portcullis".to_string()
}
pub(crate) fn default_trace_queue() -> usize {
    4096
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `stdout` (for the journal) or a file path. Changing it takes effect on reload.
    #[serde(default = "default_log_path")]
    pub path: String,
    /// Share of requests logged, 0.0–1.0.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Log every 4xx/5xx whatever the sample rate.
    #[serde(default = "default_true")]
    pub always_log_errors: bool,
    /// Lines buffered for the writer; beyond this lines are dropped and counted.
    #[serde(default = "default_log_buffer")]
    pub buffer: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            path: default_log_path(),
            sample: default_sample(),
            always_log_errors: true,
            buffer: default_log_buffer(),
        }
    }
}

pub(crate) fn default_log_path() -> String {
    "stdout".to_string()
}
pub(crate) fn default_sample() -> f64 {
    1.0
}
pub(crate) fn default_log_buffer() -> usize {
    16_384
}
