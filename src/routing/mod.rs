//! Host + path routing over a segment trie.
//!
//! Lookup cost depends on the depth of the request path, not on the number of routes:
//! each path segment is one hash lookup in the node's literal children, plus (only on
//! a miss further down) the single-segment wildcard branches.
//!
//! Specificity: an exact host beats a wildcard host (longest suffix first), which beats
//! routes without a host. Within a host, a depth-first walk tries literal segments, then
//! `:params`, then `*`, then `**`, so the first complete match is the most specific one,
//! and a longer literal prefix beats a shorter one. At one pattern, routes with header
//! conditions come before routes without, then declaration order.
//!
//! Methods: the most specific matching path decides. When its routes (those whose header
//! conditions hold) exclude the request's method, the answer is 405 with the union of the
//! methods they allow; the search does not go on to less specific routes, which may have
//! weaker auth. A route with `method_fallthrough` lets other methods go on.

pub mod path;
pub mod pattern;

use ahash::AHashMap;
use http::{HeaderMap, HeaderName, Method};
pub use pattern::{HostPattern, PathPattern, Rewrite, Segment};

/// Bit set of HTTP methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Methods(pub u16);

const METHOD_NAMES: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

/// Methods outside [`METHOD_NAMES`] (extension methods such as `M-SEARCH`): a route without a
/// `methods` list forwards them; a list cannot name them.
const EXTENSION: u16 = 1 << 9;

impl Methods {
    pub const ANY: Methods = Methods(0x1ff | EXTENSION);

    pub fn bit(m: &Method) -> u16 {
        match *m {
            Method::GET => 1,
            Method::HEAD => 1 << 1,
            Method::POST => 1 << 2,
            Method::PUT => 1 << 3,
            Method::DELETE => 1 << 4,
            Method::PATCH => 1 << 5,
            Method::OPTIONS => 1 << 6,
            Method::TRACE => 1 << 7,
            Method::CONNECT => 1 << 8,
            _ => EXTENSION,
        }
    }

    pub fn parse(list: &[String]) -> Result<Methods, String> {
        let mut bits = 0u16;
        for m in list {
            let up = m.to_ascii_uppercase();
            let i = METHOD_NAMES
                .iter()
                .position(|n| *n == up)
                .ok_or_else(|| format!("unknown HTTP method `{m}`"))?;
            bits |= 1 << i;
            if up == "GET" {
                bits |= 1 << 1; // GET implies HEAD
            }
        }
        Ok(Methods(bits))
    }

    pub fn allows(self, m: &Method) -> bool {
        self.0 & Methods::bit(m) != 0
    }

    /// `GET, HEAD, POST` for an `Allow` header.
    pub fn allow_header(self) -> String {
        let mut out = String::new();
        for (i, n) in METHOD_NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !out.is_empty() {
                    out.push_str(", ");
                }
                out.push_str(n);
            }
        }
        out
    }
}

/// What the router needs to know about one route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub host: Option<HostPattern>,
    pub path: PathPattern,
    pub methods: Methods,
    pub headers: Vec<(HeaderName, Vec<u8>)>,
    /// Other methods go on to less specific routes instead of a 405.
    pub method_fallthrough: bool,
}

#[derive(Default)]
struct Node {
    literal: AHashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    star: Option<Box<Node>>,
    /// Routes whose pattern ends exactly here.
    exact: Vec<u32>,
    /// Routes whose pattern ends with `**` here.
    rest: Vec<u32>,
}

#[derive(Default)]
struct Tree {
    root: Node,
}

impl Tree {
    fn insert(&mut self, pattern: &PathPattern, id: u32) {
        let mut node = &mut self.root;
        for seg in &pattern.segments {
            node = match seg {
                Segment::Literal(s) => node.literal.entry(s.as_str().into()).or_default(),
                Segment::Param(_) => node.param.get_or_insert_with(Default::default),
                Segment::Star => node.star.get_or_insert_with(Default::default),
                Segment::Rest => {
                    node.rest.push(id);
                    return;
                }
            };
        }
        node.exact.push(id);
    }

