//! The purge log: every purge made through an instance's admin API is appended to the
//! Redis stream `{prefix}:purges` (capped near `purge_log` entries) with the fields
//! `origin` (the publishing process), `instance` (its `instance_id`) and `target`
//! (the purge body as JSON: `{"key": ...}`, `{"prefix": ...}` or `{"all": true}`).
//!
//! Each instance reads the stream from where it last stopped. One that was cut off reads
//! what it missed when it is back; if the stream was trimmed past its position it cannot
//! know what it missed and empties its whole cache instead. Purges made while Redis is
//! unreachable wait in the instance's queue and are appended when it returns.

use crate::cache::purge::Target;
use serde_json::{json, Value};

/// Reads the stream after a position. KEYS[1]: the stream; ARGV: the exclusive start id,
/// the count. Returns `{max-deleted-entry-id, entries}` (`{"0-0", {}}` without a stream).
pub const READ_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'0-0', {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local maxdel = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then maxdel = info[i + 1] end
end
return {maxdel, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
"#;

/// Entries read per round; more are read in the next (immediate) round.
pub const READ_COUNT: usize = 256;

/// A stream entry id, `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamId(pub u64, pub u64);

impl StreamId {
    pub fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

pub fn target_json(t: &Target) -> Value {
    match t {
        Target::Key(k) => json!({ "key": k }),
        Target::Prefix(p) => json!({ "prefix": p }),
        Target::All => json!({ "all": true }),
    }
}

/// A purge waiting to be appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub target: Target,
}

impl Published {
    pub fn add_to(
        &self,
        pipe: &mut redis::Pipeline,
        key: &str,
        cap: usize,
        origin: &str,
        id: &str,
    ) {
        pipe.cmd("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(cap)
            .arg("*")
            .arg("origin")
            .arg(origin)
            .arg("instance")
            .arg(id)
            .arg("target")
            .arg(target_json(&self.target).to_string())
            .ignore();
    }
}

/// One entry as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: StreamId,
    pub origin: String,
    pub instance: String,
    /// `None`: an entry whose target could not be read (skipped and logged).
    pub target: Option<Target>,
}

/// What [`READ_SCRIPT`] answered: (max deleted id, entries).
pub fn parse_read(v: &redis::Value) -> Option<(StreamId, Vec<Entry>)> {
    use super::value::{items, text};
    let top = items(v)?;
    let maxdel = StreamId::parse(&text(top.first()?)?).unwrap_or_default();
    let mut entries = Vec::new();
    for e in items(top.get(1)?)? {
        let Some(parts) = items(e) else { continue };
        let (Some(id), Some(fields)) = (
            parts
                .first()
                .and_then(text)
                .and_then(|s| StreamId::parse(&s)),
            parts.get(1).and_then(items),
        ) else {
            continue;
        };
        let mut origin = String::new();
        let mut instance = String::new();
        let mut target = None;
        for pair in fields.chunks(2) {
            let (Some(k), Some(v)) = (pair.first().and_then(text), pair.get(1).and_then(text))
            else {
                continue;
            };
            match k.as_str() {
                "origin" => origin = v,
                "instance" => instance = v,
                "target" => {
                    target = serde_json::from_str::<Value>(&v)
                        .ok()
                        .and_then(|t| Target::from_json(&t).ok())
                }
                _ => {}
            }
        }
        entries.push(Entry {
            id,
            origin,
            instance,
            target,
        });
    }
    Some((maxdel, entries))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_like_redis() {
        let a = StreamId::parse("1700000000000-5").unwrap();
        let b = StreamId::parse("1700000000001-0").unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-5");
        assert!(StreamId::parse("x-1").is_none());
    }

    #[test]
    fn targets_round_trip() {
        for t in [
            Target::Key("/a?b=1".into()),
            Target::Prefix("/api/".into()),
            Target::All,
        ] {
            assert_eq!(Target::from_json(&target_json(&t)).unwrap(), t);
        }
    }
}
