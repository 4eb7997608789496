//! The compiled, immutable runtime view of one config generation. A reload builds a new
//! snapshot off the request path and swaps it in; requests keep the one they started with.

use crate::config::{Config, HeaderOps, Problems, Source};
use crate::routing::{HostPattern, Methods, PathPattern, Rewrite, RouteSpec, Router, Segment};
use crate::upstream::Upstream;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

pub struct Snapshot {
    pub generation: u64,
    pub auth: crate::auth::Auth,
    pub limits: crate::ratelimit::RateLimits,
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub trusted_proxies: Vec<IpNet>,
    pub edge_limits: crate::edge::Limits,
    pub server_ip: Option<crate::edge::IpRules>,
    /// The TLS listener's certificates (`server.tls`), loaded from their files.
    pub tls: Option<Arc<crate::tls::CertSet>>,
    /// `server.paths.escaped_slashes`.
    pub escaped_slashes: crate::routing::path::EscapedSlashes,
    /// `server.headers` (and the API-key header, which may appear only once).
    pub header_policy: crate::edge::headers::HeaderPolicy,
    /// What this config changes that takes effect only on a restart or upgrade.
    pub warnings: Vec<String>,
    /// The config file's text as loaded (for `GET /admin/config`, redacted there).
    pub config_text: Arc<str>,
    pub config: Config,
}

pub enum Target {
    Single(Arc<Upstream>),
    /// Weighted split: (upstream, cumulative weight), total.
    Split(Vec<(Arc<Upstream>, u32)>, u32),
}

impl Target {
    pub fn upstream_names(&self) -> Vec<&str> {
        match self {
            Target::Single(u) => vec![&u.name],
            Target::Split(list, _) => list.iter().map(|(u, _)| &*u.name).collect(),
        }
    }

    /// Pick the upstream for one request (`roll` is uniform in 0..u32::MAX).
    pub fn pick(&self, roll: u32) -> &Arc<Upstream> {
        match self {
            Target::Single(u) => u,
            Target::Split(list, total) => {
                let r = roll % (*total).max(1);
                for (u, cum) in list {
                    if r < *cum {
                        return u;
                    }
                }
                // unreachable with a positive total; the last entry is the safe answer
                &list[list.len() - 1].0
            }
        }
    }
}

#[derive(Default)]
pub struct CompiledHeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl CompiledHeaderOps {
    /// Remove, then set, then add (a route's `request_headers` / `response_headers`).
    pub fn apply(&self, h: &mut impl crate::hdr::Headers) -> pingora_error::Result<()> {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n, v)?;
        }
        for (n, v) in &self.add {
            h.append(n, v)?;
        }
        Ok(())
    }
}

pub struct Route {
    pub name: Arc<str>,
    /// Unique among the routes (the name if one was given, else the whole match): the
    /// route's namespace in the cache, so two routes never share an entry.
    pub cache_id: Arc<str>,
    /// Query parameters whose values the access log hides (`*`: all).
    pub log_redact_query: Vec<String>,
    pub pattern: PathPattern,
    pub target: Target,
    pub strip_prefix: Option<String>,
    pub rewrite: Option<Rewrite>,
    pub request_headers: CompiledHeaderOps,
    pub response_headers: CompiledHeaderOps,
    pub idempotent: bool,
    pub preserve_host: bool,
    pub auth: Option<crate::auth::RoutePolicy>,
    /// Indexes into `snapshot.limits.policies`.
    pub rate_limit: Vec<usize>,
    pub metrics: crate::observe::metrics::RouteMetrics,
    pub cache: Option<Arc<crate::cache::RouteCache>>,
    pub edge: crate::edge::RouteEdge,
}

impl Snapshot {
    pub fn is_trusted_proxy(&self, ip: &IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }
}

fn compile_header_ops(ops: &HeaderOps, path: &str, p: &mut Problems) -> CompiledHeaderOps {
    let mut out = CompiledHeaderOps::default();
    let mut pair = |k: &str, v: &str, kind: &str| -> Option<(HeaderName, HeaderValue)> {
        let name = match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                p.push(
                    format!("{path}.{kind}.{k}"),
                    format!("`{k}` is not a valid header name"),
                );
                return None;
            }
        };
        match HeaderValue::from_str(v) {
            Ok(val) => Some((name, val)),
            Err(_) => {
                p.push(
                    format!("{path}.{kind}.{k}"),
                    "the value is not a valid header value",
                );
                None
            }
        }
    };
    for (k, v) in &ops.set {
        if let Some(x) = pair(k, v, "set") {
            out.set.push(x);
        }
    }
    for (k, v) in &ops.add {
        if let Some(x) = pair(k, v, "add") {
            out.add.push(x);
        }
    }
    for (i, k) in ops.remove.iter().enumerate() {
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => out.remove.push(n),
            Err(_) => p.push(
                format!("{path}.remove[{i}]"),
                format!("`{k}` is not a valid header name"),
            ),
        }
    }
    out
}

