//! Edge rules applied before a request reaches routing, auth or an upstream: size and
//! time limits, client IP rules, CORS (preflights answered here), security response
//! headers and response compression.

use crate::config::{
    CompressionConfig, CorsConfig, IpRulesConfig, LimitsConfig, Problems, SecurityHeadersConfig,
};
pub mod headers;

use crate::reject::Reject;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::LazyLock;

/// Compiled `server.limits`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_header_count: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub body_timeout: std::time::Duration,
    pub keepalive_secs: u64,
    pub max_concurrent_per_ip: usize,
}

impl Limits {
    pub fn build(c: &LimitsConfig, p: &mut Problems) -> Limits {
        if c.max_header_bytes.0 < 1024 {
            p.push("server.limits.max_header_bytes", "must be at least 1KiB");
        }
        if c.max_header_count == 0 || c.max_header_count > 256 {
            // Pingora's parser stops at 256 headers with its own 400
            p.push(
                "server.limits.max_header_count",
                "must be between 1 and 256",
            );
        }
        if c.max_uri_bytes.0 < 256 {
            p.push("server.limits.max_uri_bytes", "must be at least 256");
        }
        if c.body_timeout.get().is_zero() {
            p.push("server.limits.body_timeout", "must be above 0");
        }
        Limits {
            max_header_bytes: c.max_header_bytes.0 as usize,
            max_header_count: c.max_header_count,
            max_uri_bytes: c.max_uri_bytes.0 as usize,
            max_body_bytes: c.max_body_bytes.0,
            body_timeout: c.body_timeout.get(),
            keepalive_secs: c.keepalive_timeout.get().as_secs(),
            max_concurrent_per_ip: c.max_concurrent_per_ip,
        }
    }

    /// 414 / 431 checks on what was already parsed.
    pub fn check_head(&self, req: &RequestHeader) -> Option<Reject> {
        let uri_len = req
            .uri
            .path_and_query()
            .map(|p| p.as_str().len())
            .unwrap_or(0);
        if uri_len > self.max_uri_bytes {
            return Some(Reject::new(
                414,
                "uri_too_long",
                format!("the request target is over {} bytes", self.max_uri_bytes),
            ));
        }
        if req.headers.len() > self.max_header_count {
            return Some(Reject::new(
                431,
                "headers_too_large",
                format!(
                    "the request has more than {} headers",
                    self.max_header_count
                ),
            ));
        }
        let mut size = req.method.as_str().len() + uri_len + 12;
        for (k, v) in req.headers.iter() {
            size += k.as_str().len() + v.len() + 4;
        }
        if size > self.max_header_bytes {
            return Some(Reject::new(
                431,
                "headers_too_large",
                format!(
                    "the request headers are over {} bytes",
                    self.max_header_bytes
                ),
            ));
        }
        None
    }
}

/// A declared Content-Length over `max` is refused before anything is read.
pub fn check_content_length(req: &RequestHeader, max: u64) -> Option<Reject> {
    let len = req
        .headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    (len > max).then(|| body_too_large(max))
}

pub fn body_too_large(max: u64) -> Reject {
    Reject::new(
        413,
        "body_too_large",
        format!("the request body is over {max} bytes"),
    )
}

/// Requests in progress per client IP.
pub static IN_FLIGHT_PER_IP: LazyLock<pingora_limits::inflight::Inflight> =
    LazyLock::new(pingora_limits::inflight::Inflight::new);

/// `allow` and `deny` CIDR lists.
#[derive(Debug, Default)]
pub struct IpRules {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpRules {
    pub fn build(c: &IpRulesConfig, base: &str, p: &mut Problems) -> IpRules {
        IpRules {
            allow: crate::net::parse_nets(&c.allow, &format!("{base}.allow"), p),
            deny: crate::net::parse_nets(&c.deny, &format!("{base}.deny"), p),
        }
    }

    pub fn allows(&self, ip: &IpAddr) -> bool {
        if self.deny.iter().any(|n| n.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip))
    }
}

#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: HeaderValue,
    any_header: bool,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

fn joined(list: &[String], path: &str, p: &mut Problems) -> Option<HeaderValue> {
    if list.is_empty() {
        return None;
    }
    match HeaderValue::from_str(&list.join(", ")) {
        Ok(v) => Some(v),
        Err(_) => {
            p.push(path, "values must be printable ASCII");
            None
        }
    }
}

