//! The connection to the fleet's Redis (`cluster`, and the limiter's `rate_limits.cluster`): one server (a multiplexed `ConnectionManager`) or a
//! Redis Cluster (the `redis` crate's cluster client), behind one type. Connecting is lazy;
//! after a failure the next attempt waits (from `min_wait`, doubling up to `max_wait`, with
//! jitter), so a dead Redis costs one refused connect per wait, never a busy loop.

use crate::config::RedisEndpoints;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::time::{Duration, Instant};

/// A live connection (cheap to clone: both kinds multiplex one socket per node).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Why no connection could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The last attempt failed; the next one is not due yet (no I/O was done).
    Waiting(Duration),
    /// Connecting or talking to Redis failed.
    Failed(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Waiting(d) => write!(f, "next reconnect attempt in {} ms", d.as_millis()),
            LinkError::Failed(e) => f.write_str(e),
        }
    }
}

struct Backoff {
    /// No attempt before this.
    next: Option<Instant>,
    wait: Duration,
}

pub struct Link {
    pub endpoints: RedisEndpoints,
    /// PEM roots for `rediss://` instead of the system's.
    ca: Option<Vec<u8>>,
    /// Connect and response timeout.
    pub timeout: Duration,
    min_wait: Duration,
    max_wait: Duration,
    conn: tokio::sync::Mutex<Option<Conn>>,
    backoff: Mutex<Backoff>,
}

pub use crate::config::cluster::redact;

/// The fleet's Redis keys. Every one carries the hash tag `{prefix}`, so that in a Redis
/// Cluster they all sit on one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    base: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            base: format!("{{{prefix}}}"),
        }
    }

    /// `{prefix}`: what rate-limit, instance and revocation keys start with.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A random value set once (`SET NX`); a different one means Redis lost the data.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.base)
    }

    pub fn registry(&self, upstream: &str) -> String {
        format!("{}:reg:{upstream}", self.base)
    }

    pub fn purges(&self) -> String {
        format!("{}:purges", self.base)
    }

    pub fn members(&self) -> String {
        format!("{}:members", self.base)
    }

    pub fn members_seen(&self) -> String {
        format!("{}:members:seen", self.base)
    }
}

impl Link {
    pub fn new(
        endpoints: RedisEndpoints,
        timeout: Duration,
        min_wait: Duration,
        max_wait: Duration,
    ) -> Link {
        Link {
            endpoints,
            ca: None,
            timeout,
            min_wait,
            max_wait: max_wait.max(min_wait),
            conn: tokio::sync::Mutex::new(None),
            backoff: Mutex::new(Backoff {
                next: None,
                wait: min_wait,
            }),
        }
    }

    /// Trust these PEM CA certificates for `rediss://` (`cluster.tls_ca_file`).
    pub fn with_ca(mut self, pem: Option<Vec<u8>>) -> Link {
        self.ca = pem;
        self
    }

    /// The link of a fleet's config (its CA file read now; it was checked at load).
    pub fn for_fleet(c: &crate::config::FleetConfig, timeout: Duration) -> Link {
        let ca = c.tls_ca_file.as_ref().and_then(|f| match std::fs::read(f) {
            Ok(b) => Some(b),
            Err(e) => {
                log::warn!("cluster.tls_ca_file: cannot read `{f}`: {e}; using the system's roots");
                None
            }
        });
        Link::new(
            c.redis.clone(),
            timeout,
            c.sync_interval.get(),
            c.reconnect_max.get(),
        )
        .with_ca(ca)
    }

