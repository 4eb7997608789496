//! A route's `wasm:` list: proxy-wasm filters (`crate::plugin::wasm`).

use crate::config::units::{ByteSize, Dur};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmConfig {
    /// The module (`.wasm`), relative to the config file's directory.
    pub file: String,
    /// Names the filter in metrics and logs (default: the file name without `.wasm`).
    #[serde(default)]
    pub name: Option<String>,
    /// The plugin configuration the filter reads in `proxy_on_configure`: a string as it is,
    /// anything else as JSON.
    #[serde(default)]
    pub config: serde_yaml::Value,
    /// The root context id the filter registered (`plugin_root_id`; default empty).
    #[serde(default)]
    pub root_id: String,
    /// Shared data is shared between filters of the same `vm_id` (default empty).
    #[serde(default)]
    pub vm_id: String,
    /// What `proxy_on_vm_start` reads (string or JSON, like `config`).
    #[serde(default)]
    pub vm_config: serde_yaml::Value,
    /// The longest one callback may run (default 100ms); past it the request gets a 500.
    #[serde(default)]
    pub time_limit: Option<Dur>,
    /// The most linear memory one instance may grow to (default 32MiB).
    #[serde(default)]
    pub max_memory: Option<ByteSize>,
    /// Idle instances kept for the next requests (default 64).
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Read the whole request body (up to 64 KiB) before anything goes upstream and give it
    /// to `proxy_on_request_body` at once, so the filter may rewrite it (default: the body
    /// streams, chunk by chunk).
    #[serde(default)]
    pub buffer_request_body: bool,
}
