//! A fleet through the real binary: three gateways sharing a real Redis, a single
//! `redis-server` and a real three-node Redis Cluster started here. Registrations made
//! through one instance route on the others, heartbeats through another keep them, a TTL
//! lapse removes them everywhere; a purge through one reaches the others; `/admin/cluster`
//! lists the members and flags config drift; Redis dying loses no traffic and no
//! registration, and a purge made while it was gone is applied when it is back.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fleet change may take to reach every instance: many sync rounds (100 ms)
/// on a loaded machine, far less than any TTL the test waits out.
const SPREAD: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ Redis, two shapes

/// A real three-node Redis Cluster (no replicas), in its own directory so that a
/// restart keeps the cluster layout (nodes.conf) while the data is gone.
struct RedisCluster {
    ports: Vec<u16>,
    bus: Vec<u16>,
    dir: tempfile::TempDir,
    nodes: Vec<Child>,
}

impl RedisCluster {
    /// One node on `port`, its cluster bus on `bus` (by default the bus is port + 10000,
    /// which lands in the kernel's ephemeral range, where an outgoing connection of a
    /// parallel test can hold it).
    fn spawn_node(dir: &std::path::Path, port: u16, bus: u16) -> Child {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &dir.join(format!("nodes-{port}.conf")).display().to_string(),
                "--cluster-node-timeout",
                "2000",
                "--dir",
                &dir.display().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make deps)")
    }

    fn cli(port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the node listens; false if it exited first (a port taken meanwhile).
    fn wait_listening(port: u16, node: &mut Child) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(_)) = node.try_wait() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Six distinct free ports: three nodes and their cluster buses.
    fn pick_ports() -> (Vec<u16>, Vec<u16>) {
        let mut all: Vec<u16> = Vec::new();
        while all.len() < 6 {
            let p = free_port();
            if !all.contains(&p) {
                all.push(p);
            }
        }
        let bus = all.split_off(3);
        (all, bus)
    }

    /// Every node says the cluster is whole.
    async fn wait_ok(&self) {
        let ports = self.ports.clone();
        let ok = eventually(Duration::from_secs(30), || {
            let ports = ports.clone();
            async move {
                ports
                    .iter()
                    .all(|p| Self::cli(*p, &["cluster", "info"]).contains("cluster_state:ok"))
            }
        })
        .await;
        assert!(ok, "the Redis Cluster did not reach cluster_state:ok");
    }

    async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        // a node that exits before it listens lost a port to a parallel test: new ports
        let (ports, bus, nodes) = (0..5)
            .find_map(|_| {
                let (ports, bus) = Self::pick_ports();
                let mut nodes: Vec<Child> = ports
                    .iter()
                    .zip(&bus)
                    .map(|(p, b)| Self::spawn_node(dir.path(), *p, *b))
                    .collect();
                let up = ports
                    .iter()
                    .zip(nodes.iter_mut())
                    .all(|(p, n)| Self::wait_listening(*p, n));
                if up {
                    return Some((ports, bus, nodes));
                }
                for n in &mut nodes {
                    let _ = n.kill();
                    let _ = n.wait();
                }
                None
            })
            .expect("the Redis Cluster nodes could not start on five sets of ports");
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let rc = RedisCluster {
            ports,
            bus,
            dir,
            nodes,
        };
        rc.wait_ok().await;
        rc
    }

    fn kill(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
        self.nodes.clear();
    }

    async fn restart(&mut self) {
        self.nodes = self
            .ports
            .iter()
            .zip(&self.bus)
            .map(|(p, b)| Self::spawn_node(self.dir.path(), *p, *b))
            .collect();
        for (p, n) in self.ports.iter().zip(self.nodes.iter_mut()) {
            assert!(Self::wait_listening(*p, n), "redis-server on {p} exited");
        }
        self.wait_ok().await;
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Fleet {
    Single(Option<Redis>, u16),
    Cluster(RedisCluster),
}

impl Fleet {
    fn start_single() -> Fleet {
        let port = free_port();
        Fleet::Single(Some(Redis::start(port)), port)
    }

    /// The value of `cluster.redis`.
    fn redis_yaml(&self) -> String {
        match self {
            Fleet::Single(_, port) => format!("\"redis://127.0.0.1:{port}\""),
            Fleet::Cluster(c) => {
                let list: Vec<String> = c
                    .ports
                    .iter()
                    .map(|p| format!("\"redis://127.0.0.1:{p}\""))
                    .collect();
                format!("[{}]", list.join(", "))
            }
        }
    }

    fn kill(&mut self) {
        match self {
            Fleet::Single(r, _) => {
                if let Some(mut r) = r.take() {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                }
            }
            Fleet::Cluster(c) => c.kill(),
        }
    }

    /// Back on the same addresses, empty (no persistence).
    async fn restart(&mut self) {
        match self {
            Fleet::Single(r, port) => *r = Some(Redis::start(*port)),
            Fleet::Cluster(c) => c.restart().await,
        }
    }

    /// `redis-cli` against the fleet's Redis (following redirects in a cluster).
    fn cli(&self, args: &[&str]) -> String {
        let (port, cluster) = match self {
            Fleet::Single(_, p) => (*p, false),
            Fleet::Cluster(c) => (c.ports[0], true),
        };
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &port.to_string()]);
        if cluster {
            cmd.arg("-c");
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

// ------------------------------------------------------------------ the gateways

/// `drainable`: a configured backend of its own upstream (`/drain/**`).
fn config_with(
    redis: &str,
    id: &str,
    origin: &Upstream,
    drainable: &Upstream,
    extra_route: &str,
) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
cluster:
  redis: {redis}
  instance_id: {id}
  sync_interval: 100ms
  member_ttl: 3s
  reconnect_max: 500ms
access_log: {{ enabled: false }}
upstreams:
  svc: {{}}
  cli: {{}}
  origin: {{ backends: [{{ addr: "{origin}" }}] }}
  drainable: {{ backends: [{{ addr: "{drainable}" }}] }}
rate_limits:
  policies:
    shared: {{ key: ip, requests: 10, per: 60s }}
routes:
  - {{ name: svc, match: {{ path: "/svc/**" }}, upstream: svc }}
  - {{ name: cli, match: {{ path: "/cli/**" }}, upstream: cli }}
  - {{ name: cached, match: {{ path: "/cached/**" }}, upstream: origin, cache: {{ default_ttl: 5m }} }}
  - {{ name: limited, match: {{ path: "/limited/**" }}, upstream: origin, rate_limit: [shared] }}
  - {{ name: drain, match: {{ path: "/drain/**" }}, upstream: drainable }}
{extra_route}
"#,
        origin = origin.addr,
        drainable = drainable.addr,
    )
}

