//! Per-request state carried through the phases.
//!
//! The request's own facts sit at the top (id, snapshot, route, canonical view, identity);
//! the rest is grouped by who writes it: [`Client`] (who is asking, fixed in
//! `early_request_filter`), [`Attempts`] (the upstream attempts and their retry
//! bookkeeping, `proxy::attempt`), [`Trace`] (trace context and exported spans) and
//! [`Outcome`] (what the request ended with, for the log and the metrics).
//!
//! A refusal the gateway will answer itself is `pending` until a writer consumes it
//! ([`Ctx::take_pending`]); what was answered is then in `outcome`. Keeping the two apart
//! means no phase has to guess whether a `Reject` it sees was already sent.

pub use super::attempt::Attempts;
use crate::observe::trace::TraceContext;
use crate::reject::Reject;
use crate::snapshot::Snapshot;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub struct Ctx {
    pub start: Instant,
    pub request_id: String,
    /// The configuration this request is served by, taken once when it arrives: a reload
    /// while it runs does not change its route, limits or upstream.
    pub snapshot: Arc<Snapshot>,
    /// Index into `snapshot.routes`.
    pub route: Option<usize>,
    /// The canonical view of the request (`crate::view`): set in `early_request_filter`
    /// for every request that gets past the head checks.
    pub view: Option<crate::view::RequestView>,
    /// The path (and query) to send upstream, when it differs from the request's.
    pub forward_uri: Option<String>,
    pub client: Client,
    pub identity: Option<Arc<crate::auth::Identity>>,
    /// The API key came in the query string: remove it before forwarding.
    pub strip_key_param: bool,
    /// The rate-limit state to report in response headers.
    pub rate_limit: Option<crate::ratelimit::Outcome>,
    /// A refusal decided but not yet written (404, 405, 429, 503, ...). Set with
    /// [`Ctx::refuse`]; the writer takes it with [`Ctx::take_pending`].
    pending: Option<Reject>,
    pub attempts: Attempts,
    pub trace: Trace,
    pub outcome: Outcome,
    /// Response-cache state: whether the route caches, and whether this request bypassed it.
    pub cache: crate::cache::CacheCtx,
    /// Counted in the in-flight gauge.
    pub in_flight: bool,
    /// Request body bytes seen so far.
    pub body_bytes: u64,
    /// The route's plugins for this request (`proxy::plugins`); inert on a route without.
    pub plugins: super::plugins::Plugins,
}

/// Who is asking: addresses, trust and transport, fixed in `early_request_filter`.
#[derive(Default)]
pub struct Client {
    /// The client's address: the peer, or the one a trusted proxy forwarded for.
    pub ip: Option<IpAddr>,
    /// The address of the connection's other end.
    pub peer: Option<IpAddr>,
    /// The peer is a trusted proxy: its forwarding headers are believed.
    pub peer_trusted: bool,
    /// The connection is TLS.
    pub tls: bool,
    /// Counts this request in the per-IP in-flight cap while it lives.
    pub ip_guard: Option<pingora_limits::inflight::Guard>,
}

/// This hop's trace context and, when the request is exported, its upstream attempts.
#[derive(Default)]
pub struct Trace {
    /// 32 hex digits.
    pub id: String,
    /// The `traceparent` sent upstream.
    pub traceparent: String,
    /// This hop's span id, and the caller's (from its `traceparent`).
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The caller's sampling flag, when it sent a `traceparent`.
    pub parent_sampled: Option<bool>,
    /// This request's spans are exported (`tracing` is configured and sampling chose it).
    pub exported: bool,
    /// Upstream attempts, recorded only when `exported`.
    pub spans: Vec<crate::observe::otlp::Attempt>,
}

impl Trace {
    pub fn new(tc: TraceContext, exported: bool) -> Trace {
        Trace {
            id: tc.trace_id,
            traceparent: tc.traceparent,
            span_id: tc.span_id,
            parent_span_id: tc.parent_span_id,
            parent_sampled: tc.parent_sampled,
            exported,
            spans: Vec::new(),
        }
    }
}

/// What the request ended with, as far as the gateway itself decided it.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The status of an answer the gateway wrote itself (a refusal, a preflight).
    pub status: Option<u16>,
    /// The code of the refusal the request ended with (the `error` of its JSON body):
    /// written, or given up on because the client was gone or a response had started.
    pub refused: Option<&'static str>,
    /// HIT, MISS, BYPASS, STALE on cacheable routes (set in `response_filter`).
    pub cache_status: Option<&'static str>,
}

