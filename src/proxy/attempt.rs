//! The upstream attempts of one request: the state ([`Attempts`]) whose methods are its
//! transitions, and the decisions that need the session (is it safe to resend, was it the
//! pooled-connection race, is a failure retried).
//!
//! An attempt's life: [`Attempts::bind`] once per request (the upstream and the total
//! deadline), then per attempt [`Attempts::start`] (a backend), an outcome told to the
//! backend's breaker once ([`Attempts::record`]), and after a failure either
//! [`Attempts::retried`] (the next attempt waits its backoff) or nothing (the request fails
//! with the last failure, [`Attempts::failed`]). The pooled-connection race is outside that
//! accounting: [`Attempts::resend_fresh`].

use super::ctx::Ctx;
use crate::upstream::retry::Failure;
use crate::upstream::{BackendState, InFlight, Upstream};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The attempts made for one request. The upstream is chosen once; each attempt picks a
/// backend, and its outcome is told to that backend's breaker once.
#[derive(Default)]
pub struct Attempts {
    /// The upstream serving this request (picked once, even on a split route).
    pub upstream: Option<Arc<Upstream>>,
    /// The current (or last) attempt's backend, counted in its in-flight gauge.
    pub backend: Option<InFlight>,
    /// Backends already tried for this request.
    pub tried: Vec<SocketAddr>,
    /// Retries made (the first attempt is not one).
    pub retries: u32,
    /// The request's total deadline (`timeouts.total` from its start).
    pub deadline: Option<Instant>,
    /// How long the last upstream attempt took to its response header, in µs.
    pub upstream_us: Option<u64>,
    /// The current attempt's outcome was told to its breaker (or must not be).
    recorded: bool,
    /// Wait this long before the next attempt.
    backoff: Option<Duration>,
    last_failure: Option<Failure>,
    budget_exhausted: bool,
    /// The status that triggered the last status-based retry.
    retry_status: Option<u16>,
    /// This request was resent once because a reused pooled connection was dead.
    stale_retried: bool,
    /// The next attempt must open a new connection (not take one from the pool).
    fresh_connection: bool,
    /// When the current attempt started.
    started: Option<Instant>,
}

impl Attempts {
    /// The request goes to `upstream`: its total deadline runs from `request_start`, and the
    /// request counts towards the upstream's retry budget.
    pub fn bind(&mut self, upstream: Arc<Upstream>, request_start: Instant) {
        self.deadline = Some(request_start + upstream.config.timeouts.total.get());
        upstream.retry.on_request(crate::clock::now_ms());
        self.upstream = Some(upstream);
    }

    /// Time left before the deadline (`otherwise` when there is none yet).
    pub fn remaining(&self, now: Instant, otherwise: Duration) -> Duration {
        self.deadline
            .map_or(otherwise, |d| d.saturating_duration_since(now))
    }

    /// The deadline has passed.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// The backoff to wait before this attempt, once.
    pub fn take_backoff(&mut self) -> Option<Duration> {
        self.backoff.take()
    }

    /// A new attempt on `backend`: it is tried, its outcome is not recorded yet, its
    /// clock starts.
    pub fn start(&mut self, backend: Arc<BackendState>) {
        self.tried.push(backend.addr);
        self.recorded = false;
        self.started = Some(Instant::now());
        self.backend = Some(InFlight::new(backend));
    }

    /// The attempt's response header arrived: how long it took.
    pub fn answered(&mut self) -> Option<Duration> {
        let d = self.started?.elapsed();
        self.upstream_us = Some(d.as_micros() as u64);
        Some(d)
    }

