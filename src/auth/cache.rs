//! The verified-token cache: the result of an expensive signature check, keyed by the
//! SHA-256 of the token, bounded in entries, valid until min(exp, ttl). Sharded so that
//! lookups on different tokens do not contend.

use super::Identity;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

const SHARDS: usize = 32;

struct Entry {
    identity: Arc<Identity>,
    /// Unix seconds after which the entry must not be used (token exp, or ttl).
    valid_until: u64,
}

pub struct TokenCache {
    shards: Vec<RwLock<HashMap<[u8; 32], Entry>>>,
    per_shard: usize,
}

impl TokenCache {
    pub fn new(max_entries: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            per_shard: (max_entries / SHARDS).max(1),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> &RwLock<HashMap<[u8; 32], Entry>> {
        &self.shards[key[0] as usize % SHARDS]
    }

    pub fn get(&self, key: &[u8; 32], now: u64) -> Option<Arc<Identity>> {
        let g = self.shard(key).read().unwrap_or_else(|p| p.into_inner());
        let e = g.get(key)?;
        if e.valid_until > now {
            Some(e.identity.clone())
        } else {
            None
        }
    }

    pub fn insert(&self, key: [u8; 32], identity: Arc<Identity>, valid_until: u64, now: u64) {
        let mut g = self.shard(&key).write().unwrap_or_else(|p| p.into_inner());
        if g.len() >= self.per_shard {
            // drop expired entries first; if still full, drop an arbitrary tenth
            g.retain(|_, e| e.valid_until > now);
            if g.len() >= self.per_shard {
                let n = (self.per_shard / 10).max(1);
                let victims: Vec<[u8; 32]> = g.keys().take(n).copied().collect();
                for v in victims {
                    g.remove(&v);
                }
            }
        }
        g.insert(
            key,
            Entry {
                identity,
                valid_until,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> Arc<Identity> {
        Arc::new(Identity::default())
    }

    #[test]
    fn expiry_and_bound() {
        let c = TokenCache::new(64);
        c.insert([1; 32], ident(), 100, 50);
        assert!(c.get(&[1; 32], 99).is_some());
        assert!(
            c.get(&[1; 32], 100).is_none(),
            "never served past valid_until"
        );
        for i in 0..10_000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.insert(k, ident(), 1000, 50);
        }
        assert!(c.len() <= 64, "bounded: {}", c.len());
    }

    fn key(first: u8, n: u32) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[0] = first;
        k[1..5].copy_from_slice(&n.to_le_bytes());
        k
    }

    #[test]
    fn len_and_is_empty() {
        let c = TokenCache::new(64);
        assert_eq!(c.len(), 0);
        assert!(c.is_empty());
        c.insert(key(1, 0), ident(), 100, 50);
        assert_eq!(c.len(), 1);
        assert!(!c.is_empty());
        c.insert(key(2, 0), ident(), 100, 50);
        c.insert(key(3, 0), ident(), 100, 50);
        assert_eq!(c.len(), 3);
    }

    /// 64 entries over 32 shards: 2 per shard. Keys differing in their first byte
    /// (0..32) land in different shards, so none is evicted.
    #[test]
    fn keys_spread_over_shards() {
        let c = TokenCache::new(64);
        for b in 0..32u8 {
            c.insert(key(b, 0), ident(), 1000, 50);
        }
        assert_eq!(c.len(), 32);
        for b in 0..32u8 {
            assert!(c.get(&key(b, 0), 60).is_some(), "key {b} evicted");
        }
    }

    /// A full shard first drops entries expiring exactly now (they can no longer be
    /// served), and then has room without evicting live entries.
    #[test]
    fn full_shard_drops_entries_expiring_now() {
        let c = TokenCache::new(320); // 10 per shard
        for i in 0..9 {
            c.insert(key(7, i), ident(), 100, 50);
        }
        c.insert(key(7, 100), ident(), 1000, 50);
        assert_eq!(c.len(), 10);
        c.insert(key(7, 200), ident(), 1000, 100);
        assert_eq!(c.len(), 2, "only the two live entries remain");
        assert!(c.get(&key(7, 100), 100).is_some());
        assert!(c.get(&key(7, 200), 100).is_some());
    }

    /// A shard full of live entries drops a tenth of them (2 of 20) to make room.
    #[test]
    fn full_shard_evicts_a_tenth() {
        let c = TokenCache::new(640); // 20 per shard
        for i in 0..20 {
            c.insert(key(9, i), ident(), 1000, 50);
        }
        assert_eq!(c.len(), 20);
        c.insert(key(9, 100), ident(), 1000, 60);
        assert_eq!(c.len(), 19);
        assert!(c.get(&key(9, 100), 60).is_some());
    }
}