impl Outcome {
    /// The gateway wrote an answer of its own with `status`.
    pub fn answered(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// The request ends with `refusal`; `written` says whether it reached the client.
    pub fn refused(&mut self, refusal: &Reject, written: bool) {
        self.refused = Some(refusal.code);
        if written {
            self.answered(refusal.status);
        }
    }
}

impl Ctx {
    /// The state of a request that has just arrived, served by `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>) -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: String::new(),
            snapshot,
            route: None,
            view: None,
            forward_uri: None,
            client: Client::default(),
            identity: None,
            strip_key_param: false,
            rate_limit: None,
            pending: None,
            attempts: Attempts::default(),
            trace: Trace::default(),
            outcome: Outcome::default(),
            cache: crate::cache::CacheCtx::default(),
            in_flight: false,
            body_bytes: 0,
            plugins: super::plugins::Plugins::default(),
        }
    }

    pub fn route(&self) -> Option<&crate::snapshot::Route> {
        self.snapshot.routes.get(self.route?)
    }

    /// Answer this request with `refusal` instead of proxying it (replacing any earlier one).
    pub fn refuse(&mut self, refusal: Reject) {
        self.pending = Some(refusal);
    }

    /// A refusal is pending: the later checks of the request phases are skipped.
    pub fn refusing(&self) -> bool {
        self.pending.is_some()
    }

    /// The pending refusal, for the writer that sends it (or for the stale-serving path
    /// that drops it): afterwards nothing is pending.
    pub fn take_pending(&mut self) -> Option<Reject> {
        self.pending.take()
    }

    /// The reason the request was refused, for `portcullis_rejections_total{reason}`, the
    /// access log's `error` and the span's `error.type`. A refusal still pending at the
    /// end (decided, but the request ended another way) counts under its reason too.
    pub fn refusal_code(&self) -> Option<&'static str> {
        self.outcome
            .refused
            .or_else(|| self.pending.as_ref().map(|r| r.code))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A snapshot with one route `api` on `/api` to the upstream `upstream` (one
    /// backend), whose retry settings are `retry` (YAML flow mapping).
    pub(crate) fn snapshot_with(upstream: &str, retry: &str) -> Arc<Snapshot> {
        let yaml = format!(
            "upstreams:\n  {upstream}: {{ backends: [{{ addr: \"127.0.0.1:9\" }}], retry: {retry} }}\nroutes:\n  - {{ name: api, match: {{ path: /api }}, upstream: {upstream} }}\n"
        );
        let src = crate::config::parse_str("ctx-test.yaml", &yaml).expect("config");
        match crate::snapshot::build(&src, None, 1) {
            Ok(s) => Arc::new(s),
            Err(e) => panic!("snapshot: {e:?}"),
        }
    }

    pub(crate) fn snapshot() -> Arc<Snapshot> {
        snapshot_with("app", "{ attempts: 2 }")
    }

    #[test]
    fn a_refusal_is_pending_until_taken_then_the_outcome_says_what_was_sent() {
        let mut ctx = Ctx::new(snapshot());
        assert!(!ctx.refusing());
        assert_eq!(ctx.refusal_code(), None);
        ctx.refuse(Reject::new(404, "not_found", "no route"));
        assert!(ctx.refusing());
        // decided but not written: nothing was answered yet, the reason still counts
        assert_eq!(ctx.outcome.status, None);
        assert_eq!(ctx.refusal_code(), Some("not_found"));
        let r = ctx.take_pending().expect("pending");
        assert!(!ctx.refusing());
        assert!(ctx.take_pending().is_none(), "taken once");
        ctx.outcome.refused(&r, true);
        assert_eq!(ctx.outcome.status, Some(404));
        assert_eq!(ctx.refusal_code(), Some("not_found"));
    }

    #[test]
    fn a_refusal_not_written_keeps_its_reason_but_no_status() {
        let mut ctx = Ctx::new(snapshot());
        ctx.refuse(Reject::new(429, "rate_limited", "slow down"));
        // a later refusal replaces the earlier one
        ctx.refuse(Reject::new(504, "gateway_timeout", "late"));
        let r = ctx.take_pending().expect("pending");
        ctx.outcome.refused(&r, false);
        assert_eq!(ctx.outcome.status, None);
        assert_eq!(ctx.refusal_code(), Some("gateway_timeout"));
    }

    #[test]
    fn a_dropped_refusal_leaves_no_reason() {
        // serving a stale cache entry instead of an error drops the pending refusal
        let mut ctx = Ctx::new(snapshot());
        ctx.refuse(Reject::new(502, "bad_gateway", "down"));
        drop(ctx.take_pending());
        assert_eq!(ctx.refusal_code(), None);
        assert_eq!(ctx.outcome.status, None);
    }

    #[test]
    fn the_route_comes_from_the_snapshot() {
        let mut ctx = Ctx::new(snapshot());
        assert!(ctx.route().is_none());
        ctx.route = Some(0);
        assert_eq!(ctx.route().map(|r| r.name.as_ref()), Some("api"));
        ctx.route = Some(7);
        assert!(ctx.route().is_none());
    }
}
