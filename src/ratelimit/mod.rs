//! Rate limiting in `request_filter`: per-route policies keyed by client, IP, header or
//! route, tier-aware, counted locally with pingora-limits and optionally shared across
//! instances through Redis (see `cluster`). Standard headers on every limited response.

pub mod cluster;
pub mod local;

use crate::auth::{IdKind, Identity};
use crate::config::{Problems, RateLimitsConfig, RedisEndpoints};
use http::HeaderName;
use local::{Limiter, Usage};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// API key id, else JWT subject, else client IP.
    Client,
    Ip,
    Route,
    Header(HeaderName),
}

impl KeyKind {
    fn parse(s: &str) -> Result<KeyKind, String> {
        match s {
            "client" => Ok(KeyKind::Client),
            "ip" => Ok(KeyKind::Ip),
            "route" => Ok(KeyKind::Route),
            _ => match s.strip_prefix("header:") {
                Some(h) => HeaderName::from_bytes(h.as_bytes())
                    .map(KeyKind::Header)
                    .map_err(|_| format!("`{h}` is not a valid header name")),
                None => Err(format!(
                    "key `{s}` must be client, ip, route or header:NAME"
                )),
            },
        }
    }
}

/// 2 windows × 4 rows × 2^20 slots × 8 bytes = 64 MiB per limiter at most.
pub const MAX_SKETCH_SLOTS: usize = 1 << 20;

/// All rate-limit sketches together.
pub const MAX_SKETCH_BYTES: u64 = 512 << 20;

pub struct Policy {
    pub name: Arc<str>,
    /// Index of the policy (stable within a snapshot), used for cluster keys.
    pub id: u16,
    pub key: KeyKind,
    pub base: Arc<Limiter>,
    /// For `key: client`: limits by the identity's tier.
    pub tiers: HashMap<String, (Arc<str>, Arc<Limiter>)>,
    /// (key, requests, per, sketch) this was built from, to keep counters across reloads.
    spec: (String, u64, u64, usize),
}

pub struct RateLimits {
    pub config: RateLimitsConfig,
    pub policies: Vec<Arc<Policy>>,
    by_name: HashMap<String, usize>,
    pub cluster: Option<Arc<cluster::Cluster>>,
}

/// The state of one policy after a request, for headers.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub policy: Arc<str>,
    pub limit: u64,
    pub window_secs: u64,
    pub remaining: u64,
    pub reset_secs: u64,
    /// Set when this policy rejected the request.
    pub retry_after: Option<u64>,
}

/// The limit's key for one request.
pub struct KeyInput<'a> {
    pub identity: Option<&'a Identity>,
    pub client_ip: Option<IpAddr>,
    pub route: &'a str,
    pub headers: &'a http::HeaderMap,
}