    fn sort(&mut self, specs: &[RouteSpec]) {
        fn walk(n: &mut Node, specs: &[RouteSpec]) {
            let key = |id: &u32| {
                let s = &specs[*id as usize];
                (std::cmp::Reverse(s.headers.len()), *id)
            };
            n.exact.sort_by_key(key);
            n.rest.sort_by_key(key);
            for c in n.literal.values_mut() {
                walk(c, specs);
            }
            if let Some(c) = n.param.as_deref_mut() {
                walk(c, specs);
            }
            if let Some(c) = n.star.as_deref_mut() {
                walk(c, specs);
            }
        }
        walk(&mut self.root, specs);
    }
}

pub struct Router {
    specs: Vec<RouteSpec>,
    exact_hosts: AHashMap<Box<str>, Tree>,
    wildcard_hosts: AHashMap<Box<str>, Tree>,
    any_host: Tree,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(usize),
    /// The path matched but no route accepts the method: the methods that would.
    MethodNotAllowed(Methods),
    NotFound,
}

struct Search<'a> {
    specs: &'a [RouteSpec],
    method: &'a Method,
    headers: &'a HeaderMap,
    allowed: u16,
    /// A matching route refused the method and does not let it fall through: stop.
    stop: bool,
}

impl Search<'_> {
    fn pick(&mut self, ids: &[u32]) -> Option<usize> {
        if self.stop {
            return None;
        }
        for id in ids {
            let spec = &self.specs[*id as usize];
            let headers_ok = spec.headers.iter().all(|(n, v)| {
                self.headers
                    .get(n)
                    .is_some_and(|h| h.as_bytes() == v.as_slice())
            });
            if !headers_ok {
                continue;
            }
            if spec.methods.allows(self.method) {
                return Some(*id as usize);
            }
            self.allowed |= spec.methods.0;
            if !spec.method_fallthrough {
                // the rest of this node's routes may still take the method; nothing beyond
                self.stop = true;
            }
        }
        None
    }

    fn walk(&mut self, node: &Node, segs: &[&str]) -> Option<usize> {
        match segs.split_first() {
            None => {
                if let Some(id) = self.pick(&node.exact) {
                    return Some(id);
                }
            }
            Some((first, rest)) => {
                for child in [
                    node.literal.get(*first),
                    node.param.as_deref(),
                    node.star.as_deref(),
                ]
                .into_iter()
                .flatten()
                {
                    if let Some(id) = self.walk(child, rest) {
                        return Some(id);
                    }
                    if self.stop {
                        return None;
                    }
                }
            }
        }
        if node.rest.is_empty() {
            None
        } else {
            self.pick(&node.rest)
        }
    }
}

/// Split a normalised path into its non-empty segments.
pub fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

