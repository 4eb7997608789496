//! A cheap process-wide monotonic clock in milliseconds, for lock-free state in atomics.

use std::sync::LazyLock;
use std::time::Instant;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the first call in this process (monotonic).
pub fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// The `Instant` corresponding to a `now_ms()` value.
pub fn instant_of(ms: u64) -> Instant {
    *EPOCH + std::time::Duration::from_millis(ms)
}
