//! Routes: the match, the target and what applies to the requests they take.

use super::*;
use crate::config::units::ByteSize;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Used in metrics and logs; defaults to `HOST PATH` of the match.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub split: Option<Vec<SplitConfig>>,
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// A new path; `:name` and `**` are replaced by what the pattern captured.
    #[serde(default)]
    pub rewrite: Option<String>,
    #[serde(default)]
    pub request_headers: HeaderOps,
    #[serde(default)]
    pub response_headers: HeaderOps,
    /// Requests on this route may be retried whatever their method.
    #[serde(default)]
    pub idempotent: bool,
    /// Keep the client's `Host` header (default); `false` sends the backend address.
    #[serde(default = "default_true")]
    pub preserve_host: bool,
    /// A request whose method this route does not allow goes on to less specific routes
    /// instead of getting a 405. Off by default: a less specific route may have weaker
    /// auth, so the method alone would choose who may call it.
    #[serde(default)]
    pub method_fallthrough: bool,
    /// Query parameters whose values the access log replaces with `REDACTED` (`"*"`: all).
    /// An API key sent as a query parameter never reaches the log.
    #[serde(default)]
    pub log_redact_query: Vec<String>,
    #[serde(default)]
    pub auth: Option<RouteAuthConfig>,
    /// Rate-limit policies (names under `rate_limits.policies`); all must pass.
    #[serde(default)]
    pub rate_limit: Vec<String>,
    #[serde(default)]
    pub ip: Option<IpRulesConfig>,
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    #[serde(default)]
    pub security_headers: Option<SecurityHeadersConfig>,
    #[serde(default)]
    pub compression: Option<CompressionConfig>,
    /// A smaller (or larger) body limit for this route than `server.limits.max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<ByteSize>,
    /// Cache GET/HEAD responses of this route.
    #[serde(default)]
    pub cache: Option<RouteCacheConfig>,
    /// Compiled-in plugins (`crate::plugin`), run in this order after auth and rate limits.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// proxy-wasm filters (`crate::plugin::wasm`), run after `plugins`, in this order.
    #[serde(default)]
    pub wasm: Vec<WasmConfig>,
}

/// One entry of a route's `plugins` list: a registered plugin and its own settings,
/// checked by the plugin when the config is loaded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: String,
    #[serde(default)]
    pub config: serde_yaml::Value,
}

pub(crate) fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// `api.example.com` or `*.example.com`; absent matches any host.
    #[serde(default)]
    pub host: Option<String>,
    pub path: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Every listed request header must have exactly this value.
    #[serde(default, deserialize_with = "crate::config::unique::map")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    pub upstream: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Set (replace) these headers.
    #[serde(default, deserialize_with = "crate::config::unique::map")]
    pub set: BTreeMap<String, String>,
    /// Append these headers (keeping existing values).
    #[serde(default, deserialize_with = "crate::config::unique::map")]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}
