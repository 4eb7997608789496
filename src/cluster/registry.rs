//! The shared registry: backends registered, renewed, drained or removed through any
//! instance live in one Redis hash per upstream, `{prefix}:reg:<upstream>`, field
//! `<ip:port>`, value JSON:
//!
//! - registered: `{"weight": 1, "ttl_ms": 10000, "expires_ms": <Redis clock, unix ms; 0 = no
//!   TTL>, "by": "<instance or client>", "at_ms": <last change>}`
//! - drained (a configured backend taken out of rotation): `{"drained": true, "by", "at_ms"}`
//!
//! Every change goes through one Lua script ([`OP_SCRIPT`]) so that expiry times come from
//! Redis's clock (no skew between instances) and a heartbeat never races a removal.
//! Each instance reads the hashes of its upstreams every `sync_interval` and makes them its
//! runtime registrations; a TTL is enforced by that read, fleet-wide, only while Redis can
//! be read (an instance cut off from Redis keeps what it last knew).

use crate::upstream::discovery::Registered;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// Applies one registry change atomically. KEYS[1]: the upstream's hash. ARGV: kind, addr,
/// weight, ttl_ms, by, expires_ms (for `reap`). Returns 1 when something changed.
pub const OP_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind, addr, by = ARGV[1], ARGV[2], ARGV[5]
if kind == 'register' or kind == 'seed' then
  if kind == 'seed' and redis.call('HEXISTS', KEYS[1], addr) == 1 then return 0 end
  local ttl = tonumber(ARGV[4])
  local exp = 0
  if ttl > 0 then exp = now + ttl end
  redis.call('HSET', KEYS[1], addr, cjson.encode({weight = tonumber(ARGV[3]), ttl_ms = ttl,
    expires_ms = exp, by = by, at_ms = now}))
  return 1
elseif kind == 'heartbeat' then
  local v = redis.call('HGET', KEYS[1], addr)
  if not v then return 0 end
  local e = cjson.decode(v)
  if e.drained then return 0 end
  if e.ttl_ms and e.ttl_ms > 0 then e.expires_ms = now + e.ttl_ms end
  e.at_ms = now
  e.by = by
  redis.call('HSET', KEYS[1], addr, cjson.encode(e))
  return 1
elseif kind == 'deregister' then
  return redis.call('HDEL', KEYS[1], addr)
elseif kind == 'drain' or kind == 'seed_drain' then
  if kind == 'seed_drain' and redis.call('HEXISTS', KEYS[1], addr) == 1 then return 0 end
  redis.call('HSET', KEYS[1], addr, cjson.encode({drained = true, by = by, at_ms = now}))
  return 1
elseif kind == 'reap' then
  local v = redis.call('HGET', KEYS[1], addr)
  if not v then return 0 end
  local e = cjson.decode(v)
  if e.expires_ms and e.expires_ms > 0 and e.expires_ms <= now
     and tostring(e.expires_ms) == tostring(tonumber(ARGV[6])) then
    return redis.call('HDEL', KEYS[1], addr)
  end
  return 0
end
return redis.error_reply('unknown registry operation ' .. tostring(kind))
"#;

/// One change to the shared registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Register {
        upstream: String,
        addr: SocketAddr,
        weight: u32,
        ttl_ms: u64,
    },
    Heartbeat {
        upstream: String,
        addr: SocketAddr,
    },
    Deregister {
        upstream: String,
        addr: SocketAddr,
    },
    Drain {
        upstream: String,
        addr: SocketAddr,
    },
    /// Re-publish what this instance knew after Redis lost the fleet's state; never
    /// overwrites what another instance has written since.
    Seed {
        upstream: String,
        addr: SocketAddr,
        weight: u32,
        ttl_ms: u64,
    },
    SeedDrain {
        upstream: String,
        addr: SocketAddr,
    },
    /// Remove a registration whose TTL lapsed, unless it was renewed meanwhile.
    Reap {
        upstream: String,
        addr: SocketAddr,
        expires_ms: u64,
    },
}

impl Op {
    pub fn upstream(&self) -> &str {
        match self {
            Op::Register { upstream, .. }
            | Op::Heartbeat { upstream, .. }
            | Op::Deregister { upstream, .. }
            | Op::Drain { upstream, .. }
            | Op::Seed { upstream, .. }
            | Op::SeedDrain { upstream, .. }
            | Op::Reap { upstream, .. } => upstream,
        }
    }

