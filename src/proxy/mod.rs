//! The one `ProxyHttp` implementation. Each phase reads like the request flow in the
//! design notes and delegates to the modules that do the work.

pub mod attempt;
pub mod ctx;
pub mod edge;
pub mod forwarded;
pub mod logging;
pub mod respond;

use crate::observe::request_id;
use crate::routing::{self, path, Lookup};
use crate::runtime::Runtime;
use crate::upstream::retry::Failure;
use crate::upstream::{HashKey, InFlight, NoBackend};
use async_trait::async_trait;
use ctx::Ctx;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use respond::Reject;
use std::sync::Arc;
use std::time::Instant;

pub struct Gateway {
    pub runtime: Arc<Runtime>,
}

impl Gateway {
    pub fn new(runtime: Arc<Runtime>) -> Gateway {
        Gateway { runtime }
    }
}

/// Route the request: normalise the path, match host + path + method, compute the
/// forwarded URI. Any problem becomes `ctx.reject`.
fn route_request(session: &Session, ctx: &mut Ctx) {
    let Some(snap) = ctx.snapshot.clone() else {
        return;
    };
    let req = session.req_header();
    let raw_path = req.uri.path();
    let normalized = match path::normalize(raw_path) {
        Ok(p) => p,
        Err(e) => {
            ctx.reject = Some(Reject::new(400, "bad_request", e.message()));
            return;
        }
    };
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let host = routing::host_only(host);
    let segs = routing::segments(&normalized);
    // a CORS preflight is routed as the request it announces
    let preflight_method = crate::edge::is_preflight(req)
        .then(|| req.headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD))
        .flatten()
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
    let method = preflight_method.as_ref().unwrap_or(&req.method);
    match snap.router.lookup(&host, &segs, method, &req.headers) {
        Lookup::Found(i) => {
            ctx.route = Some(i);
            let route = &snap.routes[i];
            let new_path: Option<String> = if let Some(rw) = &route.rewrite {
                Some(rw.apply(&segs))
            } else if let Some(prefix) = &route.strip_prefix {
                routing::pattern::strip_prefix(&normalized, prefix).map(str::to_string)
            } else if let std::borrow::Cow::Owned(p) = &normalized {
                Some(p.clone())
            } else {
                None
            };
            if let Some(p) = new_path {
                let mut uri = p;
                if let Some(q) = req.uri.query() {
                    uri.push('?');
                    uri.push_str(q);
                }
                ctx.forward_uri = Some(uri);
            }
        }
        Lookup::MethodNotAllowed(m) => {
            ctx.reject = Some(
                Reject::new(
                    405,
                    "method_not_allowed",
                    format!("{} is not allowed here", req.method),
                )
                .header("allow", m.allow_header()),
            );
        }
        Lookup::NotFound => {
            ctx.reject = Some(Reject::new(
                404,
                "not_found",
                "no route matches this request",
            ));
        }
    }
}

/// Apply the route's rate-limit policies; a rejection becomes `ctx.reject` (429).
fn rate_limit(session: &Session, ctx: &mut Ctx) {
    let Some(snap) = ctx.snapshot.clone() else {
        return;
    };
    let Some(route) = ctx.route() else { return };
    if route.rate_limit.is_empty() {
        return;
    }
    let input = crate::ratelimit::KeyInput {
        identity: ctx.identity.as_deref(),
        client_ip: ctx.client_ip,
        route: &route.name,
        headers: &session.req_header().headers,
    };
    match snap.limits.check(&route.rate_limit, &input) {
        Ok(outcome) => ctx.rate_limit = outcome,
        Err(outcome) => {
            let mut reject = Reject::new(
                429,
                "rate_limited",
                format!("rate limit `{}` exceeded", outcome.policy),
            )
            .header("retry-after", outcome.retry_after.unwrap_or(1).to_string());
            for (k, v) in crate::ratelimit::headers(&outcome) {
                reject = reject.header(k, v);
            }
            ctx.rate_limit = Some(outcome);
            ctx.reject = Some(reject);
        }
    }
}

/// Verify the route's credentials; a failure becomes `ctx.reject`.
async fn authenticate(session: &Session, ctx: &mut Ctx) {
    let Some(snap) = ctx.snapshot.clone() else {
        return;
    };
    let Some(policy) = ctx.route().and_then(|r| r.auth.as_ref()) else {
        return;
    };
    match snap.auth.authenticate(policy, session.req_header()).await {
        Ok((identity, from_query)) => {
            ctx.identity = Some(identity);
            ctx.strip_key_param = from_query;
        }
        Err(f) => {
            crate::observe::metrics::auth_failure(f.reason());
            ctx.reject = Some(auth_reject(&f));
        }
    }
}

