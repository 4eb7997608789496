//! What the stored copy of a response holds (RFC 9111 §3.1) and how a `304` updates it (§3.2).

use super::freshness::Directives;
use crate::config::SetCookie;
use http::header::{AGE, CONNECTION, SET_COOKIE};
use http::HeaderName;
use pingora_http::ResponseHeader;

/// Hop-by-hop fields (RFC 9110 §7.6.1) and the proxy-authentication ones, which describe one
/// connection or one proxy: never stored (RFC 9111 §3.1).
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authentication-info",
    "proxy-authorization",
];

/// Fields a `304` does not update: they describe the stored bytes, which it does not replace,
/// or selected the stored variant.
const KEPT_ON_UPDATE: [&str; 5] = [
    "content-length",
    "content-encoding",
    "content-range",
    "vary",
    "age",
];

/// The lower-case names listed in the response's `Connection` header(s).
pub fn connection_listed(resp: &ResponseHeader) -> Vec<String> {
    let mut names = Vec::new();
    for v in resp.headers.get_all(CONNECTION) {
        let Ok(s) = v.to_str() else { continue };
        for n in s.split(',') {
            let n = n.trim().to_ascii_lowercase();
            if !n.is_empty() && !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

/// Remove the fields named in `Connection` (a proxy must not forward them; RFC 9110 §7.6.1).
/// `Connection` itself is left to the HTTP layer, which writes its own.
pub fn remove_connection_listed(resp: &mut ResponseHeader) {
    for name in connection_listed(resp) {
        if name != "connection" {
            resp.remove_header(name.as_str());
        }
    }
}

/// Remove what a shared cache does not store: hop-by-hop fields, those named in `Connection`,
/// `Age` (it is recomputed when served), the fields named by `no-cache="..."` and
/// `private="..."`, and `Set-Cookie` unless the route replays it.
pub fn strip(header: &mut ResponseHeader, d: &Directives, set_cookie: SetCookie) {
    remove_connection_listed(header);
    for name in HOP_BY_HOP {
        header.remove_header(name);
    }
    header.remove_header(&AGE);
    for name in &d.unstored_fields {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            header.remove_header(&n);
        }
    }
    if set_cookie != SetCookie::Serve {
        header.remove_header(&SET_COOKIE);
    }
}

/// The stored response updated by a `304` (or another response that validated it): every
/// field of `update` replaces the stored one of that name, except the connection's own and
/// those in [`KEPT_ON_UPDATE`].
pub fn merge_304(stored: &ResponseHeader, update: &ResponseHeader) -> ResponseHeader {
    let mut merged = stored.clone();
    let listed = connection_listed(update);
    let mut done: Vec<&HeaderName> = Vec::new();
    for name in update.headers.keys() {
        let n = name.as_str();
        if done.contains(&name)
            || HOP_BY_HOP.contains(&n)
            || KEPT_ON_UPDATE.contains(&n)
            || listed.iter().any(|l| l == n)
        {
            continue;
        }
        done.push(name);
        merged.remove_header(name);
        for v in update.headers.get_all(name) {
            // the name and value come from a parsed header: appending them cannot fail
            let _ = merged.append_header(name.clone(), v.clone());
        }
    }
    merged
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn strips_what_is_not_stored() {
        let mut r = resp(
            200,
            &[
                ("connection", "a, B"),
                ("a", "1"),
                ("b", "2"),
                ("c", "3"),
                ("keep-alive", "timeout=5"),
                ("age", "30"),
                ("set-cookie", "s=1"),
                ("x-secret", "y"),
            ],
        );
        let d = Directives {
            unstored_fields: vec!["x-secret".into()],
            ..Default::default()
        };
        strip(&mut r, &d, SetCookie::Strip);
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["c"]);
        let mut r = resp(200, &[("set-cookie", "s=1")]);
        strip(&mut r, &Directives::default(), SetCookie::Serve);
        assert!(r.headers.contains_key("set-cookie"));
    }

    #[test]
    fn a_304_updates_all_but_the_kept_fields() {
        let stored = resp(
            200,
            &[
                ("content-length", "36"),
                ("content-type", "text/plain"),
                ("x-a", "old"),
                ("x-keep", "k"),
                ("etag", "\"1\""),
                ("vary", "accept"),
            ],
        );
        let update = resp(
            304,
            &[
                ("content-length", "10"),
                ("x-a", "new1"),
                ("x-a", "new2"),
                ("etag", "\"2\""),
                ("connection", "x-hop"),
                ("x-hop", "h"),
                ("vary", "cookie"),
            ],
        );
        let m = merge_304(&stored, &update);
        assert_eq!(m.status, 200);
        assert_eq!(m.headers["content-length"], "36");
        let xa: Vec<_> = m.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["new1", "new2"]);
        assert_eq!(m.headers["x-keep"], "k");
        assert_eq!(m.headers["etag"], "\"2\"");
        assert_eq!(m.headers["vary"], "accept");
        assert!(!m.headers.contains_key("x-hop"));
        assert!(!m.headers.contains_key("connection"));
    }
}
