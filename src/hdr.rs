//! Headers the request path adds to every request and response: names parsed once, and
//! address values written without the `fmt` machinery.
//!
//! `insert_header` in pingora-http parses the name (and allocates for a non-standard one) on
//! every call; [`Name`] and [`Headers::set`] insert under a name built at compile time (the
//! vendored pingora-http's `insert_header_parsed`).

use http::header::HeaderName;
use http::HeaderValue;
use pingora_http::{CaseHeaderName, RequestHeader, ResponseHeader};
use std::net::{IpAddr, SocketAddr};

/// A header name in both forms Pingora keeps: the map key and the text written on the wire.
#[derive(Debug)]
pub struct Name {
    name: HeaderName,
    case: CaseHeaderName,
    text: &'static str,
}

impl Name {
    /// `lower` must be a valid lower-case header name (checked at compile time).
    pub const fn new(lower: &'static str) -> Name {
        Name {
            name: HeaderName::from_static(lower),
            case: CaseHeaderName::from_static(lower),
            text: lower,
        }
    }

    /// A name written on the wire as `wire` (e.g. `X-Frame-Options`); `lower` as in [`Name::new`].
    pub const fn titled(lower: &'static str, wire: &'static str) -> Name {
        Name {
            name: HeaderName::from_static(lower),
            case: CaseHeaderName::from_static(wire),
            text: lower,
        }
    }

    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    pub fn as_str(&self) -> &'static str {
        self.text
    }
}

pub static HOST: Name = Name::new("host");
pub static X_REQUEST_ID: Name = Name::new("x-request-id");
pub static TRACEPARENT: Name = Name::new("traceparent");
pub static X_FORWARDED_FOR: Name = Name::new("x-forwarded-for");
pub static X_FORWARDED_PROTO: Name = Name::new("x-forwarded-proto");
pub static X_FORWARDED_HOST: Name = Name::new("x-forwarded-host");
pub static X_REAL_IP: Name = Name::new("x-real-ip");
pub static X_RATELIMIT_LIMIT: Name = Name::new("x-ratelimit-limit");
pub static X_RATELIMIT_REMAINING: Name = Name::new("x-ratelimit-remaining");
pub static X_RATELIMIT_RESET: Name = Name::new("x-ratelimit-reset");
pub static RATELIMIT_POLICY: Name = Name::new("ratelimit-policy");
pub static RATELIMIT: Name = Name::new("ratelimit");
pub static X_CONTENT_TYPE_OPTIONS: Name =
    Name::titled("x-content-type-options", "X-Content-Type-Options");
pub static X_FRAME_OPTIONS: Name = Name::titled("x-frame-options", "X-Frame-Options");
pub static REFERRER_POLICY: Name = Name::titled("referrer-policy", "Referrer-Policy");
pub static CONTENT_SECURITY_POLICY: Name =
    Name::titled("content-security-policy", "Content-Security-Policy");
pub static STRICT_TRANSPORT_SECURITY: Name =
    Name::titled("strict-transport-security", "Strict-Transport-Security");

/// What the gateway does to request and response headers alike (pingora-http gives the two
/// types the same methods but no shared trait).
pub trait Headers {
    /// Set a header under a pre-parsed name, replacing any value it had.
    fn set(&mut self, name: &Name, value: HeaderValue) -> pingora_error::Result<()>;
    fn insert(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora_error::Result<()>;
    fn append(&mut self, name: &HeaderName, value: &HeaderValue) -> pingora_error::Result<()>;
    fn remove(&mut self, name: &HeaderName);
}

macro_rules! impl_headers {
    ($t:ty) => {
        impl Headers for $t {
            fn set(&mut self, name: &Name, value: HeaderValue) -> pingora_error::Result<()> {
                self.insert_header_parsed(&name.name, &name.case, value)
            }
            fn insert(
                &mut self,
                name: &HeaderName,
                value: &HeaderValue,
            ) -> pingora_error::Result<()> {
                self.insert_header(name.clone(), value.clone())
            }
            fn append(
                &mut self,
                name: &HeaderName,
                value: &HeaderValue,
            ) -> pingora_error::Result<()> {
                self.append_header(name.clone(), value.clone()).map(|_| ())
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    };
}
impl_headers!(RequestHeader);
impl_headers!(ResponseHeader);

/// A header value from text the gateway produced; invalid bytes are an error, as with
/// `insert_header`.
pub fn text(v: &str) -> pingora_error::Result<HeaderValue> {
    use pingora_error::{ErrorType, OrErr};
    HeaderValue::from_str(v).or_err(ErrorType::InvalidHTTPHeader, "invalid header value")
}

/// The same, taking ownership (no copy).
pub fn owned(v: String) -> pingora_error::Result<HeaderValue> {
    use pingora_error::{ErrorType, OrErr};
    HeaderValue::try_from(v).or_err(ErrorType::InvalidHTTPHeader, "invalid header value")
}

/// Dotted quad into `out`; returns the length written (at most 15).
fn write_v4(ip: std::net::Ipv4Addr, out: &mut [u8; 21]) -> usize {
    let mut n = 0;
    for (i, octet) in ip.octets().iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        let mut b = itoa::Buffer::new();
        let s = b.format(*octet).as_bytes();
        out[n..n + s.len()].copy_from_slice(s);
        n += s.len();
    }
    n
}

fn value(bytes: &[u8]) -> HeaderValue {
    // digits, dots, colons and brackets are always valid header bytes
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `203.0.113.7` or `2001:db8::1`.
pub fn ip_header(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 21];
            let n = write_v4(v4, &mut buf);
            value(&buf[..n])
        }
        IpAddr::V6(v6) => value(v6.to_string().as_bytes()),
    }
}

/// `203.0.113.7:8080` or `[2001:db8::1]:8080`.
pub fn socket_addr_header(addr: SocketAddr) -> HeaderValue {
    match addr {
        SocketAddr::V4(a) => {
            let mut buf = [0u8; 21];
            let mut n = write_v4(*a.ip(), &mut buf);
            buf[n] = b':';
            n += 1;
            let mut b = itoa::Buffer::new();
            let port = b.format(a.port()).as_bytes();
            buf[n..n + port.len()].copy_from_slice(port);
            n += port.len();
            value(&buf[..n])
        }
        SocketAddr::V6(_) => value(addr.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_as_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "203.0.113.255",
            "10.20.30.4",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header(ip).to_str().unwrap(), ip.to_string());
        }
        for a in ["255.255.255.255:65535", "127.0.0.1:0", "[2001:db8::1]:8443"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(socket_addr_header(a).to_str().unwrap(), a.to_string());
        }
    }
}
