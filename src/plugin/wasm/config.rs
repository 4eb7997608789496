//! A route's `wasm:` list compiled into plugins of its chain: each file read (relative to the
//! config file's directory), compiled (or taken from the module cache) and configured once.
//! A missing, invalid or refusing module is a config problem at `wasm[i].file` (or
//! `wasm[i].config` when the filter rejected its configuration).
//!
//! `proxy_http_call` may name any upstream of the config's `upstreams` with static
//! `backends`; the addresses are resolved here, at load.

use super::filter::WasmPlugin;
use super::{config_bytes, CallTarget, FilterInfo, InstanceLimits, Spec, WasmFilter};
use crate::config::{Problems, UpstreamConfig, WasmConfig};
use crate::plugin::Plugin;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

/// What a route's filters need to know about the route and the config.
pub struct Route<'a> {
    pub name: &'a str,
    pub config_file: &'a str,
    pub upstreams: &'a BTreeMap<String, UpstreamConfig>,
}

/// Compile `list` (reported under `wasm[i]`).
pub fn compile(list: &[WasmConfig], route: &Route<'_>, p: &mut Problems) -> Vec<Arc<dyn Plugin>> {
    let targets = call_targets(route.upstreams);
    let dir = Path::new(route.config_file)
        .parent()
        .unwrap_or_else(|| Path::new(""));
    let mut out: Vec<Arc<dyn Plugin>> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let base = ["wasm[", itoa::Buffer::new().format(i), "]"].concat();
        p.within(&base, |p| {
            if let Some(plugin) = one(entry, dir, route, &targets, p) {
                out.push(Arc::new(plugin));
            }
        });
    }
    out
}

fn one(
    entry: &WasmConfig,
    dir: &Path,
    route: &Route<'_>,
    targets: &[(String, CallTarget)],
    p: &mut Problems,
) -> Option<WasmPlugin> {
    let path = dir.join(&entry.file);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            p.push("file", format!("cannot read `{}`: {e}", path.display()));
            return None;
        }
    };
    let name = entry.name.clone().unwrap_or_else(|| {
        Path::new(&entry.file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| entry.file.clone())
    });
    let max_memory = entry
        .max_memory
        .map(|m| usize::try_from(m.0).unwrap_or(usize::MAX))
        .unwrap_or(super::DEFAULT_MAX_MEMORY);
    if max_memory < 1 << 16 {
        p.push("max_memory", "must be at least 64KiB (one wasm page)");
        return None;
    }
    let time_limit = entry
        .time_limit
        .map(|d| d.get())
        .unwrap_or(super::DEFAULT_TIME_LIMIT);
    if time_limit.is_zero() {
        p.push("time_limit", "must be more than 0");
        return None;
    }
    let spec = Spec {
        info: FilterInfo {
            name: Arc::from(name.as_str()),
            route: Arc::from(route.name),
            root_id: entry.root_id.clone(),
            vm_id: entry.vm_id.clone(),
            config: config_bytes(&entry.config),
            vm_config: config_bytes(&entry.vm_config),
            call_targets: targets.to_vec(),
        },
        limits: InstanceLimits {
            max_memory,
            time_limit,
            max_idle: entry.pool_size.unwrap_or(super::DEFAULT_MAX_IDLE),
        },
    };
    match WasmFilter::load(&bytes, spec) {
        Ok(f) => {
            log::info!(
                "wasm filter `{name}` on route `{}`: {} (sha256 {}…)",
                route.name,
                path.display(),
                f.digest()
            );
            Some(WasmPlugin::new(f, entry.buffer_request_body))
        }
        Err(e) => {
            let key = if e.contains("configuration") {
                "config"
            } else {
                "file"
            };
            p.push(key, format!("wasm filter `{}`: {e}", path.display()));
            None
        }
    }
}

/// Every upstream with static backends, by name, its addresses resolved.
fn call_targets(upstreams: &BTreeMap<String, UpstreamConfig>) -> Vec<(String, CallTarget)> {
    upstreams
        .iter()
        .filter_map(|(name, u)| {
            let addrs: Vec<SocketAddr> = u
                .backends
                .iter()
                .filter_map(|b| b.addr.to_socket_addrs().ok().and_then(|mut a| a.next()))
                .collect();
            if addrs.is_empty() {
                return None;
            }
            let sni = u.sni.clone().unwrap_or_else(|| {
                u.backends
                    .first()
                    .and_then(|b| b.addr.rsplit_once(':').map(|(h, _)| h.to_string()))
                    .unwrap_or_default()
            });
            Some((
                name.clone(),
                CallTarget {
                    addrs,
                    tls: u.tls,
                    sni,
                },
            ))
        })
        .collect()
}
