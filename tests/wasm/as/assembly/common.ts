// Helpers shared by the test filters.
//
// The SDK's own RootContext.onConfigure (0.1.8) passes the configuration's size where the
// host expects the address to store the size at, and frees a stale buffer when the
// configuration is empty: in Envoy as here, that corrupts the filter's heap. Every test
// filter overrides onConfigure with readConfig, which reads the configuration the way the
// ABI describes.
import { free } from "@solo-io/proxy-runtime/malloc";

// @ts-ignore: decorator
@external("env", "proxy_get_buffer_bytes")
declare function proxy_get_buffer_bytes(typ: i32, start: u32, length: u32, ptr: usize, size: usize): u32;

// @ts-ignore: decorator
@external("env", "proxy_set_buffer_bytes")
export declare function proxy_set_buffer_bytes(typ: i32, start: u32, length: u32, data: usize, size: usize): u32;

const PLUGIN_CONFIGURATION: i32 = 7;

export function readBuffer(typ: i32, size: u32): string {
  if (size == 0) return "";
  let out = new ArrayBuffer(8);
  let p = changetype<usize>(out);
  if (proxy_get_buffer_bytes(typ, 0, size, p, p + 4) != 0) return "";
  let data = load<u32>(p);
  let len = load<u32>(p + 4);
  let s = String.UTF8.decodeUnsafe(data, len);
  free(data);
  return s;
}

export function readConfig(size: u32): string {
  return readBuffer(PLUGIN_CONFIGURATION, size);
}
