//! Cluster-wide limits through Redis, without a Redis round trip per request.
//!
//! Each instance admits locally (its own sliding estimate plus what the others counted,
//! as last read from Redis). A background task runs every `sync_interval`: it adds this
//! instance's new admissions to per-window Redis counters (`INCRBY` on keys carrying
//! policy, window and client key, expiring with the window, in one pipeline), reads back
//! the totals of the current and previous window, and derives what the other instances
//! counted. Windows are aligned on unix time so all instances agree on them.
//!
//! Over-admission is bounded by what the other instances admit between two syncs:
//! about (N − 1) × per-instance rate × sync_interval for a key hit on N instances.
//!
//! When Redis is unreachable or slow, requests keep flowing: each instance enforces
//! limit ÷ (last known number of instances) on its own, logs once per incident and
//! counts the failure; sharing resumes when Redis answers again.

use super::local::Limiter;
use crate::config::{ClusterConfig, FleetConfig, RedisEndpoints};
use crate::redis_link::Link;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

const SHARDS: usize = 16;

type Key = (Arc<str>, Box<[u8]>);

struct Pending {
    window: u64,
    per_ms: u64,
    delta: u64,
}

/// What Redis said about one key, and what this instance added to it.
#[derive(Clone, Copy, Default)]
struct Remote {
    window: u64,
    per_ms: u64,
    others_curr: u64,
    others_prev: u64,
    mine_curr: u64,
    mine_prev: u64,
}

