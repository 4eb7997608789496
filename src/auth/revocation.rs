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

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Revocations {
        Revocations {
            map: ArcSwap::from_pointee(HashMap::new()),
            write: std::sync::Mutex::new(()),
        }
    }

    #[test]
    fn a_revocation_holds_until_its_time_and_not_at_it() {
        let r = fresh();
        assert!(r.is_empty());
        let now = unix_now();
        r.add("a".into(), now + 100);
        assert!(r.is_revoked("a"));
        assert!(!r.is_revoked("b"));
        assert_eq!((r.len(), r.is_empty()), (1, false));
        // an entry whose time has come no longer denies
        r.map
            .store(Arc::new(HashMap::from([("due".to_string(), unix_now())])));
        assert!(!r.is_revoked("due"));
    }

    #[test]
    fn only_future_revocations_are_added_and_a_later_time_extends() {
        let r = fresh();
        let now = unix_now();
        assert_eq!(
            r.add_many([("past".into(), now - 1), ("now".into(), now)]),
            0
        );
        assert!(r.is_empty(), "{:?}", r.snapshot());
        assert_eq!(
            r.add_many([("a".into(), now + 100), ("b".into(), now + 100)]),
            2
        );
        assert_eq!(
            r.add_many([("a".into(), now + 50)]),
            0,
            "earlier: no change"
        );
        assert_eq!(
            r.add_many([("a".into(), now + 100)]),
            0,
            "the same: no change"
        );
        assert_eq!(r.snapshot().get("a"), Some(&(now + 100)));
        assert_eq!(r.add_many([("a".into(), now + 200)]), 1);
        assert_eq!(r.snapshot().get("a"), Some(&(now + 200)));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn expired_entries_are_dropped_by_the_next_add() {
        let r = fresh();
        let now = unix_now();
        r.map.store(Arc::new(HashMap::from([
            ("old".to_string(), now - 5),
            ("due".to_string(), now),
            ("live".to_string(), now + 100),
        ])));
        r.add("new".into(), now + 100);
        let snap = r.snapshot();
        let mut keys: Vec<&str> = snap.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["live", "new"]);
    }
}
