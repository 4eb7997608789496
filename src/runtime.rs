//! Process-wide state: the current snapshot and how to replace it.

use crate::config::{self, ConfigError};
use crate::snapshot::{self, Snapshot};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub struct Runtime {
    snapshot: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
    pub started: Instant,
    /// Reload when the config file changes (`--watch`).
    pub watch: std::sync::atomic::AtomicBool,
    /// The TLS listener's certificate resolver; its set follows the snapshot.
    pub certs: Arc<crate::tls::CertResolver>,
    /// `None` until the first reload.
    pub last_reload: parking_lot::Mutex<Option<LastReload>>,
    /// This instance's place in a fleet (`cluster`); inert without one.
    pub fleet: Arc<crate::cluster::Fleet>,
    /// The plugins routes may name (`plugins:`), for every load and reload.
    pub registry: Arc<crate::plugin::Registry>,
}

#[derive(Debug)]
pub struct ReloadOutcome {
    pub generation: u64,
    pub routes: usize,
    pub millis: f64,
    /// Changes that apply only after a restart or upgrade.
    pub warnings: Vec<String>,
}

/// The last reload, as `/admin/status` shows it.
#[derive(Debug, Clone, Default)]
pub struct LastReload {
    pub at_unix: u64,
    pub ok: bool,
    pub generation: u64,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Runtime {
    /// Load and compile the config at `path`, as at start-up, with the built-in plugins.
    pub fn load(path: PathBuf) -> Result<Arc<Runtime>, Vec<ConfigError>> {
        Runtime::load_with(path, crate::plugin::builtin())
    }

    /// Load and compile the config at `path`, its routes' plugins from `registry`.
    pub fn load_with(
        path: PathBuf,
        registry: crate::plugin::Registry,
    ) -> Result<Arc<Runtime>, Vec<ConfigError>> {
        let src = config::load_file(&path).map_err(|e| e.0)?;
        let snap = snapshot::build_with(&src, None, 1, &registry)?;
        crate::observe::metrics::METRICS.config_generation.set(1);
        let certs = Arc::new(crate::tls::CertResolver::new());
        if let Some(set) = &snap.tls {
            certs.store(set.clone());
        }
        let fleet = Arc::new(crate::cluster::Fleet::new());
        fleet.configure(&snap);
        Ok(Arc::new(Runtime {
            snapshot: ArcSwap::from_pointee(snap),
            config_path: path,
            generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            watch: std::sync::atomic::AtomicBool::new(false),
            certs,
            last_reload: parking_lot::Mutex::new(None),
            fleet,
            registry: Arc::new(registry),
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
        let r = self.reload_inner().await;
        let m = &crate::observe::metrics::METRICS;
        let at_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = match &r {
            Ok(o) => {
                m.config_reloads.with_label_values(&["success"]).inc();
                m.config_generation.set(o.generation as i64);
                LastReload {
                    at_unix,
                    ok: true,
                    generation: o.generation,
                    errors: Vec::new(),
                    warnings: o.warnings.clone(),
                }
            }
            Err(errs) => {
                m.config_reloads.with_label_values(&["failure"]).inc();
                LastReload {
                    at_unix,
                    ok: false,
                    generation: self.generation(),
                    errors: errs.iter().map(|e| e.to_string()).collect(),
                    warnings: Vec::new(),
                }
            }
        };
        *self.last_reload.lock() = Some(record);
        // the fleet hears of the new generation (or the failed reload) at once
        self.fleet.wake();
        r
    }

    async fn reload_inner(&self) -> Result<ReloadOutcome, Vec<ConfigError>> {
        // one reload at a time, from reading the file to the swap
        let _guard = self.reload_lock.lock().await;
        let t0 = Instant::now();
        let path = self.config_path.clone();
        let prev = self.snapshot.load_full();
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let base = prev.clone();
        let registry = self.registry.clone();
        // parsing and compiling may resolve host names: keep it off the async workers
        let built = tokio::task::spawn_blocking(move || {
            let src = config::load_file(&path).map_err(|e| e.0)?;
            snapshot::build_with(&src, Some(&base), generation, &registry)
        })
        .await
        .map_err(|e| {
            vec![ConfigError {
                file: self.config_path.display().to_string(),
                path: String::new(),
                line: None,
                message: format!("reload task failed: {e}"),
            }]
        })??;
        // New or changed upstreams get one health-check pass before they take traffic.
        for (name, u) in &built.upstreams {
            if prev
                .upstreams
                .get(name)
                .is_none_or(|old| !Arc::ptr_eq(old, u))
            {
                u.check_now().await;
            }
        }
        let routes = built.routes.len();
        let warnings = built.warnings.clone();
        // new connections get the new certificates; open ones keep theirs
        if let Some(set) = &built.tls {
            self.certs.store(set.clone());
        }
        self.snapshot.store(Arc::new(built));
        self.generation.store(generation, Ordering::Relaxed);
        self.fleet.configure(&self.snapshot.load());
        let millis = t0.elapsed().as_secs_f64() * 1000.0;
        // Freeing a large snapshot (10,000 routes: ~10 ms) is no work for a request thread.
        // Requests still holding it free it when they finish.
        tokio::task::spawn_blocking(move || drop(prev));
        Ok(ReloadOutcome {
            generation,
            routes,
            millis,
            warnings,
        })
    }
}

impl crate::cluster::Host for Runtime {
    fn snapshot(&self) -> Arc<Snapshot> {
        Runtime::snapshot(self)
    }

    fn last_reload(&self) -> Option<serde_json::Value> {
        self.last_reload.lock().clone().map(|r| {
            serde_json::json!({ "at_unix": r.at_unix, "ok": r.ok, "generation": r.generation,
                                "errors": r.errors.iter().take(5).collect::<Vec<_>>() })
        })
    }
}
