//! Membership: every `sync_interval` each instance writes its card to the hash
//! `{prefix}:members` (field: its `instance_id`, value: JSON) and the Redis time to the
//! sorted set `{prefix}:members:seen`; members not seen for `member_ttl` are removed by
//! whoever announces next. `GET /admin/cluster` lists what the last sync read.

use serde_json::{json, Value};

/// KEYS[1]: the members hash, KEYS[2]: the seen set. ARGV: id, card JSON, member_ttl ms.
/// Returns `{redis time in unix ms, the card this one replaced (or nil)}`.
pub const ANNOUNCE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local cut = '(' .. tostring(now - tonumber(ARGV[3]))
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cut)
for _, id in ipairs(dead) do redis.call('HDEL', KEYS[1], id) end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cut) end
return {now, prev}
"#;

/// One member as last read.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    /// The card as the member wrote it.
    pub card: Value,
    /// Redis time of its last announcement (unix ms).
    pub seen_ms: u64,
}

impl Member {
    pub fn config_hash(&self) -> Option<&str> {
        self.card.get("config_hash").and_then(Value::as_str)
    }
}

/// SHA-256 (hex) of the config as parsed, without what is naturally different on every
/// instance: `cluster.instance_id` and the addresses it listens on (`server.listen`,
/// `server.tls.listen`, `server.admin.listen`). Keys are sorted, so formatting, comments and
/// key order do not count; any other difference does.
pub fn config_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let canonical = match serde_yaml::from_str::<Value>(text) {
        Ok(mut v) => {
            if let Some(c) = v.get_mut("cluster").and_then(Value::as_object_mut) {
                c.remove("instance_id");
            }
            if let Some(s) = v.get_mut("server").and_then(Value::as_object_mut) {
                s.remove("listen");
                for k in ["tls", "admin"] {
                    if let Some(x) = s.get_mut(k).and_then(Value::as_object_mut) {
                        x.remove("listen");
                    }
                }
            }
            // serde_json's map is ordered by key
            v.to_string()
        }
        Err(_) => text.to_string(),
    };
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// Members grouped by the config hash they serve: `{hash: [ids]}`, and whether there is
/// more than one hash (drift).
pub fn drift(members: &[Member]) -> (serde_json::Map<String, Value>, bool) {
    let mut by_hash: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for m in members {
        let h = m.config_hash().unwrap_or("unknown").to_string();
        by_hash.entry(h).or_default().push(m.id.clone());
    }
    let drifting = by_hash.len() > 1;
    let map = by_hash
        .into_iter()
        .map(|(h, ids)| (h, json!(ids)))
        .collect();
    (map, drifting)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_ignores_identity_listeners_and_formatting() {
        let a = "server:\n  listen: [\"0.0.0.0:1\"]\n  admin: { listen: \"127.0.0.1:2\" }\ncluster: { redis: \"redis://r:6379\", instance_id: a }\nroutes: []\n";
        let b = "# another host\nroutes: []\ncluster:\n  instance_id: b\n  redis: \"redis://r:6379\"\nserver:\n  listen: [\"0.0.0.0:3\"]\n  admin: { listen: \"127.0.0.1:4\" }\n";
        assert_eq!(config_hash(a), config_hash(b));
        let c = b.replace(
            "routes: []",
            "routes: [{ match: { path: /x }, upstream: u }]",
        );
        assert_ne!(config_hash(a), config_hash(&c));
    }

    #[test]
    fn drift_is_more_than_one_hash() {
        let m = |id: &str, h: &str| Member {
            id: id.into(),
            card: json!({ "config_hash": h }),
            seen_ms: 0,
        };
        let (_, d) = drift(&[m("a", "x"), m("b", "x")]);
        assert!(!d);
        let (map, d) = drift(&[m("a", "x"), m("b", "y"), m("c", "x")]);
        assert!(d);
        assert_eq!(map["x"], json!(["a", "c"]));
    }
}
