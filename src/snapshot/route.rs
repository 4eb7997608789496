//! One route of the `routes` list, compiled in named steps: the match, the target, the
//! path operations, the edge rules, then what it borrows from auth, limits and the cache.
//! Every step reports keys relative to `routes[i]`.

use super::duplicates::DuplicateRoutes;
use super::server::Server;
use super::{Route, Target};
use crate::config::{Config, Problems, RouteConfig};
use crate::routing::{HostPattern, Methods, PathPattern, Rewrite, RouteSpec, Segment};
use crate::upstream::Upstream;
use http::HeaderName;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What routes may refer to, compiled before them.
pub(super) struct Env<'a> {
    pub cfg: &'a Config,
    pub upstreams: &'a BTreeMap<String, Arc<Upstream>>,
    pub auth: &'a crate::auth::Auth,
    pub limits: &'a crate::ratelimit::RateLimits,
    pub server: &'a Server,
    pub registry: &'a crate::plugin::Registry,
    /// The config file's path: `wasm` files are relative to its directory.
    pub config_file: &'a str,
}

/// Every route that compiled without a problem, with its router entry (same order).
pub(super) fn compile_all(env: &Env, p: &mut Problems) -> (Vec<RouteSpec>, Vec<Route>) {
    let n = env.cfg.routes.len();
    let (mut specs, mut routes) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut dups = DuplicateRoutes::default();
    for (i, r) in env.cfg.routes.iter().enumerate() {
        // built without `fmt`: reloads of 10,000 routes spend their time here
        let base = ["routes[", itoa::Buffer::new().format(i), "]"].concat();
        let compiled = p.within(&base, |p| {
            if let Some(name) = r.name.as_deref() {
                if let Some(j) = names.insert(name, i) {
                    p.push(
                        "name",
                        format!("route name `{name}` is also used by routes[{j}]"),
                    );
                }
            }
            compile(env, i, r, &mut dups, p)
        });
        if let Some((spec, route)) = compiled {
            specs.push(spec);
            routes.push(route);
        }
    }
    (specs, routes)
}

/// The parts of `match`.
struct Matcher {
    host: Option<HostPattern>,
    pattern: Option<PathPattern>,
    methods: Methods,
    headers: Vec<(HeaderName, Vec<u8>)>,
}

fn compile(
    env: &Env,
    i: usize,
    r: &RouteConfig,
    dups: &mut DuplicateRoutes,
    p: &mut Problems,
) -> Option<(RouteSpec, Route)> {
    let before = p.len();
    let m = compile_match(r, p);
    let target = compile_target(env, r, p);
    let mut rewrite = None;
    let mut cache_id = match &r.name {
        Some(n) => ["name\0", n.as_str()].concat(),
        None => String::new(),
    };
    if let Some(pt) = &m.pattern {
        rewrite = compile_path_ops(r, pt, p);
        let key = dups.add(
            i,
            r.matcher.host.as_deref(),
            pt,
            &r.matcher.headers,
            m.methods,
            p,
        );
        if r.name.is_none() {
            // the match is unique (an identical one is refused), so is this
            cache_id = [
                "match\0",
                key.as_str(),
                "\0",
                itoa::Buffer::new().format(m.methods.0),
            ]
            .concat();
        }
    }
    let edge = compile_edge(env, r, p);
    let rate_limit = env.limits.route_policies(&r.rate_limit, "rate_limit", p);
    let auth = r
        .auth
        .as_ref()
        .and_then(|a| env.auth.route_policy(a, "auth", p));
    use crate::plugin::header_rules;
    let request_headers = header_rules::compile(&r.request_headers, "request_headers", p);
    let response_headers = header_rules::compile(&r.response_headers, "response_headers", p);
    let name = r
        .name
        .clone()
        .unwrap_or_else(|| [r.matcher.host.as_deref().unwrap_or(""), &r.matcher.path].concat());
    let mut plugins = crate::plugin::compile(&r.plugins, env.registry, p);
    if !r.wasm.is_empty() {
        let route = crate::plugin::wasm::config::Route {
            name: &name,
            config_file: env.config_file,
            upstreams: &env.cfg.upstreams,
        };
        for f in crate::plugin::wasm::config::compile(&r.wasm, &route, p) {
            plugins.push(f);
        }
    }
    let cache = r.cache.as_ref().and_then(|c| {
        crate::cache::RouteCache::build(c, r.auth.is_some(), "cache", p).map(Arc::new)
    });
    if p.len() != before {
        return None;
    }
    let (pattern, target) = (m.pattern?, target?);
    let spec = RouteSpec {
        host: m.host,
        path: pattern.clone(),
        methods: m.methods,
        headers: m.headers,
        method_fallthrough: r.method_fallthrough,
    };
    let route = Route {
        metrics: crate::observe::metrics::RouteMetrics::new(&name, &target.upstream_names()),
        name: name.into(),
        cache_id: cache_id.into(),
        log_redact_query: r.log_redact_query.clone(),
        pattern,
        target,
        strip_prefix: r.strip_prefix.clone(),
        rewrite,
        request_headers,
        response_headers,
        idempotent: r.idempotent,
        preserve_host: r.preserve_host,
        auth,
        rate_limit,
        cache,
        edge,
        plugins,
    };
    Some((spec, route))
}

