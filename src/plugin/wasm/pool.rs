//! Instances and their pool. An [`Instance`] is one store with the module instantiated in it
//! and its root context started and configured; a request checks one out of its filter's
//! [`Pool`] for its whole life and gives it back when it is logged. An instance that failed
//! (trap, time limit, memory cap) is dropped, never given back. The pool keeps at most
//! `max_idle` instances; when it is empty a new one is made (the pool grows with the
//! concurrency the filter sees, up to that bound of idle ones).

use super::abi::ROOT_CONTEXT;
use super::engine::{self, Abi, Compiled, TICK};
use super::host::{FilterInfo, Host};
use super::metrics::WASM_METRICS;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{InstancePre, Store, Trap, TypedFunc, WasmParams, WasmResults};

/// Why a call into a filter failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The filter trapped (`unreachable`, an out-of-bounds access, `abort`/`proc_exit`, ...).
    Trap(String),
    /// A callback ran past the filter's time limit.
    Timeout,
    /// The filter's memory would have grown past its cap.
    Memory,
    /// The module does not keep the ABI (a callback with the wrong signature, a failed
    /// start or configure, a bad answer).
    Abi(String),
}

impl Failure {
    /// The `kind` label of `portcullis_wasm_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Trap(_) => "trap",
            Failure::Timeout => "timeout",
            Failure::Memory => "memory",
            Failure::Abi(_) => "abi",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Trap(m) => write!(f, "trapped: {m}"),
            Failure::Timeout => f.write_str("ran past its time limit"),
            Failure::Memory => f.write_str("went over its memory cap"),
            Failure::Abi(m) => write!(f, "broke the proxy-wasm ABI: {m}"),
        }
    }
}

type F2 = TypedFunc<(i32, i32), i32>;
type F3 = TypedFunc<(i32, i32, i32), i32>;
type F5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// The module's callbacks; a missing one is a callback that does nothing.
pub struct Callbacks {
    pub context_create: Option<TypedFunc<(i32, i32), ()>>,
    pub vm_start: Option<F2>,
    pub configure: Option<F2>,
    pub request_headers: Option<F3>,
    pub request_body: Option<F3>,
    pub response_headers: Option<F3>,
    pub response_body: Option<F3>,
    pub http_call_response: Option<F5>,
    pub tick: Option<TypedFunc<i32, ()>>,
    pub done: Option<TypedFunc<i32, i32>>,
    pub log: Option<TypedFunc<i32, ()>>,
    pub delete: Option<TypedFunc<i32, ()>>,
}

/// One instantiated filter: its store, callbacks and the next request context id.
pub struct Instance {
    pub store: Store<Host>,
    pub cb: Callbacks,
    deadline: u64,
    next_context: i32,
}

impl Instance {
    /// Call `f` under the time limit; a failure is classified for the metric.
    pub fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        f: &TypedFunc<P, R>,
        args: P,
    ) -> Result<R, Failure> {
        self.store.set_epoch_deadline(self.deadline);
        f.call(&mut self.store, args)
            .map_err(|e| classify(&self.store, &e))
    }

    /// A fresh context id for the next request.
    pub fn next_context(&mut self) -> i32 {
        self.next_context = self.next_context.checked_add(1).unwrap_or(ROOT_CONTEXT + 1);
        self.next_context
    }
}

fn classify(store: &Store<Host>, e: &wasmtime::Error) -> Failure {
    if store.data().limits.hit {
        return Failure::Memory;
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout,
        Some(t) => Failure::Trap(t.to_string()),
        None => Failure::Trap(format!("{e:#}")),
    }
}

/// Limits every instance of a filter gets.
#[derive(Debug, Clone, Copy)]
pub struct InstanceLimits {
    pub max_memory: usize,
    pub time_limit: Duration,
    pub max_idle: usize,
}

/// The instances of one filter of one snapshot.
pub struct Pool {
    pub info: Arc<FilterInfo>,
    pub compiled: Arc<Compiled>,
    pre: InstancePre<Host>,
    limits: InstanceLimits,
    /// Boxed: a request moves its instance in and out of the pool by pointer (unboxed,
    /// each checkout and give-back copied the whole instance).
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Instance>>>,
}

impl Pool {
    /// Link the module and make the first instance (which runs the filter's start and
    /// configure callbacks, so a filter that rejects its configuration fails the load).
    pub fn new(
        compiled: Arc<Compiled>,
        info: Arc<FilterInfo>,
        limits: InstanceLimits,
    ) -> Result<(Arc<Pool>, Box<Instance>), String> {
        let pre = engine::link(&compiled, &info.name)?;
        let pool = Arc::new(Pool {
            info,
            compiled,
            pre,
            limits,
            idle: Mutex::new(Vec::new()),
        });
        let first = pool.instantiate().map_err(|f| f.to_string())?;
        Ok((pool, first))
    }

