// Asks the upstream named by the configuration (default `authz`) `GET /check` with the
// request's `x-user` header. A 200 lets the request on with `x-authz: <answer body>`; any
// other answer (or none) is a local 403.
export * from "@solo-io/proxy-runtime/proxy";
import { RootContext, Context, BaseContext, registerRootContext, FilterHeadersStatusValues, stream_context, send_local_response, GrpcStatusValues, HeaderPair, WasmResultValues } from "@solo-io/proxy-runtime";
import { readConfig, readBuffer } from "./common";

const HTTP_CALL_RESPONSE_BODY: i32 = 4;

class CallRoot extends RootContext {
  upstream: string = "authz";
  onConfigure(size: u32): bool {
    let c = readConfig(size);
    if (c.length > 0) this.upstream = c;
    return true;
  }
  createContext(context_id: u32): Context {
    return new Call(context_id, this);
  }
}

function deny(): void {
  send_local_response(403, "authz", String.UTF8.encode("authz said no\n"), [], GrpcStatusValues.PermissionDenied);
}

function answered(origin: Context, headers: u32, body_size: usize, trailers: u32): void {
  let status = stream_context.headers.http_callback.get(":status");
  if (status != "200") {
    deny();
    return;
  }
  let body = readBuffer(HTTP_CALL_RESPONSE_BODY, body_size as u32);
  stream_context.headers.request.add("x-authz", body);
  origin.continueRequest();
}

class Call extends Context {
  constructor(context_id: u32, root: CallRoot) {
    super(context_id, root);
  }
  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let root = this.root_context as CallRoot;
    let user = stream_context.headers.request.get("x-user");
    let headers: HeaderPair[] = [
      new HeaderPair(String.UTF8.encode(":method"), String.UTF8.encode("GET")),
      new HeaderPair(String.UTF8.encode(":path"), String.UTF8.encode("/check")),
      new HeaderPair(String.UTF8.encode(":authority"), String.UTF8.encode(root.upstream)),
      new HeaderPair(String.UTF8.encode("x-user"), String.UTF8.encode(user)),
    ];
    let r = root.httpCall(root.upstream, headers, new ArrayBuffer(0), [], 2000, this, answered);
    if (r != WasmResultValues.Ok) {
      deny();
    }
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32) => { return new CallRoot(context_id); }, "http_call");
