//! Request headers that make a request ambiguous, or that only a trusted proxy may send.
//!
//! Run once on the request head, before routing: what is removed here is removed for every
//! later step (auth, routing's header matches, the upstream request) alike.
//!
//! - more than one `Authorization` or API-key header: 400 (which one would be checked, and
//!   which one would the upstream read?);
//! - `Content-Length` must be one header holding one decimal number: 400 otherwise (a
//!   repeated or listed value is framing an upstream may read differently);
//! - header names with `_` are dropped (or refused, or kept: `server.headers.underscores`):
//!   many frameworks read `X_Auth_Subject` as `X-Auth-Subject`, past the gateway's removal
//!   of client-sent identity headers;
//! - from a peer that is not a trusted proxy, the headers of `server.headers.strip_untrusted`
//!   (`Forwarded`, `X-Original-URL`, `X-HTTP-Method-Override`, ...) are removed.

use crate::config::{Problems, RequestHeadersConfig, UnderscoresConfig};
use ahash::AHashSet;
use http::HeaderName;
use pingora_http::RequestHeader;

/// Compiled `server.headers`, plus the API-key header name.
#[derive(Debug, Default)]
pub struct HeaderPolicy {
    underscores: UnderscoresConfig,
    strip_untrusted: AHashSet<HeaderName>,
    api_key_header: Option<HeaderName>,
}

impl HeaderPolicy {
    pub fn build(
        c: &RequestHeadersConfig,
        api_key_header: Option<HeaderName>,
        p: &mut Problems,
    ) -> HeaderPolicy {
        let mut strip_untrusted = AHashSet::new();
        for (i, h) in c.strip_untrusted.iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => {
                    strip_untrusted.insert(n);
                }
                Err(_) => p.push(
                    format!("server.headers.strip_untrusted[{i}]"),
                    format!("`{h}` is not a valid header name"),
                ),
            }
        }
        HeaderPolicy {
            underscores: c.underscores,
            strip_untrusted,
            api_key_header,
        }
    }
}

/// Check and clean the request head. `Err` is the reason for a 400.
pub fn scrub(
    req: &mut RequestHeader,
    policy: &HeaderPolicy,
    trusted_peer: bool,
) -> Result<(), &'static str> {
    if req
        .headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err("the request has more than one Authorization header");
    }
    if let Some(h) = &policy.api_key_header {
        if req.headers.get_all(h).iter().nth(1).is_some() {
            return Err("the request has more than one API-key header");
        }
    }
    let mut lengths = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        let v = first.as_bytes();
        if lengths.next().is_some() || v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err("Content-Length must be one header with one number");
        }
    }
    let strip = !trusted_peer && !policy.strip_untrusted.is_empty();
    let drop_underscores = policy.underscores != UnderscoresConfig::Keep;
    // one pass over the names; removal (rare) after it
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in req.headers.keys() {
        if drop_underscores && name.as_str().contains('_') {
            if policy.underscores == UnderscoresConfig::Reject {
                return Err("header names may not contain `_`");
            }
            doomed.push(name.clone());
        } else if strip && policy.strip_untrusted.contains(name) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        req.remove_header(name);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn policy(underscores: UnderscoresConfig) -> HeaderPolicy {
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let c = RequestHeadersConfig {
            underscores,
            ..RequestHeadersConfig::default()
        };
        HeaderPolicy::build(&c, Some(HeaderName::from_static("x-api-key")), &mut p)
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn duplicates_are_refused() {
        let p = policy(UnderscoresConfig::Drop);
        for h in [
            &[("authorization", "a"), ("authorization", "b")][..],
            &[("x-api-key", "a"), ("x-api-key", "a")],
            &[("content-length", "4"), ("content-length", "4")],
            &[("content-length", "4, 4")],
            &[("content-length", "+4")],
            &[("content-length", "")],
        ] {
            assert!(scrub(&mut req(h), &p, false).is_err(), "{h:?}");
        }
        assert!(scrub(&mut req(&[("content-length", "4")]), &p, false).is_ok());
    }

    #[test]
    fn underscores_and_untrusted_headers() {
        let p = policy(UnderscoresConfig::Drop);
        let mut r = req(&[
            ("x_auth_subject", "admin"),
            ("forwarded", "for=1.2.3.4"),
            ("x-http-method-override", "DELETE"),
            ("x-ok", "1"),
        ]);
        scrub(&mut r, &p, false).unwrap();
        let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-ok"]);
        // a trusted proxy may send forwarding headers, never underscores
        let mut r = req(&[("x_auth_subject", "admin"), ("forwarded", "for=1.2.3.4")]);
        scrub(&mut r, &p, true).unwrap();
        let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["forwarded"]);
        let mut r = req(&[("x_a", "1")]);
        assert!(scrub(&mut r, &policy(UnderscoresConfig::Reject), false).is_err());
        let mut r = req(&[("x_a", "1")]);
        scrub(&mut r, &policy(UnderscoresConfig::Keep), false).unwrap();
        assert!(r.headers.contains_key("x_a"));
    }
}
