//! A small HTTP(S) client over Pingora's connector, for the gateway's own calls: the JWKS
//! documents of the control plane ([`get`]) and, on the request path, the `forward-auth`
//! plugin's auth service ([`Client`]: one per target, keeping its connections alive in one
//! process-wide pool and its resolved address for a while) and the calls wasm filters make
//! to an upstream ([`call`], `proxy_http_call`).

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Fetched {
    pub status: u16,
    pub cache_control: Option<String>,
    pub body: Vec<u8>,
}

const MAX_BODY: usize = 1 << 20;

/// How long a resolved host name is used before it is resolved again.
const RESOLVE_TTL: Duration = Duration::from_secs(30);

/// How long an idle connection waits in the pool for the next call.
const IDLE: Duration = Duration::from_secs(60);

/// An `http://` or `https://` URL, checked once.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query sent.
    pub path: String,
    /// The `Host` header: the host, and the port when the URL gave one.
    pub host_header: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
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
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("URL `{url}` has no host"))?
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host_header = if uri.port_u16().is_some() {
            format!("{host}:{port}")
        } else {
            host.clone()
        };
        Ok(Target {
            url: url.to_string(),
            tls,
            port,
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            host_header,
            host,
        })
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

struct Resolved {
    addr: SocketAddr,
    at: Instant,
}

/// The connector (and connection pool) of the clients on the request path and of wasm
/// filters' [`call`]s: one for the process, so that a reload, which builds new clients, neither pays for a new one (its TLS
/// setup parses the root certificates: ~40M instructions) nor drops the pooled connections.
static SHARED: std::sync::LazyLock<Connector> = std::sync::LazyLock::new(|| Connector::new(None));

enum Pool {
    Shared,
    Own(Box<Connector>),
}

/// A client for one target: connections are pooled (and a stale pooled one is retried
/// once on a new connection), the address is resolved at most every 30 s.
pub struct Client {
    target: Target,
    pool: Pool,
    resolved: ArcSwapOption<Resolved>,
}

impl Client {
    /// A client whose connections live in the process-wide pool.
    pub fn new(target: Target) -> Client {
        Client {
            target,
            pool: Pool::Shared,
            resolved: ArcSwapOption::empty(),
        }
    }

    /// A client with a connector of its own, gone with it (one-off control-plane fetches).
    pub fn single(target: Target) -> Client {
        Client {
            target,
            pool: Pool::Own(Box::new(Connector::new(None))),
            resolved: ArcSwapOption::empty(),
        }
    }

    fn connector(&self) -> &Connector {
        match &self.pool {
            Pool::Shared => &SHARED,
            Pool::Own(c) => c,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn addr(&self) -> Result<SocketAddr, String> {
        let host = self
            .target
            .host
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.target.port));
        }
        if let Some(r) = self.resolved.load_full() {
            if r.at.elapsed() < RESOLVE_TTL {
                return Ok(r.addr);
            }
        }
        let addr = tokio::net::lookup_host((host, self.target.port))
            .await
            .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
            .next()
            .ok_or_else(|| format!("`{host}` resolves to nothing"))?;
        self.resolved.store(Some(Arc::new(Resolved {
            addr,
            at: Instant::now(),
        })));
        Ok(addr)
    }

    /// Send `method` with `headers` (and no body) to the target, within `timeout` in all;
    /// a body over `max_body` bytes is an error.
    pub async fn send(
        &self,
        method: &http::Method,
        headers: &[(HeaderName, HeaderValue)],
        timeout: Duration,
        max_body: usize,
    ) -> Result<Reply, String> {
        let work = async {
            let addr = self.addr().await?;
            let mut peer = HttpPeer::new(addr, self.target.tls, self.target.host.clone());
            peer.options.connection_timeout = Some(timeout);
            peer.options.total_connection_timeout = Some(timeout);
            peer.options.read_timeout = Some(timeout);
            peer.options.write_timeout = Some(timeout);
            match self.exchange(&peer, method, headers, max_body).await {
                // a pooled connection the server had closed: once more, on a new one
                Err((true, _)) => self
                    .exchange(&peer, method, headers, max_body)
                    .await
                    .map_err(|(_, e)| e),
                r => r.map_err(|(_, e)| e),
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("`{}` timed out", self.target.url)),
        }
    }

    /// One request on one connection; the error says whether that connection came from
    /// the pool (and may just have been stale).
    async fn exchange(
        &self,
        peer: &HttpPeer,
        method: &http::Method,
        headers: &[(HeaderName, HeaderValue)],
        max_body: usize,
    ) -> Result<Reply, (bool, String)> {
        let t = &self.target;
        let (mut session, reused) = self.connector().get_http_session(peer).await.map_err(|e| {
            (
                false,
                format!("cannot connect to `{}:{}`: {e}", t.host, t.port),
            )
        })?;
        let fail = |e: Box<pingora_error::Error>| (reused, e.to_string());
        let mut req =
            RequestHeader::build(method.clone(), t.path.as_bytes(), Some(headers.len() + 2))
                .map_err(fail)?;
        req.insert_header(http::header::HOST, t.host_header.as_str())
            .map_err(fail)?;
        req.insert_header(http::header::USER_AGENT, "portcullis")
            .map_err(fail)?;
        for (k, v) in headers {
            req.append_header(k.clone(), v.clone()).map_err(fail)?;
        }
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(fail)?;
        session.finish_request_body().await.map_err(fail)?;
        session.read_response_header().await.map_err(fail)?;
        let (status, headers) = match session.response_header() {
            Some(h) => (h.status.as_u16(), h.headers.clone()),
            None => return Err((reused, "no response header".to_string())),
        };
        // past the response head the connection was good: no second try
        let mut body = Vec::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| (false, e.to_string()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > max_body {
                return Err((false, format!("response body over {max_body} bytes")));
            }
        }
        self.connector()
            .release_http_session(session, peer, Some(IDLE))
            .await;
        Ok(Reply {
            status,
            headers,
            body: Bytes::from(body),
        })
    }
}