/// Build a snapshot from a parsed config. Upstreams whose config did not change are
/// carried over from `prev` with their state (health, registrations, counters).
pub fn build(
    src: &Source,
    prev: Option<&Snapshot>,
    generation: u64,
) -> Result<Snapshot, Vec<crate::config::ConfigError>> {
    let cfg = &src.config;
    let mut p = Problems::new(src);

    // server
    if cfg.server.listen.is_empty() {
        p.push("server.listen", "at least one listen address is needed");
    }
    for (i, l) in cfg.server.listen.iter().enumerate() {
        if l.parse::<std::net::SocketAddr>().is_err() {
            p.push(
                format!("server.listen[{i}]"),
                format!("`{l}` is not an `ip:port` address"),
            );
        }
    }
    if let Some(admin) = &cfg.server.admin {
        if admin.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(
                "server.admin.listen",
                format!("`{}` is not an `ip:port` address", admin.listen),
            );
        }
        for (key, t) in [
            ("server.admin.token_sha256", &admin.token_sha256),
            (
                "server.admin.metrics_token_sha256",
                &admin.metrics_token_sha256,
            ),
        ] {
            if let Some(t) = t {
                if t.len() != 64 || hex::decode(t).is_err() {
                    p.push(key, "must be 64 hex characters (a SHA-256 digest)");
                }
            }
        }
    }
    let trusted_proxies = crate::net::parse_nets(
        &cfg.server.trusted_proxies,
        "server.trusted_proxies",
        &mut p,
    );
    let edge_limits = crate::edge::Limits::build(&cfg.server.limits, &mut p);
    check_tracing(cfg, &mut p);
    check_readiness(cfg, &mut p);
    let server_ip = cfg
        .server
        .ip
        .as_ref()
        .map(|c| crate::edge::IpRules::build(c, "server.ip", &mut p));
    let server_cors = cfg
        .server
        .cors
        .as_ref()
        .map(|c| Arc::new(crate::edge::Cors::build(c, "server.cors", &mut p)));
    let server_security = Arc::new(crate::edge::Security::build(
        &cfg.server.security_headers,
        "server.security_headers",
        &mut p,
    ));
    // certificates are read from disk on every build: a reload picks up renewed files
    let tls = match &cfg.server.tls {
        Some(t) => match crate::tls::load(t) {
            Ok(set) => Some(Arc::new(set)),
            Err(errs) => {
                for (k, m) in errs {
                    p.push(format!("server.tls.{k}"), m);
                }
                None
            }
        },
        None => None,
    };

    // upstreams
    let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
    for (name, ucfg) in &cfg.upstreams {
        let base = format!("upstreams.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            p.push(
                &base,
                format!("upstream name `{name}` may only use letters, digits, `-`, `_` and `.`"),
            );
            continue;
        }
        if let Some(old) = prev.and_then(|s| s.upstreams.get(name)) {
            if old.config == *ucfg && !old.ca_file_changed() {
                upstreams.insert(name.clone(), old.clone());
                continue;
            }
        }
        match Upstream::build(name, ucfg) {
            Ok(u) => {
                if let Some(old) = prev.and_then(|s| s.upstreams.get(name)) {
                    u.membership.adopt(&old.membership);
                }
                upstreams.insert(name.clone(), Arc::new(u));
            }
            Err(errs) => {
                for (k, m) in errs {
                    p.push(format!("{base}.{k}"), m);
                }
            }
        }
    }

    // cache
    let cache = &cfg.cache;
    if cache.max_size.0 < 64 * 1024 {
        p.push("cache.max_size", "must be at least 64KiB");
    }
    if let Some(m) = cache.max_object_size {
        if m.0 == 0 || m.0 > cache.max_size.0 {
            p.push(
                "cache.max_object_size",
                "must be more than 0 and at most `cache.max_size`",
            );
        }
    }
    if cache.lock_timeout.get().is_zero() {
        p.push("cache.lock_timeout", "must be greater than 0");
    }

    let auth = crate::auth::Auth::build(&cfg.auth, prev.map(|s| &s.auth), &mut p);
    let limits =
        crate::ratelimit::RateLimits::build(&cfg.rate_limits, prev.map(|s| &s.limits), &mut p);

    // routes
    let mut specs = Vec::with_capacity(cfg.routes.len());
    let mut routes = Vec::with_capacity(cfg.routes.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let header_policy = crate::edge::headers::HeaderPolicy::build(
        &cfg.server.headers,
        auth.api_keys.as_ref().map(|k| k.header.clone()),
        &mut p,
    );
    let mut seen: HashMap<String, Vec<(usize, Methods)>> = HashMap::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        // built without `fmt`: reloads of 10,000 routes spend their time here
        let base = ["routes[", itoa::Buffer::new().format(i), "]"].concat();
        let before = p.errors.len();
        let host = match r
            .matcher
            .host
            .as_deref()
            .map(HostPattern::parse)
            .transpose()
        {
            Ok(h) => h,
            Err(e) => {
                p.push(format!("{base}.match.host"), e);
                None
            }
        };
        let pattern = match PathPattern::parse(&r.matcher.path) {
            Ok(pt) => Some(pt),
            Err(e) => {
                p.push(format!("{base}.match.path"), e);
                None
            }
        };
        let methods = match &r.matcher.methods {
            None => Methods::ANY,
            Some(list) if list.is_empty() => {
                p.push(
                    format!("{base}.match.methods"),
                    "an empty method list can never match",
                );
                Methods::ANY
            }
            Some(list) => Methods::parse(list).unwrap_or_else(|e| {
                p.push(format!("{base}.match.methods"), e);
                Methods::ANY
            }),
        };
        let mut headers = Vec::new();
        for (k, v) in &r.matcher.headers {
            match HeaderName::from_bytes(k.as_bytes()) {
                Ok(n) => headers.push((n, v.as_bytes().to_vec())),
                Err(_) => p.push(
                    format!("{base}.match.headers.{k}"),
                    format!("`{k}` is not a valid header name"),
                ),
            }
        }
        let name = r.name.clone().unwrap_or_else(|| {
            [
                r.matcher.host.as_deref().unwrap_or(""),
                r.matcher.path.as_str(),
            ]
            .concat()
        });
        if r.name.is_some() {
            if let Some(j) = names.insert(name.clone(), i) {
                p.push(
                    format!("{base}.name"),
                    format!("route name `{name}` is also used by routes[{j}]"),
                );
            }
        }

        // target
        let resolve = |n: &str, path: String, p: &mut Problems| match upstreams.get(n) {
            Some(u) => Some(u.clone()),
            None => {
                if !cfg.upstreams.contains_key(n) {
                    let hint = crate::config::suggest(n, cfg.upstreams.keys().map(String::as_str));
                    p.push(path, format!("unknown upstream `{n}`{hint}"));
                }
                None
            }
        };
        let target = match (&r.upstream, &r.split) {
            (Some(u), None) => resolve(u, format!("{base}.upstream"), &mut p).map(Target::Single),
            (None, Some(split)) => {
                let mut list = Vec::new();
                let mut total = 0u32;
                let mut resolved = 0;
                for (k, s) in split.iter().enumerate() {
                    if let Some(u) =
                        resolve(&s.upstream, format!("{base}.split[{k}].upstream"), &mut p)
                    {
                        resolved += 1;
                        total = total.saturating_add(s.weight);
                        if s.weight > 0 {
                            list.push((u, total));
                        }
                    }
                }
                if split.is_empty() || (total == 0 && resolved == split.len()) {
                    p.push(
                        format!("{base}.split"),
                        "the total weight of the split is 0",
                    );
                    None
                } else if list.is_empty() {
                    None
                } else {
                    Some(Target::Split(list, total))
                }
            }
            (Some(_), Some(_)) => {
                p.push(&base, "give either `upstream` or `split`, not both");
                None
            }
            (None, None) => {
                p.push(&base, "a route needs `upstream` or `split`");
                None
            }
        };

        let mut rewrite = None;
        let mut cache_id = match &r.name {
            Some(n) => ["name\0", n.as_str()].concat(),
            None => String::new(),
        };
        if let Some(pt) = &pattern {
            if let Some(sp) = &r.strip_prefix {
                if r.rewrite.is_some() {
                    p.push(
                        format!("{base}.strip_prefix"),
                        "give either `strip_prefix` or `rewrite`, not both",
                    );
                } else if !sp.starts_with('/') {
                    p.push(format!("{base}.strip_prefix"), "must start with `/`");
                } else {
                    // the prefix must be made of the pattern's leading literal segments
                    let lits: Vec<&str> = pt
                        .segments
                        .iter()
                        .map_while(|s| match s {
                            Segment::Literal(l) => Some(l.as_str()),
                            _ => None,
                        })
                        .collect();
                    let want: Vec<&str> = sp.split('/').filter(|s| !s.is_empty()).collect();
                    if want.len() > lits.len() || want.iter().zip(&lits).any(|(a, b)| a != b) {
                        p.push(
                            format!("{base}.strip_prefix"),
                            format!(
                                "`{sp}` is not a literal prefix of `{}` and would never apply",
                                r.matcher.path
                            ),
                        );
                    }
                }
            }
            if let Some(t) = &r.rewrite {
                match Rewrite::parse(t, pt) {
                    Ok(rw) => rewrite = Some(rw),
                    Err(e) => p.push(format!("{base}.rewrite"), e),
                }
            }
            // a route identical to an earlier one (same host, pattern, headers, methods) can never match
            // host, path shape and header matches, separated by bytes no header holds
            let mut key = String::with_capacity(r.matcher.path.len() + 16);
            if let Some(h) = &r.matcher.host {
                key.push_str(&h.to_ascii_lowercase());
            }
            for seg in &pt.segments {
                key.push('/');
                key.push_str(match seg {
                    Segment::Literal(l) => l.as_str(),
                    Segment::Param(_) => ":",
                    Segment::Star => "*",
                    Segment::Rest => "**",
                });
            }
            for (k, v) in &r.matcher.headers {
                key.push('\n');
                key.push_str(&k.to_ascii_lowercase());
                key.push('\0');
                key.push_str(v);
            }
            if r.name.is_none() {
                // the match is unique (an identical one is refused below), so is this
                cache_id = [
                    "match\0",
                    key.as_str(),
                    "\0",
                    itoa::Buffer::new().format(methods.0),
                ]
                .concat();
            }
            let entry = seen.entry(key).or_default();
            for (j, m) in entry.iter() {
                if m.0 & methods.0 == methods.0 {
                    p.push(
                        format!("{base}.match"),
                        format!("routes[{j}] has the same host, path, headers and methods, so this route can never match"),
                    );
                    break;
                }
            }
            entry.push((i, methods));
        }

        let edge = crate::edge::RouteEdge {
            ip: r
                .ip
                .as_ref()
                .map(|c| crate::edge::IpRules::build(c, &format!("{base}.ip"), &mut p)),
            cors: match &r.cors {
                Some(c) => Some(Arc::new(crate::edge::Cors::build(
                    c,
                    &format!("{base}.cors"),
                    &mut p,
                ))),
                None => server_cors.clone(),
            },
            security: match &r.security_headers {
                Some(c) => Arc::new(crate::edge::Security::build(
                    c,
                    &format!("{base}.security_headers"),
                    &mut p,
                )),
                None => server_security.clone(),
            },
            compression: r.compression.as_ref().map(|c| {
                crate::edge::Compression::build(c, &format!("{base}.compression"), &mut p)
            }),
            max_body_bytes: r
                .max_body_bytes
                .map(|b| b.0)
                .unwrap_or(cfg.server.limits.max_body_bytes.0),
        };
        let rate_limit =
            limits.route_policies(&r.rate_limit, &format!("{base}.rate_limit"), &mut p);
        let route_auth = r
            .auth
            .as_ref()
            .and_then(|a| auth.route_policy(a, &format!("{base}.auth"), &mut p));
        let request_headers = compile_header_ops(
            &r.request_headers,
            &format!("{base}.request_headers"),
            &mut p,
        );
        let response_headers = compile_header_ops(
            &r.response_headers,
            &format!("{base}.response_headers"),
            &mut p,
        );
        let route_cache = r.cache.as_ref().and_then(|c| {
            crate::cache::RouteCache::build(c, r.auth.is_some(), &format!("{base}.cache"), &mut p)
                .map(Arc::new)
        });

        if p.errors.len() != before {
            continue;
        }
        let (Some(pattern), Some(target)) = (pattern, target) else {
            continue;
        };
        let metrics = crate::observe::metrics::RouteMetrics::new(&name, &target.upstream_names());
        specs.push(RouteSpec {
            host,
            path: pattern.clone(),
            methods,
            headers,
            method_fallthrough: r.method_fallthrough,
        });
        routes.push(Route {
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
            auth: route_auth,
            rate_limit,
            metrics,
            cache: route_cache,
            edge,
        });
    }

    if !p.is_empty() {
        return Err(p.errors);
    }
    let mut warnings = match prev {
        Some(prev) => restart_warnings(&prev.config, cfg),
        None => Vec::new(),
    };
    if prev.is_some() && crate::cache::needs_restart(&cfg.cache) {
        warnings.push(
            "cache.max_size, cache.max_object_size and the cache lock's age limit are read at \
             start-up: the running cache keeps them until the next restart or upgrade"
                .to_string(),
        );
    }
    for w in &warnings {
        log::warn!("{w}");
    }
    Ok(Snapshot {
        generation,
        auth,
        limits,
        router: Router::new(specs),
        routes,
        upstreams,
        trusted_proxies,
        edge_limits,
        server_ip,
        tls,
        escaped_slashes: match cfg.server.paths.escaped_slashes {
            crate::config::EscapedSlashesConfig::Reject => {
                crate::routing::path::EscapedSlashes::Reject
            }
            crate::config::EscapedSlashesConfig::Keep => crate::routing::path::EscapedSlashes::Keep,
            crate::config::EscapedSlashesConfig::Decode => {
                crate::routing::path::EscapedSlashes::Decode
            }
        },
        header_policy,
        warnings,
        config_text: src.text().into(),
        config: cfg.clone(),
    })
}

