//! Test harness: runs the real `portcullis` binary on ephemeral ports against real
//! upstream HTTP servers (hyper) started by the test.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A free TCP port on 127.0.0.1, bound and released. It is drawn at random from below the
/// kernel's ephemeral range (32768-60999 here), so no outgoing connection of a parallel test
/// and no `bind(0)` can be handed the same port before the test's own process binds it.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(20_000..32_000);
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-32000")
}

/// A port on 127.0.0.1 that refuses connections and stays reserved while this lives: the
/// socket is bound but never listens, so connects get a RST and no parallel test (or
/// `free_port`) can take the port. Use it for "dead" backends and unreachable IdPs.
pub struct DeadPort {
    pub port: u16,
    _sock: tokio::net::TcpSocket,
}

pub fn dead_port() -> DeadPort {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let port = sock.local_addr().expect("local addr").port();
    DeadPort { port, _sock: sock }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

// ---------------------------------------------------------------- upstream servers

#[derive(Clone, Debug)]
pub enum Mode {
    /// Echo the request as JSON with status 200.
    Echo,
    /// Answer with this status (JSON echo body).
    Status(u16),
    /// Wait this long, then echo.
    Delay(Duration),
}

pub type Handler = Arc<dyn Fn(&Request<Incoming>) -> Option<Response<Full<Bytes>>> + Send + Sync>;

struct UpstreamState {
    name: String,
    hits: AtomicUsize,
    mode: Mutex<Mode>,
    /// Requests seen per path.
    paths: Mutex<HashMap<String, usize>>,
    last_headers: Mutex<Option<http::HeaderMap>>,
    /// The last request body an echoing answer read.
    last_body: Mutex<Option<Bytes>>,
    handler: Mutex<Option<Handler>>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    stop: Option<watch::Sender<bool>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        let state = Arc::new(UpstreamState {
            name: name.to_string(),
            hits: AtomicUsize::new(0),
            mode: Mutex::new(Mode::Echo),
            paths: Mutex::new(HashMap::new()),
            last_headers: Mutex::new(None),
            last_body: Mutex::new(None),
            handler: Mutex::new(None),
        });
        let mut up = Upstream {
            addr,
            state,
            stop: None,
        };
        up.listen(addr).await;
        up
    }

    async fn listen(&mut self, addr: SocketAddr) {
        let listener = {
            let mut tries = 0;
            loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("bind {addr}: {e}"),
                }
            }
        };
        self.addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        self.stop = Some(tx);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut rx_accept = rx.clone();
            loop {
                tokio::select! {
                    _ = rx_accept.changed() => break,
                    acc = listener.accept() => {
                        let Ok((stream, _)) = acc else { continue };
                        let state = state.clone();
                        let mut rx_conn = rx.clone();
                        tokio::spawn(async move {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let svc = hyper::service::service_fn(move |req| {
                                let state = state.clone();
                                async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
                            });
                            let conn = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .with_upgrades();
                            tokio::select! {
                                _ = conn => {}
                                _ = rx_conn.changed() => {}
                            }
                        });
                    }
                }
            }
        });
    }

    /// Stop listening and drop every open connection: the backend is dead.
    pub fn kill(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
    }

    /// Listen again on the same address.
    pub async fn revive(&mut self) {
        let addr = self.addr;
        self.listen(addr).await;
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn hits_for(&self, path: &str) -> usize {
        self.state
            .paths
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn reset_hits(&self) {
        self.state.hits.store(0, Ordering::SeqCst);
        self.state.paths.lock().unwrap().clear();
    }

    pub fn set_mode(&self, m: Mode) {
        *self.state.mode.lock().unwrap() = m;
    }

    /// Answer with a custom response when `f` returns Some.
    pub fn set_handler(&self, f: Handler) {
        *self.state.handler.lock().unwrap() = Some(f);
    }

    pub fn last_headers(&self) -> Option<http::HeaderMap> {
        self.state.last_headers.lock().unwrap().clone()
    }

    /// The body of the last request answered by the echo (not by a custom handler).
    pub fn last_body(&self) -> Option<Bytes> {
        self.state.last_body.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn handle(state: Arc<UpstreamState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        return match state.mode.lock().unwrap().clone() {
            Mode::Status(s) if s >= 500 => resp(s, b"unhealthy".to_vec(), "text/plain"),
            _ => resp(200, b"ok".to_vec(), "text/plain"),
        };
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    *state.paths.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
    *state.last_headers.lock().unwrap() = Some(req.headers().clone());
    let custom = state.handler.lock().unwrap().clone();
    if let Some(h) = custom {
        if let Some(r) = h(&req) {
            return r;
        }
    }
    let mode = state.mode.lock().unwrap().clone();
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::json!(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    *state.last_body.lock().unwrap() = Some(body.clone());
    let body = body.len();
    let echo = serde_json::json!({
        "upstream": state.name, "method": method, "path": path, "query": query,
        "headers": headers, "body_bytes": body,
    });
    let bytes = serde_json::to_vec(&echo).unwrap();
    match mode {
        Mode::Echo => resp(200, bytes, "application/json"),
        Mode::Status(s) => resp(s, bytes, "application/json"),
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
            resp(200, bytes, "application/json")
        }
    }
}

pub fn resp(status: u16, body: Vec<u8>, ctype: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

// ---------------------------------------------------------------- the gateway

/// How [`Gateway::start_opts`] runs the binary.
#[derive(Clone)]
pub struct StartOptions {
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Pass a `--server-conf` (1 s grace periods, pid file and upgrade socket in the
    /// temporary directory); false runs the binary with its built-in defaults.
    pub server_conf: bool,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// The `{port}` to use instead of a free one.
    pub port: Option<u16>,
    /// Another binary than `portcullis` (one with plugins of its own, say).
    pub bin: Option<&'static str>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            env: Vec::new(),
            server_conf: true,
            args: Vec::new(),
            port: None,
            bin: None,
        }
    }
}

pub struct Gateway {
    pub child: Option<Child>,
    /// The binary it runs.
    pub bin: &'static str,
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// The config puts the admin listener on `{admin_port}`: readiness waits for it too.
    pub admin_listens: bool,
}

pub const ADMIN_TOKEN: &str = "test-admin-token";
/// sha256("test-admin-token")
pub fn admin_token_sha256() -> String {
    sha(ADMIN_TOKEN)
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// README's plugin example: Portcullis with a plugin of its own (`src/bin/plugin-example.rs`).
pub fn example_bin() -> &'static str {
    env!("CARGO_BIN_EXE_plugin-example")
}

/// `portcullis -t -c <yaml>`: (exit success, stdout + stderr).
pub fn validate(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(bin())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `portcullis -t` must refuse `yaml`, and its output must name every one of `want`.
pub fn assert_refused(yaml: &str, want: &[&str]) {
    let (ok, out) = validate(yaml);
    assert!(!ok, "expected failure for:\n{yaml}\noutput:\n{out}");
    for w in want {
        assert!(out.contains(w), "missing `{w}` in:\n{out}\nfor:\n{yaml}");
    }
}

impl Gateway {
    /// Start the gateway with `yaml`, in which `{port}` and `{admin_port}` are replaced by
    /// free ports and `{admin_sha}` by the digest of [`ADMIN_TOKEN`].
    pub async fn start(yaml: &str) -> Gateway {
        Self::start_with(yaml, &[]).await
    }

    pub async fn start_with(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let opts = StartOptions {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..StartOptions::default()
        };
        Self::start_opts(yaml, opts).await
    }

    /// Start with `opts` and wait until the proxy listener accepts. A process that could not
    /// listen because a port it was given was taken meanwhile is started again on new ports.
    pub async fn start_opts(yaml: &str, opts: StartOptions) -> Gateway {
        for _ in 0..3 {
            let mut gw = Self::spawn(yaml, opts.clone());
            match gw.wait_listening().await {
                Ok(()) => return gw,
                Err(log) if opts.port.is_none() && log.contains("ddress already in use") => {
                    continue
                }
                Err(log) => panic!("portcullis exited:\n{log}"),
            }
        }
        panic!("portcullis found its ports taken three times")
    }

    /// Start the process without waiting for it to listen.
    pub fn spawn(yaml: &str, opts: StartOptions) -> Gateway {
        let port = opts.port.unwrap_or_else(free_port);
        let admin_port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let admin_listens = yaml.contains("127.0.0.1:{admin_port}");
        let yaml = yaml
            .replace("{port}", &port.to_string())
            .replace("{admin_port}", &admin_port.to_string())
            .replace("{admin_sha}", &admin_token_sha256())
            .replace("{dir}", &dir.path().display().to_string());
        let config_path = dir.path().join("portcullis.yaml");
        std::fs::write(&config_path, &yaml).unwrap();
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let bin = opts.bin.unwrap_or_else(bin);
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&config_path);
        if opts.server_conf {
            let server_conf = dir.path().join("pingora.yaml");
            let mut f = std::fs::File::create(&server_conf).unwrap();
            writeln!(
                f,
                "---\nversion: 1\nthreads: 2\npid_file: {d}/portcullis.pid\nupgrade_sock: {d}/upgrade.sock\ngrace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1",
                d = dir.path().display()
            )
            .unwrap();
            cmd.arg("--server-conf").arg(&server_conf);
        }
        cmd.args(&opts.args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .env("RUST_LOG", "info");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn portcullis");
        Gateway {
            child: Some(child),
            bin,
            port,
            admin_port,
            dir,
            config_path,
            log_path,
            admin_listens,
        }
    }

    /// Wait up to `timeout` for the process to exit; its status, or None if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&mut self) {
        if let Err(log) = self.wait_listening().await {
            panic!("portcullis exited:\n{log}");
        }
    }

    /// Wait until the listeners accept; the log if the process exited first.
    async fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("exit status {status}\n{}", self.log()));
            }
            // the proxy listener and, when configured, the admin listener (which may come
            // up later: a test asking /healthz right after start would get nothing)
            let admin = self.admin_listens;
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
                && (!admin
                    || tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port))
                        .await
                        .is_ok())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!("portcullis did not start listening:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop the gateway and start it again on the same config, ports, server conf and log
    /// (appended to), with `args` added to the command line (`--watch`, say). Edit
    /// `dir/pingora.yaml` first to change the server conf.
    pub async fn restart_with(&mut self, args: &[&str]) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(self.bin)
            .args(args)
            .arg("-c")
            .arg(&self.config_path)
            .arg("--server-conf")
            .arg(self.dir.path().join("pingora.yaml"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .env("RUST_LOG", "info")
            .spawn()
            .expect("spawn portcullis");
        self.child = Some(child);
        self.wait_ready().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Replace the config file (same placeholder rules as `start`).
    pub fn write_config(&self, yaml: &str) {
        let yaml = yaml
            .replace("{port}", &self.port.to_string())
            .replace("{admin_port}", &self.admin_port.to_string())
            .replace("{admin_sha}", &admin_token_sha256())
            .replace("{dir}", &self.dir.path().display().to_string());
        std::fs::write(&self.config_path, yaml).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut rb = client()
            .request(method, self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.expect("admin request");
        let status = r.status().as_u16();
        let v = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, v)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}", self.log());
        }
    }
}

