//! Shutdown: which signal does what, and how long the process may take to exit.
//!
//! Pingora's own signal handling (`Server::run_forever`) sleeps the whole
//! `grace_period_seconds` after SIGTERM even with nothing left to drain (300 s by default),
//! and stops listening for signals once the first arrives, so a second SIGTERM or a SIGINT
//! during that sleep is ignored. Portcullis hands Pingora its own [`Signals`] watch instead:
//!
//! - SIGTERM: stop accepting, let in-flight requests finish, exit as soon as none is left,
//!   at the latest after `grace_period_seconds` (the drain timeout) plus
//!   `graceful_shutdown_timeout_seconds` (Pingora's runtime shutdown).
//! - SIGQUIT: hand the listening sockets to a new process started with `-u` (Pingora waits
//!   5 s for it to take them), then drain as for SIGTERM.
//! - SIGINT: exit at once (in-flight requests are cut).
//! - A second SIGTERM or SIGINT while draining: exit at once.
//!
//! The watcher runs on its own thread, started from [`Signals::recv`], which Pingora calls
//! after daemonising (a thread started earlier would not survive the fork).

use async_trait::async_trait;
use pingora_core::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast::error::RecvError;

/// Without `--server-conf` (or when it leaves them unset): the longest wait for in-flight
/// requests after SIGTERM/SIGQUIT, and then Pingora's runtime shutdown bound. The process
/// exits as soon as nothing is in flight, so with no traffic it exits at once.
pub const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 3;
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 2;

/// How often the drain looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// The longest wait for the access log to write its last lines before exiting.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

type Phases = tokio::sync::broadcast::Receiver<ExecutionPhase>;

/// Pingora's shutdown signal watch, replaced (see the module docs).
pub struct Signals {
    phases: std::sync::Mutex<Option<Phases>>,
}

impl Signals {
    /// `phases`: [`pingora_core::server::Server::watch_execution_phase`], taken before `run`.
    pub fn new(phases: Phases) -> Signals {
        Signals {
            phases: std::sync::Mutex::new(Some(phases)),
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let phases = self.phases.lock().ok().and_then(|mut p| p.take());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || watch(tx, phases));
        if let Err(e) = spawned {
            log::error!("cannot start the signal thread: {e}; SIGINT exits, SIGTERM cannot drain");
            return std::future::pending().await;
        }
        match rx.await {
            Ok(s) => s,
            // the thread could not listen for signals: it logged why
            Err(_) => std::future::pending().await,
        }
    }
}

/// The signal thread: tell Pingora about the first signal, then drain.
fn watch(tx: tokio::sync::oneshot::Sender<ShutdownSignal>, phases: Option<Phases>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the signal thread's runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot listen for SIGTERM/SIGINT/SIGQUIT");
            return;
        };
        let first = tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
        };
        let graceful = !matches!(first, ShutdownSignal::FastShutdown);
        if tx.send(first).is_err() {
            return;
        }
        let again = async {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        };
        tokio::select! {
            sig = again => {
                log::warn!("{sig} received while shutting down: exiting now");
                exit_now();
            }
            _ = drained(phases), if graceful => {
                log::info!("graceful shutdown: no request in flight, exiting");
                exit_now();
            }
        }
    });
}

/// Resolves once Pingora has stopped accepting (its grace period started) and no proxied
/// request is in flight. During an upgrade's hand-over (before the grace period) the old
/// process still accepts, so an empty moment there does not count.
async fn drained(phases: Option<Phases>) {
    let Some(mut phases) = phases else {
        // without phases there is no telling when accepting stopped: Pingora's grace applies
        return std::future::pending().await;
    };
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::ShutdownGracePeriod) => break,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
    let metrics = &crate::observe::metrics::METRICS;
    let mut waiting = false;
    while metrics.in_flight.get() > 0 {
        if !waiting {
            waiting = true;
            log::info!(
                "graceful shutdown: waiting for {} request(s) in flight",
                metrics.in_flight.get()
            );
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Write what the access log holds, then end the process.
fn exit_now() -> ! {
    crate::observe::access_log::drain(LOG_FLUSH_TIMEOUT);
    std::process::exit(0)
}
