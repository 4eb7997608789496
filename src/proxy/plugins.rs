//! The route's plugins (`crate::plugin`) on the request path: their filters are started in
//! `request_filter` after auth and rate limits, and each phase runs them in the route's
//! order. A route without plugins costs one empty-list check per phase: no filter, no
//! allocation.
//!
//! What a filter decides is applied here: a local answer is written at once where the
//! gateway can (`request_filter`), or kept in [`Plugins::local`] for `fail_to_proxy` to write
//! (the upstream phases and the response head, where the way out is an error); a failure is a
//! 500 `plugin_error`, counted in `portcullis_plugin_errors_total{route,plugin}`.

use super::ctx::Ctx;
use super::{answer, logging};
use crate::plugin::{Filter, Flow, LocalResponse, PhaseCtx, RequestInfo, Vars};
use crate::reject::Reject;
use crate::snapshot::{Route, Snapshot};
use bytes::Bytes;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::sync::Arc;

/// One request's plugin state: nothing (and nothing allocated) until the route's filters
/// start, so a route without plugins adds one pointer to the context and one null check
/// per phase.
#[derive(Default)]
pub struct Plugins(Option<Box<Run>>);

/// The state of a request whose route runs plugins.
struct Run {
    /// One filter per plugin of the route, in its order. The mutex is never locked (only
    /// `get_mut`): it makes the context `Sync`, as Pingora requires, while a filter need
    /// only be `Send`.
    filters: std::sync::Mutex<Vec<Box<dyn Filter>>>,
    vars: Vars,
    method: http::Method,
    /// A filter asked for the whole request body in `request_head`.
    whole_body: bool,
    /// The body was read whole in `request_filter` and shown to the filters: the copy that
    /// goes upstream is Pingora's buffer (or [`Run::replacement`]).
    body_read: bool,
    /// What the filters made of the whole body, when they changed it.
    replacement: Option<Option<Bytes>>,
    /// A local answer decided where it could not be written: `fail_to_proxy` writes it.
    local: Option<LocalResponse>,
    /// A filter ended a phase (its answer or its failure is the request's outcome): the
    /// error Pingora sees for it is not logged again.
    stopped: bool,
}

impl Plugins {
    /// The route's filters were started for this request.
    pub fn on(&self) -> bool {
        self.0.is_some()
    }

    /// What the request's filters set for each other.
    pub fn vars(&self) -> Option<&Vars> {
        self.0.as_ref().map(|r| &r.vars)
    }

    /// The request body was read whole for the filters (and counted while it was read).
    pub fn body_read(&self) -> bool {
        self.0.as_ref().is_some_and(|r| r.body_read)
    }

    /// A filter ended the request.
    pub fn stopped(&self) -> bool {
        self.0.as_ref().is_some_and(|r| r.stopped)
    }

    /// The local answer a filter left for `fail_to_proxy`.
    pub fn take_local(&mut self) -> Option<LocalResponse> {
        self.0.as_mut()?.local.take()
    }

    fn run(&mut self) -> Option<&mut Run> {
        self.0.as_deref_mut()
    }
}

/// The filters and the context of one phase, borrowed apart from the rest of `ctx`.
fn phase<'a>(
    ctx: &'a mut Ctx,
    route: &'a Route,
    request: Option<&'a RequestHeader>,
) -> Option<(&'a mut Vec<Box<dyn Filter>>, PhaseCtx<'a>)> {
    let Ctx {
        view,
        identity,
        client,
        request_id,
        plugins,
        ..
    } = ctx;
    let view = view.as_ref()?;
    let Run {
        filters,
        vars,
        method,
        whole_body,
        ..
    } = plugins.run()?;
    let filters = filters
        .get_mut()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cx = PhaseCtx::new(
        &route.name,
        view,
        method,
        identity.as_deref(),
        client.ip,
        request_id,
        request,
        vars,
        whole_body,
    );
    Some((filters, cx))
}

/// The route of a request whose filters run (the snapshot is kept apart from `ctx`).
fn route_of(ctx: &Ctx) -> Option<(Arc<Snapshot>, usize)> {
    if !ctx.plugins.on() {
        return None;
    }
    let i = ctx.route?;
    ctx.snapshot.routes.get(i)?;
    Some((ctx.snapshot.clone(), i))
}

