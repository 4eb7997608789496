//! `cluster:` at the top level: the one Redis (single or Redis Cluster) that a fleet of
//! gateways shares for rate limits, revocations, registrations, purges and membership.
//! The runtime side is `crate::cluster`.

use super::units::Dur;
use super::{Config, Problems};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `redis://host:port[/db]` (or `rediss://`) for one Redis; a list of node URLs for a
    /// Redis Cluster (a list of one is a cluster with one seed node).
    pub redis: RedisEndpoints,
    /// PEM file of the CA certificates trusted for `rediss://` (default: the system's).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// This instance's name in the fleet (default: host name + `:` + first listen port).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How often each instance writes its changes to Redis and reads the others'.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    /// Every key starts with `{key_prefix}` (a hash tag: the whole fleet sits on one slot).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// A member that has not announced itself for this long is no longer listed.
    #[serde(default = "default_member_ttl")]
    pub member_ttl: Dur,
    /// Purges kept in the purge log (a Redis stream) for instances that were away.
    #[serde(default = "default_purge_log")]
    pub purge_log: usize,
    /// Rate-limit keys synced per interval per instance (`rate_limits.cluster.max_keys`).
    #[serde(default = "default_rate_limit_keys")]
    pub rate_limit_keys: usize,
    /// Longest wait between two reconnect attempts while Redis is unreachable (the wait
    /// starts at `sync_interval` and doubles).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: Dur,
    /// Admin operations waiting for Redis beyond this are dropped, oldest first (counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

/// One Redis, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RedisEndpoints {
    Single(String),
    Cluster(Vec<String>),
}

impl RedisEndpoints {
    pub fn urls(&self) -> Vec<&str> {
        match self {
            RedisEndpoints::Single(u) => vec![u.as_str()],
            RedisEndpoints::Cluster(l) => l.iter().map(String::as_str).collect(),
        }
    }

    pub fn mode(&self) -> &'static str {
        match self {
            RedisEndpoints::Single(_) => "single",
            RedisEndpoints::Cluster(_) => "cluster",
        }
    }
}

impl<'de> Deserialize<'de> for RedisEndpoints {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_yaml::Value::deserialize(d)?;
        let msg = "`redis` is a `redis://host:port` URL, or a list of them for a Redis Cluster";
        match v {
            serde_yaml::Value::String(s) => Ok(RedisEndpoints::Single(s)),
            serde_yaml::Value::Sequence(list) => list
                .into_iter()
                .map(|x| match x {
                    serde_yaml::Value::String(s) => Ok(s),
                    _ => Err(D::Error::custom(msg)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(RedisEndpoints::Cluster),
            _ => Err(D::Error::custom(msg)),
        }
    }
}

fn default_sync_interval() -> Dur {
    Dur::millis(250)
}
fn default_key_prefix() -> String {
    "portcullis".to_string()
}
fn default_member_ttl() -> Dur {
    Dur::secs(10)
}
fn default_purge_log() -> usize {
    10_000
}
fn default_rate_limit_keys() -> usize {
    100_000
}
fn default_reconnect_max() -> Dur {
    Dur::secs(5)
}
fn default_queue() -> usize {
    10_000
}

/// A valid instance id: 1-128 of `[A-Za-z0-9._:-]` (it appears in JSON, logs and keys).
pub fn valid_instance_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Check `cluster` (and that the older `rate_limits.cluster` is not given beside it).
pub fn check(cfg: &Config, p: &mut Problems) {
    let Some(c) = &cfg.cluster else { return };
    if cfg.rate_limits.cluster.is_some() {
        let both = "`cluster` and `rate_limits.cluster` both configure Redis: keep only the \
                    top-level `cluster` (it shares rate limits too; `rate_limits.cluster` is \
                    the older, limits-only form)";
        p.push("cluster", both);
        p.push("rate_limits.cluster", both);
    }
    let urls: Vec<(String, &str)> = match &c.redis {
        RedisEndpoints::Single(u) => vec![("cluster.redis".to_string(), u.as_str())],
        RedisEndpoints::Cluster(list) => {
            if list.is_empty() {
                p.push("cluster.redis", "the list of Redis Cluster nodes is empty");
            }
            list.iter()
                .enumerate()
                .map(|(i, u)| (format!("cluster.redis[{i}]"), u.as_str()))
                .collect()
        }
    };
    for (key, url) in urls {
        if let Err(e) = check_url(url) {
            p.push(key, e);
        }
    }
    if let Some(f) = &c.tls_ca_file {
        if !c.redis.urls().iter().any(|u| u.starts_with("rediss://")) {
            p.push(
                "cluster.tls_ca_file",
                "applies to rediss:// URLs only (cluster.redis has none)",
            );
        } else if let Err(e) = std::fs::read(f) {
            p.push("cluster.tls_ca_file", format!("cannot read `{f}`: {e}"));
        }
    }
    if let Some(id) = &c.instance_id {
        if !valid_instance_id(id) {
            p.push(
                "cluster.instance_id",
                "must be 1-128 characters of letters, digits, `.`, `_`, `:` and `-`",
            );
        }
    }
    let sync = c.sync_interval.get();
    if sync < std::time::Duration::from_millis(10) || sync > std::time::Duration::from_secs(60) {
        p.push("cluster.sync_interval", "must be between 10ms and 60s");
    }
    if c.member_ttl.get() < sync * 3 {
        p.push(
            "cluster.member_ttl",
            "must be at least 3 × sync_interval (a member would drop out between announcements)",
        );
    }
    if c.reconnect_max.get() < sync {
        p.push("cluster.reconnect_max", "must be at least sync_interval");
    }
    let prefix_ok = !c.key_prefix.is_empty()
        && c.key_prefix.len() <= 64
        && c.key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if !prefix_ok {
        p.push(
            "cluster.key_prefix",
            "must be 1-64 characters of letters, digits, `.`, `_`, `:` and `-` (it becomes the \
             hash tag `{prefix}`)",
        );
    }
    if c.purge_log < 100 {
        p.push("cluster.purge_log", "must be at least 100");
    }
    if c.queue < 100 {
        p.push("cluster.queue", "must be at least 100");
    }
    if c.rate_limit_keys == 0 {
        p.push("cluster.rate_limit_keys", "must be above 0");
    }
}

fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(format!(
            "`{}` is not a redis:// or rediss:// URL",
            redact(url)
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(|_| ())
        .map_err(|e| format!("`{}` is not a usable Redis URL: {e}", redact(url)))
}

/// `redis://user:secret@host` → `redis://user:REDACTED@host` for logs and errors.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => {
                let user = auth.split_once(':').map_or(auth, |(u, _)| u);
                if auth.contains(':') {
                    format!("{scheme}://{user}:REDACTED@{host}")
                } else {
                    format!("{scheme}://REDACTED@{host}")
                }
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}