    /// `EVAL` of [`OP_SCRIPT`] for this change, its reply ignored.
    pub fn add_to(&self, pipe: &mut redis::Pipeline, key: &str, by: &str) {
        let (kind, addr, weight, ttl, exp) = match self {
            Op::Register {
                addr,
                weight,
                ttl_ms,
                ..
            } => ("register", addr, *weight, *ttl_ms, 0),
            Op::Heartbeat { addr, .. } => ("heartbeat", addr, 0, 0, 0),
            Op::Deregister { addr, .. } => ("deregister", addr, 0, 0, 0),
            Op::Drain { addr, .. } => ("drain", addr, 0, 0, 0),
            Op::Seed {
                addr,
                weight,
                ttl_ms,
                ..
            } => ("seed", addr, *weight, *ttl_ms, 0),
            Op::SeedDrain { addr, .. } => ("seed_drain", addr, 0, 0, 0),
            Op::Reap {
                addr, expires_ms, ..
            } => ("reap", addr, 0, 0, *expires_ms),
        };
        pipe.cmd("EVAL")
            .arg(OP_SCRIPT)
            .arg(1)
            .arg(key)
            .arg(kind)
            .arg(addr.to_string())
            .arg(weight)
            .arg(ttl)
            .arg(by)
            .arg(exp)
            .ignore();
    }
}

/// One field of an upstream's hash, as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Active {
        weight: u32,
        ttl_ms: u64,
        /// Redis clock, unix ms; 0: no TTL.
        expires_ms: u64,
    },
    Drained,
}

