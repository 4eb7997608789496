//! The one `ProxyHttp` implementation. Each phase reads like the request flow in the
//! design notes and delegates to the modules that do the work.

pub mod attempt;
pub mod caching;
pub mod ctx;
pub mod edge;
pub mod forwarded;
pub mod logging;
pub mod peer;
pub mod request;
pub mod respond;
pub mod response;

use crate::runtime::Runtime;
use crate::upstream::retry::Failure;
use async_trait::async_trait;
use ctx::Ctx;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

pub struct Gateway {
    pub runtime: Arc<Runtime>,
}

impl Gateway {
    pub fn new(runtime: Arc<Runtime>) -> Gateway {
        Gateway { runtime }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    fn invalid_request_response(&self, e: &Error) -> Option<(ResponseHeader, bytes::Bytes)> {
        respond::invalid_request(e)
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        request::begin(&self.runtime, session, ctx).await
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        request::admit(session, ctx).await
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        caching::enable(session, ctx)
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        caching::cache_key(session, ctx)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        Ok(caching::hit(session, meta, is_fresh, ctx))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        Ok(caching::response_cacheable(session, resp, ctx))
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<bool> {
        Ok(caching::not_modified(session.req_header(), resp))
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        caching::only_if_cached(session, ctx).await
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
            caching::stale_instead_of_error(ctx, e);
        }
        serve
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut peer = peer::choose(session, ctx).await?;
        if std::mem::take(&mut ctx.fresh_connection) {
            attempt::fresh_connection(&mut peer);
        }
        Ok(peer)
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
        match attempt::stale_connection(session, ctx, &e, client_reused) {
            attempt::Stale::Retry => {
                e.set_retry(true);
                return e;
            }
            attempt::Stale::Fail => {
                e.set_retry(false);
                return e;
            }
            attempt::Stale::No => {}
        }
        let Some(failure) = attempt::classify(&e) else {
            // the client went away or the gateway failed: not the backend's fault
            e.set_retry(false);
            return e;
        };
        attempt::record_failure(ctx);
        let retry = attempt::should_retry(session, ctx, failure, true, false);
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
        peer::on_response(session, resp, ctx)?;
        caching::upstream_response(session, resp, ctx);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        peer::prepare_request(upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        response::decorate(session, resp, ctx)
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

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        // a client hanging up is logged at INFO as a 499 by `logging::finish`
        logging::client_gone(e)
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &Ctx,
        e: &Error,
        context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        // a stale pooled connection resent on a fresh one is routine: counted in
        // portcullis_upstream_stale_connection_retries_total, logged at debug
        let routine = matches!(context, pingora_proxy::ProxyWarnLogContext::UpstreamRetry)
            && ctx.fresh_connection;
        if routine {
            log::debug!("resending on a fresh connection: {e}");
        }
        routine
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        logging::finish(session, e, ctx);
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        respond::fail(session, e, ctx).await
    }
}
