// A filter that goes wrong on request: `x-trap` traps (`unreachable`), `x-loop` never
// returns, `x-oom` allocates until its memory cap stops it. Other requests go on.
export * from "@solo-io/proxy-runtime/proxy";
import { RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context } from "@solo-io/proxy-runtime";
import { readConfig } from "./common";

class MisbehaveRoot extends RootContext {
  onConfigure(size: u32): bool {
    readConfig(size);
    return true;
  }
  createContext(context_id: u32): Context {
    return new Misbehave(context_id, this);
  }
}

let sink: ArrayBuffer[] = [];

class Misbehave extends Context {
  constructor(context_id: u32, root: MisbehaveRoot) {
    super(context_id, root);
  }
  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (stream_context.headers.request.get("x-trap").length > 0) {
      unreachable();
    }
    if (stream_context.headers.request.get("x-loop").length > 0) {
      let n: u64 = 0;
      while (n != u64.MAX_VALUE) { n = n * 3 + 1; if (n == 7) break; }
    }
    if (stream_context.headers.request.get("x-oom").length > 0) {
      for (let i = 0; i < 100000; i++) {
        sink.push(new ArrayBuffer(1 << 20));
      }
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new MisbehaveRoot(context_id); }, "misbehave");
