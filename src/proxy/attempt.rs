//! Bookkeeping of upstream attempts: breaker outcomes and retry decisions.

use super::ctx::Ctx;
use crate::upstream::retry::Failure;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

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

/// Record this attempt's failure on the backend's breaker (once per attempt).
pub fn record_failure(ctx: &mut Ctx) {
    if ctx.attempt_recorded {
        return;
    }
    ctx.attempt_recorded = true;
    if let (Some(u), Some(b)) = (&ctx.upstream, &ctx.backend) {
        u.record(&b.0, true);
    }
}

pub fn record_success(ctx: &mut Ctx) {
    if ctx.attempt_recorded {
        return;
    }
    ctx.attempt_recorded = true;
    if let (Some(u), Some(b)) = (&ctx.upstream, &ctx.backend) {
        u.record(&b.0, false);
    }
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
    if !client_reused || ctx.stale_retried {
        return Stale::No;
    }
    let unwritten = nothing_written(e);
    if !unwritten && !matches!(e.retry, pingora_error::RetryType::ReusedOnly) {
        return Stale::No;
    }
    if (!unwritten && !idempotent(session, ctx))
        || session.as_ref().retry_buffer_truncated()
        || session.response_written().is_some()
        || ctx.deadline.is_some_and(|d| d <= std::time::Instant::now())
    {
        return Stale::Fail;
    }
    let Some(u) = ctx.upstream.as_ref() else {
        return Stale::Fail;
    };
    u.metrics.stale_connection_retries.inc();
    ctx.stale_retried = true;
    ctx.fresh_connection = true;
    // this attempt counts for nothing: not on the breaker, and the same backend may be
    // chosen again (it is healthy; only the connection was stale)
    ctx.attempt_recorded = true;
    if let Some(b) = &ctx.backend {
        let addr = b.0.addr;
        if let Some(i) = ctx.tried.iter().rposition(|a| *a == addr) {
            ctx.tried.remove(i);
        }
    }
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
/// `stale_pooled`: skip the conditions and the budget (counted as a stale-connection
/// retry); the pooled-connection race itself goes through [`stale_connection_retry`].
pub fn should_retry(
    session: &Session,
    ctx: &mut Ctx,
    failure: Failure,
    sent: bool,
    stale_pooled: bool,
) -> bool {
    let Some(u) = ctx.upstream.clone() else {
        return false;
    };
    if ctx.retries >= u.retry.attempts {
        return false;
    }
    if ctx.deadline.is_some_and(|d| d <= std::time::Instant::now()) {
        return false;
    }
    if sent {
        if !idempotent(session, ctx) {
            return false;
        }
        if session.as_ref().retry_buffer_truncated() || session.response_written().is_some() {
            return false;
        }
    }
    if stale_pooled {
        u.metrics.stale_connection_retries.inc();
    } else {
        if !u.retry.retries_on(failure) {
            return false;
        }
        if !u.retry.take_budget(crate::clock::now_ms()) {
            ctx.budget_exhausted = true;
            crate::observe::metrics::METRICS
                .retry_budget_exhausted
                .inc();
            return false;
        }
        u.metrics.retries[failure.index()].inc();
    }
    ctx.retries += 1;
    ctx.backoff = Some(u.retry.backoff(ctx.retries));
    ctx.last_failure = Some(failure);
    true
}
