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
mod timer;

pub use context::{Outcome, Stream};
pub use host::{CallTarget, FilterInfo, Local, Props};
pub use pool::{Failure, InstanceLimits};

use bytes::Bytes;
use pool::Pool;
use std::sync::Arc;
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
    _ticker: Option<Arc<timer::Ticker>>,
}

impl WasmFilter {
    /// Compile (or reuse) the module, make and configure the first instance.
    pub fn load(bytes: &[u8], spec: Spec) -> Result<WasmFilter, String> {
        let compiled = engine::compile(bytes)?;
        // The first instance's start and configure run under the time limit already.
        engine::ensure_threads();
        let (pool, first) = Pool::new(compiled, Arc::new(spec.info), spec.limits)?;
        let ticker = if first.store.data().tick_ms > 0 {
            Some(timer::register(first, pool.clone()))
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

#[cfg(test)]
mod tests;
