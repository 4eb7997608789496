//! The HTTP context of one request: the callbacks in request order, on an instance checked
//! out of the filter's pool.
//!
//! The request or response head is swapped into the instance's host state for the length of
//! a header callback and swapped back after it (no copy). A body callback that holds the
//! stream (`StopIterationAndBuffer` and friends) makes the gateway keep the bytes and hand
//! them, with what follows, to the next callback; nothing is passed on until a callback
//! continues or the body ends. An HTTP call a filter makes in `on_request_headers` is
//! performed when the callback returns; `proxy_on_http_call_response` then runs on the root
//! context, as in Envoy, and the request goes on when it has answered.

use super::abi::{self, ROOT_CONTEXT};
use super::host::{CallResponse, Local, PendingCall, Props};
use super::metrics::WASM_METRICS;
use super::pool::{Failure, Instance, Pool};
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// What a callback decided.
#[derive(Debug)]
pub enum Outcome {
    Continue,
    Respond(Local),
    Failed(Failure),
}

/// One request's context in one filter.
pub struct Stream {
    pool: Arc<Pool>,
    inst: Option<Box<Instance>>,
    /// Why the instance is gone, if it failed before the request could see it.
    failure: Option<Failure>,
    ctx: i32,
    req_held: Option<Vec<u8>>,
    resp_held: Option<Vec<u8>>,
}

impl Stream {
    /// Check an instance out and create the request's context in it.
    pub fn start(pool: Arc<Pool>, props: Props) -> Stream {
        let mut s = Stream {
            pool,
            inst: None,
            failure: None,
            ctx: 0,
            req_held: None,
            resp_held: None,
        };
        match s.pool.take() {
            Ok(mut inst) => {
                inst.store.data_mut().props = props;
                s.ctx = inst.next_context();
                let create = inst.cb.context_create.clone();
                s.inst = Some(inst);
                if let Some(f) = create {
                    let ctx = s.ctx;
                    if let Err(f) = s.with(|i| i.call(&f, (ctx, ROOT_CONTEXT))) {
                        s.fail(f);
                    }
                }
            }
            Err(f) => {
                s.fail(f);
            }
        }
        s
    }

    fn with<R>(
        &mut self,
        f: impl FnOnce(&mut Instance) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        match self.inst.as_mut() {
            Some(i) => f(i),
            None => Err(self
                .failure
                .clone()
                .unwrap_or(Failure::Abi("no instance".into()))),
        }
    }

    /// Count and log a failure, and drop the instance (it may be in any state).
    fn fail(&mut self, f: Failure) -> Outcome {
        let info = &self.pool.info;
        if self.failure.is_none() {
            WASM_METRICS
                .errors
                .with_label_values(&[&*info.route, &*info.name, f.kind()])
                .inc();
            log::warn!(
                "wasm filter `{}` on route `{}` {f}; answering 500",
                info.name,
                info.route
            );
        }
        self.inst = None;
        self.failure = Some(f.clone());
        Outcome::Failed(f)
    }

    fn failed(&self) -> Option<Outcome> {
        self.failure.clone().map(Outcome::Failed)
    }