    /// Tell the backend's breaker how this attempt went; only the first call per attempt
    /// counts (a failure seen by two phases is one failure).
    pub fn record(&mut self, failed: bool) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        if let (Some(u), Some(b)) = (&self.upstream, &self.backend) {
            u.record(&b.0, failed);
        }
    }

    /// The attempt failed with `failure`: the one place the last failure is kept (it
    /// makes "no backend left" a 504 after a timeout, a 502 otherwise, and labels spans).
    pub fn failed(&mut self, failure: Failure) {
        self.last_failure = Some(failure);
    }

    pub fn last_failure(&self) -> Option<Failure> {
        self.last_failure
    }

    /// Whether the upstream's retry policy grants another attempt after `failure`: retries
    /// left, time left, a retried kind of failure, and a retry in the budget. A granted
    /// retry is counted, and the next attempt waits its backoff. (Whether the request may
    /// be resent at all is the caller's question: [`should_retry`].)
    pub fn retried(&mut self, failure: Failure, now: Instant) -> bool {
        let Some(u) = self.upstream.clone() else {
            return false;
        };
        if self.retries >= u.retry.attempts || self.expired(now) {
            return false;
        }
        if !u.retry.retries_on(failure) {
            return false;
        }
        if !u.retry.take_budget(crate::clock::now_ms()) {
            self.budget_exhausted = true;
            crate::observe::metrics::METRICS
                .retry_budget_exhausted
                .inc();
            return false;
        }
        u.metrics.retry_counter(failure).inc();
        self.retries += 1;
        self.backoff = Some(u.retry.backoff(self.retries));
        true
    }

    /// A retry was refused because the upstream's retry budget is spent.
    pub fn budget_exhausted(&self) -> bool {
        self.budget_exhausted
    }

    /// A retryable status answered this attempt: the error raised for it is the retry.
    pub fn retry_on_status(&mut self, status: u16) {
        self.retry_status = Some(status);
    }

    /// Whether `status` is the one [`Attempts::retry_on_status`] marked (once).
    pub fn take_retry_status(&mut self, status: u16) -> bool {
        self.retry_status.take() == Some(status)
    }

    /// The pooled-connection race: resend once on a new connection. The attempt counts for
    /// nothing: not on the breaker, and its backend may be chosen again (it is healthy;
    /// only the connection was stale).
    pub fn resend_fresh(&mut self) {
        self.stale_retried = true;
        self.fresh_connection = true;
        self.recorded = true;
        if let Some(b) = &self.backend {
            let addr = b.0.addr;
            if let Some(i) = self.tried.iter().rposition(|a| *a == addr) {
                self.tried.remove(i);
            }
        }
    }

    /// This request was already resent for a stale pooled connection.
    pub fn stale_retried(&self) -> bool {
        self.stale_retried
    }

    /// The next attempt must open a new connection.
    pub fn wants_fresh_connection(&self) -> bool {
        self.fresh_connection
    }

    /// [`Attempts::wants_fresh_connection`], once: for the attempt that opens it.
    pub fn take_fresh_connection(&mut self) -> bool {
        std::mem::take(&mut self.fresh_connection)
    }
}

/// What kind of upstream failure an error is; `None` if it is not the upstream's fault.
pub fn classify(e: &Error) -> Option<Failure> {
    match e.etype() {
        ErrorType::HTTPStatus(code) => Some(Failure::Status(*code)),
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => Some(Failure::ConnectError),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            if matches!(e.esource(), ErrorSource::Downstream) {
                None
            } else {
                Some(Failure::Timeout)
            }
        }
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::SocketError
        | ErrorType::BindError => Some(Failure::ConnectError),
        _ => match e.esource() {
            ErrorSource::Upstream => Some(Failure::Reset),
            _ => None,
        },
    }
}

fn idempotent(session: &Session, ctx: &Ctx) -> bool {
    use http::Method;
    let m = &session.req_header().method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || ctx.route().is_some_and(|r| r.idempotent)
}

/// Whether the request may be sent again after it may have reached the backend: an
/// idempotent method (or a route that declares its requests idempotent), a body still
/// buffered whole, and no response started to the client.
fn resendable(session: &Session, ctx: &Ctx) -> bool {
    idempotent(session, ctx)
        && !session.as_ref().retry_buffer_truncated()
        && session.response_written().is_none()
}

/// Whether the request never got onto the wire: the request header could not be written.
fn nothing_written(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::WriteError)
        && e.context
            .as_ref()
            .is_some_and(|c| c.as_str().contains("request header"))
}

/// The pooled-connection race: a keep-alive connection taken from the pool that the
/// backend had already closed (its keep-alive timeout is shorter than ours, or it restarted)
/// fails without an answer: end of stream or a reset while waiting for the response header
/// (Pingora marks those `RetryType::ReusedOnly`), or a failed write of the request header.
/// That is the gateway's transport failing, not the backend: the request is resent once, on
/// a new connection, whatever `retry` says, for an idempotent method or a request of which
/// nothing was written, and neither the breaker, the retry count nor the budget sees it
/// (`portcullis_upstream_stale_connection_retries_total` counts it). A non-idempotent
/// request whose bytes were written is not resent (the backend may have acted on it) and
/// fails, but not on the breaker either.
pub fn stale_connection(session: &Session, ctx: &mut Ctx, e: &Error, client_reused: bool) -> Stale {
    if !client_reused || ctx.attempts.stale_retried() {
        return Stale::No;
    }
    let unwritten = nothing_written(e);
    if !unwritten && !matches!(e.retry, pingora_error::RetryType::ReusedOnly) {
        return Stale::No;
    }
    if (!unwritten && !idempotent(session, ctx))
        || session.as_ref().retry_buffer_truncated()
        || session.response_written().is_some()
        || ctx.attempts.expired(Instant::now())
    {
        return Stale::Fail;
    }
    let Some(u) = ctx.attempts.upstream.as_ref() else {
        return Stale::Fail;
    };
    u.metrics.stale_connection_retries.inc();
    ctx.attempts.resend_fresh();
    Stale::Retry
}

