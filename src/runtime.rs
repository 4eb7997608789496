//! Process-wide state: the current snapshot and how to replace it.

use crate::config::{self, ConfigError};
use crate::snapshot::{self, Snapshot};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Runtime {
    snapshot: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    generation: AtomicU64,
    reload_lock: Mutex<()>,
    pub started: Instant,
}

#[derive(Debug)]
pub struct ReloadOutcome {
    pub generation: u64,
    pub routes: usize,
    pub millis: f64,
}

impl Runtime {
    /// Load and compile the config at `path`, as at start-up.
    pub fn load(path: PathBuf) -> Result<Arc<Runtime>, Vec<ConfigError>> {
        let src = config::load_file(&path).map_err(|e| e.0)?;
        let snap = snapshot::build(&src, None, 1)?;
        Ok(Arc::new(Runtime {
            snapshot: ArcSwap::from_pointee(snap),
            config_path: path,
            generation: AtomicU64::new(1),
            reload_lock: Mutex::new(()),
            started: Instant::now(),
        }))
    }

    /// The current snapshot: one atomic load and an Arc clone.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Re-read the config file and swap in the new snapshot. On any error the running
    /// snapshot stays and the errors are returned.
    pub async fn reload(&self) -> Result<ReloadOutcome, Vec<ConfigError>> {
        let t0 = Instant::now();
        let path = self.config_path.clone();
        let src = config::load_file(&path).map_err(|e| e.0)?;
        let (next, changed) = {
            let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
            let prev = self.snapshot.load_full();
            let generation = self.generation.load(Ordering::Relaxed) + 1;
            let next = snapshot::build(&src, Some(&prev), generation)?;
            let changed: Vec<_> = next
                .upstreams
                .iter()
                .filter(|(n, u)| {
                    prev.upstreams
                        .get(*n)
                        .is_none_or(|old| !Arc::ptr_eq(old, u))
                })
                .map(|(_, u)| u.clone())
                .collect();
            (next, changed)
        };
        // New or changed upstreams get one health-check pass before they take traffic.
        for u in &changed {
            u.check_now().await;
        }
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let generation = next.generation;
        let routes = next.routes.len();
        self.snapshot.store(Arc::new(next));
        self.generation.store(generation, Ordering::Relaxed);
        Ok(ReloadOutcome {
            generation,
            routes,
            millis: t0.elapsed().as_secs_f64() * 1000.0,
        })
    }
}
