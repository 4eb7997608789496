use std::process::ExitCode;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options, read at start-up: keep freed blocks up to 128 KiB in the thread cache.
/// Pingora boxes each proxied request's state machine in one allocation larger than the
/// default 32 KiB cache limit, which sent every request through jemalloc's slow path
/// (extent allocation and release); measured with perf in load-tests (README, Performance).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 18] = b"tcache_max:131072\0";

fn main() -> ExitCode {
    portcullis::run_with(portcullis::plugin::builtin())
}
