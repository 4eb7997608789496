//! Header maps: the request and response heads (with the HTTP/2-style pseudo-headers
//! `:method`, `:path`, `:authority`, `:scheme` and `:status` that proxy-wasm filters expect)
//! and the response of an HTTP call. Trailers are empty maps: the gateway streams them
//! through untouched.

use super::{decode_pairs, encode_pairs, give, read, read_str, write_u32, Host, HostResult};
use crate::plugin::wasm::abi::{map, status};
use http::header::{HeaderName, HeaderValue};
use wasmtime::{Caller, Linker};

/// The map's pairs, pseudo-headers first; `None` when the map is not available now.
pub fn pairs(host: &Host, typ: i32) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    match typ {
        map::REQUEST_HEADERS if host.req_live => {
            let req = &host.req;
            out.reserve(req.headers.len() + 4);
            for p in [":method", ":path", ":authority", ":scheme"] {
                if let Some(v) = pseudo(host, typ, p) {
                    out.push((p.as_bytes().to_vec(), v));
                }
            }
            for (k, v) in req.headers.iter() {
                out.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
        }
        map::RESPONSE_HEADERS if host.resp_live => {
            let resp = &host.resp;
            out.reserve(resp.headers.len() + 1);
            if let Some(v) = pseudo(host, typ, ":status") {
                out.push((b":status".to_vec(), v));
            }
            for (k, v) in resp.headers.iter() {
                out.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
        }
        map::HTTP_CALL_RESPONSE_HEADERS => {
            let r = host.call_response.as_ref()?;
            for (k, v) in &r.headers {
                out.push((k.as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
        }
        map::REQUEST_TRAILERS | map::RESPONSE_TRAILERS | map::HTTP_CALL_RESPONSE_TRAILERS => {}
        _ => return None,
    }
    Some(out)
}

fn pseudo(host: &Host, typ: i32, name: &str) -> Option<Vec<u8>> {
    match (typ, name) {
        (map::REQUEST_HEADERS, ":method") => Some(host.req.method.as_str().as_bytes().to_vec()),
        (map::REQUEST_HEADERS, ":path") => Some(host.req.raw_path().to_vec()),
        (map::REQUEST_HEADERS, ":authority") => host
            .req
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes().to_vec())
            .or_else(|| host.req.headers.get("host").map(|v| v.as_bytes().to_vec())),
        (map::REQUEST_HEADERS, ":scheme") => Some(
            if host.props.tls { "https" } else { "http" }
                .as_bytes()
                .to_vec(),
        ),
        (map::RESPONSE_HEADERS, ":status") => Some(host.resp.status.as_str().as_bytes().to_vec()),
        _ => None,
    }
}

/// The first value of `key`.
fn value(host: &Host, typ: i32, key: &str) -> Result<Option<Vec<u8>>, i32> {
    if key.starts_with(':') && (typ == map::REQUEST_HEADERS || typ == map::RESPONSE_HEADERS) {
        return Ok(pseudo(host, typ, key).filter(|_| live(host, typ)));
    }
    let first = |h: &http::HeaderMap| h.get(key).map(|v| v.as_bytes().to_vec());
    match typ {
        map::REQUEST_HEADERS if host.req_live => Ok(first(&host.req.headers)),
        map::RESPONSE_HEADERS if host.resp_live => Ok(first(&host.resp.headers)),
        map::HTTP_CALL_RESPONSE_HEADERS => Ok(host.call_response.as_ref().and_then(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_bytes().to_vec())
        })),
        map::REQUEST_TRAILERS | map::RESPONSE_TRAILERS | map::HTTP_CALL_RESPONSE_TRAILERS => {
            Ok(None)
        }
        _ => Err(status::BAD_ARGUMENT),
    }
}

fn live(host: &Host, typ: i32) -> bool {
    match typ {
        map::REQUEST_HEADERS => host.req_live,
        map::RESPONSE_HEADERS => host.resp_live,
        _ => false,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Add,
    Replace,
    Remove,
}

/// Change one header of a live head; pseudo-headers change the method, path or status.
fn change(host: &mut Host, typ: i32, key: &str, value: &[u8], op: Op) -> i32 {
    if !live(host, typ) {
        return match typ {
            map::REQUEST_HEADERS | map::RESPONSE_HEADERS => status::BAD_ARGUMENT,
            map::REQUEST_TRAILERS | map::RESPONSE_TRAILERS => status::OK,
            _ => status::BAD_ARGUMENT,
        };
    }
    if key.starts_with(':') {
        return change_pseudo(host, typ, key, value, op);
    }
    let lower = key.to_ascii_lowercase();
    let Ok(name) = HeaderName::from_bytes(lower.as_bytes()) else {
        return status::BAD_ARGUMENT;
    };
    let value = match HeaderValue::from_bytes(value) {
        Ok(v) => v,
        Err(_) if op == Op::Remove => HeaderValue::from_static(""),
        Err(_) => return status::BAD_ARGUMENT,
    };
    let ok = if typ == map::REQUEST_HEADERS {
        let h = &mut host.req;
        match op {
            Op::Add => h.append_header(&name, value).is_ok(),
            Op::Replace => h.insert_header(&name, value).is_ok(),
            Op::Remove => {
                h.remove_header(&name);
                true
            }
        }
    } else {
        let h = &mut host.resp;
        match op {
            Op::Add => h.append_header(&name, value).is_ok(),
            Op::Replace => h.insert_header(&name, value).is_ok(),
            Op::Remove => {
                h.remove_header(&name);
                true
            }
        }
    };
    if ok {
        status::OK
    } else {
        status::BAD_ARGUMENT
    }
}

fn change_pseudo(host: &mut Host, typ: i32, key: &str, value: &[u8], op: Op) -> i32 {
    if op == Op::Remove {
        return status::BAD_ARGUMENT;
    }
    let ok = match (typ, key) {
        (map::REQUEST_HEADERS, ":method") => http::Method::from_bytes(value)
            .map(|m| host.req.set_method(m))
            .is_ok(),
        (map::REQUEST_HEADERS, ":path") => http::Uri::try_from(value)
            .ok()
            .filter(|u| u.scheme().is_none() && u.path().starts_with('/'))
            .map(|u| host.req.set_uri(u))
            .is_some(),
        (map::REQUEST_HEADERS, ":authority") => match HeaderValue::from_bytes(value) {
            Ok(v) => host.req.insert_header(http::header::HOST, v).is_ok(),
            Err(_) => false,
        },
        (map::RESPONSE_HEADERS, ":status") => std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .is_some_and(|code| host.resp.set_status(code).is_ok()),
        _ => false,
    };
    if ok {
        status::OK
    } else {
        status::BAD_ARGUMENT
    }
}

fn get_pairs(mut caller: Caller<'_, Host>, typ: i32, ptr_ptr: i32, size_ptr: i32) -> HostResult {
    let Some(pairs) = pairs(caller.data(), typ) else {
        return Ok(status::NOT_FOUND);
    };
    let bytes = encode_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
    give(&mut caller, &bytes, ptr_ptr, size_ptr)
}

fn set_pairs(mut caller: Caller<'_, Host>, typ: i32, ptr: i32, size: i32) -> HostResult {
    let Some(bytes) = read(&mut caller, ptr, size) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let Some(new) = decode_pairs(&bytes) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let host = caller.data_mut();
    if !live(host, typ) {
        return Ok(status::BAD_ARGUMENT);
    }
    if typ == map::REQUEST_HEADERS {
        let names: Vec<HeaderName> = host.req.headers.keys().cloned().collect();
        for n in &names {
            host.req.remove_header(n);
        }
    } else {
        let names: Vec<HeaderName> = host.resp.headers.keys().cloned().collect();
        for n in &names {
            host.resp.remove_header(n);
        }
    }
    for (k, v) in &new {
        let code = change(host, typ, k, v.as_bytes(), Op::Add);
        if code != status::OK {
            return Ok(code);
        }
    }
    Ok(status::OK)
}

fn get_value(
    mut caller: Caller<'_, Host>,
    typ: i32,
    kptr: i32,
    klen: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult {
    let Some(key) = read_str(&mut caller, kptr, klen) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    match value(caller.data(), typ, &key) {
        Err(code) => Ok(code),
        Ok(None) => Ok(status::NOT_FOUND),
        Ok(Some(v)) => give(&mut caller, &v, ptr_ptr, size_ptr),
    }
}

fn edit(
    mut caller: Caller<'_, Host>,
    op: Op,
    typ: i32,
    (kptr, klen): (i32, i32),
    (vptr, vlen): (i32, i32),
) -> HostResult {
    let Some(key) = read_str(&mut caller, kptr, klen) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let value = if op == Op::Remove {
        Vec::new()
    } else {
        match read(&mut caller, vptr, vlen) {
            Some(v) => v,
            None => return Ok(status::INVALID_MEMORY_ACCESS),
        }
    };
    Ok(change(caller.data_mut(), typ, &key, &value, op))
}

fn get_size(mut caller: Caller<'_, Host>, typ: i32, out: i32) -> HostResult {
    let Some(pairs) = pairs(caller.data(), typ) else {
        return Ok(status::NOT_FOUND);
    };
    let size: usize = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum::<usize>();
    if !write_u32(&mut caller, out, size as u32) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

pub fn add(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_header_map_pairs", get_pairs)?;
    l.func_wrap("env", "proxy_set_header_map_pairs", set_pairs)?;
    l.func_wrap("env", "proxy_get_header_map_value", get_value)?;
    l.func_wrap("env", "proxy_get_header_map_size", get_size)?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |c: Caller<'_, Host>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            edit(c, Op::Add, t, (kp, kl), (vp, vl))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |c: Caller<'_, Host>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            edit(c, Op::Replace, t, (kp, kl), (vp, vl))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |c: Caller<'_, Host>, t: i32, kp: i32, kl: i32| edit(c, Op::Remove, t, (kp, kl), (0, 0)),
    )?;
    Ok(())
}
