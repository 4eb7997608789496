//! Process lifecycle through the real binary: how long SIGTERM takes with and without
//! requests in flight, a second signal, busy listen ports, the demo upstream's SIGTERM.

mod common;
use common::*;
use std::time::{Duration, Instant};

/// The built-in drain timeout (`grace_period_seconds` without `--server-conf`) and the
/// runtime shutdown bound after it (src/lifecycle.rs).
const DEFAULT_GRACE: Duration = Duration::from_secs(3);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

fn config(up: &Upstream) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}" }}
upstreams:
  a: {{ backends: [{{ addr: "{}" }}], timeouts: {{ read: 60s, total: 60s }} }}
routes:
  - {{ name: all, match: {{ path: "/**" }}, upstream: a }}
"#,
        up.addr
    )
}

/// Started the way the README starts it: no `--server-conf`.
async fn start_default(up: &Upstream) -> Gateway {
    Gateway::start_opts(
        &config(up),
        StartOptions {
            server_conf: false,
            ..StartOptions::default()
        },
    )
    .await
}

/// Send a GET in the background; the task's result is the status (0 on a socket error).
fn background_get(gw: &Gateway, path: &str) -> tokio::task::JoinHandle<u16> {
    let url = gw.url(path);
    tokio::spawn(async move {
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        match c.get(url).send().await {
            Ok(r) => {
                let s = r.status().as_u16();
                // a cut response body counts as a failure too
                if r.bytes().await.is_ok() {
                    s
                } else {
                    0
                }
            }
            Err(_) => 0,
        }
    })
}

async fn wait_for_hit(up: &Upstream) {
    assert!(
        eventually(Duration::from_secs(10), || async { up.hits() >= 1 }).await,
        "the request never reached the upstream"
    );
}

#[tokio::test]
async fn sigterm_without_traffic_exits_at_once_by_default() {
    let up = Upstream::start("a").await;
    let mut gw = start_default(&up).await;
    // one request, so there is an idle keep-alive connection to the client and upstream
    let c = client();
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    let t0 = Instant::now();
    gw.signal("TERM");
    let status = gw.wait_exit(DEFAULT_GRACE + Duration::from_secs(5)).await;
    let took = t0.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running after SIGTERM:\n{}", gw.log()));
    assert!(status.success(), "exit status {status}:\n{}", gw.log());
    // nothing to drain: no waiting for the grace period
    assert!(
        took < DEFAULT_GRACE,
        "SIGTERM took {took:?} with nothing in flight:\n{}",
        gw.log()
    );
    assert!(
        gw.log().contains("no request in flight, exiting"),
        "{}",
        gw.log()
    );
}

