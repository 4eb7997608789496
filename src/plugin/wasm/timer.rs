//! Root-context timers (`proxy_set_tick_period_milliseconds` → `proxy_on_tick`). A filter
//! whose root context set a period keeps one instance apart for its ticks; one thread
//! (started by [`super::engine::ensure_threads`]) calls each such instance when its period
//! has passed, and sleeps on a condition variable while no filter has a timer. A ticker ends
//! when its filter is dropped (a reload) or its tick fails.

use super::abi::ROOT_CONTEXT;
use super::metrics::WASM_METRICS;
use super::pool::{Instance, Pool};
use parking_lot::{Condvar, Mutex};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

/// How often the timer thread looks for a due tick.
const GRANULARITY: Duration = Duration::from_millis(5);

pub struct Ticker {
    inst: Mutex<Option<Box<Instance>>>,
    pool: Arc<Pool>,
    next: Mutex<Instant>,
}

static TICKERS: LazyLock<Mutex<Vec<Weak<Ticker>>>> = LazyLock::new(|| Mutex::new(Vec::new()));
/// Wakes the timer thread when the first ticker is registered.
static WAKE: Condvar = Condvar::new();

/// Keep `inst` for the filter's ticks; it ticks while the returned handle lives.
pub fn register(inst: Box<Instance>, pool: Arc<Pool>) -> Arc<Ticker> {
    let period = Duration::from_millis(u64::from(inst.store.data().tick_ms));
    let t = Arc::new(Ticker {
        inst: Mutex::new(Some(inst)),
        pool,
        next: Mutex::new(Instant::now() + period),
    });
    TICKERS.lock().push(Arc::downgrade(&t));
    WAKE.notify_one();
    t
}

/// The timer thread: every [`GRANULARITY`] while some filter has a timer, else asleep.
pub fn run() {
    loop {
        let live: Vec<Arc<Ticker>> = {
            let mut list = TICKERS.lock();
            loop {
                list.retain(|w| w.strong_count() > 0);
                if !list.is_empty() {
                    break;
                }
                WAKE.wait(&mut list);
            }
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for t in live {
            t.tick_if_due();
        }
        std::thread::sleep(GRANULARITY);
    }
}

impl Ticker {
    fn tick_if_due(&self) {
        let now = Instant::now();
        if *self.next.lock() > now {
            return;
        }
        let mut slot = self.inst.lock();
        let Some(inst) = slot.as_mut() else { return };
        let period = inst.store.data().tick_ms;
        if period == 0 {
            return;
        }
        *self.next.lock() = now + Duration::from_millis(u64::from(period));
        let Some(f) = inst.cb.tick.clone() else {
            return;
        };
        match inst.call(&f, ROOT_CONTEXT) {
            Ok(()) => inst.store.data_mut().reset(),
            Err(e) => {
                let info = &self.pool.info;
                log::warn!(
                    "wasm filter `{}` {e} in proxy_on_tick; its timer stops",
                    info.name
                );
                WASM_METRICS
                    .errors
                    .with_label_values(&[&*info.route, &*info.name, e.kind()])
                    .inc();
                *slot = None;
            }
        }
    }
}
