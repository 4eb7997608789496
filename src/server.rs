//! Assembles the Pingora server: the proxy service on the configured listeners, the admin
//! service, and the background supervisor.

use crate::admin::AdminApp;
use crate::lifecycle::Guarded;
use crate::proxy::Gateway;
use crate::runtime::Runtime;
use crate::supervisor::Supervisor;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::L4BufferSettings;
use pingora_core::listeners::ListenerConfig;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::sync::Arc;

pub struct Options {
    pub server_conf: Option<String>,
    pub daemon: bool,
    pub upgrade: bool,
}

fn server_conf(opts: &Options, opt: &Opt) -> Result<ServerConf, String> {
    let mut conf = match &opts.server_conf {
        Some(path) => ServerConf::load_from_yaml(path)
            .map_err(|e| format!("{path}: cannot load the server conf: {e}"))?,
        None => ServerConf {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            ..ServerConf::default()
        },
    };
    // Pingora's defaults (300 s, then 5 s) keep a stopped gateway around for five minutes;
    // ours bound the drain (the process exits as soon as nothing is in flight).
    conf.grace_period_seconds
        .get_or_insert(crate::lifecycle::DEFAULT_GRACE_PERIOD_SECONDS);
    conf.graceful_shutdown_timeout_seconds
        .get_or_insert(crate::lifecycle::DEFAULT_SHUTDOWN_TIMEOUT_SECONDS);
    conf.merge_with_opt(opt);
    resolve_paths(&mut conf);
    Ok(conf)
}

/// Relative paths resolve against the directory portcullis was started from, in the
/// foreground and as a daemon alike: the server conf's files become absolute, and a daemon
/// (`-d`, which would otherwise run in `/`) keeps that directory as its working directory
/// unless `working_directory` names another, so the config's relative paths (certificates,
/// keys, secret and JWKS files, the access log) still resolve on every reload.
fn resolve_paths(conf: &mut ServerConf) {
    let Ok(cwd) = std::env::current_dir() else {
        return;
    };
    let abs = |p: &mut String| {
        if !p.is_empty() && std::path::Path::new(p.as_str()).is_relative() {
            *p = cwd.join(p.as_str()).display().to_string();
        }
    };
    abs(&mut conf.pid_file);
    abs(&mut conf.upgrade_sock);
    if let Some(e) = conf.error_log.as_mut() {
        abs(e);
    }
    if conf.daemon && conf.working_directory.is_none() {
        conf.working_directory = Some(cwd.clone());
    }
}

/// Start serving; returns once the server has shut down (see [`crate::lifecycle`]).
pub fn run(runtime: Arc<Runtime>, opts: Options) -> Result<(), String> {
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        nocapture: false,
        test: false,
        // the server conf is loaded here (server_conf below); given to Pingora as well it
        // only makes it warn "Ignoring command line argument" on every start
        conf: None,
    };
    let conf = server_conf(&opts, &opt)?;
    if !opts.upgrade {
        let snap = runtime.snapshot();
        let server = &snap.config.server;
        let mut addrs: Vec<(&str, &str)> = server
            .listen
            .iter()
            .map(|a| (a.as_str(), "server.listen"))
            .collect();
        if let Some(tls) = &server.tls {
            addrs.push((tls.listen.as_str(), "server.tls.listen"));
        }
        if let Some(admin) = &server.admin {
            addrs.push((admin.listen.as_str(), "server.admin.listen"));
        }
        crate::lifecycle::check_listeners(&addrs)?;
    }
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // Bootstrap (taking over listening sockets with -u, telling a waiting parent with -d
    // that we are ready) runs as a service: after daemonisation, before the listeners.
    let bootstrap = server.bootstrap_as_a_service();

    let snap = runtime.snapshot();
    // the response store is sized once, from the config at start-up
    crate::cache::init(&snap.config.cache);
    let mut options = HttpServerOptions::default();
    // h2c: a connection starting with the HTTP/2 preface is served as HTTP/2, any other as
    // HTTP/1 (Pingora peeks at the first bytes); on TLS the protocol comes from ALPN.
    options.h2c = snap.config.server.h2c;
    let mut proxy = pingora_proxy::ProxyServiceBuilder::new(
        &server.configuration,
        Gateway::new(runtime.clone()),
    )
    .name("portcullis proxy")
    .server_options(options)
    .build();
    // Pingora gives every connection a 64 KiB read buffer by default: 640 MiB for 10,000
    // idle keep-alive clients. HTTP/1 headers are read into their own buffer anyway.
    let read_buffer = usize::try_from(snap.config.server.read_buffer.0).unwrap_or(usize::MAX);
    for addr in &snap.config.server.listen {
        proxy.add_listener(
            ListenerConfig::tcp(addr.as_str())
                .l4_buffer(L4BufferSettings::default().read(read_buffer)),
        );
    }
    if let Some(tls) = &snap.config.server.tls {
        // Certificates come from the resolver (SNI, reloadable), not from files given here.
        let mut settings = TlsSettings::intermediate("", "")
            .map_err(|e| format!("server.tls: cannot set up TLS: {e}"))?;
        settings.set_cert_resolver(runtime.certs.clone());
        // ALPN: h2 preferred, http/1.1 accepted
        settings.enable_h2();
        settings.set_offload_threadpool_from_server_conf(&server.configuration);
        proxy.add_tls_with_settings(&tls.listen, None, settings);
        // `min_version: "1.3"` is enforced on the ClientHello (it only runs on TLS endpoints)
        proxy
            .endpoints()
            .set_pre_tls_callback(Arc::new(crate::tls::MinVersionGate {
                resolver: runtime.certs.clone(),
            }));
    }
    // a proxy service that dies (a listener it cannot bind) ends the process
    server
        .add_service(Guarded { inner: proxy })
        .add_dependency(&bootstrap);

    if let Some(admin) = &snap.config.server.admin {
        let mut svc = Service::new(
            "portcullis admin".to_string(),
            AdminApp {
                runtime: runtime.clone(),
            },
        );
        svc.add_tcp(&admin.listen);
        server
            .add_service(Guarded { inner: svc })
            .add_dependency(&bootstrap);
    }

    crate::observe::access_log::watch_phases(server.watch_execution_phase());
    crate::observe::access_log::prepare(&snap.config.access_log);
    server.add_service(background_service(
        "portcullis supervisor",
        Supervisor {
            runtime: runtime.clone(),
            phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
        },
    ));
    drop(snap);
    log::info!(
        "portcullis starting: config {} (generation {}); SIGTERM drains for up to {}s",
        runtime.config_path.display(),
        runtime.generation(),
        server.configuration.grace_period_seconds.unwrap_or(0)
    );
    let signals = crate::lifecycle::Signals::new(server.watch_execution_phase());
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    Ok(())
}