impl Router {
    pub fn new(specs: Vec<RouteSpec>) -> Router {
        let mut exact_hosts: AHashMap<Box<str>, Tree> = AHashMap::new();
        let mut wildcard_hosts: AHashMap<Box<str>, Tree> = AHashMap::new();
        let mut any_host = Tree::default();
        for (i, s) in specs.iter().enumerate() {
            let tree = match &s.host {
                None => &mut any_host,
                Some(HostPattern::Exact(h)) => exact_hosts.entry(h.as_str().into()).or_default(),
                Some(HostPattern::Wildcard(h)) => {
                    wildcard_hosts.entry(h.as_str().into()).or_default()
                }
            };
            tree.insert(&s.path, i as u32);
        }
        for t in exact_hosts.values_mut() {
            t.sort(&specs);
        }
        for t in wildcard_hosts.values_mut() {
            t.sort(&specs);
        }
        any_host.sort(&specs);
        Router {
            specs,
            exact_hosts,
            wildcard_hosts,
            any_host,
        }
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Find the route for a request. `host` is without port and lower case, `segs` are
    /// the segments of the normalised path.
    pub fn lookup(
        &self,
        host: &str,
        segs: &[&str],
        method: &Method,
        headers: &HeaderMap,
    ) -> Lookup {
        let mut search = Search {
            specs: &self.specs,
            method,
            headers,
            allowed: 0,
            stop: false,
        };
        if let Some(t) = self.exact_hosts.get(host) {
            if let Some(id) = search.walk(&t.root, segs) {
                return Lookup::Found(id);
            }
        }
        if !self.wildcard_hosts.is_empty() && !search.stop {
            // longest suffix first: for a.b.example.com try .b.example.com, .example.com, .com
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                let suffix = &rest[dot..];
                if let Some(t) = self.wildcard_hosts.get(suffix) {
                    if let Some(id) = search.walk(&t.root, segs) {
                        return Lookup::Found(id);
                    }
                    if search.stop {
                        break;
                    }
                }
                rest = &rest[dot + 1..];
            }
        }
        if !search.stop {
            if let Some(id) = search.walk(&self.any_host.root, segs) {
                return Lookup::Found(id);
            }
        }
        if search.allowed != 0 {
            Lookup::MethodNotAllowed(Methods(search.allowed))
        } else {
            Lookup::NotFound
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: Option<&str>, path: &str, methods: Option<&[&str]>) -> RouteSpec {
        RouteSpec {
            host: host.map(|h| HostPattern::parse(h).unwrap()),
            path: PathPattern::parse(path).unwrap(),
            methods: methods
                .map(|m| {
                    Methods::parse(&m.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
                })
                .unwrap_or(Methods::ANY),
            headers: vec![],
            method_fallthrough: false,
        }
    }

    fn find(r: &Router, host: &str, path: &str, m: Method) -> Lookup {
        r.lookup(host, &segments(path), &m, &HeaderMap::new())
    }

    #[test]
    fn specificity() {
        let r = Router::new(vec![
            spec(None, "/api/**", None),                        // 0
            spec(None, "/api/users/*", None),                   // 1
            spec(None, "/api/users/:id", None),                 // 2
            spec(None, "/api/users/me", None),                  // 3
            spec(None, "/api/users/**", None),                  // 4
            spec(Some("*.example.com"), "/api/users/me", None), // 5
            spec(Some("api.example.com"), "/api/**", None),     // 6
        ]);
        assert_eq!(
            find(&r, "x", "/api/users/me", Method::GET),
            Lookup::Found(3)
        );
        assert_eq!(find(&r, "x", "/api/users/7", Method::GET), Lookup::Found(2));
        assert_eq!(
            find(&r, "x", "/api/users/7/posts", Method::GET),
            Lookup::Found(4)
        );
        assert_eq!(find(&r, "x", "/api/other", Method::GET), Lookup::Found(0));
        assert_eq!(find(&r, "x", "/api", Method::GET), Lookup::Found(0));
        assert_eq!(find(&r, "x", "/nope", Method::GET), Lookup::NotFound);
        assert_eq!(
            find(&r, "a.example.com", "/api/users/me", Method::GET),
            Lookup::Found(5)
        );
        assert_eq!(
            find(&r, "api.example.com", "/api/users/me", Method::GET),
            Lookup::Found(6)
        );
        assert_eq!(
            find(&r, "example.com", "/api/users/me", Method::GET),
            Lookup::Found(3)
        );
    }

    /// A host's route that refuses the method (without `method_fallthrough`) ends the
    /// search: neither a wildcard-host route nor an any-host route takes the request.
    #[test]
    fn a_refused_method_on_the_exact_host_stops_before_wildcard_and_any_host() {
        let r = Router::new(vec![
            spec(Some("api.example.com"), "/x", Some(&["GET"])), // 0
            spec(Some("*.example.com"), "/x", None),             // 1
            spec(None, "/x", None),                              // 2
        ]);
        assert_eq!(
            find(&r, "api.example.com", "/x", Method::POST),
            Lookup::MethodNotAllowed(Methods::parse(&["GET".to_string()]).unwrap())
        );
        assert_eq!(
            find(&r, "api.example.com", "/x", Method::GET),
            Lookup::Found(0)
        );
        assert_eq!(
            find(&r, "b.example.com", "/x", Method::POST),
            Lookup::Found(1)
        );
        assert_eq!(find(&r, "other.test", "/x", Method::POST), Lookup::Found(2));
    }

    #[test]
    fn each_method_a_list_names_is_the_one_it_lets_through() {
        for name in METHOD_NAMES {
            let m = Method::from_bytes(name.as_bytes()).unwrap();
            let only = Methods::parse(&[name.to_string()]).unwrap();
            assert!(only.allows(&m), "{name}");
            for other in METHOD_NAMES {
                let o = Method::from_bytes(other.as_bytes()).unwrap();
                // GET implies HEAD, nothing else implies anything
                let want = other == name || (name == "GET" && other == "HEAD");
                assert_eq!(only.allows(&o), want, "{name} lets {other} through");
            }
            assert!(!only.allows(&Method::from_bytes(b"M-SEARCH").unwrap()));
        }
        let any = Methods::ANY;
        assert!(any.allows(&Method::from_bytes(b"M-SEARCH").unwrap()));
        assert!(METHOD_NAMES
            .iter()
            .all(|n| any.allows(&Method::from_bytes(n.as_bytes()).unwrap())));
    }

    #[test]
    fn len_counts_the_routes() {
        let r = Router::new(vec![spec(None, "/a", None), spec(None, "/b", None)]);
        assert_eq!((r.len(), r.is_empty()), (2, false));
        let none = Router::new(vec![]);
        assert_eq!((none.len(), none.is_empty()), (0, true));
    }

    #[test]
    fn methods_and_405() {
        let r = Router::new(vec![
            spec(None, "/items/:id", Some(&["GET"])),
            spec(None, "/items/:id", Some(&["DELETE"])),
            spec(None, "/other", Some(&["POST"])),
        ]);
        assert_eq!(find(&r, "x", "/items/1", Method::DELETE), Lookup::Found(1));
        assert_eq!(find(&r, "x", "/items/1", Method::HEAD), Lookup::Found(0));
        match find(&r, "x", "/items/1", Method::PUT) {
            Lookup::MethodNotAllowed(m) => assert_eq!(m.allow_header(), "GET, HEAD, DELETE"),
            other => panic!("{other:?}"),
        }
        // extension methods: forwarded by routes without a list, 405 where a list applies
        let m_search = Method::from_bytes(b"M-SEARCH").unwrap();
        assert!(matches!(
            find(&r, "x", "/items/1", m_search.clone()),
            Lookup::MethodNotAllowed(_)
        ));
        let any = Router::new(vec![spec(None, "/items/:id", None)]);
        assert_eq!(find(&any, "x", "/items/1", m_search), Lookup::Found(0));
    }

    #[test]
    fn the_most_specific_path_decides_the_method() {
        let ro = spec(None, "/app/ro/**", Some(&["GET"]));
        let host_ro = spec(Some("admin.test"), "/vh/**", Some(&["GET"]));
        let r = Router::new(vec![
            ro.clone(),
            spec(None, "/app/**", None),
            host_ro.clone(),
            spec(None, "/vh/**", None),
        ]);
        match find(&r, "x", "/app/ro/x", Method::DELETE) {
            Lookup::MethodNotAllowed(m) => assert_eq!(m.allow_header(), "GET, HEAD"),
            other => panic!("{other:?}"),
        }
        assert_eq!(find(&r, "x", "/app/rw", Method::DELETE), Lookup::Found(1));
        assert!(matches!(
            find(&r, "admin.test", "/vh/x", Method::POST),
            Lookup::MethodNotAllowed(_)
        ));
        assert_eq!(find(&r, "other", "/vh/x", Method::POST), Lookup::Found(3));
        // opt-in: other methods go on to the less specific route
        let mut ro_ft = ro;
        ro_ft.method_fallthrough = true;
        let mut host_ft = host_ro;
        host_ft.method_fallthrough = true;
        let r = Router::new(vec![
            ro_ft,
            spec(None, "/app/**", None),
            host_ft,
            spec(None, "/vh/**", None),
        ]);
        assert_eq!(find(&r, "x", "/app/ro/x", Method::DELETE), Lookup::Found(1));
        assert_eq!(
            find(&r, "admin.test", "/vh/x", Method::POST),
            Lookup::Found(3)
        );
    }

    #[test]
    fn header_conditions() {
        let mut canary = spec(None, "/app/**", None);
        canary.headers = vec![(HeaderName::from_static("x-canary"), b"1".to_vec())];
        let r = Router::new(vec![spec(None, "/app/**", None), canary]);
        let mut h = HeaderMap::new();
        assert_eq!(r.lookup("x", &["app"], &Method::GET, &h), Lookup::Found(0));
        h.insert("x-canary", "1".parse().unwrap());
        assert_eq!(r.lookup("x", &["app"], &Method::GET, &h), Lookup::Found(1));
    }
}
