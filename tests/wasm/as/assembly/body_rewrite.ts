// Buffers the request and the response body and replaces every `from` with `to` in both
// (configuration `from=to`, default `hello=HELLO`); drops the response's Content-Length
// since the length may change (the gateway sets the request's when it buffered the body).
export * from "@solo-io/proxy-runtime/proxy";
import { RootContext, Context, registerRootContext, FilterHeadersStatusValues, FilterDataStatusValues, stream_context } from "@solo-io/proxy-runtime";
import { readConfig, readBuffer, proxy_set_buffer_bytes } from "./common";

const HTTP_REQUEST_BODY: i32 = 0;
const HTTP_RESPONSE_BODY: i32 = 1;

class RewriteRoot extends RootContext {
  from: string = "hello";
  to: string = "HELLO";
  onConfigure(size: u32): bool {
    let c = readConfig(size);
    let at = c.indexOf("=");
    if (at > 0) {
      this.from = c.substring(0, at);
      this.to = c.substring(at + 1);
    }
    return true;
  }
  createContext(context_id: u32): Context {
    return new Rewrite(context_id, this);
  }
}

class Rewrite extends Context {
  from: string;
  to: string;
  constructor(context_id: u32, root: RewriteRoot) {
    super(context_id, root);
    this.from = root.from;
    this.to = root.to;
  }
  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.remove("content-length");
    return FilterHeadersStatusValues.Continue;
  }
  rewrite(typ: i32, length: usize, end_of_stream: bool): FilterDataStatusValues {
    if (!end_of_stream) {
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    let body = readBuffer(typ, length as u32);
    let out = String.UTF8.encode(body.replaceAll(this.from, this.to));
    proxy_set_buffer_bytes(typ, 0, length as u32, changetype<usize>(out), out.byteLength);
    return FilterDataStatusValues.Continue;
  }
  onRequestBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    return this.rewrite(HTTP_REQUEST_BODY, body_buffer_length, end_of_stream);
  }
  onResponseBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    return this.rewrite(HTTP_RESPONSE_BODY, body_buffer_length, end_of_stream);
  }
}

registerRootContext((context_id: u32) => { return new RewriteRoot(context_id); }, "body_rewrite");
