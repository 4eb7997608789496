//! One limit (`requests` per `per`) counted with pingora-limits' `Rate`: two count-min
//! sketches (current and previous window) and a sliding estimate
//! `previous × (1 − elapsed fraction) + current`.
//!
//! Windows under one second are counted on a one-second window with the limit scaled
//! (`Rate` can panic on a CAS race in the first second of a sub-second interval).

use pingora_limits::rate::Rate;
use std::hash::Hash;
use std::time::Duration;

pub struct Limiter {
    rate: Rate,
    /// The limit per internal interval.
    limit: f64,
    pub interval: Duration,
    /// As configured, for headers.
    pub requests: u64,
    pub per: Duration,
}

/// The counts for one key after a decision.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Local sliding estimate including this request if it was admitted.
    pub estimate: f64,
    pub prev: f64,
    pub curr: f64,
    /// Elapsed fraction of the current window.
    pub fraction: f64,
}

impl Limiter {
    pub fn new(requests: u64, per: Duration, sketch_slots: usize) -> Limiter {
        let interval = per.max(Duration::from_secs(1));
        let scale = interval.as_secs_f64() / per.as_secs_f64().max(1e-3);
        Limiter {
            rate: Rate::new_with_estimator_config(interval, 4, sketch_slots.max(64)),
            limit: requests as f64 * scale,
            interval,
            requests,
            per,
        }
    }

    pub fn limit(&self) -> f64 {
        self.limit
    }

    /// Count one request for `key` if `extra` (what other instances counted, sliding)
    /// plus the local estimate stays within `cap` (normally `limit()`). Rejected requests
    /// are not counted.
    pub fn try_acquire<K: Hash>(&self, key: &K, extra: f64, cap: f64) -> (bool, Usage) {
        let curr = self.rate.observe(key, 1) as f64;
        let (prev, fraction) = self.rate.rate_with(key, |c| {
            (c.prev_samples as f64, c.current_interval_fraction)
        });
        let local = prev * (1.0 - fraction) + curr;
        if local + extra > cap {
            self.rate.observe(key, -1);
            return (
                false,
                Usage {
                    estimate: local - 1.0 + extra,
                    prev,
                    curr: curr - 1.0,
                    fraction,
                },
            );
        }
        (
            true,
            Usage {
                estimate: local + extra,
                prev,
                curr,
                fraction,
            },
        )
    }

    /// Undo an admission (another policy on the route rejected the request).
    pub fn release<K: Hash>(&self, key: &K) {
        self.rate.observe(key, -1);
    }

    /// Seconds until the current window ends.
    pub fn reset_secs(&self, u: &Usage) -> u64 {
        ((1.0 - u.fraction) * self.interval.as_secs_f64())
            .ceil()
            .max(1.0) as u64
    }

