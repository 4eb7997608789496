//! `response_filter`: what every response gets on its way to the client.

use super::ctx::Ctx;
use super::edge;
use crate::hdr::{self, Headers};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

pub fn decorate(session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    // Room for what the gateway adds (request id, rate-limit fields, security headers):
    // each map grows once at most.
    resp.reserve(10);
    resp.set(&hdr::X_REQUEST_ID, hdr::text(&ctx.request_id)?)?;
    if crate::runtime::DRAINING.load(std::sync::atomic::Ordering::Relaxed) {
        session.set_keepalive(None);
        resp.insert_header("connection", "close")?;
    }
    if let Some(route) = ctx.route() {
        route.response_headers.apply(resp)?;
    }
    if ctx.retries > 0 {
        resp.insert_header("x-retry-count", ctx.retries.to_string())?;
    }
    if let Some(o) = &ctx.rate_limit {
        for (k, v) in crate::ratelimit::headers(o) {
            resp.set(k, hdr::owned(v)?)?;
        }
    }
    if let Some(rc) = ctx
        .route()
        .and_then(|r| r.cache.as_deref())
        .filter(|_| ctx.cache.route)
    {
        let status = crate::cache::status(&session.cache, ctx.cache.bypass);
        crate::cache::decorate(resp, status, &session.cache, rc)?;
        // a background refresh's response reaches no client: not counted
        if session.subrequest_ctx.is_none() {
            crate::cache::STATS.record(status);
        }
        ctx.cache_status = Some(status.as_str());
    }
    edge::decorate(session, resp, ctx)?;
    Ok(())
}
