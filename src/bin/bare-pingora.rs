//! The benchmark's floor: a bare Pingora passthrough to one fixed upstream, no gateway
//! features. `bare-pingora LISTEN UPSTREAM [SERVER_CONF]`.

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options, read at start-up: keep freed blocks up to 128 KiB in the thread cache.
/// Pingora boxes each proxied request's state machine in one allocation larger than the
/// default 32 KiB cache limit, which sent every request through jemalloc's slow path
/// (extent allocation and release); measured with perf in load-tests (README, Performance).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 18] = b"tcache_max:131072\0";

struct Passthrough {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: bare-pingora LISTEN UPSTREAM [SERVER_CONF]");
        std::process::exit(2);
    }
    let upstream = match args[1].parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("UPSTREAM must be ip:port");
            std::process::exit(2);
        }
    };
    let conf = match args.get(2) {
        Some(p) => ServerConf::load_from_yaml(p).unwrap_or_else(|e| {
            eprintln!("{p}: {e}");
            std::process::exit(2)
        }),
        None => ServerConf {
            threads: 1,
            ..ServerConf::default()
        },
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut svc =
        pingora_proxy::http_proxy_service(&server.configuration, Passthrough { upstream });
    svc.add_tcp(&args[0]);
    server.add_service(svc);
    server.run_forever();
}
