//! The command line: `portcullis -c FILE` serves, `-t` validates, `keygen`, `register`.
//! [`run_with`] is the whole program given the plugins it knows, so that a build with
//! plugins of its own is a `main` of three lines (README, "Extending Portcullis").

use crate::runtime::Runtime;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Portcullis: an edge proxy and API gateway on Pingora.
#[derive(Parser, Debug)]
#[command(name = "portcullis", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The gateway config (routes, upstreams, auth, limits).
    #[arg(short = 'c', long = "config", default_value = "conf/portcullis.yaml")]
    config: PathBuf,
    /// Validate the config and exit: 0 if valid, 1 with every error otherwise.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Pingora's server conf (threads, pid_file, upgrade_sock, grace periods...).
    #[arg(long = "server-conf")]
    server_conf: Option<String>,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take over the listening sockets of a running instance (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    /// Reload the config whenever the file changes (checked every second).
    #[arg(long = "watch")]
    watch: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a new random API key and the config line with its SHA-256.
    Keygen {
        /// The key's id (used in logs, metrics and rate limits).
        #[arg(long)]
        id: String,
    },
    /// Put a backend in an upstream's shared registry (a fleet with `cluster`), talking to
    /// Redis directly: no admin token needed. Run it again before the TTL lapses.
    Register(RegisterArgs),
    /// Take a backend out of an upstream's shared registry.
    Deregister(RegisterArgs),
}

#[derive(clap::Args, Debug)]
struct RegisterArgs {
    /// The upstream's name in the gateways' config.
    #[arg(long)]
    upstream: String,
    /// `ip:port` or `host:port` (every address the name resolves to).
    #[arg(long)]
    addr: String,
    /// Leaves rotation this long after the last registration (`0s`: never).
    #[arg(long, default_value = "30s")]
    ttl: String,
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// The Redis (repeat for the nodes of a Redis Cluster); default: `cluster.redis` of
    /// the config file.
    #[arg(long)]
    redis: Vec<String>,
    /// The key prefix (default: `cluster.key_prefix`, else `portcullis`).
    #[arg(long)]
    key_prefix: Option<String>,
    /// The gateway config to read `cluster` from.
    #[arg(short = 'c', long = "config", default_value = "conf/portcullis.yaml")]
    config: PathBuf,
}

fn register(a: &RegisterArgs, remove: bool) -> ExitCode {
    use crate::cluster::cli;
    let go = || -> Result<Vec<String>, String> {
        let ttl =
            crate::config::units::parse_duration(&a.ttl).map_err(|e| format!("--ttl: {e}"))?;
        if !(1..=crate::upstream::MAX_WEIGHT).contains(&a.weight) {
            return Err(format!(
                "--weight must be 1..{}",
                crate::upstream::MAX_WEIGHT
            ));
        }
        let target = cli::target(&a.config, &a.redis, a.key_prefix.as_deref())?;
        let addrs = cli::resolve(&a.addr)?;
        cli::run(&target, &a.upstream, &addrs, a.weight, ttl, remove)
    };
    match go() {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Run Portcullis with the command line of this process, its routes' `plugins` taken from
/// `registry` ([`crate::plugin::builtin`], plus any of the program's own).
pub fn run_with(registry: crate::plugin::Registry) -> ExitCode {
    crate::observe::logs::init();
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Keygen { id }) => {
            let (key, line) = crate::keygen(id);
            println!("key:  {key}");
            println!("yaml: {line}");
            return ExitCode::SUCCESS;
        }
        Some(Command::Register(a)) => return register(a, false),
        Some(Command::Deregister(a)) => return register(a, true),
        None => {}
    }
    // absolute before anything else: a daemon (-d) runs in another working directory, and
    // every reload re-reads this path
    let config = std::path::absolute(&cli.config).unwrap_or_else(|_| cli.config.clone());
    let runtime = match Runtime::load_with(config, registry) {
        Ok(rt) => rt,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{}: {} error(s), not started",
                cli.config.display(),
                errors.len()
            );
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        let snap = runtime.snapshot();
        println!(
            "{}: ok ({} routes, {} upstreams)",
            cli.config.display(),
            snap.routes.len(),
            snap.upstreams.len()
        );
        return ExitCode::SUCCESS;
    }
    runtime
        .watch
        .store(cli.watch, std::sync::atomic::Ordering::Relaxed);
    let opts = crate::server::Options {
        server_conf: cli.server_conf.map(|p| {
            std::path::absolute(&p)
                .map(|a| a.display().to_string())
                .unwrap_or(p)
        }),
        daemon: cli.daemon,
        upgrade: cli.upgrade,
    };
    match crate::server::run(runtime, opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
