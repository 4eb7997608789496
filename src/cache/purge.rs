//! Purges requested through the admin API: `{"key": "/api/x?a=1"}`, `{"prefix": "/api/"}` or
//! `{"all": true}`. See [`super::key`] for what a key and a prefix match.

use super::{key, storage, STATS};
use serde_json::Value;

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every entry of exactly this path and query (all hosts, identities, variants).
    Key(String),
    /// Every entry whose path (and query) starts with this.
    Prefix(String),
    All,
}

impl Target {
    /// Read the admin request body.
    pub fn from_json(v: &Value) -> Result<Target, String> {
        let key = v.get("key");
        let prefix = v.get("prefix");
        let all = v.get("all");
        let given = [key, prefix, all].iter().filter(|x| x.is_some()).count();
        if given != 1 {
            return Err("give exactly one of `key`, `prefix` or `all`".into());
        }
        let path = |x: &Value, name: &str| -> Result<String, String> {
            match x.as_str() {
                Some(s) if s.starts_with('/') && s.len() <= 8192 => Ok(s.to_string()),
                _ => Err(format!("`{name}` must be a path starting with `/`")),
            }
        };
        if let Some(k) = key {
            return path(k, "key").map(Target::Key);
        }
        if let Some(p) = prefix {
            return path(p, "prefix").map(Target::Prefix);
        }
        match all.and_then(Value::as_bool) {
            Some(true) => Ok(Target::All),
            _ => Err("`all` must be `true`".into()),
        }
    }
}

/// Remove the entries `target` names; returns how many were removed.
pub fn purge(target: &Target) -> Result<usize, String> {
    let store = storage();
    let removed = match target {
        Target::Key(k) => store.purge_prefix(&key::purge_key_prefix(k)?),
        Target::Prefix(p) => store.purge_prefix(&key::purge_path_prefix(p)?),
        Target::All => store.purge_all(),
    };
    STATS.record_purged(removed);
    Ok(removed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_bodies() {
        assert_eq!(
            Target::from_json(&json!({"key": "/a?x=1"})).unwrap(),
            Target::Key("/a?x=1".into())
        );
        assert_eq!(
            Target::from_json(&json!({"prefix": "/api/"})).unwrap(),
            Target::Prefix("/api/".into())
        );
        assert_eq!(
            Target::from_json(&json!({"all": true})).unwrap(),
            Target::All
        );
        assert!(Target::from_json(&json!({})).is_err());
        assert!(Target::from_json(&json!({"key": "/a", "prefix": "/"})).is_err());
        assert!(Target::from_json(&json!({"key": "a"})).is_err());
        assert!(Target::from_json(&json!({"all": false})).is_err());
    }
}
