//! A small HTTP(S) GET client over Pingora's connector, for control-plane fetches
//! (JWKS documents). Not used on the request path.

use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::time::Duration;

pub struct Fetched {
    pub status: u16,
    pub cache_control: Option<String>,
    pub body: Vec<u8>,
}

const MAX_BODY: usize = 1 << 20;

pub async fn get(url: &str, timeout: Duration) -> Result<Fetched, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL `{url}`: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("URL `{url}` must be http:// or https://")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("URL `{url}` has no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{host}` resolves to nothing"))?;
    let mut peer = HttpPeer::new(addr, tls, host.clone());
    peer.options.connection_timeout = Some(timeout);
    peer.options.total_connection_timeout = Some(timeout);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    let connector = Connector::new(None);
    let work = async {
        let (mut session, _) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("cannot connect to `{host}:{port}`: {e}"))?;
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req =
            RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
        let host_header = if uri.port_u16().is_some() {
            format!("{host}:{port}")
        } else {
            host.clone()
        };
        req.insert_header("host", host_header)
            .map_err(|e| e.to_string())?;
        req.insert_header("user-agent", "portcullis")
            .map_err(|e| e.to_string())?;
        req.insert_header("accept", "application/json")
            .map_err(|e| e.to_string())?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        session
            .finish_request_body()
            .await
            .map_err(|e| e.to_string())?;
        session
            .read_response_header()
            .await
            .map_err(|e| e.to_string())?;
        let (status, cache_control) = match session.response_header() {
            Some(h) => (
                h.status.as_u16(),
                h.headers
                    .get("cache-control")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            ),
            None => return Err("no response header".to_string()),
        };
        let mut body = Vec::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| e.to_string())?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return Err("response body over 1 MiB".into());
            }
        }
        Ok(Fetched {
            status,
            cache_control,
            body,
        })
    };
    match tokio::time::timeout(timeout * 2, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("`{url}` timed out")),
    }
}

/// `max-age` from a Cache-Control value.
pub fn max_age(cc: &str) -> Option<u64> {
    cc.split(',').find_map(|d| {
        let d = d.trim();
        d.strip_prefix("max-age=")
            .and_then(|v| v.trim_matches('"').parse().ok())
    })
}
