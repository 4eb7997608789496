//! `proxy_log`, `proxy_get_log_level`, and the few WASI calls that proxy-wasm SDKs import
//! (AssemblyScript's `abort` ends in `proc_exit`; Rust and Go SDKs link `fd_write`,
//! `environ_*`, `clock_time_get`, `random_get`). Filters get no files, no environment and no
//! arguments; what they print goes to the gateway's log.

use super::{read, write, write_u32, Host, HostResult};
use crate::plugin::wasm::abi::{self, status};
use wasmtime::{Caller, Linker};

const TARGET: &str = "portcullis::wasm";

fn level(l: i32) -> log::Level {
    match l {
        abi::LOG_TRACE => log::Level::Trace,
        abi::LOG_DEBUG => log::Level::Debug,
        abi::LOG_INFO => log::Level::Info,
        abi::LOG_WARN => log::Level::Warn,
        _ => log::Level::Error,
    }
}

/// The lowest proxy-wasm level the gateway's log would show.
fn enabled_level() -> i32 {
    match log::max_level() {
        log::LevelFilter::Trace => abi::LOG_TRACE,
        log::LevelFilter::Debug => abi::LOG_DEBUG,
        log::LevelFilter::Info => abi::LOG_INFO,
        log::LevelFilter::Warn => abi::LOG_WARN,
        _ => abi::LOG_ERROR,
    }
}

fn proxy_log(mut caller: Caller<'_, Host>, lvl: i32, ptr: i32, len: i32) -> HostResult {
    let level = level(lvl);
    if level > log::max_level() {
        return Ok(status::OK);
    }
    let Some(msg) = read(&mut caller, ptr, len) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let info = &caller.data().info;
    log::log!(target: TARGET, level, "[{} {}] {}", info.route, info.name, String::from_utf8_lossy(&msg));
    Ok(status::OK)
}

fn get_log_level(mut caller: Caller<'_, Host>, out: i32) -> HostResult {
    if !write_u32(&mut caller, out, enabled_level() as u32) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

/// `fd_write(fd, iovs, iovs_len, nwritten)`: stdout and stderr go to the log.
fn fd_write(mut caller: Caller<'_, Host>, fd: i32, iovs: i32, n: i32, written: i32) -> i32 {
    const BADF: i32 = 8;
    const FAULT: i32 = 21;
    if fd != 1 && fd != 2 {
        return BADF;
    }
    let mut text = Vec::new();
    for i in 0..n.max(0) {
        let Some(iov) = read(&mut caller, iovs.wrapping_add(i * 8), 8) else {
            return FAULT;
        };
        let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let Some(chunk) = read(&mut caller, ptr, len) else {
            return FAULT;
        };
        text.extend_from_slice(&chunk);
    }
    let count = text.len() as u32;
    let info = &caller.data().info;
    let line = String::from_utf8_lossy(&text);
    let line = line.trim_end();
    if !line.is_empty() {
        let level = if fd == 2 {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        log::log!(target: TARGET, level, "[{} {}] {line}", info.route, info.name);
    }
    if !write_u32(&mut caller, written, count) {
        return FAULT;
    }
    0
}

fn proc_exit(caller: Caller<'_, Host>, code: i32) -> wasmtime::Result<()> {
    let info = &caller.data().info;
    Err(wasmtime::format_err!(
        "filter `{}` exited with code {code}",
        info.name
    ))
}

/// `*_sizes_get(count, size)`: nothing.
fn zero_sizes(mut caller: Caller<'_, Host>, count: i32, size: i32) -> i32 {
    if write_u32(&mut caller, count, 0) && write_u32(&mut caller, size, 0) {
        0
    } else {
        21
    }
}

fn clock_time_get(mut caller: Caller<'_, Host>, clock: i32, _precision: i64, out: i32) -> i32 {
    let nanos = if clock == 0 {
        super::state::unix_nanos()
    } else {
        super::state::monotonic_nanos()
    };
    if write(&mut caller, out, &nanos.to_le_bytes()) {
        0
    } else {
        21
    }
}

fn random_get(mut caller: Caller<'_, Host>, ptr: i32, len: i32) -> i32 {
    const INVAL: i32 = 28;
    let Some(len) = usize::try_from(len).ok().filter(|l| *l <= 1 << 16) else {
        return INVAL;
    };
    let mut bytes = vec![0u8; len];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
    if write(&mut caller, ptr, &bytes) {
        0
    } else {
        21
    }
}

pub fn add(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_log", proxy_log)?;
    l.func_wrap("env", "proxy_get_log_level", get_log_level)?;
    for m in ["wasi_snapshot_preview1", "wasi_unstable"] {
        l.func_wrap(m, "fd_write", fd_write)?;
        l.func_wrap(m, "proc_exit", proc_exit)?;
        l.func_wrap(m, "environ_sizes_get", zero_sizes)?;
        l.func_wrap(m, "args_sizes_get", zero_sizes)?;
        l.func_wrap(m, "environ_get", |_: Caller<'_, Host>, _: i32, _: i32| 0i32)?;
        l.func_wrap(m, "args_get", |_: Caller<'_, Host>, _: i32, _: i32| 0i32)?;
        l.func_wrap(m, "clock_time_get", clock_time_get)?;
        l.func_wrap(m, "random_get", random_get)?;
        l.func_wrap(m, "sched_yield", |_: Caller<'_, Host>| 0i32)?;
        // No files: every descriptor but stdout/stderr is bad (8 = EBADF).
        l.func_wrap(m, "fd_close", |_: Caller<'_, Host>, _: i32| 8i32)?;
        l.func_wrap(
            m,
            "fd_seek",
            |_: Caller<'_, Host>, _: i32, _: i64, _: i32, _: i32| 8i32,
        )?;
        l.func_wrap(m, "fd_fdstat_get", |_: Caller<'_, Host>, _: i32, _: i32| {
            8i32
        })?;
        l.func_wrap(
            m,
            "fd_prestat_get",
            |_: Caller<'_, Host>, _: i32, _: i32| 8i32,
        )?;
        l.func_wrap(
            m,
            "fd_prestat_dir_name",
            |_: Caller<'_, Host>, _: i32, _: i32, _: i32| 8i32,
        )?;
    }
    Ok(())
}
