//! A lock-free rolling window of two counters (e.g. requests and failures), split into
//! slots so old activity ages out smoothly.

use std::sync::atomic::{AtomicU64, Ordering};

const SLOTS: usize = 10;

pub struct RollingCounter {
    slot_ms: u64,
    /// Which slot index (time / slot_ms) each slot currently holds.
    epochs: [AtomicU64; SLOTS],
    /// (a << 32) | b, both saturating at u32::MAX.
    counts: [AtomicU64; SLOTS],
}

impl RollingCounter {
    pub fn new(window_ms: u64) -> RollingCounter {
        RollingCounter {
            slot_ms: (window_ms / SLOTS as u64).max(1),
            epochs: Default::default(),
            counts: Default::default(),
        }
    }

    /// Add to the counters at time `now_ms`.
    pub fn add(&self, now_ms: u64, a: u32, b: u32) {
        let idx = now_ms / self.slot_ms;
        let slot = (idx % SLOTS as u64) as usize;
        let seen = self.epochs[slot].load(Ordering::Acquire);
        if seen != idx {
            // first writer of a new period resets the slot; losers just add
            if self.epochs[slot]
                .compare_exchange(seen, idx, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.counts[slot].store(0, Ordering::Release);
            }
        }
        self.counts[slot].fetch_add(((a as u64) << 32) | b as u64, Ordering::AcqRel);
    }

    /// Sums over the window ending at `now_ms`.
    pub fn sum(&self, now_ms: u64) -> (u64, u64) {
        let idx = now_ms / self.slot_ms;
        let (mut a, mut b) = (0u64, 0u64);
        for i in 0..SLOTS {
            let e = self.epochs[i].load(Ordering::Acquire);
            if e + (SLOTS as u64) > idx && e <= idx {
                let v = self.counts[i].load(Ordering::Acquire);
                a += v >> 32;
                b += v & 0xffff_ffff;
            }
        }
        (a, b)
    }

    pub fn reset(&self) {
        for i in 0..SLOTS {
            self.counts[i].store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_age_out() {
        let w = RollingCounter::new(1000);
        w.add(1000, 1, 0);
        w.add(1050, 1, 1);
        assert_eq!(w.sum(1100), (2, 1));
        w.add(1500, 3, 0);
        assert_eq!(w.sum(1500), (5, 1));
        // 1000..1099 has left the window at 2100
        assert_eq!(w.sum(2100), (3, 0));
        assert_eq!(w.sum(5000), (0, 0));
    }
}
