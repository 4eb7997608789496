//! The host side of the proxy-wasm ABI: the state one instance's calls see ([`Host`]), the
//! memory helpers every host function uses, and the [`linker`] holding all host functions,
//! grouped by ABI area in the submodules.
//!
//! A request's head is not copied into the instance: the driver swaps the live
//! `RequestHeader` / `ResponseHeader` into [`Host`] for the length of a callback and swaps it
//! back after, so a filter that never reads a header costs no copy.

mod buffers;
mod calls;
mod logging;
mod maps;
mod props;
mod state;

pub use props::Props;
pub use state::shared_data_len;

use super::abi::status;
use super::metrics::FilterMetric;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Caller, Engine, Linker, Memory, ResourceLimiter, TypedFunc};

/// What the config gave one filter: its name, root id, VM id and configuration bytes.
pub struct FilterInfo {
    pub name: Arc<str>,
    pub route: Arc<str>,
    pub root_id: String,
    pub vm_id: String,
    pub config: Bytes,
    pub vm_config: Bytes,
    /// What `proxy_http_call` may name: upstreams of the config, by name.
    pub call_targets: Vec<(String, CallTarget)>,
}

impl FilterInfo {
    /// An empty description (for the engine's own checks).
    pub fn placeholder() -> FilterInfo {
        FilterInfo {
            name: Arc::from(""),
            route: Arc::from(""),
            root_id: String::new(),
            vm_id: String::new(),
            config: Bytes::new(),
            vm_config: Bytes::new(),
            call_targets: Vec::new(),
        }
    }
}

/// Where calls to one upstream name go.
#[derive(Debug, Clone)]
pub struct CallTarget {
    pub addrs: Vec<std::net::SocketAddr>,
    pub tls: bool,
    pub sni: String,
}

/// A local answer a filter asked for (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// An outgoing call a filter asked for (`proxy_http_call`), performed by the driver.
#[derive(Debug, Clone)]
pub struct PendingCall {
    pub token: u32,
    pub upstream: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub timeout: Duration,
}

/// The answer to a [`PendingCall`], visible to `proxy_on_http_call_response`.
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Memory and table limits of one instance. A growth past the cap is refused with a trap and
/// remembered, so the failure is counted as `memory`, not as a plain trap.
pub struct Limits {
    pub max_memory: usize,
    pub hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "memory would grow to {desired} bytes, over the filter's cap of {}",
                self.max_memory
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Everything host functions of one instance read and write.
pub struct Host {
    pub info: Arc<FilterInfo>,
    pub limits: Limits,
    pub memory: Option<Memory>,
    /// `proxy_on_memory_allocate` (0.2.1) or `malloc` (0.2.0).
    pub alloc: Option<TypedFunc<i32, i32>>,
    /// The request head while a request callback runs (`req_live`), else a placeholder.
    pub req: RequestHeader,
    pub req_live: bool,
    pub resp: ResponseHeader,
    pub resp_live: bool,
    /// The body bytes the current body callback sees (one chunk, or what was buffered).
    pub req_body: Bytes,
    pub resp_body: Bytes,
    pub props: Props,
    pub local: Option<Local>,
    /// `proxy_continue_stream` was called (resumes after an HTTP call).
    pub continued: bool,
    pub calls: Vec<PendingCall>,
    /// `proxy_http_call` is allowed now (in request and response callbacks, not in ticks).
    pub can_call: bool,
    pub next_token: u32,
    pub call_response: Option<CallResponse>,
    /// The context the filter runs for (`proxy_set_effective_context`).
    pub effective: i32,
    pub tick_ms: u32,
    pub metrics: Vec<FilterMetric>,
}

impl Host {
    pub fn new(info: Arc<FilterInfo>, max_memory: usize) -> Option<Host> {
        Some(Host {
            info,
            limits: Limits {
                max_memory,
                hit: false,
            },
            memory: None,
            alloc: None,
            req: RequestHeader::build("GET", b"/", None).ok()?,
            req_live: false,
            resp: ResponseHeader::build(200, None).ok()?,
            resp_live: false,
            req_body: Bytes::new(),
            resp_body: Bytes::new(),
            props: Props::default(),
            local: None,
            continued: false,
            calls: Vec::new(),
            can_call: false,
            next_token: 1,
            call_response: None,
            effective: super::abi::ROOT_CONTEXT,
            tick_ms: 0,
            metrics: Vec::new(),
        })
    }

