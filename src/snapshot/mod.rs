//! The compiled, immutable runtime view of one config generation. A reload builds a new
//! snapshot off the request path and swaps it in; requests keep the one they started with.
//!
//! [`build`] compiles in named steps, each in its own module and each reporting problems
//! with key paths relative to its block: `server` (listeners, trusted proxies, server-wide
//! edge rules, certificates), `upstreams` (pools, carried over when unchanged), auth and
//! rate-limit policies (in their own modules), then `route` for each route (match, target,
//! path operations, edge rules, what it borrows from auth, limits and the cache) with
//! `duplicates` refusing routes that can never match. Nothing is swapped in unless every
//! step succeeded.

mod duplicates;
mod route;
mod server;
mod upstreams;

use crate::config::{Config, Problems, Source};
use crate::routing::{PathPattern, Rewrite, Router};
use crate::upstream::Upstream;
use ipnet::IpNet;
use std::collections::BTreeMap;
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
    pub config: Arc<Config>,
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
    /// `request_headers` / `response_headers`: header rules, as the `header-rules` plugin
    /// has them.
    pub request_headers: crate::plugin::header_rules::HeaderRules,
    pub response_headers: crate::plugin::header_rules::HeaderRules,
    pub idempotent: bool,
    pub preserve_host: bool,
    pub auth: Option<crate::auth::RoutePolicy>,
    /// Indexes into `snapshot.limits.policies`.
    pub rate_limit: Vec<usize>,
    pub metrics: crate::observe::metrics::RouteMetrics,
    pub cache: Option<Arc<crate::cache::RouteCache>>,
    pub edge: crate::edge::RouteEdge,
    /// `plugins`, compiled, in the order they run (empty: no per-request cost).
    pub plugins: crate::plugin::Chain,
}

impl Snapshot {
    pub fn is_trusted_proxy(&self, ip: &IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }
}

/// Build a snapshot from a parsed config with the built-in plugins
/// ([`crate::plugin::builtin`]); [`build_with`] takes another registry.
pub fn build(
    src: &Source,
    prev: Option<&Snapshot>,
    generation: u64,
) -> Result<Snapshot, Vec<crate::config::ConfigError>> {
    build_with(src, prev, generation, &crate::plugin::builtin())
}

/// Build a snapshot from a parsed config, the routes' `plugins` from `registry`. Upstreams
/// whose config did not change are carried over from `prev` with their state (health,
/// registrations, counters).
pub fn build_with(
    src: &Source,
    prev: Option<&Snapshot>,
    generation: u64,
    registry: &crate::plugin::Registry,
) -> Result<Snapshot, Vec<crate::config::ConfigError>> {
    let cfg = &src.config;
    let mut p = Problems::new(src);
    let server = server::compile(cfg, &mut p);
    let upstreams = upstreams::compile(cfg, prev.map(|s| &s.upstreams), &mut p);
    let auth = crate::auth::Auth::build(&cfg.auth, prev.map(|s| &s.auth), &mut p);
    crate::config::cluster::check(cfg, &mut p);
    let limits = crate::ratelimit::RateLimits::build(
        &cfg.rate_limits,
        cfg.cluster.as_ref(),
        prev.map(|s| &s.limits),
        &mut p,
    );
    let header_policy = crate::edge::headers::HeaderPolicy::build(
        &cfg.server.headers,
        auth.api_keys.as_ref().map(|k| k.header.clone()),
        &mut p,
    );
    let env = route::Env {
        cfg,
        upstreams: &upstreams,
        auth: &auth,
        limits: &limits,
        server: &server,
        registry,
        config_file: &src.file,
    };
    let (specs, routes) = route::compile_all(&env, &mut p);
    if !p.is_empty() {
        return Err(p.errors);
    }
    let warnings = match prev {
        Some(prev) => server::restart_warnings(&prev.config, cfg),
        None => Vec::new(),
    };
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
        trusted_proxies: server.trusted_proxies,
        edge_limits: server.edge_limits,
        server_ip: server.ip,
        tls: server.tls,
        escaped_slashes: server.escaped_slashes,
        header_policy,
        warnings,
        config_text: src.shared_text(),
        config: src.config.clone(),
    })
}
