//! Request path normalisation, routing, path patterns and rewrites.
//!
//! The whole input is used as a request path (normalised, then routed on a fixed router)
//! and as a path pattern. It is also split on the first two `\n` into
//! `PATTERN \n REWRITE \n PATH` (a request path never holds a `\n`, normalisation
//! rejects control characters): the pattern is parsed, the rewrite template parsed
//! against it and applied to the path's segments, and a one-route router built from the
//! pattern must route a path made of the pattern's own segments to that route.

#![no_main]

use http::{HeaderMap, HeaderName, Method};
use libfuzzer_sys::fuzz_target;
use portcullis::routing::path::{normalize, PathError};
use portcullis::routing::{
    segments, HostPattern, Lookup, Methods, PathPattern, Rewrite, RouteSpec, Router, Segment,
};
use std::borrow::Cow;
use std::sync::LazyLock;

fn spec(host: Option<&str>, path: &str, methods: Option<&[&str]>) -> RouteSpec {
    RouteSpec {
        host: host.map(|h| HostPattern::parse(h).unwrap()),
        path: PathPattern::parse(path).unwrap(),
        methods: methods
            .map(|m| Methods::parse(&m.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap())
            .unwrap_or(Methods::ANY),
        headers: vec![],
        method_fallthrough: false,
    }
}

static ROUTER: LazyLock<Router> = LazyLock::new(|| {
    let mut canary = spec(None, "/app/**", None);
    canary.headers = vec![(HeaderName::from_static("x-canary"), b"1".to_vec())];
    Router::new(vec![
        spec(None, "/api/**", None),
        spec(None, "/api/users/*", None),
        spec(None, "/api/users/:id", Some(&["GET"])),
        spec(None, "/api/users/:id", Some(&["DELETE", "PUT"])),
        spec(None, "/api/users/me", None),
        spec(None, "/api/users/**", None),
        spec(None, "/api/%2F/:x/*/**", None),
        spec(None, "/admin", Some(&["POST"])),
        spec(None, "/app/**", None),
        canary,
        spec(None, "/", None),
        spec(Some("*.example.com"), "/api/users/me", None),
        spec(Some("api.example.com"), "/api/**", Some(&["GET"])),
        spec(Some("api.example.com"), "/:a/:b/:c", None),
    ])
});

const HOSTS: [&str; 5] = [
    "example.com",
    "api.example.com",
    "a.b.example.com",
    "other.test",
    "",
];
const METHODS: [Method; 5] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::DELETE,
    Method::OPTIONS,
];

/// What `normalize` promises about its output.
fn check_normalized(input: &str, out: &Cow<'_, str>) {
    let n: &str = out;
    assert!(
        n.starts_with('/'),
        "{input:?} -> {n:?}: does not start with '/'"
    );
    assert!(!n.contains("//"), "{input:?} -> {n:?}: holds \"//\"");
    for seg in n.split('/').skip(1) {
        assert!(
            seg != "." && seg != "..",
            "{input:?} -> {n:?}: holds a dot segment"
        );
    }
    assert!(
        !n.bytes().any(|b| b <= b' ' || b == 0x7f),
        "{input:?} -> {n:?}: holds a control character or space"
    );
    // Every escape left is a canonical (upper-case) escape of a reserved byte.
    let b = n.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = n
                .get(i + 1..i + 3)
                .unwrap_or_else(|| panic!("{input:?} -> {n:?}: truncated escape at {i}"));
            let v = u8::from_str_radix(hex, 16)
                .unwrap_or_else(|_| panic!("{input:?} -> {n:?}: bad escape at {i}"));
            assert!(
                hex.bytes().all(|c| !c.is_ascii_lowercase()),
                "{input:?} -> {n:?}: lower-case escape at {i}"
            );
            assert!(
                !(v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~')),
                "{input:?} -> {n:?}: escape of an unreserved character at {i}"
            );
            i += 3;
        } else {
            i += 1;
        }
    }
    if let Cow::Borrowed(s) = out {
        assert_eq!(*s, input, "a borrowed result must be the input itself");
    }
    // Idempotence: the normalised path is its own normal form.
    match normalize(n) {
        Ok(again) => {
            // (it may still come back as an owned copy: `needs_work` is a conservative
            // pre-check, e.g. `/a/...` is copied although nothing changes)
            assert_eq!(&*again, n, "normalising {input:?} twice changed it");
        }
        Err(e) => panic!("{input:?} -> {n:?}, which no longer normalises: {e:?}"),
    }
}

