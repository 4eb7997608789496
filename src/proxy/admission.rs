//! Admission at the edge: the checks of `request_filter` that come before auth (IP rules,
//! CORS preflight, concurrency per IP, declared body size) and the body-size count while
//! the body streams. Named for what it decides, to keep it apart from `crate::edge`, which
//! holds the compiled edge policies these steps apply.

use super::ctx::Ctx;
use crate::edge;
use crate::reject::Reject;
use pingora_error::Result;
use pingora_proxy::Session;

/// Checks before auth: IP rules, CORS preflight, concurrency per IP, declared body size.
/// Returns a preflight answer to send, if this was one; a refusal goes to [`Ctx::refuse`].
pub fn before_auth(
    session: &mut Session,
    ctx: &mut Ctx,
) -> Option<Vec<(http::HeaderName, http::HeaderValue)>> {
    let snap = ctx.snapshot.clone();
    let limits = &snap.edge_limits;
    session.set_keepalive(Some(limits.keepalive_secs));
    session.set_read_timeout(Some(limits.body_timeout));
    if let Some(ip) = ctx.client.ip {
        let route_ip = ctx.route().and_then(|r| r.edge.ip.as_ref());
        if snap
            .server_ip
            .iter()
            .chain(route_ip)
            .any(|rules| !rules.allows(&ip))
        {
            ctx.refuse(Reject::new(
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
            ctx.refuse(Reject::new(
                403,
                "cors_forbidden",
                "this origin or method is not allowed by the CORS policy",
            ));
            return None;
        }
        return Some(cors.preflight_headers(&origin, req));
    }
    if limits.max_concurrent_per_ip > 0 {
        if let Some(ip) = ctx.client.ip {
            let (guard, n) = edge::IN_FLIGHT_PER_IP.incr(ip, 1);
            if n as usize > limits.max_concurrent_per_ip {
                drop(guard);
                ctx.refuse(
                    Reject::new(
                        429,
                        "too_many_concurrent_requests",
                        "too many requests in progress from this address",
                    )
                    .header("retry-after", "1"),
                );
                return None;
            }
            ctx.client.ip_guard = Some(guard);
        }
    }
    if let Some(r) = edge::check_content_length(req, route.edge.max_body_bytes) {
        ctx.refuse(r);
    }
    None
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
        ctx.refuse(edge::body_too_large(max));
        return pingora_error::Error::e_explain(
            pingora_error::ErrorType::HTTPStatus(413),
            "request body too large",
        );
    }
    Ok(())
}
