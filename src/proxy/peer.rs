//! The upstream side: choosing a backend and its peer, the request sent to it, and what
//! its response header means for breakers and retries.

use super::attempt;
use super::ctx::Ctx;
use super::forwarded;
use super::request::identity_headers;
use crate::hdr::{self, Headers};
use crate::reject::Reject;
use crate::upstream::retry::Failure;
use crate::upstream::{HashKey, NoBackend, Upstream};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::time::Instant;

/// `upstream_peer`: pick the upstream (once) and a backend (per attempt).
pub async fn choose(session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
    let upstream = match &ctx.attempts.upstream {
        Some(u) => u.clone(),
        None => {
            let Some(route) = ctx.route() else {
                return Error::e_explain(ErrorType::InternalError, "no route in upstream_peer");
            };
            let u = route.target.pick(rand::random::<u32>()).clone();
            ctx.attempts.bind(u.clone(), ctx.start);
            u
        }
    };
    if let Some(delay) = ctx.attempts.take_backoff() {
        let left = ctx.attempts.remaining(Instant::now(), delay);
        tokio::time::sleep(delay.min(left)).await;
    }
    let remaining = ctx
        .attempts
        .remaining(Instant::now(), upstream.config.timeouts.read.get());
    if remaining.is_zero() {
        ctx.refuse(Reject::new(
            504,
            "gateway_timeout",
            "the upstream did not answer in time",
        ));
        return Error::e_explain(ErrorType::HTTPStatus(504), "total timeout");
    }
    let key = match upstream.hash_key {
        HashKey::ClientIp
            if !matches!(upstream.config.lb, crate::config::LbKind::ConsistentHash) =>
        {
            Vec::new()
        }
        ref k => hash_key(session, ctx, k),
    };
    // a retry prefers another backend; the same one is acceptable when it is the only one
    let selected = match upstream.select(&key, &ctx.attempts.tried, ctx.attempts.retries > 0) {
        Ok(s) => s,
        Err(why) => {
            let reject = no_backend(&upstream, why, ctx.attempts.last_failure());
            let status = reject.status;
            ctx.refuse(reject);
            return Error::e_explain(ErrorType::HTTPStatus(status), "no backend available");
        }
    };
    trace_attempt(ctx, selected.state.addr);
    let peer = if session.is_upgrade_req() {
        // a WebSocket lives as long as it is not idle: `websocket_idle` bounds the
        // silence on both sides instead of the read and total timeouts
        let idle = upstream.config.timeouts.websocket_idle.get();
        session.set_read_timeout(Some(idle));
        selected.state.upgrade_peer(idle)
    } else {
        selected
            .state
            .peer(remaining.min(upstream.config.timeouts.read.get()))
    };
    ctx.attempts.start(selected.state);
    Ok(Box::new(peer))
}

/// The refusal when no backend can take the request: an open circuit, none healthy, or
/// all tried (a 504 when the last try timed out, else a 502).
fn no_backend(upstream: &Upstream, why: NoBackend, last_failure: Option<Failure>) -> Reject {
    match why {
        NoBackend::CircuitOpen(ms) => Reject::new(
            503,
            "circuit_open",
            format!(
                "upstream `{}` is failing; its circuit breaker is open",
                upstream.name
            ),
        )
        .header("retry-after", ms.div_ceil(1000).max(1).to_string()),
        NoBackend::NoneHealthy => Reject::new(
            503,
            "no_healthy_backend",
            format!("upstream `{}` has no healthy backend", upstream.name),
        )
        .header("retry-after", "1"),
        NoBackend::Exhausted => match last_failure {
            Some(Failure::Timeout) => Reject::new(
                504,
                "gateway_timeout",
                "the upstream did not answer in time",
            ),
            _ => Reject::new(
                502,
                "bad_gateway",
                format!(
                    "no backend of upstream `{}` could be reached",
                    upstream.name
                ),
            ),
        },
    }
}

/// An exported request records a span per attempt; the previous one (if any) ended in a
/// failure that led to this one.
fn trace_attempt(ctx: &mut Ctx, backend: std::net::SocketAddr) {
    if !ctx.trace.exported {
        return;
    }
    let now = std::time::SystemTime::now();
    if let Some(prev) = ctx.trace.spans.last_mut().filter(|a| a.end.is_none()) {
        prev.end = Some(now);
        prev.error = Some(ctx.attempts.last_failure().map_or("error", |f| f.label()));
    }
    ctx.trace.spans.push(crate::observe::otlp::Attempt {
        backend: backend.to_string(),
        retry: ctx.attempts.retries,
        start: now,
        end: None,
        status: None,
        error: None,
    });
}

