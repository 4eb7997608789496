//! Invalidation after unsafe requests (RFC 9111 §4.4): a non-error response to a method that
//! is not safe (anything but GET, HEAD, OPTIONS and TRACE, extension methods included) removes
//! what is stored for the request's URI, and for the URIs in its `Location` and
//! `Content-Location` when they are on the same host. Entries are removed for every route,
//! identity and variant of the URI on that host ([`super::key::invalidation_prefix`]).

use super::key;
use http::header::{CONTENT_LOCATION, LOCATION};
use http::Method;
use pingora_http::ResponseHeader;

/// RFC 9110 §9.2.1.
pub fn is_unsafe(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The request an invalidation is for, as the cache keys it.
pub struct Request<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// `host[:port]` as forwarded (lower case, no default port).
    pub authority: &'a str,
    /// A query parameter removed before forwarding (and from keys).
    pub credential_param: Option<&'a str>,
}

/// The invalidations an upstream response to an unsafe request calls for: store-key
/// prefixes, for [`super::MemoryStorage::purge_prefix`]. Nothing for 1xx, 4xx and 5xx.
pub fn prefixes(req: &Request<'_>, resp: &ResponseHeader) -> Vec<Vec<u8>> {
    let status = resp.status.as_u16();
    if !(200..400).contains(&status) {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(3);
    let mut add = |path: &str, query: Option<&str>| {
        if let Ok(p) = key::invalidation_prefix(path, query, req.authority, req.credential_param) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    };
    add(req.path, req.query);
    for name in [LOCATION, CONTENT_LOCATION] {
        let Some(v) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some((path, query)) = resolve(req, v.trim()) {
            add(&path, query.as_deref());
        }
    }
    out
}

/// `reference` resolved against the request's URI (RFC 3986 §5.2), if it is on the same host.
fn resolve(req: &Request<'_>, reference: &str) -> Option<(String, Option<String>)> {
    let reference = reference.split('#').next().unwrap_or("");
    let colon = reference.find(':');
    let has_scheme = colon.is_some_and(|c| reference.find(['/', '?']).is_none_or(|d| c < d));
    let (rest, absolute) = if let Some(r) = reference
        .strip_prefix("http://")
        .or_else(|| reference.strip_prefix("https://"))
        .or_else(|| reference.strip_prefix("//"))
    {
        (r, true)
    } else if has_scheme {
        // another scheme (`mailto:`, `urn:`...)
        return None;
    } else {
        (reference, false)
    };
    let target = if absolute {
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if !same_host(authority, req.authority, reference.starts_with("https://")) {
            return None;
        }
        if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        }
    } else if reference.is_empty() {
        return Some((req.path.to_string(), req.query.map(str::to_string)));
    } else if reference.starts_with('/') {
        reference.to_string()
    } else if let Some(q) = reference.strip_prefix('?') {
        format!("{}?{q}", req.path)
    } else {
        let dir = match req.path.rfind('/') {
            Some(i) => &req.path[..=i],
            None => "/",
        };
        format!("{dir}{reference}")
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target, None),
    };
    Some((path, query))
}

fn same_host(authority: &str, request_authority: &str, https: bool) -> bool {
    let a = authority.to_ascii_lowercase();
    let default_port = if https { ":443" } else { ":80" };
    let a = a.strip_suffix(default_port).unwrap_or(&a);
    let a = a.strip_suffix('.').unwrap_or(a);
    a == request_authority
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req() -> Request<'static> {
        Request {
            path: "/a/b",
            query: Some("x=1"),
            authority: "api.test:8080",
            credential_param: None,
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn resolved(v: &str) -> Option<String> {
        resolve(&req(), v).map(|(p, q)| match q {
            Some(q) => format!("{p}?{q}"),
            None => p,
        })
    }

    #[test]
    fn methods() {
        for m in ["POST", "PUT", "DELETE", "PATCH", "M-SEARCH"] {
            assert!(is_unsafe(&Method::from_bytes(m.as_bytes()).unwrap()), "{m}");
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(!is_unsafe(&m));
        }
    }

    #[test]
    fn references() {
        assert_eq!(resolved("/c?y=2").as_deref(), Some("/c?y=2"));
        assert_eq!(resolved("c").as_deref(), Some("/a/c"));
        assert_eq!(resolved("").as_deref(), Some("/a/b?x=1"));
        assert_eq!(resolved("?z").as_deref(), Some("/a/b?z"));
        assert_eq!(resolved("http://API.test:8080/d").as_deref(), Some("/d"));
        assert_eq!(resolved("//api.test:8080/e#frag").as_deref(), Some("/e"));
        assert_eq!(resolved("http://other.test/d"), None);
        assert_eq!(resolved("mailto:x@api.test"), None);
        let r = Request {
            authority: "api.test",
            ..req()
        };
        assert!(resolve(&r, "http://api.test:80/d").is_some());
        assert!(resolve(&r, "https://api.test:443/d").is_some());
    }

    #[test]
    fn only_non_error_responses() {
        let loc = [("location", "/new"), ("content-location", "/a/b?x=1")];
        assert_eq!(prefixes(&req(), &resp(201, &loc)).len(), 2);
        assert!(prefixes(&req(), &resp(500, &loc)).is_empty());
        assert!(prefixes(&req(), &resp(404, &loc)).is_empty());
        assert_eq!(prefixes(&req(), &resp(303, &[])).len(), 1);
    }
}
