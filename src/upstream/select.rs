//! Choosing a backend for one attempt: the load-balancing pass over healthy backends whose
//! breaker admits traffic, the fallback past open breakers, and why nothing was chosen.

use super::backend::BackendState;
use super::breaker::{self, Admit};
use super::{inet, Selector, Upstream, MAX_SELECT_ITERATIONS};
use crate::clock::now_ms;
use ahash::AHashMap;
use pingora_load_balancing::Backend;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Why no backend could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// Every candidate's circuit is open; the first half-opens in this many ms.
    CircuitOpen(u64),
    /// No backend is healthy (or none is registered).
    NoneHealthy,
    /// Every healthy backend was already tried for this request.
    Exhausted,
}

/// A chosen backend.
pub struct Selected {
    pub state: Arc<BackendState>,
    /// A half-open probe: its outcome closes or re-opens the circuit.
    pub probe: bool,
}

impl Upstream {
    /// Pick a healthy backend whose circuit admits traffic, preferring ones not in
    /// `tried` (falling back to a tried one only when `allow_tried`). `key` feeds
    /// consistent hashing.
    pub fn select(
        &self,
        key: &[u8],
        tried: &[SocketAddr],
        allow_tried: bool,
    ) -> Result<Selected, NoBackend> {
        let now = now_ms();
        let states = self.states.load();
        let mut skip: Vec<SocketAddr> = Vec::new();
        let mut exclude_tried = true;
        for _ in 0..8 {
            let chosen = self.pick(key, &states, now, |a| {
                !(skip.contains(a) || exclude_tried && tried.contains(a))
            });
            let Some((addr, past_breaker)) = chosen else {
                if exclude_tried && allow_tried && !tried.is_empty() {
                    exclude_tried = false;
                    continue;
                }
                return Err(self.why_none(&states, now, tried));
            };
            let state = match states.get(&addr) {
                Some(s) => s.clone(),
                // membership changed between the selector and the state map
                None => Arc::new(BackendState::new(
                    &self.name,
                    addr,
                    self.membership.host_of(&addr),
                    &self.profile,
                    &self.breaker_policy,
                )),
            };
            if past_breaker {
                // chosen despite its open breaker (see `pick`): no probe accounting
                return Ok(Selected {
                    state,
                    probe: false,
                });
            }
            match state.breaker.admit(&self.breaker_policy, now, &state.label) {
                Admit::Yes => {
                    return Ok(Selected {
                        state,
                        probe: false,
                    })
                }
                Admit::Probe => return Ok(Selected { state, probe: true }),
                Admit::No => skip.push(addr),
            }
        }
        Err(self.why_none(&states, now, tried))
    }

    /// One pass of the load-balancing algorithm over healthy, admissible backends; `true`
    /// with the address when it was chosen past its open breaker.
    fn pick<F: Fn(&SocketAddr) -> bool>(
        &self,
        key: &[u8],
        states: &AHashMap<SocketAddr, Arc<BackendState>>,
        now: u64,
        extra: F,
    ) -> Option<(SocketAddr, bool)> {
        let policy = &self.breaker_policy;
        // what this pass saw: the health state can change between two reads of it (a
        // frozen backend answering its health check again), and the fallback below must
        // follow the same observation the pass acted on
        let saw_unhealthy = std::cell::Cell::new(false);
        let usable = |b: &Backend, healthy: bool| -> Option<SocketAddr> {
            if !healthy {
                saw_unhealthy.set(true);
                return None;
            }
            let a = inet(b)?;
            extra(&a).then_some(a)
        };
        // an open circuit takes the backend out of rotation until it may half-open
        let closed = |a: &SocketAddr| {
            states.get(a).is_none_or(|s| {
                !policy.enabled
                    || s.breaker.state() == breaker::CLOSED
                    || s.breaker.ms_until_half_open(now) == 0
            })
        };
        if let Some(a) =
            self.select_by(key, states, |b, h| usable(b, h).is_some_and(|a| closed(&a)))
        {
            return Some((a, false));
        }
        // The ejection cap counts every backend out of rotation, not only the breakers':
        // when health checks took out the others, a backend whose breaker is open but which
        // passes its health check is the best there is (and a recovered one closes its
        // breaker with the first successes) — rather than a 503 while it answers.
        let be = self.backends();
        let health_down =
            saw_unhealthy.get() || self.membership.current().iter().any(|b| !be.ready(b));
        if health_down {
            return self
                .select_by(key, states, |b, h| usable(b, h).is_some())
                .map(|a| (a, true));
        }
        None
    }

    fn select_by<A: Fn(&Backend, bool) -> bool>(
        &self,
        key: &[u8],
        states: &AHashMap<SocketAddr, Arc<BackendState>>,
        accept: A,
    ) -> Option<SocketAddr> {
        let chosen = match &self.selector {
            Selector::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, &accept),
            Selector::Random(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, &accept),
            Selector::Consistent(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, &accept),
            Selector::LeastRequest(lb) => {
                let a = lb.select_with(key, MAX_SELECT_ITERATIONS, &accept)?;
                match lb.select_with(key, MAX_SELECT_ITERATIONS, &accept) {
                    Some(b) if b != a => {
                        let load = |x: &Backend| {
                            let n = inet(x)
                                .and_then(|ad| states.get(&ad))
                                .map(|s| s.in_flight.load(Ordering::Relaxed))
                                .unwrap_or(0);
                            (n as f64 + 1.0) / x.weight.max(1) as f64
                        };
                        if load(&b) < load(&a) {
                            Some(b)
                        } else {
                            Some(a)
                        }
                    }
                    _ => Some(a),
                }
            }
        }?;
        inet(&chosen)
    }

    fn why_none(
        &self,
        states: &AHashMap<SocketAddr, Arc<BackendState>>,
        now: u64,
        tried: &[SocketAddr],
    ) -> NoBackend {
        let be = self.backends();
        let current = self.membership.current();
        let mut healthy = 0usize;
        let mut open_wait: Option<u64> = None;
        for b in current.iter() {
            if !be.ready(b) {
                continue;
            }
            healthy += 1;
            if let Some(s) = inet(b).and_then(|a| states.get(&a)) {
                if s.breaker.state() != breaker::CLOSED {
                    let w = s.breaker.ms_until_half_open(now).max(1);
                    open_wait = Some(open_wait.map_or(w, |x: u64| x.min(w)));
                }
            }
        }
        if healthy == 0 {
            NoBackend::NoneHealthy
        } else if !tried.is_empty() {
            NoBackend::Exhausted
        } else if let Some(w) = open_wait {
            NoBackend::CircuitOpen(w)
        } else {
            NoBackend::NoneHealthy
        }
    }
}
