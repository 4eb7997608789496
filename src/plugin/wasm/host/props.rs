//! Properties (`proxy_get_property`): what the gateway knows about the request, in Envoy's
//! attribute names where one exists. A path's segments are separated by NUL (as SDKs send
//! them) or by dots. Strings are raw bytes; integers are 8-byte little-endian, as in Envoy.
//!
//! | property | value |
//! |---|---|
//! | `request.path` | path and query as received (`:path`) |
//! | `request.url_path` | path without the query |
//! | `request.query` | the query, without `?` |
//! | `request.method`, `request.host`, `request.scheme`, `request.protocol` | |
//! | `request.id` | the gateway's request id (`X-Request-Id`) |
//! | `request.headers.NAME` | the request header's first value |
//! | `response.code` | status (integer), from the response phases on |
//! | `response.headers.NAME` | the response header's first value, in the response phases |
//! | `source.address` | the client's IP (after trusted proxies) |
//! | `route_name`, `xds.route_name` | the route's name |
//! | `plugin_name`, `plugin_root_id`, `plugin_vm_id` | the filter's, from its config |
//! | `identity.subject`, `identity.kind` (`jwt`/`api_key`), `identity.issuer`, `identity.tier`, `identity.scopes` (comma-separated) | the authenticated caller |

use super::{give, read, Host, HostResult};
use crate::auth::Identity;
use crate::plugin::wasm::abi::status;
use std::net::IpAddr;
use std::sync::Arc;
use wasmtime::{Caller, Linker};

/// What the gateway decided for the request, given to the instance when it starts serving it.
#[derive(Default, Clone)]
pub struct Props {
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    pub tls: bool,
    pub identity: Option<Arc<Identity>>,
    /// The request's method and target, kept from the request head for later phases.
    pub method: Option<http::Method>,
    pub uri: Option<http::Uri>,
    pub version: Option<http::Version>,
    pub status: u16,
}

fn request_head(host: &Host) -> (Option<http::Method>, Option<http::Uri>) {
    if host.req_live {
        (Some(host.req.method.clone()), Some(host.req.uri.clone()))
    } else {
        (host.props.method.clone(), host.props.uri.clone())
    }
}

/// The value of one property, or `None` when there is none.
pub fn lookup(host: &Host, path: &str) -> Option<Vec<u8>> {
    let s = |v: &str| Some(v.as_bytes().to_vec());
    if let Some(name) = path.strip_prefix("request.headers.") {
        if !host.req_live {
            return None;
        }
        return host.req.headers.get(name).map(|v| v.as_bytes().to_vec());
    }
    if let Some(name) = path.strip_prefix("response.headers.") {
        if !host.resp_live {
            return None;
        }
        return host.resp.headers.get(name).map(|v| v.as_bytes().to_vec());
    }
    if let Some(key) = path.strip_prefix("identity.") {
        return identity(host.props.identity.as_deref()?, key);
    }
    let info = &host.info;
    match path {
        "plugin_name" => s(&info.name),
        "plugin_root_id" => s(&info.root_id),
        "plugin_vm_id" => s(&info.vm_id),
        "route_name" | "xds.route_name" => s(&info.route),
        "request.id" => Some(host.props.request_id.as_bytes().to_vec()).filter(|v| !v.is_empty()),
        "source.address" => host.props.client_ip.map(|ip| ip.to_string().into_bytes()),
        "request.scheme" => s(if host.props.tls { "https" } else { "http" }),
        "request.protocol" => host.props.version.map(|v| format!("{v:?}").into_bytes()),
        "response.code" => (host.props.status != 0 || host.resp_live).then(|| {
            let code = if host.resp_live {
                host.resp.status.as_u16()
            } else {
                host.props.status
            };
            i64::from(code).to_le_bytes().to_vec()
        }),
        "request.path" | "request.url_path" | "request.query" | "request.method"
        | "request.host" => {
            let (method, uri) = request_head(host);
            match path {
                "request.method" => method.map(|m| m.as_str().as_bytes().to_vec()),
                "request.path" => uri
                    .as_ref()
                    .and_then(|u| u.path_and_query())
                    .map(|p| p.as_str().as_bytes().to_vec()),
                "request.url_path" => uri.map(|u| u.path().as_bytes().to_vec()),
                "request.query" => uri.and_then(|u| u.query().map(|q| q.as_bytes().to_vec())),
                _ if host.req_live => host
                    .req
                    .headers
                    .get("host")
                    .map(|v| v.as_bytes().to_vec())
                    .or_else(|| uri.and_then(|u| u.host().map(|h| h.as_bytes().to_vec()))),
                _ => uri.and_then(|u| u.host().map(|h| h.as_bytes().to_vec())),
            }
        }
        _ => None,
    }
}

fn identity(id: &Identity, key: &str) -> Option<Vec<u8>> {
    match key {
        "subject" => Some(id.subject.as_bytes().to_vec()),
        "kind" => Some(id.kind.as_str().as_bytes().to_vec()),
        "issuer" => id.issuer.as_ref().map(|i| i.as_bytes().to_vec()),
        "tier" => id.tier.as_ref().map(|t| t.as_bytes().to_vec()),
        "scopes" => Some(id.scopes.join(",").into_bytes()),
        _ => None,
    }
}

fn get_property(
    mut caller: Caller<'_, Host>,
    ptr: i32,
    len: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult {
    let Some(raw) = read(&mut caller, ptr, len) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let path: String = String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .chars()
        .map(|c| if c == '\0' { '.' } else { c })
        .collect();
    match lookup(caller.data(), &path) {
        Some(v) => give(&mut caller, &v, ptr_ptr, size_ptr),
        None => Ok(status::NOT_FOUND),
    }
}

pub fn add(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_property", get_property)?;
    // Properties are the gateway's facts: a filter shares values through shared data.
    l.func_wrap(
        "env",
        "proxy_set_property",
        |_: Caller<'_, Host>, _: i32, _: i32, _: i32, _: i32| status::UNIMPLEMENTED,
    )?;
    Ok(())
}
