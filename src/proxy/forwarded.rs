//! Client address and forwarding headers (`X-Forwarded-*`), honouring trusted proxies.

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

/// Set `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP` on the upstream request.
pub fn apply(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    client: Option<IpAddr>,
    trusted: bool,
    tls: bool,
) -> pingora_error::Result<()> {
    let peer_s = peer.map(|p| p.to_string()).unwrap_or_default();
    let xff = match (trusted, req.headers.get("x-forwarded-for")) {
        (true, Some(prev)) if !prev.is_empty() => {
            let mut s = String::with_capacity(prev.len() + 2 + peer_s.len());
            s.push_str(prev.to_str().unwrap_or(""));
            s.push_str(", ");
            s.push_str(&peer_s);
            s
        }
        _ => peer_s,
    };
    req.insert_header("x-forwarded-for", xff)?;
    if !(trusted && req.headers.contains_key("x-forwarded-proto")) {
        req.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
    }
    if !(trusted && req.headers.contains_key("x-forwarded-host")) {
        let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        });
        match host {
            Some(h) => req.insert_header("x-forwarded-host", h)?,
            None => {
                req.remove_header("x-forwarded-host");
            }
        }
    }
    match client {
        Some(c) => req.insert_header("x-real-ip", c.to_string())?,
        None => {
            req.remove_header("x-real-ip");
        }
    }
    Ok(())
}
