//! The one writer of the responses the gateway makes itself (instead of proxying): every
//! error is JSON of one shape, `{"error": code, "message": text, "request_id": id}`, and
//! carries `X-Request-Id`; the CORS preflight answer is here too. Named for that, to keep
//! it apart from `response_headers`, which decorates every response on its way out.

use super::ctx::Ctx;
use crate::plugin::LocalResponse;
use crate::reject::Reject;
use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::FailToProxy;
use pingora_proxy::Session;

pub use crate::reject::error_body;

/// Write `reject` as the whole response. `close` drops the connection afterwards.
pub async fn send(
    session: &mut Session,
    request_id: &str,
    reject: &Reject,
    close: bool,
) -> Result<()> {
    let body = error_body(reject.code, &reject.message, request_id);
    let mut resp = ResponseHeader::build(reject.status, Some(6 + reject.headers.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("x-request-id", request_id)?;
    for (k, v) in &reject.headers {
        resp.insert_header(*k, v.as_str())?;
    }
    if close || crate::lifecycle::draining() {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

/// The 400 for a request head Pingora refused while reading it (a second `Host`, userinfo,
/// a `Host` that disagrees with an absolute-form target, ...): the same JSON shape and
/// `X-Request-Id` as every other gateway answer.
pub fn invalid_request(e: &Error) -> Option<(ResponseHeader, Bytes)> {
    let id = crate::observe::request_id::generate();
    let message = match &e.context {
        Some(c) => format!("the request head is malformed: {c}"),
        None => "the request head is malformed".to_string(),
    };
    let body = error_body("bad_request", &message, &id);
    let mut resp = ResponseHeader::build(400, Some(5)).ok()?;
    resp.insert_header("content-type", "application/json")
        .ok()?;
    resp.insert_header("content-length", body.len().to_string())
        .ok()?;
    resp.insert_header("cache-control", "no-store").ok()?;
    resp.insert_header("x-request-id", id).ok()?;
    Some((resp, Bytes::from(body)))
}

/// Status and error code for a proxying failure.
pub fn classify(e: &Error) -> (u16, &'static str, &'static str) {
    if matches!(e.esource(), ErrorSource::Downstream)
        && matches!(e.etype(), ErrorType::ReadTimedout)
    {
        return (
            408,
            "request_timeout",
            "the request body was not received in time",
        );
    }
    match e.etype() {
        ErrorType::HTTPStatus(code) => (*code, "error", "the request failed"),
        ErrorType::ConnectTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
        | ErrorType::TLSHandshakeTimedout => (
            504,
            "gateway_timeout",
            "the upstream did not answer in time",
        ),
        _ => match e.esource() {
            ErrorSource::Upstream => (
                502,
                "bad_gateway",
                "the upstream could not be reached or failed",
            ),
            ErrorSource::Downstream => (400, "bad_request", "the request could not be read"),
            _ => (
                500,
                "internal_error",
                "the gateway failed to handle the request",
            ),
        },
    }
}

/// `request_filter`'s answer when a refusal is pending: write it and keep what was sent.
/// `Ok(false)` when nothing was pending. A 400 closes the connection (the client's
/// framing may be off).
pub async fn pending_refusal(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let Some(reject) = ctx.take_pending() else {
        return Ok(false);
    };
    let close = reject.status == 400;
    send(session, &ctx.request_id, &reject, close).await?;
    ctx.outcome.refused(&reject, true);
    Ok(true)
}

/// Answer a CORS preflight at the edge.
pub async fn preflight(
    session: &mut Session,
    ctx: &mut Ctx,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(204, Some(headers.len() + 2))?;
    for (k, v) in headers {
        resp.insert_header(k, v)?;
    }
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    resp.insert_header("content-length", "0")?;
    session.write_response_header(Box::new(resp), true).await?;
    ctx.outcome.answered(204);
    Ok(())
}

/// `fail_to_proxy`: the JSON error for whatever went wrong (the pending refusal, else one
/// made from the error), unless the client is gone or a response already started. Either
/// way the request ends with that refusal.
pub async fn fail(session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
    if let Some(l) = ctx.plugins.take_local() {
        return fail_with_local(session, ctx, &l).await;
    }
    let reject = ctx.take_pending().unwrap_or_else(|| {
        let (status, code, message) = classify(e);
        Reject::new(status, code, message)
    });
    let downstream_dead = matches!(e.esource(), ErrorSource::Downstream)
        && matches!(
            e.etype(),
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
        );
    let mut written = false;
    if !downstream_dead && session.response_written().is_none() {
        match send(session, &ctx.request_id, &reject, true).await {
            Ok(()) => written = true,
            Err(err) => log::debug!("could not send error response: {err}"),
        }
    }
    ctx.outcome.refused(&reject, written);
    FailToProxy {
        error_code: if written { reject.status } else { 0 },
        can_reuse_downstream: false,
    }
}

/// `fail_to_proxy` for a local answer a plugin decided where it could not write it.
async fn fail_with_local(session: &mut Session, ctx: &mut Ctx, l: &LocalResponse) -> FailToProxy {
    let mut written = false;
    if session.response_written().is_none() {
        match local(session, ctx, l, true).await {
            Ok(()) => written = true,
            Err(err) => log::debug!("could not send a plugin's response: {err}"),
        }
    } else {
        log::warn!(
            "a plugin answered after the response had started: cut short (request {})",
            ctx.request_id
        );
    }
    FailToProxy {
        error_code: if written { l.status } else { 0 },
        can_reuse_downstream: false,
    }
}

/// Headers of a local answer that are the gateway's to write (framing and connection).
fn framing(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// Write a plugin's local answer as the whole response: its status, headers (framing ones
/// are the gateway's; an invalid one is dropped) and body, with `X-Request-Id`. `close`
/// drops the connection afterwards.
pub async fn local(
    session: &mut Session,
    ctx: &mut Ctx,
    l: &LocalResponse,
    close: bool,
) -> Result<()> {
    let mut resp = ResponseHeader::build(l.status, Some(l.headers.len() + 2))?;
    for (k, v) in &l.headers {
        if framing(k) {
            continue;
        }
        if resp.append_header(k.clone(), v.as_str()).is_err() {
            log::debug!("a plugin's response header `{k}` is not valid: dropped");
        }
    }
    resp.insert_header("content-length", l.body.len().to_string())?;
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    if close || crate::lifecycle::draining() {
        session.set_keepalive(None);
    }
    let head_only =
        session.req_header().method == http::Method::HEAD || matches!(l.status, 204 | 304);
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(l.body.clone()), true)
            .await?;
    }
    ctx.outcome.answered(l.status);
    if let Some(code) = l.reason {
        ctx.outcome.refused = Some(code);
    }
    Ok(())
}
