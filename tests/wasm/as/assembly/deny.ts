// Answers 403 itself when the request carries the header named by the configuration
// (default `x-deny`); other requests go on.
export * from "@solo-io/proxy-runtime/proxy";
import { RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context, send_local_response, GrpcStatusValues, HeaderPair } from "@solo-io/proxy-runtime";
import { readConfig } from "./common";

class DenyRoot extends RootContext {
  header: string = "x-deny";
  onConfigure(size: u32): bool {
    let c = readConfig(size);
    if (c.length > 0) this.header = c;
    return true;
  }
  createContext(context_id: u32): Context {
    return new Deny(context_id, this);
  }
}

class Deny extends Context {
  header: string;
  constructor(context_id: u32, root: DenyRoot) {
    super(context_id, root);
    this.header = root.header;
  }
  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let v = stream_context.headers.request.get(this.header);
    if (v.length > 0) {
      let headers: HeaderPair[] = [
        new HeaderPair(String.UTF8.encode("content-type"), String.UTF8.encode("text/plain")),
        new HeaderPair(String.UTF8.encode("x-denied-by"), String.UTF8.encode("wasm")),
      ];
      send_local_response(403, "denied", String.UTF8.encode("denied by wasm filter\n"), headers, GrpcStatusValues.PermissionDenied);
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new DenyRoot(context_id); }, "deny");
