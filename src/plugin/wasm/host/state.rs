//! State beyond one request: time, the root context's timer period, metrics the filter
//! defines, and shared data (one key/value store per VM id for the whole process, kept
//! across reloads, with compare-and-swap versions as the ABI defines).

use super::{give, read, read_str, write, write_u32, Host, HostResult};
use crate::plugin::wasm::abi::status;
use crate::plugin::wasm::metrics::{self, FilterMetric};
use bytes::Bytes;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Linker};

/// A shared-data key: the VM id and the filter's key.
pub type SharedKey = (String, String);

/// Values larger than this are refused (`BadArgument`).
const MAX_SHARED_VALUE: usize = 1 << 20;
/// Keys past this count are refused, so a filter cannot grow the store without bound.
const MAX_SHARED_KEYS: usize = 100_000;

static SHARED: LazyLock<RwLock<HashMap<SharedKey, (Bytes, u32)>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// How many keys the shared-data store holds.
pub fn shared_data_len() -> usize {
    SHARED.read().len()
}

pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn monotonic_nanos() -> u64 {
    u64::try_from(START.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn current_time(mut caller: Caller<'_, Host>, out: i32) -> HostResult {
    if !write(&mut caller, out, &unix_nanos().to_le_bytes()) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

fn get_shared(
    mut caller: Caller<'_, Host>,
    kptr: i32,
    klen: i32,
    ptr_ptr: i32,
    size_ptr: i32,
    cas_ptr: i32,
) -> HostResult {
    let Some(key) = read_str(&mut caller, kptr, klen) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let k = (caller.data().info.vm_id.clone(), key);
    let Some((value, cas)) = SHARED.read().get(&k).cloned() else {
        return Ok(status::NOT_FOUND);
    };
    let r = give(&mut caller, &value, ptr_ptr, size_ptr)?;
    if r == status::OK && cas_ptr != 0 && !write_u32(&mut caller, cas_ptr, cas) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(r)
}

fn set_shared(
    mut caller: Caller<'_, Host>,
    kptr: i32,
    klen: i32,
    vptr: i32,
    vlen: i32,
    cas: i32,
) -> HostResult {
    let (Some(key), Some(value)) = (
        read_str(&mut caller, kptr, klen),
        read(&mut caller, vptr, vlen),
    ) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    if value.len() > MAX_SHARED_VALUE {
        return Ok(status::BAD_ARGUMENT);
    }
    let k = (caller.data().info.vm_id.clone(), key);
    let mut map = SHARED.write();
    let current = map.get(&k).map(|(_, c)| *c);
    let cas = cas as u32;
    if cas != 0 && current.is_some_and(|c| c != cas) {
        return Ok(status::CAS_MISMATCH);
    }
    if current.is_none() && map.len() >= MAX_SHARED_KEYS {
        return Ok(status::BAD_ARGUMENT);
    }
    let next = current.unwrap_or(0).wrapping_add(1).max(1);
    map.insert(k, (Bytes::from(value), next));
    Ok(status::OK)
}

fn define_metric(
    mut caller: Caller<'_, Host>,
    typ: i32,
    ptr: i32,
    len: i32,
    id_ptr: i32,
) -> HostResult {
    let Some(name) = read_str(&mut caller, ptr, len) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let host = caller.data_mut();
    let Some(metric) = metrics::define(&host.info.name, typ, &name) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let id = match host.metrics.iter().position(|m| m.same(&metric)) {
        Some(i) => i,
        None => {
            host.metrics.push(metric);
            host.metrics.len() - 1
        }
    };
    if !write_u32(&mut caller, id_ptr, id as u32) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

fn with_metric(caller: &Caller<'_, Host>, id: i32, f: impl FnOnce(&FilterMetric)) -> i32 {
    match caller.data().metrics.get(id as u32 as usize) {
        Some(m) => {
            f(m);
            status::OK
        }
        None => status::NOT_FOUND,
    }
}

fn get_metric(mut caller: Caller<'_, Host>, id: i32, out: i32) -> HostResult {
    let Some(v) = caller
        .data()
        .metrics
        .get(id as u32 as usize)
        .map(FilterMetric::get)
    else {
        return Ok(status::NOT_FOUND);
    };
    if !write(&mut caller, out, &v.to_le_bytes()) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

pub fn add(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_current_time_nanoseconds", current_time)?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_, Host>, ms: i32| {
            c.data_mut().tick_ms = ms as u32;
            status::OK
        },
    )?;
    l.func_wrap("env", "proxy_get_shared_data", get_shared)?;
    l.func_wrap("env", "proxy_set_shared_data", set_shared)?;
    l.func_wrap("env", "proxy_define_metric", define_metric)?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: Caller<'_, Host>, id: i32, by: i64| with_metric(&c, id, |m| m.increment(by)),
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |c: Caller<'_, Host>, id: i32, v: i64| with_metric(&c, id, |m| m.record(v as u64)),
    )?;
    l.func_wrap("env", "proxy_get_metric", get_metric)?;
    Ok(())
}
