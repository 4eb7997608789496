//! The YAML model: exactly what the file says, nothing compiled. Unknown keys are rejected.
//! The compiled runtime view lives in `crate::snapshot`.

use super::units::{ByteSize, Dur};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default, deserialize_with = "super::unique::map")]
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
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// `cache:` at the top level: the one in-memory response store every caching route shares.
/// Read once at start-up: a reload cannot resize the store (a restart or upgrade does).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Upper bound of the store. Entries weigh their body, headers, key and bookkeeping.
    #[serde(default = "default_cache_max_size")]
    pub max_size: ByteSize,
    /// Largest single response stored (default: `max_size / 8`); bigger ones are served uncached.
    #[serde(default)]
    pub max_object_size: Option<ByteSize>,
    /// How long concurrent misses of one key wait for the one request fetching it, and how
    /// long that request may hold the fetch before others may try.
    #[serde(default = "default_cache_lock_timeout")]
    pub lock_timeout: Dur,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: default_cache_max_size(),
            max_object_size: None,
            lock_timeout: default_cache_lock_timeout(),
        }
    }
}

fn default_cache_max_size() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_cache_lock_timeout() -> Dur {
    Dur::secs(5)
}

pub use super::cache::{RouteCacheConfig, SetCookie, TargetedConfig};

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
    #[serde(default, deserialize_with = "super::unique::map")]
    pub headers: BTreeMap<String, String>,
    /// Finished requests waiting for export; beyond it spans are dropped and counted.
    #[serde(default = "default_trace_queue")]
    pub queue: usize,
}

fn default_sample_ratio() -> f64 {
    1.0
}
fn default_service_name() -> String {
    "portcullis".to_string()
}
fn default_trace_queue() -> usize {
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

fn default_log_path() -> String {
    "stdout".to_string()
}
fn default_sample() -> f64 {
    1.0
}
fn default_log_buffer() -> usize {
    16_384
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Limits by client tier (from the API key's `tier` or the JWT's `tier_claim`).
    #[serde(default, deserialize_with = "super::unique::map")]
    pub tiers: BTreeMap<String, LimitConfig>,
    #[serde(default, deserialize_with = "super::unique::map")]
    pub policies: BTreeMap<String, PolicyConfig>,
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Width of each count-min sketch row: memory per policy is 2 × 4 × slots × 8 bytes
    /// whatever the number of keys; wider means fewer over-counts with many active keys.
    #[serde(default = "default_sketch_slots")]
    pub sketch_slots: usize,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            tiers: BTreeMap::new(),
            policies: BTreeMap::new(),
            cluster: None,
            sketch_slots: default_sketch_slots(),
        }
    }
}

