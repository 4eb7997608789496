//! Cache keys.
//!
//! A key is made of what the gateway forwards, and nothing the upstream does not see: the
//! canonical request view's path and query (the query byte for byte, less an API-key
//! parameter, which is removed before forwarding too), the canonical `Host` value, the
//! route's unique identity, then what varies per client. The primary key starts with the
//! path and query, then a NUL byte (neither can contain one: the view refuses control
//! characters), then length-prefixed components:
//!
//! ```text
//! /api/x?b=2&a=1 \0 | GET | host[:port] | route id | settings hash | identity | key headers...
//! ```
//!
//! Leading with the path makes purges simple byte-prefix matches over the stored primaries:
//! `{"prefix": "/api/"}` removes every entry under `/api/` (all hosts, identities and
//! variants), `{"key": "/api/x?a=1"}` every entry of exactly that path and query (the prefix
//! `"/api/x?a=1\0"`). The query is not reordered: `?a=1&a=2` and `?a=2&a=1` may mean
//! different things to an upstream, so they are different entries. HEAD shares GET's
//! entries: pingora fetches a full GET for a HEAD miss. `Vary` is not in the primary key:
//! pingora keys the variants by [`super::variance`].

use super::RouteCache;
use crate::auth::Identity;
use crate::routing::path;
use pingora_cache::CacheKey;
use pingora_http::RequestHeader;
use std::borrow::Cow;

fn push_component(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..len as usize]);
}

/// `path[?query]` followed by the NUL separator: the part purges match on.
fn resource(path: &str, query: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + query.len() + 2);
    out.extend_from_slice(path.as_bytes());
    if !query.is_empty() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.push(0);
    out
}

/// Everything the key is made of, taken from the request view and the proxy context.
pub struct KeyInput<'a> {
    /// For the route's `key_headers`.
    pub req: &'a RequestHeader,
    /// The canonical view's normalised path, query and `host[:port]`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: &'a str,
    /// The route's unique identity (`Route::cache_id`).
    pub route_id: &'a str,
    pub route: &'a RouteCache,
    pub identity: Option<&'a Identity>,
    /// A query parameter that carried the API key: removed before forwarding, so not keyed.
    pub credential_param: Option<&'a str>,
}

/// The cache key of this request (`cache_key_callback`).
pub fn build(input: &KeyInput<'_>) -> CacheKey {
    let req = input.req;
    let query: Cow<'_, str> = match (input.query, input.credential_param) {
        (None, _) => Cow::Borrowed(""),
        (Some(q), None) => Cow::Borrowed(q),
        (Some(q), Some(param)) => Cow::Owned(crate::auth::query_without(q, param)),
    };
    let mut primary = resource(input.path, &query);
    push_component(&mut primary, b"GET");
    push_component(&mut primary, input.authority.as_bytes());
    push_component(&mut primary, input.route_id.as_bytes());
    push_component(&mut primary, input.route.tag.as_bytes());
    match input.identity.filter(|_| input.route.per_identity) {
        Some(id) => {
            let issuer = id.issuer.as_deref().unwrap_or("");
            let who = format!("{}:{}:{}", id.kind.as_str(), issuer, id.subject);
            push_component(&mut primary, who.as_bytes());
        }
        None => push_component(&mut primary, b""),
    }
    for name in &input.route.key_headers {
        push_component(&mut primary, name.as_str().as_bytes());
        let mut value = Vec::new();
        for (i, v) in req.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                value.push(b',');
            }
            value.extend_from_slice(v.as_bytes());
        }
        push_component(&mut primary, &value);
    }
    CacheKey::new(primary, input.route_id)
}

