//! Client address and forwarding headers (`X-Forwarded-*`), honouring trusted proxies.

use crate::hdr::{self, Headers};
use crate::snapshot::Snapshot;
use pingora_http::RequestHeader;
use std::net::IpAddr;

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(snap: &Snapshot, peer: IpAddr, req: &RequestHeader) -> (IpAddr, bool) {
    if !snap.is_trusted_proxy(&peer) {
        return (peer, false);
    }
    let mut client = peer;
    for v in req.headers.get_all("x-forwarded-for") {
        let Ok(s) = v.to_str() else { continue };
        // later headers and later entries are closer to us; the last one wins unless trusted
        for part in s.split(',').rev() {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !snap.is_trusted_proxy(&ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
    (client, true)
}

/// Set `X-Forwarded-For`, `-Proto`, `-Host` (the canonical `authority`) and `X-Real-IP` on
/// the upstream request.
pub fn apply(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    client: Option<IpAddr>,
    trusted: bool,
    tls: bool,
    authority: &str,
) -> pingora_error::Result<()> {
    let peer_v = match peer {
        Some(p) => hdr::ip_header(p),
        None => http::HeaderValue::from_static(""),
    };
    let xff = match (trusted, req.headers.get("x-forwarded-for")) {
        (true, Some(prev)) if !prev.is_empty() => {
            let mut s = Vec::with_capacity(prev.len() + 2 + peer_v.len());
            s.extend_from_slice(prev.as_bytes());
            s.extend_from_slice(b", ");
            s.extend_from_slice(peer_v.as_bytes());
            http::HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
                .unwrap_or_else(|_| peer_v.clone())
        }
        _ => peer_v.clone(),
    };
    // Room for what the gateway adds on the way upstream: each map grows once at most.
    req.reserve(8);
    req.set(&hdr::X_FORWARDED_FOR, xff)?;
    if !(trusted && req.headers.contains_key("x-forwarded-proto")) {
        let proto = http::HeaderValue::from_static(if tls { "https" } else { "http" });
        req.set(&hdr::X_FORWARDED_PROTO, proto)?;
    }
    if !(trusted && req.headers.contains_key("x-forwarded-host")) {
        let value = match req.headers.get(http::header::HOST) {
            _ if authority.is_empty() => None,
            // the usual case: the client's Host is canonical already (no copy)
            Some(h) if h.as_bytes() == authority.as_bytes() => Some(h.clone()),
            _ => Some(hdr::text(authority)?),
        };
        match value {
            Some(v) => req.set(&hdr::X_FORWARDED_HOST, v)?,
            None => {
                req.remove_header("x-forwarded-host");
            }
        }
    }
    match client {
        Some(c) if Some(c) == peer => req.set(&hdr::X_REAL_IP, peer_v)?,
        Some(c) => req.set(&hdr::X_REAL_IP, hdr::ip_header(c))?,
        None => {
            req.remove_header("x-real-ip");
        }
    }
    Ok(())
}