pub struct Cluster {
    pub config: ClusterConfig,
    /// `config.redis`, or the top-level `cluster.redis` (possibly a Redis Cluster).
    pub endpoints: RedisEndpoints,
    /// `cluster.tls_ca_file` of a fleet.
    pub tls_ca_file: Option<String>,
    instance: String,
    pending: Vec<Mutex<HashMap<Key, Pending>>>,
    remote: Vec<RwLock<HashMap<Key, Remote>>>,
    degraded: AtomicBool,
    instances: AtomicUsize,
    pub sync_errors: AtomicU64,
    running: AtomicBool,
    link: Link,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn shard_of(label: &str, key: &[u8]) -> usize {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    label.hash(&mut h);
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

fn timeout_of(c: &ClusterConfig) -> Duration {
    c.sync_interval.get().max(Duration::from_millis(200)) * 2
}

impl Cluster {
    /// `rate_limits.cluster` (the older, limits-only form): one Redis.
    pub fn new(config: ClusterConfig) -> Cluster {
        let endpoints = RedisEndpoints::Single(config.redis.clone());
        Self::with_endpoints(config, endpoints)
    }

    /// Limits shared through the fleet's `cluster` block: keys under its hash tag
    /// (`{prefix}:rl:…`, `{prefix}:instances`, `{prefix}:revocations`), so that a round's
    /// pipeline stays on one slot of a Redis Cluster.
    pub fn for_fleet(f: &FleetConfig) -> Cluster {
        let config = ClusterConfig {
            redis: f
                .redis
                .urls()
                .first()
                .map(|u| u.to_string())
                .unwrap_or_default(),
            sync_interval: f.sync_interval,
            key_prefix: crate::redis_link::Keys::new(&f.key_prefix)
                .base()
                .to_string(),
            max_keys: f.rate_limit_keys,
        };
        let mut c = Self::with_endpoints(config, f.redis.clone());
        c.link = Link::for_fleet(f, timeout_of(&c.config));
        c.tls_ca_file = f.tls_ca_file.clone();
        c
    }

    fn with_endpoints(config: ClusterConfig, endpoints: RedisEndpoints) -> Cluster {
        let timeout = timeout_of(&config);
        let sync = config.sync_interval.get();
        Cluster {
            link: Link::new(endpoints.clone(), timeout, sync, Duration::from_secs(5)),
            endpoints,
            tls_ca_file: None,
            config,
            instance: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
            pending: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            remote: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            degraded: AtomicBool::new(false),
            instances: AtomicUsize::new(1),
            sync_errors: AtomicU64::new(0),
            running: AtomicBool::new(false),
        }
    }

    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub fn instances(&self) -> usize {
        self.instances.load(Ordering::Relaxed)
    }

    fn per_ms(l: &Limiter) -> u64 {
        (l.per.as_millis() as u64).max(1)
    }

    /// What the other instances counted for this key, as a sliding estimate in the
    /// limiter's units.
    pub fn others_estimate(&self, label: &Arc<str>, key: &[u8], l: &Limiter) -> f64 {
        self.others_estimate_at(label, key, l, unix_ms())
    }

    /// `others_estimate` at `now` (Unix milliseconds).
    fn others_estimate_at(&self, label: &Arc<str>, key: &[u8], l: &Limiter, now: u64) -> f64 {
        let per = Self::per_ms(l);
        let window = now / per;
        let fraction = (now % per) as f64 / per as f64;
        let g = self.remote[shard_of(label, key)]
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let Some(r) = g.get(&(label.clone(), Box::from(key))) else {
            return 0.0;
        };
        let est = if r.window == window {
            r.others_prev as f64 * (1.0 - fraction) + r.others_curr as f64
        } else if r.window + 1 == window {
            r.others_curr as f64 * (1.0 - fraction)
        } else {
            0.0
        };
        // the limiter may count on a longer internal window than `per` (sub-second limits)
        est * l.limit() / l.requests.max(1) as f64
    }

    /// Note `n` admitted requests for the next sync (0: a rejected request, so the key's
    /// cluster count is still refreshed).
    pub fn record(&self, label: &Arc<str>, key: &[u8], l: &Limiter, n: u64) {
        self.record_at(label, key, l, n, unix_ms())
    }

    /// `record` at `now` (Unix milliseconds).
    fn record_at(&self, label: &Arc<str>, key: &[u8], l: &Limiter, n: u64, now: u64) {
        let per = Self::per_ms(l);
        let window = now / per;
        let mut g = self.pending[shard_of(label, key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let cap = (self.config.max_keys / SHARDS).max(16);
        let k: Key = (label.clone(), Box::from(key));
        if let Some(p) = g.get_mut(&k) {
            if p.window == window {
                p.delta += n;
            } else {
                // the window rolled between syncs: the old delta is stale for limiting
                *p = Pending {
                    window,
                    per_ms: per,
                    delta: n,
                };
            }
        } else if g.len() < cap {
            g.insert(
                k,
                Pending {
                    window,
                    per_ms: per,
                    delta: n,
                },
            );
        }
    }

    fn redis_key(&self, label: &str, window: u64, key: &[u8]) -> String {
        format!(
            "{}:rl:{}:{}:{}",
            self.config.key_prefix,
            label,
            window,
            hex::encode(key)
        )
    }

    async fn connection(&self) -> Result<crate::redis_link::Conn, String> {
        self.link.get().await.map_err(|e| e.to_string())
    }

    /// One sync round. Errors mark the cluster degraded.
    async fn sync_once(&self, sync_revocations: bool) -> Result<(), String> {
        // take the pending admissions
        let mut batch: Vec<(Key, Pending)> = Vec::new();
        for s in &self.pending {
            let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
            batch.extend(g.drain());
        }
        let mut conn = self.connection().await?;
        let now = unix_ms();
        let mut pipe = redis::pipe();
        for ((label, key), p) in &batch {
            let k = self.redis_key(label, p.window, key);
            pipe.cmd("INCRBY").arg(&k).arg(p.delta);
            pipe.cmd("PEXPIRE")
                .arg(&k)
                .arg(p.per_ms * 2 + 1000)
                .ignore();
            pipe.cmd("GET")
                .arg(self.redis_key(label, p.window.saturating_sub(1), key));
        }
        let zkey = format!("{}:instances", self.config.key_prefix);
        pipe.cmd("ZADD")
            .arg(&zkey)
            .arg(now)
            .arg(&self.instance)
            .ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&zkey)
            .arg("-inf")
            .arg(now.saturating_sub(5000))
            .ignore();
        pipe.cmd("ZCARD").arg(&zkey);
        if sync_revocations {
            pipe.cmd("HGETALL")
                .arg(format!("{}:revocations", self.config.key_prefix));
        }
        let timeout = timeout_of(&self.config);
        let values: Vec<redis::Value> =
            match tokio::time::timeout(timeout, pipe.query_async(&mut conn)).await {
                Ok(r) => r.map_err(|e| e.to_string())?,
                Err(_) => return Err("Redis did not answer in time".into()),
            };
        let mut it = values.into_iter();
        for ((label, key), p) in batch {
            let total_curr: u64 = it
                .next()
                .and_then(|v| redis::from_redis_value(&v).ok())
                .unwrap_or(0);
            let total_prev: u64 = it
                .next()
                .and_then(|v| redis::from_redis_value::<Option<u64>>(&v).ok().flatten())
                .unwrap_or(0);
            let shard = shard_of(&label, &key);
            let mut g = self.remote[shard]
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let e = g.entry((label, key)).or_default();
            if e.window != p.window {
                // a new window: what was current is now previous (the others' share of it
                // is computed from Redis's total below)
                let mine_prev = if e.window + 1 == p.window {
                    e.mine_curr
                } else {
                    0
                };
                *e = Remote {
                    window: p.window,
                    per_ms: p.per_ms,
                    mine_prev,
                    ..Default::default()
                };
            }
            e.mine_curr += p.delta;
            e.others_curr = total_curr.saturating_sub(e.mine_curr);
            e.others_prev = total_prev.saturating_sub(e.mine_prev);
        }
        if let Some(n) = it
            .next()
            .and_then(|v| redis::from_redis_value::<u64>(&v).ok())
        {
            self.instances.store((n as usize).max(1), Ordering::Relaxed);
        }
        if sync_revocations {
            if let Some(v) = it.next() {
                let map: HashMap<String, u64> = redis::from_redis_value(&v).unwrap_or_default();
                crate::auth::revocation::REVOCATIONS.add_many(map);
            }
        }
        // forget keys whose windows are over (they no longer affect any estimate)
        let now = unix_ms();
        for s in &self.remote {
            let mut g = s.write().unwrap_or_else(|p| p.into_inner());
            g.retain(|_, r| r.window + 2 > now / r.per_ms.max(1));
        }
        Ok(())
    }

    /// Publish a revocation to the other instances.
    pub async fn publish_revocation(&self, jti: &str, until: u64) -> Result<(), String> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(format!("{}:revocations", self.config.key_prefix))
            .arg(jti)
            .arg(until)
            .ignore();
        let timeout = Duration::from_secs(2);
        match tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("Redis did not answer in time".into()),
        }
    }

    /// The sync loop; returns when `keep_running` says this cluster is no longer current.
    pub async fn run(self: Arc<Self>, keep_running: impl Fn(&Arc<Cluster>) -> bool) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut tick = tokio::time::interval(self.config.sync_interval.get());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u64 = 0;
        while keep_running(&self) {
            tick.tick().await;
            if self.link.waiting() {
                // Redis was unreachable and the next reconnect is not due: no I/O, and the
                // admissions stay pending (bounded) for the round that reaches it
                continue;
            }
            round += 1;
            let revocations = round % 10 == 1;
            match self.sync_once(revocations).await {
                Ok(()) => {
                    if self.degraded.swap(false, Ordering::Relaxed) {
                        log::info!("rate-limit cluster: Redis reachable again, limits are shared");
                    }
                }
                Err(e) => {
                    self.sync_errors.fetch_add(1, Ordering::Relaxed);
                    crate::observe::metrics::METRICS.cluster_sync_errors.inc();
                    self.link.reset().await;
                    if !self.degraded.swap(true, Ordering::Relaxed) {
                        log::warn!(
                            "rate-limit cluster: Redis unavailable ({e}); enforcing 1/{} of each limit locally",
                            self.instances()
                        );
                    }
                }
            }
        }
        self.running.store(false, Ordering::Release);
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