fn default_sketch_slots() -> usize {
    32_768
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub requests: u64,
    pub per: Dur,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `client` (API key id, else JWT sub, else IP), `ip`, `route`, or `header:NAME`.
    pub key: String,
    pub requests: u64,
    pub per: Dur,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]`
    pub redis: String,
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Keys tracked for syncing per instance (least recently used beyond this are local-only).
    #[serde(default = "default_cluster_keys")]
    pub max_keys: usize,
}

fn default_sync_interval() -> Dur {
    Dur::millis(100)
}
fn default_key_prefix() -> String {
    "portcullis".to_string()
}
fn default_cluster_keys() -> usize {
    100_000
}

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

fn default_token_cache_entries() -> usize {
    100_000
}
fn default_token_cache_ttl() -> Dur {
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
        deserialize_with = "super::unique::map"
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

fn default_scope_claims() -> Vec<String> {
    ["scope", "scp", "scopes"].map(String::from).to_vec()
}

fn default_jwks_refresh() -> Dur {
    Dur::secs(300)
}
fn default_jwks_cooldown() -> Dur {
    Dur::secs(30)
}
fn default_leeway() -> Dur {
    Dur::secs(30)
}
fn default_forward_claims() -> BTreeMap<String, String> {
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

fn default_api_key_header() -> String {
    "x-api-key".to_string()
}
fn default_api_key_forward() -> String {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Peers whose `X-Forwarded-*` headers are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Client IP rules for every route (a route's own `ip` is checked as well).
    #[serde(default)]
    pub ip: Option<IpRulesConfig>,
    /// CORS for routes that do not set their own.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Security response headers for routes that do not set their own.
    #[serde(default)]
    pub security_headers: SecurityHeadersConfig,
    /// TLS termination (rustls) on its own listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plain listeners, beside HTTP/1.
    /// Read at start-up.
    #[serde(default = "default_true")]
    pub h2c: bool,
    /// Per-connection read buffer of the plain listeners (`0` reads straight from the
    /// socket). Every open client connection holds one, idle keep-alive ones included.
    /// Read at start-up.
    #[serde(default = "default_read_buffer")]
    pub read_buffer: ByteSize,
    /// How request paths are read before matching.
    #[serde(default)]
    pub paths: PathsConfig,
    /// Which client request headers reach upstreams.
    #[serde(default)]
    pub headers: RequestHeadersConfig,
}

fn default_read_buffer() -> ByteSize {
    ByteSize(0)
}

/// `server.paths`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    /// `%2F`, `%5C` and a raw `\`: `reject` (400, default), `keep` (escaped, never a
    /// separator) or `decode` (to `/`, then normalised).
    #[serde(default)]
    pub escaped_slashes: EscapedSlashesConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashesConfig {
    #[default]
    Reject,
    Keep,
    Decode,
}

/// `server.headers`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestHeadersConfig {
    /// Header names with `_`: `drop` (default, like nginx's `underscores_in_headers off`),
    /// `keep`, or `reject` (400). Many frameworks read `X_Auth_User` as `X-Auth-User`.
    #[serde(default)]
    pub underscores: UnderscoresConfig,
    /// Removed from requests unless the peer is a trusted proxy (replaces the default list).
    #[serde(default = "default_strip_untrusted")]
    pub strip_untrusted: Vec<String>,
}

impl Default for RequestHeadersConfig {
    fn default() -> Self {
        RequestHeadersConfig {
            underscores: UnderscoresConfig::default(),
            strip_untrusted: default_strip_untrusted(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoresConfig {
    #[default]
    Drop,
    Keep,
    Reject,
}

/// Headers through which a client could claim an address, a scheme, a path or a method the
/// gateway did not see; only a trusted proxy may send them.
pub fn default_strip_untrusted() -> Vec<String> {
    [
        "forwarded",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "x-url-scheme",
        "true-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-original-url",
        "x-original-uri",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ]
    .map(String::from)
    .to_vec()
}

/// `allow` (if not empty) must contain the client; `deny` must not. CIDR blocks or IPs.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct IpRulesConfig {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`) or `*`.
    pub allow_origins: Vec<String>,
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a browser may send; `*` allows whatever the preflight asks for.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default = "default_cors_max_age")]
    pub max_age: Dur,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
        .map(String::from)
        .to_vec()
}
fn default_cors_max_age() -> Dur {
    Dur::secs(600)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    /// `Strict-Transport-Security` on responses to TLS requests; empty to turn off.
    #[serde(default = "default_hsts")]
    pub hsts: String,
    /// `X-Content-Type-Options: nosniff`.
    #[serde(default = "default_true")]
    pub content_type_options: bool,
    /// `X-Frame-Options` value, e.g. `DENY`.
    #[serde(default)]
    pub frame_options: Option<String>,
    #[serde(default)]
    pub referrer_policy: Option<String>,
    #[serde(default)]
    pub content_security_policy: Option<String>,
}

impl Default for SecurityHeadersConfig {
    fn default() -> Self {
        SecurityHeadersConfig {
            hsts: default_hsts(),
            content_type_options: true,
            frame_options: None,
            referrer_policy: None,
            content_security_policy: None,
        }
    }
}

fn default_hsts() -> String {
    "max-age=31536000".to_string()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// 1 (fast) to 9 (small); gzip, brotli and zstd as the client accepts.
    #[serde(default = "default_compression_level")]
    pub level: u32,
    /// Responses smaller than this (by Content-Length) are sent as they are.
    #[serde(default = "default_compression_min")]
    pub min_size: ByteSize,
    /// Content types compressed; `text/*` matches every text type.
    #[serde(default = "default_compression_types")]
    pub content_types: Vec<String>,
}

fn default_compression_level() -> u32 {
    6
}
fn default_compression_min() -> ByteSize {
    ByteSize(1024)
}
fn default_compression_types() -> Vec<String> {
    [
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            ip: None,
            cors: None,
            security_headers: SecurityHeadersConfig::default(),
            admin: None,
            trusted_proxies: Vec::new(),
            limits: LimitsConfig::default(),
            tls: None,
            h2c: true,
            read_buffer: default_read_buffer(),
            paths: PathsConfig::default(),
            headers: RequestHeadersConfig::default(),
        }
    }
}

/// `server.tls`: the TLS listener and its certificates. The listener address is read at
/// start-up; certificates and `min_version` are re-read on every reload.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: String,
    /// Certificates chosen by SNI from their names (SAN, else CN); the first one is served
    /// when the client's SNI matches none (or it sends none).
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// Short form for a single certificate: `cert` + `key` instead of `certificates`.
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM: the certificate followed by its intermediates.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: String,
}

/// Lowest TLS version accepted from clients (TLS 1.0 and 1.1 are never offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // `min_version: 1.2` unquoted is a YAML float
        let v = serde_yaml::Value::deserialize(d)?;
        let s = match &v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        match s.trim_start_matches("TLSv").trim_start_matches("tls") {
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            _ => Err(D::Error::custom(
                "min_version is \"1.2\" or \"1.3\" (older versions are not supported)",
            )),
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".to_string()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Hex SHA-256 of the admin bearer token. Without it the `/admin/` API is disabled.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// Hex SHA-256 of a bearer token `/metrics` requires (it lists routes and backend
    /// addresses). Without it `/metrics` is open to whoever reaches the admin listener.
    #[serde(default)]
    pub metrics_token_sha256: Option<String>,
    /// What `/readyz` waits for.
    #[serde(default)]
    pub readiness: ReadinessConfig,
}

