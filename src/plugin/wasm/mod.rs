//! proxy-wasm filters (ABI 0.2.0 and 0.2.1, the one Envoy, Istio, Kong and APISIX host) on
//! wasmtime.
//!
//! A route's `wasm:` entry names a module file. At load the module is compiled once
//! ([`engine`]), linked to the host functions ([`host`]), and a first instance is made and
//! configured, so a module that does not compile, does not keep the ABI or rejects its
//! configuration is a config error. Each request routed there checks an instance out of the
//! filter's [`pool`] and runs its HTTP context ([`context`]). Every callback runs under a time
//! limit (epoch interruption) and every instance under a memory cap; a filter that traps,
//! loops or runs out of memory costs the request a 500, is counted in
//! `portcullis_wasm_errors_total{route,filter,kind}`, and its instance is thrown away.
//!
//! The filter and its pool belong to the snapshot: a reload builds new ones (reusing the
//! compiled module when the file did not change) and requests in flight finish on the old.

mod abi;
pub mod config;
pub mod context;
pub mod engine;
pub mod filter;
pub mod host;
pub mod metrics;
pub mod pool;

pub use context::{Outcome, Stream};
pub use host::{CallTarget, FilterInfo, Local, Props};
pub use pool::{Failure, InstanceLimits};

use bytes::Bytes;
use parking_lot::Mutex;
use pool::{Instance, Pool};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What one `wasm:` entry asks for, resolved (file read, names chosen).
pub struct Spec {
    pub info: FilterInfo,
    pub limits: InstanceLimits,
}

/// Defaults of the per-filter limits.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_millis(100);
pub const DEFAULT_MAX_MEMORY: usize = 32 << 20;
pub const DEFAULT_MAX_IDLE: usize = 64;

/// One configured filter of one snapshot.
pub struct WasmFilter {
    pool: Arc<Pool>,
    /// The instance that runs the root context's timer, when the filter set one.
    _ticker: Option<Arc<Ticker>>,
}

impl WasmFilter {
    /// Compile (or reuse) the module, make and configure the first instance.
    pub fn load(bytes: &[u8], spec: Spec) -> Result<WasmFilter, String> {
        let compiled = engine::compile(bytes)?;
        let (pool, first) = Pool::new(compiled, Arc::new(spec.info), spec.limits)?;
        let ticker = if first.store.data().tick_ms > 0 {
            Some(Ticker::start(first, pool.clone()))
        } else {
            pool.give_back(first);
            None
        };
        Ok(WasmFilter {
            pool,
            _ticker: ticker,
        })
    }

    pub fn name(&self) -> &str {
        &self.pool.info.name
    }

    pub fn info(&self) -> &FilterInfo {
        &self.pool.info
    }

    /// A short id of the module's bytes (SHA-256 prefix), for logs.
    pub fn digest(&self) -> &str {
        &self.pool.compiled.digest
    }

    /// The request's context in this filter.
    pub fn stream(&self, props: Props) -> Stream {
        Stream::start(self.pool.clone(), props)
    }

    pub fn idle_instances(&self) -> usize {
        self.pool.idle_count()
    }
}

/// The configuration bytes a filter gets: a string as it is, anything else as JSON.
pub fn config_bytes(v: &serde_yaml::Value) -> Bytes {
    match v {
        serde_yaml::Value::Null => Bytes::new(),
        serde_yaml::Value::String(s) => Bytes::from(s.clone()),
        other => Bytes::from(serde_json::to_vec(other).unwrap_or_default()),
    }
}

/// The instance that receives `proxy_on_tick` for a filter whose root context set a tick
/// period. It runs on its own thread and ends when the filter is dropped (on a reload).
pub struct Ticker {
    inst: Mutex<Option<Instance>>,
}

impl Ticker {
    fn start(inst: Instance, pool: Arc<Pool>) -> Arc<Ticker> {
        let t = Arc::new(Ticker {
            inst: Mutex::new(Some(inst)),
        });
        let weak: Weak<Ticker> = Arc::downgrade(&t);
        let name = pool.info.name.clone();
        let spawned = std::thread::Builder::new()
            .name("wasm-tick".into())
            .spawn(move || Ticker::run(weak, pool));
        if let Err(e) = spawned {
            log::warn!("wasm filter `{name}`: no timer thread: {e}");
        }
        t
    }

    fn run(weak: Weak<Ticker>, pool: Arc<Pool>) {
        loop {
            let period = match weak.upgrade() {
                Some(t) => match t.inst.lock().as_ref() {
                    Some(i) => i.store.data().tick_ms,
                    None => return,
                },
                None => return,
            };
            std::thread::sleep(Duration::from_millis(u64::from(period.max(1))));
            let Some(t) = weak.upgrade() else { return };
            let mut slot = t.inst.lock();
            let Some(inst) = slot.as_mut() else { return };
            let Some(f) = inst.cb.tick.clone() else {
                return;
            };
            if let Err(e) = inst.call(&f, abi::ROOT_CONTEXT) {
                log::warn!(
                    "wasm filter `{}` {e} in proxy_on_tick; its timer stops",
                    pool.info.name
                );
                metrics::WASM_METRICS
                    .errors
                    .with_label_values(&[&*pool.info.route, &*pool.info.name, e.kind()])
                    .inc();
                *slot = None;
                return;
            }
            inst.store.data_mut().reset();
        }
    }
}

#[cfg(test)]
mod tests;