    fn certs(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: None,
            root_cert: self.ca.clone(),
        }
    }

    /// The open connection, or a new one unless a reconnect is not due yet.
    pub async fn get(&self) -> Result<Conn, LinkError> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        if let Some(next) = self.backoff.lock().next {
            let now = Instant::now();
            if now < next {
                return Err(LinkError::Waiting(next - now));
            }
        }
        match tokio::time::timeout(self.timeout, self.connect()).await {
            Ok(Ok(c)) => {
                let mut b = self.backoff.lock();
                b.next = None;
                b.wait = self.min_wait;
                *g = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => {
                self.failed();
                Err(LinkError::Failed(e))
            }
            Err(_) => {
                self.failed();
                Err(LinkError::Failed(format!(
                    "no connection within {} ms",
                    self.timeout.as_millis()
                )))
            }
        }
    }

    /// No connection is open and the next attempt is not due yet.
    pub fn waiting(&self) -> bool {
        let open = match self.conn.try_lock() {
            Ok(g) => g.is_some(),
            Err(_) => return false,
        };
        !open && self.backoff.lock().next.is_some_and(|n| Instant::now() < n)
    }

    /// The connection misbehaved: drop it; the next `get` reconnects after the backoff.
    pub async fn reset(&self) {
        let had = self.conn.lock().await.take().is_some();
        if had {
            self.failed();
        }
    }

    fn failed(&self) {
        let mut b = self.backoff.lock();
        // ±20 % jitter so a fleet that lost Redis together does not come back in lockstep
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        let wait = b.wait.mul_f64(jitter);
        b.next = Some(Instant::now() + wait);
        b.wait = (b.wait * 2).min(self.max_wait);
    }

    async fn connect(&self) -> Result<Conn, String> {
        match &self.endpoints {
            RedisEndpoints::Single(url) => {
                let client = match &self.ca {
                    Some(_) if url.starts_with("rediss://") => {
                        redis::Client::build_with_tls(url.as_str(), self.certs())
                    }
                    _ => redis::Client::open(url.as_str()),
                }
                .map_err(|e| e.to_string())?;
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout)
                    .set_number_of_retries(1);
                client
                    .get_connection_manager_with_config(cfg)
                    .await
                    .map(Conn::Single)
                    .map_err(|e| e.to_string())
            }
            RedisEndpoints::Cluster(nodes) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone());
                if self.ca.is_some() {
                    builder = builder.certs(self.certs());
                }
                let client = builder
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(self.timeout.as_millis() as u64 / 2)
                    .build()
                    .map_err(|e| e.to_string())?;
                client
                    .get_async_connection()
                    .await
                    .map(Conn::Cluster)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Run `pipe` with the link's timeout; a failure drops the connection.
    pub async fn query<T: redis::FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, LinkError> {
        let mut conn = self.get().await?;
        match tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                // a script or type error is not the connection's fault
                if !matches!(
                    e.kind(),
                    redis::ErrorKind::ResponseError
                        | redis::ErrorKind::TypeError
                        | redis::ErrorKind::NoScriptError
                ) {
                    self.reset().await;
                }
                Err(LinkError::Failed(e.to_string()))
            }
            Err(_) => {
                self.reset().await;
                Err(LinkError::Failed(format!(
                    "Redis did not answer within {} ms",
                    self.timeout.as_millis()
                )))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("redis://u:pw@h:1"), "redis://u:REDACTED@h:1");
        assert_eq!(redact("redis://pw@h:1"), "redis://REDACTED@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[tokio::test]
    async fn a_dead_redis_is_retried_after_a_growing_wait() {
        // a port nothing listens on
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let link = Link::new(
            RedisEndpoints::Single(format!("redis://127.0.0.1:{port}")),
            Duration::from_millis(500),
            Duration::from_millis(200),
            Duration::from_secs(2),
        );
        assert!(matches!(link.get().await, Err(LinkError::Failed(_))));
        // the next attempt is not made at once: no I/O, just the remaining wait
        match link.get().await {
            Err(LinkError::Waiting(d)) => assert!(d <= Duration::from_millis(240)),
            other => panic!("expected a wait, got {:?}", other.err()),
        }
        assert_eq!(link.backoff.lock().wait, Duration::from_millis(400));
    }
}