fn key_bytes(kind: &KeyKind, k: &KeyInput) -> Option<Vec<u8>> {
    let ip = |out: &mut Vec<u8>| match k.client_ip {
        Some(IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
        Some(IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
        None => {}
    };
    let mut out = Vec::with_capacity(48);
    match kind {
        KeyKind::Client => match k.identity {
            Some(id) => {
                out.push(match id.kind {
                    IdKind::ApiKey => b'k',
                    IdKind::Jwt => b'j',
                });
                out.extend_from_slice(id.subject.as_bytes());
            }
            None => {
                out.push(b'i');
                ip(&mut out);
            }
        },
        KeyKind::Ip => ip(&mut out),
        KeyKind::Route => out.extend_from_slice(k.route.as_bytes()),
        KeyKind::Header(h) => out.extend_from_slice(k.headers.get(h)?.as_bytes()),
    }
    Some(out)
}

impl RateLimits {
    /// `fleet`: the top-level `cluster`, which shares the limits when present.
    pub fn build(
        c: &RateLimitsConfig,
        fleet: Option<&crate::config::FleetConfig>,
        prev: Option<&RateLimits>,
        p: &mut Problems,
    ) -> RateLimits {
        let mut out = RateLimits {
            config: c.clone(),
            policies: Vec::new(),
            by_name: HashMap::new(),
            cluster: None,
        };
        // do not build limiters for a config that is refused anyway (they can be large)
        if !sketches_fit(c, p) {
            return out;
        }
        for (name, t) in &c.tiers {
            if t.requests == 0 || t.per.get().is_zero() {
                p.push(
                    format!("rate_limits.tiers.{name}"),
                    "requests and per must be above 0",
                );
            }
        }
        for (i, (name, pc)) in c.policies.iter().enumerate() {
            let base = format!("rate_limits.policies.{name}");
            if let Some(policy) = p.within(&base, |p| compile_policy(i, name, pc, c, prev, p)) {
                out.by_name.insert(name.clone(), out.policies.len());
                out.policies.push(policy);
            }
        }
        out.cluster = compile_cluster(c, fleet, prev, p);
        out
    }

    /// Resolve a route's `rate_limit:` names.
    pub fn route_policies(&self, names: &[String], base: &str, p: &mut Problems) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate() {
            match self.by_name.get(n) {
                Some(idx) => out.push(*idx),
                None => {
                    let hint = crate::config::suggest(n, self.by_name.keys().map(|k| k.as_str()));
                    p.push(
                        format!("{base}[{i}]"),
                        format!("unknown rate-limit policy `{n}`{hint}"),
                    )
                }
            }
        }
        out
    }

    /// Check every policy of a route. Ok: the outcome of the policy closest to its
    /// limit (for headers). Err: the rejecting policy's outcome (nothing is counted).
    pub fn check(
        &self,
        route_policies: &[usize],
        k: &KeyInput,
    ) -> Result<Option<Outcome>, Outcome> {
        let mut closest: Option<Outcome> = None;
        let mut taken: Vec<(&Limiter, Vec<u8>, Arc<str>, &Policy)> = Vec::new();
        for idx in route_policies {
            let Some(policy) = self.policies.get(*idx) else {
                continue;
            };
            let Some(key) = key_bytes(&policy.key, k) else {
                continue;
            };
            let (label, limiter) = match (&policy.key, k.identity.and_then(|i| i.tier.as_deref())) {
                (KeyKind::Client, Some(t)) => match policy.tiers.get(t) {
                    Some((label, l)) => (label.clone(), l.as_ref()),
                    None => {
                        unknown_tier(t);
                        (policy.name.clone(), policy.base.as_ref())
                    }
                },
                _ => (policy.name.clone(), policy.base.as_ref()),
            };
            let extra = match &self.cluster {
                Some(c) if !c.degraded() => c.others_estimate(&label, &key, limiter),
                _ => 0.0,
            };
            let cap = match &self.cluster {
                // Redis is out: enforce this instance's share of the limit
                Some(c) if c.degraded() => limiter.limit() / c.instances().max(1) as f64,
                _ => limiter.limit(),
            };
            let (ok, usage) = limiter.try_acquire(&key, extra, cap);
            let out = outcome(&label, limiter, &usage, !ok);
            if !ok {
                crate::observe::metrics::METRICS
                    .rate_limited
                    .with_label_values(&[&label])
                    .inc();
                for (l, kb, _, _) in &taken {
                    l.release(kb);
                }
                if let Some(c) = &self.cluster {
                    // refresh this key's cluster count even though nothing was admitted
                    c.record(&label, &key, limiter, 0);
                }
                return Err(out);
            }
            let ratio = out.remaining as f64 / out.limit.max(1) as f64;
            if closest
                .as_ref()
                .is_none_or(|c| ratio < c.remaining as f64 / c.limit.max(1) as f64)
            {
                closest = Some(out);
            }
            taken.push((limiter, key, label, policy));
        }
        if let Some(c) = &self.cluster {
            for (l, kb, label, _) in &taken {
                c.record(label, kb, l, 1);
            }
        }
        Ok(closest)
    }
}

/// A credential names a tier the config does not have: it gets the policy's own numbers.
/// Counted, and logged once per tier name (a typo in an identity provider's claim would
/// otherwise go unnoticed).
fn unknown_tier(tier: &str) {
    static SEEN: std::sync::LazyLock<parking_lot::Mutex<std::collections::HashSet<String>>> =
        std::sync::LazyLock::new(Default::default);
    crate::observe::metrics::METRICS.unknown_tiers.inc();
    if first_sighting(&mut SEEN.lock(), tier) {
        log::warn!(
            "a credential names the rate-limit tier `{tier}`, which rate_limits.tiers does not \
             have: the policy's own limits apply (logged once per tier)"
        );
    }
}

/// True the first time `tier` is seen while fewer than 1,024 names have been: a flood of
/// made-up tiers stops being logged and never grows the set past that.
fn first_sighting(seen: &mut std::collections::HashSet<String>, tier: &str) -> bool {
    seen.len() < 1024 && seen.insert(tier.to_string())
}

fn tiers_equal(old: &Policy, c: &RateLimitsConfig) -> bool {
    if old.key != KeyKind::Client {
        return true;
    }
    old.tiers.len() == c.tiers.len()
        && c.tiers.iter().all(|(t, l)| {
            old.tiers
                .get(t)
                .is_some_and(|(_, o)| o.requests == l.requests && o.per == l.per.get())
        })
}

fn outcome(label: &Arc<str>, l: &Limiter, u: &Usage, rejected: bool) -> Outcome {
    let scale = l.requests as f64 / l.limit().max(1.0);
    Outcome {
        policy: label.clone(),
        limit: l.requests,
        window_secs: l.per.as_secs().max(1),
        remaining: ((l.limit() - u.estimate).max(0.0) * scale).floor() as u64,
        reset_secs: l.reset_secs(u),
        retry_after: rejected.then(|| l.retry_after_secs(u)),
    }
}

/// The response headers for an outcome: `X-RateLimit-*` and the IETF structured fields.
pub fn headers(o: &Outcome) -> [(&'static crate::hdr::Name, String); 5] {
    use crate::hdr::{
        RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
    };
    let mut b = itoa::Buffer::new();
    let (limit, remaining, reset) = (
        b.format(o.limit).to_string(),
        b.format(o.remaining).to_string(),
        b.format(o.reset_secs).to_string(),
    );
    // `"policy";k1=v1;k2=v2` (draft-ietf-httpapi-ratelimit-headers)
    let field = |k1: &str, v1: &str, k2: &str, v2: &str| {
        let mut s = String::with_capacity(o.policy.len() + 16 + v1.len() + v2.len());
        s.push('"');
        s.push_str(&o.policy);
        s.push_str("\";");
        s.push_str(k1);
        s.push('=');
        s.push_str(v1);
        s.push(';');
        s.push_str(k2);
        s.push('=');
        s.push_str(v2);
        s
    };
    let window = itoa::Buffer::new().format(o.window_secs).to_string();
    [
        (&RATELIMIT_POLICY, field("q", &limit, "w", &window)),
        (&RATELIMIT, field("r", &remaining, "t", &reset)),
        (&X_RATELIMIT_LIMIT, limit),
        (&X_RATELIMIT_REMAINING, remaining),
        (&X_RATELIMIT_RESET, reset),
    ]
}

/// `sketch_slots` in range, and every limiter's two sketches of 4 rows within the memory bound.
fn sketches_fit(c: &RateLimitsConfig, p: &mut Problems) -> bool {
    let slots = c.sketch_slots;
    if !(64..=MAX_SKETCH_SLOTS).contains(&slots) {
        p.push(
            "rate_limits.sketch_slots",
            format!("must be between 64 and {MAX_SKETCH_SLOTS}"),
        );
        return false;
    }
    let limiters: usize = c
        .policies
        .values()
        .map(|pc| {
            if pc.key == "client" {
                1 + c.tiers.len()
            } else {
                1
            }
        })
        .sum();
    let bytes = limiters as u64 * slots as u64 * 64;
    if bytes > MAX_SKETCH_BYTES {
        p.push(
            "rate_limits",
            format!(
                "{limiters} limiters of {slots} slots would take {} MiB (at most {} MiB): lower sketch_slots or use fewer policies",
                bytes >> 20,
                MAX_SKETCH_BYTES >> 20
            ),
        );
        return false;
    }
    true
}

/// One policy (problems relative to `rate_limits.policies.NAME`). An unchanged policy keeps
/// its counters; its tier limiters are rebuilt when the tiers changed.
fn compile_policy(
    i: usize,
    name: &str,
    pc: &crate::config::PolicyConfig,
    c: &RateLimitsConfig,
    prev: Option<&RateLimits>,
    p: &mut Problems,
) -> Option<Arc<Policy>> {
    let key = KeyKind::parse(&pc.key).map_err(|e| p.push("key", e)).ok()?;
    if pc.requests == 0 || pc.per.get().is_zero() {
        p.push("", "requests and per must be above 0");
        return None;
    }
    let slots = c.sketch_slots;
    let spec = (
        pc.key.clone(),
        pc.requests,
        pc.per.get().as_millis() as u64,
        slots,
    );
    let reused = prev.and_then(|r| {
        r.policies
            .iter()
            .find(|x| &*x.name == name && x.spec == spec)
            .cloned()
    });
    if let Some(old) = &reused {
        if tiers_equal(old, c) {
            return reused;
        }
    }
    let base_limiter = reused
        .map(|o| o.base.clone())
        .unwrap_or_else(|| Arc::new(Limiter::new(pc.requests, pc.per.get(), slots)));
    let tiers = if key == KeyKind::Client {
        c.tiers
            .iter()
            .map(|(t, l)| {
                let label = Arc::from(format!("{name}:{t}").as_str());
                let limiter = Arc::new(Limiter::new(l.requests, l.per.get(), slots));
                (t.clone(), (label, limiter))
            })
            .collect()
    } else {
        HashMap::new()
    };
    Some(Arc::new(Policy {
        name: name.into(),
        id: i as u16,
        key,
        base: base_limiter,
        tiers,
        spec,
    }))
}

/// `rate_limits.cluster`: kept across reloads when unchanged (its sync task and counters).
fn compile_cluster(
    c: &RateLimitsConfig,
    fleet: Option<&crate::config::FleetConfig>,
    prev: Option<&RateLimits>,
    p: &mut Problems,
) -> Option<Arc<cluster::Cluster>> {
    if let Some(f) = fleet {
        // the top-level `cluster` (checked in `config::cluster`)
        let want = cluster::Cluster::for_fleet(f);
        return match prev.and_then(|r| r.cluster.clone()) {
            Some(old)
                if old.config == want.config
                    && old.endpoints == want.endpoints
                    && old.tls_ca_file == want.tls_ca_file =>
            {
                Some(old)
            }
            _ => Some(Arc::new(want)),
        };
    }
    let cc = c.cluster.as_ref()?;
    if !(cc.redis.starts_with("redis://") || cc.redis.starts_with("rediss://")) {
        p.push("rate_limits.cluster.redis", "must be a redis:// URL");
        return None;
    }
    if cc.sync_interval.get().is_zero() {
        p.push("rate_limits.cluster.sync_interval", "must be above 0");
        return None;
    }
    match prev.and_then(|r| r.cluster.clone()) {
        Some(old)
            if old.config == *cc && old.endpoints == RedisEndpoints::Single(cc.redis.clone()) =>
        {
            Some(old)
        }
        _ => Some(Arc::new(cluster::Cluster::new(cc.clone()))),
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
