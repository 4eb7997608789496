//! The demo upstream `make run` starts beside the gateway: each listener answers every
//! request with a JSON echo of what it received (method, path, query, headers) and its
//! own name, so the effect of routing, rewrites and forwarded headers is visible.
//! `GET /health` answers 200.
//!
//! Usage: demo-upstream NAME=ADDR [NAME=ADDR ...]
//!        demo-upstream users-1=127.0.0.1:3001 users-2=127.0.0.1:3002

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use serde_json::json;

struct Echo {
    name: String,
}

#[async_trait]
impl ServeHttp for Echo {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.to_string();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
            .collect();
        let mut body_len = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body_len += chunk.len();
        }
        let body = if path == "/health" {
            json!({ "status": "ok", "upstream": self.name })
        } else {
            json!({
                "upstream": self.name,
                "method": method,
                "path": path,
                "query": query,
                "headers": headers,
                "body_bytes": body_len,
            })
        };
        let bytes = serde_json::to_vec_pretty(&body).unwrap_or_default();
        let mut r = Response::new(bytes);
        *r.status_mut() = StatusCode::OK;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let specs: Vec<String> = std::env::args().skip(1).collect();
    if specs.is_empty() || specs.iter().any(|s| !s.contains('=')) {
        eprintln!("usage: demo-upstream NAME=ADDR [NAME=ADDR ...]");
        std::process::exit(2);
    }
    // SIGTERM (and SIGINT) end the process at once: Pingora's default grace period would
    // keep a stopped demo upstream around for five minutes.
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    for spec in specs {
        let (name, addr) = spec.split_once('=').unwrap_or(("demo", "127.0.0.1:3001"));
        let mut svc = Service::new(
            format!("demo {name}"),
            Echo {
                name: name.to_string(),
            },
        );
        svc.add_tcp(addr);
        server.add_service(svc);
        eprintln!("demo-upstream `{name}` listening on {addr}");
    }
    server.run_forever();
}
