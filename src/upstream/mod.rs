//! Upstream pools on pingora-load-balancing: weighted selection, membership (static,
//! DNS, runtime registration), active health checks and per-backend state.

pub mod breaker;
pub mod discovery;
pub mod retry;
pub mod window;

use crate::clock::now_ms;
use crate::config::{HealthCheckKind, LbKind, TimeoutsConfig, UpstreamConfig, UpstreamProtocol};
use ahash::AHashMap;
use arc_swap::ArcSwap;
use breaker::{Admit, Breaker, BreakerPolicy, Ejections};
use discovery::{AddrSpec, Membership, MembershipDiscovery};
use http::HeaderName;
use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::{Consistent, Random, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use retry::RetryPolicy;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest backend weight: weighted selection tables hold one entry per unit of weight,
/// and the consistent-hash ring 160 points per unit.
pub const MAX_WEIGHT: u32 = 10_000;

/// Largest total weight of a consistent-hash upstream (1.6 million ring points).
pub const MAX_HASH_TOTAL_WEIGHT: u64 = 10_000;

/// Longest walk over the selection ring before giving up on finding an acceptable backend.
const MAX_SELECT_ITERATIONS: usize = 256;

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

/// How the gateway connects to an upstream's backends: protocol, TLS and timeouts.
#[derive(Clone)]
pub struct PeerProfile {
    pub timeouts: TimeoutsConfig,
    pub tls: bool,
    /// SNI and verified name; `None`: the backend's host name or IP.
    pub sni: Option<String>,
    pub verify: bool,
    /// CAs from `ca_file`, and a digest of the file (part of the connection-pool key).
    pub ca: Option<(Arc<CaType>, u64)>,
    pub protocol: UpstreamProtocol,
}

/// Concurrent streams per HTTP/2 upstream connection before another is opened.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// Live state of one backend address.
pub struct BackendState {
    pub addr: SocketAddr,
    /// `upstream/addr`, for logs.
    pub label: String,
    pub in_flight: AtomicI64,
    pub requests: AtomicU64,
    pub breaker: Breaker,
    /// `Host` sent upstream on routes that do not preserve the client's (`ip:port`).
    pub host_header: http::HeaderValue,
    /// This backend's attempt and latency series.
    pub metrics: crate::observe::metrics::BackendMetrics,
    peer: HttpPeer,
}

impl BackendState {
    fn new(
        name: &str,
        addr: SocketAddr,
        host: Option<String>,
        profile: &PeerProfile,
        policy: &BreakerPolicy,
    ) -> BackendState {
        let sni = if profile.tls {
            profile
                .sni
                .clone()
                .or(host)
                .unwrap_or_else(|| addr.ip().to_string())
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, profile.tls, sni);
        let t = &profile.timeouts;
        peer.options.connection_timeout = Some(t.connect.get());
        peer.options.total_connection_timeout = Some(t.connect.get());
        peer.options.read_timeout = Some(t.read.get());
        peer.options.write_timeout = Some(t.read.get());
        peer.options.idle_timeout = Some(t.idle.get());
        if profile.tls {
            peer.options.verify_cert = profile.verify;
            peer.options.verify_hostname = profile.verify;
            if let Some((ca, digest)) = &profile.ca {
                peer.options.ca = Some(ca.clone());
                // the pool key does not cover the CA: connections verified against other
                // CAs (before a reload) must not be reused
                peer.group_key = *digest;
            }
        }
        if profile.protocol == UpstreamProtocol::H2 {
            // over TLS: ALPN h2 only; in clear text: HTTP/2 with prior knowledge (h2c)
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
        BackendState {
            addr,
            label: format!("{name}/{addr}"),
            host_header: crate::hdr::socket_addr_header(addr),
            metrics: crate::observe::metrics::BackendMetrics::new(name, &addr.to_string()),
            in_flight: AtomicI64::new(0),
            requests: AtomicU64::new(0),
            breaker: Breaker::new(policy),
            peer,
        }
    }

    /// A peer for this backend; `read_timeout` may be shortened by the request deadline.
    pub fn peer(&self, read_timeout: Duration) -> HttpPeer {
        let mut p = self.peer.clone();
        if p.options.read_timeout.is_none_or(|r| read_timeout < r) {
            p.options.read_timeout = Some(read_timeout);
            p.options.write_timeout = Some(read_timeout);
        }
        p
    }

    /// A peer for an upgrade request (WebSocket): HTTP/1.1 whatever the upstream's protocol
    /// (Pingora upgrades only HTTP/1 connections), and `idle` as the read timeout, which
    /// then bounds the silence of the upgraded connection.
    pub fn upgrade_peer(&self, idle: Duration) -> HttpPeer {
        let mut p = self.peer.clone();
        p.options.set_http_version(1, 1);
        p.options.max_h2_streams = 1;
        p.options.read_timeout = Some(idle);
        p
    }
}

/// Counts a request against a backend's in-flight gauge for as long as it lives.
pub struct InFlight(pub Arc<BackendState>);

impl InFlight {
    pub fn new(state: Arc<BackendState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
    /// Power of two random (weighted) choices, the one with fewer requests in flight wins.
    LeastRequest(LoadBalancer<Random>),
}

macro_rules! with_lb {
    ($sel:expr, $lb:ident => $body:expr) => {
        match $sel {
            Selector::RoundRobin($lb) => $body,
            Selector::Random($lb) => $body,
            Selector::Consistent($lb) => $body,
            Selector::LeastRequest($lb) => $body,
        }
    };
}

/// Why no backend could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// Every candidate's circuit is open; the first half-opens in this many ms.
    CircuitOpen(u64),
    /// No backend is healthy (or none is registered).
    NoneHealthy,
    /// Every healthy backend was already tried for this request.
    Exhausted,
}

/// A chosen backend.
pub struct Selected {
    pub state: Arc<BackendState>,
    /// A half-open probe: its outcome closes or re-opens the circuit.
    pub probe: bool,
}

/// Pre-resolved metric handles of one upstream.
pub struct UpstreamMetrics {
    pub duration: prometheus::Histogram,
    /// By `retry::Failure::index()`.
    pub retries: [prometheus::IntCounter; 4],
    /// Requests resent because a pooled connection turned out closed.
    pub stale_connection_retries: prometheus::IntCounter,
}

impl UpstreamMetrics {
    fn new(name: &str) -> UpstreamMetrics {
        use crate::observe::metrics::METRICS;
        let r = |reason: &str| METRICS.retries.with_label_values(&[name, reason]);
        UpstreamMetrics {
            duration: METRICS.upstream_duration.with_label_values(&[name]),
            retries: [r("connect_error"), r("timeout"), r("reset"), r("status")],
            stale_connection_retries: METRICS.stale_connection_retries.with_label_values(&[name]),
        }
    }
}

pub struct Upstream {
    pub name: Arc<str>,
    pub metrics: UpstreamMetrics,
    pub config: UpstreamConfig,
    pub hash_key: HashKey,
    pub breaker_policy: BreakerPolicy,
    pub ejections: Ejections,
    pub retry: RetryPolicy,
    pub profile: PeerProfile,
    selector: Selector,
    pub membership: Arc<Membership>,
    states: ArcSwap<AHashMap<SocketAddr, Arc<BackendState>>>,
    has_names: bool,
    next_dns: AtomicU64,
    next_health: AtomicU64,
    maintaining: AtomicBool,
    epoch: Instant,
}

/// Errors found while compiling an upstream: (key path suffix, message).
pub type UpstreamErrors = Vec<(String, String)>;

impl Upstream {
    pub fn build(name: &str, cfg: &UpstreamConfig) -> Result<Upstream, UpstreamErrors> {
        let mut errors = Vec::new();
        let mut configured = Vec::new();
        for (i, b) in cfg.backends.iter().enumerate() {
            if b.weight > MAX_WEIGHT {
                errors.push((
                    format!("backends[{i}].weight"),
                    format!("must be at most {MAX_WEIGHT}"),
                ));
            }
            match AddrSpec::parse(&b.addr) {
                Ok(spec) => configured.push((spec, b.weight)),
                Err(e) => errors.push((format!("backends[{i}].addr"), e)),
            }
        }
        if let Some(d) = &cfg.discovery {
            if d.weight == 0 || d.weight > MAX_WEIGHT {
                errors.push((
                    "discovery.weight".into(),
                    format!("must be 1..{MAX_WEIGHT}"),
                ));
            }
            match AddrSpec::parse(&d.dns) {
                Ok(AddrSpec::Name { host, port }) => {
                    configured.push((AddrSpec::Name { host, port }, d.weight))
                }
                Ok(AddrSpec::Ip(a)) => configured.push((AddrSpec::Ip(a), d.weight)),
                Err(e) => errors.push(("discovery.dns".into(), e)),
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
            errors.push((
                "backends".into(),
                format!("a consistent_hash upstream's weights may add up to at most {MAX_HASH_TOTAL_WEIGHT}"),
            ));
        } else if !cfg.backends.is_empty()
            && cfg.discovery.is_none()
            && cfg.backends.iter().all(|b| b.weight == 0)
        {
            errors.push((
                "backends".into(),
                "the total weight of the backends is 0".into(),
            ));
        }
        let hash_key = match cfg.hash_key.as_deref() {
            None => HashKey::ClientIp,
            Some(s) => match HashKey::parse(s) {
                Ok(k) => k,
                Err(e) => {
                    errors.push(("hash_key".into(), e));
                    HashKey::ClientIp
                }
            },
        };
        if cfg.hash_key.is_some() && cfg.lb != LbKind::ConsistentHash {
            errors.push((
                "hash_key".into(),
                "hash_key only applies to `lb: consistent_hash`".into(),
            ));
        }
        if let Some(hc) = &cfg.health_check {
            if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                errors.push((
                    "health_check".into(),
                    "healthy_threshold and unhealthy_threshold must be at least 1".into(),
                ));
            }
            if hc.interval.get().is_zero() {
                errors.push(("health_check.interval".into(), "must be above 0".into()));
            }
            if let Some(h) = &hc.host {
                if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
                    errors.push((
                        "health_check.host".into(),
                        "not a valid Host header value".into(),
                    ));
                }
            }
            if hc.path.parse::<http::uri::PathAndQuery>().is_err() {
                errors.push((
                    "health_check.path".into(),
                    "not a valid request path".into(),
                ));
            }
            if !hc.path.starts_with('/') {
                errors.push(("health_check.path".into(), "must start with `/`".into()));
            }
        }
        let cb = &cfg.circuit_breaker;
        if cb.failure_threshold == 0 {
            errors.push((
                "circuit_breaker.failure_threshold".into(),
                "must be at least 1".into(),
            ));
        }
        if cb.half_open_probes == 0 {
            errors.push((
                "circuit_breaker.half_open_probes".into(),
                "must be at least 1".into(),
            ));
        }
        if cb.failure_ratio.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
            errors.push((
                "circuit_breaker.failure_ratio".into(),
                "must be in (0, 1]".into(),
            ));
        }
        if cb.max_ejection_percent > 100 {
            errors.push((
                "circuit_breaker.max_ejection_percent".into(),
                "must be 0..100".into(),
            ));
        }
        if cb.open_for.get().is_zero() || cb.max_open_for < cb.open_for {
            errors.push((
                "circuit_breaker.open_for".into(),
                "must be above 0 and at most max_open_for".into(),
            ));
        }
        if let Some(bad) = cb
            .failure_statuses
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            errors.push((
                "circuit_breaker.failure_statuses".into(),
                format!("`{bad}` is not an HTTP status"),
            ));
        }
        let rt = &cfg.retry;
        if !(rt.budget > 0.0 && rt.budget <= 1.0) {
            errors.push(("retry.budget".into(), "must be a fraction in (0, 1]".into()));
        }
        if rt.attempts > 10 {
            errors.push(("retry.attempts".into(), "at most 10 retries".into()));
        }
        if rt.max_backoff < rt.backoff {
            errors.push((
                "retry.max_backoff".into(),
                "must be at least `backoff`".into(),
            ));
        }
        let t = &cfg.timeouts;
        for (k, v) in [
            ("connect", t.connect),
            ("read", t.read),
            ("total", t.total),
            ("websocket_idle", t.websocket_idle),
        ] {
            if v.get().is_zero() {
                errors.push((format!("timeouts.{k}"), "must be above 0".into()));
            }
        }
        let profile = peer_profile(name, cfg, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }

        let has_names = configured
            .iter()
            .any(|(s, _)| matches!(s, AddrSpec::Name { .. }));
        let membership = Arc::new(Membership::new(configured));
        // Resolve names once now so the pool is usable from the first request.
        if has_names {
            for (i, host, port) in membership.names() {
                match std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)) {
                    Ok(addrs) => {
                        membership.set_resolved(i, addrs.collect());
                    }
                    Err(e) => log::warn!("upstream `{name}`: cannot resolve `{host}`: {e}"),
                }
            }
        }

        let new_backends = || {
            let mut b = Backends::new(Box::new(MembershipDiscovery(membership.clone())));
            if let Some(hc) = &cfg.health_check {
                b.set_health_check(health_check(hc, cfg, &profile));
            }
            b
        };
        let selector = match cfg.lb {
            LbKind::RoundRobin => Selector::RoundRobin(LoadBalancer::from_backends(new_backends())),
            LbKind::Random => Selector::Random(LoadBalancer::from_backends(new_backends())),
            LbKind::ConsistentHash => {
                Selector::Consistent(LoadBalancer::from_backends(new_backends()))
            }
            LbKind::LeastRequest => {
                Selector::LeastRequest(LoadBalancer::from_backends(new_backends()))
            }
        };
        let cb = &cfg.circuit_breaker;
        let breaker_policy = BreakerPolicy {
            enabled: cb.enabled,
            failure_threshold: cb.failure_threshold,
            failure_ratio: cb.failure_ratio,
            min_requests: cb.min_requests,
            window_ms: cb.window.get().as_millis() as u64,
            open_for_ms: cb.open_for.get().as_millis() as u64,
            max_open_for_ms: cb.max_open_for.get().as_millis() as u64,
            half_open_probes: cb.half_open_probes,
        };
        let up = Upstream {
            name: name.into(),
            metrics: UpstreamMetrics::new(name),
            config: cfg.clone(),
            hash_key,
            breaker_policy,
            ejections: Ejections::new(cb.max_ejection_percent),
            retry: RetryPolicy::new(&cfg.retry),
            profile,
            selector,
            membership,
            states: ArcSwap::from_pointee(AHashMap::new()),
            has_names,
            next_dns: AtomicU64::new(0),
            next_health: AtomicU64::new(0),
            maintaining: AtomicBool::new(false),
            epoch: Instant::now(),
        };
        up.sync_states();
        // Static discovery never blocks: apply the initial membership synchronously.
        futures_now(up.apply_membership());
        Ok(up)
    }

    /// The upstream's `ca_file` no longer holds what was loaded (a reload rebuilds it).
    pub fn ca_file_changed(&self) -> bool {
        match (&self.config.ca_file, &self.profile.ca) {
            (Some(path), Some((_, digest))) if self.config.tls => {
                crate::tls::load_ca_file(path).map_or(true, |(_, d)| d != *digest)
            }
            _ => false,
        }
    }

    /// Rebuild the per-address state map for the current membership, keeping old entries.
    fn sync_states(&self) {
        let current = self.membership.current();
        let old = self.states.load();
        let same = current.len() == old.len()
            && current
                .iter()
                .all(|b| inet(b).is_some_and(|a| old.contains_key(&a)));
        if same {
            return;
        }
        let mut next = AHashMap::with_capacity(current.len());
        for b in current.iter() {
            if let Some(a) = inet(b) {
                let st = old.get(&a).cloned().unwrap_or_else(|| {
                    Arc::new(BackendState::new(
                        &self.name,
                        a,
                        self.membership.host_of(&a),
                        &self.profile,
                        &self.breaker_policy,
                    ))
                });
                next.insert(a, st);
            }
        }
        // ejections of backends that left the pool no longer count
        let ejected = next
            .values()
            .filter(|s| s.breaker.state() != breaker::CLOSED)
            .count();
        self.ejections.ejected.store(ejected, Ordering::Release);
        self.ejections.backends.store(next.len(), Ordering::Release);
        self.states.store(Arc::new(next));
    }

    async fn apply_membership(&self) {
        self.sync_states();
        let r = with_lb!(&self.selector, lb => lb.update().await);
        if let Err(e) = r {
            log::warn!("upstream `{}`: membership update failed: {e}", self.name);
        }
    }

    /// Apply membership changes right away (after an admin registration).
    pub async fn refresh(&self) {
        self.apply_membership().await;
    }

    fn backends(&self) -> &Backends {
        with_lb!(&self.selector, lb => lb.backends())
    }

    pub fn is_healthy(&self, addr: &SocketAddr) -> bool {
        let b = Backend {
            addr: PSocketAddr::Inet(*addr),
            weight: self.weight_of(addr),
            ext: http::Extensions::new(),
        };
        self.backends().ready(&b)
    }

    fn weight_of(&self, addr: &SocketAddr) -> usize {
        self.membership
            .current()
            .iter()
            .find(|b| inet(b) == Some(*addr))
            .map(|b| b.weight)
            .unwrap_or(1)
    }

    /// Every backend in rotation: address, weight, healthy, state.
    pub fn backend_status(&self) -> Vec<(SocketAddr, usize, bool, Option<Arc<BackendState>>)> {
        let states = self.states.load();
        let be = self.backends();
        self.membership
            .current()
            .iter()
            .filter_map(|b| {
                let a = inet(b)?;
                Some((a, b.weight, be.ready(b), states.get(&a).cloned()))
            })
            .collect()
    }

    /// Record the outcome of one attempt on `state` (breaker bookkeeping).
    pub fn record(&self, state: &BackendState, failed: bool) {
        if failed {
            state.metrics.failure.inc();
        } else {
            state.metrics.success.inc();
        }
        if failed {
            state
                .breaker
                .on_failure(&self.breaker_policy, &self.ejections, &state.label);
        } else {
            state
                .breaker
                .on_success(&self.breaker_policy, &self.ejections, &state.label);
        }
    }

    pub fn is_failure_status(&self, status: u16) -> bool {
        self.config
            .circuit_breaker
            .failure_statuses
            .contains(&status)
    }

    pub fn healthy_count(&self) -> usize {
        let be = self.backends();
        self.membership
            .current()
            .iter()
            .filter(|b| be.ready(b))
            .count()
    }

    pub fn state_of(&self, addr: &SocketAddr) -> Option<Arc<BackendState>> {
        self.states.load().get(addr).cloned()
    }

    /// Pick a healthy backend whose circuit admits traffic, preferring ones not in
    /// `tried` (falling back to a tried one only when `allow_tried`). `key` feeds
    /// consistent hashing.
    pub fn select(
        &self,
        key: &[u8],
        tried: &[SocketAddr],
        allow_tried: bool,
    ) -> Result<Selected, NoBackend> {
        let now = now_ms();
        let states = self.states.load();
        let mut skip: Vec<SocketAddr> = Vec::new();
        let mut exclude_tried = true;
        for _ in 0..8 {
            let chosen = self.pick(key, &states, now, |a| {
                !(skip.contains(a) || exclude_tried && tried.contains(a))
            });
            let Some((addr, past_breaker)) = chosen else {
                if exclude_tried && allow_tried && !tried.is_empty() {
                    exclude_tried = false;
                    continue;
                }
                return Err(self.why_none(&states, now, tried));
            };
            let state = match states.get(&addr) {
                Some(s) => s.clone(),
                // membership changed between the selector and the state map
                None => Arc::new(BackendState::new(
                    &self.name,
                    addr,
                    self.membership.host_of(&addr),
                    &self.profile,
                    &self.breaker_policy,
                )),
            };
            if past_breaker {
                // chosen despite its open breaker (see `pick`): no probe accounting
                return Ok(Selected {
                    state,
                    probe: false,
                });
            }
            match state.breaker.admit(&self.breaker_policy, now, &state.label) {
                Admit::Yes => {
                    return Ok(Selected {
                        state,
                        probe: false,
                    })
                }
                Admit::Probe => return Ok(Selected { state, probe: true }),
                Admit::No => skip.push(addr),
            }
        }
        Err(self.why_none(&states, now, tried))
    }

    /// One pass of the load-balancing algorithm over healthy, admissible backends; `true`
    /// with the address when it was chosen past its open breaker.
    fn pick<F: Fn(&SocketAddr) -> bool>(
        &self,
        key: &[u8],
        states: &AHashMap<SocketAddr, Arc<BackendState>>,
        now: u64,
        extra: F,
    ) -> Option<(SocketAddr, bool)> {
        let policy = &self.breaker_policy;
        let usable = |b: &Backend, healthy: bool| -> Option<SocketAddr> {
            if !healthy {
                return None;
            }
            let a = inet(b)?;
            extra(&a).then_some(a)
        };
        // an open circuit takes the backend out of rotation until it may half-open
        let closed = |a: &SocketAddr| {
            states.get(a).is_none_or(|s| {
                !policy.enabled
                    || s.breaker.state() == breaker::CLOSED
                    || s.breaker.ms_until_half_open(now) == 0
            })
        };
        if let Some(a) =
            self.select_by(key, states, |b, h| usable(b, h).is_some_and(|a| closed(&a)))
        {
            return Some((a, false));
        }
        // The ejection cap counts every backend out of rotation, not only the breakers':
        // when health checks took out the others, a backend whose breaker is open but which
        // passes its health check is the best there is (and a recovered one closes its
        // breaker with the first successes) — rather than a 503 while it answers.
        let be = self.backends();
        let health_down = self.membership.current().iter().any(|b| !be.ready(b));
        if health_down {
            return self
                .select_by(key, states, |b, h| usable(b, h).is_some())
                .map(|a| (a, true));
        }
        None
    }

    fn select_by<A: Fn(&Backend, bool) -> bool>(
        &self,
        key: &[u8],
        states: &AHashMap<SocketAddr, Arc<BackendState>>,
        accept: A,
    ) -> Option<SocketAddr> {
        let chosen = match &self.selector {
            Selector::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, &accept),
            Selector::Random(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, &accept),
            Selector::Consistent(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, &accept),
            Selector::LeastRequest(lb) => {
                let a = lb.select_with(key, MAX_SELECT_ITERATIONS, &accept)?;
                match lb.select_with(key, MAX_SELECT_ITERATIONS, &accept) {
                    Some(b) if b != a => {
                        let load = |x: &Backend| {
                            let n = inet(x)
                                .and_then(|ad| states.get(&ad))
                                .map(|s| s.in_flight.load(Ordering::Relaxed))
                                .unwrap_or(0);
                            (n as f64 + 1.0) / x.weight.max(1) as f64
                        };
                        if load(&b) < load(&a) {
                            Some(b)
                        } else {
                            Some(a)
                        }
                    }
                    _ => Some(a),
                }
            }
        }?;
        inet(&chosen)
    }

    fn why_none(
        &self,
        states: &AHashMap<SocketAddr, Arc<BackendState>>,
        now: u64,
        tried: &[SocketAddr],
    ) -> NoBackend {
        let be = self.backends();
        let current = self.membership.current();
        let mut healthy = 0usize;
        let mut open_wait: Option<u64> = None;
        for b in current.iter() {
            if !be.ready(b) {
                continue;
            }
            healthy += 1;
            if let Some(s) = inet(b).and_then(|a| states.get(&a)) {
                if s.breaker.state() != breaker::CLOSED {
                    let w = s.breaker.ms_until_half_open(now).max(1);
                    open_wait = Some(open_wait.map_or(w, |x: u64| x.min(w)));
                }
            }
        }
        if healthy == 0 {
            NoBackend::NoneHealthy
        } else if !tried.is_empty() {
            NoBackend::Exhausted
        } else if let Some(w) = open_wait {
            NoBackend::CircuitOpen(w)
        } else {
            NoBackend::NoneHealthy
        }
    }

    fn ms_since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Periodic upkeep, driven by the supervisor: DNS re-resolution, TTL expiry,
    /// membership updates and active health checks. Runs at most once at a time.
    pub async fn maintain(self: Arc<Self>) {
        if self.maintaining.swap(true, Ordering::AcqRel) {
            return;
        }
        let now = Instant::now();
        let now_ms = self.ms_since_epoch(now);
        if self.has_names && now_ms >= self.next_dns.load(Ordering::Relaxed) {
            let refresh = self
                .config
                .discovery
                .as_ref()
                .map(|d| d.refresh)
                .unwrap_or(self.config.dns_refresh);
            self.next_dns
                .store(now_ms + refresh.get().as_millis() as u64, Ordering::Relaxed);
            for (i, host, port) in self.membership.names() {
                match tokio::net::lookup_host((host.as_str(), port)).await {
                    Ok(addrs) => {
                        if self.membership.set_resolved(i, addrs.collect()) {
                            log::info!(
                                "upstream `{}`: `{host}` resolves to new addresses",
                                self.name
                            );
                        }
                    }
                    Err(e) => {
                        // keep the last good addresses
                        log::warn!("upstream `{}`: cannot resolve `{host}`: {e}", self.name)
                    }
                }
            }
        }
        for a in self.membership.expire(now) {
            log::info!("upstream `{}`: registration of {a} expired", self.name);
        }
        self.apply_membership().await;
        if let Some(hc) = &self.config.health_check {
            if now_ms >= self.next_health.load(Ordering::Relaxed) {
                self.next_health.store(
                    now_ms + hc.interval.get().as_millis() as u64,
                    Ordering::Relaxed,
                );
                self.backends().run_health_check(true).await;
            }
        }
        self.maintaining.store(false, Ordering::Release);
    }

    /// Run one health-check pass now (a changed upstream is checked before it takes traffic).
    pub async fn check_now(&self) {
        if self.config.health_check.is_some() {
            self.backends().run_health_check(true).await;
            let now_ms = self.ms_since_epoch(Instant::now());
            if let Some(hc) = &self.config.health_check {
                self.next_health.store(
                    now_ms + hc.interval.get().as_millis() as u64,
                    Ordering::Relaxed,
                );
            }
        }
    }
}

