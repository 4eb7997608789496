//! Per-backend circuit breaker: closed → open → half-open → closed, in atomics so that
//! checking it never serialises requests across threads.
//!
//! Opens on `failure_threshold` consecutive failures, or when the failure ratio over the
//! rolling window reaches `failure_ratio` once `min_requests` were seen. Stays open for
//! `open_for` (doubling on each consecutive trip, capped at `max_open_for`), then admits
//! `half_open_probes` requests: all succeed → closed, any fails → open again.
//! Opening is also an ejection from rotation, capped per upstream (see `Ejections`).

use super::window::RollingCounter;
use crate::clock::now_ms;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

pub const CLOSED: u8 = 0;
pub const OPEN: u8 = 1;
pub const HALF_OPEN: u8 = 2;

#[derive(Debug, Clone)]
pub struct BreakerPolicy {
    pub enabled: bool,
    pub failure_threshold: u32,
    pub failure_ratio: Option<f64>,
    pub min_requests: u32,
    pub window_ms: u64,
    pub open_for_ms: u64,
    pub max_open_for_ms: u64,
    pub half_open_probes: u32,
}

/// How many backends of one upstream may be ejected at once.
pub struct Ejections {
    pub ejected: AtomicUsize,
    pub max_percent: u32,
    pub backends: AtomicUsize,
    cap_logged: AtomicU8,
}

impl Ejections {
    pub fn new(max_percent: u32) -> Ejections {
        Ejections {
            ejected: AtomicUsize::new(0),
            max_percent,
            backends: AtomicUsize::new(0),
            cap_logged: AtomicU8::new(0),
        }
    }

    /// At least one backend may always be ejected (so a single bad backend is caught).
    fn cap(&self) -> usize {
        let n = self.backends.load(Ordering::Relaxed);
        ((n * self.max_percent as usize) / 100).max(1)
    }

    fn try_eject(&self) -> bool {
        let cap = self.cap();
        let mut cur = self.ejected.load(Ordering::Acquire);
        loop {
            if cur >= cap {
                if self.cap_logged.swap(1, Ordering::Relaxed) == 0 {
                    log::warn!("ejection cap reached ({cur} of {} backends): keeping failing backends in rotation",
                        self.backends.load(Ordering::Relaxed));
                }
                return false;
            }
            match self
                .ejected
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    fn release(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(1))
            });
        self.cap_logged.store(0, Ordering::Relaxed);
    }
}

pub struct Breaker {
    state: AtomicU8,
    consecutive: AtomicU32,
    opened_at: AtomicU64,
    open_for: AtomicU64,
    probes_admitted: AtomicU32,
    probes_ok: AtomicU32,
    /// When the current probe round started: a round whose probes never report back
    /// (client gone) is restarted after `open_for`, so the breaker cannot stick half-open.
    probe_round_at: AtomicU64,
    window: RollingCounter,
}

/// What `admit` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// A half-open probe: its outcome decides the state.
    Probe,
    No,
}

impl Breaker {
    pub fn new(p: &BreakerPolicy) -> Breaker {
        Breaker {
            state: AtomicU8::new(CLOSED),
            consecutive: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            open_for: AtomicU64::new(p.open_for_ms),
            probes_admitted: AtomicU32::new(0),
            probes_ok: AtomicU32::new(0),
            probe_round_at: AtomicU64::new(0),
            window: RollingCounter::new(p.window_ms),
        }
    }

    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Milliseconds until an open breaker half-opens (0 if not open).
    pub fn ms_until_half_open(&self, now: u64) -> u64 {
        if self.state() != OPEN {
            return 0;
        }
        let until = self.opened_at.load(Ordering::Acquire) + self.open_for.load(Ordering::Acquire);
        until.saturating_sub(now)
    }

