//! `response_filter`: the headers every response gets on its way to the client, whoever
//! made it (the upstream, the cache): request id, the route's header operations, retry
//! and rate-limit fields, `X-Cache`, CORS and security headers, and the compression
//! decision. Named for what it touches, to keep it apart from `answer`, which writes the
//! responses the gateway makes itself.

use super::ctx::Ctx;
use crate::hdr::{self, Headers};
use pingora_core::modules::http::compression::ResponseCompression;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

pub fn decorate(session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    // Room for what the gateway adds (request id, rate-limit fields, security headers):
    // each map grows once at most.
    resp.reserve(10);
    resp.set(&hdr::X_REQUEST_ID, hdr::text(&ctx.request_id)?)?;
    if crate::lifecycle::draining() {
        session.set_keepalive(None);
        resp.insert_header("connection", "close")?;
    }
    if let Some(route) = ctx.route().filter(|r| !r.response_headers.is_empty()) {
        let scope = super::peer::header_scope(ctx, route, session.req_header());
        route.response_headers.apply(resp, &scope)?;
    }
    if ctx.attempts.retries > 0 {
        resp.insert_header("x-retry-count", ctx.attempts.retries.to_string())?;
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
        ctx.outcome.cache_status = Some(status.as_str());
    }
    edge_headers(session, resp, ctx)?;
    Ok(())
}

/// The route's edge policy on a response: CORS, security headers, compression.
fn edge_headers(session: &mut Session, resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    let Some(route) = ctx.route() else {
        return Ok(());
    };
    let e = &route.edge;
    if let Some(cors) = &e.cors {
        if let Some(origin) = session.req_header().headers.get(http::header::ORIGIN) {
            if cors.origin_allowed(origin.to_str().unwrap_or("")) {
                for (k, v) in cors.response_headers(origin) {
                    if k == http::header::VARY {
                        resp.append_header(k, v)?;
                    } else {
                        resp.insert_header(k, v)?;
                    }
                }
            }
        }
    }
    for (k, v) in &e.security.always {
        if !resp.headers.contains_key(k.name()) {
            resp.set(k, v.clone())?;
        }
    }
    if ctx.client.tls {
        if let Some(h) = &e.security.hsts {
            resp.set(&crate::hdr::STRICT_TRANSPORT_SECURITY, h.clone())?;
        }
    }
    if let Some(c) = &e.compression {
        let len = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let ctype = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes());
        if !c.wants(ctype, len) {
            // enabled at request time (to read Accept-Encoding); this response is not for it
            set_compression(session, 0);
        }
    }
    Ok(())
}

/// Turn compression on for a route that has it, before Pingora's compression module reads
/// the request's Accept-Encoding (it runs between the early and the main request filter);
/// [`decorate`] turns it off again for a response the route does not compress.
pub fn enable_compression(session: &mut Session, ctx: &Ctx) {
    if let Some(c) = ctx.route().and_then(|r| r.edge.compression.as_ref()) {
        set_compression(session, c.level);
    }
}

fn set_compression(session: &mut Session, level: u32) {
    if let Some(m) = session
        .downstream_modules_ctx
        .get_mut::<ResponseCompression>()
    {
        if m.is_header_phase() {
            m.adjust_level(level);
        }
    }
}
