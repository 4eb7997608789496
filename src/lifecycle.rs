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

/// Set once this process is handing over to a new one or shutting down: responses then
/// close their connection so keep-alive clients reconnect (to the new process) instead
/// of racing the old one's close. The supervisor sets it; the responders read it.
static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process is draining (see [`set_draining`]).
pub fn draining() -> bool {
    DRAINING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Mark the process as draining; returns whether it already was.
pub fn set_draining() -> bool {
    DRAINING.swap(true, std::sync::atomic::Ordering::Relaxed)
}

/// Without `--server-conf` (or when it leaves them unset): the longest wait for in-flight
/// requests after SIGTERM/SIGQUIT, and then Pingora's runtime shutdown bound. The process
/// exits as soon as nothing is in flight, so with no traffic it exits at once.
pub const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 3;
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 2;

/// How often the drain looks at the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// How long the in-flight count must stay at 0 before the process exits: a connection
/// accepted just before the listeners stopped, whose request is already buffered, is read
/// and served (Pingora prefers a buffered request to its shutdown) but counts only once its
/// task has run; exiting before would reset it.
const DRAIN_SETTLE: Duration = Duration::from_millis(250);
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
/// request has been in flight for [`DRAIN_SETTLE`]. During an upgrade's hand-over (before the grace period) the old
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
    let mut idle_since: Option<std::time::Instant> = None;
    loop {
        let n = metrics.in_flight.get();
        if n > 0 {
            idle_since = None;
            if !waiting {
                waiting = true;
                log::info!("graceful shutdown: waiting for {n} request(s) in flight");
            }
        } else if idle_since
            .get_or_insert_with(std::time::Instant::now)
            .elapsed()
            >= DRAIN_SETTLE
        {
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Write what the access log holds, then end the process.
fn exit_now() -> ! {
    crate::observe::access_log::drain(LOG_FLUSH_TIMEOUT);
    std::process::exit(0)
}

/// Fail fast on listen addresses that cannot be bound (typically: already in use), with one
/// line naming the address, instead of Pingora's 30 one-second retries and a panic in the
/// service thread that leaves a process without listeners. `addrs`: (address, config key).
/// Not for `-u`: an upgrade takes the sockets over from the running process.
pub fn check_listeners(addrs: &[(&str, &str)]) -> Result<(), String> {
    for (addr, key) in addrs {
        use std::net::ToSocketAddrs;
        // the first address a name resolves to, as Pingora binds; std binds with
        // SO_REUSEADDR, as Pingora does, so TIME_WAIT connections do not count
        let first = addr
            .to_socket_addrs()
            .map_err(|e| format!("cannot listen on {addr} ({key}): {e}"))?
            .next()
            .ok_or_else(|| format!("cannot listen on {addr} ({key}): no address"))?;
        if let Err(e) = std::net::TcpListener::bind(first) {
            let reason = match e.kind() {
                std::io::ErrorKind::AddrInUse => "address already in use".to_string(),
                std::io::ErrorKind::PermissionDenied => {
                    format!("permission denied ({e}; ports below 1024 need CAP_NET_BIND_SERVICE)")
                }
                _ => e.to_string(),
            };
            return Err(format!("cannot listen on {addr} ({key}): {reason}"));
        }
    }
    Ok(())
}

/// Services that stopped although no shutdown was asked for (shown by `/healthz`).
static DEAD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The services that died, with why; empty while all run.
pub fn dead_services() -> Vec<String> {
    DEAD.lock().map(|d| d.clone()).unwrap_or_default()
}

/// A listening service whose end, other than by shutdown, ends the process: Pingora logs a
/// service that fails (a listener it cannot bind panics its task) and keeps running without
/// it, so a supervisor would never restart a gateway that no longer listens.
pub struct Guarded<S> {
    pub inner: S,
}

#[async_trait]
impl<S: pingora_core::services::Service> pingora_core::services::Service for Guarded<S> {
    async fn start_service(
        &mut self,
        fds: Option<pingora_core::server::ListenFds>,
        shutdown: pingora_core::server::ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        use futures_util::FutureExt;
        let name = self.inner.name().to_string();
        let watch = shutdown.clone();
        let run =
            std::panic::AssertUnwindSafe(self.inner.start_service(fds, shutdown, listeners_per_fd))
                .catch_unwind()
                .await;
        if *watch.borrow() {
            return;
        }
        let why = match run {
            Ok(()) => "it stopped".to_string(),
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "it panicked".to_string()),
        };
        let line = format!("service '{name}' died: {why}");
        if let Ok(mut d) = DEAD.lock() {
            d.push(line.clone());
        }
        log::error!("{line}; exiting");
        crate::observe::access_log::drain(LOG_FLUSH_TIMEOUT);
        std::process::exit(1)
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(
        &self,
        global: &pingora_core::server::RuntimeOpts,
    ) -> Option<pingora_core::server::RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}
