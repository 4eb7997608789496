//! Backend membership of one upstream: addresses from the config (IPs and host names
//! re-resolved periodically), a DNS discovery name, and backends registered at runtime
//! through the admin API (with an optional TTL renewed by heartbeats).
//!
//! pingora-load-balancing reads the current set through [`ServiceDiscovery`]; whoever
//! changes a source calls `recompute` and then `LoadBalancer::update` to apply it.

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::Backend;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A backend address as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrSpec {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl AddrSpec {
    pub fn parse(s: &str) -> Result<AddrSpec, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(AddrSpec::Ip(a));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("address `{s}` needs a port (`host:port`)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("address `{s}` has an invalid port `{port}`"))?;
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(format!(
                "address `{s}` is neither `ip:port` nor `hostname:port`"
            ));
        }
        Ok(AddrSpec::Name {
            host: host.to_string(),
            port,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Registered {
    pub weight: u32,
    /// Leaves rotation at this instant unless renewed by a heartbeat.
    pub expires: Option<Instant>,
    pub ttl: Option<std::time::Duration>,
}

#[derive(Default)]
struct Sources {
    /// Config entries: spec, weight, the addresses it resolved to last time.
    configured: Vec<(AddrSpec, u32, Vec<SocketAddr>)>,
    registered: BTreeMap<SocketAddr, Registered>,
    /// Backends being drained: removed from rotation, kept for status.
    disabled: BTreeSet<SocketAddr>,
}

pub struct Membership {
    sources: Mutex<Sources>,
    current: ArcSwap<BTreeSet<Backend>>,
}

impl Membership {
    pub fn new(configured: Vec<(AddrSpec, u32)>) -> Membership {
        let configured = configured
            .into_iter()
            .map(|(spec, w)| {
                let resolved = match &spec {
                    AddrSpec::Ip(a) => vec![*a],
                    AddrSpec::Name { .. } => Vec::new(),
                };
                (spec, w, resolved)
            })
            .collect();
        let m = Membership {
            sources: Mutex::new(Sources {
                configured,
                ..Default::default()
            }),
            current: ArcSwap::from_pointee(BTreeSet::new()),
        };
        m.recompute();
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names that need resolving: (index, host, port).
    pub fn names(&self) -> Vec<(usize, String, u16)> {
        self.lock()
            .configured
            .iter()
            .enumerate()
            .filter_map(|(i, (spec, _, _))| match spec {
                AddrSpec::Name { host, port } => Some((i, host.clone(), *port)),
                AddrSpec::Ip(_) => None,
            })
            .collect()
    }

    /// The configured host name `addr` was resolved from, if any (for TLS SNI).
    pub fn host_of(&self, addr: &SocketAddr) -> Option<String> {
        self.lock()
            .configured
            .iter()
            .find_map(|(spec, _, resolved)| match spec {
                AddrSpec::Name { host, .. } if resolved.contains(addr) => Some(host.clone()),
                _ => None,
            })
    }

    /// Store what a name resolved to. Returns whether anything changed.
    pub fn set_resolved(&self, index: usize, mut addrs: Vec<SocketAddr>) -> bool {
        addrs.sort();
        addrs.dedup();
        let changed = {
            let mut s = self.lock();
            match s.configured.get_mut(index) {
                Some(entry) if entry.2 != addrs => {
                    entry.2 = addrs;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.recompute();
        }
        changed
    }

    pub fn register(&self, addr: SocketAddr, weight: u32, ttl: Option<std::time::Duration>) {
        {
            let mut s = self.lock();
            s.disabled.remove(&addr);
            s.registered.insert(
                addr,
                Registered {
                    weight,
                    expires: ttl.map(|t| Instant::now() + t),
                    ttl,
                },
            );
        }
        self.recompute();
    }

    /// Renew a registered backend's TTL. False if it is not registered.
    pub fn heartbeat(&self, addr: SocketAddr) -> bool {
        let mut s = self.lock();
        match s.registered.get_mut(&addr) {
            Some(r) => {
                r.expires = r.ttl.map(|t| Instant::now() + t);
                true
            }
            None => false,
        }
    }

    /// Remove a registered backend, or take a configured one out of rotation (drain).
    /// False if the address is unknown.
    pub fn deregister(&self, addr: SocketAddr) -> bool {
        let found = {
            let mut s = self.lock();
            if s.registered.remove(&addr).is_some() {
                true
            } else if s.configured.iter().any(|(_, _, r)| r.contains(&addr)) {
                s.disabled.insert(addr);
                true
            } else {
                false
            }
        };
        if found {
            self.recompute();
        }
        found
    }

    /// Drop registrations whose TTL lapsed. Returns the removed addresses.
    pub fn expire(&self, now: Instant) -> Vec<SocketAddr> {
        let gone: Vec<SocketAddr> = {
            let mut s = self.lock();
            let gone: Vec<SocketAddr> = s
                .registered
                .iter()
                .filter(|(_, r)| r.expires.is_some_and(|e| e <= now))
                .map(|(a, _)| *a)
                .collect();
            for a in &gone {
                s.registered.remove(a);
            }
            gone
        };
        if !gone.is_empty() {
            self.recompute();
        }
        gone
    }

    pub fn registered(&self) -> BTreeMap<SocketAddr, Registered> {
        self.lock().registered.clone()
    }

    /// Carry runtime registrations and drains over from a previous generation.
    pub fn adopt(&self, other: &Membership) {
        let (reg, dis) = {
            let o = other.lock();
            (o.registered.clone(), o.disabled.clone())
        };
        {
            let mut s = self.lock();
            s.registered = reg;
            s.disabled = dis;
        }
        self.recompute();
    }

    /// Replace the runtime registrations and drains wholesale: with a `cluster`, the
    /// fleet's shared registry is their source (`crate::cluster::registry`). Returns
    /// whether the backend set changed.
    pub fn replace_runtime(
        &self,
        registered: BTreeMap<SocketAddr, Registered>,
        disabled: BTreeSet<SocketAddr>,
    ) -> bool {
        let changed = {
            let mut s = self.lock();
            let same = s.disabled == disabled
                && s.registered.len() == registered.len()
                && s.registered
                    .iter()
                    .zip(registered.iter())
                    .all(|(a, b)| a.0 == b.0 && a.1.weight == b.1.weight && a.1.expires.is_none());
            s.registered = registered;
            s.disabled = disabled;
            !same
        };
        if changed {
            self.recompute();
        }
        changed
    }

    /// Backends taken out of rotation (drained).
    pub fn disabled(&self) -> BTreeSet<SocketAddr> {
        self.lock().disabled.clone()
    }

    /// Rebuild the backend set from the sources.
    pub fn recompute(&self) {
        let s = self.lock();
        let mut weights: HashMap<SocketAddr, u32> = HashMap::new();
        for (_, w, addrs) in &s.configured {
            for a in addrs {
                weights.entry(*a).or_insert(*w);
            }
        }
        for (a, r) in &s.registered {
            weights.insert(*a, r.weight);
        }
        let set: BTreeSet<Backend> = weights
            .into_iter()
            .filter(|(a, w)| *w > 0 && !s.disabled.contains(a))
            .map(|(a, w)| Backend {
                addr: PSocketAddr::Inet(a),
                weight: w as usize,
                ext: http::Extensions::new(),
            })
            .collect();
        self.current.store(Arc::new(set));
    }

    pub fn current(&self) -> Arc<BTreeSet<Backend>> {
        self.current.load_full()
    }
}

/// The [`ServiceDiscovery`] pingora-load-balancing polls.
pub struct MembershipDiscovery(pub Arc<Membership>);

#[async_trait]
impl ServiceDiscovery for MembershipDiscovery {
    async fn discover(&self) -> pingora_error::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok(((*self.0.current()).clone(), HashMap::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_addrs() {
        assert!(matches!(
            AddrSpec::parse("127.0.0.1:80"),
            Ok(AddrSpec::Ip(_))
        ));
        assert!(matches!(AddrSpec::parse("[::1]:80"), Ok(AddrSpec::Ip(_))));
        assert!(matches!(
            AddrSpec::parse("localhost:80"),
            Ok(AddrSpec::Name { .. })
        ));
        assert!(AddrSpec::parse("localhost").is_err());
        assert!(AddrSpec::parse("localhost:99999").is_err());
        assert!(AddrSpec::parse("a b:80").is_err());
    }

    #[test]
    fn registration_and_expiry() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let m = Membership::new(vec![(AddrSpec::Ip(a), 1)]);
        assert_eq!(m.current().len(), 1);
        m.register(b, 3, Some(std::time::Duration::from_millis(1)));
        assert_eq!(m.current().len(), 2);
        assert_eq!(
            m.expire(Instant::now() + std::time::Duration::from_secs(1)),
            vec![b]
        );
        assert_eq!(m.current().len(), 1);
        assert!(m.deregister(a));
        assert!(m.current().is_empty());
        assert!(!m.deregister(b));
    }
}
