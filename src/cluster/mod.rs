//! The fleet: instances that share one Redis (`cluster:` in the config) share their
//! backend registry, their cache purges and a membership list, besides rate limits and
//! revocations (`crate::ratelimit::cluster`).
//!
//! Redis is never on the request path. Admin calls change the local state at once and
//! queue the change; one background task per process runs a sync round every
//! `sync_interval` (and right after an admin call): one pipeline that writes the queued
//! changes and this instance's membership card, and reads the members, the registry of
//! every configured upstream and the purge log past this instance's position. What it
//! reads is applied to the local upstreams and cache.
//!
//! When Redis cannot be reached, nothing is taken away: the last-known registry stays (a
//! TTL only lapses by a read of Redis, so heartbeats that could not be recorded expire
//! nothing), admin changes wait in the queue, reconnects back off. When Redis is back the
//! queue is written first; TTLs that lapsed during the outage run again from the
//! reconnect; if Redis lost its data (a fresh epoch key), every instance re-publishes what
//! it knew and reads the new purge log from its start.
//!
//! Every key starts with the hash tag `{key_prefix}`: in a Redis Cluster the whole fleet
//! lives on one slot, so every round is one pipeline and every script sees all its keys.
//! The fleet's data is small (registrations, members, a capped purge log) and its traffic
//! one round trip per instance per interval; a Redis Cluster gives it failover, not shards.

pub mod cli;
pub mod members;
pub mod metrics;
pub mod purge;
pub mod registry;
mod round;
mod value;

use crate::cache::purge::Target;
use crate::config::FleetConfig;
use crate::redis_link as link;
pub use crate::redis_link::Keys;
use crate::snapshot::Snapshot;
use crate::upstream::Upstream;
use arc_swap::ArcSwapOption;
use link::{Link, LinkError};
use metrics::FLEET_METRICS;
use parking_lot::Mutex;
use purge::StreamId;
use serde_json::{json, Value};
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Queued changes written per round (the rest go in the next, immediate, round).
const MAX_BATCH: usize = 512;

/// What the fleet needs from the process (the runtime implements it): the snapshot being
/// served and the last reload, for the member card.
pub trait Host: Send + Sync {
    fn snapshot(&self) -> Arc<Snapshot>;
    /// The last reload as JSON (`at_unix`, `ok`, `generation`, `errors`), if any.
    fn last_reload(&self) -> Option<Value>;
}

/// A change made here, waiting to be written to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Registry(registry::Op),
    Purge(purge::Published),
}

struct Settings {
    cfg: FleetConfig,
    id: String,
    keys: Keys,
    link: Arc<Link>,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Op>,
    /// The epoch value last seen in Redis.
    epoch: Option<String>,
    /// Last purge-log entry applied (or skipped as ours).
    cursor: Option<StreamId>,
    connected: bool,
    ever_connected: bool,
    outage_since_unix_ms: Option<u64>,
    /// Redis time of the last reconnect after an outage (see `registry::desired`).
    grace_from: Option<u64>,
    last_ok_unix_ms: Option<u64>,
    last_error: Option<String>,
    /// Redis clock − local clock, from the last round.
    offset_ms: i64,
    members: Vec<members::Member>,
    duplicate_id: bool,
    announced: bool,
    /// (generation, config hash) of the snapshot last announced.
    hash: Option<(u64, String)>,
    dropping_logged: bool,
}

/// The process's place in the fleet. Inert without a `cluster` block.
pub struct Fleet {
    settings: ArcSwapOption<Settings>,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
    running: AtomicBool,
    /// Random per process: tells this process's purge-log entries and card from others'.
    pub incarnation: String,
    started_unix_ms: u64,
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The default `instance_id`: host name and the first listen port (`web-3:8080`), reduced
/// to the characters an id may hold.
pub fn default_instance_id(cfg: &crate::config::Config) -> String {
    let port = cfg
        .server
        .listen
        .first()
        .and_then(|l| l.rsplit_once(':'))
        .map_or("0", |(_, p)| p);
    let raw = format!("{}:{port}", hostname());
    let id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    id
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet {
            settings: ArcSwapOption::empty(),
            state: Mutex::new(State::default()),
            wake: tokio::sync::Notify::new(),
            running: AtomicBool::new(false),
            incarnation: format!("{:016x}", rand::random::<u64>()),
            started_unix_ms: unix_ms(),
        }
    }