/// `match`: host, path pattern, methods and header matches.
fn compile_match(r: &RouteConfig, p: &mut Problems) -> Matcher {
    let mc = &r.matcher;
    let host = match mc.host.as_deref().map(HostPattern::parse).transpose() {
        Ok(h) => h,
        Err(e) => {
            p.push("match.host", e);
            None
        }
    };
    let pattern = PathPattern::parse(&mc.path)
        .map_err(|e| p.push("match.path", e))
        .ok();
    let methods = match &mc.methods {
        None => Methods::ANY,
        Some(list) if list.is_empty() => {
            p.push("match.methods", "an empty method list can never match");
            Methods::ANY
        }
        Some(list) => Methods::parse(list).unwrap_or_else(|e| {
            p.push("match.methods", e);
            Methods::ANY
        }),
    };
    let mut headers = Vec::new();
    for (k, v) in &mc.headers {
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => headers.push((n, v.as_bytes().to_vec())),
            Err(_) => p.push(
                ["match.headers.", k.as_str()].concat(),
                format!("`{k}` is not a valid header name"),
            ),
        }
    }
    Matcher {
        host,
        pattern,
        methods,
        headers,
    }
}

/// `upstream` or a weighted `split` over upstreams.
fn compile_target(env: &Env, r: &RouteConfig, p: &mut Problems) -> Option<Target> {
    let resolve = |n: &str, key: String, p: &mut Problems| match env.upstreams.get(n) {
        Some(u) => Some(u.clone()),
        None => {
            // an upstream that exists but failed to compile is reported where it is
            if !env.cfg.upstreams.contains_key(n) {
                let hint = crate::config::suggest(n, env.cfg.upstreams.keys().map(String::as_str));
                p.push(key, format!("unknown upstream `{n}`{hint}"));
            }
            None
        }
    };
    match (&r.upstream, &r.split) {
        (Some(u), None) => resolve(u, "upstream".into(), p).map(Target::Single),
        (None, Some(split)) => {
            let mut list = Vec::new();
            let mut total = 0u32;
            let mut resolved = 0;
            for (k, s) in split.iter().enumerate() {
                if let Some(u) = resolve(&s.upstream, format!("split[{k}].upstream"), p) {
                    resolved += 1;
                    total = total.saturating_add(s.weight);
                    if s.weight > 0 {
                        list.push((u, total));
                    }
                }
            }
            if split.is_empty() || (total == 0 && resolved == split.len()) {
                p.push("split", "the total weight of the split is 0");
                None
            } else if list.is_empty() {
                None
            } else {
                Some(Target::Split(list, total))
            }
        }
        (Some(_), Some(_)) => {
            p.push("", "give either `upstream` or `split`, not both");
            None
        }
        (None, None) => {
            p.push("", "a route needs `upstream` or `split`");
            None
        }
    }
}

/// `strip_prefix` (checked against the pattern) or `rewrite`.
fn compile_path_ops(r: &RouteConfig, pt: &PathPattern, p: &mut Problems) -> Option<Rewrite> {
    if let Some(sp) = &r.strip_prefix {
        if r.rewrite.is_some() {
            p.push(
                "strip_prefix",
                "give either `strip_prefix` or `rewrite`, not both",
            );
        } else if !sp.starts_with('/') {
            p.push("strip_prefix", "must start with `/`");
        } else if !is_literal_prefix(sp, pt) {
            p.push(
                "strip_prefix",
                format!(
                    "`{sp}` is not a literal prefix of `{}` and would never apply",
                    r.matcher.path
                ),
            );
        }
    }
    let t = r.rewrite.as_ref()?;
    Rewrite::parse(t, pt).map_err(|e| p.push("rewrite", e)).ok()
}

/// `prefix` is made of the pattern's leading literal segments.
fn is_literal_prefix(prefix: &str, pt: &PathPattern) -> bool {
    let lits = pt.segments.iter().map_while(|s| match s {
        Segment::Literal(l) => Some(l.as_str()),
        _ => None,
    });
    let want: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    let lits: Vec<&str> = lits.take(want.len() + 1).collect();
    want.len() <= lits.len() && want.iter().zip(&lits).all(|(a, b)| a == b)
}

