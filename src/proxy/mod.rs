//! The one `ProxyHttp` implementation. Each phase is a few lines that hand the request to
//! the module doing that step:
//!
//! - `request`: the request head (`early_request_filter`) and admission (`request_filter`),
//!   with `admission` for the edge checks before auth and `forwarded` for client addresses;
//! - `caching`: the response cache's callbacks;
//! - `peer`: the backend of each attempt, the request sent to it, its response header;
//!   `attempt` keeps the attempts' state and decides retries;
//! - `response_headers`: what every response gets on its way out (`response_filter`);
//! - `answer`: the responses the gateway writes itself (refusals, `fail_to_proxy`);
//! - `plugins`: the route's plugins (`crate::plugin`) in every phase they may act in;
//! - `logging`: metrics, spans and the access-log line.
//!
//! `ctx::Ctx` is the state they share for one request.

pub mod admission;
pub mod answer;
pub mod attempt;
pub mod caching;
pub mod ctx;
pub mod forwarded;
pub mod logging;
pub mod peer;
pub mod plugins;
pub mod request;
pub mod response_headers;

use crate::runtime::Runtime;
use async_trait::async_trait;
use ctx::Ctx;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
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

    /// Pingora calls this once per request (subrequests included) right before
    /// `early_request_filter`: the request is served by the snapshot current on arrival.
    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.runtime.snapshot())
    }

    fn invalid_request_response(&self, e: &Error) -> Option<(ResponseHeader, bytes::Bytes)> {
        answer::invalid_request(e)
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        request::begin(session, ctx).await
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
        if ctx.attempts.take_fresh_connection() {
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
        let retry = attempt::after_connect_error(session, ctx, &e);
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
        let retry = attempt::after_proxy_error(session, ctx, &e, client_reused);
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
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        peer::prepare_request(session, upstream_request, ctx)?;
        plugins::upstream_request(session, upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        response_headers::decorate(session, resp, ctx)?;
        plugins::response_head(session, resp, ctx)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        plugins::response_body(session, body, end_of_stream, ctx)?;
        Ok(None)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !ctx.plugins.on() {
            return admission::count_body(ctx, body.as_ref());
        }
        // a body read whole for the plugins was counted while it was read
        if !ctx.plugins.body_read() {
            admission::count_body(ctx, body.as_ref())?;
        }
        plugins::request_body(session, body, end_of_stream, ctx).await
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, e: &Error) -> bool {
        // a client hanging up is logged at INFO as a 499 by `logging::finish`; a plugin
        // that ended the request was logged by `plugins` (its failure) or is not an error
        logging::client_gone(e) || ctx.plugins.stopped()
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
            && ctx.attempts.wants_fresh_connection();
        if routine {
            log::debug!("resending on a fresh connection: {e}");
        }
        routine
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        plugins::log(session, e, ctx);
        logging::finish(session, e, ctx);
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        answer::fail(session, e, ctx).await
    }
}