/// The route lists plugins: `request_filter` starts them ([`admit`]).
pub fn wanted(ctx: &Ctx) -> bool {
    ctx.route()
        .is_some_and(|r| !r.plugins.is_empty() && ctx.view.is_some())
}

/// What stopped a phase, made into what the gateway does: a local answer or a refusal.
enum Stop {
    Respond(LocalResponse),
    Fail(Reject),
}

/// The flow filter `i` of `route` ended a phase with.
fn stop(route: &Route, i: usize, flow: Flow, request_id: &str) -> Option<Stop> {
    let name = route.plugins.get(i).map_or("?", |p| p.name());
    let failed = |why: String| {
        log::error!(
            "plugin `{name}` on route `{}` failed: {why} (request {request_id})",
            route.name
        );
        crate::observe::metrics::plugin_error(&route.name, name);
        Stop::Fail(Reject::new(
            500,
            "plugin_error",
            format!("plugin `{name}` failed"),
        ))
    };
    match flow {
        Flow::Continue => None,
        Flow::Respond(l) if (200..=599).contains(&l.status) => Some(Stop::Respond(l)),
        Flow::Respond(l) => Some(failed(format!(
            "it answered with status {}, not 200-599",
            l.status
        ))),
        Flow::Error(why) => Some(failed(why)),
    }
}

/// `request_filter`, after auth and rate limits: start the route's filters and run their
/// `request_head` (and `request_body` on the whole body, when one asked for it).
/// `Ok(true)` when a response was written; a refusal is left pending for the caller.
pub async fn admit(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let snap = ctx.snapshot.clone();
    let Some(route) = ctx.route.and_then(|i| snap.routes.get(i)) else {
        return Ok(false);
    };
    start(session, ctx, route);
    let uri = session.req_header().uri.clone();
    let host = session
        .req_header()
        .headers
        .get(http::header::HOST)
        .cloned();
    let mut outcome = request_head(session, ctx, route).await;
    let req = session.req_header();
    let new_target = req.uri != uri;
    if outcome.is_none() && (new_target || req.headers.get(http::header::HOST) != host.as_ref()) {
        if let Err(r) = reframe(session, ctx, new_target) {
            ctx.refuse(r);
            return Ok(false);
        }
    }
    if outcome.is_none() && ctx.plugins.run().is_some_and(|r| r.whole_body) {
        // boxed: reading the body (and `100 Continue`) is the rare case
        if let Some(refusal) = Box::pin(read_body(session, ctx, route)).await? {
            ctx.refuse(refusal);
            return Ok(false);
        }
        outcome = whole_body(session, ctx, route).await;
    }
    match outcome {
        None => Ok(false),
        Some(Stop::Fail(r)) => {
            mark_stopped(ctx);
            ctx.refuse(r);
            Ok(false)
        }
        Some(Stop::Respond(l)) => {
            mark_stopped(ctx);
            // a body not read yet is drained after the answer, as for any refusal here
            answer::local(session, ctx, &l, false).await?;
            Ok(true)
        }
    }
}

/// A filter changed the request's target or Host: the canonical view is derived again from
/// what it set, with the same checks as the client's request, so that the cache key, the
/// access log and the request sent upstream follow the new target (the route stays the one
/// chosen: a filter rewrites, it does not re-route). An ambiguous target is a 400. A new
/// target replaces the route's own rewrite.
fn reframe(session: &Session, ctx: &mut Ctx, new_target: bool) -> std::result::Result<(), Reject> {
    let view = super::request::request_view(session, ctx.client.tls, ctx.snapshot.escaped_slashes)
        .map_err(|e| {
            Reject::new(
                400,
                "bad_request",
                format!("the target a plugin set is refused: {}", e.message()),
            )
        })?;
    if new_target {
        // the target a filter set replaces the route's rewrite, in its canonical form
        ctx.forward_uri = view.target_changed().then(|| view.path_and_query());
    }
    ctx.view = Some(view);
    Ok(())
}

