//! Checking an upstream's config block: backends and weights, the hash key, health checks,
//! the breaker, retries, timeouts and how backends are connected to. Keys are reported
//! relative to `upstreams.NAME`.

use super::discovery::AddrSpec;
use super::{PeerProfile, MAX_HASH_TOTAL_WEIGHT, MAX_WEIGHT};
use crate::config::{HealthCheckKind, LbKind, Problems, UpstreamConfig, UpstreamProtocol};
use http::HeaderName;
use pingora_load_balancing::health_check::{HttpHealthCheck, TcpHealthCheck};

/// Where the consistent-hash key comes from.
#[derive(Debug, Clone)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(HeaderName),
    Cookie(String),
}

impl HashKey {
    pub fn parse(s: &str) -> Result<HashKey, String> {
        match s {
            "ip" => Ok(HashKey::ClientIp),
            "path" => Ok(HashKey::Path),
            _ => {
                if let Some(h) = s.strip_prefix("header:") {
                    HeaderName::from_bytes(h.as_bytes())
                        .map(HashKey::Header)
                        .map_err(|_| format!("`{h}` is not a valid header name"))
                } else if let Some(c) = s.strip_prefix("cookie:") {
                    if c.is_empty() {
                        Err("cookie name is empty".into())
                    } else {
                        Ok(HashKey::Cookie(c.to_string()))
                    }
                } else {
                    Err(format!(
                        "hash_key `{s}` must be `ip`, `path`, `header:NAME` or `cookie:NAME`"
                    ))
                }
            }
        }
    }
}

/// What a checked upstream block yields for the pool to be built from.
pub(super) struct Checked {
    /// Configured addresses (static and DNS) with their weights.
    pub configured: Vec<(AddrSpec, u32)>,
    pub hash_key: HashKey,
    pub profile: PeerProfile,
}

/// Check every part of `cfg`; `None` when any problem was reported.
pub(super) fn check(name: &str, cfg: &UpstreamConfig, p: &mut Problems) -> Option<Checked> {
    let before = p.len();
    let configured = backends(name, cfg, p);
    let hash_key = hash_key(cfg, p);
    health_check_block(cfg, p);
    breaker(cfg, p);
    retry_and_timeouts(cfg, p);
    let profile = peer_profile(name, cfg, p);
    (p.len() == before).then_some(Checked {
        configured,
        hash_key,
        profile,
    })
}

/// `backends` and `discovery`: addresses and weights.
fn backends(name: &str, cfg: &UpstreamConfig, p: &mut Problems) -> Vec<(AddrSpec, u32)> {
    let mut configured = Vec::new();
    for (i, b) in cfg.backends.iter().enumerate() {
        if b.weight > MAX_WEIGHT {
            p.push(
                format!("backends[{i}].weight"),
                format!("must be at most {MAX_WEIGHT}"),
            );
        }
        match AddrSpec::parse(&b.addr) {
            Ok(spec) => configured.push((spec, b.weight)),
            Err(e) => p.push(format!("backends[{i}].addr"), e),
        }
    }
    if let Some(d) = &cfg.discovery {
        if d.weight == 0 || d.weight > MAX_WEIGHT {
            p.push("discovery.weight", format!("must be 1..{MAX_WEIGHT}"));
        }
        match AddrSpec::parse(&d.dns) {
            Ok(AddrSpec::Name { host, port }) => {
                configured.push((AddrSpec::Name { host, port }, d.weight))
            }
            Ok(AddrSpec::Ip(a)) => configured.push((AddrSpec::Ip(a), d.weight)),
            Err(e) => p.push("discovery.dns", e),
        }
    }
    if cfg.backends.is_empty() && cfg.discovery.is_none() {
        // allowed: backends may be registered at runtime through the admin API
        log::info!("upstream `{name}` has no configured backends; it waits for registrations");
    } else if cfg.lb == LbKind::ConsistentHash
        && cfg.backends.iter().map(|b| b.weight as u64).sum::<u64>()
            + cfg.discovery.as_ref().map_or(0, |d| d.weight as u64)
            > MAX_HASH_TOTAL_WEIGHT
    {
        // the ring has 160 points per unit of weight
        p.push(
            "backends",
            format!("a consistent_hash upstream's weights may add up to at most {MAX_HASH_TOTAL_WEIGHT}"));
    } else if !cfg.backends.is_empty()
        && cfg.discovery.is_none()
        && cfg.backends.iter().all(|b| b.weight == 0)
    {
        p.push("backends", "the total weight of the backends is 0");
    }
    configured
}