/// Status and the name of the backend that answered (the echo's `upstream`).
async fn who(gw: &Gateway, path: &str) -> (u16, String) {
    let (s, _, v) = get_json(&client(), &gw.url(path)).await;
    (s, v["upstream"].as_str().unwrap_or("").to_string())
}

async fn x_cache(gw: &Gateway, path: &str) -> String {
    let (_, h, _) = get_json(&client(), &gw.url(path)).await;
    h.get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Every gateway of `gws` answers `path` from backend `name` (or, for `None`, with 503).
async fn all_route(gws: &[&Gateway], path: &str, name: Option<&str>) -> bool {
    for g in gws {
        let (s, who) = who(g, path).await;
        let ok = match name {
            Some(n) => s == 200 && who == n,
            None => s == 503,
        };
        if !ok {
            return false;
        }
    }
    true
}

async fn metric(gw: &Gateway, prefix: &str) -> f64 {
    series(&metrics(gw).await, prefix).unwrap_or(0.0)
}

async fn cluster_status(gw: &Gateway) -> Value {
    let (s, v) = gw.admin(reqwest::Method::GET, "/admin/cluster", None).await;
    assert_eq!(s, 200, "{v}");
    v
}

fn member_ids(v: &Value) -> Vec<String> {
    v["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["instance_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn purge(gw: &Gateway, body: Value) {
    let (s, v) = gw
        .admin(reqwest::Method::POST, "/admin/cache/purge", Some(body))
        .await;
    assert_eq!(s, 200, "{v}");
}

fn run_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The whole story, against either shape of Redis.
async fn scenario(mut redis: Fleet) {
    let mode = match redis {
        Fleet::Single(..) => "single Redis",
        Fleet::Cluster(_) => "Redis Cluster",
    };
    let origin = Upstream::start("origin").await;
    let backend = Upstream::start("registered").await;
    let survivor = Upstream::start("survivor").await;
    let by_cli = Upstream::start("by-cli").await;
    let configured = Upstream::start("configured").await;
    let ry = redis.redis_yaml();
    let cfg = |id: &str, extra: &str| config_with(&ry, id, &origin, &configured, extra);
    let a = Gateway::start(&cfg("gw-a", "")).await;
    let b = Gateway::start(&cfg("gw-b", "")).await;
    let c = Gateway::start(&cfg("gw-c", "")).await;
    let all = [&a, &b, &c];

    // membership: every instance lists all three, no drift
    assert!(
        eventually(SPREAD, || async {
            let mut ok = true;
            for g in all {
                let v = cluster_status(g).await;
                let mut ids = member_ids(&v);
                ids.sort();
                ok &= ids == ["gw-a", "gw-b", "gw-c"] && v["config_drift"] == false;
            }
            ok
        })
        .await,
        "every instance lists gw-a, gw-b, gw-c: {}",
        cluster_status(&a).await
    );
    assert_eq!(metric(&b, "portcullis_cluster_members").await, 3.0);
    assert_eq!(metric(&b, "portcullis_cluster_connected").await, 1.0);

    // nothing registered yet: 503 everywhere
    assert!(all_route(&all, "/svc/x", None).await);

    // register through A: B and C route to it
    let ttl = Duration::from_secs(2);
    let (s, v) = a
        .admin(
            reqwest::Method::POST,
            "/admin/upstreams/svc/backends",
            Some(json!({"addr": backend.addr.to_string(), "ttl": "2s"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let t0 = Instant::now();
    assert!(
        eventually(SPREAD, || all_route(&all, "/svc/x", Some("registered"))).await,
        "a registration through A routes on B and C"
    );
    println!(
        "FLEET ({mode}): a registration through A routed on all three within {} ms",
        t0.elapsed().as_millis()
    );
    let registered_at = Instant::now();

    // heartbeats through B alone keep it on all three past its TTL
    let hb = format!("/admin/upstreams/svc/backends/{}/heartbeat", backend.addr);
    let mut last_beat = Instant::now();
    while registered_at.elapsed() < ttl * 2 {
        last_beat = Instant::now();
        let (s, v) = b.admin(reqwest::Method::PUT, &hb, None).await;
        assert_eq!(s, 200, "{v}");
        // a third of the TTL between renewals
        tokio::time::sleep(ttl / 3).await;
        assert!(
            all_route(&all, "/svc/x", Some("registered")).await,
            "still registered {:?} after registration, heartbeats through B",
            registered_at.elapsed()
        );
    }

    // no more heartbeats: the TTL lapses on all three
    assert!(
        eventually(ttl + SPREAD, || all_route(&all, "/svc/x", None)).await,
        "the TTL lapsed everywhere"
    );
    assert!(
        last_beat.elapsed() >= ttl - Duration::from_millis(300),
        "removed {:?} after the last heartbeat, before its TTL",
        last_beat.elapsed()
    );

    // deregistration through C, of a backend registered (without TTL) through A
    let (s, v) = a
        .admin(
            reqwest::Method::POST,
            "/admin/upstreams/svc/backends",
            Some(json!({"addr": backend.addr.to_string()})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(eventually(SPREAD, || all_route(&all, "/svc/x", Some("registered"))).await);
    let del = format!("/admin/upstreams/svc/backends/{}", backend.addr);
    let (s, v) = c.admin(reqwest::Method::DELETE, &del, None).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        eventually(SPREAD, || all_route(&all, "/svc/x", None)).await,
        "a deregistration through C applies everywhere"
    );

    // drain a configured backend through B; registering it through C brings it back
    assert!(all_route(&all, "/drain/x", Some("configured")).await);
    let drain = format!("/admin/upstreams/drainable/backends/{}", configured.addr);
    let (s, v) = b.admin(reqwest::Method::DELETE, &drain, None).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        eventually(SPREAD, || all_route(&all, "/drain/x", None)).await,
        "a drain through B applies everywhere"
    );
    let (s, v) = c
        .admin(
            reqwest::Method::POST,
            "/admin/upstreams/drainable/backends",
            Some(json!({"addr": configured.addr.to_string()})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(
        eventually(SPREAD, || all_route(&all, "/drain/x", Some("configured"))).await,
        "back in rotation everywhere"
    );

    // a service registers itself with the command (no admin token), then leaves
    let ports: Vec<String> = match &redis {
        Fleet::Single(_, p) => vec![p.to_string()],
        Fleet::Cluster(rc) => rc.ports.iter().map(|p| p.to_string()).collect(),
    };
    let cfg_a = a.config_path.display().to_string();
    let mut reg_args = vec![
        "register".to_string(),
        "--upstream".into(),
        "cli".into(),
        "--addr".into(),
        by_cli.addr.to_string(),
        "--ttl".into(),
        "0s".into(),
    ];
    match &redis {
        // a single Redis named on the command line; a cluster read from the config
        Fleet::Single(..) => reg_args.extend([
            "--redis".to_string(),
            format!("redis://127.0.0.1:{}", ports[0]),
        ]),
        Fleet::Cluster(_) => reg_args.extend(["-c".to_string(), cfg_a.clone()]),
    }
    let argv: Vec<&str> = reg_args.iter().map(String::as_str).collect();
    let (ok, out) = run_cli(&argv);
    assert!(ok, "{out}");
    assert!(out.contains("registered"), "{out}");
    assert!(
        eventually(SPREAD, || all_route(&all, "/cli/x", Some("by-cli"))).await,
        "a registration by `portcullis register` routes everywhere"
    );
    let mut dereg = argv.clone();
    dereg[0] = "deregister";
    let (ok, out) = run_cli(&dereg);
    assert!(ok, "{out}");
    assert!(
        eventually(SPREAD, || all_route(&all, "/cli/x", None)).await,
        "`portcullis deregister` removes it everywhere"
    );

    // purge through C: A and B miss
    for g in [&a, &b] {
        assert_eq!(x_cache(g, "/cached/p").await, "MISS");
        assert_eq!(x_cache(g, "/cached/p").await, "HIT");
    }
    purge(&c, json!({"prefix": "/cached/"})).await;
    let t0 = Instant::now();
    for g in [&a, &b] {
        assert!(
            eventually(SPREAD, || async {
                metric(g, "portcullis_cluster_purges_total{result=\"applied\"}").await >= 1.0
            })
            .await,
            "the purge reached {}",
            g.url("")
        );
    }
    println!(
        "FLEET ({mode}): a purge through C applied on A and B within {} ms",
        t0.elapsed().as_millis()
    );
    for g in [&a, &b] {
        assert_eq!(x_cache(g, "/cached/p").await, "MISS", "purged through C");
    }

    // limits are shared: what A admitted counts on B (alone B would admit all 10)
    for _ in 0..10 {
        assert_eq!(who(&a, "/limited/x").await.0, 200);
    }
    let mut admitted_on_b = 0;
    let deadline = Instant::now() + SPREAD;
    loop {
        match who(&b, "/limited/x").await.0 {
            200 => admitted_on_b += 1,
            429 => break,
            s => panic!("unexpected {s}"),
        }
        assert!(Instant::now() < deadline, "B never limited");
        // give B a sync round to learn the total
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        admitted_on_b <= 2,
        "B admitted {admitted_on_b} of a 10 budget A had spent"
    );

    // drift: B reloads a different config
    b.write_config(&cfg(
        "gw-b",
        r#"  - { name: extra, match: { path: "/extra/**" }, upstream: origin }"#,
    ));
    let (s, v) = b.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    let t0 = Instant::now();
    assert!(
        eventually(SPREAD, || async {
            let v = cluster_status(&a).await;
            let hashes = v["config_hashes"].as_object().cloned().unwrap_or_default();
            v["config_drift"] == true
                && hashes.len() == 2
                && hashes.values().any(|ids| ids == &json!(["gw-b"]))
        })
        .await,
        "A reports drift, B alone on its hash: {}",
        cluster_status(&a).await
    );
    println!(
        "FLEET ({mode}): A reported B's drift {} ms after B's reload",
        t0.elapsed().as_millis()
    );
    assert!(
        eventually(SPREAD, || async {
            metric(&c, "portcullis_cluster_config_drift").await == 1.0
        })
        .await
    );
    let v = cluster_status(&c).await;
    let card_b = v["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["instance_id"] == "gw-b").cloned())
        .unwrap_or_default();
    assert_eq!(card_b["generation"], 2, "{card_b}");
    assert_eq!(card_b["last_reload"]["ok"], true, "{card_b}");

    // ---- Redis goes away
    let (s, v) = a
        .admin(
            reqwest::Method::POST,
            "/admin/upstreams/svc/backends",
            Some(json!({"addr": survivor.addr.to_string(), "ttl": "2s"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(eventually(SPREAD, || all_route(&all, "/svc/x", Some("survivor"))).await);
    for g in [&a, &b] {
        assert_eq!(x_cache(g, "/cached/q").await, "MISS");
        assert_eq!(x_cache(g, "/cached/q").await, "HIT");
    }
    let applied_before = [
        metric(&a, "portcullis_cluster_purges_total{result=\"applied\"}").await,
        metric(&b, "portcullis_cluster_purges_total{result=\"applied\"}").await,
    ];
    let load = Load::start(&[a.url("/svc/x"), b.url("/svc/x"), c.url("/svc/x")], 3);
    redis.kill();
    assert!(
        eventually(SPREAD, || async {
            let mut down = true;
            for g in all {
                down &= metric(g, "portcullis_cluster_connected").await == 0.0;
            }
            down
        })
        .await,
        "every instance noticed"
    );
    // the TTL lapses while no heartbeat can be recorded: nothing is expired for that
    wait_out(ttl).await;
    load.progress(30).await;
    assert!(all_route(&all, "/svc/x", Some("survivor")).await);
    let v = cluster_status(&a).await;
    assert_eq!(v["redis"]["connected"], false, "{v}");
    assert_eq!(v["stale"], true, "{v}");
    assert_eq!(member_ids(&v).len(), 3, "the last-known members: {v}");
    assert!(metric(&a, "portcullis_cluster_sync_errors_total").await >= 1.0);

    // a purge while Redis is gone: queued on C; A and B cannot know yet
    purge(&c, json!({"prefix": "/cached/"})).await;
    assert!(metric(&c, "portcullis_cluster_pending_operations").await >= 1.0);
    assert_eq!(x_cache(&a, "/cached/q").await, "HIT");

    // ---- Redis is back, empty
    redis.restart().await;
    let t0 = Instant::now();
    assert!(
        eventually(SPREAD, || async {
            let mut up = true;
            for g in all {
                up &= metric(g, "portcullis_cluster_connected").await == 1.0;
            }
            up
        })
        .await,
        "every instance reconnected"
    );
    println!(
        "FLEET ({mode}): all three reconnected {} ms after Redis was back",
        t0.elapsed().as_millis()
    );
    let stats = load.stop().await;
    println!(
        "FLEET ({mode}): {} requests across the Redis outage, {} failed, slowest {} ms",
        stats.done, stats.failures, stats.slowest_ms
    );
    assert_eq!(stats.failures, 0, "losing Redis never fails a request");
    for (i, g) in [&a, &b].into_iter().enumerate() {
        assert!(
            eventually(SPREAD, || async {
                metric(g, "portcullis_cluster_purges_total{result=\"applied\"}").await
                    > applied_before[i]
            })
            .await,
            "the purge made during the outage reached {}",
            g.url("")
        );
        assert_eq!(x_cache(g, "/cached/q").await, "MISS");
    }
    // the registration is back in Redis (re-published), and still routes everywhere
    let field = survivor.addr.to_string();
    assert!(
        eventually(SPREAD, || async {
            redis.cli(&["HEXISTS", "{portcullis}:reg:svc", &field]) == "1"
        })
        .await,
        "re-published after Redis lost it"
    );
    assert!(all_route(&all, "/svc/x", Some("survivor")).await);
    // members announce themselves again
    assert!(
        eventually(SPREAD, || async {
            member_ids(&cluster_status(&b).await).len() == 3
        })
        .await
    );
    // and its TTL runs again from the reconnect: without heartbeats it lapses everywhere
    assert!(
        eventually(ttl + SPREAD, || all_route(&all, "/svc/x", None)).await,
        "the TTL applies again once Redis is back"
    );

    // a member that stops announcing itself leaves the list after member_ttl
    drop(c);
    assert!(
        eventually(SPREAD, || async {
            let mut ids = member_ids(&cluster_status(&a).await);
            ids.sort();
            ids == ["gw-a", "gw-b"]
        })
        .await,
        "gw-c left: {}",
        cluster_status(&a).await
    );
    assert!(
        eventually(SPREAD, || async {
            metric(&b, "portcullis_cluster_members").await == 2.0
        })
        .await
    );
}

#[tokio::test]
async fn fleet_on_a_single_redis() {
    scenario(Fleet::start_single()).await;
}

#[tokio::test]
async fn fleet_on_a_redis_cluster() {
    scenario(Fleet::Cluster(RedisCluster::start().await)).await;
}

#[test]
fn cluster_config_errors_name_the_key_and_line() {
    let base = "server:\n  listen: [\"127.0.0.1:1\"]\n";
    // both the fleet's block and the older limits-only one
    let both = format!(
        "{base}cluster:\n  redis: \"redis://127.0.0.1:6379\"\nrate_limits:\n  cluster: {{ redis: \"redis://127.0.0.1:6379\" }}\n"
    );
    assert_refused(
        &both,
        &[
            "portcullis.yaml:3: cluster:",
            "portcullis.yaml:6: rate_limits.cluster:",
            "keep only the top-level `cluster`",
        ],
    );
    assert_refused(
        &format!("{base}cluster:\n  redis: \"http://127.0.0.1:6379\"\n"),
        &[":4: cluster.redis:", "not a redis:// or rediss:// URL"],
    );
    assert_refused(
        &format!(
            "{base}cluster:\n  redis: [\"redis://127.0.0.1:7000\", \"redis://u:secret@:x\"]\n"
        ),
        &["cluster.redis[1]:", "not a usable Redis URL"],
    );
    assert_refused(
        &format!("{base}cluster:\n  redis: \"redis://127.0.0.1:6379\"\n  instance_id: \"gw 1\"\n"),
        &[":5: cluster.instance_id:"],
    );
    assert_refused(
        &format!(
            "{base}cluster:\n  redis: \"redis://127.0.0.1:6379\"\n  sync_interval: 1s\n  member_ttl: 2s\n"
        ),
        &[":6: cluster.member_ttl:", "3 × sync_interval"],
    );
    assert_refused(
        &format!("{base}cluster:\n  redis: 6379\n"),
        &[":4: cluster:", "a list of them for a Redis Cluster"],
    );
    assert_refused(
        &format!("{base}cluster:\n  redis: \"redis://127.0.0.1:6379\"\n  sync_intervl: 1s\n"),
        &["did you mean `sync_interval`?"],
    );
    assert_refused(
        &format!("{base}cluster:\n  redis: \"redis://127.0.0.1:6379\"\n  tls_ca_file: /x.pem\n"),
        &[":5: cluster.tls_ca_file:", "rediss:// URLs only"],
    );
    assert_refused(
        &format!("{base}cluster:\n  redis: \"rediss://127.0.0.1:6379\"\n  tls_ca_file: /nonexistent.pem\n"),
        &[":5: cluster.tls_ca_file:", "cannot read `/nonexistent.pem`"],
    );
    // the secret of a URL never appears in an error
    let (ok, out) = validate(&format!(
        "{base}cluster:\n  redis: \"redis://u:hunter2@:x\"\n"
    ));
    assert!(!ok && !out.contains("hunter2"), "{out}");
    // valid: a single URL and a list
    let (ok, out) = validate(&format!(
        "{base}cluster:\n  redis: \"redis://127.0.0.1:6379\"\n"
    ));
    assert!(ok, "{out}");
    let (ok, out) = validate(&format!(
        "{base}cluster:\n  redis: [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n  instance_id: gw-1\n  sync_interval: 250ms\n"
    ));
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_standalone_instance_has_no_cluster_endpoint() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        "server:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin_port}}\", token_sha256: \"{{admin_sha}}\" }}\nupstreams:\n  u: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ match: {{ path: \"/**\" }}, upstream: u }}\n",
        up.addr
    ))
    .await;
    let (s, v) = gw.admin(reqwest::Method::GET, "/admin/cluster", None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("cluster_disabled")),
        "{v}"
    );
}

/// Redis stops answering but keeps its data (SIGSTOP, as in a partition or a long pause):
/// the TTLs recorded there lapse meanwhile. Back, they run again from the reconnect
/// instead of expiring every registration at once; heartbeats then keep what is alive.
#[tokio::test]
async fn a_paused_redis_expires_nothing_when_it_returns() {
    let origin = Upstream::start("origin").await;
    let backend = Upstream::start("registered").await;
    let port = free_port();
    let redis = Redis::start(port);
    let ry = format!("\"redis://127.0.0.1:{port}\"");
    let a = Gateway::start(&config_with(&ry, "gw-a", &origin, &origin, "")).await;
    let b = Gateway::start(&config_with(&ry, "gw-b", &origin, &origin, "")).await;
    let both = [&a, &b];
    let ttl = Duration::from_secs(2);
    let (s, v) = a
        .admin(
            reqwest::Method::POST,
            "/admin/upstreams/svc/backends",
            Some(json!({"addr": backend.addr.to_string(), "ttl": "2s"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(eventually(SPREAD, || all_route(&both, "/svc/x", Some("registered"))).await);

    let load = Load::start(&[a.url("/svc/x"), b.url("/svc/x")], 2);
    let pid = redis.child.id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let connected = |want: f64| {
        let both = &both;
        async move {
            let mut all = true;
            for g in both {
                all &= metric(g, "portcullis_cluster_connected").await == want;
            }
            all
        }
    };
    assert!(eventually(SPREAD, || connected(0.0)).await, "both noticed");
    // the TTL lapses in Redis's records while nobody can renew it
    wait_out(ttl).await;
    signal("-CONT");
    assert!(
        eventually(SPREAD, || connected(1.0)).await,
        "both reconnected"
    );
    // rounds after the reconnect have read the lapsed TTL: traffic still flows
    load.progress(50).await;
    let stats = load.stop().await;
    assert_eq!(
        stats.failures, 0,
        "no registration expired because of the pause ({} requests)",
        stats.done
    );
    assert!(all_route(&both, "/svc/x", Some("registered")).await);
    // heartbeats (through B) resume and keep it; without them it lapses a TTL later
    let hb = format!("/admin/upstreams/svc/backends/{}/heartbeat", backend.addr);
    let (s, v) = b.admin(reqwest::Method::PUT, &hb, None).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        eventually(ttl + SPREAD, || all_route(&both, "/svc/x", None)).await,
        "and it lapses once heartbeats stop"
    );
}

/// `rediss://` to a real `redis-server` with TLS, its certificate issued by a private CA
/// given as `cluster.tls_ca_file`: the fleet shares registrations over it.
#[tokio::test]
async fn a_fleet_over_tls_to_redis() {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fleet test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let ca_file = write("ca.pem", ca.pem());
    let cert_file = write("redis.pem", leaf.pem());
    let key_file = write("redis.key", leaf_key.serialize_pem());
    let port = free_port();
    let redis = Redis::start_with(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert_file,
            "--tls-key-file",
            &key_file,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "no",
        ],
    );

    let origin = Upstream::start("origin").await;
    let backend = Upstream::start("registered").await;
    let ry = format!("\"rediss://127.0.0.1:{port}\"\n  tls_ca_file: \"{ca_file}\"");
    let a = Gateway::start(&config_with(&ry, "gw-a", &origin, &origin, "")).await;
    let b = Gateway::start(&config_with(&ry, "gw-b", &origin, &origin, "")).await;
    let (s, v) = a
        .admin(
            reqwest::Method::POST,
            "/admin/upstreams/svc/backends",
            Some(json!({"addr": backend.addr.to_string()})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let only_b = [&b];
    assert!(
        eventually(SPREAD, || all_route(&only_b, "/svc/x", Some("registered"))).await,
        "shared over TLS: {}",
        cluster_status(&b).await
    );
    assert!(
        eventually(SPREAD, || async {
            member_ids(&cluster_status(&a).await).len() == 2
        })
        .await,
        "{}",
        cluster_status(&a).await
    );
    drop(redis);
}
