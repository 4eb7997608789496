//! A small HTTP(S) client over Pingora's connector: GETs for control-plane fetches (JWKS
//! documents), and [`call`], the calls wasm filters make to an upstream
//! (`proxy_http_call`).

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

/// One HTTP exchange with a known address (the calls wasm filters make to an upstream).
pub struct Call<'a> {
    pub addr: std::net::SocketAddr,
    pub tls: bool,
    /// TLS server name, and the `Host` sent when the call gives none.
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    pub timeout: Duration,
}

/// What came back from a [`Call`].
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Send `c` and read the whole answer (at most 1 MiB of body), all within `c.timeout`.
pub async fn call(c: Call<'_>) -> Result<Answer, String> {
    let mut peer = HttpPeer::new(c.addr, c.tls, c.host.to_string());
    peer.options.connection_timeout = Some(c.timeout);
    peer.options.total_connection_timeout = Some(c.timeout);
    peer.options.read_timeout = Some(c.timeout);
    peer.options.write_timeout = Some(c.timeout);
    let work = async {
        let connector = Connector::new(None);
        let (mut session, _) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", c.addr))?;
        let mut req =
            RequestHeader::build(c.method, c.path.as_bytes(), None).map_err(|e| e.to_string())?;
        let mut has_host = false;
        for (k, v) in c.headers {
            has_host |= k.eq_ignore_ascii_case("host");
            req.append_header(k.clone(), v.as_str())
                .map_err(|e| e.to_string())?;
        }
        if !has_host {
            req.insert_header("host", c.host)
                .map_err(|e| e.to_string())?;
        }
        req.insert_header("content-length", c.body.len().to_string())
            .map_err(|e| e.to_string())?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        if !c.body.is_empty() {
            session
                .write_request_body(bytes::Bytes::copy_from_slice(c.body), true)
                .await
                .map_err(|e| e.to_string())?;
        }
        session
            .finish_request_body()
            .await
            .map_err(|e| e.to_string())?;
        session
            .read_response_header()
            .await
            .map_err(|e| e.to_string())?;
        let Some(h) = session.response_header() else {
            return Err("no response header".to_string());
        };
        let status = h.status.as_u16();
        let headers = h
            .headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_string(), v)
            })
            .collect();
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
        Ok(Answer {
            status,
            headers,
            body,
        })
    };
    match tokio::time::timeout(c.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("call to {} timed out", c.addr)),
    }
}
