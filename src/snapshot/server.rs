//! The `server`, `tracing` and global `cache` blocks: listener addresses, admin tokens,
//! trusted proxies, the server-wide edge rules and certificates.

use crate::config::{Config, Problems};
use crate::edge::{Cors, IpRules, Limits, Security};
use crate::routing::path::EscapedSlashes;
use http::HeaderName;
use ipnet::IpNet;
use std::sync::Arc;

/// What the server block compiles to; routes inherit `cors` and `security` unless they
/// set their own.
pub(super) struct Server {
    pub trusted_proxies: Vec<IpNet>,
    pub edge_limits: Limits,
    pub ip: Option<IpRules>,
    pub cors: Option<Arc<Cors>>,
    pub security: Arc<Security>,
    pub tls: Option<Arc<crate::tls::CertSet>>,
    pub escaped_slashes: EscapedSlashes,
}

pub(super) fn compile(cfg: &Config, p: &mut Problems) -> Server {
    check_listeners(cfg, p);
    check_tracing(cfg, p);
    check_readiness(cfg, p);
    check_cache(cfg, p);
    let s = &cfg.server;
    Server {
        trusted_proxies: crate::net::parse_nets(&s.trusted_proxies, "server.trusted_proxies", p),
        edge_limits: Limits::build(&s.limits, p),
        ip: s.ip.as_ref().map(|c| IpRules::build(c, "server.ip", p)),
        cors: s
            .cors
            .as_ref()
            .map(|c| Arc::new(Cors::build(c, "server.cors", p))),
        security: Arc::new(Security::build(
            &s.security_headers,
            "server.security_headers",
            p,
        )),
        tls: load_tls(cfg, p),
        escaped_slashes: match s.paths.escaped_slashes {
            crate::config::EscapedSlashesConfig::Reject => EscapedSlashes::Reject,
            crate::config::EscapedSlashesConfig::Keep => EscapedSlashes::Keep,
            crate::config::EscapedSlashesConfig::Decode => EscapedSlashes::Decode,
        },
    }
}

/// `server.listen`, `server.admin.listen` and the admin token digests.
fn check_listeners(cfg: &Config, p: &mut Problems) {
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
    let Some(admin) = &cfg.server.admin else {
        return;
    };
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

/// Certificates are read from disk on every build: a reload picks up renewed files.
fn load_tls(cfg: &Config, p: &mut Problems) -> Option<Arc<crate::tls::CertSet>> {
    let t = cfg.server.tls.as_ref()?;
    p.within("server.tls", |p| crate::tls::load(t, p))
        .map(Arc::new)
}

/// The global `cache` block's bounds.
fn check_cache(cfg: &Config, p: &mut Problems) {
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
    let Some(t) = &cfg.tracing else {
        return;
    };
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

/// Listeners are bound once: say so when a reload changes them, and when it changes the
/// cache's start-up settings.
pub(super) fn restart_warnings(old: &Config, new: &Config) -> Vec<String> {
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
    if crate::cache::needs_restart(&new.cache) {
        w.push(
            "cache.max_size, cache.max_object_size and the cache lock's age limit are read at \
             start-up: the running cache keeps them until the next restart or upgrade",
        );
    }
    w.into_iter().map(str::to_string).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<(String, Option<usize>)> {
        let src = crate::config::parse_str("t.yaml", yaml).unwrap();
        let mut p = Problems::new(&src);
        compile(&src.config, &mut p);
        p.errors.into_iter().map(|e| (e.path, e.line)).collect()
    }

    #[test]
    fn listeners_tokens_and_nets_are_checked_with_lines() {
        let got = errors(
            "server:\n  listen: [\"nowhere\"]\n  trusted_proxies: [\"10.0.0.0/8\", \"x\"]\n  \
             admin: { listen: \"127.0.0.1:9\", token_sha256: \"abc\" }\n",
        );
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"server.listen[0]"), "{got:?}");
        assert!(paths.contains(&"server.trusted_proxies[1]"), "{got:?}");
        assert!(paths.contains(&"server.admin.token_sha256"), "{got:?}");
        let line = |k: &str| got.iter().find(|(p, _)| p == k).and_then(|(_, l)| *l);
        assert_eq!(line("server.trusted_proxies[1]"), Some(3));
        assert_eq!(line("server.admin.token_sha256"), Some(4));
    }

    #[test]
    fn a_good_server_block_compiles() {
        let text = "server:\n  listen: [\"127.0.0.1:8080\"]\n  trusted_proxies: [\"10.1.2.3/8\"]\n";
        let src = crate::config::parse_str("t.yaml", text).unwrap();
        let mut p = Problems::new(&src);
        let s = compile(&src.config, &mut p);
        assert!(p.is_empty(), "{:?}", p.errors);
        assert_eq!(s.trusted_proxies[0].to_string(), "10.0.0.0/8");
        assert!(s.tls.is_none() && s.cors.is_none());
    }

    #[test]
    fn tracing_and_cache_bounds() {
        let got = errors(
            "tracing: { otlp_endpoint: \"https://c:4318\", sample_ratio: 2 }\ncache: { max_size: 1KiB }\n",
        );
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"tracing.otlp_endpoint"), "{got:?}");
        assert!(paths.contains(&"tracing.sample_ratio"), "{got:?}");
        assert!(paths.contains(&"cache.max_size"), "{got:?}");
    }

    #[test]
    fn listener_changes_warn_on_reload() {
        let a =
            crate::config::parse_str("t.yaml", "server: { listen: [\"127.0.0.1:1\"] }").unwrap();
        let b =
            crate::config::parse_str("t.yaml", "server: { listen: [\"127.0.0.1:2\"] }").unwrap();
        let w = restart_warnings(&a.config, &b.config);
        assert!(
            w.iter().any(|w| w.starts_with("server.listen changed")),
            "{w:?}"
        );
        assert!(restart_warnings(&a.config, &a.config).is_empty());
    }
}
