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

/// Whether a failed attempt is retried. `sent` says whether the request may have
/// reached the backend (false for connect errors: those are safe for any method).
/// `stale_pooled` marks a reused pooled connection the backend had closed: retried
/// whatever the conditions and budget say, as it is not the backend's failure.
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
    if !stale_pooled {
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
    } else {
        u.metrics.retries[4].inc();
    }
    ctx.retries += 1;
    ctx.backoff = Some(u.retry.backoff(ctx.retries));
    ctx.last_failure = Some(failure);
    true
}
