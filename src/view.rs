//! The canonical view of a request: the one description of what a request is for.
//!
//! Computed once in `early_request_filter`, from the raw request target and the `Host`
//! header (or HTTP/2's `:authority`). Routing, auth, rate-limit keys, the cache key and the
//! request sent upstream all read this view and nothing else, so the request the gateway
//! decides on is the request the upstream receives. Whatever the view cannot represent
//! unambiguously is refused (400) before a route is chosen:
//!
//! - the target must be origin-form (`/path?query`), absolute-form with an `http` or
//!   `https` scheme (its authority *is* the host, RFC 9112 §3.2.2: any `Host` header is
//!   replaced by it), or `*` for `OPTIONS`; anything else (`app/x`, `x:/y`, `ws://`,
//!   authority-form) is a 400. A `#` fragment is never part of a target;
//! - exactly one `Host` for HTTP/1.1 origin-form (none is allowed for HTTP/1.0), and its
//!   value must be `reg-name / IPv4 / [IPv6]` with an optional numeric port; no userinfo,
//!   no path, query or fragment characters, no empty labels;
//! - the host is lower-cased and loses a trailing dot; a port equal to the scheme's
//!   default is dropped; that canonical `host[:port]` is what is forwarded as `Host`;
//! - the path is normalised ([`crate::routing::path`]), with escaped slashes handled as
//!   `server.paths.escaped_slashes` says; the query is kept byte for byte.

use crate::routing::path::{self, EscapedSlashes};
use std::borrow::Cow;
use std::net::Ipv6Addr;

/// The request target's form (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Origin,
    Absolute,
    /// `OPTIONS *`: about the server, not a resource; answered by the gateway.
    Asterisk,
}

/// One request, as the gateway understands it.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub form: Form,
    /// `true` for https (the target's scheme, else the listener's).
    pub https: bool,
    /// Lower case, no trailing dot, no port; empty for an HTTP/1.0 request without Host.
    pub host: String,
    pub port: Option<u16>,
    /// `host[:port]` as forwarded in `Host` (default port dropped); empty without a host.
    pub authority: String,
    /// Whether the received `Host` header is byte-for-byte `authority` already.
    pub host_header_canonical: bool,
    /// The normalised path: what is matched, keyed and forwarded.
    pub path: String,
    /// Whether `path` differs from the path bytes received in an origin-form target.
    pub path_changed: bool,
    /// The query, byte for byte, without the `?`.
    pub query: Option<String>,
}

impl RequestView {
    /// `path[?query]` as it goes upstream (before any route rewrite).
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => [self.path.as_str(), "?", q].concat(),
            None => self.path.clone(),
        }
    }

    /// Whether the target must be rebuilt for the upstream: it was not origin-form, or
    /// normalisation changed its path.
    pub fn target_changed(&self) -> bool {
        self.form != Form::Origin || self.path_changed
    }
}

/// Why a request has no unambiguous view (each is a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewError {
    Target,
    Scheme,
    Fragment,
    NoHost,
    ManyHosts,
    BadHost,
    AuthorityMismatch,
    NotUtf8,
    Path(path::PathError),
}

impl ViewError {
    pub fn message(self) -> &'static str {
        match self {
            ViewError::Target => {
                "the request target must be a path (`/...`), an http(s) URL, or `*` for OPTIONS"
            }
            ViewError::Scheme => "only http and https URLs are accepted as a request target",
            ViewError::Fragment => "a request target may not contain a fragment (`#`)",
            ViewError::NoHost => "the request has no Host header",
            ViewError::ManyHosts => "the request has more than one Host header",
            ViewError::BadHost => {
                "the Host is not a valid host name or IP address with an optional numeric port"
            }
            ViewError::AuthorityMismatch => "the Host header and :authority disagree",
            ViewError::NotUtf8 => "the request target is not valid UTF-8",
            ViewError::Path(e) => e.message(),
        }
    }
}

/// What the view needs from the request head.
pub struct Head<'a> {
    /// The request target as received (absolute-form whole).
    pub target: &'a [u8],
    pub method: &'a http::Method,
    pub version: http::Version,
    /// Every `Host` header value.
    pub hosts: &'a [&'a [u8]],
    /// HTTP/2's `:authority`, when the request carried one.
    pub h2_authority: Option<&'a str>,
    /// The connection is TLS.
    pub tls: bool,
}