/// `hash_key`, only with `lb: consistent_hash`.
fn hash_key(cfg: &UpstreamConfig, p: &mut Problems) -> HashKey {
    let hash_key = match cfg.hash_key.as_deref() {
        None => HashKey::ClientIp,
        Some(s) => match HashKey::parse(s) {
            Ok(k) => k,
            Err(e) => {
                p.push("hash_key", e);
                HashKey::ClientIp
            }
        },
    };
    if cfg.hash_key.is_some() && cfg.lb != LbKind::ConsistentHash {
        p.push("hash_key", "hash_key only applies to `lb: consistent_hash`");
    }
    hash_key
}

/// `health_check`: thresholds, interval, Host and path.
fn health_check_block(cfg: &UpstreamConfig, p: &mut Problems) {
    if let Some(hc) = &cfg.health_check {
        if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
            p.push(
                "health_check",
                "healthy_threshold and unhealthy_threshold must be at least 1",
            );
        }
        if hc.interval.get().is_zero() {
            p.push("health_check.interval", "must be above 0");
        }
        if let Some(h) = &hc.host {
            if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
                p.push("health_check.host", "not a valid Host header value");
            }
        }
        if hc.path.parse::<http::uri::PathAndQuery>().is_err() {
            p.push("health_check.path", "not a valid request path");
        }
        if !hc.path.starts_with('/') {
            p.push("health_check.path", "must start with `/`");
        }
    }
}

/// `circuit_breaker`.
fn breaker(cfg: &UpstreamConfig, p: &mut Problems) {
    let cb = &cfg.circuit_breaker;
    if cb.failure_threshold == 0 {
        p.push("circuit_breaker.failure_threshold", "must be at least 1");
    }
    if cb.half_open_probes == 0 {
        p.push("circuit_breaker.half_open_probes", "must be at least 1");
    }
    if cb.failure_ratio.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
        p.push("circuit_breaker.failure_ratio", "must be in (0, 1]");
    }
    if cb.max_ejection_percent > 100 {
        p.push("circuit_breaker.max_ejection_percent", "must be 0..100");
    }
    if cb.open_for.get().is_zero() || cb.max_open_for < cb.open_for {
        p.push(
            "circuit_breaker.open_for",
            "must be above 0 and at most max_open_for",
        );
    }
    if let Some(bad) = cb
        .failure_statuses
        .iter()
        .find(|s| !(100..=599).contains(*s))
    {
        p.push(
            "circuit_breaker.failure_statuses",
            format!("`{bad}` is not an HTTP status"),
        );
    }
}

/// `retry` and `timeouts`.
fn retry_and_timeouts(cfg: &UpstreamConfig, p: &mut Problems) {
    let rt = &cfg.retry;
    if !(rt.budget > 0.0 && rt.budget <= 1.0) {
        p.push("retry.budget", "must be a fraction in (0, 1]");
    }
    if rt.attempts > 10 {
        p.push("retry.attempts", "at most 10 retries");
    }
    if rt.max_backoff < rt.backoff {
        p.push("retry.max_backoff", "must be at least `backoff`");
    }
    let t = &cfg.timeouts;
    for (k, v) in [
        ("connect", t.connect),
        ("read", t.read),
        ("total", t.total),
        ("websocket_idle", t.websocket_idle),
    ] {
        if v.get().is_zero() {
            p.push(format!("timeouts.{k}"), "must be above 0");
        }
    }
}