/// Lower-case hex SHA-256 of `s` (API key digests in configs).
pub fn sha(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A whole response: status, headers, body.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn h(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn x_cache(&self) -> &str {
        self.h("x-cache").unwrap_or("")
    }
    pub fn age(&self) -> Option<u64> {
        self.h("age").and_then(|v| v.parse().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `method` `url` with extra request headers, read whole.
pub async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut rb = c.request(method, url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

/// GET with extra request headers; (status, headers, body as JSON or Null).
pub async fn get_with(
    c: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = send(c, reqwest::Method::GET, url, headers).await;
    let v = r.json();
    (r.status, r.headers, v)
}

/// A real `redis-server` on `port` (no persistence), killed on drop.
pub struct Redis {
    pub child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start(port: u16) -> Redis {
        Redis::start_with(port, &["--port", &port.to_string()])
    }

    /// `redis-server` with these listener arguments (e.g. a TLS port); `port` is where it
    /// is awaited.
    pub fn start_with(port: u16, listen: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make deps)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET and return (status, headers, body as JSON or Null).
pub async fn get_json(
    c: &reqwest::Client,
    url: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    get_with(c, url, &[]).await
}

/// `/healthz`'s "pid" on the admin listener: the process actually serving.
pub async fn healthz_pid(gw: &Gateway) -> Option<u64> {
    let r = client().get(gw.admin_url("/healthz")).send().await.ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    v["pid"].as_u64()
}

/// Send raw bytes on a new connection and return the raw response text.
pub async fn raw(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// How far past a TTL (cache ttl, breaker open_for, JWKS cooldown) a test waits before it
/// expects the TTL to have lapsed: five times the ~200 ms of scheduling jitter seen on the
/// shared 2-core test machine, where 100-300 ms margins were close to the noise.
pub const TTL_MARGIN: Duration = Duration::from_secs(1);

/// Wait out a TTL of `ttl` with [`TTL_MARGIN`] to spare. For TTLs only: an event (a reload,
/// a process exit, a log line) is awaited with [`eventually`], never with a sleep.
pub async fn wait_out(ttl: Duration) {
    tokio::time::sleep(ttl + TTL_MARGIN).await;
}

/// Wait until nothing accepts connections on `addr` any more (a killed [`Upstream`]).
pub async fn wait_refused(addr: SocketAddr) {
    let gone = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(gone, "{addr} still accepts connections");
}

/// Closed-loop load: `clients` tasks, task i GETting `urls[i % urls.len()]` back to back on
/// its own keep-alive client until stopped. A request is a failure unless it answers 200.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    slowest_ms: Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a [`Load`] did, once stopped.
#[derive(Debug)]
pub struct LoadStats {
    pub done: usize,
    pub failures: usize,
    pub slowest_ms: u64,
}

impl Load {
    pub fn start(urls: &[String], clients: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let slowest_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|i| {
                let url = urls[i % urls.len()].clone();
                let (stop, done, failures, slowest) = (
                    stop.clone(),
                    done.clone(),
                    failures.clone(),
                    slowest_ms.clone(),
                );
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        match c.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {}
                            Ok(r) => {
                                eprintln!("load: {url}: status {}", r.status());
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("load: {url}: {e:?}");
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        slowest.fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            failures,
            slowest_ms,
            tasks,
        }
    }

    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Wait until `n` more requests have completed (counted, not timed).
    pub async fn progress(&self, n: usize) {
        let from = self.done();
        assert!(
            eventually(Duration::from_secs(30), || async {
                self.done() >= from + n
            })
            .await,
            "the load made no progress ({} requests)",
            self.done()
        );
    }

    pub async fn stop(self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        LoadStats {
            done: self.done.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            slowest_ms: self.slowest_ms.load(Ordering::Relaxed),
        }
    }
}

/// Poll `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The admin listener's `/metrics` text.
pub async fn metrics(gw: &Gateway) -> String {
    client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first series line that starts with `prefix` (name + labels).
pub fn series(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------- daemons

/// A gateway daemonised with `-d`, ended with SIGINT when dropped.
pub struct Daemon(pub Option<i32>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// Run `portcullis -d -c portcullis.yaml --server-conf pingora.yaml` in `dir` (relative
/// paths, as the README's examples are), with a one-thread server conf whose pid file,
/// upgrade socket and error log are in `dir` too. Returns once the launcher has exited.
pub fn launch_daemon(dir: &std::path::Path) {
    std::fs::write(
        dir.join("pingora.yaml"),
        "---\nversion: 1\nthreads: 1\npid_file: portcullis.pid\nupgrade_sock: upgrade.sock\nerror_log: error.log\n",
    )
    .unwrap();
    let status = Command::new(bin())
        .current_dir(dir)
        .args([
            "-d",
            "-c",
            "portcullis.yaml",
            "--server-conf",
            "pingora.yaml",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// The pid the daemon launched in `dir` wrote, once it has.
pub fn daemon_pid(dir: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("portcullis.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
}