#[tokio::test]
async fn sigterm_waits_for_a_request_in_flight_then_exits() {
    let up = Upstream::start("a").await;
    up.set_mode(Mode::Delay(Duration::from_millis(1500)));
    let mut gw = start_default(&up).await;
    let req = background_get(&gw, "/slow");
    wait_for_hit(&up).await;
    let t0 = Instant::now();
    gw.signal("TERM");
    let status = req.await.unwrap();
    assert_eq!(status, 200, "the request in flight was cut:\n{}", gw.log());
    let exited = gw.wait_exit(DEFAULT_GRACE + Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert!(
        exited.is_some_and(|s| s.success()),
        "{exited:?}:\n{}",
        gw.log()
    );
    // it left once the request was done, not at the end of the grace period
    assert!(took < DEFAULT_GRACE, "took {took:?}:\n{}", gw.log());
    let log = gw.log();
    assert!(log.contains("waiting for 1 request(s) in flight"), "{log}");
    // the drained request's access-log line was written before the exit
    assert!(
        log.lines()
            .any(|l| l.contains("\"path\":\"/slow\"") && l.contains("\"status\":200")),
        "no access-log line for the drained request:\n{log}"
    );
}

#[tokio::test]
async fn drain_is_bounded_by_the_grace_period() {
    let up = Upstream::start("a").await;
    up.set_mode(Mode::Delay(Duration::from_secs(60)));
    let mut gw = start_default(&up).await;
    let req = background_get(&gw, "/stuck");
    wait_for_hit(&up).await;
    let t0 = Instant::now();
    gw.signal("TERM");
    let exited = gw
        .wait_exit(DEFAULT_GRACE + DEFAULT_SHUTDOWN_TIMEOUT + Duration::from_secs(3))
        .await;
    let took = t0.elapsed();
    assert!(
        exited.is_some(),
        "still running after {took:?}:\n{}",
        gw.log()
    );
    assert!(
        took >= DEFAULT_GRACE - Duration::from_millis(200),
        "{took:?}"
    );
    // the request that outlived the drain is cut
    assert_eq!(req.await.unwrap(), 0);
}

async fn second_signal_exits_at_once(second: &str) {
    let up = Upstream::start("a").await;
    up.set_mode(Mode::Delay(Duration::from_secs(60)));
    let mut gw = start_default(&up).await;
    let _req = background_get(&gw, "/stuck");
    wait_for_hit(&up).await;
    let t0 = Instant::now();
    gw.signal("TERM");
    assert!(
        eventually(Duration::from_secs(2), || async {
            gw.log().contains("waiting for 1 request(s) in flight")
        })
        .await,
        "{}",
        gw.log()
    );
    let t1 = Instant::now();
    gw.signal(second);
    let exited = gw.wait_exit(Duration::from_secs(1)).await;
    assert!(
        exited.is_some(),
        "SIG{second} during the drain did not end the process at once:\n{}",
        gw.log()
    );
    assert!(
        t0.elapsed() < DEFAULT_GRACE,
        "exit came from the grace period, not from the second signal ({:?} after it)",
        t1.elapsed()
    );
    assert!(
        gw.log().contains(&format!(
            "SIG{second} received while shutting down: exiting now"
        )),
        "{}",
        gw.log()
    );
}

#[tokio::test]
async fn second_sigterm_during_the_drain_exits_at_once() {
    second_signal_exits_at_once("TERM").await;
}

#[tokio::test]
async fn sigint_during_the_drain_exits_at_once() {
    second_signal_exits_at_once("INT").await;
}

/// Poll `f` (synchronous) until it holds or `timeout` passes.
async fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// `make run` (scripts/run-demo.sh): a SIGTERM to the script stops the gateway and the
/// demo upstream, instead of leaving them running.
#[tokio::test]
async fn run_demo_script_stops_everything_on_sigterm() {
    let (port, admin_port, up_port) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("demo.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
server:
  listen: ["127.0.0.1:{port}"]
  admin: {{ listen: "127.0.0.1:{admin_port}" }}
upstreams:
  a: {{ backends: [{{ addr: "127.0.0.1:{up_port}" }}] }}
routes:
  - {{ name: all, match: {{ path: "/**" }}, upstream: a }}
"#
        ),
    )
    .unwrap();
    let bin_dir = std::path::Path::new(bin()).parent().unwrap().to_path_buf();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/run-demo.sh");
    let log_path = dir.path().join("demo.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new("bash")
        .arg(script)
        .arg(&bin_dir)
        .arg(&cfg)
        .env("DEMO_UPSTREAMS", format!("a=127.0.0.1:{up_port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let up = eventually(Duration::from_secs(20), || async { accepts(port) }).await;
    assert!(up, "the demo did not start:\n{}", read_log());
    let r = client()
        .get(format!("http://127.0.0.1:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", read_log());
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let stopped = poll_until(Duration::from_secs(8), || {
        matches!(child.try_wait(), Ok(Some(_))) && !accepts(port) && !accepts(up_port)
    })
    .await;
    let _ = child.kill();
    assert!(
        stopped,
        "after SIGTERM to the script: script exited {:?}, gateway listening {}, upstream listening {}:\n{}",
        child.try_wait().ok().flatten(),
        accepts(port),
        accepts(up_port),
        read_log()
    );
}

/// demo-upstream (what `make run` starts) exits promptly on SIGTERM (it used to take
/// Pingora's 300 s grace period).
#[tokio::test]
async fn demo_upstream_exits_promptly_on_sigterm() {
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_demo-upstream"))
        .arg(format!("demo=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || async { accepts(port) }).await);
    let r = client()
        .get(format!("http://127.0.0.1:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t0 = Instant::now();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let exited = poll_until(Duration::from_secs(3), || {
        matches!(child.try_wait(), Ok(Some(_)))
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        exited,
        "demo-upstream still running {:?} after SIGTERM",
        t0.elapsed()
    );
}

/// A listen address already in use: exit non-zero within seconds, with one line naming the
/// address and why (not 30 retries, a panic and a process left without listeners).
#[tokio::test]
async fn busy_listen_port_exits_non_zero_with_one_line() {
    let up = Upstream::start("a").await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let mut gw = Gateway::spawn(
        &config(&up),
        StartOptions {
            port: Some(port),
            ..StartOptions::default()
        },
    );
    let t0 = Instant::now();
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    let log = gw.log();
    let status = status.unwrap_or_else(|| panic!("still running after {:?}:\n{log}", t0.elapsed()));
    assert!(!status.success(), "exit status {status}:\n{log}");
    let addr = format!("127.0.0.1:{port}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&addr)).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("cannot listen on") && lines[0].contains("address already in use"),
        "{log}"
    );
    assert!(
        !log.contains("panicked") && !log.contains("will try again"),
        "{log}"
    );
    drop(busy);
}

/// The same for the admin listener.
#[tokio::test]
async fn busy_admin_port_exits_non_zero() {
    let up = Upstream::start("a").await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let yaml = config(&up).replace("{admin_port}", &port.to_string());
    let mut gw = Gateway::spawn(&yaml, StartOptions::default());
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    let log = gw.log();
    assert!(status.is_some_and(|s| !s.success()), "{status:?}:\n{log}");
    assert!(
        log.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (server.admin.listen): address already in use"
        )),
        "{log}"
    );
    drop(busy);
}

/// conf/pingora.yaml's drain bounds fit in the systemd unit's TimeoutStopSec.
#[test]
fn shipped_server_conf_and_unit_agree() {
    let root = env!("CARGO_MANIFEST_DIR");
    let conf = std::fs::read_to_string(format!("{root}/conf/pingora.yaml")).unwrap();
    let unit = std::fs::read_to_string(format!("{root}/conf/portcullis.service")).unwrap();
    let key = |text: &str, k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().trim_end_matches('s').parse().unwrap())
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let grace = key(&conf, "grace_period_seconds:");
    let timeout = key(&conf, "graceful_shutdown_timeout_seconds:");
    let stop = key(&unit, "TimeoutStopSec=");
    assert!(
        grace + timeout < stop,
        "{grace} + {timeout} s vs TimeoutStopSec={stop}s"
    );
    assert!(
        grace <= 10,
        "a stopped gateway should not linger: grace {grace}s"
    );
}

// ---------------------------------------------------------------- quiet logs (issue 22 item 7)

/// The line of `log` containing `needle`.
fn line_with<'a>(log: &'a str, needle: &str) -> Option<&'a str> {
    log.lines().find(|l| l.contains(needle))
}

/// Every start with `--server-conf` warned "Ignoring command line argument"; a cached
/// response warned about pingora-cache's compression dictionary. Neither at the default level.
#[tokio::test]
async fn start_and_cache_fill_log_no_warnings() {
    let up = Upstream::start("a").await;
    let yaml = config(&up).replace(
        r#"  - { name: all, match: { path: "/**" }, upstream: a }"#,
        r#"  - { name: cached, match: { path: "/c/**" }, upstream: a, cache: { default_ttl: 30s } }
  - { name: all, match: { path: "/**" }, upstream: a }"#,
    );
    let gw = Gateway::start_opts(
        &yaml,
        StartOptions {
            env: vec![("RUST_LOG".into(), "info,pingora_cache=debug".into())],
            ..StartOptions::default()
        },
    )
    .await;
    let c = client();
    for _ in 0..2 {
        assert_eq!(c.get(gw.url("/c/x")).send().await.unwrap().status(), 200);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.log().contains("no header compression dictionary")
        })
        .await,
        "the cache never logged its dictionary message:\n{}",
        gw.log()
    );
    let log = gw.log();
    let dict = line_with(&log, "no header compression dictionary").unwrap();
    assert!(dict.contains("DEBUG"), "{dict}");
    assert!(!log.contains("Ignoring command line argument"), "{log}");
    assert!(!log.contains(" WARN ") && !log.contains("ERROR"), "{log}");
}