/// Build the canonical view of a request, or say why there is none.
pub fn build(head: &Head<'_>, slashes: EscapedSlashes) -> Result<RequestView, ViewError> {
    let target = head.target;
    if target.contains(&b'#') {
        return Err(ViewError::Fragment);
    }
    let (form, https, target_authority, path_query): (Form, bool, Option<&[u8]>, &[u8]) =
        if target.first() == Some(&b'/') {
            (Form::Origin, head.tls, None, target)
        } else if target == b"*" {
            if head.method != http::Method::OPTIONS {
                return Err(ViewError::Target);
            }
            (Form::Asterisk, head.tls, None, b"")
        } else {
            let (https, rest) = if let Some(r) = strip_prefix_ci(target, b"http://") {
                (false, r)
            } else if let Some(r) = strip_prefix_ci(target, b"https://") {
                (true, r)
            } else if target.windows(3).any(|w| w == b"://") {
                // another scheme (ws://, ftp://): not something this gateway forwards
                return Err(ViewError::Scheme);
            } else {
                // opaque (`app/x`, `x:/y`) or authority-form (CONNECT is not supported)
                return Err(ViewError::Target);
            };
            let end = rest
                .iter()
                .position(|b| *b == b'/' || *b == b'?')
                .unwrap_or(rest.len());
            (Form::Absolute, https, Some(&rest[..end]), &rest[end..])
        };

    // the host: the absolute-form authority wins; else :authority (h2) or the one Host
    let host_src: Option<&[u8]> = match target_authority {
        Some(a) => {
            if head.hosts.len() > 1 {
                return Err(ViewError::ManyHosts);
            }
            Some(a)
        }
        None => match (head.h2_authority, head.hosts) {
            (_, [_, _, ..]) => return Err(ViewError::ManyHosts),
            (Some(a), [h]) => {
                if !a.as_bytes().eq_ignore_ascii_case(h) {
                    return Err(ViewError::AuthorityMismatch);
                }
                Some(a.as_bytes())
            }
            (Some(a), []) => Some(a.as_bytes()),
            (None, [h]) => Some(*h),
            (None, []) => {
                // only HTTP/1.0 may omit the host (RFC 9112 §3.2)
                if head.version != http::Version::HTTP_10 && head.version != http::Version::HTTP_09
                {
                    return Err(ViewError::NoHost);
                }
                None
            }
        },
    };
    let (host, port) = match host_src {
        Some(h) => parse_authority(h)?,
        None => (String::new(), None),
    };
    let default_port = if https { 443 } else { 80 };
    let port = port.filter(|p| *p != default_port);
    let authority = match port {
        Some(p) => [host.as_str(), ":", itoa::Buffer::new().format(p)].concat(),
        None => host.clone(),
    };
    let host_header_canonical = target_authority.is_none()
        && head
            .hosts
            .first()
            .is_some_and(|h| *h == authority.as_bytes());

    // path and query
    let (raw_path, query) = match path_query.iter().position(|b| *b == b'?') {
        Some(i) => (&path_query[..i], Some(&path_query[i + 1..])),
        None => (path_query, None),
    };
    let raw_path = std::str::from_utf8(raw_path).map_err(|_| ViewError::NotUtf8)?;
    let query = query
        .map(|q| std::str::from_utf8(q).map(str::to_string))
        .transpose()
        .map_err(|_| ViewError::NotUtf8)?;
    let (path, path_changed) = match form {
        Form::Asterisk => ("*".to_string(), false),
        _ if raw_path.is_empty() => ("/".to_string(), true),
        _ => match path::normalize_with(raw_path, slashes).map_err(ViewError::Path)? {
            Cow::Borrowed(p) => (p.to_string(), false),
            Cow::Owned(p) => (p, true),
        },
    };
    Ok(RequestView {
        form,
        https,
        host,
        port,
        authority,
        host_header_canonical,
        path,
        path_changed,
        query,
    })
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// `host[:port]` → (canonical host, port). `reg-name` is limited to letters, digits, `-`,
/// `_` and `.` in non-empty labels (what DNS and certificates can name); IPv6 needs brackets.
pub fn parse_authority(a: &[u8]) -> Result<(String, Option<u16>), ViewError> {
    let (host, port): (&[u8], Option<&[u8]>) = if a.first() == Some(&b'[') {
        let close = a
            .iter()
            .position(|b| *b == b']')
            .ok_or(ViewError::BadHost)?;
        let inner = std::str::from_utf8(&a[1..close]).map_err(|_| ViewError::BadHost)?;
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(ViewError::BadHost);
        }
        match &a[close + 1..] {
            [] => (&a[..=close], None),
            [b':', rest @ ..] => (&a[..=close], Some(rest)),
            _ => return Err(ViewError::BadHost),
        }
    } else {
        match a.iter().position(|b| *b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        }
    };
    let port = match port {
        None | Some([]) => None,
        Some(p) => {
            if p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
                return Err(ViewError::BadHost);
            }
            let v: u32 = p.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0'));
            Some(u16::try_from(v).map_err(|_| ViewError::BadHost)?)
        }
    };
    if host.first() == Some(&b'[') {
        let s = std::str::from_utf8(host).map_err(|_| ViewError::BadHost)?;
        return Ok((s.to_ascii_lowercase(), port));
    }
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty()
        || !host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || host.split(|b| *b == b'.').any(|label| label.is_empty())
    {
        return Err(ViewError::BadHost);
    }
    let mut h = String::with_capacity(host.len());
    for b in host {
        h.push(b.to_ascii_lowercase() as char);
    }
    Ok((h, port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use http::{Method, Version};

    fn view(target: &str, hosts: &[&str]) -> Result<RequestView, ViewError> {
        view_v(target, hosts, Version::HTTP_11, &Method::GET)
    }

    fn view_v(
        target: &str,
        hosts: &[&str],
        version: Version,
        method: &Method,
    ) -> Result<RequestView, ViewError> {
        let hosts: Vec<&[u8]> = hosts.iter().map(|h| h.as_bytes()).collect();
        build(
            &Head {
                target: target.as_bytes(),
                method,
                version,
                hosts: &hosts,
                h2_authority: None,
                tls: false,
            },
            EscapedSlashes::Reject,
        )
    }

    #[test]
    fn origin_form() {
        let v = view("/a/./b?x=1&y", &["Api.Example.COM.:8080"]).unwrap();
        assert_eq!(v.host, "api.example.com");
        assert_eq!(v.port, Some(8080));
        assert_eq!(v.authority, "api.example.com:8080");
        assert!(!v.host_header_canonical);
        assert_eq!(v.path, "/a/b");
        assert!(v.path_changed);
        assert_eq!(v.query.as_deref(), Some("x=1&y"));
        assert_eq!(v.path_and_query(), "/a/b?x=1&y");
        let v = view("/a", &["a.test"]).unwrap();
        assert!(v.host_header_canonical && !v.target_changed());
        assert_eq!(view("/a", &["a.test:80"]).unwrap().authority, "a.test");
    }

    #[test]
    fn absolute_form_authority_replaces_host() {
        let v = view("http://Admin.Test/vh/x?q", &["other.test"]).unwrap();
        assert_eq!(v.form, Form::Absolute);
        assert_eq!(v.host, "admin.test");
        assert_eq!(v.path_and_query(), "/vh/x?q");
        assert!(v.target_changed());
        let v = view("https://a.test:443", &[]).unwrap();
        assert!(v.https);
        assert_eq!((v.authority.as_str(), v.path.as_str()), ("a.test", "/"));
        let v = view_v("http://a.test/x", &[], Version::HTTP_10, &Method::GET).unwrap();
        assert_eq!(v.host, "a.test");
        assert_eq!(view("HTTP://a.test/x", &[]).unwrap().host, "a.test");
    }

    #[test]
    fn other_targets_are_refused() {
        assert_eq!(view("app/admin/x", &["a"]).unwrap_err(), ViewError::Target);
        assert_eq!(
            view("x:/app/admin/x", &["a"]).unwrap_err(),
            ViewError::Target
        );
        assert_eq!(view("ws://a.test/x", &[]).unwrap_err(), ViewError::Scheme);
        assert_eq!(view("a.test:443", &[]).unwrap_err(), ViewError::Target);
        assert_eq!(view("*", &["a"]).unwrap_err(), ViewError::Target);
        assert_eq!(view("/a#frag", &["a"]).unwrap_err(), ViewError::Fragment);
        assert_eq!(
            view("http://u@a.test/", &[]).unwrap_err(),
            ViewError::BadHost
        );
        let v = view_v("*", &["a"], Version::HTTP_11, &Method::OPTIONS).unwrap();
        assert_eq!(v.form, Form::Asterisk);
        assert_eq!((v.path.as_str(), v.path_changed), ("*", false));
    }

    #[test]
    fn bracketed_hosts_and_port_digits() {
        assert_eq!(parse_authority(b"[::1]"), Ok(("[::1]".to_string(), None)));
        assert_eq!(
            parse_authority(b"[::1]:8080"),
            Ok(("[::1]".to_string(), Some(8080)))
        );
        assert_eq!(
            parse_authority(b"a.test:65535"),
            Ok(("a.test".to_string(), Some(65535)))
        );
        // six digits are refused even when their value fits (`000080`)
        assert_eq!(parse_authority(b"a.test:000080"), Err(ViewError::BadHost));
        assert_eq!(parse_authority(b"a.test:65536"), Err(ViewError::BadHost));
    }

    #[test]
    fn every_error_says_what_is_wrong() {
        assert!(ViewError::NoHost.message().contains("no Host header"));
        assert!(ViewError::Fragment.message().contains("fragment"));
    }

    #[test]
    fn host_syntax() {
        for h in [
            "admin.test/x",
            "admin.test?x",
            "admin.test\\x",
            "admin.test#x",
            "user@admin.test",
            "admin.test:99999",
            "admin.test:-1",
            "127.0.0.1:evil.example",
            "admin test",
            "",
            ".",
            "a..b",
            "::1",
            "[::1",
            "[zz]",
            "[::1]x",
            "a%2eb",
        ] {
            assert_eq!(view("/", &[h]).unwrap_err(), ViewError::BadHost, "{h:?}");
        }
        assert_eq!(view("/", &["a", "a"]).unwrap_err(), ViewError::ManyHosts);
        assert_eq!(view("/", &[]).unwrap_err(), ViewError::NoHost);
        let v = view_v("/", &[], Version::HTTP_10, &Method::GET).unwrap();
        assert_eq!(v.authority, "");
        assert_eq!(view("/", &["[::1]:8080"]).unwrap().authority, "[::1]:8080");
        assert_eq!(view("/", &["127.0.0.1:80"]).unwrap().authority, "127.0.0.1");
        assert_eq!(view("/", &["a.test:"]).unwrap().authority, "a.test");
        assert_eq!(
            view("/", &["under_score.test"]).unwrap().host,
            "under_score.test"
        );
    }

    #[test]
    fn h2_authority() {
        let b = |auth: Option<&str>, hosts: &[&[u8]]| {
            build(
                &Head {
                    target: b"/x",
                    method: &Method::GET,
                    version: Version::HTTP_2,
                    hosts,
                    h2_authority: auth,
                    tls: true,
                },
                EscapedSlashes::Reject,
            )
        };
        assert_eq!(b(Some("a.test:443"), &[]).unwrap().authority, "a.test");
        assert_eq!(b(Some("a.test"), &[b"A.test"]).unwrap().host, "a.test");
        assert_eq!(
            b(Some("a.test"), &[b"b.test"]).unwrap_err(),
            ViewError::AuthorityMismatch
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            view("/public/..%2fsecret/x", &["a"]).unwrap_err(),
            ViewError::Path(path::PathError::EscapedSlash)
        );
        assert_eq!(
            view("/..", &["a"]).unwrap_err(),
            ViewError::Path(path::PathError::EscapesRoot)
        );
        let v = view("http://a.test?x=1", &[]).unwrap();
        assert_eq!(v.path_and_query(), "/?x=1");
    }
}