/// `server.admin.readiness`: which dependencies gate `/readyz`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReadinessConfig {
    /// `all` (default: every upstream needs a healthy backend), `none`, or a list of names.
    #[serde(default)]
    pub upstreams: ReadinessUpstreams,
    /// Every JWKS issuer must have loaded its keys (default true).
    #[serde(default = "default_true")]
    pub jwks: bool,
}

impl Default for ReadinessConfig {
    fn default() -> Self {
        ReadinessConfig {
            upstreams: ReadinessUpstreams::default(),
            jwks: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ReadinessUpstreams {
    /// `all` or `none`.
    Keyword(ReadinessKeyword),
    List(Vec<String>),
}

impl Default for ReadinessUpstreams {
    fn default() -> Self {
        ReadinessUpstreams::Keyword(ReadinessKeyword::All)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessKeyword {
    All,
    None,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Request line and headers together (431 beyond).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Number of request headers (431 beyond).
    #[serde(default = "default_max_header_count")]
    pub max_header_count: usize,
    /// Request target (path and query) length (414 beyond).
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: ByteSize,
    /// Request body, checked against Content-Length and while streaming (413 beyond).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: ByteSize,
    /// Longest wait for the next piece of a request body (408 beyond).
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Dur,
    /// How long an idle client connection is kept open between requests.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Dur,
    /// Requests in progress at once from one client IP (0: no cap; 429 beyond).
    #[serde(default)]
    pub max_concurrent_per_ip: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: default_max_header_bytes(),
            max_header_count: default_max_header_count(),
            max_uri_bytes: default_max_uri_bytes(),
            max_body_bytes: default_max_body_bytes(),
            body_timeout: default_body_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            max_concurrent_per_ip: 0,
        }
    }
}

fn default_max_header_count() -> usize {
    100
}
fn default_max_uri_bytes() -> ByteSize {
    ByteSize(8 * 1024)
}
fn default_body_timeout() -> Dur {
    Dur::secs(30)
}
fn default_keepalive_timeout() -> Dur {
    Dur::secs(60)
}

fn default_max_header_bytes() -> ByteSize {
    ByteSize(16 * 1024)
}
fn default_max_body_bytes() -> ByteSize {
    ByteSize(10 * 1024 * 1024)
}

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

fn default_failure_threshold() -> u32 {
    5
}
fn default_min_requests() -> u32 {
    20
}
fn default_breaker_window() -> Dur {
    Dur::secs(10)
}
fn default_open_for() -> Dur {
    Dur::secs(30)
}
fn default_max_open_for() -> Dur {
    Dur::secs(300)
}
fn default_half_open_probes() -> u32 {
    3
}
fn default_failure_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
fn default_max_ejection_percent() -> u32 {
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

fn default_attempts() -> u32 {
    2
}
fn default_backoff() -> Dur {
    Dur::millis(25)
}
fn default_max_backoff() -> Dur {
    Dur::millis(250)
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectError,
        RetryOn::Timeout,
        RetryOn::Reset,
        RetryOn::Status(502),
        RetryOn::Status(503),
        RetryOn::Status(504),
    ]
}
fn default_budget() -> f64 {
    0.2
}
fn default_budget_min() -> u32 {
    10
}

fn default_dns_refresh() -> Dur {
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

fn default_weight() -> u32 {
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

fn default_hc_path() -> String {
    "/health".to_string()
}
fn default_hc_interval() -> Dur {
    Dur::secs(5)
}
fn default_hc_timeout() -> Dur {
    Dur::secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
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

fn default_websocket_idle() -> Dur {
    Dur::secs(3600)
}

fn default_connect_timeout() -> Dur {
    Dur::secs(1)
}
fn default_read_timeout() -> Dur {
    Dur::secs(10)
}
fn default_total_timeout() -> Dur {
    Dur::secs(30)
}
/// Below the keep-alive timeouts backends commonly close idle connections at (Node 5 s,
/// uvicorn 5 s, Apache 5 s; gunicorn's 2 s is covered by the stale-connection retry): a
/// pooled connection is dropped by us before the backend closes it under us.
fn default_idle_timeout() -> Dur {
    Dur::secs(4)
}

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
    #[serde(default, deserialize_with = "super::unique::map")]
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
    #[serde(default, deserialize_with = "super::unique::map")]
    pub set: BTreeMap<String, String>,
    /// Append these headers (keeping existing values).
    #[serde(default, deserialize_with = "super::unique::map")]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}
