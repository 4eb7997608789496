//! The JWT revocation denylist: `jti` → revoked until (unix seconds). Process-wide, so it
//! survives config reloads; read lock-free on the request path (copy on write).

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::LazyLock;

pub struct Revocations {
    map: ArcSwap<HashMap<String, u64>>,
    write: std::sync::Mutex<()>,
}

pub static REVOCATIONS: LazyLock<Revocations> = LazyLock::new(|| Revocations {
    map: ArcSwap::from_pointee(HashMap::new()),
    write: std::sync::Mutex::new(()),
});

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Revocations {
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.map
            .load()
            .get(jti)
            .is_some_and(|until| *until > unix_now())
    }

    /// Add (or extend) revocations; expired entries are dropped at the same time.
    pub fn add_many(&self, items: impl IntoIterator<Item = (String, u64)>) -> usize {
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_now();
        let mut next: HashMap<String, u64> = self
            .map
            .load()
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut added = 0;
        for (jti, until) in items {
            if until > now {
                let e = next.entry(jti).or_insert(0);
                if until > *e {
                    *e = until;
                    added += 1;
                }
            }
        }
        self.map.store(Arc::new(next));
        added
    }

    pub fn add(&self, jti: String, until: u64) {
        self.add_many([(jti, until)]);
    }

    pub fn snapshot(&self) -> Arc<HashMap<String, u64>> {
        self.map.load_full()
    }

    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
