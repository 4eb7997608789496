//! Buffers: the request and response body the current body callback sees, the body of an
//! HTTP call's response, and the filter's configuration (`config`) and VM configuration.

use super::{give, read, write_u32, Host, HostResult};
use crate::plugin::wasm::abi::{buffer, status};
use bytes::Bytes;
use wasmtime::{Caller, Linker};

fn get(host: &Host, typ: i32) -> Option<Bytes> {
    match typ {
        buffer::HTTP_REQUEST_BODY => Some(host.req_body.clone()),
        buffer::HTTP_RESPONSE_BODY => Some(host.resp_body.clone()),
        buffer::HTTP_CALL_RESPONSE_BODY => host.call_response.as_ref().map(|r| r.body.clone()),
        buffer::VM_CONFIGURATION => Some(host.info.vm_config.clone()),
        buffer::PLUGIN_CONFIGURATION => Some(host.info.config.clone()),
        _ => None,
    }
}

fn get_bytes(
    mut caller: Caller<'_, Host>,
    typ: i32,
    start: i32,
    max: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult {
    let Some(buf) = get(caller.data(), typ) else {
        return Ok(status::NOT_FOUND);
    };
    let start = start as u32 as usize;
    if start > buf.len() {
        return Ok(status::BAD_ARGUMENT);
    }
    let end = start.saturating_add(max as u32 as usize).min(buf.len());
    if end == start {
        // As Envoy does: nothing to copy, nothing written (SDKs that read the configuration
        // unconditionally depend on it).
        return Ok(status::OK);
    }
    give(&mut caller, &buf[start..end], ptr_ptr, size_ptr)
}

fn get_status(mut caller: Caller<'_, Host>, typ: i32, len_ptr: i32, flags_ptr: i32) -> HostResult {
    let Some(buf) = get(caller.data(), typ) else {
        return Ok(status::NOT_FOUND);
    };
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    if !write_u32(&mut caller, len_ptr, len) || !write_u32(&mut caller, flags_ptr, 0) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

/// Replace `start..start+size` of the body with the given bytes (`size` past the end means
/// "to the end": `(0, len)` replaces the whole body, `(len, 0)` appends).
fn set_bytes(
    mut caller: Caller<'_, Host>,
    typ: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> HostResult {
    let Some(data) = read(&mut caller, ptr, len) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let host = caller.data_mut();
    let body = match typ {
        buffer::HTTP_REQUEST_BODY => &mut host.req_body,
        buffer::HTTP_RESPONSE_BODY => &mut host.resp_body,
        _ => return Ok(status::BAD_ARGUMENT),
    };
    let start = start as u32 as usize;
    if start > body.len() {
        return Ok(status::BAD_ARGUMENT);
    }
    let end = start.saturating_add(size as u32 as usize).min(body.len());
    let mut out = Vec::with_capacity(body.len() - (end - start) + data.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(&data);
    out.extend_from_slice(&body[end..]);
    *body = Bytes::from(out);
    Ok(status::OK)
}

pub fn add(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_buffer_bytes", get_bytes)?;
    l.func_wrap("env", "proxy_get_buffer_status", get_status)?;
    l.func_wrap("env", "proxy_set_buffer_bytes", set_bytes)?;
    Ok(())
}
