//! Glue between the proxy phases and the response cache (`crate::cache`).

use super::answer;
use super::ctx::Ctx;
use crate::reject::Reject;
use pingora_cache::{
    CacheKey, CacheMeta, CachePhase, ForcedFreshness, NoCacheReason, RespCacheable,
};
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// `request_cache_filter`: turn the cache on for eligible requests on caching routes.
pub fn enable(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
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
    let lock_wait = ctx.snapshot.config.cache.lock_timeout.get();
    crate::cache::enable(&mut session.cache, lock_wait);
    Ok(())
}

/// The cache key of this request, from the route, the identity and the request.
pub fn cache_key(session: &Session, ctx: &Ctx) -> Result<CacheKey> {
    let Some((route, route_cache)) = ctx.route().and_then(|r| Some((r, r.cache.as_deref()?)))
    else {
        return Error::e_explain(
            ErrorType::InternalError,
            "cache key without a caching route",
        );
    };
    let credential_param = credential_param(ctx);
    let Some(view) = ctx.view.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "cache key without a request view");
    };
    let input = crate::cache::key::KeyInput {
        req: session.req_header(),
        path: &view.path,
        query: view.query.as_deref(),
        authority: &view.authority,
        route_id: &route.cache_id,
        route: route_cache,
        identity: ctx.identity.as_deref(),
        credential_param,
    };
    Ok(crate::cache::key::build(&input))
}

/// A query parameter that carried the API key: removed before forwarding, so not keyed.
fn credential_param(ctx: &Ctx) -> Option<&str> {
    if !ctx.strip_key_param {
        return None;
    }
    ctx.snapshot
        .auth
        .api_keys
        .as_ref()
        .and_then(|k| k.query_param.as_deref())
}

/// `upstream_response_filter`, for the cache: a response to be stored loses the fields its
/// `Connection` names; the `304` answering a revalidation is kept to update the stored
/// headers with; a successful unsafe request invalidates what is stored for its URI.
pub fn upstream_response(session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) {
    let status = resp.status.as_u16();
    if session.cache.enabled() && status != 101 {
        crate::cache::stored::remove_connection_listed(resp);
        if status == 304 && session.cache.phase() == CachePhase::Stale {
            ctx.cache.not_modified = Some(Box::new(resp.clone()));
        }
    }
    if crate::cache::invalidate::is_unsafe(&session.req_header().method)
        && crate::cache::storage().entries() > 0
    {
        let Some(view) = ctx.view.as_ref() else {
            return;
        };
        let req = crate::cache::invalidate::Request {
            path: &view.path,
            query: view.query.as_deref(),
            authority: &view.authority,
            credential_param: credential_param(ctx),
        };
        let mut removed = 0;
        for prefix in crate::cache::invalidate::prefixes(&req, resp) {
            removed += crate::cache::storage().purge_prefix(&prefix);
        }
        crate::cache::STATS.record_invalidated(removed);
    }
}

/// `response_cache_filter`: after a `304`, the stored response updated by it is what is
/// judged (and stored again).
pub fn response_cacheable(
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut Ctx,
) -> RespCacheable {
    let Some(rc) = ctx.route().and_then(|r| r.cache.as_deref()) else {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("no cache route"));
    };
    let req = session.req_header();
    let revalidated = ctx
        .cache
        .not_modified
        .as_deref()
        .zip(session.cache.maybe_cache_meta())
        .filter(|_| session.cache.phase() == CachePhase::Stale);
    match revalidated {
        Some((update, meta)) => {
            let merged = crate::cache::stored::merge_304(meta.response_header(), update);
            crate::cache::policy::response(rc, req, &merged)
        }
        None => crate::cache::policy::response(rc, req, resp),
    }
}

/// `cache_hit_filter`: the request's `Cache-Control` against the entry.
pub fn hit(
    session: &Session,
    meta: &CacheMeta,
    is_fresh: bool,
    ctx: &Ctx,
) -> Option<ForcedFreshness> {
    let rc = ctx.route().and_then(|r| r.cache.as_deref())?;
    crate::cache::hit_filter(rc, session.req_header(), meta, is_fresh)
}

/// `proxy_upstream_filter`: a request with `Cache-Control: only-if-cached` that would have to
/// go to the upstream gets a 504 instead (RFC 9111 §5.2.1.7). Returns whether to proxy.
pub async fn only_if_cached(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    if !ctx.cache.route || session.subrequest_ctx.is_some() {
        return Ok(true);
    }
    if !crate::cache::freshness::RequestDirectives::new(session.req_header()).only_if_cached {
        return Ok(true);
    }
    let reject = Reject::new(
        504,
        "not_cached",
        "only-if-cached: no stored response can answer this request",
    );
    answer::send(session, &ctx.request_id, &reject, false).await?;
    ctx.outcome.refused(&reject, true);
    Ok(false)
}

/// `cache_not_modified_filter`: a stored `200` answers a conditional request with `304` when
/// its validators match; `If-Modified-Since` is compared with `Last-Modified`, or with `Date`
/// when the stored response has no `Last-Modified` (RFC 9111 §4.3.2).
pub fn not_modified(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    use http::header::{DATE, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
    if pingora_core::protocols::http::conditional_filter::not_modified_filter(req, resp) {
        return true;
    }
    if resp.status != 200
        || req.headers.contains_key(IF_NONE_MATCH)
        || resp.headers.contains_key(LAST_MODIFIED)
    {
        return false;
    }
    let date =
        |v: Option<&http::HeaderValue>| v.and_then(|v| crate::cache::dates::parse(v.as_bytes()));
    match (
        date(req.headers.get(IF_MODIFIED_SINCE)),
        date(resp.headers.get(DATE)),
    ) {
        (Some(since), Some(d)) => since >= d,
        _ => false,
    }
}

/// A stale entry is about to be served instead of an upstream failure: the failure still
/// counts on the backend's breaker, and no error response is pending any more.
pub fn stale_instead_of_error(ctx: &mut Ctx, e: &Error) {
    if let (ErrorType::HTTPStatus(code), ErrorSource::Upstream) = (e.etype(), e.esource()) {
        if ctx
            .attempts
            .upstream
            .as_ref()
            .is_some_and(|u| u.is_failure_status(*code))
        {
            ctx.attempts.record(true);
        }
    }
    drop(ctx.take_pending());
}
