//! Per-request state carried through the phases.

use crate::reject::Reject;
use crate::snapshot::Snapshot;
use crate::upstream::retry::Failure;
use crate::upstream::{InFlight, Upstream};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

pub struct Ctx {
    pub start: Instant,
    pub request_id: String,
    pub snapshot: Option<Arc<Snapshot>>,
    /// Index into `snapshot.routes`.
    pub route: Option<usize>,
    /// A response decided before proxying (404, 405, 400, ...), written in `request_filter`.
    pub reject: Option<Reject>,
    /// The canonical view of the request (`crate::view`): set in `early_request_filter`
    /// for every request that gets past the head checks.
    pub view: Option<crate::view::RequestView>,
    /// The path (and query) to send upstream, when it differs from the request's.
    pub forward_uri: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub peer_ip: Option<IpAddr>,
    pub peer_trusted: bool,
    pub tls: bool,
    pub upstream: Option<Arc<Upstream>>,
    pub backend: Option<InFlight>,
    /// Backends already tried for this request.
    pub tried: Vec<SocketAddr>,
    pub retries: u32,
    pub deadline: Option<Instant>,
    /// The current attempt's outcome was recorded on its breaker.
    pub attempt_recorded: bool,
    /// Wait this long before the next attempt.
    pub backoff: Option<std::time::Duration>,
    pub last_failure: Option<Failure>,
    pub budget_exhausted: bool,
    /// The status that triggered the last status-based retry.
    pub retry_status: Option<u16>,
    /// This request was resent once because a reused pooled connection was dead.
    pub stale_retried: bool,
    /// The next attempt must open a new connection (not take one from the pool).
    pub fresh_connection: bool,
    pub identity: Option<Arc<crate::auth::Identity>>,
    /// The API key came in the query string: remove it before forwarding.
    pub strip_key_param: bool,
    /// The rate-limit state to report in response headers.
    pub rate_limit: Option<crate::ratelimit::Outcome>,
    pub trace_id: String,
    /// The `traceparent` sent upstream.
    pub traceparent: String,
    /// This hop's span id, and the caller's (from its `traceparent`).
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The caller's sampling flag, when it sent a `traceparent`.
    pub trace_sampled: Option<bool>,
    /// This request's spans are exported (`tracing` is configured and sampling chose it).
    pub traced: bool,
    /// Upstream attempts, recorded only when `traced`.
    pub attempts: Vec<crate::observe::otlp::Attempt>,
    /// Counted in the in-flight gauge.
    pub in_flight: bool,
    /// When the current upstream attempt started.
    pub upstream_start: Option<Instant>,
    pub upstream_us: Option<u64>,
    /// The status the gateway answered with when it answered itself.
    pub final_status: Option<u16>,
    /// HIT, MISS, BYPASS, STALE on cacheable routes (set in `response_filter`).
    pub cache_status: Option<&'static str>,
    /// Response-cache state: whether the route caches, and whether this request bypassed it.
    pub cache: crate::cache::CacheCtx,
    /// Counts this request in the per-IP in-flight cap while it lives.
    pub ip_guard: Option<pingora_limits::inflight::Guard>,
    /// Request body bytes seen so far.
    pub body_bytes: u64,
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx {
            start: Instant::now(),
            request_id: String::new(),
            snapshot: None,
            route: None,
            reject: None,
            view: None,
            forward_uri: None,
            client_ip: None,
            peer_ip: None,
            peer_trusted: false,
            tls: false,
            upstream: None,
            backend: None,
            tried: Vec::new(),
            retries: 0,
            deadline: None,
            attempt_recorded: false,
            backoff: None,
            last_failure: None,
            budget_exhausted: false,
            retry_status: None,
            stale_retried: false,
            fresh_connection: false,
            identity: None,
            strip_key_param: false,
            rate_limit: None,
            trace_id: String::new(),
            traceparent: String::new(),
            span_id: [0; 8],
            parent_span_id: None,
            trace_sampled: None,
            traced: false,
            attempts: Vec::new(),
            in_flight: false,
            upstream_start: None,
            upstream_us: None,
            final_status: None,
            cache_status: None,
            ip_guard: None,
            body_bytes: 0,
            cache: crate::cache::CacheCtx::default(),
        }
    }
}

impl Ctx {
    pub fn route(&self) -> Option<&crate::snapshot::Route> {
        let s = self.snapshot.as_ref()?;
        s.routes.get(self.route?)
    }
}
