//! The edge steps of the request phases: limits, IP rules, CORS and response decoration.

use super::ctx::Ctx;
use crate::edge;
use crate::hdr::Headers;
use crate::reject::Reject;
use pingora_core::modules::http::compression::ResponseCompression;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Checks before auth: IP rules, CORS preflight, concurrency per IP, declared body size.
/// Returns a preflight answer to send, if this was one; a refusal goes to `ctx.reject`.
pub fn before_auth(
    session: &mut Session,
    ctx: &mut Ctx,
) -> Option<Vec<(http::HeaderName, http::HeaderValue)>> {
    let snap = ctx.snapshot.clone()?;
    let limits = &snap.edge_limits;
    session.set_keepalive(Some(limits.keepalive_secs));
    session.set_read_timeout(Some(limits.body_timeout));
    if let Some(ip) = ctx.client_ip {
        let route_ip = ctx.route().and_then(|r| r.edge.ip.as_ref());
        if snap
            .server_ip
            .iter()
            .chain(route_ip)
            .any(|rules| !rules.allows(&ip))
        {
            ctx.reject = Some(Reject::new(
                403,
                "forbidden",
                "requests from this address are not allowed",
            ));
            return None;
        }
    }
    let route = snap.routes.get(ctx.route?)?;
    let req = session.req_header();
    if edge::is_preflight(req) {
        let Some(cors) = &route.edge.cors else {
            // no CORS policy: the upstream answers the OPTIONS request itself
            return None;
        };
        let origin = req.headers.get(http::header::ORIGIN)?.clone();
        let method = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .unwrap_or("");
        if !cors.origin_allowed(origin.to_str().unwrap_or("")) || !cors.method_allowed(method) {
            ctx.reject = Some(Reject::new(
                403,
                "cors_forbidden",
                "this origin or method is not allowed by the CORS policy",
            ));
            return None;
        }
        return Some(cors.preflight_headers(&origin, req));
    }
    if limits.max_concurrent_per_ip > 0 {
        if let Some(ip) = ctx.client_ip {
            let (guard, n) = edge::IN_FLIGHT_PER_IP.incr(ip, 1);
            if n as usize > limits.max_concurrent_per_ip {
                drop(guard);
                ctx.reject = Some(
                    Reject::new(
                        429,
                        "too_many_concurrent_requests",
                        "too many requests in progress from this address",
                    )
                    .header("retry-after", "1"),
                );
                return None;
            }
            ctx.ip_guard = Some(guard);
        }
    }
    if let Some(r) = edge::check_content_length(req, route.edge.max_body_bytes) {
        ctx.reject = Some(r);
    }
    None
}

/// Turn compression on for a route that has it, before Pingora's compression module reads
/// the request's Accept-Encoding (it runs between the early and the main request filter).
pub fn enable_compression(session: &mut Session, ctx: &Ctx) {
    let Some(c) = ctx.route().and_then(|r| r.edge.compression.as_ref()) else {
        return;
    };
    if let Some(m) = session
        .downstream_modules_ctx
        .get_mut::<ResponseCompression>()
    {
        if m.is_header_phase() {
            m.adjust_level(c.level);
        }
    }
}

/// Answer a CORS preflight at the edge.
pub async fn answer_preflight(
    session: &mut Session,
    ctx: &Ctx,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(204, Some(headers.len() + 2))?;
    for (k, v) in headers {
        resp.insert_header(k, v)?;
    }
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    resp.insert_header("content-length", "0")?;
    session.write_response_header(Box::new(resp), true).await
}

/// Count request body bytes against the route's limit (for bodies without, or lying
/// about, Content-Length).
pub fn count_body(ctx: &mut Ctx, chunk: Option<&bytes::Bytes>) -> Result<()> {
    let Some(b) = chunk else { return Ok(()) };
    ctx.body_bytes += b.len() as u64;
    let max = ctx
        .route()
        .map(|r| r.edge.max_body_bytes)
        .unwrap_or(u64::MAX);
    if ctx.body_bytes > max {
        ctx.reject = Some(edge::body_too_large(max));
        return pingora_error::Error::e_explain(
            pingora_error::ErrorType::HTTPStatus(413),
            "request body too large",
        );
    }
    Ok(())
}

/// CORS, security headers and compression on a response.
pub fn decorate(session: &mut Session, resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
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
    if ctx.tls {
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
            if let Some(m) = session
                .downstream_modules_ctx
                .get_mut::<ResponseCompression>()
            {
                if m.is_header_phase() {
                    m.adjust_level(0);
                }
            }
        }
    }
    Ok(())
}