/// What [`stale_connection`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Stale {
    /// Not the pooled-connection race.
    No,
    /// The race: resend on a fresh connection.
    Retry,
    /// The race, but the request cannot be resent: fail it without blaming the backend.
    Fail,
}

/// Make `peer` open a new connection: a pool key no pooled connection has, and no return
/// to the pool afterwards (that key would never be asked for again).
pub fn fresh_connection(peer: &mut pingora_core::upstreams::peer::HttpPeer) {
    peer.group_key = rand::random::<u64>() | 1;
    peer.options.idle_timeout = Some(std::time::Duration::ZERO);
}

/// Whether a failed attempt is retried. `sent` says whether the request may have
/// reached the backend (false for connect errors: those are safe for any method).
pub fn should_retry(session: &Session, ctx: &mut Ctx, failure: Failure, sent: bool) -> bool {
    if ctx.attempts.upstream.is_none() || (sent && !resendable(session, ctx)) {
        return false;
    }
    ctx.attempts.retried(failure, Instant::now())
}

/// An attempt failed with `failure`: the backend's breaker hears of it, the failure is
/// kept, and the answer says whether to try again.
fn failed(session: &Session, ctx: &mut Ctx, failure: Failure, sent: bool) -> bool {
    ctx.attempts.record(true);
    let retry = should_retry(session, ctx, failure, sent);
    ctx.attempts.failed(failure);
    retry
}

/// `fail_to_connect`: whether to retry. Nothing reached the backend, so any method may be
/// retried elsewhere.
pub fn after_connect_error(session: &Session, ctx: &mut Ctx, e: &Error) -> bool {
    let failure = classify(e).unwrap_or(Failure::ConnectError);
    failed(session, ctx, failure, false)
}

