//! One backend address: its connection profile, breaker, counters and the peer handed to
//! Pingora.

use super::breaker::{Breaker, BreakerPolicy};
use crate::config::{TimeoutsConfig, UpstreamProtocol};
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How the gateway connects to an upstream's backends: protocol, TLS and timeouts.
#[derive(Clone)]
pub struct PeerProfile {
    pub timeouts: TimeoutsConfig,
    pub tls: bool,
    /// SNI and verified name; `None`: the backend's host name or IP.
    pub sni: Option<String>,
    pub verify: bool,
    /// CAs from `ca_file`, and a digest of the file (part of the connection-pool key).
    pub ca: Option<(Arc<CaType>, u64)>,
    pub protocol: UpstreamProtocol,
}

/// Concurrent streams per HTTP/2 upstream connection before another is opened.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// Live state of one backend address.
pub struct BackendState {
    pub addr: SocketAddr,
    /// `upstream/addr`, for logs.
    pub label: String,
    pub in_flight: AtomicI64,
    pub requests: AtomicU64,
    pub breaker: Breaker,
    /// `Host` sent upstream on routes that do not preserve the client's (`ip:port`).
    pub host_header: http::HeaderValue,
    /// This backend's attempt and latency series.
    pub metrics: crate::observe::metrics::BackendMetrics,
    peer: HttpPeer,
}

impl BackendState {
    pub(super) fn new(
        name: &str,
        addr: SocketAddr,
        host: Option<String>,
        profile: &PeerProfile,
        policy: &BreakerPolicy,
    ) -> BackendState {
        let sni = if profile.tls {
            profile
                .sni
                .clone()
                .or(host)
                .unwrap_or_else(|| addr.ip().to_string())
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, profile.tls, sni);
        let t = &profile.timeouts;
        peer.options.connection_timeout = Some(t.connect.get());
        peer.options.total_connection_timeout = Some(t.connect.get());
        peer.options.read_timeout = Some(t.read.get());
        peer.options.write_timeout = Some(t.read.get());
        peer.options.idle_timeout = Some(t.idle.get());
        if profile.tls {
            peer.options.verify_cert = profile.verify;
            peer.options.verify_hostname = profile.verify;
            if let Some((ca, digest)) = &profile.ca {
                peer.options.ca = Some(ca.clone());
                // the pool key does not cover the CA: connections verified against other
                // CAs (before a reload) must not be reused
                peer.group_key = *digest;
            }
        }
        if profile.protocol == UpstreamProtocol::H2 {
            // over TLS: ALPN h2 only; in clear text: HTTP/2 with prior knowledge (h2c)
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
        BackendState {
            addr,
            label: format!("{name}/{addr}"),
            host_header: crate::hdr::socket_addr_header(addr),
            metrics: crate::observe::metrics::BackendMetrics::new(name, &addr.to_string()),
            in_flight: AtomicI64::new(0),
            requests: AtomicU64::new(0),
            breaker: Breaker::new(policy),
            peer,
        }
    }

    /// A peer for this backend; `read_timeout` may be shortened by the request deadline.
    pub fn peer(&self, read_timeout: Duration) -> HttpPeer {
        let mut p = self.peer.clone();
        if p.options.read_timeout.is_none_or(|r| read_timeout < r) {
            p.options.read_timeout = Some(read_timeout);
            p.options.write_timeout = Some(read_timeout);
        }
        p
    }

    /// A peer for an upgrade request (WebSocket): HTTP/1.1 whatever the upstream's protocol
    /// (Pingora upgrades only HTTP/1 connections), and `idle` as the read timeout, which
    /// then bounds the silence of the upgraded connection.
    pub fn upgrade_peer(&self, idle: Duration) -> HttpPeer {
        let mut p = self.peer.clone();
        p.options.set_http_version(1, 1);
        p.options.max_h2_streams = 1;
        p.options.read_timeout = Some(idle);
        p
    }
}

/// Counts a request against a backend's in-flight gauge for as long as it lives.
pub struct InFlight(pub Arc<BackendState>);

impl InFlight {
    pub fn new(state: Arc<BackendState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