fn auth_reject(f: &crate::auth::AuthFailure) -> Reject {
    use crate::auth::AuthFailure;
    match f {
        AuthFailure::Missing => Reject::new(401, "unauthorized", "credentials are required")
            .header("www-authenticate", "Bearer realm=\"portcullis\""),
        AuthFailure::Invalid { description, .. } => Reject::new(401, "invalid_token", *description).header(
            "www-authenticate",
            format!("Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{description}\""),
        ),
        AuthFailure::Forbidden { scope } => {
            Reject::new(403, "insufficient_scope", format!("this route needs the scope(s): {scope}")).header(
                "www-authenticate",
                format!("Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"{scope}\""),
            )
        }
        AuthFailure::Unavailable(msg) => {
            Reject::new(503, "auth_unavailable", msg.clone()).header("retry-after", "5")
        }
    }
}

/// Remove client-sent identity headers and credentials; add the verified identity.
fn identity_headers(req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    let Some(snap) = ctx.snapshot.as_ref() else {
        return Ok(());
    };
    for h in &snap.auth.identity_headers {
        req.remove_header(h);
    }
    let Some(route) = ctx.route() else {
        return Ok(());
    };
    let Some(policy) = &route.auth else {
        return Ok(());
    };
    if policy.api_key {
        if let Some(keys) = &snap.auth.api_keys {
            req.remove_header(&keys.header);
        }
    }
    if policy.strip_authorization {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    if let Some(id) = &ctx.identity {
        for (k, v) in &id.forward {
            req.insert_header(k.clone(), v.clone())?;
        }
    }
    Ok(())
}

fn hash_key(session: &Session, ctx: &Ctx, key: &HashKey) -> Vec<u8> {
    let req = session.req_header();
    match key {
        HashKey::ClientIp => match ctx.client_ip {
            Some(std::net::IpAddr::V4(a)) => a.octets().to_vec(),
            Some(std::net::IpAddr::V6(a)) => a.octets().to_vec(),
            None => Vec::new(),
        },
        HashKey::Path => req.uri.path().as_bytes().to_vec(),
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

/// The cache key of this request, from the route, the identity and the request.
fn cache_key(session: &Session, ctx: &Ctx) -> Result<CacheKey> {
    let Some((route, route_cache)) = ctx.route().and_then(|r| Some((r, r.cache.as_deref()?)))
    else {
        return Error::e_explain(
            ErrorType::InternalError,
            "cache key without a caching route",
        );
    };
    let credential_param = if ctx.strip_key_param {
        ctx.snapshot
            .as_ref()
            .and_then(|s| s.auth.api_keys.as_ref())
            .and_then(|k| k.query_param.as_deref())
    } else {
        None
    };
    let input = crate::cache::key::KeyInput {
        req: session.req_header(),
        route_name: &route.name,
        route: route_cache,
        identity: ctx.identity.as_deref(),
        credential_param,
    };
    crate::cache::key::build(&input)
        .or_else(|e| Error::e_explain(ErrorType::InternalError, e.message()))
}

/// A stale entry is about to be served instead of an upstream failure: the failure still
/// counts on the backend's breaker, and no error response is pending any more.
fn stale_instead_of_error(ctx: &mut Ctx, e: &Error) {
    if let (ErrorType::HTTPStatus(code), ErrorSource::Upstream) = (e.etype(), e.esource()) {
        if ctx
            .upstream
            .as_ref()
            .is_some_and(|u| u.is_failure_status(*code))
        {
            attempt::record_failure(ctx);
        }
    }
    ctx.reject = None;
}

/// Status and error code for a proxying failure.
fn classify(e: &Error) -> (u16, &'static str, &'static str) {
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

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.start = Instant::now();
        crate::observe::metrics::METRICS.in_flight.inc();
        ctx.in_flight = true;
        let (trace_id, traceparent) = crate::observe::trace::next(
            session
                .req_header()
                .headers
                .get("traceparent")
                .map(|v| v.as_bytes()),
        );
        ctx.trace_id = trace_id;
        ctx.traceparent = traceparent;
        let incoming = session.req_header().headers.get("x-request-id");
        ctx.request_id = match incoming {
            Some(v) if request_id::is_valid(v.as_bytes()) => {
                v.to_str().unwrap_or_default().to_string()
            }
            _ => request_id::generate(),
        };
        let snap = self.runtime.snapshot();
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let (client, trusted) = forwarded::client_ip(&snap, peer, session.req_header());
            ctx.peer_ip = Some(peer);
            ctx.client_ip = Some(client);
            ctx.peer_trusted = trusted;
        }
        if let Some(reject) = snap.edge_limits.check_head(session.req_header()) {
            ctx.reject = Some(reject);
            ctx.snapshot = Some(snap);
            return Ok(());
        }
        ctx.snapshot = Some(snap);
        route_request(session, ctx);
        edge::enable_compression(session, ctx);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if ctx.reject.is_none() {
            if let Some(preflight) = edge::before_auth(session, ctx) {
                edge::answer_preflight(session, ctx, preflight).await?;
                ctx.final_status = Some(204);
                return Ok(true);
            }
        }
        if ctx.reject.is_none() {
            authenticate(session, ctx).await;
        }
        // a background cache refresh (stale-while-revalidate) is the gateway's own request:
        // it does not spend the client's rate limit
        if ctx.reject.is_none() && session.subrequest_ctx.is_none() {
            rate_limit(session, ctx);
        }
        if let Some(reject) = ctx.reject.take() {
            let close = reject.status == 400;
            respond::send(session, &ctx.request_id, &reject, close).await?;
            ctx.final_status = Some(reject.status);
            ctx.reject = Some(reject);
            return Ok(true);
        }
        Ok(false)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let Some(route_cache) = ctx.route().and_then(|r| r.cache.as_deref()) else {
            return Ok(());
        };
        let eligible =
            crate::cache::eligible(session.req_header(), route_cache, ctx.identity.is_some());
        ctx.cache.route = true;
        if !eligible {
            ctx.cache.bypass = true;
            return Ok(());
        }
        let lock_wait = ctx
            .snapshot
            .as_ref()
            .map(|s| s.config.cache.lock_timeout.get())
            .unwrap_or(std::time::Duration::from_secs(5));
        crate::cache::enable(&mut session.cache, lock_wait);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        cache_key(session, ctx)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        _meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        _ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        Ok(crate::cache::hit_filter(session.req_header(), is_fresh))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        Ok(match ctx.route().and_then(|r| r.cache.as_deref()) {
            Some(rc) => crate::cache::policy::response(rc, session.req_header(), resp),
            None => {
                RespCacheable::Uncacheable(pingora_cache::NoCacheReason::Custom("no cache route"))
            }
        })
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        crate::cache::variance(meta.response_header(), req)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        let serve = crate::cache::serve_stale(error);
        if let (true, Some(e)) = (serve, error) {
            stale_instead_of_error(ctx, e);
        }
        serve
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let upstream = match &ctx.upstream {
            Some(u) => u.clone(),
            None => {
                let Some(route) = ctx.route() else {
                    return Error::e_explain(ErrorType::InternalError, "no route in upstream_peer");
                };
                let u = route.target.pick(rand::random::<u32>()).clone();
                ctx.deadline = Some(ctx.start + u.config.timeouts.total.get());
                u.retry.on_request(crate::clock::now_ms());
                ctx.upstream = Some(u.clone());
                u
            }
        };
        if let Some(delay) = ctx.backoff.take() {
            let left = ctx
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(delay);
            tokio::time::sleep(delay.min(left)).await;
        }
        let remaining = ctx
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(upstream.config.timeouts.read.get());
        if remaining.is_zero() {
            ctx.reject = Some(Reject::new(
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
        let selected = match upstream.select(&key, &ctx.tried, ctx.retries > 0) {
            Ok(s) => s,
            Err(why) => {
                let reject = match why {
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
                    NoBackend::Exhausted => match ctx.last_failure {
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
                };
                let status = reject.status;
                ctx.reject = Some(reject);
                return Error::e_explain(ErrorType::HTTPStatus(status), "no backend available");
            }
        };
        ctx.tried.push(selected.state.addr);
        ctx.attempt_recorded = false;
        ctx.upstream_start = Some(Instant::now());
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
        ctx.backend = Some(InFlight::new(selected.state));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        attempt::record_failure(ctx);
        let failure = attempt::classify(&e).unwrap_or(Failure::ConnectError);
        // nothing reached the backend: safe to retry elsewhere whatever the method
        let retry = attempt::should_retry(session, ctx, failure, false, false);
        ctx.last_failure = Some(failure);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if let ErrorType::HTTPStatus(code) = e.etype() {
            if ctx.retry_status.take() == Some(*code) {
                // upstream_response_filter already recorded it and decided to retry
                e.set_retry(true);
                return e;
            }
        }
        let Some(failure) = attempt::classify(&e) else {
            // the client went away or the gateway failed: not the backend's fault
            e.set_retry(false);
            return e;
        };
        attempt::record_failure(ctx);
        // a pooled connection the backend had already closed is retried as Pingora does
        let stale_pooled = client_reused
            && matches!(e.retry, pingora_error::RetryType::ReusedOnly)
            && matches!(failure, Failure::Reset);
        let retry = attempt::should_retry(session, ctx, failure, true, stale_pooled);
        ctx.last_failure = Some(failure);
        e.set_retry(retry);
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let Some(upstream) = ctx.upstream.clone() else {
            return Ok(());
        };
        if let Some(t) = ctx.upstream_start {
            let d = t.elapsed();
            ctx.upstream_us = Some(d.as_micros() as u64);
            upstream.metrics.duration.observe(d.as_secs_f64());
        }
        if upstream.is_failure_status(status) {
            attempt::record_failure(ctx);
        } else {
            attempt::record_success(ctx);
        }
        if upstream.retry.retries_status(status)
            && attempt::should_retry(session, ctx, Failure::Status(status), true, false)
        {
            ctx.retry_status = Some(status);
            let mut e = Error::new_up(ErrorType::HTTPStatus(status));
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        forwarded::apply(
            upstream_request,
            ctx.peer_ip,
            ctx.client_ip,
            ctx.peer_trusted,
            ctx.tls,
        )?;
        upstream_request.insert_header("x-request-id", ctx.request_id.as_str())?;
        upstream_request.insert_header("traceparent", ctx.traceparent.as_str())?;
        identity_headers(upstream_request, ctx)?;
        if ctx.strip_key_param {
            let name = ctx
                .snapshot
                .as_ref()
                .and_then(|s| s.auth.api_keys.as_ref())
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
                if let Some(b) = &ctx.backend {
                    upstream_request.insert_header("host", b.0.addr.to_string())?;
                }
            }
            let ops = &route.request_headers;
            if !ops.is_empty() {
                for n in &ops.remove {
                    upstream_request.remove_header(n);
                }
                for (n, v) in &ops.set {
                    upstream_request.insert_header(n.clone(), v.clone())?;
                }
                for (n, v) in &ops.add {
                    upstream_request.append_header(n.clone(), v.clone())?;
                }
            }
        }
        let _ = session;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if crate::runtime::DRAINING.load(std::sync::atomic::Ordering::Relaxed) {
            session.set_keepalive(None);
            resp.insert_header("connection", "close")?;
        }
        if let Some(route) = ctx.route() {
            let ops = &route.response_headers;
            if !ops.is_empty() {
                for n in &ops.remove {
                    resp.remove_header(n);
                }
                for (n, v) in &ops.set {
                    resp.insert_header(n.clone(), v.clone())?;
                }
                for (n, v) in &ops.add {
                    resp.append_header(n.clone(), v.clone())?;
                }
            }
        }
        if ctx.retries > 0 {
            resp.insert_header("x-retry-count", ctx.retries.to_string())?;
        }
        if let Some(o) = &ctx.rate_limit {
            for (k, v) in crate::ratelimit::headers(o) {
                resp.insert_header(k, v)?;
            }
        }
        if ctx.cache.route {
            let status = crate::cache::status(&session.cache, ctx.cache.bypass);
            crate::cache::decorate(resp, status, &session.cache)?;
            // a background refresh's response reaches no client: not counted
            if session.subrequest_ctx.is_none() {
                crate::cache::STATS.record(status);
            }
            ctx.cache_status = Some(status.as_str());
        }
        edge::decorate(session, resp, ctx)?;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        edge::count_body(ctx, body.as_ref())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        logging::finish(session, e, ctx);
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let reject = ctx.reject.take().unwrap_or_else(|| {
            let (status, code, message) = classify(e);
            Reject::new(status, code, message)
        });
        let status = reject.status;
        let downstream_dead = matches!(e.esource(), ErrorSource::Downstream)
            && matches!(
                e.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        let mut written = 0;
        if !downstream_dead && session.response_written().is_none() {
            if let Err(err) = respond::send(session, &ctx.request_id, &reject, true).await {
                log::debug!("could not send error response: {err}");
            } else {
                written = status;
                ctx.final_status = Some(status);
            }
        }
        ctx.reject = Some(reject);
        FailToProxy {
            error_code: written,
            can_reuse_downstream: false,
        }
    }
}