/// `upstream_request_filter`: forwarding headers, identity, rewrites, header operations.
pub fn prepare_request(
    session: &Session,
    upstream_request: &mut RequestHeader,
    ctx: &mut Ctx,
) -> Result<()> {
    let authority = ctx.view.as_ref().map_or("", |v| v.authority.as_str());
    forwarded::apply(
        upstream_request,
        ctx.client.peer,
        ctx.client.ip,
        ctx.client.peer_trusted,
        ctx.client.tls,
        authority,
    )?;
    upstream_request.set(&hdr::X_REQUEST_ID, hdr::text(&ctx.request_id)?)?;
    upstream_request.set(&hdr::TRACEPARENT, hdr::text(&ctx.trace.traceparent)?)?;
    identity_headers(upstream_request, ctx)?;
    if ctx.strip_key_param {
        let name = ctx
            .snapshot
            .auth
            .api_keys
            .as_ref()
            .and_then(|k| k.query_param.clone());
        if let Some(name) = name {
            let current = ctx
                .forward_uri
                .clone()
                .unwrap_or_else(|| upstream_request.uri.to_string());
            let (path, query) = current.split_once('?').unwrap_or((current.as_str(), ""));
            let q = crate::auth::query_without(query, &name);
            ctx.forward_uri = Some(if q.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{q}")
            });
        }
    }
    if let Some(uri) = &ctx.forward_uri {
        match uri.parse::<http::Uri>() {
            Ok(u) => upstream_request.set_uri(u),
            Err(_) => {
                return Error::e_explain(
                    ErrorType::HTTPStatus(400),
                    "rewritten path is not a valid URI",
                )
            }
        }
    }
    if let Some(route) = ctx.route() {
        if !route.preserve_host {
            if let Some(b) = &ctx.attempts.backend {
                upstream_request.set(&hdr::HOST, b.0.host_header.clone())?;
            }
        } else if let Some(v) = ctx.view.as_ref().filter(|v| !v.host_header_canonical) {
            // the Host routed on is the Host forwarded: canonical, from the target's
            // authority when it had one
            if v.authority.is_empty() {
                upstream_request.remove_header(&http::header::HOST);
            } else {
                upstream_request.set(&hdr::HOST, hdr::text(&v.authority)?)?;
            }
        }
        if !route.request_headers.is_empty() {
            let scope = header_scope(ctx, route, session.req_header());
            route.request_headers.apply(upstream_request, &scope)?;
        }
    }
    Ok(())
}

/// What a route's header rules read (`${claim.sub}`, `${client_ip}`, ...).
pub(super) fn header_scope<'a>(
    ctx: &'a Ctx,
    route: &'a crate::snapshot::Route,
    req: &'a RequestHeader,
) -> crate::plugin::header_rules::Scope<'a> {
    crate::plugin::header_rules::Scope {
        route: &route.name,
        request_id: &ctx.request_id,
        client_ip: ctx.client.ip,
        view: ctx.view.as_ref(),
        method: &req.method,
        identity: ctx.identity.as_deref(),
        headers: Some(&req.headers),
        vars: ctx.plugins.vars(),
    }
}

/// `upstream_response_filter`: record the attempt's outcome; a retryable status becomes a
/// retryable error before anything reaches the client.
pub fn on_response(session: &mut Session, resp: &ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    let status = resp.status.as_u16();
    let Some(upstream) = ctx.attempts.upstream.clone() else {
        return Ok(());
    };
    if let Some(d) = ctx.attempts.answered() {
        upstream.metrics.duration.observe(d.as_secs_f64());
        if let Some(b) = &ctx.attempts.backend {
            b.0.metrics.duration.observe(d.as_secs_f64());
        }
    }
    if let Some(a) = ctx.trace.spans.last_mut().filter(|a| a.end.is_none()) {
        a.end = Some(std::time::SystemTime::now());
        a.status = Some(status);
    }
    ctx.attempts.record(upstream.is_failure_status(status));
    let failure = Failure::Status(status);
    if upstream.retry.retries_status(status) && attempt::should_retry(session, ctx, failure, true) {
        ctx.attempts.failed(failure);
        ctx.attempts.retry_on_status(status);
        let mut e = Error::new_up(ErrorType::HTTPStatus(status));
        e.set_retry(true);
        return Err(e);
    }
    Ok(())
}

fn hash_key(session: &Session, ctx: &Ctx, key: &HashKey) -> Vec<u8> {
    let req = session.req_header();
    match key {
        HashKey::ClientIp => match ctx.client.ip {
            Some(std::net::IpAddr::V4(a)) => a.octets().to_vec(),
            Some(std::net::IpAddr::V6(a)) => a.octets().to_vec(),
            None => Vec::new(),
        },
        HashKey::Path => match &ctx.view {
            Some(v) => v.path.as_bytes().to_vec(),
            None => req.uri.path().as_bytes().to_vec(),
        },
        HashKey::Header(h) => req
            .headers
            .get(h)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
        HashKey::Cookie(name) => {
            for v in req.headers.get_all(http::header::COOKIE) {
                let Ok(s) = v.to_str() else { continue };
                for pair in s.split(';') {
                    if let Some((k, val)) = pair.trim().split_once('=') {
                        if k == name {
                            return val.as_bytes().to_vec();
                        }
                    }
                }
            }
            Vec::new()
        }
    }
}
