//! The stream: local responses, continuing after a pause, and outgoing HTTP calls
//! (`proxy_http_call`, recorded here and performed by the driver). gRPC calls, foreign
//! functions and shared queues answer `Unimplemented`.

use super::{decode_pairs, give, read, read_str, write_u32, Host, HostResult, Local, PendingCall};
use crate::plugin::wasm::abi::status;
use bytes::Bytes;
use std::time::Duration;
use wasmtime::{Caller, Linker};

/// Calls one request may make: a filter that loops over `proxy_http_call` is cut off.
const MAX_CALLS: usize = 16;

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    mut caller: Caller<'_, Host>,
    code: i32,
    _details_ptr: i32,
    _details_len: i32,
    body_ptr: i32,
    body_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    _grpc_status: i32,
) -> HostResult {
    let (Some(body), Some(headers)) = (
        read(&mut caller, body_ptr, body_len),
        read(&mut caller, headers_ptr, headers_len),
    ) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let Some(headers) = decode_pairs(&headers) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let Some(code) = u16::try_from(code).ok().filter(|c| (200..=599).contains(c)) else {
        return Ok(status::BAD_ARGUMENT);
    };
    caller.data_mut().local = Some(Local {
        status: code,
        headers,
        body: Bytes::from(body),
    });
    Ok(status::OK)
}

#[allow(clippy::too_many_arguments)]
fn http_call(
    mut caller: Caller<'_, Host>,
    up_ptr: i32,
    up_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    body_ptr: i32,
    body_len: i32,
    _trailers_ptr: i32,
    _trailers_len: i32,
    timeout_ms: i32,
    token_ptr: i32,
) -> HostResult {
    let (Some(upstream), Some(headers), Some(body)) = (
        read_str(&mut caller, up_ptr, up_len),
        read(&mut caller, headers_ptr, headers_len),
        read(&mut caller, body_ptr, body_len),
    ) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let Some(headers) = decode_pairs(&headers) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let host = caller.data();
    let has = |name: &str| headers.iter().any(|(k, _)| k == name);
    if !host.info.call_targets.iter().any(|(n, _)| *n == upstream)
        || !has(":path")
        || !host.can_call
        || host.calls.len() >= MAX_CALLS
    {
        return Ok(status::BAD_ARGUMENT);
    }
    let host = caller.data_mut();
    let token = host.next_token;
    host.next_token = host.next_token.wrapping_add(1).max(1);
    host.calls.push(PendingCall {
        token,
        upstream,
        headers,
        body: Bytes::from(body),
        timeout: Duration::from_millis(u64::from((timeout_ms as u32).clamp(1, 60_000))),
    });
    if !write_u32(&mut caller, token_ptr, token) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

/// `proxy_get_status` (older SDKs): the status of the last HTTP call's response.
fn get_status(
    mut caller: Caller<'_, Host>,
    code_ptr: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult {
    let code = caller
        .data()
        .call_response
        .as_ref()
        .and_then(|r| r.headers.iter().find(|(k, _)| k == ":status"))
        .and_then(|(_, v)| v.parse::<u32>().ok())
        .unwrap_or(0);
    if !write_u32(&mut caller, code_ptr, code) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    give(&mut caller, b"", ptr_ptr, size_ptr)
}

pub fn add(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_send_local_response", send_local_response)?;
    l.func_wrap("env", "proxy_http_call", http_call)?;
    l.func_wrap("env", "proxy_get_status", get_status)?;
    l.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Caller<'_, Host>, _stream: i32| {
            c.data_mut().continued = true;
            status::OK
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_continue_request",
        |mut c: Caller<'_, Host>| {
            c.data_mut().continued = true;
            status::OK
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_continue_response",
        |mut c: Caller<'_, Host>| {
            c.data_mut().continued = true;
            status::OK
        },
    )?;
    // Closing a stream ends it with an error the gateway answers (502 upstream of a head).
    l.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: Caller<'_, Host>, _: i32| {
            c.data_mut().local = Some(Local {
                status: 502,
                headers: Vec::new(),
                body: Bytes::new(),
            });
            status::OK
        },
    )?;
    l.func_wrap("env", "proxy_clear_route_cache", |_: Caller<'_, Host>| {
        status::OK
    })?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Caller<'_, Host>, id: i32| {
            c.data_mut().effective = id;
            status::OK
        },
    )?;
    l.func_wrap("env", "proxy_done", |_: Caller<'_, Host>| status::OK)?;
    unimplemented(l)
}

/// gRPC, foreign functions and shared queues: not hosted.
fn unimplemented(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_: Caller<'_, Host>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| status::NOT_FOUND,
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |_: Caller<'_, Host>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| status::UNIMPLEMENTED,
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_: Caller<'_, Host>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| { status::UNIMPLEMENTED },
    )?;
    l.func_wrap("env", "proxy_grpc_cancel", |_: Caller<'_, Host>, _: i32| {
        status::UNIMPLEMENTED
    })?;
    l.func_wrap("env", "proxy_grpc_close", |_: Caller<'_, Host>, _: i32| {
        status::UNIMPLEMENTED
    })?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |_: Caller<'_, Host>, _: i32, _: i32, _: i32, _: i32| status::UNIMPLEMENTED,
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |_: Caller<'_, Host>, _: i32, _: i32, _: i32| status::UNIMPLEMENTED,
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |_: Caller<'_, Host>, _: i32, _: i32, _: i32, _: i32, _: i32| status::UNIMPLEMENTED,
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |_: Caller<'_, Host>, _: i32, _: i32, _: i32| status::UNIMPLEMENTED,
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |_: Caller<'_, Host>, _: i32, _: i32, _: i32| status::UNIMPLEMENTED,
    )?;
    Ok(())
}