impl Cors {
    pub fn build(c: &CorsConfig, base: &str, p: &mut Problems) -> Cors {
        if c.allow_origins.is_empty() {
            p.push(
                format!("{base}.allow_origins"),
                "list at least one origin, or `*`",
            );
        }
        let any_origin = c.allow_origins.iter().any(|o| o == "*");
        if any_origin && c.allow_credentials {
            p.push(
                format!("{base}.allow_credentials"),
                "browsers refuse credentials with `allow_origins: [\"*\"]`; list the origins",
            );
        }
        for (i, o) in c.allow_origins.iter().enumerate() {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                p.push(
                    format!("{base}.allow_origins[{i}]"),
                    format!("`{o}` is not an origin such as https://app.example.com"),
                );
            }
        }
        let methods: Vec<String> = c
            .allow_methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        Cors {
            any_origin,
            origins: c
                .allow_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            methods: joined(&methods, &format!("{base}.allow_methods"), p)
                .unwrap_or(HeaderValue::from_static("GET")),
            any_header: c.allow_headers.iter().any(|h| h == "*"),
            headers: joined(&c.allow_headers, &format!("{base}.allow_headers"), p),
            expose: joined(&c.expose_headers, &format!("{base}.expose_headers"), p),
            credentials: c.allow_credentials,
            max_age: HeaderValue::from(c.max_age.get().as_secs()),
        }
    }

    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    fn origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Headers for the answer to a preflight from an allowed origin.
    pub fn preflight_headers(
        &self,
        origin: &HeaderValue,
        req: &RequestHeader,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = vec![
            (
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.origin_value(origin),
            ),
            (
                http::header::ACCESS_CONTROL_ALLOW_METHODS,
                self.methods.clone(),
            ),
            (http::header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()),
            (
                http::header::VARY,
                HeaderValue::from_static(
                    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                ),
            ),
        ];
        let asked = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS);
        match (&self.headers, asked) {
            (_, Some(a)) if self.any_header => {
                h.push((http::header::ACCESS_CONTROL_ALLOW_HEADERS, a.clone()))
            }
            (Some(v), _) if !self.any_header => {
                h.push((http::header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone()))
            }
            _ => {}
        }
        if self.credentials {
            h.push((
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        h
    }

    /// Whether the preflight asks for a method this policy allows.
    pub fn method_allowed(&self, method: &str) -> bool {
        self.methods
            .to_str()
            .map(|m| m.split(", ").any(|x| x.eq_ignore_ascii_case(method)))
            .unwrap_or(false)
    }

    /// Headers for an actual (non-preflight) response to an allowed origin.
    pub fn response_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = vec![
            (
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.origin_value(origin),
            ),
            (http::header::VARY, HeaderValue::from_static("Origin")),
        ];
        if let Some(e) = &self.expose {
            h.push((http::header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone()));
        }
        if self.credentials {
            h.push((
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        h
    }
}

/// Is this a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method)?
pub fn is_preflight(req: &RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(http::header::ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

#[derive(Debug, Default)]
pub struct Security {
    /// Added to every response that does not carry the header already.
    pub always: Vec<(&'static crate::hdr::Name, HeaderValue)>,
    /// Added to responses to TLS requests.
    pub hsts: Option<HeaderValue>,
}

impl Security {
    pub fn build(c: &SecurityHeadersConfig, base: &str, p: &mut Problems) -> Security {
        let mut s = Security::default();
        let mut value = |v: &str, key: &str| match HeaderValue::from_str(v) {
            Ok(h) => Some(h),
            Err(_) => {
                p.push(format!("{base}.{key}"), "not a valid header value");
                None
            }
        };
        if !c.hsts.is_empty() {
            s.hsts = value(&c.hsts, "hsts");
        }
        if c.content_type_options {
            s.always.push((
                &crate::hdr::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ));
        }
        let opt: [(&Option<String>, &'static crate::hdr::Name, &str); 3] = [
            (
                &c.frame_options,
                &crate::hdr::X_FRAME_OPTIONS,
                "frame_options",
            ),
            (
                &c.referrer_policy,
                &crate::hdr::REFERRER_POLICY,
                "referrer_policy",
            ),
            (
                &c.content_security_policy,
                &crate::hdr::CONTENT_SECURITY_POLICY,
                "content_security_policy",
            ),
        ];
        for (v, name, key) in opt {
            if let Some(v) = v.as_deref().and_then(|v| value(v, key)) {
                s.always.push((name, v));
            }
        }
        s
    }
}

#[derive(Debug)]
pub struct Compression {
    pub level: u32,
    pub min_size: u64,
    types: Vec<String>,
}

impl Compression {
    pub fn build(c: &CompressionConfig, base: &str, p: &mut Problems) -> Compression {
        if !(1..=9).contains(&c.level) {
            p.push(format!("{base}.level"), "must be 1 to 9");
        }
        Compression {
            level: c.level.clamp(1, 9),
            min_size: c.min_size.0,
            types: c
                .content_types
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a response with this content type and length should be compressed.
    pub fn wants(&self, content_type: Option<&[u8]>, content_length: Option<u64>) -> bool {
        if content_length.is_some_and(|l| l < self.min_size) {
            return false;
        }
        let Some(ct) = content_type.and_then(|c| std::str::from_utf8(c).ok()) else {
            return false;
        };
        let ct = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(prefix) => ct
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/')),
            None => *t == ct,
        })
    }
}

/// A route's compiled edge rules (with the server-wide ones folded in).
#[derive(Debug)]
pub struct RouteEdge {
    pub ip: Option<IpRules>,
    pub cors: Option<Arc<Cors>>,
    pub security: Arc<Security>,
    pub compression: Option<Compression>,
    pub max_body_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_rules() {
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let r = IpRules::build(
            &IpRulesConfig {
                allow: vec!["10.0.0.0/8".into()],
                deny: vec!["10.1.0.0/16".into()],
            },
            "ip",
            &mut p,
        );
        assert!(r.allows(&"10.2.3.4".parse().unwrap()));
        assert!(!r.allows(&"10.1.3.4".parse().unwrap()));
        assert!(!r.allows(&"192.168.0.1".parse().unwrap()));
        assert!(p.errors.is_empty());
    }

    #[test]
    fn compression_types() {
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let c = Compression::build(
            &CompressionConfig {
                level: 6,
                min_size: crate::config::ByteSize(100),
                content_types: vec!["text/*".into(), "application/json".into()],
            },
            "c",
            &mut p,
        );
        assert!(c.wants(Some(b"text/html; charset=utf-8"), Some(1000)));
        assert!(c.wants(Some(b"application/json"), None));
        assert!(!c.wants(Some(b"application/json"), Some(10)));
        assert!(!c.wants(Some(b"image/png"), Some(1000)));
        assert!(!c.wants(Some(b"textual/x"), Some(1000)));
    }
}