fn start(session: &Session, ctx: &mut Ctx, route: &Route) {
    let Some(view) = ctx.view.as_ref() else {
        return;
    };
    let req = session.req_header();
    let info = RequestInfo {
        route: &route.name,
        view,
        method: &req.method,
        identity: ctx.identity.as_ref(),
        client_ip: ctx.client.ip,
        request_id: &ctx.request_id,
        headers: &req.headers,
    };
    let filters: Vec<Box<dyn Filter>> = route.plugins.iter().map(|p| p.start(&info)).collect();
    ctx.plugins = Plugins(Some(Box::new(Run {
        filters: std::sync::Mutex::new(filters),
        vars: Vars::default(),
        method: req.method.clone(),
        whole_body: false,
        body_read: false,
        replacement: None,
        local: None,
        stopped: false,
    })));
}

fn mark_stopped(ctx: &mut Ctx) {
    if let Some(r) = ctx.plugins.run() {
        r.stopped = true;
    }
}

async fn request_head(session: &mut Session, ctx: &mut Ctx, route: &Route) -> Option<Stop> {
    let req = session.req_header_mut();
    let (filters, mut cx) = phase(ctx, route, None)?;
    let mut ended = None;
    for (i, f) in filters.iter_mut().enumerate() {
        match f.request_head(&mut cx, req).await {
            Flow::Continue => {}
            flow => {
                ended = Some((i, flow));
                break;
            }
        }
    }
    let (i, flow) = ended?;
    stop(route, i, flow, &ctx.request_id)
}

/// Read the whole request body into Pingora's body buffer (the one a retry replays, which
/// then goes upstream). A refusal when it is longer than the buffer or the route's limit.
async fn read_body(session: &mut Session, ctx: &mut Ctx, route: &Route) -> Result<Option<Reject>> {
    let max = route.edge.max_body_bytes;
    let limit = (crate::plugin::BODY_BUFFER_LIMIT as u64).min(max);
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // (the rest of a refused body is drained after the answer, when the connection is
    // kept, as for the route's own body limit)
    if declared.is_some_and(|n| n > limit) {
        return Ok(Some(crate::edge::body_too_large(limit)));
    }
    // a client waiting for `100 Continue` before it sends the body gets it from here (the
    // upstream, which would have sent it, sees the request only once the body is read)
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects {
        session.write_continue_response().await?;
        session
            .req_header_mut()
            .remove_header(&http::header::EXPECT);
    }
    session.as_mut().enable_retry_buffering();
    while let Some(chunk) = session.read_request_body().await? {
        ctx.body_bytes += chunk.len() as u64;
        let over_buffer = session.as_ref().retry_buffer_truncated();
        if over_buffer || ctx.body_bytes > max {
            return Ok(Some(crate::edge::body_too_large(limit)));
        }
    }
    if let Some(r) = ctx.plugins.run() {
        r.body_read = true;
    }
    Ok(None)
}

/// `request_body` once, with the whole body and `end`.
async fn whole_body(session: &mut Session, ctx: &mut Ctx, route: &Route) -> Option<Stop> {
    let body = session
        .as_ref()
        .get_retry_buffer()
        .filter(|b| !b.is_empty());
    let mut chunk = body.clone();
    let ended = {
        let (filters, mut cx) = phase(ctx, route, Some(session.req_header()))?;
        let mut ended = None;
        for (i, f) in filters.iter_mut().enumerate() {
            match f.request_body(&mut cx, &mut chunk, true).await {
                Flow::Continue => {}
                flow => {
                    ended = Some((i, flow));
                    break;
                }
            }
        }
        ended
    };
    if chunk != body {
        if let Some(r) = ctx.plugins.run() {
            r.replacement = Some(chunk);
        }
    }
    let (i, flow) = ended?;
    stop(route, i, flow, &ctx.request_id)
}

/// A stopped phase where the way out is an error: the answer (or the refusal) is kept for
/// `fail_to_proxy`, and the error Pingora gets blames neither the upstream nor the client.
fn defer(ctx: &mut Ctx, s: Stop) -> Result<()> {
    mark_stopped(ctx);
    match s {
        Stop::Respond(l) => {
            if let Some(r) = ctx.plugins.run() {
                r.local = Some(l);
            }
        }
        Stop::Fail(r) => ctx.refuse(r),
    }
    Error::e_explain(ErrorType::InternalError, "a plugin ended the request")
}