    /// An idle instance, or a new one.
    pub fn take(&self) -> Result<Box<Instance>, Failure> {
        if let Some(i) = self.idle.lock().pop() {
            return Ok(i);
        }
        self.instantiate()
    }

    /// Give an instance back after a request that did not fail it.
    pub fn give_back(&self, mut inst: Box<Instance>) {
        inst.store.data_mut().reset();
        let mut idle = self.idle.lock();
        if idle.len() < self.limits.max_idle {
            idle.push(inst);
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }

    fn instantiate(&self) -> Result<Box<Instance>, Failure> {
        let engine = engine::engine().map_err(Failure::Abi)?;
        let host = Host::new(self.info.clone(), self.limits.max_memory)
            .ok_or_else(|| Failure::Abi("host state".into()))?;
        let mut store = Store::new(engine, host);
        store.limiter(|h| &mut h.limits);
        let tick = TICK.as_millis().max(1);
        let deadline = u64::try_from(self.limits.time_limit.as_millis().div_ceil(tick))
            .unwrap_or(u64::MAX)
            .max(1)
            // The epoch may advance right after the deadline is set: one tick of margin.
            + 1;
        store.set_epoch_deadline(deadline);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, &e))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc_name = match self.compiled.abi {
            Abi::V0_2_1 => "proxy_on_memory_allocate",
            Abi::V0_2_0 => "malloc",
        };
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, alloc_name)
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .ok();
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        let cb = callbacks(&instance, &mut store)?;
        let mut inst = Box::new(Instance {
            store,
            cb,
            deadline,
            next_context: ROOT_CONTEXT,
        });
        for init in ["_initialize", "_start"] {
            if let Ok(f) = instance.get_typed_func::<(), ()>(&mut inst.store, init) {
                inst.call(&f, ())?;
                break;
            }
        }
        start_root(&mut inst, &self.info)?;
        WASM_METRICS
            .instances
            .with_label_values(&[&*self.info.name])
            .inc();
        Ok(inst)
    }
}

/// Create the root context, start the VM and configure the filter.
fn start_root(inst: &mut Instance, info: &FilterInfo) -> Result<(), Failure> {
    if let Some(f) = inst.cb.context_create.clone() {
        inst.call(&f, (ROOT_CONTEXT, 0))?;
    }
    if let Some(f) = inst.cb.vm_start.clone() {
        if inst.call(&f, (ROOT_CONTEXT, info.vm_config.len() as i32))? == 0 {
            return Err(Failure::Abi("proxy_on_vm_start returned false".into()));
        }
    }
    if let Some(f) = inst.cb.configure.clone() {
        if inst.call(&f, (ROOT_CONTEXT, info.config.len() as i32))? == 0 {
            return Err(Failure::Abi(
                "the filter rejected its configuration (proxy_on_configure returned false)".into(),
            ));
        }
    }
    Ok(())
}

fn callbacks(instance: &wasmtime::Instance, store: &mut Store<Host>) -> Result<Callbacks, Failure> {
    fn get<P: WasmParams, R: WasmResults>(
        instance: &wasmtime::Instance,
        store: &mut Store<Host>,
        name: &str,
    ) -> Result<Option<TypedFunc<P, R>>, Failure> {
        if instance.get_func(&mut *store, name).is_none() {
            return Ok(None);
        }
        instance
            .get_typed_func::<P, R>(&mut *store, name)
            .map(Some)
            .map_err(|e| Failure::Abi(format!("`{name}`: {e}")))
    }
    Ok(Callbacks {
        context_create: get(instance, store, "proxy_on_context_create")?,
        vm_start: get(instance, store, "proxy_on_vm_start")?,
        configure: get(instance, store, "proxy_on_configure")?,
        request_headers: get(instance, store, "proxy_on_request_headers")?,
        request_body: get(instance, store, "proxy_on_request_body")?,
        response_headers: get(instance, store, "proxy_on_response_headers")?,
        response_body: get(instance, store, "proxy_on_response_body")?,
        http_call_response: get(instance, store, "proxy_on_http_call_response")?,
        tick: get(instance, store, "proxy_on_tick")?,
        done: get(instance, store, "proxy_on_done")?,
        log: get(instance, store, "proxy_on_log")?,
        delete: get(instance, store, "proxy_on_delete")?,
    })
}
