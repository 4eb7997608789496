//! A cheap process-wide monotonic clock in milliseconds, for lock-free state in atomics.

use once_cell::sync::Lazy;
use std::time::Instant;

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

/// Milliseconds since the first call in this process (monotonic).
pub fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// The `Instant` corresponding to a `now_ms()` value.
pub fn instant_of(ms: u64) -> Instant {
    *EPOCH + std::time::Duration::from_millis(ms)
}