/// `ip`, `cors`, `security_headers`, `compression`, `max_body_bytes`, falling back to the
/// server's.
fn compile_edge(env: &Env, r: &RouteConfig, p: &mut Problems) -> crate::edge::RouteEdge {
    use crate::edge::{Compression, Cors, IpRules, RouteEdge, Security};
    RouteEdge {
        ip: r.ip.as_ref().map(|c| IpRules::build(c, "ip", p)),
        cors: match &r.cors {
            Some(c) => Some(Arc::new(Cors::build(c, "cors", p))),
            None => env.server.cors.clone(),
        },
        security: match &r.security_headers {
            Some(c) => Arc::new(Security::build(c, "security_headers", p)),
            None => env.server.security.clone(),
        },
        compression: r
            .compression
            .as_ref()
            .map(|c| Compression::build(c, "compression", p)),
        max_body_bytes: r
            .max_body_bytes
            .map(|b| b.0)
            .unwrap_or(env.cfg.server.limits.max_body_bytes.0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const UP: &str = "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\n  b: { backends: [{ addr: \"127.0.0.1:2\" }] }\n";

    /// Compile `routes` (YAML list items) against upstreams `a` and `b`.
    fn compile_routes(routes: &str) -> (Vec<Route>, Vec<String>) {
        let text = format!("{UP}routes:\n{routes}");
        let src = crate::config::parse_str("t.yaml", &text).unwrap();
        let cfg = &src.config;
        let mut p = Problems::new(&src);
        let server = super::super::server::compile(cfg, &mut p);
        let upstreams = super::super::upstreams::compile(cfg, None, &mut p);
        let auth = crate::auth::Auth::build(&cfg.auth, None, &mut p);
        let limits = crate::ratelimit::RateLimits::build(&cfg.rate_limits, None, None, &mut p);
        let env = Env {
            cfg,
            upstreams: &upstreams,
            auth: &auth,
            limits: &limits,
            server: &server,
            registry: &crate::plugin::builtin(),
            config_file: &src.file,
        };
        let (_, routes) = compile_all(&env, &mut p);
        let errs = p
            .errors
            .into_iter()
            .map(|e| format!("{}@{}: {}", e.path, e.line.unwrap_or(0), e.message))
            .collect();
        (routes, errs)
    }

    #[test]
    fn a_split_accumulates_weights_and_skips_zero() {
        let (routes, errs) = compile_routes(
            "  - match: { path: /s }\n    split: [{ upstream: a, weight: 3 }, { upstream: b, weight: 0 }, { upstream: b, weight: 1 }]\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        match &routes[0].target {
            Target::Split(list, total) => {
                assert_eq!(*total, 4);
                let got: Vec<(&str, u32)> = list.iter().map(|(u, c)| (&*u.name, *c)).collect();
                assert_eq!(got, [("a", 3), ("b", 4)]);
            }
            Target::Single(_) => panic!("expected a split"),
        }
        assert_eq!(&*routes[0].target.pick(3).name, "b");
        assert_eq!(&*routes[0].target.pick(2).name, "a");
    }

    #[test]
    fn target_errors_name_the_key_and_line() {
        let (routes, errs) = compile_routes(
            "  - match: { path: /a }\n    upstream: nope\n  - match: { path: /b }\n    split: [{ upstream: a, weight: 0 }]\n  - match: { path: /c }\n",
        );
        assert!(routes.is_empty());
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("routes[0].upstream@6: unknown upstream `nope`"),
            "{errs:?}"
        );
        assert!(errs[1].starts_with("routes[1].split@"), "{errs:?}");
        assert!(errs[2].starts_with("routes[2]@"), "{errs:?}");
    }

    #[test]
    fn strip_prefix_must_be_a_literal_prefix() {
        let (_, errs) = compile_routes(
            "  - match: { path: \"/api/v1/**\" }\n    upstream: a\n    strip_prefix: /api\n  - match: { path: \"/api/:x/**\" }\n    upstream: a\n    strip_prefix: /api/v1\n  - match: { path: /p }\n    upstream: a\n    strip_prefix: /p\n    rewrite: /q\n",
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("routes[1].strip_prefix"), "{errs:?}");
        assert!(errs[1].contains("not both"), "{errs:?}");
    }

    #[test]
    fn names_are_unique_and_cache_ids_differ() {
        let (_, errs) = compile_routes(
            "  - { name: x, match: { path: /a }, upstream: a }\n  - { name: x, match: { path: /b }, upstream: a }\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("routes[1].name@"), "{errs:?}");
        let (routes, errs) = compile_routes(
            "  - { match: { path: /a, methods: [GET] }, upstream: a }\n  - { match: { path: /a, methods: [POST] }, upstream: a }\n  - { name: n, match: { path: /a, methods: [PUT] }, upstream: a }\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_ne!(routes[0].cache_id, routes[1].cache_id);
        assert_eq!(&*routes[2].cache_id, "name\0n");
        assert_eq!(&*routes[0].name, "/a");
    }

    #[test]
    fn routes_inherit_the_servers_edge_rules() {
        let (routes, errs) = compile_routes(
            "  - { match: { path: /a }, upstream: a }\n  - { match: { path: /b }, upstream: a, max_body_bytes: 1KiB, ip: { allow: [\"10.0.0.0/8\"] } }\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(routes[0].edge.max_body_bytes, 10 * 1024 * 1024);
        assert!(routes[0].edge.ip.is_none());
        assert_eq!(routes[1].edge.max_body_bytes, 1024);
        assert!(routes[1].edge.ip.is_some());
        assert!(Arc::ptr_eq(
            &routes[0].edge.security,
            &routes[1].edge.security
        ));
    }
}
