//! The request side: request id, trace context, client address, limits and routing
//! (`early_request_filter`), then edge rules, auth and rate limits (`request_filter`).

use super::ctx::{Ctx, Trace};
use super::{admission, answer, forwarded, response_headers};
use crate::observe::request_id;
use crate::reject::Reject;
use crate::routing::{self, Lookup};
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// `early_request_filter`: everything decided from the request head alone.
pub async fn begin(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    crate::observe::metrics::METRICS.in_flight.inc();
    ctx.in_flight = true;
    let tc = crate::observe::trace::next(
        session
            .req_header()
            .headers
            .get("traceparent")
            .map(|v| v.as_bytes()),
    );
    let snap = ctx.snapshot.clone();
    let exported = crate::observe::otlp::sample(snap.config.tracing.as_ref(), tc.parent_sampled);
    ctx.trace = Trace::new(tc, exported);
    let incoming = session.req_header().headers.get("x-request-id");
    ctx.request_id = match incoming {
        Some(v) if request_id::is_valid(v.as_bytes()) => v.to_str().unwrap_or_default().to_string(),
        _ => request_id::generate(),
    };
    ctx.client.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    if let Some(peer) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        let (client, trusted) = forwarded::client_ip(&snap, peer, session.req_header());
        ctx.client.peer = Some(peer);
        ctx.client.ip = Some(client);
        ctx.client.peer_trusted = trusted;
    }
    if let Some(reject) = snap.edge_limits.check_head(session.req_header()) {
        ctx.refuse(reject);
        return Ok(());
    }
    // one canonical view of the request, before anything is decided on it
    if let Err(why) = crate::edge::headers::scrub(
        session.req_header_mut(),
        &snap.header_policy,
        ctx.client.peer_trusted,
    ) {
        ctx.refuse(Reject::new(400, "bad_request", why));
        return Ok(());
    }
    match request_view(session, ctx.client.tls, snap.escaped_slashes) {
        Ok(v) => ctx.view = Some(v),
        Err(e) => {
            ctx.refuse(Reject::new(400, "bad_request", e.message()));
            return Ok(());
        }
    }
    route_request(session, ctx);
    response_headers::enable_compression(session, ctx);
    Ok(())
}

/// The canonical view of the request (`crate::view`) from its head.
pub(super) fn request_view(
    session: &Session,
    tls: bool,
    slashes: crate::routing::path::EscapedSlashes,
) -> Result<crate::view::RequestView, crate::view::ViewError> {
    let req = session.req_header();
    let mut hosts: [&[u8]; 2] = [b""; 2];
    let mut n = 0;
    for h in req.headers.get_all(http::header::HOST) {
        if n == hosts.len() {
            break;
        }
        hosts[n] = h.as_bytes();
        n += 1;
    }
    let h2_authority = if req.version == http::Version::HTTP_2 {
        req.uri.authority().map(|a| a.as_str())
    } else {
        None
    };
    crate::view::build(
        &crate::view::Head {
            target: req.raw_path(),
            method: &req.method,
            version: req.version,
            hosts: &hosts[..n],
            h2_authority,
            tls,
        },
        slashes,
    )
}

/// `request_filter`: edge rules, auth, rate limits. `Ok(true)` when the response is sent.
pub async fn admit(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    if !ctx.refusing() {
        if let Some(preflight) = admission::before_auth(session, ctx) {
            answer::preflight(session, ctx, preflight).await?;
            return Ok(true);
        }
    }
    if !ctx.refusing() {
        authenticate(session, ctx).await;
    }
    // a background cache refresh (stale-while-revalidate) is the gateway's own request:
    // it does not spend the client's rate limit
    if !ctx.refusing() && session.subrequest_ctx.is_none() {
        rate_limit(session, ctx);
    }
    // boxed: inline, the plugins' future would grow this one, which every request's
    // `request_filter` copies, on routes without plugins too
    if !ctx.refusing()
        && super::plugins::wanted(ctx)
        && Box::pin(super::plugins::admit(session, ctx)).await?
    {
        return Ok(true);
    }
    answer::pending_refusal(session, ctx).await
}

/// Route the request by its canonical view: match host + path + method, compute the
/// forwarded URI. Any problem becomes a pending refusal.
fn route_request(session: &Session, ctx: &mut Ctx) {
    let snap = ctx.snapshot.clone();
    let Some(view) = ctx.view.as_ref() else {
        return;
    };
    let req = session.req_header();
    if view.form == crate::view::Form::Asterisk {
        // `OPTIONS *` asks about the server, not a resource: no route, no upstream
        ctx.refuse(
            Reject::new(400, "bad_request", "`OPTIONS *` is not forwarded")
                .header("allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
        );
        return;
    }
    let segs = routing::segments(&view.path);
    // a CORS preflight is routed as the request it announces
    let preflight_method = crate::edge::is_preflight(req)
        .then(|| req.headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD))
        .flatten()
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
    let method = preflight_method.as_ref().unwrap_or(&req.method);
    match snap.router.lookup(&view.host, &segs, method, &req.headers) {
        Lookup::Found(i) => {
            ctx.route = Some(i);
            let route = &snap.routes[i];
            let new_path: Option<String> = if let Some(rw) = &route.rewrite {
                Some(rw.apply(&segs))
            } else if let Some(prefix) = &route.strip_prefix {
                routing::pattern::strip_prefix(&view.path, prefix).map(str::to_string)
            } else {
                None
            }
            // the upstream gets the canonical target, never the bytes received
            .or_else(|| view.target_changed().then(|| view.path.clone()));
            if let Some(p) = new_path {
                let mut uri = p;
                if let Some(q) = &view.query {
                    uri.push('?');
                    uri.push_str(q);
                }
                ctx.forward_uri = Some(uri);
            }
        }
        Lookup::MethodNotAllowed(m) => {
            ctx.refuse(
                Reject::new(
                    405,
                    "method_not_allowed",
                    format!("{} is not allowed here", req.method),
                )
                .header("allow", m.allow_header()),
            );
        }
        Lookup::NotFound => {
            ctx.refuse(Reject::new(
                404,
                "not_found",
                "no route matches this request",
            ));
        }
    }
}

/// Apply the route's rate-limit policies; a rejection becomes a pending refusal (429).
fn rate_limit(session: &Session, ctx: &mut Ctx) {
    let snap = ctx.snapshot.clone();
    let Some(route) = ctx.route() else { return };
    if route.rate_limit.is_empty() {
        return;
    }
    let input = crate::ratelimit::KeyInput {
        identity: ctx.identity.as_deref(),
        client_ip: ctx.client.ip,
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
                reject = reject.header(k.as_str(), v);
            }
            ctx.rate_limit = Some(outcome);
            ctx.refuse(reject);
        }
    }
}

/// Verify the route's credentials; a failure becomes a pending refusal.
async fn authenticate(session: &Session, ctx: &mut Ctx) {
    let snap = ctx.snapshot.clone();
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
            ctx.refuse(auth_reject(&f));
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
pub(super) fn identity_headers(req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    let snap = &ctx.snapshot;
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