fn inet(b: &Backend) -> Option<SocketAddr> {
    match &b.addr {
        PSocketAddr::Inet(a) => Some(*a),
        _ => None,
    }
}

/// Compile (and check) how backends are connected to.
fn peer_profile(name: &str, cfg: &UpstreamConfig, errors: &mut UpstreamErrors) -> PeerProfile {
    if cfg.tls {
        if cfg.sni.as_deref().is_some_and(|s| {
            s.is_empty() || rustls::pki_types::ServerName::try_from(s.to_string()).is_err()
        }) {
            errors.push(("sni".into(), "must be a host name or an IP address".into()));
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
                errors.push((key.into(), "only applies with `tls: true`".into()));
            }
        }
    }
    let ca = match &cfg.ca_file {
        Some(path) if cfg.tls => match crate::tls::load_ca_file(path) {
            Ok(ca) => Some(ca),
            Err(e) => {
                errors.push(("ca_file".into(), e));
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

fn health_check(
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

/// Drive a future that never waits (static discovery) to completion without a runtime.
fn futures_now<F: std::future::Future<Output = ()>>(f: F) {
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..16 {
        if let Poll::Ready(()) = f.as_mut().poll(&mut cx) {
            return;
        }
    }
    log::warn!("initial membership update did not complete synchronously");
}