/// `request_body_filter`: each chunk as it streams upstream, unless the body was read whole
/// (then the filters saw it already, and what goes upstream is their version of it).
pub async fn request_body(
    session: &Session,
    body: &mut Option<Bytes>,
    end: bool,
    ctx: &mut Ctx,
) -> Result<()> {
    if let Some(run) = ctx.plugins.run().filter(|r| r.body_read) {
        if let Some(r) = &run.replacement {
            // the buffered body is sent whole, once per attempt
            *body = if end { r.clone() } else { None };
        }
        return Ok(());
    }
    let Some((snap, i)) = route_of(ctx) else {
        return Ok(());
    };
    let route = &snap.routes[i];
    let ended = {
        let Some((filters, mut cx)) = phase(ctx, route, Some(session.req_header())) else {
            return Ok(());
        };
        let mut ended = None;
        for (i, f) in filters.iter_mut().enumerate() {
            match f.request_body(&mut cx, body, end).await {
                Flow::Continue => {}
                flow => {
                    ended = Some((i, flow));
                    break;
                }
            }
        }
        ended
    };
    match ended.and_then(|(i, flow)| stop(route, i, flow, &ctx.request_id)) {
        Some(s) => defer(ctx, s),
        None => Ok(()),
    }
}

/// `upstream_request_filter`, after the gateway's own headers: each attempt's request.
pub fn upstream_request(session: &Session, req: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
    let Some((snap, i)) = route_of(ctx) else {
        return Ok(());
    };
    let route = &snap.routes[i];
    if let Some(body) = ctx.plugins.run().and_then(|r| r.replacement.as_ref()) {
        let len = body.as_ref().map_or(0, Bytes::len);
        req.remove_header(&http::header::TRANSFER_ENCODING);
        req.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
    }
    let ended = {
        let Some((filters, mut cx)) = phase(ctx, route, Some(session.req_header())) else {
            return Ok(());
        };
        filters
            .iter_mut()
            .enumerate()
            .map(|(i, f)| (i, f.upstream_request(&mut cx, req)))
            .find(|(_, flow)| !matches!(flow, Flow::Continue))
    };
    match ended.and_then(|(i, flow)| stop(route, i, flow, &ctx.request_id)) {
        Some(s) => defer(ctx, s),
        None => Ok(()),
    }
}

/// `response_filter`, after the gateway's own headers.
pub fn response_head(session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    let Some((snap, i)) = route_of(ctx) else {
        return Ok(());
    };
    let route = &snap.routes[i];
    let ended = {
        let Some((filters, mut cx)) = phase(ctx, route, Some(session.req_header())) else {
            return Ok(());
        };
        filters
            .iter_mut()
            .enumerate()
            .map(|(i, f)| (i, f.response_head(&mut cx, resp)))
            .find(|(_, flow)| !matches!(flow, Flow::Continue))
    };
    match ended.and_then(|(i, flow)| stop(route, i, flow, &ctx.request_id)) {
        Some(s) => defer(ctx, s),
        None => Ok(()),
    }
}

/// `response_body_filter`. A filter that stops here ends the response: its answer (or the
/// 500 `plugin_error`) is written when the head has not gone out yet, else the response is
/// cut short (the connection closed).
pub fn response_body(
    session: &Session,
    body: &mut Option<Bytes>,
    end: bool,
    ctx: &mut Ctx,
) -> Result<()> {
    let Some((snap, i)) = route_of(ctx) else {
        return Ok(());
    };
    let route = &snap.routes[i];
    let ended = {
        let Some((filters, mut cx)) = phase(ctx, route, Some(session.req_header())) else {
            return Ok(());
        };
        filters
            .iter_mut()
            .enumerate()
            .map(|(i, f)| (i, f.response_body(&mut cx, body, end)))
            .find(|(_, flow)| !matches!(flow, Flow::Continue))
    };
    match ended.and_then(|(i, flow)| stop(route, i, flow, &ctx.request_id)) {
        Some(s) => defer(ctx, s),
        None => Ok(()),
    }
}

/// `logging`: each filter hears how the request ended.
pub fn log(session: &Session, e: Option<&Error>, ctx: &mut Ctx) {
    let Some((snap, i)) = route_of(ctx) else {
        return;
    };
    let route = &snap.routes[i];
    let (status, _) = logging::status(session, e, ctx);
    let Some((filters, cx)) = phase(ctx, route, Some(session.req_header())) else {
        return;
    };
    for f in filters.iter_mut() {
        f.log(&cx, status);
    }
}
