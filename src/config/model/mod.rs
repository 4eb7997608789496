//! The YAML model: exactly what the file says, nothing compiled. Unknown keys are rejected.
//! The compiled runtime view lives in `crate::snapshot`.

mod auth;
mod cache;
mod observe;
mod ratelimit;
mod route;
mod server;
mod upstream;
mod wasm;

pub use auth::*;
pub use cache::*;
pub use observe::*;
pub use ratelimit::*;
pub use route::*;
pub use server::*;
pub use upstream::*;
pub use wasm::*;

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default, deserialize_with = "crate::config::unique::map")]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// OpenTelemetry traces over OTLP/HTTP (protobuf); absent: no spans, no cost.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    #[serde(default)]
    pub cache: CacheConfig,
    /// A fleet sharing one Redis (`crate::config::cluster`); absent: a standalone instance.
    #[serde(default)]
    pub cluster: Option<crate::config::cluster::FleetConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}
