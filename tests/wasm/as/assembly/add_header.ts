// Adds `x-wasm-added: <configuration>` to the request going upstream and
// `x-wasm-filter: add-header` to the response.
export * from "@solo-io/proxy-runtime/proxy";
import { RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context } from "@solo-io/proxy-runtime";
import { readConfig } from "./common";

class AddHeaderRoot extends RootContext {
  value: string = "";
  onConfigure(size: u32): bool {
    this.value = readConfig(size);
    return true;
  }
  createContext(context_id: u32): Context {
    return new AddHeader(context_id, this);
  }
}

class AddHeader extends Context {
  value: string;
  constructor(context_id: u32, root: AddHeaderRoot) {
    super(context_id, root);
    this.value = root.value;
  }
  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.request.add("x-wasm-added", this.value);
    return FilterHeadersStatusValues.Continue;
  }
  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-wasm-filter", "add-header");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new AddHeaderRoot(context_id); }, "add_header");
