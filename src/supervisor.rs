//! Background upkeep: drives each upstream's DNS refresh, registration expiry and health
//! checks, and reloads the config on SIGHUP. Runs as a Pingora background service so it
//! starts after daemonisation.

use crate::runtime::Runtime;
use async_trait::async_trait;
use pingora_core::server::{ExecutionPhase, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often upstreams are visited; health-check and DNS intervals are rounded up to it.
const TICK: Duration = Duration::from_millis(100);

fn config_mtime(rt: &Runtime) -> Option<std::time::SystemTime> {
    std::fs::metadata(&rt.config_path)
        .and_then(|m| m.modified())
        .ok()
}

pub struct Supervisor {
    pub runtime: Arc<Runtime>,
    /// Pingora's execution phases, to notice a graceful upgrade or shutdown.
    pub phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

impl Supervisor {
    /// The OTLP exporter thread: idle until a config with `tracing` sends it spans. Its queue
    /// size is read here, at start-up; endpoint, headers and sampling follow reloads.
    fn start_trace_exporter(&self) {
        let queue = self
            .runtime
            .snapshot()
            .config
            .tracing
            .as_ref()
            .map_or(4096, |t| t.queue);
        let runtime = self.runtime.clone();
        crate::observe::otlp::start(queue, move || runtime.snapshot().config.tracing.clone());
    }
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let rt = self.runtime.clone();
        crate::observe::access_log::start(Box::new(move || {
            rt.snapshot().config.access_log.clone()
        }));
        self.start_trace_exporter();
        // After daemonising: the wasm time-limit and timer threads of a forked process.
        crate::plugin::wasm::engine::ensure_threads();
        tokio::spawn(crate::cluster::run(
            self.runtime.fleet.clone(),
            self.runtime.clone(),
        ));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload by signal is off: {e}");
                None
            }
        };
        let mut phases = self.phases.lock().ok().and_then(|mut p| p.take());
        let mut last_mtime = config_mtime(&self.runtime);
        let mut watch_tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = watch_tick.tick(), if self.runtime.watch.load(std::sync::atomic::Ordering::Relaxed) => {
                    let m = config_mtime(&self.runtime);
                    if m != last_mtime {
                        last_mtime = m;
                        log::info!("{} changed, reloading", self.runtime.config_path.display());
                        let _ = crate::admin::reload_and_log(&self.runtime).await;
                    }
                }
                _ = shutdown.changed() => {
                    crate::lifecycle::set_draining();
                    break;
                }
                phase = async { match phases.as_mut() { Some(p) => p.recv().await.ok(), None => std::future::pending().await } } => {
                    match phase {
                        Some(ExecutionPhase::GracefulUpgradeTransferringFds)
                        | Some(ExecutionPhase::GracefulUpgradeCloseTimeout)
                        | Some(ExecutionPhase::GracefulTerminate)
                        | Some(ExecutionPhase::ShutdownStarted) => {
                            if !crate::lifecycle::set_draining() {
                                log::info!("draining: responses now close their connections");
                            }
                        }
                        Some(_) => {}
                        None => phases = None,
                    }
                }
                _ = tick.tick() => {
                    let snap = self.runtime.snapshot();
                    for u in snap.upstreams.values() {
                        tokio::spawn(u.clone().maintain());
                    }
                    if let Some(cluster) = snap.limits.cluster.clone() {
                        let rt = self.runtime.clone();
                        tokio::spawn(cluster.run(move |c| {
                            rt.snapshot().limits.cluster.as_ref().is_some_and(|cur| std::sync::Arc::ptr_eq(cur, c))
                        }));
                    }
                    for src in snap.auth.jwks_sources() {
                        if src.due() {
                            tokio::spawn(async move { src.refresh().await });
                        }
                    }
                }
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    log::info!("SIGHUP received, reloading {}", self.runtime.config_path.display());
                    let _ = crate::admin::reload_and_log(&self.runtime).await;
                }
            }
        }
    }
}