/// A client's failed TLS handshake is the client's problem: DEBUG, not ERROR.
#[tokio::test]
async fn client_tls_handshake_failure_is_not_an_error() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("a").await;
    let certs = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (certs.path().join("c.pem"), certs.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let tls_port = free_port();
    let yaml = config(&up).replace(
        "  admin:",
        &format!(
            "  tls: {{ listen: \"127.0.0.1:{tls_port}\", certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}\n  admin:",
            cert.display(),
            key.display()
        ),
    );
    let gw = Gateway::start_opts(
        &yaml,
        StartOptions {
            env: vec![(
                "RUST_LOG".into(),
                "info,pingora_core::services::listening=debug".into(),
            )],
            ..StartOptions::default()
        },
    )
    .await;
    // plain HTTP to the TLS port: the handshake fails
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.log().contains("Downstream handshake error")
        })
        .await,
        "no handshake failure logged:\n{}",
        gw.log()
    );
    let log = gw.log();
    let line = line_with(&log, "Downstream handshake error").unwrap();
    assert!(line.contains("DEBUG"), "{line}");
    assert!(!log.contains("ERROR"), "{log}");
}

/// During `-u`, the new process waits for the old one's sockets, polling every second: the
/// normal course of an upgrade, not an ERROR.
#[tokio::test]
async fn upgrade_wait_is_not_an_error() {
    let up = Upstream::start("a").await;
    let mut gw = Gateway::start(&config(&up)).await;
    let new_log = gw.dir.path().join("new.log");
    let log = std::fs::File::create(&new_log).unwrap();
    let mut new = std::process::Command::new(bin())
        .args(["-u", "-c"])
        .arg(&gw.config_path)
        .arg("--server-conf")
        .arg(gw.dir.path().join("pingora.yaml"))
        .env("RUST_LOG", "info,pingora_core::server::transfer_fd=debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&new_log).unwrap_or_default();
    let waited = eventually(Duration::from_secs(10), || async {
        read().contains("No incoming socket transfer")
    })
    .await;
    if waited {
        gw.signal("QUIT");
    }
    // the old process hands over and exits; the new one serves
    let took_over = waited && gw.wait_exit(Duration::from_secs(15)).await.is_some() && {
        let port = gw.port;
        eventually(Duration::from_secs(5), || async move {
            client()
                .get(format!("http://127.0.0.1:{port}/x"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    };
    let text = read();
    let _ = new.kill();
    let _ = new.wait();
    assert!(waited, "the new process never waited:\n{text}");
    assert!(
        took_over,
        "no hand-over:\n{text}\n---- old ----\n{}",
        gw.log()
    );
    let line = line_with(&text, "No incoming socket transfer").unwrap();
    assert!(line.contains("DEBUG"), "{line}");
    assert!(!text.contains("ERROR"), "{text}");
}

// ---------------------------------------------------------------- -d with relative paths (issue 22 item 2)

/// Ends the daemon at the end of the test, whatever happens.
/// `portcullis -d -c portcullis.yaml` (relative, as the README's examples are): the daemon
/// runs in another directory than the shell, and every reload re-reads the config and the
/// files it names. Reloads by SIGHUP and by the admin API work, relative secret file and
/// access log included.
#[tokio::test]
async fn daemon_with_relative_paths_reloads() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("jwt.secret"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    let yaml = |route: &str| {
        format!(
            r#"
server:
  listen: ["127.0.0.1:{port}"]
  admin: {{ listen: "127.0.0.1:{admin_port}", token_sha256: "{sha}" }}
access_log: {{ path: access.log }}
auth:
  jwt:
    - {{ name: hs, issuer: "https://hs.test/", audiences: [api], algorithms: [HS256], secret_file: jwt.secret }}
upstreams:
  a: {{ backends: [{{ addr: "{addr}" }}] }}
routes:
  - {{ name: {route}, match: {{ path: "/**" }}, upstream: a }}
"#,
            sha = admin_token_sha256(),
            addr = up.addr
        )
    };
    std::fs::write(dir.path().join("portcullis.yaml"), yaml("first")).unwrap();
    launch_daemon(dir.path());
    let read_pid = || daemon_pid(dir.path());
    let error_log = || std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
    // both listeners: the admin one (the reload below goes there) may open after the proxy's
    let started = eventually(Duration::from_secs(20), || async {
        read_pid().is_some() && accepts(port) && accepts(admin_port)
    })
    .await;
    // without a pid file, the pid /healthz reports: the daemon is ended whatever happens
    let healthz_pid = async {
        let v: serde_json::Value = client()
            .get(format!("http://127.0.0.1:{admin_port}/healthz"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["pid"].as_i64().map(|p| p as i32)
    };
    let mut daemon = Daemon(match read_pid() {
        Some(p) => Some(p),
        None => healthz_pid.await,
    });
    assert!(started, "the daemon did not start:\n{}", error_log());
    let pid = daemon.0.unwrap();
    let c = client();
    let admin = |path: &str| {
        c.post(format!("http://127.0.0.1:{admin_port}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    // a reload through the admin API
    std::fs::write(dir.path().join("portcullis.yaml"), yaml("second")).unwrap();
    let r = admin("/admin/reload").await.unwrap();
    let s = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(s, 200, "{body}\n{}", error_log());
    // and by SIGHUP
    std::fs::write(dir.path().join("portcullis.yaml"), yaml("third")).unwrap();
    std::process::Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let generation = || async {
        let v: serde_json::Value = client()
            .get(format!("http://127.0.0.1:{admin_port}/healthz"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["generation"].as_u64()
    };
    let reloaded = eventually(Duration::from_secs(10), || async {
        generation().await == Some(3)
    })
    .await;
    assert!(reloaded, "SIGHUP reload failed:\n{}", error_log());
    assert_eq!(
        c.get(format!("http://127.0.0.1:{port}/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // the relative access log is where the shell meant it
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(dir.path().join("access.log"))
                .is_ok_and(|l| l.contains("\"route\":\"third\""))
        })
        .await,
        "{}",
        error_log()
    );
    assert!(!error_log().contains("cannot read"), "{}", error_log());
    // stop it: SIGTERM, nothing in flight
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let gone = poll_until(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    assert!(gone, "the daemon did not stop on SIGTERM");
    daemon.0 = None;
}
