//! The global response store and each route's caching.

use crate::config::units::{ByteSize, Dur};
use serde::Deserialize;

/// `cache:` at the top level: the one in-memory response store every caching route shares.
/// Read once at start-up: a reload cannot resize the store (a restart or upgrade does).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Upper bound of the store. Entries weigh their body, headers, key and bookkeeping.
    #[serde(default = "default_cache_max_size")]
    pub max_size: ByteSize,
    /// Largest single response stored (default: `max_size / 8`); bigger ones are served uncached.
    #[serde(default)]
    pub max_object_size: Option<ByteSize>,
    /// How long concurrent misses of one key wait for the one request fetching it, and how
    /// long that request may hold the fetch before others may try.
    #[serde(default = "default_cache_lock_timeout")]
    pub lock_timeout: Dur,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: default_cache_max_size(),
            max_object_size: None,
            lock_timeout: default_cache_lock_timeout(),
        }
    }
}

pub(crate) fn default_cache_max_size() -> ByteSize {
    ByteSize(256 << 20)
}
pub(crate) fn default_cache_lock_timeout() -> Dur {
    Dur::secs(5)
}

pub use crate::config::cache::{RouteCacheConfig, SetCookie, TargetedConfig};