/// Compile (and check) how backends are connected to.
fn peer_profile(name: &str, cfg: &UpstreamConfig, p: &mut Problems) -> PeerProfile {
    if cfg.tls {
        if cfg.sni.as_deref().is_some_and(|s| {
            s.is_empty() || rustls::pki_types::ServerName::try_from(s.to_string()).is_err()
        }) {
            p.push("sni", "must be a host name or an IP address");
        }
        if !cfg.verify {
            log::warn!("upstream `{name}`: `verify: false`, backend certificates are not checked");
        }
    } else {
        for (key, set) in [
            ("sni", cfg.sni.is_some()),
            ("verify", !cfg.verify),
            ("ca_file", cfg.ca_file.is_some()),
        ] {
            if set {
                p.push(key, "only applies with `tls: true`");
            }
        }
    }
    let ca = match &cfg.ca_file {
        Some(path) if cfg.tls => match crate::tls::load_ca_file(path) {
            Ok(ca) => Some(ca),
            Err(e) => {
                p.push("ca_file", e);
                None
            }
        },
        _ => None,
    };
    PeerProfile {
        timeouts: cfg.timeouts.clone(),
        tls: cfg.tls,
        sni: cfg.sni.clone(),
        verify: cfg.verify,
        ca,
        protocol: cfg.protocol,
    }
}

/// SNI of TLS health checks: `sni`, else the check's `host`, else the first backend's host.
fn health_check_sni(hc: &crate::config::HealthCheckConfig, cfg: &UpstreamConfig) -> String {
    if let Some(s) = cfg.sni.clone().or_else(|| hc.host.clone()) {
        return s;
    }
    let first = cfg
        .backends
        .first()
        .map(|b| b.addr.as_str())
        .or(cfg.discovery.as_ref().map(|d| d.dns.as_str()));
    match first.map(AddrSpec::parse) {
        Some(Ok(AddrSpec::Ip(a))) => a.ip().to_string(),
        Some(Ok(AddrSpec::Name { host, .. })) => host,
        _ => "localhost".to_string(),
    }
}

pub(super) fn health_check(
    hc: &crate::config::HealthCheckConfig,
    cfg: &UpstreamConfig,
    profile: &PeerProfile,
) -> Box<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync> {
    let tls_options = |o: &mut pingora_core::upstreams::peer::PeerOptions| {
        o.verify_cert = profile.verify;
        o.verify_hostname = profile.verify;
        o.ca = profile.ca.as_ref().map(|(ca, _)| ca.clone());
    };
    match hc.kind {
        HealthCheckKind::Tcp => {
            let mut c = if profile.tls {
                let mut c = TcpHealthCheck::new_tls(&health_check_sni(hc, cfg));
                tls_options(&mut c.peer_template.options);
                c
            } else {
                TcpHealthCheck::new()
            };
            c.consecutive_success = hc.healthy_threshold as usize;
            c.consecutive_failure = hc.unhealthy_threshold as usize;
            c.peer_template.options.connection_timeout = Some(hc.timeout.get());
            c
        }
        HealthCheckKind::Http => {
            let host = hc.host.clone().unwrap_or_else(|| "localhost".to_string());
            let mut c = HttpHealthCheck::new(&host, profile.tls);
            if profile.tls {
                c.peer_template.sni = health_check_sni(hc, cfg);
                tls_options(&mut c.peer_template.options);
            }
            if profile.protocol == UpstreamProtocol::H2 {
                c.peer_template.options.set_http_version(2, 2);
            }
            c.consecutive_success = hc.healthy_threshold as usize;
            c.consecutive_failure = hc.unhealthy_threshold as usize;
            c.peer_template.options.connection_timeout = Some(hc.timeout.get());
            c.peer_template.options.read_timeout = Some(hc.timeout.get());
            if let Ok(mut req) = pingora_http::RequestHeader::build("GET", hc.path.as_bytes(), None)
            {
                let _ = req.append_header("Host", host.as_str());
                let _ = req.append_header("User-Agent", "portcullis-health-check");
                c.req = req;
            }
            let expect = hc.expect_status.clone();
            c.validator = Some(Box::new(move |resp| {
                let s = resp.status.as_u16();
                let ok = if expect.is_empty() {
                    (200..300).contains(&s)
                } else {
                    expect.contains(&s)
                };
                if ok {
                    Ok(())
                } else {
                    pingora_error::Error::e_explain(
                        pingora_error::ErrorType::CustomCode("unexpected health check status", s),
                        "during http health check",
                    )
                }
            }));
            Box::new(c)
        }
    }
}
