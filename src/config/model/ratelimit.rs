//! Rate-limit policies and their cluster sync.

use crate::config::units::Dur;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Limits by client tier (from the API key's `tier` or the JWT's `tier_claim`).
    #[serde(default, deserialize_with = "crate::config::unique::map")]
    pub tiers: BTreeMap<String, LimitConfig>,
    #[serde(default, deserialize_with = "crate::config::unique::map")]
    pub policies: BTreeMap<String, PolicyConfig>,
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Width of each count-min sketch row: memory per policy is 2 × 4 × slots × 8 bytes
    /// whatever the number of keys; wider means fewer over-counts with many active keys.
    #[serde(default = "default_sketch_slots")]
    pub sketch_slots: usize,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            tiers: BTreeMap::new(),
            policies: BTreeMap::new(),
            cluster: None,
            sketch_slots: default_sketch_slots(),
        }
    }
}

pub(crate) fn default_sketch_slots() -> usize {
    32_768
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub requests: u64,
    pub per: Dur,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `client` (API key id, else JWT sub, else IP), `ip`, `route`, or `header:NAME`.
    pub key: String,
    pub requests: u64,
    pub per: Dur,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]`
    pub redis: String,
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Keys tracked for syncing per instance (least recently used beyond this are local-only).
    #[serde(default = "default_cluster_keys")]
    pub max_keys: usize,
}

pub(crate) fn default_sync_interval() -> Dur {
    Dur::millis(100)
}
pub(crate) fn default_key_prefix() -> String {
    "portcullis".to_string()
}
pub(crate) fn default_cluster_keys() -> usize {
    100_000
}
