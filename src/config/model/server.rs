//! The `server` block: listeners, limits, headers, paths, TLS, admin, edge rules.

use super::*;
use crate::config::units::{ByteSize, Dur};
use serde::Deserialize;

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

pub(crate) fn default_read_buffer() -> ByteSize {
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

pub(crate) fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
        .map(String::from)
        .to_vec()
}
pub(crate) fn default_cors_max_age() -> Dur {
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

pub(crate) fn default_hsts() -> String {
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

pub(crate) fn default_compression_level() -> u32 {
    6
}
pub(crate) fn default_compression_min() -> ByteSize {
    ByteSize(1024)
}
pub(crate) fn default_compression_types() -> Vec<String> {
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

pub(crate) fn default_listen() -> Vec<String> {
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

pub(crate) fn default_admin_listen() -> String {
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

pub(crate) fn default_max_header_count() -> usize {
    100
}
pub(crate) fn default_max_uri_bytes() -> ByteSize {
    ByteSize(8 * 1024)
}
pub(crate) fn default_body_timeout() -> Dur {
    Dur::secs(30)
}
pub(crate) fn default_keepalive_timeout() -> Dur {
    Dur::secs(60)
}

pub(crate) fn default_max_header_bytes() -> ByteSize {
    ByteSize(16 * 1024)
}
pub(crate) fn default_max_body_bytes() -> ByteSize {
    ByteSize(10 * 1024 * 1024)
}