    /// Follow the config of `snap` (at start-up and after every reload).
    pub fn configure(&self, snap: &Snapshot) {
        let Some(c) = &snap.config.cluster else {
            if self.settings.swap(None).is_some() {
                log::info!("cluster: the `cluster` block is gone; this instance is standalone");
                FLEET_METRICS.connected.set(0);
            }
            return;
        };
        let id = c
            .instance_id
            .clone()
            .unwrap_or_else(|| default_instance_id(&snap.config));
        let cur = self.settings.load_full();
        if let Some(cur) = &cur {
            if cur.cfg == *c && cur.id == id {
                return;
            }
        }
        let sync = c.sync_interval.get();
        let timeout = (sync * 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
        let link = match &cur {
            Some(cur)
                if cur.cfg.redis == c.redis
                    && cur.cfg.tls_ca_file == c.tls_ca_file
                    && cur.cfg.reconnect_max == c.reconnect_max
                    && cur.link.timeout == timeout =>
            {
                cur.link.clone()
            }
            _ => Arc::new(Link::for_fleet(c, timeout)),
        };
        std::sync::LazyLock::force(&FLEET_METRICS);
        log::info!(
            "cluster: instance `{id}`, Redis {} ({}), sync every {} ms",
            c.redis
                .urls()
                .iter()
                .map(|u| link::redact(u))
                .collect::<Vec<_>>()
                .join(", "),
            c.redis.mode(),
            sync.as_millis()
        );
        self.settings.store(Some(Arc::new(Settings {
            cfg: c.clone(),
            id,
            keys: Keys::new(&c.key_prefix),
            link,
        })));
        self.wake.notify_one();
    }

    pub fn enabled(&self) -> bool {
        self.settings.load().is_some()
    }

    /// Start a sync round now (a reload changed what this instance announces).
    pub fn wake(&self) {
        if self.enabled() {
            self.wake.notify_one();
        }
    }

    fn push(&self, op: Op) {
        let Some(s) = self.settings.load_full() else {
            return;
        };
        {
            let mut st = self.state.lock();
            if matches!(op, Op::Registry(registry::Op::Heartbeat { .. }))
                && st.pending.contains(&op)
            {
                // a renewal already waiting says the same
                return;
            }
            while st.pending.len() >= s.cfg.queue {
                st.pending.pop_front();
                FLEET_METRICS.dropped.inc();
                if !st.dropping_logged {
                    st.dropping_logged = true;
                    log::warn!(
                        "cluster: {} operations wait for Redis (cluster.queue); dropping the oldest",
                        s.cfg.queue
                    );
                }
            }
            st.pending.push_back(op);
            FLEET_METRICS.pending.set(st.pending.len() as i64);
        }
        self.wake.notify_one();
    }

    /// `POST /admin/upstreams/{name}/backends`: in rotation here at once, fleet-wide
    /// within about one `sync_interval`. With a fleet the TTL is kept by the shared
    /// registry, not by a local timer.
    pub fn register(&self, up: &Upstream, addr: SocketAddr, weight: u32, ttl: Option<Duration>) {
        if !self.enabled() {
            up.membership.register(addr, weight, ttl);
            return;
        }
        up.membership.register(addr, weight, None);
        self.push(Op::Registry(registry::Op::Register {
            upstream: up.name.to_string(),
            addr,
            weight,
            ttl_ms: ttl.map_or(0, |t| t.as_millis().max(1) as u64),
        }));
    }

    /// `PUT …/heartbeat`. False if the backend is not registered (as far as this instance
    /// knows: one registered elsewhere is known here after the next sync).
    pub fn heartbeat(&self, up: &Upstream, addr: SocketAddr) -> bool {
        if !self.enabled() {
            return up.membership.heartbeat(addr);
        }
        if !up.membership.registered().contains_key(&addr) {
            return false;
        }
        self.push(Op::Registry(registry::Op::Heartbeat {
            upstream: up.name.to_string(),
            addr,
        }));
        true
    }

    /// `DELETE …/backends/{addr}`: deregister, or drain a configured backend.
    pub fn deregister(&self, up: &Upstream, addr: SocketAddr) -> bool {
        let was_registered = up.membership.registered().contains_key(&addr);
        let found = up.membership.deregister(addr);
        if found && self.enabled() {
            let upstream = up.name.to_string();
            self.push(Op::Registry(if was_registered {
                registry::Op::Deregister { upstream, addr }
            } else {
                registry::Op::Drain { upstream, addr }
            }));
        }
        found
    }

    /// `POST /admin/cache/purge`, after the local purge: the rest of the fleet follows.
    pub fn purged(&self, target: &Target) {
        if self.enabled() {
            FLEET_METRICS.purges.with_label_values(&["published"]).inc();
            self.push(Op::Purge(purge::Published {
                target: target.clone(),
            }));
        }
    }

    fn requeue(&self, batch: Vec<Op>) {
        let mut st = self.state.lock();
        for op in batch.into_iter().rev() {
            st.pending.push_front(op);
        }
        FLEET_METRICS.pending.set(st.pending.len() as i64);
    }

    fn card(
        &self,
        rt: &dyn Host,
        snap: &Snapshot,
        s: &Settings,
        hash: &str,
        pending: usize,
    ) -> Value {
        let last_reload = rt.last_reload();
        json!({
            "instance_id": s.id,
            "incarnation": self.incarnation,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "generation": snap.generation,
            "config_hash": hash,
            "started_at_unix": self.started_unix_ms / 1000,
            "last_reload": last_reload,
            "listen": snap.config.server.listen,
            "admin": snap.config.server.admin.as_ref().map(|a| a.listen.clone()),
            "pending_operations": pending,
        })
    }

    /// One sync round. `Ok(true)`: more is waiting (run the next round at once).
    async fn apply_registry(
        &self,
        snap: &Snapshot,
        names: &[String],
        regs: Vec<std::collections::BTreeMap<SocketAddr, registry::Entry>>,
        now: u64,
        grace: Option<u64>,
    ) {
        let pending: Vec<registry::Op> = self
            .state
            .lock()
            .pending
            .iter()
            .filter_map(|o| match o {
                Op::Registry(r) => Some(r.clone()),
                Op::Purge(_) => None,
            })
            .collect();
        let mut reaps = Vec::new();
        for (name, entries) in names.iter().zip(regs) {
            let Some(up) = snap.upstreams.get(name) else {
                continue;
            };
            let (mut reg, mut drained, lapsed) = registry::desired(&entries, now, grace);
            registry::overlay(name, &mut reg, &mut drained, pending.iter());
            let before: BTreeSet<SocketAddr> = up.membership.registered().keys().copied().collect();
            let after: BTreeSet<SocketAddr> = reg.keys().copied().collect();
            if up.membership.replace_runtime(reg, drained) {
                FLEET_METRICS.registry_changes.inc();
                let added: Vec<String> = after.difference(&before).map(|a| a.to_string()).collect();
                let removed: Vec<String> =
                    before.difference(&after).map(|a| a.to_string()).collect();
                log::info!(
                    "upstream `{name}`: shared registry applied (added [{}], removed [{}])",
                    added.join(", "),
                    removed.join(", ")
                );
                up.refresh().await;
            }
            for (addr, expires_ms) in lapsed {
                let op = registry::Op::Reap {
                    upstream: name.clone(),
                    addr,
                    expires_ms,
                };
                if !pending.contains(&op) {
                    reaps.push(Op::Registry(op));
                }
            }
        }
        if !reaps.is_empty() {
            let mut st = self.state.lock();
            st.pending.extend(reaps);
            FLEET_METRICS.pending.set(st.pending.len() as i64);
        }
    }

    fn failed(&self, e: String) {
        FLEET_METRICS.sync_errors.inc();
        FLEET_METRICS.connected.set(0);
        let mut st = self.state.lock();
        if st.connected || (st.last_error.is_none() && st.outage_since_unix_ms.is_none()) {
            log::warn!(
                "cluster: Redis unavailable ({e}); keeping the last-known registry and members, \
                 queueing registrations and purges until it is back"
            );
        }
        st.connected = false;
        st.last_error = Some(e);
        if st.outage_since_unix_ms.is_none() {
            st.outage_since_unix_ms = Some(unix_ms());
        }
    }

    /// `GET /admin/cluster`: the members as last read, drift, and the link's state.
    /// `None` without a `cluster` block.
    pub fn status(&self, rt: &dyn Host) -> Option<Value> {
        let s = self.settings.load_full()?;
        let snap = rt.snapshot();
        let st = self.state.lock();
        let now = (unix_ms() as i64 + st.offset_ms).max(0) as u64;
        let own_hash = match &st.hash {
            Some((g, h)) if *g == snap.generation => h.clone(),
            _ => members::config_hash(&snap.config_text),
        };
        let list: Vec<Value> = st
            .members
            .iter()
            .map(|m| {
                let mut v = m.card.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("incarnation");
                    o.insert("self".into(), json!(m.id == s.id));
                    o.insert("seen_ms_ago".into(), json!(now.saturating_sub(m.seen_ms)));
                }
                v
            })
            .collect();
        let (hashes, drift) = members::drift(&st.members);
        Some(json!({
            "instance_id": s.id,
            "config_hash": own_hash,
            "redis": {
                "mode": s.cfg.redis.mode(),
                "endpoints": s.cfg.redis.urls().iter().map(|u| link::redact(u)).collect::<Vec<_>>(),
                "connected": st.connected,
                "last_sync_unix_ms": st.last_ok_unix_ms,
                "outage_since_unix_ms": st.outage_since_unix_ms,
                "last_error": st.last_error,
            },
            // while Redis is unreachable the list is the last one read
            "stale": !st.connected,
            "member_count": list.len(),
            "members": list,
            "config_drift": drift,
            "config_hashes": hashes,
            "duplicate_instance_id": st.duplicate_id,
            "pending_operations": st.pending.len(),
        }))
    }
}

/// The sync loop, for the life of the process (started by the supervisor).
pub async fn run(fleet: Arc<Fleet>, host: Arc<dyn Host>) {
    if fleet.running.swap(true, Ordering::AcqRel) {
        return;
    }
    loop {
        let Some(s) = fleet.settings.load_full() else {
            // standalone until a reload adds `cluster`
            fleet.wake.notified().await;
            continue;
        };
        let again = match fleet.round(&*host, &s).await {
            Ok(again) => again,
            // a reconnect is not due yet: no I/O was done
            Err(LinkError::Waiting(_)) => false,
            Err(LinkError::Failed(e)) => {
                fleet.failed(e);
                false
            }
        };
        if again {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(s.cfg.sync_interval.get()) => {}
            _ = fleet.wake.notified() => {}
        }
    }
}