fn route(path: &str, pick: usize) {
    let out = match normalize(path) {
        Ok(out) => out,
        Err(e) => {
            let _ = e.message();
            return;
        }
    };
    check_normalized(path, &out);
    let segs = segments(&out);
    assert!(segs.iter().all(|s| !s.is_empty() && !s.contains('/')));
    let mut headers = HeaderMap::new();
    if pick & 8 != 0 {
        headers.insert("x-canary", http::HeaderValue::from_static("1"));
    }
    let host = HOSTS[pick % HOSTS.len()];
    let method = &METHODS[(pick / HOSTS.len()) % METHODS.len()];
    match ROUTER.lookup(host, &segs, method, &headers) {
        Lookup::Found(i) => assert!(i < ROUTER.len()),
        Lookup::MethodNotAllowed(m) => {
            assert!(!m.allows(method), "405 lists the request's own method");
            assert!(!m.allow_header().is_empty());
        }
        Lookup::NotFound => {}
    }
    // the Host parser on arbitrary text
    let _ = portcullis::view::parse_authority(path.as_bytes());
}

/// A request path made of the pattern's own segments (params and `*` filled in).
fn sample_path(p: &PathPattern) -> String {
    let mut out = String::new();
    for s in &p.segments {
        match s {
            Segment::Literal(l) => {
                out.push('/');
                out.push_str(l);
            }
            Segment::Param(_) | Segment::Star => out.push_str("/x"),
            Segment::Rest => {}
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn patterns(pattern: &str, template: Option<&str>, path: Option<&str>) {
    let Ok(pt) = PathPattern::parse(pattern) else {
        return;
    };
    // A pattern that parses matches the path made of its own segments.
    let sample = sample_path(&pt);
    match normalize(&sample) {
        Ok(n) => assert_eq!(
            &*n, sample,
            "pattern {pattern:?}: sample path is not normalised"
        ),
        Err(e) => panic!("pattern {pattern:?}: sample path {sample:?} does not normalise: {e:?}"),
    }
    let one = Router::new(vec![RouteSpec {
        host: None,
        path: pt.clone(),
        methods: Methods::ANY,
        headers: vec![],
        method_fallthrough: false,
    }]);
    let found = one.lookup("h", &segments(&sample), &Method::GET, &HeaderMap::new());
    assert_eq!(
        found,
        Lookup::Found(0),
        "pattern {pattern:?} does not match {sample:?}"
    );

    let Some(template) = template else { return };
    let Ok(rw) = Rewrite::parse(template, &pt) else {
        return;
    };
    let _ = rw.apply(&segments(&sample));
    if let Some(path) = path {
        if let Ok(n) = normalize(path) {
            let segs = segments(&n);
            let _ = rw.apply(&segs);
            let _ = portcullis::routing::pattern::strip_prefix(&n, template);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let pick = data.first().map_or(0, |b| *b as usize) ^ data.len();
    route(s, pick);
    // The whole input as a pattern, and as PATTERN \n REWRITE \n PATH.
    let _ = PathPattern::parse(s);
    let mut parts = s.splitn(3, '\n');
    let pattern = parts.next().unwrap_or("");
    let template = parts.next();
    let path = parts.next();
    patterns(pattern, template, path);
    if let Some(p) = path {
        route(p, pick);
    }
    let _ = PathError::Malformed.message();
});
