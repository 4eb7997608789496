//! Glue between the proxy phases and the response cache (`crate::cache`).

use super::ctx::Ctx;
use pingora_cache::CacheKey;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
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
    let credential_param = if ctx.strip_key_param {
        ctx.snapshot
            .auth
            .api_keys
            .as_ref()
            .and_then(|k| k.query_param.as_deref())
    } else {
        None
    };
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