/// The stored-primary prefix of every entry of `path?query` on `authority`, whatever the route,
/// identity or variant: what an unsafe request to that URI invalidates (RFC 9111 §4.4).
/// `path` is normalised like request paths; `query` is as forwarded (less the credential
/// parameter, as in [`build`]).
pub fn invalidation_prefix(
    path: &str,
    query: Option<&str>,
    authority: &str,
    credential_param: Option<&str>,
) -> Result<Vec<u8>, String> {
    let normalized = path::normalize(path).map_err(|e| e.message().to_string())?;
    let query: Cow<'_, str> = match (query, credential_param) {
        (None, _) => Cow::Borrowed(""),
        (Some(q), None) => Cow::Borrowed(q),
        (Some(q), Some(param)) => Cow::Owned(crate::auth::query_without(q, param)),
    };
    let mut out = resource(&normalized, &query);
    push_component(&mut out, b"GET");
    push_component(&mut out, authority.as_bytes());
    Ok(out)
}

/// The stored-primary prefix shared by every entry of exactly this `path?query` (as a client
/// would request it: the path is normalised like request paths, the query taken as given).
pub fn purge_key_prefix(key: &str) -> Result<Vec<u8>, String> {
    let (p, q) = key.split_once('?').unwrap_or((key, ""));
    let normalized = path::normalize(p).map_err(|e| format!("`key`: {}", e.message()))?;
    Ok(resource(&normalized, q))
}