/// `server.admin.readiness.upstreams` names upstreams that exist.
fn check_readiness(cfg: &Config, p: &mut Problems) {
    if let Some(crate::config::ReadinessUpstreams::List(list)) =
        cfg.server.admin.as_ref().map(|a| &a.readiness.upstreams)
    {
        for (i, n) in list.iter().enumerate() {
            if !cfg.upstreams.contains_key(n) {
                let hint = crate::config::suggest(n, cfg.upstreams.keys().map(String::as_str));
                p.push(
                    format!("server.admin.readiness.upstreams[{i}]"),
                    format!("unknown upstream `{n}`{hint}"),
                );
            }
        }
    }
}

/// `tracing`: a usable endpoint, a ratio, header names.
fn check_tracing(cfg: &Config, p: &mut Problems) {
    if let Some(t) = &cfg.tracing {
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            p.push("tracing.sample_ratio", "must be between 0 and 1");
        }
        match t.otlp_endpoint.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {}
            Ok(u) if u.scheme_str() == Some("https") => p.push(
                "tracing.otlp_endpoint",
                "https collectors are not supported yet: use an http:// endpoint (a local \
                 collector or sidecar)",
            ),
            _ => p.push(
                "tracing.otlp_endpoint",
                format!("`{}` is not an http:// URL", t.otlp_endpoint),
            ),
        }
        if t.queue == 0 {
            p.push("tracing.queue", "must be at least 1");
        }
        for k in t.headers.keys() {
            if HeaderName::from_bytes(k.as_bytes()).is_err() {
                p.push(format!("tracing.headers.{k}"), "not a valid header name");
            }
        }
    }
}

