//! The one wasmtime engine of the process, its epoch ticker, and the module cache.
//!
//! Every module is compiled once (Cranelift) when a config that names it is loaded; a reload
//! whose file has the same bytes reuses the compiled module (keyed by SHA-256), a changed file
//! is compiled anew, and a module no snapshot uses any more is dropped with the last one.
//! Callbacks are bounded by epoch interruption: a thread advances the epoch every [`TICK`],
//! and each call into a filter gets a deadline of a number of ticks.

use super::host::{self, Host};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;
use wasmtime::{Config, Engine, InstancePre, Linker, Module, OptLevel};

/// How often the epoch advances: the granularity of a filter's time limit.
pub const TICK: Duration = Duration::from_millis(5);

/// Which proxy-wasm ABI a module targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    V0_2_0,
    V0_2_1,
}

/// A compiled module and the ABI it was built for.
pub struct Compiled {
    pub module: Module,
    pub abi: Abi,
    pub digest: String,
}

struct Shared {
    engine: Engine,
    linker: Linker<Host>,
    /// `module.name` of every host function.
    provided: HashSet<String>,
}

static SHARED: LazyLock<Result<Shared, String>> = LazyLock::new(|| {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(1 << 20)
        // Filters are small: reserve 64 MiB of address space per instance rather than the
        // 4 GiB (+ guards) that let wasmtime drop bounds checks. Thousands of pooled
        // instances then fit any address space (valgrind's too); a memory growing past the
        // reservation moves, and every access is bounds-checked (a few instructions).
        .memory_reservation(64 << 20)
        .memory_guard_size(64 << 10)
        .memory_reservation_for_growth(16 << 20)
        .guard_before_linear_memory(false);
    let engine = Engine::new(&config).map_err(|e| format!("wasm engine: {e}"))?;
    let linker = host::linker(&engine).map_err(|e| format!("wasm host functions: {e}"))?;
    let info = Arc::new(host::FilterInfo::placeholder());
    let host = Host::new(info, 0).ok_or("wasm host state")?;
    let mut store = wasmtime::Store::new(&engine, host);
    let provided = linker
        .iter(&mut store)
        .map(|(m, n, _)| format!("{m}.{n}"))
        .collect();
    Ok(Shared {
        engine,
        linker,
        provided,
    })
});

static CACHE: LazyLock<Mutex<HashMap<[u8; 32], Weak<Compiled>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn shared() -> Result<&'static Shared, String> {
    SHARED.as_ref().map_err(Clone::clone)
}

/// The process whose epoch and timer threads run (0: none yet).
static THREADS_OF: AtomicU32 = AtomicU32::new(0);

/// Start the epoch thread (the filters' time limit) and the timer thread (`proxy_on_tick`)
/// in this process, if they do not run here yet. Called when a filter is loaded and again
/// when the server starts: a daemon forks after loading its config, and threads do not
/// survive a fork.
pub fn ensure_threads() {
    let pid = std::process::id();
    if THREADS_OF.swap(pid, Ordering::SeqCst) == pid {
        return;
    }
    let Ok(s) = shared() else { return };
    let engine = s.engine.clone();
    let epoch = std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            engine.increment_epoch();
        });
    let timer = std::thread::Builder::new()
        .name("wasm-timer".into())
        .spawn(super::timer::run);
    if let Err(e) = epoch.and(timer) {
        log::error!("wasm filters: cannot start their threads: {e}");
        THREADS_OF.store(0, Ordering::SeqCst);
    }
}

pub fn engine() -> Result<&'static Engine, String> {
    shared().map(|s| &s.engine)
}

/// The compiled module for these bytes: from the cache, or compiled now.
pub fn compile(bytes: &[u8]) -> Result<Arc<Compiled>, String> {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    if let Some(c) = CACHE.lock().get(&digest).and_then(Weak::upgrade) {
        return Ok(c);
    }
    let s = shared()?;
    let module = Module::new(&s.engine, bytes).map_err(|e| format!("not a valid module: {e}"))?;
    let abi = abi_of(&module)?;
    let compiled = Arc::new(Compiled {
        module,
        abi,
        digest: hex::encode(&digest[..8]),
    });
    let mut cache = CACHE.lock();
    cache.retain(|_, w| w.strong_count() > 0);
    cache.insert(digest, Arc::downgrade(&compiled));
    Ok(compiled)
}

fn abi_of(module: &Module) -> Result<Abi, String> {
    let has = |name: &str| module.get_export(name).is_some();
    if has("proxy_abi_version_0_2_1") {
        Ok(Abi::V0_2_1)
    } else if has("proxy_abi_version_0_2_0") {
        Ok(Abi::V0_2_0)
    } else if has("proxy_abi_version_0_1_0") {
        Err("targets proxy-wasm ABI 0.1.0; this gateway hosts 0.2.0 and 0.2.1".into())
    } else {
        Err("exports no proxy_abi_version_* function: not a proxy-wasm module".into())
    }
}

/// The module linked against the host functions, ready to instantiate. An import the host
/// does not provide traps when called (and is named in the log at load).
pub fn link(compiled: &Compiled, filter: &str) -> Result<InstancePre<Host>, String> {
    let s = shared()?;
    let mut linker = s.linker.clone();
    let missing: Vec<String> = compiled
        .module
        .imports()
        .map(|i| format!("{}.{}", i.module(), i.name()))
        .filter(|name| !s.provided.contains(name))
        .collect();
    if !missing.is_empty() {
        log::warn!(
            "wasm filter `{filter}` imports functions this gateway does not provide (they trap if called): {}",
            missing.join(", ")
        );
    }
    linker
        .define_unknown_imports_as_traps(&compiled.module)
        .map_err(|e| format!("cannot link: {e}"))?;
    linker
        .instantiate_pre(&compiled.module)
        .map_err(|e| format!("cannot link: {e}"))
}