/// The stored-primary prefix of every entry under `prefix` (a path prefix, optionally with
/// the start of a query). The path part is normalised like request paths.
pub fn purge_path_prefix(prefix: &str) -> Result<Vec<u8>, String> {
    let (p, rest) = match prefix.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (prefix, None),
    };
    let normalized = path::normalize(p).map_err(|e| format!("`prefix`: {}", e.message()))?;
    let mut out = normalized.as_bytes().to_vec();
    // normalisation drops a trailing "/." and similar, but keeps a trailing slash
    if let Some(q) = rest {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::{Dur, Problems, RouteCacheConfig};
    use pingora_cache::key::CacheHashKey;

    fn route(auth: bool, shared: bool, key_headers: &[&str]) -> RouteCache {
        let cfg = RouteCacheConfig {
            default_ttl: Some(Dur::secs(30)),
            statuses: Some(vec![200]),
            key_headers: key_headers.iter().map(|s| s.to_string()).collect(),
            shared,
            ..Default::default()
        };
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        RouteCache::build(&cfg, auth, "routes[0].cache", &mut p).unwrap()
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(http::Method::GET, uri.as_bytes(), None).unwrap();
        r.insert_header("host", "API.example.com:8080").unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn key(r: &RequestHeader, rc: &RouteCache, id: Option<&Identity>) -> CacheKey {
        key_on(r, rc, id, "r")
    }

    fn key_on(r: &RequestHeader, rc: &RouteCache, id: Option<&Identity>, route: &str) -> CacheKey {
        let host = r.headers.get("host").unwrap().as_bytes();
        let hosts = [host];
        let v = crate::view::build(
            &crate::view::Head {
                target: r.raw_path(),
                method: &r.method,
                version: http::Version::HTTP_11,
                hosts: &hosts,
                h2_authority: None,
                tls: false,
            },
            path::EscapedSlashes::Reject,
        )
        .unwrap();
        build(&KeyInput {
            req: r,
            path: &v.path,
            query: v.query.as_deref(),
            authority: &v.authority,
            route_id: route,
            route: rc,
            identity: id,
            credential_param: Some("api_key"),
        })
    }

    fn ident(subject: &str) -> Identity {
        Identity {
            subject: subject.into(),
            ..Identity::default()
        }
    }

    #[test]
    fn key_is_what_is_forwarded() {
        let rc = route(false, false, &[]);
        let a = key(&req("/x?a=1&b=2", &[]), &rc, None);
        // the API-key parameter is removed before forwarding, and from the key
        let b = key(&req("/x?a=1&api_key=k&b=2", &[]), &rc, None);
        let c = key(&req("/.//x?a=1&b=2", &[]), &rc, None);
        assert_eq!(a.primary_bin(), b.primary_bin());
        assert_eq!(a.primary_bin(), c.primary_bin());
        assert!(a.primary_key().starts_with(b"/x?a=1&b=2\0"));
        // the query is not reordered: the upstream sees these differently
        let d = key(&req("/x?b=2&a=1", &[]), &rc, None);
        assert_ne!(a.primary_bin(), d.primary_bin());
        // the port is part of the forwarded Host; the case and a trailing dot are not
        let mut other_port = req("/x?a=1&b=2", &[]);
        other_port
            .insert_header("host", "api.example.com:9090")
            .unwrap();
        assert_ne!(a.primary_bin(), key(&other_port, &rc, None).primary_bin());
        let mut same = req("/x?a=1&b=2", &[]);
        same.insert_header("host", "api.EXAMPLE.com.:8080").unwrap();
        assert_eq!(a.primary_bin(), key(&same, &rc, None).primary_bin());
        // two routes never share an entry
        let r = req("/x", &[]);
        assert_ne!(
            key_on(&r, &rc, None, "route-a").primary_bin(),
            key_on(&r, &rc, None, "route-b").primary_bin()
        );
    }

    #[test]
    fn identity_headers_and_settings_separate_entries() {
        let rc = route(true, false, &["x-tenant"]);
        let r = req("/x", &[("x-tenant", "a")]);
        let (alice, bob) = (ident("alice"), ident("bob"));
        let k1 = key(&r, &rc, Some(&alice));
        assert_eq!(k1.primary_bin(), key(&r, &rc, Some(&alice)).primary_bin());
        assert_ne!(k1.primary_bin(), key(&r, &rc, Some(&bob)).primary_bin());
        let r2 = req("/x", &[("x-tenant", "b")]);
        assert_ne!(k1.primary_bin(), key(&r2, &rc, Some(&alice)).primary_bin());
        // shared: identities share entries
        let shared = route(true, true, &["x-tenant"]);
        assert_eq!(
            key(&r, &shared, Some(&alice)).primary_bin(),
            key(&r, &shared, Some(&bob)).primary_bin()
        );
        // other settings, other keys
        assert_ne!(
            key(&r, &shared, Some(&alice)).primary_bin(),
            key(&r, &route(true, true, &[]), Some(&alice)).primary_bin()
        );
    }

    #[test]
    fn repeated_key_headers_are_one_list() {
        let rc = route(false, false, &["x-tenant"]);
        let two_lines = key(
            &req("/x", &[("x-tenant", "a"), ("x-tenant", "b")]),
            &rc,
            None,
        );
        // `a` then `b` on two lines is the list `a,b`, never the value `ab`
        let joined = key(&req("/x", &[("x-tenant", "ab")]), &rc, None);
        assert_ne!(two_lines.primary_bin(), joined.primary_bin());
        let listed = key(&req("/x", &[("x-tenant", "a,b")]), &rc, None);
        assert_eq!(two_lines.primary_bin(), listed.primary_bin());
        let first_only = key(&req("/x", &[("x-tenant", "a")]), &rc, None);
        assert_ne!(two_lines.primary_bin(), first_only.primary_bin());
    }

    #[test]
    fn head_shares_get() {
        let rc = route(false, false, &[]);
        let get = req("/x", &[]);
        let mut head = req("/x", &[]);
        head.set_method(http::Method::HEAD);
        assert_eq!(
            key(&get, &rc, None).primary_bin(),
            key(&head, &rc, None).primary_bin()
        );
    }

    #[test]
    fn purge_prefixes() {
        assert_eq!(
            purge_key_prefix("/api/x?b=2&a=1").unwrap(),
            b"/api/x?b=2&a=1\0"
        );
        assert_eq!(purge_key_prefix("/api//x").unwrap(), b"/api/x\0");
        assert_eq!(purge_path_prefix("/api/").unwrap(), b"/api/");
        assert_eq!(purge_path_prefix("/api/x?a=").unwrap(), b"/api/x?a=");
        assert!(purge_path_prefix("api").is_err());
        assert!(purge_key_prefix("/../x").is_err());
    }
}