    /// May a request go to this backend now?
    pub fn admit(&self, p: &BreakerPolicy, now: u64, label: &str) -> Admit {
        if !p.enabled {
            return Admit::Yes;
        }
        match self.state() {
            CLOSED => Admit::Yes,
            OPEN => {
                if self.ms_until_half_open(now) > 0 {
                    return Admit::No;
                }
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.probes_admitted.store(0, Ordering::Release);
                    self.probes_ok.store(0, Ordering::Release);
                    self.probe_round_at.store(now, Ordering::Release);
                    log::info!(
                        "circuit {label}: half-open, admitting {} probe(s)",
                        p.half_open_probes
                    );
                }
                self.admit_probe(p, now)
            }
            _ => self.admit_probe(p, now),
        }
    }

    fn admit_probe(&self, p: &BreakerPolicy, now: u64) -> Admit {
        let n = self.probes_admitted.fetch_add(1, Ordering::AcqRel);
        if n < p.half_open_probes {
            return Admit::Probe;
        }
        let started = self.probe_round_at.load(Ordering::Acquire);
        if now.saturating_sub(started) > p.open_for_ms
            && self
                .probe_round_at
                .compare_exchange(started, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // the previous round's probes never reported: start a new round
            self.probes_admitted.store(1, Ordering::Release);
            self.probes_ok.store(0, Ordering::Release);
            return Admit::Probe;
        }
        Admit::No
    }

    pub fn on_success(&self, p: &BreakerPolicy, ej: &Ejections, label: &str) {
        if !p.enabled {
            return;
        }
        let now = now_ms();
        self.window.add(now, 1, 0);
        match self.state() {
            CLOSED if self.consecutive.load(Ordering::Relaxed) != 0 => {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            HALF_OPEN => {
                let ok = self.probes_ok.fetch_add(1, Ordering::AcqRel) + 1;
                if ok >= p.half_open_probes
                    && self
                        .state
                        .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    self.consecutive.store(0, Ordering::Release);
                    self.open_for.store(p.open_for_ms, Ordering::Release);
                    self.window.reset();
                    ej.release();
                    log::info!("circuit {label}: closed after {ok} successful probe(s)");
                }
            }
            _ => {}
        }
    }

    pub fn on_failure(&self, p: &BreakerPolicy, ej: &Ejections, label: &str) {
        if !p.enabled {
            return;
        }
        let now = now_ms();
        self.window.add(now, 1, 1);
        match self.state() {
            CLOSED => {
                let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                let by_count = n >= p.failure_threshold;
                let by_ratio = p.failure_ratio.is_some_and(|r| {
                    let (reqs, fails) = self.window.sum(now);
                    reqs >= p.min_requests as u64 && (fails as f64) >= r * reqs as f64
                });
                if (by_count || by_ratio) && ej.try_eject() {
                    if self
                        .state
                        .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.opened_at.store(now, Ordering::Release);
                        log::warn!(
                            "circuit {label}: open for {} ms after {n} consecutive failure(s){}",
                            self.open_for.load(Ordering::Acquire),
                            if by_ratio && !by_count {
                                " (failure ratio)"
                            } else {
                                ""
                            }
                        );
                    } else {
                        ej.release();
                    }
                }
            }
            HALF_OPEN
                if self
                    .state
                    .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok() =>
            {
                let next = (self.open_for.load(Ordering::Acquire) * 2).min(p.max_open_for_ms);
                self.open_for.store(next, Ordering::Release);
                self.opened_at.store(now, Ordering::Release);
                log::warn!("circuit {label}: probe failed, open again for {next} ms");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            enabled: true,
            failure_threshold: 3,
            failure_ratio: None,
            min_requests: 10,
            window_ms: 10_000,
            open_for_ms: 50,
            max_open_for_ms: 150,
            half_open_probes: 2,
        }
    }

    #[test]
    fn opens_half_opens_and_closes() {
        let p = policy();
        let ej = Ejections::new(100);
        ej.backends.store(1, Ordering::Relaxed);
        let b = Breaker::new(&p);
        for _ in 0..2 {
            b.on_failure(&p, &ej, "t");
        }
        assert_eq!(b.state(), CLOSED);
        b.on_failure(&p, &ej, "t");
        assert_eq!(b.state(), OPEN);
        assert_eq!(b.admit(&p, now_ms(), "t"), Admit::No);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(b.admit(&p, now_ms(), "t"), Admit::Probe);
        assert_eq!(b.admit(&p, now_ms(), "t"), Admit::Probe);
        assert_eq!(b.admit(&p, now_ms(), "t"), Admit::No, "only two probes");
        b.on_success(&p, &ej, "t");
        b.on_success(&p, &ej, "t");
        assert_eq!(b.state(), CLOSED);
        assert_eq!(ej.ejected.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn failed_probe_reopens_for_longer() {
        let p = policy();
        let ej = Ejections::new(100);
        ej.backends.store(1, Ordering::Relaxed);
        let b = Breaker::new(&p);
        for _ in 0..3 {
            b.on_failure(&p, &ej, "t");
        }
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(b.admit(&p, now_ms(), "t"), Admit::Probe);
        b.on_failure(&p, &ej, "t");
        assert_eq!(b.state(), OPEN);
        let wait = b.ms_until_half_open(now_ms());
        assert!(wait > 50 && wait <= 100, "doubled open time, got {wait}");
    }

    #[test]
    fn ejection_cap_keeps_backends_closed() {
        let p = policy();
        let ej = Ejections::new(50);
        ej.backends.store(4, Ordering::Relaxed);
        let bs: Vec<Breaker> = (0..4).map(|_| Breaker::new(&p)).collect();
        for b in &bs {
            for _ in 0..5 {
                b.on_failure(&p, &ej, "t");
            }
        }
        let open = bs.iter().filter(|b| b.state() == OPEN).count();
        assert_eq!(open, 2);
    }

    #[test]
    fn ratio_trips() {
        let mut p = policy();
        p.failure_threshold = 1000;
        p.failure_ratio = Some(0.5);
        let ej = Ejections::new(100);
        ej.backends.store(1, Ordering::Relaxed);
        let b = Breaker::new(&p);
        for i in 0..20 {
            if i % 2 == 0 {
                b.on_success(&p, &ej, "t");
            } else {
                b.on_failure(&p, &ej, "t");
            }
        }
        assert_eq!(b.state(), OPEN);
    }

    fn one_backend() -> Ejections {
        let ej = Ejections::new(100);
        ej.backends.store(1, Ordering::Relaxed);
        ej
    }

    /// Trip the breaker and return a time at which it may half-open (no sleeping:
    /// `admit` takes the time as an argument).
    fn tripped(p: &BreakerPolicy, ej: &Ejections) -> (Breaker, u64) {
        let b = Breaker::new(p);
        for _ in 0..p.failure_threshold {
            b.on_failure(p, ej, "t");
        }
        assert_eq!(b.state(), OPEN);
        (b, now_ms() + 60_000)
    }

    #[test]
    fn closed_admits_everything() {
        let p = policy();
        let b = Breaker::new(&p);
        for _ in 0..10 {
            assert_eq!(b.admit(&p, now_ms(), "t"), Admit::Yes);
        }
        assert_eq!(b.state(), CLOSED);
    }

    #[test]
    fn success_resets_consecutive_failures() {
        let p = policy();
        let ej = one_backend();
        let b = Breaker::new(&p);
        for _ in 0..3 {
            b.on_failure(&p, &ej, "t");
            b.on_failure(&p, &ej, "t");
            b.on_success(&p, &ej, "t");
        }
        assert_eq!(b.state(), CLOSED, "never 3 failures in a row");
        assert_eq!(ej.ejected.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn half_open_needs_all_probes_to_succeed() {
        let p = policy();
        let ej = one_backend();
        let (b, t) = tripped(&p, &ej);
        assert_eq!(b.admit(&p, t, "t"), Admit::Probe);
        assert_eq!(b.state(), HALF_OPEN);
        assert_eq!(b.admit(&p, t, "t"), Admit::Probe);
        b.on_success(&p, &ej, "t");
        assert_eq!(b.state(), HALF_OPEN, "one of two probes is not enough");
        assert_eq!(ej.ejected.load(Ordering::Relaxed), 1);
        b.on_success(&p, &ej, "t");
        assert_eq!(b.state(), CLOSED);
        assert_eq!(ej.ejected.load(Ordering::Relaxed), 0);
    }

    /// Probes that never report back: a new round starts only once more than
    /// `open_for` has passed since the round started.
    #[test]
    fn stale_probe_round_restarts_after_open_for() {
        let p = policy();
        let ej = one_backend();
        let (b, t) = tripped(&p, &ej);
        assert_eq!(b.admit(&p, t, "t"), Admit::Probe);
        assert_eq!(b.admit(&p, t, "t"), Admit::Probe);
        assert_eq!(b.admit(&p, t + 10, "t"), Admit::No);
        assert_eq!(b.admit(&p, t + p.open_for_ms, "t"), Admit::No);
        assert_eq!(b.admit(&p, t + p.open_for_ms + 1, "t"), Admit::Probe);
        // the new round has `half_open_probes` probes in all
        assert_eq!(b.admit(&p, t + p.open_for_ms + 1, "t"), Admit::Probe);
        assert_eq!(b.admit(&p, t + p.open_for_ms + 1, "t"), Admit::No);
    }

    fn ratio_policy() -> BreakerPolicy {
        let mut p = policy();
        p.failure_threshold = 1000;
        p.failure_ratio = Some(0.5);
        p
    }

    #[test]
    fn ratio_waits_for_min_requests() {
        let p = ratio_policy();
        let ej = one_backend();
        let b = Breaker::new(&p);
        for i in 1..p.min_requests {
            b.on_failure(&p, &ej, "t");
            assert_eq!(
                b.state(),
                CLOSED,
                "after {i} of {} requests",
                p.min_requests
            );
        }
        b.on_failure(&p, &ej, "t");
        assert_eq!(b.state(), OPEN, "10 of 10 failed");
    }

    #[test]
    fn ratio_below_threshold_stays_closed() {
        let p = ratio_policy();
        let ej = one_backend();
        let b = Breaker::new(&p);
        for _ in 0..16 {
            b.on_success(&p, &ej, "t");
        }
        for _ in 0..4 {
            b.on_failure(&p, &ej, "t");
        }
        assert_eq!(b.state(), CLOSED, "4 of 20 failed, under 50%");
    }
}
