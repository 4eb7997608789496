//! A route's `cache:` block. `cache: {}` is an RFC 9111 shared cache that follows the upstream;
//! `default_ttl`, `max_ttl` and `override` are explicit departures from it. Validated and
//! compiled by `crate::cache::RouteCache::build`.

use super::units::Dur;
use serde::Deserialize;

/// Per-route response caching.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// No longer accepted (it was both the ceiling and the lifetime of responses without
    /// freshness); kept so that validation can say what replaces it.
    #[serde(default)]
    pub ttl: Option<Dur>,
    /// Lifetime of responses without explicit freshness (`max-age`, `s-maxage`, `Expires`),
    /// instead of the heuristic one. Only heuristically cacheable statuses, unless `statuses`
    /// says otherwise.
    #[serde(default)]
    pub default_ttl: Option<Dur>,
    /// Ceiling on every freshness lifetime.
    #[serde(default)]
    pub max_ttl: Option<Dur>,
    /// Ignore the upstream's freshness (`max-age`, `s-maxage`, `Expires`, `no-cache`,
    /// `stale-*`, heuristics): every stored response is fresh this long. `no-store` and
    /// `private` are still honoured.
    #[serde(default, rename = "override")]
    pub override_ttl: Option<Dur>,
    /// Only these statuses are stored. Absent: any status with explicit freshness, and the
    /// heuristically cacheable ones (RFC 9110 §15.1) otherwise.
    #[serde(default)]
    pub statuses: Option<Vec<u16>>,
    /// Request headers whose values are part of the key (beyond the upstream's `Vary`).
    #[serde(default, alias = "vary_headers")]
    pub key_headers: Vec<String>,
    /// On an authenticated route, one entry serves every identity (default: one per identity).
    #[serde(default)]
    pub shared: bool,
    /// After the lifetime, serve the stale entry this long while one request refreshes it
    /// (the upstream's `stale-while-revalidate` takes precedence).
    #[serde(default)]
    pub stale_while_revalidate: Dur,
    /// After the lifetime, serve the stale entry this long when the upstream fails (the
    /// upstream's `stale-if-error` takes precedence).
    #[serde(default)]
    pub stale_if_error: Dur,
    /// What happens to `Set-Cookie` in a stored response.
    #[serde(default)]
    pub set_cookie: SetCookie,
    /// RFC 9213 targeted cache control.
    #[serde(default)]
    pub targeted: TargetedConfig,
}

/// `cache.set_cookie`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SetCookie {
    /// Store the response without its `Set-Cookie` (the client whose request fetched it
    /// still gets the cookie; later hits do not).
    #[default]
    Strip,
    /// Store and replay `Set-Cookie` to every client served from the entry.
    Serve,
    /// Never store a response that sets a cookie.
    Bypass,
}

/// `cache.targeted`: fields that override `Cache-Control` and `Expires` for this cache.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetedConfig {
    /// In precedence order; the first present with a valid value rules. `[]`: none.
    #[serde(default = "default_targeted_fields")]
    pub fields: Vec<String>,
    /// Pass them on to the client (default: removed from every response of the route).
    #[serde(default)]
    pub forward: bool,
}

impl Default for TargetedConfig {
    fn default() -> Self {
        TargetedConfig {
            fields: default_targeted_fields(),
            forward: false,
        }
    }
}

fn default_targeted_fields() -> Vec<String> {
    vec!["CDN-Cache-Control".to_string()]
}
