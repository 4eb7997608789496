//! Upstream pools on pingora-load-balancing: weighted selection, membership (static,
//! DNS, runtime registration), active health checks and per-backend state.
//!
//! `compile` checks a config block, `backend` holds one address's live state, `select`
//! chooses the backend of an attempt; this module owns the pool and its upkeep.

mod backend;
pub mod breaker;
mod compile;
pub mod discovery;
pub mod retry;
mod select;
pub mod window;

pub use backend::{BackendState, InFlight, PeerProfile};
pub use compile::HashKey;
pub use select::{NoBackend, Selected};

use crate::config::{LbKind, Problems, UpstreamConfig};
use ahash::AHashMap;
use arc_swap::ArcSwap;
use breaker::{BreakerPolicy, Ejections};
use discovery::{AddrSpec, Membership, MembershipDiscovery};
use futures_util::FutureExt;
use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora_load_balancing::selection::{Consistent, Random, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use retry::RetryPolicy;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Largest backend weight: weighted selection tables hold one entry per unit of weight,
/// and the consistent-hash ring 160 points per unit.
pub const MAX_WEIGHT: u32 = 10_000;

/// Largest total weight of a consistent-hash upstream (1.6 million ring points).
pub const MAX_HASH_TOTAL_WEIGHT: u64 = 10_000;

/// Longest walk over the selection ring before giving up on finding an acceptable backend.
const MAX_SELECT_ITERATIONS: usize = 256;

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

/// Pre-resolved metric handles of one upstream.
pub struct UpstreamMetrics {
    pub duration: prometheus::Histogram,
    retries: RetryCounters,
    /// Requests resent because a pooled connection turned out closed.
    pub stale_connection_retries: prometheus::IntCounter,
}

/// `portcullis_upstream_retries_total{upstream, reason}`: one series per kind of failure
/// that led to a retry, resolved once per upstream so a retry does no label lookup.
struct RetryCounters {
    connect_error: prometheus::IntCounter,
    timeout: prometheus::IntCounter,
    reset: prometheus::IntCounter,
    status: prometheus::IntCounter,
}

impl UpstreamMetrics {
    fn new(name: &str) -> UpstreamMetrics {
        use crate::observe::metrics::METRICS;
        let r = |reason: &str| METRICS.retries.with_label_values(&[name, reason]);
        UpstreamMetrics {
            duration: METRICS.upstream_duration.with_label_values(&[name]),
            retries: RetryCounters {
                connect_error: r("connect_error"),
                timeout: r("timeout"),
                reset: r("reset"),
                status: r("status"),
            },
            stale_connection_retries: METRICS.stale_connection_retries.with_label_values(&[name]),
        }
    }

    /// The counter of retries made after `failure`.
    pub fn retry_counter(&self, failure: retry::Failure) -> &prometheus::IntCounter {
        match failure {
            retry::Failure::ConnectError => &self.retries.connect_error,
            retry::Failure::Timeout => &self.retries.timeout,
            retry::Failure::Reset => &self.retries.reset,
            retry::Failure::Status(_) => &self.retries.status,
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

impl Upstream {
    /// Compile `cfg` into a pool (problems reported relative to the upstream's block).
    pub fn build(name: &str, cfg: &UpstreamConfig, p: &mut Problems) -> Option<Upstream> {
        let compile::Checked {
            configured,
            hash_key,
            profile,
        } = compile::check(name, cfg, p)?;
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
                b.set_health_check(compile::health_check(hc, cfg, &profile));
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
        if up.apply_membership().now_or_never().is_none() {
            log::warn!("upstream `{name}`: the initial membership update did not complete at once");
        }
        Some(up)
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

    /// Every backend in rotation, as the admin API and the state gauges show it.
    pub fn backend_status(&self) -> Vec<BackendStatus> {
        let states = self.states.load();
        let be = self.backends();
        self.membership
            .current()
            .iter()
            .filter_map(|b| {
                let a = inet(b)?;
                Some(BackendStatus {
                    addr: a,
                    weight: b.weight,
                    healthy: be.ready(b),
                    state: states.get(&a).cloned(),
                })
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

/// One backend in rotation (see [`Upstream::backend_status`]).
pub struct BackendStatus {
    pub addr: SocketAddr,
    pub weight: usize,
    /// Passes its health check (always, without one).
    pub healthy: bool,
    /// Breaker and counters; `None` for an address that joined since the last state sync.
    pub state: Option<Arc<BackendState>>,
}

fn inet(b: &Backend) -> Option<SocketAddr> {
    match &b.addr {
        PSocketAddr::Inet(a) => Some(*a),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    /// The vendored pingora-core boxes the connect state machine (vendor/pingora-core/
    /// PORTCULLIS.md, "future size"): asking the pool for an upstream connection must stay a
    /// small future, or every proxied request's state grows by the connect path again
    /// (8.8 KiB in a release build of the unpatched crate, more in a debug build).
    #[test]
    fn asking_for_an_upstream_connection_is_a_small_future() {
        let c = pingora_core::connectors::http::Connector::new(None);
        let peer =
            pingora_core::upstreams::peer::HttpPeer::new("127.0.0.1:1", false, String::new());
        let f = c.get_http_session(&peer);
        let size = std::mem::size_of_val(&f);
        assert!(size < 2048, "get_http_session's future is {size} bytes");
    }
}