/// GET `url` (a JSON document), within twice `timeout`; not pooled.
pub async fn get(url: &str, timeout: Duration) -> Result<Fetched, String> {
    let client = Client::single(Target::parse(url)?);
    let accept = [(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    )];
    let r = client
        .send(&http::Method::GET, &accept, timeout * 2, MAX_BODY)
        .await?;
    Ok(Fetched {
        status: r.status,
        cache_control: r
            .headers
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: r.body.to_vec(),
    })
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

/// Send `c` and read the whole answer (at most 1 MiB of body), all within `c.timeout`. A
/// kept-alive connection the server had closed is retried once on a new one.
pub async fn call(c: Call<'_>) -> Result<Answer, String> {
    let mut peer = HttpPeer::new(c.addr, c.tls, c.host.to_string());
    peer.options.connection_timeout = Some(c.timeout);
    peer.options.total_connection_timeout = Some(c.timeout);
    peer.options.read_timeout = Some(c.timeout);
    peer.options.write_timeout = Some(c.timeout);
    let work = async {
        match exchange(&c, &peer).await {
            Err((true, _)) => exchange(&c, &peer).await.map_err(|(_, e)| e),
            r => r.map_err(|(_, e)| e),
        }
    };
    match tokio::time::timeout(c.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("call to {} timed out", c.addr)),
    }
}

/// One call on one connection; the error says whether that connection was a kept-alive one.
async fn exchange(c: &Call<'_>, peer: &HttpPeer) -> Result<Answer, (bool, String)> {
    let (mut session, reused) = SHARED
        .get_http_session(peer)
        .await
        .map_err(|e| (false, format!("cannot connect to {}: {e}", c.addr)))?;
    let fail = |e: Box<pingora_error::Error>| (reused, e.to_string());
    let mut req = RequestHeader::build(c.method, c.path.as_bytes(), None).map_err(fail)?;
    let mut has_host = false;
    for (k, v) in c.headers {
        has_host |= k.eq_ignore_ascii_case("host");
        req.append_header(k.clone(), v.as_str()).map_err(fail)?;
    }
    if !has_host {
        req.insert_header(http::header::HOST, c.host)
            .map_err(fail)?;
    }
    req.insert_header(http::header::CONTENT_LENGTH, c.body.len())
        .map_err(fail)?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(fail)?;
    if !c.body.is_empty() {
        session
            .write_request_body(Bytes::copy_from_slice(c.body), true)
            .await
            .map_err(fail)?;
    }
    session.finish_request_body().await.map_err(fail)?;
    session.read_response_header().await.map_err(fail)?;
    let Some(h) = session.response_header() else {
        return Err((reused, "no response header".to_string()));
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
    // past the response head the connection was good: no second try
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| (false, e.to_string()))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err((false, "response body over 1 MiB".into()));
        }
    }
    SHARED.release_http_session(session, peer, Some(IDLE)).await;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_once() {
        let t = Target::parse("http://auth.internal:9000/check?x=1").unwrap();
        assert!(!t.tls);
        assert_eq!((t.host.as_str(), t.port), ("auth.internal", 9000));
        assert_eq!(t.path, "/check?x=1");
        assert_eq!(t.host_header, "auth.internal:9000");
        let t = Target::parse("https://auth.example.com").unwrap();
        assert!(t.tls);
        assert_eq!((t.port, t.path.as_str()), (443, "/"));
        assert_eq!(t.host_header, "auth.example.com");
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("/relative").is_err());
    }
}
