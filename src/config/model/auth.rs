//! JWT issuers, API keys and per-route authentication.

use crate::config::units::Dur;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub jwt: Vec<JwtIssuerConfig>,
    #[serde(default)]
    pub api_keys: Option<ApiKeysConfig>,
    #[serde(default)]
    pub token_cache: TokenCacheConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// Verified tokens remembered (by SHA-256 of the token).
    #[serde(default = "default_token_cache_entries")]
    pub max_entries: usize,
    /// A cached verification is reused for at most this long (and never past `exp`).
    #[serde(default = "default_token_cache_ttl")]
    pub ttl: Dur,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        TokenCacheConfig {
            max_entries: default_token_cache_entries(),
            ttl: default_token_cache_ttl(),
        }
    }
}

pub(crate) fn default_token_cache_entries() -> usize {
    100_000
}
pub(crate) fn default_token_cache_ttl() -> Dur {
    Dur::secs(300)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    pub name: String,
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values (any of them); empty skips the audience check.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allowed `alg` values; a token with any other is rejected.
    pub algorithms: Vec<String>,
    /// HMAC secret: the raw bytes of this environment variable.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// HMAC secret: the raw bytes of this file.
    #[serde(default)]
    pub secret_file: Option<String>,
    /// PEM public key (RSA, EC or Ed25519).
    #[serde(default)]
    pub public_key_file: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Dur,
    /// An unknown `kid` triggers at most one early JWKS refresh per this period.
    #[serde(default = "default_jwks_cooldown")]
    pub jwks_cooldown: Dur,
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Claim → upstream header. Default `{ sub: X-Auth-Subject }`.
    #[serde(
        default = "default_forward_claims",
        deserialize_with = "crate::config::unique::map"
    )]
    pub forward_claims: BTreeMap<String, String>,
    /// Claim holding the client's rate-limit tier.
    #[serde(default)]
    pub tier_claim: Option<String>,
    /// Accept a `jwks_url` over plain `http://` to a host that is not loopback. Keys fetched
    /// that way can be replaced by anyone on the path: off by default.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Claims that carry the token's scopes: space-separated strings or arrays (Auth0 puts
    /// them in `permissions`).
    #[serde(default = "default_scope_claims")]
    pub scope_claims: Vec<String>,
}

pub(crate) fn default_scope_claims() -> Vec<String> {
    ["scope", "scp", "scopes"].map(String::from).to_vec()
}

pub(crate) fn default_jwks_refresh() -> Dur {
    Dur::secs(300)
}
pub(crate) fn default_jwks_cooldown() -> Dur {
    Dur::secs(30)
}
pub(crate) fn default_leeway() -> Dur {
    Dur::secs(30)
}
pub(crate) fn default_forward_claims() -> BTreeMap<String, String> {
    BTreeMap::from([("sub".to_string(), "X-Auth-Subject".to_string())])
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// Also accept the key in this query parameter (removed before forwarding).
    #[serde(default)]
    pub query_param: Option<String>,
    /// Upstream header carrying the key's id.
    #[serde(default = "default_api_key_forward")]
    pub forward_id_header: String,
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
}

pub(crate) fn default_api_key_header() -> String {
    "x-api-key".to_string()
}
pub(crate) fn default_api_key_forward() -> String {
    "X-Auth-Subject".to_string()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub id: String,
    /// Hex SHA-256 of the key (`portcullis keygen` prints it). Never the key itself.
    pub sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub tier: Option<String>,
    /// RFC 3339 time (`2027-01-31T00:00:00Z`) or unix seconds after which the key is refused.
    #[serde(default)]
    pub expires: Option<serde_yaml::Value>,
}

/// Per-route authentication.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthConfig {
    /// Accepted credential kinds: `jwt`, `api_key`.
    #[serde(default)]
    pub any_of: Option<Vec<String>>,
    /// Require a JWT from this named issuer.
    #[serde(default)]
    pub jwt: Option<String>,
    /// Every one of these scopes is required.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Remove `Authorization` before forwarding.
    #[serde(default)]
    pub strip_authorization: bool,
}