/// `error_while_proxy`: whether to retry an attempt that failed after connecting.
pub fn after_proxy_error(session: &Session, ctx: &mut Ctx, e: &Error, client_reused: bool) -> bool {
    if let ErrorType::HTTPStatus(code) = e.etype() {
        if ctx.attempts.take_retry_status(*code) {
            // upstream_response_filter already recorded it and decided to retry
            return true;
        }
    }
    match stale_connection(session, ctx, e, client_reused) {
        Stale::Retry => return true,
        Stale::Fail => return false,
        Stale::No => {}
    }
    match classify(e) {
        Some(failure) => failed(session, ctx, failure, true),
        // the client went away or the gateway failed: not the backend's fault
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ctx::tests::snapshot_with;

    /// A request's attempts bound to the upstream of a one-route snapshot whose upstream is
    /// `name` (distinct per test: the retry counters are process-wide series) with `retry`.
    fn bound(name: &str, retry: &str) -> (Attempts, Arc<Upstream>) {
        let snap = snapshot_with(name, retry);
        let u = snap.routes[0].target.pick(0).clone();
        let mut a = Attempts::default();
        a.bind(u.clone(), Instant::now());
        (a, u)
    }

    fn backend(u: &Upstream) -> Arc<BackendState> {
        match u.select(b"", &[], false) {
            Ok(s) => s.state,
            Err(e) => panic!("no backend: {e:?}"),
        }
    }

    #[test]
    fn binding_sets_the_deadline_from_the_request_start() {
        let (a, u) = bound("bind", "{ attempts: 1 }");
        let total = u.config.timeouts.total.get();
        let now = Instant::now();
        assert!(a.remaining(now, Duration::ZERO) <= total);
        assert!(!a.expired(now));
        assert!(a.expired(now + total + Duration::from_millis(1)));
        // no deadline before an upstream is chosen: the fallback applies
        let fresh = Attempts::default();
        assert_eq!(
            fresh.remaining(now, Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert!(!fresh.expired(now));
    }

    #[test]
    fn an_attempt_tells_its_breaker_once() {
        let (mut a, u) = bound("breaker", "{ attempts: 1 }");
        let b = backend(&u);
        let (fail0, ok0) = (b.metrics.failure.get(), b.metrics.success.get());
        a.start(b.clone());
        assert_eq!(a.tried, vec![b.addr]);
        a.record(true);
        // the same failure seen by a second phase is not a second failure
        a.record(true);
        a.record(false);
        assert_eq!(b.metrics.failure.get(), fail0 + 1);
        assert_eq!(b.metrics.success.get(), ok0);
        // the next attempt is recorded again
        a.start(b.clone());
        a.record(false);
        assert_eq!(b.metrics.success.get(), ok0 + 1);
        assert_eq!(a.tried, vec![b.addr, b.addr]);
    }

    #[test]
    fn retries_are_counted_up_to_the_policy_and_wait_their_backoff() {
        let (mut a, u) = bound(
            "retries",
            "{ attempts: 2, backoff: 1ms, on: [connect_error, 503] }",
        );
        let counted = u.metrics.retry_counter(Failure::ConnectError).get();
        let now = Instant::now();
        assert!(a.retried(Failure::ConnectError, now));
        assert_eq!(a.retries, 1);
        assert!(a.take_backoff().is_some());
        assert!(a.take_backoff().is_none(), "waited once");
        assert!(a.retried(Failure::Status(503), now));
        assert_eq!(a.retries, 2);
        // the policy's attempts are spent
        assert!(!a.retried(Failure::ConnectError, now));
        assert_eq!(a.retries, 2);
        assert_eq!(
            u.metrics.retry_counter(Failure::ConnectError).get(),
            counted + 1
        );
        assert_eq!(u.metrics.retry_counter(Failure::Status(503)).get(), 1);
        assert!(!a.budget_exhausted());
    }

    #[test]
    fn a_retry_needs_a_retried_kind_of_failure_and_time_left() {
        let (mut a, _u) = bound("kinds", "{ attempts: 3, on: [connect_error] }");
        let now = Instant::now();
        assert!(!a.retried(Failure::Timeout, now));
        assert!(!a.retried(Failure::Status(503), now));
        let late = a.deadline.expect("bound") + Duration::from_millis(1);
        assert!(!a.retried(Failure::ConnectError, late));
        assert_eq!(a.retries, 0);
        // without an upstream there is nothing to retry on
        assert!(!Attempts::default().retried(Failure::ConnectError, now));
    }

    #[test]
    fn a_spent_budget_refuses_the_retry() {
        let (mut a, _u) = bound(
            "budget",
            "{ attempts: 3, on: [connect_error], budget: 0.01, budget_min: 0 }",
        );
        assert!(!a.retried(Failure::ConnectError, Instant::now()));
        assert!(a.budget_exhausted());
        assert_eq!(a.retries, 0);
        assert!(a.take_backoff().is_none());
    }

    #[test]
    fn the_last_failure_is_kept_only_when_told() {
        let (mut a, _u) = bound("last", "{ attempts: 2, on: [timeout] }");
        assert!(a.retried(Failure::Timeout, Instant::now()));
        // granting a retry is accounting; the failure is the caller's to keep
        assert_eq!(a.last_failure(), None);
        a.failed(Failure::Timeout);
        a.failed(Failure::Reset);
        assert_eq!(a.last_failure(), Some(Failure::Reset));
    }

    #[test]
    fn a_status_retry_is_marked_once() {
        let mut a = Attempts::default();
        a.retry_on_status(503);
        assert!(!a.take_retry_status(502));
        // a mismatch consumes the mark too: it belonged to that one error
        assert!(!a.take_retry_status(503));
        a.retry_on_status(503);
        assert!(a.take_retry_status(503));
        assert!(!a.take_retry_status(503));
    }

    #[test]
    fn a_stale_connection_resend_counts_for_nothing() {
        let (mut a, u) = bound("stale", "{ attempts: 0 }");
        let b = backend(&u);
        let fail0 = b.metrics.failure.get();
        a.start(b.clone());
        a.resend_fresh();
        assert!(a.stale_retried());
        // the backend may be chosen again, and the breaker does not hear of it
        assert!(a.tried.is_empty());
        a.record(true);
        assert_eq!(b.metrics.failure.get(), fail0);
        assert_eq!(a.retries, 0);
        // the fresh connection is for the next attempt only
        assert!(a.wants_fresh_connection());
        assert!(a.take_fresh_connection());
        assert!(!a.take_fresh_connection());
    }

    #[test]
    fn the_answer_time_is_from_the_attempts_start() {
        let (mut a, u) = bound("timing", "{ attempts: 0 }");
        assert!(a.answered().is_none(), "no attempt started");
        a.start(backend(&u));
        assert!(a.answered().is_some());
        assert!(a.upstream_us.is_some());
    }
}
