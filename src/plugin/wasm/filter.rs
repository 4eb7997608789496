//! A proxy-wasm filter as a [`Plugin`] of the route's chain: each request's [`Filter`] is one
//! HTTP context on an instance checked out of the filter's pool, given back in `log`.

use super::{Local, Outcome, Props, Stream, WasmFilter};
use crate::plugin::{Filter, Flow, LocalResponse, PhaseCtx, Plugin, RequestInfo};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};

pub struct WasmPlugin {
    filter: WasmFilter,
    buffer_request_body: bool,
}

impl WasmPlugin {
    pub fn new(filter: WasmFilter, buffer_request_body: bool) -> WasmPlugin {
        WasmPlugin {
            filter,
            buffer_request_body,
        }
    }

    pub fn filter(&self) -> &WasmFilter {
        &self.filter
    }
}

impl Plugin for WasmPlugin {
    fn name(&self) -> &str {
        self.filter.name()
    }

    fn start(&self, info: &RequestInfo<'_>) -> Box<dyn Filter> {
        let props = Props {
            request_id: info.request_id.to_string(),
            client_ip: info.client_ip,
            tls: info.view.https,
            identity: info.identity.cloned(),
            method: None,
            uri: None,
            version: None,
            status: 0,
        };
        Box::new(WasmRequest {
            stream: self.filter.stream(props),
            buffer_request_body: self.buffer_request_body,
        })
    }
}

struct WasmRequest {
    stream: Stream,
    buffer_request_body: bool,
}

fn flow(o: Outcome) -> Flow {
    match o {
        Outcome::Continue => Flow::Continue,
        Outcome::Respond(Local {
            status,
            headers,
            body,
        }) => Flow::Respond(LocalResponse {
            status,
            headers,
            body,
            reason: None,
        }),
        Outcome::Failed(f) => Flow::Error(format!("wasm filter {f}")),
    }
}

#[async_trait]
impl Filter for WasmRequest {
    async fn request_head(&mut self, cx: &mut PhaseCtx<'_>, req: &mut RequestHeader) -> Flow {
        if self.buffer_request_body {
            cx.read_whole_body();
        }
        flow(self.stream.request_headers(req).await)
    }

    async fn request_body(
        &mut self,
        _cx: &mut PhaseCtx<'_>,
        chunk: &mut Option<Bytes>,
        end: bool,
    ) -> Flow {
        flow(self.stream.body(false, chunk, end))
    }

    fn response_head(&mut self, _cx: &mut PhaseCtx<'_>, resp: &mut ResponseHeader) -> Flow {
        flow(self.stream.response_headers(resp))
    }

    fn response_body(
        &mut self,
        _cx: &mut PhaseCtx<'_>,
        chunk: &mut Option<Bytes>,
        end: bool,
    ) -> Flow {
        flow(self.stream.body(true, chunk, end))
    }

    fn log(&mut self, _cx: &PhaseCtx<'_>, status: u16) {
        self.stream.finish(status);
    }
}