    /// Seconds until one more request would be admitted.
    pub fn retry_after_secs(&self, u: &Usage) -> u64 {
        let iv = self.interval.as_secs_f64();
        let excess = u.estimate + 1.0 - self.limit;
        if excess <= 0.0 {
            return 1;
        }
        let left_in_window = (1.0 - u.fraction) * iv;
        // the previous window's weight decays linearly until this window ends
        if u.prev > 0.0 {
            let t = excess / u.prev * iv;
            if t <= left_in_window {
                return t.ceil().max(1.0) as u64;
            }
        }
        // then the current window becomes the previous one and decays in turn
        let after = u.curr + 1.0 - self.limit;
        let t = if u.curr > 0.0 && after > 0.0 {
            after / u.curr * iv
        } else {
            0.0
        };
        (left_in_window + t).ceil().max(1.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_then_rejects() {
        let l = Limiter::new(5, Duration::from_secs(10), 1024);
        let admitted = (0..20)
            .filter(|_| l.try_acquire(&"k", 0.0, l.limit()).0)
            .count();
        assert_eq!(admitted, 5);
        // another key is independent
        assert!(l.try_acquire(&"other", 0.0, l.limit()).0);
        // what others counted counts too
        let l2 = Limiter::new(5, Duration::from_secs(10), 1024);
        assert!(!l2.try_acquire(&"k", 5.0, l2.limit()).0);
    }

    #[test]
    fn sub_second_windows_are_scaled() {
        let l = Limiter::new(10, Duration::from_millis(100), 1024);
        assert_eq!(l.interval, Duration::from_secs(1));
        assert_eq!(l.limit(), 100.0);
    }

    #[test]
    fn retry_after_is_positive_and_bounded() {
        let l = Limiter::new(2, Duration::from_secs(60), 1024);
        l.try_acquire(&"k", 0.0, l.limit());
        l.try_acquire(&"k", 0.0, l.limit());
        let (ok, u) = l.try_acquire(&"k", 0.0, l.limit());
        assert!(!ok);
        let r = l.retry_after_secs(&u);
        // the sliding estimate can need up to two windows to decay
        assert!((1..=120).contains(&r), "{r}");
        assert!(l.reset_secs(&u) <= 60);
    }

    fn usage(estimate: f64, prev: f64, curr: f64, fraction: f64) -> Usage {
        Usage {
            estimate,
            prev,
            curr,
            fraction,
        }
    }

    #[test]
    fn limits_are_per_internal_interval() {
        let l = Limiter::new(3, Duration::from_millis(500), 64);
        assert_eq!((l.interval, l.limit()), (Duration::from_secs(1), 6.0));
        assert_eq!((l.requests, l.per), (3, Duration::from_millis(500)));
        let l = Limiter::new(3, Duration::from_secs(7), 64);
        assert_eq!((l.interval, l.limit()), (Duration::from_secs(7), 3.0));
    }

    /// In the window after one with admissions, the estimate slides: the previous window's
    /// count weighs by the part of the current window still to come.
    #[test]
    fn the_previous_window_weighs_by_what_is_left_of_this_one() {
        let l = Limiter::new(1000, Duration::from_secs(1), 1024);
        for _ in 0..10 {
            assert!(l.try_acquire(&"k", 0.0, l.limit()).0);
        }
        // wait (polling, with a deadline) for a window in which the 10 are the previous one's
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let u = loop {
            std::thread::sleep(Duration::from_millis(50));
            let (ok, u) = l.try_acquire(&"k", 0.0, l.limit());
            assert!(ok);
            // (the window starts when the first request after the old one rotates it)
            if u.prev > 0.0 && u.fraction > 0.0 {
                break u;
            }
            assert!(std::time::Instant::now() < deadline, "no new window");
        };
        assert!(u.fraction < 1.0, "{}", u.fraction);
        let want = u.prev * (1.0 - u.fraction) + u.curr;
        assert!((u.estimate - want).abs() < 1e-9, "{} != {want}", u.estimate);
    }

    #[test]
    fn usage_reports_the_counts() {
        let l = Limiter::new(3, Duration::from_secs(3600), 1024);
        for n in 1..=3 {
            let (ok, u) = l.try_acquire(&"k", 0.0, l.limit());
            assert!(ok);
            assert_eq!((u.estimate, u.prev, u.curr), (n as f64, 0.0, n as f64));
            assert!((0.0..0.5).contains(&u.fraction));
        }
        // rejected: not counted
        for _ in 0..2 {
            let (ok, u) = l.try_acquire(&"k", 0.0, l.limit());
            assert!(!ok);
            assert_eq!((u.estimate, u.prev, u.curr), (3.0, 0.0, 3.0));
        }
        // what others counted is added to the estimate
        let (ok, u) = l.try_acquire(&"j", 1.5, l.limit());
        assert!(ok);
        assert_eq!((u.estimate, u.curr), (2.5, 1.0));
        let (ok, u) = l.try_acquire(&"j", 1.5, l.limit());
        assert!(!ok);
        assert_eq!((u.estimate, u.curr), (2.5, 1.0));
    }

    #[test]
    fn the_cap_bounds_admissions() {
        let l = Limiter::new(10, Duration::from_secs(3600), 1024);
        assert!(l.try_acquire(&"k", 0.0, 2.0).0);
        assert!(l.try_acquire(&"k", 0.0, 2.0).0);
        assert!(!l.try_acquire(&"k", 0.0, 2.0).0);
        // exactly at the cap with others' counts is still admitted
        assert!(l.try_acquire(&"k", 1.0, 4.0).0);
        assert!(!l.try_acquire(&"k", 0.5, 4.0).0);
    }

    #[test]
    fn release_gives_back_one_admission() {
        let l = Limiter::new(1, Duration::from_secs(3600), 1024);
        assert!(l.try_acquire(&"k", 0.0, l.limit()).0);
        assert!(!l.try_acquire(&"k", 0.0, l.limit()).0);
        l.release(&"k");
        let (ok, u) = l.try_acquire(&"k", 0.0, l.limit());
        assert!(ok);
        assert_eq!(u.curr, 1.0);
        assert!(!l.try_acquire(&"k", 0.0, l.limit()).0);
    }

    #[test]
    fn reset_is_the_rest_of_the_window() {
        let l = Limiter::new(10, Duration::from_secs(100), 64);
        assert_eq!(l.reset_secs(&usage(0.0, 0.0, 0.0, 0.5)), 50);
        assert_eq!(l.reset_secs(&usage(0.0, 0.0, 0.0, 0.255)), 75);
        assert_eq!(l.reset_secs(&usage(0.0, 0.0, 0.0, 1.0)), 1);
        assert_eq!(l.reset_secs(&usage(0.0, 0.0, 0.0, 0.0)), 100);
    }

    #[test]
    fn retry_after_follows_the_decay() {
        let l = Limiter::new(10, Duration::from_secs(100), 64);
        // room left, or exactly the limit after one more: retry at once
        assert_eq!(l.retry_after_secs(&usage(5.0, 0.0, 5.0, 0.5)), 1);
        assert_eq!(l.retry_after_secs(&usage(9.0, 0.0, 9.0, 0.5)), 1);
        // the previous window's share decays enough within this window
        assert_eq!(l.retry_after_secs(&usage(10.0, 4.0, 8.0, 0.5)), 25);
        assert_eq!(l.retry_after_secs(&usage(10.0, 3.0, 8.0, 0.5)), 34);
        assert_eq!(l.retry_after_secs(&usage(9.001, 100.0, 8.0, 0.5)), 1);
        // not within this window: then the current window decays in turn
        assert_eq!(l.retry_after_secs(&usage(12.0, 4.0, 10.0, 0.5)), 60);
        assert_eq!(l.retry_after_secs(&usage(10.0, 0.0, 10.0, 0.25)), 85);
        assert_eq!(l.retry_after_secs(&usage(10.0, 1.0, 5.0, 0.5)), 50);
        assert_eq!(l.retry_after_secs(&usage(10.0, 0.0, 20.0, 0.5)), 105);
    }
}