    /// `proxy_on_request_headers`, then any HTTP calls it made.
    pub async fn request_headers(&mut self, req: &mut RequestHeader) -> Outcome {
        if let Some(o) = self.failed() {
            return o;
        }
        let Some(inst) = self.inst.as_mut() else {
            return Outcome::Continue;
        };
        let host = inst.store.data_mut();
        host.props.method = Some(req.method.clone());
        host.props.uri = Some(req.uri.clone());
        host.props.version = Some(req.version);
        let Some(f) = inst.cb.request_headers.clone() else {
            return Outcome::Continue;
        };
        std::mem::swap(req, &mut host.req);
        host.req_live = true;
        host.can_call = true;
        let count = (host.req.headers.len() + 4) as i32;
        let ctx = self.ctx;
        let r = match inst.call(&f, (ctx, count, 0)) {
            // The calls' future (a connection, a request, a response) is boxed: held inline
            // it made every request's future tens of KiB, copied whether or not a call was
            // made (callgrind: ~11k instructions of memcpy per request with a no-op filter).
            Ok(_) if !inst.store.data().calls.is_empty() => Box::pin(self.run_calls()).await,
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Some(inst) = self.inst.as_mut() {
            let host = inst.store.data_mut();
            std::mem::swap(req, &mut host.req);
            host.req_live = false;
            host.can_call = false;
            // What later phases read as `request.*`: the head as the filter left it.
            host.props.method = Some(req.method.clone());
            host.props.uri = Some(req.uri.clone());
        }
        match r {
            Err(e) => self.fail(e),
            Ok(()) => self.take_local(),
        }
    }

    fn take_local(&mut self) -> Outcome {
        match self
            .inst
            .as_mut()
            .and_then(|i| i.store.data_mut().local.take())
        {
            Some(l) => Outcome::Respond(l),
            None => Outcome::Continue,
        }
    }

    /// Perform the calls the last callback asked for, one at a time, each answered through
    /// `proxy_on_http_call_response`; a local response from one ends the loop.
    async fn run_calls(&mut self) -> Result<(), Failure> {
        let pool = self.pool.clone();
        loop {
            let Some(inst) = self.inst.as_mut() else {
                return Ok(());
            };
            let calls = std::mem::take(&mut inst.store.data_mut().calls);
            if calls.is_empty() {
                return Ok(());
            }
            for call in calls {
                let answer = perform(&pool, &call).await;
                let nh = answer.headers.len() as i32;
                let nb = answer.body.len() as i32;
                let host = inst.store.data_mut();
                host.call_response = Some(answer);
                if let Some(f) = inst.cb.http_call_response.clone() {
                    inst.call(&f, (ROOT_CONTEXT, call.token as i32, nh, nb, 0))?;
                }
                let host = inst.store.data_mut();
                host.call_response = None;
                host.effective = self.ctx;
                if host.local.is_some() {
                    host.calls.clear();
                    return Ok(());
                }
            }
        }
    }

    /// `proxy_on_response_headers`.
    pub fn response_headers(&mut self, resp: &mut ResponseHeader) -> Outcome {
        if let Some(o) = self.failed() {
            return o;
        }
        let Some(inst) = self.inst.as_mut() else {
            return Outcome::Continue;
        };
        let Some(f) = inst.cb.response_headers.clone() else {
            return Outcome::Continue;
        };
        let host = inst.store.data_mut();
        host.props.status = resp.status.as_u16();
        std::mem::swap(resp, &mut host.resp);
        host.resp_live = true;
        let count = (host.resp.headers.len() + 1) as i32;
        let r = inst.call(&f, (self.ctx, count, 0));
        let host = inst.store.data_mut();
        std::mem::swap(resp, &mut host.resp);
        host.resp_live = false;
        match r {
            Err(e) => self.fail(e),
            Ok(_) => self.take_local(),
        }
    }

    /// `proxy_on_request_body` / `proxy_on_response_body` for one chunk.
    pub fn body(&mut self, response: bool, chunk: &mut Option<Bytes>, end: bool) -> Outcome {
        if let Some(o) = self.failed() {
            return o;
        }
        let Some(inst) = self.inst.as_mut() else {
            return Outcome::Continue;
        };
        let cb = if response {
            inst.cb.response_body.clone()
        } else {
            inst.cb.request_body.clone()
        };
        let Some(f) = cb else {
            return Outcome::Continue;
        };
        let incoming = chunk.take().unwrap_or_default();
        let prev = if response {
            self.resp_held.take()
        } else {
            self.req_held.take()
        };
        let body = match prev {
            Some(mut h) => {
                h.extend_from_slice(&incoming);
                Bytes::from(h)
            }
            None => incoming,
        };
        let len = body.len() as i32;
        let host = inst.store.data_mut();
        if response {
            host.resp_body = body;
        } else {
            host.req_body = body;
        }
        let r = inst.call(&f, (self.ctx, len, i32::from(end)));
        let host = inst.store.data_mut();
        let body = std::mem::take(if response {
            &mut host.resp_body
        } else {
            &mut host.req_body
        });
        let action = match r {
            Err(e) => return self.fail(e),
            Ok(a) => a,
        };
        if action == abi::ACTION_CONTINUE || end {
            *chunk = (!body.is_empty() || end).then_some(body);
        } else if response {
            self.resp_held = Some(body.to_vec());
        } else {
            self.req_held = Some(body.to_vec());
        }
        self.take_local()
    }

    /// The request is done: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`, and the
    /// instance goes back to the pool if none of them failed.
    pub fn finish(&mut self, status: u16) {
        let Some(inst) = self.inst.as_mut() else {
            return;
        };
        inst.store.data_mut().props.status = status;
        let ctx = self.ctx;
        let (done, log, delete) = (
            inst.cb.done.clone(),
            inst.cb.log.clone(),
            inst.cb.delete.clone(),
        );
        let r = (|| {
            if let Some(f) = done {
                inst.call(&f, ctx)?;
            }
            if let Some(f) = log {
                inst.call(&f, ctx)?;
            }
            if let Some(f) = delete {
                inst.call(&f, ctx)?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                if let Some(inst) = self.inst.take() {
                    self.pool.give_back(inst);
                }
            }
            Err(e) => {
                self.fail(e);
            }
        }
    }
}

/// Perform one call against the upstream it names; a failed call answers with no headers
/// and no body, which SDKs read as a failure.
async fn perform(pool: &Pool, call: &PendingCall) -> CallResponse {
    let Some((_, target)) = pool
        .info
        .call_targets
        .iter()
        .find(|(n, _)| *n == call.upstream)
    else {
        return CallResponse::default();
    };
    let Some(addr) = target
        .addrs
        .get(call.token as usize % target.addrs.len().max(1))
        .copied()
    else {
        return CallResponse::default();
    };
    let header = |name: &str| {
        call.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let rest: Vec<(String, String)> = call
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(':'))
        .cloned()
        .chain(header(":authority").map(|a| ("host".to_string(), a.to_string())))
        .collect();
    let c = crate::fetch::Call {
        addr,
        tls: target.tls,
        host: header(":authority").unwrap_or(&target.sni),
        method: header(":method").unwrap_or("GET"),
        path: header(":path").unwrap_or("/"),
        headers: &rest,
        body: &call.body,
        timeout: call.timeout,
    };
    match crate::fetch::call(c).await {
        Ok(a) => {
            let mut headers = Vec::with_capacity(a.headers.len() + 1);
            headers.push((":status".to_string(), a.status.to_string()));
            headers.extend(a.headers);
            CallResponse {
                headers,
                body: Bytes::from(a.body),
            }
        }
        Err(e) => {
            log::warn!(
                "wasm filter `{}`: call to upstream `{}` failed: {e}",
                pool.info.name,
                call.upstream
            );
            CallResponse::default()
        }
    }
}
