//! Upstream pools: backends, load balancing, health checks, breakers, retries, timeouts.

use super::*;
use crate::config::units::Dur;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbKind {
    #[default]
    RoundRobin,
    Random,
    ConsistentHash,
    LeastRequest,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default)]
    pub lb: LbKind,
    /// For `consistent_hash`: `ip` (default), `path`, `header:NAME` or `cookie:NAME`.
    #[serde(default)]
    pub hash_key: Option<String>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Backends found by resolving a DNS name, re-resolved every `refresh`.
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// How often backends given as host names are re-resolved.
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: Dur,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Connect to the backends over TLS.
    #[serde(default)]
    pub tls: bool,
    /// SNI and the name the backend certificate must carry (default: the backend's host
    /// name, or its IP address). Only with `tls: true`.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the backend certificate (chain and name). Only with `tls: true`.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// PEM file of the CA certificates trusted for the backends (default: the system's).
    /// Only with `tls: true`.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// `h1` (default) or `h2`: HTTP/2 over TLS (ALPN `h2`) or, without TLS, with prior
    /// knowledge (h2c). Needed for gRPC backends.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    H1,
    H2,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Consecutive failures that open the breaker.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Also open when this share of requests in `window` failed (after `min_requests`).
    #[serde(default)]
    pub failure_ratio: Option<f64>,
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_breaker_window")]
    pub window: Dur,
    #[serde(default = "default_open_for")]
    pub open_for: Dur,
    /// Repeated trips double the open time up to this.
    #[serde(default = "default_max_open_for")]
    pub max_open_for: Dur,
    #[serde(default = "default_half_open_probes")]
    pub half_open_probes: u32,
    /// Upstream statuses that count as failures (connect errors and timeouts always do).
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<u16>,
    /// At most this share of an upstream's backends is ejected at once (at least one).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            enabled: true,
            failure_threshold: default_failure_threshold(),
            failure_ratio: None,
            min_requests: default_min_requests(),
            window: default_breaker_window(),
            open_for: default_open_for(),
            max_open_for: default_max_open_for(),
            half_open_probes: default_half_open_probes(),
            failure_statuses: default_failure_statuses(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

pub(crate) fn default_failure_threshold() -> u32 {
    5
}
pub(crate) fn default_min_requests() -> u32 {
    20
}
pub(crate) fn default_breaker_window() -> Dur {
    Dur::secs(10)
}
pub(crate) fn default_open_for() -> Dur {
    Dur::secs(30)
}
pub(crate) fn default_max_open_for() -> Dur {
    Dur::secs(300)
}
pub(crate) fn default_half_open_probes() -> u32 {
    3
}
pub(crate) fn default_failure_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
pub(crate) fn default_max_ejection_percent() -> u32 {
    50
}

/// A retry condition: `connect_error`, `timeout`, `reset` or an upstream status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    ConnectError,
    Timeout,
    /// The connection failed after it was made (reset, closed, malformed response).
    Reset,
    Status(u16),
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_yaml::Value::deserialize(d)?;
        match &v {
            serde_yaml::Value::Number(n) => n
                .as_u64()
                .filter(|c| (100..=599).contains(c))
                .map(|c| RetryOn::Status(c as u16))
                .ok_or_else(|| D::Error::custom(format!("`{n}` is not an HTTP status"))),
            serde_yaml::Value::String(s) => match s.as_str() {
                "connect_error" => Ok(RetryOn::ConnectError),
                "timeout" => Ok(RetryOn::Timeout),
                "reset" => Ok(RetryOn::Reset),
                other => other
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .map(RetryOn::Status)
                    .ok_or_else(|| {
                        D::Error::custom(format!(
                            "`{other}`: retry conditions are connect_error, timeout, reset or a status such as 503"
                        ))
                    }),
            },
            _ => Err(D::Error::custom("a retry condition is a name or a status")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first try (0 disables retries).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_backoff")]
    pub backoff: Dur,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Dur,
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Retries may not exceed this share of the upstream's requests over 10 s.
    #[serde(default = "default_budget")]
    pub budget: f64,
    /// Retries always allowed per 10 s window, whatever the budget (low-traffic upstreams).
    #[serde(default = "default_budget_min")]
    pub budget_min: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: default_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            on: default_retry_on(),
            budget: default_budget(),
            budget_min: default_budget_min(),
        }
    }
}

pub(crate) fn default_attempts() -> u32 {
    2
}
pub(crate) fn default_backoff() -> Dur {
    Dur::millis(25)
}
pub(crate) fn default_max_backoff() -> Dur {
    Dur::millis(250)
}
pub(crate) fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectError,
        RetryOn::Timeout,
        RetryOn::Reset,
        RetryOn::Status(502),
        RetryOn::Status(503),
        RetryOn::Status(504),
    ]
}
pub(crate) fn default_budget() -> f64 {
    0.2
}
pub(crate) fn default_budget_min() -> u32 {
    10
}

pub(crate) fn default_dns_refresh() -> Dur {
    Dur::secs(10)
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `ip:port` or `hostname:port` (resolved, and re-resolved every `dns_refresh`).
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

pub(crate) fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// `hostname:port`; every address the name resolves to becomes a backend.
    pub dns: String,
    #[serde(default = "default_dns_refresh")]
    pub refresh: Dur,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default, rename = "type")]
    pub kind: HealthCheckKind,
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// Host header of the probe (default: the backend address).
    #[serde(default)]
    pub host: Option<String>,
    /// Statuses that count as healthy (default: any 2xx).
    #[serde(default)]
    pub expect_status: Vec<u16>,
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    #[serde(default = "default_hc_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

pub(crate) fn default_hc_path() -> String {
    "/health".to_string()
}
pub(crate) fn default_hc_interval() -> Dur {
    Dur::secs(5)
}
pub(crate) fn default_hc_timeout() -> Dur {
    Dur::secs(1)
}
pub(crate) fn default_healthy_threshold() -> u32 {
    2
}
pub(crate) fn default_unhealthy_threshold() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    #[serde(default = "default_connect_timeout")]
    pub connect: Dur,
    /// Per attempt: the longest wait for the next byte of the upstream response.
    #[serde(default = "default_read_timeout")]
    pub read: Dur,
    /// Per request, across every attempt.
    #[serde(default = "default_total_timeout")]
    pub total: Dur,
    /// How long an idle pooled upstream connection is kept (default 4 s: below common
    /// backends' keep-alive timeouts).
    #[serde(default = "default_idle_timeout")]
    pub idle: Dur,
    /// An upgraded connection (WebSocket) is closed when no byte arrives from one side for
    /// this long. Replaces `read` and `total` for upgrade requests.
    #[serde(default = "default_websocket_idle")]
    pub websocket_idle: Dur,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect: default_connect_timeout(),
            read: default_read_timeout(),
            total: default_total_timeout(),
            idle: default_idle_timeout(),
            websocket_idle: default_websocket_idle(),
        }
    }
}

pub(crate) fn default_websocket_idle() -> Dur {
    Dur::secs(3600)
}

pub(crate) fn default_connect_timeout() -> Dur {
    Dur::secs(1)
}
pub(crate) fn default_read_timeout() -> Dur {
    Dur::secs(10)
}
pub(crate) fn default_total_timeout() -> Dur {
    Dur::secs(30)
}
/// Below the keep-alive timeouts backends commonly close idle connections at (Node 5 s,
/// uvicorn 5 s, Apache 5 s; gunicorn's 2 s is covered by the stale-connection retry): a
/// pooled connection is dropped by us before the backend closes it under us.
pub(crate) fn default_idle_timeout() -> Dur {
    Dur::secs(4)
}