    /// Forget what the last request left behind before the instance goes back to the pool.
    pub fn reset(&mut self) {
        self.req_live = false;
        self.resp_live = false;
        self.req_body = Bytes::new();
        self.resp_body = Bytes::new();
        self.props = Props::default();
        self.local = None;
        self.continued = false;
        self.calls.clear();
        self.can_call = false;
        self.call_response = None;
        self.effective = super::abi::ROOT_CONTEXT;
    }
}

/// A host function's outcome: a `WasmResult` code for the guest, or an error that traps it.
pub type HostResult = wasmtime::Result<i32>;

/// The guest's bytes at `ptr..ptr+len`, copied out.
pub fn read(caller: &mut Caller<'_, Host>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let memory = caller.data().memory?;
    let data = memory.data(&caller);
    let start = usize::try_from(ptr as u32).ok()?;
    let end = start.checked_add(usize::try_from(len as u32).ok()?)?;
    data.get(start..end).map(<[u8]>::to_vec)
}

/// The guest's bytes at `ptr..ptr+len` as a string (lossy: header names and values).
pub fn read_str(caller: &mut Caller<'_, Host>, ptr: i32, len: i32) -> Option<String> {
    read(caller, ptr, len).map(|b| match String::from_utf8(b) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Write `bytes` at the guest address `ptr`.
pub fn write(caller: &mut Caller<'_, Host>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(memory) = caller.data().memory else {
        return false;
    };
    let data = memory.data_mut(caller);
    let Ok(start) = usize::try_from(ptr as u32) else {
        return false;
    };
    let Some(end) = start.checked_add(bytes.len()) else {
        return false;
    };
    match data.get_mut(start..end) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

pub fn write_u32(caller: &mut Caller<'_, Host>, ptr: i32, v: u32) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

/// Hand `bytes` to the guest: allocate with its allocator, copy, and store the address and
/// length at `ptr_ptr` / `size_ptr` (as every proxy-wasm host does; empty gives address 0).
pub fn give(
    caller: &mut Caller<'_, Host>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult {
    let mut addr = 0i32;
    if !bytes.is_empty() {
        let Some(alloc) = caller.data().alloc.clone() else {
            return Ok(status::INVALID_MEMORY_ACCESS);
        };
        let len = i32::try_from(bytes.len()).map_err(|_| wasmtime::format_err!("too large"))?;
        addr = alloc.call(&mut *caller, len)?;
        if addr == 0 || !write(caller, addr, bytes) {
            return Ok(status::INVALID_MEMORY_ACCESS);
        }
    }
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    if !write_u32(caller, ptr_ptr, addr as u32) || !write_u32(caller, size_ptr, len) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

/// Pairs in the proxy-wasm map encoding: count, then (key length, value length) per pair,
/// then each key and value followed by a NUL.
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let mut count = 0u32;
    let mut data = 0usize;
    for (k, v) in pairs.clone() {
        count += 1;
        data += k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(4 + 8 * count as usize + data);
    out.extend_from_slice(&count.to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The pairs of the proxy-wasm map encoding, or `None` when the bytes do not hold one.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        sizes.push((word(4 + 8 * i)?, word(8 + 8 * i)?));
    }
    let mut at = 4 + 8 * count;
    let mut out = Vec::with_capacity(sizes.len());
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for (k, v) in sizes {
        let key = bytes.get(at..at + k)?;
        at += k + 1;
        let value = bytes.get(at..at + v)?;
        at += v + 1;
        out.push((text(key), text(value)));
    }
    Some(out)
}

/// Every host function this gateway provides, for one engine.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<Host>> {
    let mut l = Linker::new(engine);
    logging::add(&mut l)?;
    maps::add(&mut l)?;
    buffers::add(&mut l)?;
    props::add(&mut l)?;
    calls::add(&mut l)?;
    state::add(&mut l)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs = [(&b"a"[..], &b"1"[..]), (&b"bb"[..], &b""[..])];
        let bytes = encode_pairs(pairs.iter().copied());
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        let back = decode_pairs(&bytes).unwrap();
        assert_eq!(
            back,
            vec![("a".into(), "1".into()), ("bb".into(), String::new())]
        );
        assert!(decode_pairs(&bytes[..10]).is_none());
    }
}