/// Listeners are bound once: say so when a reload changes them.
fn restart_warnings(old: &Config, new: &Config) -> Vec<String> {
    let (o, n) = (&old.server, &new.server);
    let mut w: Vec<&str> = Vec::new();
    if o.listen != n.listen {
        w.push(
            "server.listen changed: listeners are bound at start-up; restart or upgrade to apply",
        );
    }
    if o.h2c != n.h2c {
        w.push("server.h2c changed: it applies after a restart or upgrade");
    }
    if o.read_buffer != n.read_buffer {
        w.push("server.read_buffer changed: it applies after a restart or upgrade");
    }
    if o.admin.as_ref().map(|a| &a.listen) != n.admin.as_ref().map(|a| &a.listen) {
        w.push("server.admin.listen changed: the admin listener moves after a restart or upgrade");
    }
    match (&o.tls, &n.tls) {
        (None, Some(_)) => {
            w.push("server.tls added: the TLS listener starts with the next restart or upgrade")
        }
        (Some(_), None) => w.push(
            "server.tls removed: the TLS listener keeps serving its last certificates until \
             the next restart or upgrade",
        ),
        (Some(a), Some(b)) if a.listen != b.listen => w.push(
            "server.tls.listen changed: it applies after a restart or upgrade (certificates \
             are already reloaded)",
        ),
        _ => {}
    }
    w.into_iter().map(str::to_string).collect()
}
