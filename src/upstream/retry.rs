//! Retry policy: which failures are retried, exponential backoff with jitter, and a
//! per-upstream retry budget so a failing upstream does not get its load multiplied.

use super::window::RollingCounter;
use crate::config::{RetryConfig, RetryOn};
use std::time::Duration;

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    ConnectError,
    Timeout,
    Reset,
    Status(u16),
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::ConnectError => "connect_error",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Status(502) => "502",
            Failure::Status(503) => "503",
            Failure::Status(504) => "504",
            Failure::Status(_) => "status",
        }
    }
}

pub struct RetryPolicy {
    pub attempts: u32,
    backoff_ms: u64,
    max_backoff_ms: u64,
    on: Vec<RetryOn>,
    budget: f64,
    budget_min: u32,
    /// (requests, retries) over the last 10 s.
    window: RollingCounter,
}

impl RetryPolicy {
    pub fn new(c: &RetryConfig) -> RetryPolicy {
        RetryPolicy {
            attempts: c.attempts,
            backoff_ms: c.backoff.get().as_millis() as u64,
            max_backoff_ms: c
                .max_backoff
                .get()
                .as_millis()
                .max(c.backoff.get().as_millis()) as u64,
            on: c.on.clone(),
            budget: c.budget,
            budget_min: c.budget_min,
            window: RollingCounter::new(10_000),
        }
    }

    pub fn retries_on(&self, f: Failure) -> bool {
        self.on.iter().any(|o| {
            matches!(
                (o, f),
                (RetryOn::ConnectError, Failure::ConnectError)
                    | (RetryOn::Timeout, Failure::Timeout)
                    | (RetryOn::Reset, Failure::Reset)
            ) || matches!((o, f), (RetryOn::Status(a), Failure::Status(b)) if *a == b)
        })
    }

    pub fn retries_status(&self, status: u16) -> bool {
        self.on.contains(&RetryOn::Status(status))
    }

    /// Count a first attempt toward the budget's denominator.
    pub fn on_request(&self, now_ms: u64) {
        self.window.add(now_ms, 1, 0);
    }

    /// Take one retry from the budget; false when it is spent.
    pub fn take_budget(&self, now_ms: u64) -> bool {
        let (requests, retries) = self.window.sum(now_ms);
        let allowed = (self.budget * requests as f64).max(self.budget_min as f64);
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.window.add(now_ms, 0, 1);
        true
    }

    /// Delay before retry number `n` (1-based): uniform between `backoff` and
    /// `min(max_backoff, backoff * 2^(n-1))`.
    pub fn backoff(&self, n: u32) -> Duration {
        if self.backoff_ms == 0 {
            return Duration::ZERO;
        }
        let cap = self
            .backoff_ms
            .saturating_mul(1u64 << (n.saturating_sub(1)).min(20))
            .min(self.max_backoff_ms);
        let lo = self.backoff_ms.min(cap);
        let ms = if cap > lo {
            lo + rand::random::<u64>() % (cap - lo + 1)
        } else {
            lo
        };
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_caps_retries() {
        let c = RetryConfig {
            budget: 0.2,
            budget_min: 2,
            ..Default::default()
        };
        let p = RetryPolicy::new(&c);
        for _ in 0..100 {
            p.on_request(1000);
        }
        let granted = (0..100).filter(|_| p.take_budget(1000)).count();
        assert_eq!(granted, 20);
        // the minimum applies with little traffic
        let p = RetryPolicy::new(&c);
        p.on_request(1000);
        assert_eq!((0..10).filter(|_| p.take_budget(1000)).count(), 2);
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let p = RetryPolicy::new(&RetryConfig::default());
        for n in 1..6 {
            let d = p.backoff(n).as_millis() as u64;
            assert!((25..=250).contains(&d), "retry {n}: {d}");
        }
        assert_eq!(p.backoff(1).as_millis(), 25);
    }

    #[test]
    fn conditions() {
        let p = RetryPolicy::new(&RetryConfig::default());
        assert!(p.retries_on(Failure::ConnectError));
        assert!(p.retries_on(Failure::Status(503)));
        assert!(!p.retries_on(Failure::Status(500)));
    }

    #[test]
    fn failure_labels() {
        assert_eq!(Failure::ConnectError.label(), "connect_error");
        assert_eq!(Failure::Timeout.label(), "timeout");
        assert_eq!(Failure::Reset.label(), "reset");
        assert_eq!(Failure::Status(502).label(), "502");
        assert_eq!(Failure::Status(503).label(), "503");
        assert_eq!(Failure::Status(504).label(), "504");
        assert_eq!(Failure::Status(500).label(), "status");
    }

    #[test]
    fn retries_status_follows_config() {
        let p = RetryPolicy::new(&RetryConfig::default());
        assert!(p.retries_status(502));
        assert!(p.retries_status(503));
        assert!(!p.retries_status(500));
        assert!(!p.retries_status(200));
    }

    /// Retry 3 with the defaults: uniform in [25, 100] ms. Many draws must all stay in
    /// bounds and must spread over the range (not stick at the floor or near it).
    /// The chance that 500 uniform draws over 76 values all miss a 35-value band is
    /// below 1e-160, so this does not flake.
    #[test]
    fn backoff_jitter_covers_range_within_bounds() {
        let p = RetryPolicy::new(&RetryConfig::default());
        for n in [2u32, 3, 4, 5] {
            let cap = (25u64 << (n - 1)).min(250);
            let draws: Vec<u64> = (0..500).map(|_| p.backoff(n).as_millis() as u64).collect();
            for &d in &draws {
                assert!(
                    (25..=cap).contains(&d),
                    "retry {n}: {d} outside [25, {cap}]"
                );
            }
            let max = *draws.iter().max().unwrap();
            let min = *draws.iter().min().unwrap();
            let upper = cap - (cap - 25) / 2;
            assert!(
                max >= upper,
                "retry {n}: never drew above {upper} (max {max})"
            );
            assert!(min < 25 + (cap - 25) / 2, "retry {n}: min {min}");
        }
        // at the cap the range is wide: retry 10 is uniform in [25, 250]
        let max = (0..500).map(|_| p.backoff(10).as_millis()).max().unwrap();
        assert!(max > 200, "max {max}");
        // both ends of a narrow range are drawn (missing one in 400 draws of 4 values:
        // chance below 1e-49)
        let narrow = RetryPolicy::new(&RetryConfig {
            backoff: crate::config::Dur::millis(10),
            max_backoff: crate::config::Dur::millis(13),
            ..RetryConfig::default()
        });
        let drawn: std::collections::BTreeSet<u64> = (0..400)
            .map(|_| narrow.backoff(2).as_millis() as u64)
            .collect();
        assert_eq!(drawn.into_iter().collect::<Vec<_>>(), [10, 11, 12, 13]);
    }
}