fn num(v: &serde_json::Value, k: &str) -> Option<u64> {
    let x = v.get(k)?;
    x.as_u64().or_else(|| {
        x.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

impl Entry {
    /// A field's value; `None` for anything unreadable (skipped, never fatal).
    pub fn parse(json: &str) -> Option<Entry> {
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        if v.get("drained").and_then(|d| d.as_bool()) == Some(true) {
            return Some(Entry::Drained);
        }
        let weight = num(&v, "weight")?;
        if weight == 0 || weight > crate::upstream::MAX_WEIGHT as u64 {
            return None;
        }
        Some(Entry::Active {
            weight: weight as u32,
            ttl_ms: num(&v, "ttl_ms").unwrap_or(0),
            expires_ms: num(&v, "expires_ms").unwrap_or(0),
        })
    }
}

/// An upstream's hash (`HGETALL`) as entries by address; unreadable fields are skipped.
pub fn parse_hash(fields: Vec<(String, String)>) -> BTreeMap<SocketAddr, Entry> {
    fields
        .into_iter()
        .filter_map(|(addr, json)| Some((addr.parse().ok()?, Entry::parse(&json)?)))
        .collect()
}

/// An upstream's runtime registrations and drains, and the lapsed entries (address, expiry)
/// to remove from Redis.
pub type Desired = (
    BTreeMap<SocketAddr, Registered>,
    BTreeSet<SocketAddr>,
    Vec<(SocketAddr, u64)>,
);

/// What an upstream's runtime registrations should be, from the shared entries at Redis
/// time `now`.
///
/// `grace_from`: the Redis time this instance reconnected after an outage. A TTL that
/// lapsed while it (and maybe the whole fleet) could not reach Redis runs again from the
/// reconnect: heartbeats that could not be recorded do not make a mass expiry.
pub fn desired(
    entries: &BTreeMap<SocketAddr, Entry>,
    now: u64,
    grace_from: Option<u64>,
) -> Desired {
    let mut reg = BTreeMap::new();
    let mut drained = BTreeSet::new();
    let mut lapsed = Vec::new();
    for (addr, e) in entries {
        match e {
            Entry::Drained => {
                drained.insert(*addr);
            }
            Entry::Active {
                weight,
                ttl_ms,
                expires_ms,
            } => {
                let effective = match (*expires_ms, grace_from) {
                    (0, _) => u64::MAX,
                    (exp, Some(g)) => exp.max(g.saturating_add(*ttl_ms)),
                    (exp, None) => exp,
                };
                if now >= effective {
                    lapsed.push((*addr, *expires_ms));
                    continue;
                }
                reg.insert(
                    *addr,
                    Registered {
                        weight: *weight,
                        expires: None,
                        ttl: (*ttl_ms > 0).then(|| std::time::Duration::from_millis(*ttl_ms)),
                    },
                );
            }
        }
    }
    (reg, drained, lapsed)
}

/// Lay changes not yet written to Redis over what was read, so that a read racing an
/// admin call does not undo it for a round.
pub fn overlay<'a>(
    upstream: &str,
    reg: &mut BTreeMap<SocketAddr, Registered>,
    drained: &mut BTreeSet<SocketAddr>,
    pending: impl Iterator<Item = &'a Op>,
) {
    for op in pending.filter(|o| o.upstream() == upstream) {
        match op {
            Op::Register {
                addr,
                weight,
                ttl_ms,
                ..
            }
            | Op::Seed {
                addr,
                weight,
                ttl_ms,
                ..
            } => {
                drained.remove(addr);
                reg.insert(
                    *addr,
                    Registered {
                        weight: *weight,
                        expires: None,
                        ttl: (*ttl_ms > 0).then(|| std::time::Duration::from_millis(*ttl_ms)),
                    },
                );
            }
            Op::Deregister { addr, .. } => {
                reg.remove(addr);
            }
            Op::Drain { addr, .. } | Op::SeedDrain { addr, .. } => {
                drained.insert(*addr);
            }
            Op::Heartbeat { .. } | Op::Reap { .. } => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_parse_and_bad_ones_are_skipped() {
        let m = parse_hash(vec![
            (
                "127.0.0.1:1".into(),
                r#"{"weight":2,"ttl_ms":1000,"expires_ms":1.7e12}"#.into(),
            ),
            ("127.0.0.1:2".into(), r#"{"drained":true}"#.into()),
            ("not-an-addr".into(), r#"{"weight":1}"#.into()),
            ("127.0.0.1:3".into(), "garbage".into()),
            ("127.0.0.1:4".into(), r#"{"weight":0}"#.into()),
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[&a("127.0.0.1:1")],
            Entry::Active {
                weight: 2,
                ttl_ms: 1000,
                expires_ms: 1_700_000_000_000
            }
        );
        assert_eq!(m[&a("127.0.0.1:2")], Entry::Drained);
    }

    #[test]
    fn ttl_lapses_by_the_redis_clock_with_grace_after_an_outage() {
        let mut m = BTreeMap::new();
        m.insert(
            a("127.0.0.1:1"),
            Entry::Active {
                weight: 1,
                ttl_ms: 1000,
                expires_ms: 5000,
            },
        );
        m.insert(
            a("127.0.0.1:2"),
            Entry::Active {
                weight: 1,
                ttl_ms: 0,
                expires_ms: 0,
            },
        );
        let (reg, _, lapsed) = desired(&m, 4999, None);
        assert_eq!(reg.len(), 2);
        assert!(lapsed.is_empty());
        let (reg, _, lapsed) = desired(&m, 5000, None);
        assert_eq!(reg.len(), 1, "the TTL lapsed; the one without TTL stays");
        assert_eq!(lapsed, vec![(a("127.0.0.1:1"), 5000)]);
        // reconnected at 9000 after an outage: the TTL runs again from there
        let (reg, _, lapsed) = desired(&m, 9500, Some(9000));
        assert_eq!(reg.len(), 2);
        assert!(lapsed.is_empty());
        let (reg, _, _) = desired(&m, 10_000, Some(9000));
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn pending_changes_win_over_a_stale_read() {
        let mut reg = BTreeMap::new();
        let mut dr = BTreeSet::new();
        let ops = [
            Op::Register {
                upstream: "u".into(),
                addr: a("127.0.0.1:1"),
                weight: 3,
                ttl_ms: 0,
            },
            Op::Drain {
                upstream: "u".into(),
                addr: a("127.0.0.1:9"),
            },
            Op::Register {
                upstream: "other".into(),
                addr: a("127.0.0.1:2"),
                weight: 1,
                ttl_ms: 0,
            },
        ];
        overlay("u", &mut reg, &mut dr, ops.iter());
        assert_eq!(reg.len(), 1);
        assert_eq!(reg[&a("127.0.0.1:1")].weight, 3);
        assert!(dr.contains(&a("127.0.0.1:9")));
    }
}
