//! The cluster sync against a real `redis-server` (started here on a free port): what one
//! instance admits, the other counts; instances are counted; revocations travel; a Redis
//! that is gone degrades the cluster.

use super::*;
use crate::config::Dur;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

struct RedisServer {
    child: Child,
    port: u16,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port below the ephemeral range that nothing listens on now.
fn free_port() -> u16 {
    (0..1000)
        .map(|_| 20_000 + (rand::random::<u16>() % 12_000))
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port")
}

fn spawn_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)")
}

async fn redis() -> RedisServer {
    let port = free_port();
    let child = spawn_redis(port);
    let server = RedisServer { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

fn cluster(port: u16, prefix: &str) -> Cluster {
    Cluster::new(ClusterConfig {
        redis: format!("redis://127.0.0.1:{port}"),
        sync_interval: Dur::millis(20),
        key_prefix: prefix.to_string(),
        max_keys: 1000,
    })
}

/// A limit of 100 an hour: no window rolls over in the test (and if one does, the estimate
/// moves by a hair's breadth of the hour).
fn hourly() -> Limiter {
    Limiter::new(100, Duration::from_secs(3600), 64)
}

/// `CMD key` against the test's Redis.
async fn redis_ask<T: redis::FromRedisValue>(port: u16, cmd: &str, key: &str) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut c = client.get_multiplexed_tokio_connection().await.unwrap();
    redis::cmd(cmd).arg(key).query_async(&mut c).await.unwrap()
}

async fn redis_get(port: u16, key: &str) -> Option<u64> {
    redis_ask(port, "GET", key).await
}

#[tokio::test]
async fn what_one_instance_admits_the_other_counts() {
    let r = redis().await;
    let (a, b) = (cluster(r.port, "t1"), cluster(r.port, "t1"));
    let l = hourly();
    let label: Arc<str> = Arc::from("pol");
    a.record(&label, b"client-1", &l, 3);
    a.record(&label, b"client-1", &l, 2);
    a.record(&label, b"client-2", &l, 7);
    a.sync_once(false).await.unwrap();
    // the counter under its documented key: prefix, policy, window, hex of the client key
    let window = unix_ms() / 3_600_000;
    let key = format!("t1:rl:pol:{window}:{}", hex::encode(b"client-1"));
    let stored = match redis_get(r.port, &key).await {
        Some(n) => n,
        None => redis_get(
            r.port,
            &format!("t1:rl:pol:{}:{}", window + 1, hex::encode(b"client-1")),
        )
        .await
        .expect("the counter is in Redis"),
    };
    assert_eq!(stored, 5);
    assert_eq!(
        a.others_estimate(&label, b"client-1", &l),
        0.0,
        "its own are not others'"
    );
    // b refreshes the key (a rejected request records 0) and reads a's count
    b.record(&label, b"client-1", &l, 0);
    b.sync_once(false).await.unwrap();
    let seen = b.others_estimate(&label, b"client-1", &l);
    assert!((4.99..=5.0).contains(&seen), "b sees {seen}");
    assert_eq!(
        b.others_estimate(&label, b"client-2", &l),
        0.0,
        "not synced by b"
    );
    assert_eq!(b.others_estimate(&Arc::from("other"), b"client-1", &l), 0.0);
    assert_eq!((a.instances(), b.instances()), (1, 2));
    // a's next round learns of b, and b's admissions
    b.record(&label, b"client-1", &l, 4);
    b.sync_once(false).await.unwrap();
    a.record(&label, b"client-1", &l, 0);
    a.sync_once(false).await.unwrap();
    assert_eq!(a.instances(), 2);
    let seen = a.others_estimate(&label, b"client-1", &l);
    assert!((3.99..=4.0).contains(&seen), "a sees {seen}");
}

#[tokio::test]
async fn revocations_published_by_one_reach_the_other() {
    let r = redis().await;
    let (a, b) = (cluster(r.port, "t2"), cluster(r.port, "t2"));
    let jti = format!("cluster-unit-{}", rand::random::<u64>());
    a.publish_revocation(&jti, crate::auth::revocation::unix_now() + 300)
        .await
        .unwrap();
    assert!(!crate::auth::revocation::REVOCATIONS.is_revoked(&jti));
    b.sync_once(false).await.unwrap();
    assert!(
        !crate::auth::revocation::REVOCATIONS.is_revoked(&jti),
        "not asked for yet"
    );
    b.sync_once(true).await.unwrap();
    assert!(crate::auth::revocation::REVOCATIONS.is_revoked(&jti));
}

#[tokio::test]
async fn a_redis_that_goes_away_degrades_the_cluster_and_its_return_heals_it() {
    let mut r = redis().await;
    let port = r.port;
    let c = Arc::new(cluster(port, "t3"));
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move { c.run(move |_| !stop.load(Ordering::Relaxed)).await })
    };
    let until = |want: bool, c: Arc<Cluster>| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.degraded() != want {
            assert!(Instant::now() < deadline, "degraded never became {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // a sync round succeeds: the instance registers itself
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_tokio_connection().await.unwrap();
        let n: u64 = redis::cmd("ZCARD")
            .arg("t3:instances")
            .query_async(&mut conn)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sync loop never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!c.degraded());
    let _ = r.child.kill();
    let _ = r.child.wait();
    until(true, c.clone()).await;
    assert!(c.sync_errors.load(Ordering::Relaxed) >= 1);
    // Redis back on the same port: sharing resumes
    let child = spawn_redis(port);
    r.child = child;
    until(false, c.clone()).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run returns once told to stop")
        .unwrap();
}

/// What a route's check does with the cluster: while Redis answers, the other instances'
/// admissions count against the limit; while it is out, each instance enforces its share,
/// the limit divided by the instances last seen.
#[tokio::test]
async fn the_route_check_counts_others_and_falls_back_to_its_share() {
    let r = redis().await;
    let yaml = "policies: { p: { key: ip, requests: 20, per: 1h } }";
    let config: crate::config::RateLimitsConfig = serde_yaml::from_str(yaml).unwrap();
    let src = crate::config::parse_str("t.yaml", "{}").unwrap();
    let mut problems = crate::config::Problems::new(&src);
    let mut rl = super::super::RateLimits::build(&config, None, None, &mut problems);
    assert!(problems.errors.is_empty());
    let c = Arc::new(cluster(r.port, "t4"));
    rl.cluster = Some(c.clone());
    let headers = http::HeaderMap::new();
    let k = super::super::KeyInput {
        identity: None,
        client_ip: Some(std::net::IpAddr::from([10, 0, 0, 9])),
        route: "r",
        headers: &headers,
    };
    let policy = rl.policies[0].clone();
    let key = super::super::key_bytes(&policy.key, &k).unwrap();
    // another instance admitted 6 from this address
    let other = cluster(r.port, "t4");
    other.record(&policy.name, &key, &policy.base, 6);
    other.sync_once(false).await.unwrap();
    assert!(rl.check(&[0], &k).is_ok());
    c.sync_once(false).await.unwrap();
    assert_eq!(c.instances(), 2);
    let admitted = |n: usize| (0..n).filter(|_| rl.check(&[0], &k).is_ok()).count();
    // Redis out: 20 / 2 instances = 10 here, its own 1 included; others' counts are not used
    c.degraded.store(true, Ordering::Relaxed);
    assert_eq!(admitted(30), 9, "degraded: this instance's share");
    // Redis back: own 10 + others' 6 of 20 leaves 4 (3 if an hour's window just rolled)
    c.degraded.store(false, Ordering::Relaxed);
    let n = admitted(30);
    assert!((3..=4).contains(&n), "shared: {n} admitted, want 4");
}

/// The sliding estimate of the others' count: in the window Redis reported, the previous
/// window's count weighs by the part of the window still to come; one window later, what was
/// current is the previous one; later still, nothing. Scaled to the limiter's own units.
#[test]
fn others_estimate_slides_over_the_window() {
    let c = cluster(1, "t5");
    let label: Arc<str> = Arc::from("pol");
    let l = Limiter::new(100, Duration::from_secs(10), 64); // per = 10,000 ms
    let w = 170_000_000_u64; // a window number; its start is w * 10,000 ms
    c.remote[shard_of(&label, b"k")].write().unwrap().insert(
        (label.clone(), Box::from(&b"k"[..])),
        Remote {
            window: w,
            per_ms: 10_000,
            others_curr: 40,
            others_prev: 80,
            ..Default::default()
        },
    );
    let at = |ms: u64| c.others_estimate_at(&label, b"k", &l, ms);
    let start = w * 10_000;
    let scale = l.limit() / 100.0;
    // a quarter into the window: 80 × 0.75 + 40
    assert!(
        (at(start + 2_500) - 100.0 * scale).abs() < 1e-6,
        "{}",
        at(start + 2_500)
    );
    assert!((at(start) - 120.0 * scale).abs() < 1e-6);
    // half into the next window: 40 × 0.5
    assert!(
        (at(start + 15_000) - 20.0 * scale).abs() < 1e-6,
        "{}",
        at(start + 15_000)
    );
    // two windows on, or before: nothing
    assert_eq!(at(start + 20_000), 0.0);
    assert_eq!(at(start - 1), 0.0);
    assert_eq!(c.others_estimate_at(&label, b"other", &l, start), 0.0);
}

/// Admissions wait for the next sync per key and window: added up within a window, started
/// afresh when the window rolls (the old delta is stale), and no more keys per shard than
/// `max_keys` allows (at least 16).
#[test]
fn pending_admissions_add_up_per_window_and_are_bounded_per_shard() {
    let c = cluster(1, "t6");
    let label: Arc<str> = Arc::from("pol");
    let l = Limiter::new(100, Duration::from_secs(10), 64);
    let start = 170_000_000_u64 * 10_000;
    let pending = |key: &[u8]| {
        c.pending[shard_of(&label, key)]
            .lock()
            .unwrap()
            .get(&(label.clone(), Box::from(key)))
            .map(|p| (p.window, p.per_ms, p.delta))
    };
    c.record_at(&label, b"k", &l, 3, start + 1);
    c.record_at(&label, b"k", &l, 2, start + 9_999);
    assert_eq!(pending(b"k"), Some((170_000_000, 10_000, 5)));
    c.record_at(&label, b"k", &l, 4, start + 10_000);
    assert_eq!(
        pending(b"k"),
        Some((170_000_001, 10_000, 4)),
        "a new window"
    );
    // the bound: max_keys 1000 over the shards, at least 16 a shard
    let cap = (1000 / SHARDS).max(16);
    let shard = shard_of(&label, b"k");
    let same_shard: Vec<Vec<u8>> = (0u32..)
        .map(|i| i.to_be_bytes().to_vec())
        .filter(|k| shard_of(&label, k) == shard)
        .take(cap + 1)
        .collect();
    for k in &same_shard {
        c.record_at(&label, k, &l, 1, start);
    }
    assert_eq!(c.pending[shard].lock().unwrap().len(), cap);
    assert_eq!(
        pending(same_shard.last().unwrap()),
        None,
        "over the bound: local only"
    );
}

/// A sync across a window boundary: the counter of each window expires two windows (and a
/// second) after it was written; this instance's own count of the window before is set
/// apart from the others', and an entry whose window is over is forgotten. Day-long windows:
/// the real clock, which decides what is over, does not cross one during the test.
#[tokio::test]
async fn a_sync_across_windows_keeps_the_previous_window_and_forgets_old_ones() {
    let r = redis().await;
    let (a, b) = (cluster(r.port, "t7"), cluster(r.port, "t7"));
    let label: Arc<str> = Arc::from("pol");
    let l = Limiter::new(1000, Duration::from_secs(86_400), 64);
    let per = 86_400_000_u64;
    let w = unix_ms() / per;
    let at = |window: u64, ms: u64| window * per + ms;
    // the window before: b admitted 5, a admitted 2
    b.record_at(&label, b"k", &l, 5, at(w - 1, 10));
    b.sync_once(false).await.unwrap();
    a.record_at(&label, b"k", &l, 2, at(w - 1, 20));
    a.sync_once(false).await.unwrap();
    let ttl: i64 = redis_ask(r.port, "PTTL", &a.redis_key(&label, w - 1, b"k")).await;
    assert!(
        (per as i64 * 2..=per as i64 * 2 + 1000).contains(&ttl),
        "ttl {ttl}"
    );
    assert!((a.others_estimate_at(&label, b"k", &l, at(w - 1, 30)) - 5.0).abs() < 1e-3);
    // this window: a admits 1; b's 5 are now the previous window's, a's own 2 set apart
    a.record_at(&label, b"k", &l, 1, at(w, 10));
    a.sync_once(false).await.unwrap();
    let half = at(w, per / 2);
    let est = a.others_estimate_at(&label, b"k", &l, half);
    assert!((est - 2.5).abs() < 1e-3, "others: 5 × 0.5, got {est}");
    // an entry two windows old is forgotten at the end of a round
    a.record_at(&label, b"old", &l, 1, at(w - 2, 10));
    a.sync_once(false).await.unwrap();
    let kept = |key: &[u8]| {
        a.remote[shard_of(&label, key)]
            .read()
            .unwrap()
            .contains_key(&(label.clone(), Box::from(key)))
    };
    assert!(!kept(b"old"), "its window is over");
    assert!(kept(b"k"), "this window's entry stays");
}

/// The sync loop asks for revocations on its first round and every tenth after that, for as
/// long as it runs.
#[tokio::test]
async fn the_sync_loop_picks_up_revocations_while_it_runs() {
    let r = redis().await;
    let (a, b) = (Arc::new(cluster(r.port, "t8")), cluster(r.port, "t8"));
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move { a.run(move |_| !stop.load(Ordering::Relaxed)).await })
    };
    let revoked_soon = |jti: String| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !crate::auth::revocation::REVOCATIONS.is_revoked(&jti) {
            assert!(Instant::now() < deadline, "{jti} never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let until = crate::auth::revocation::unix_now() + 300;
    // one before the rounds reach ten, one after twenty rounds (20 ms each) have passed
    let first = format!("loop-early-{}", rand::random::<u64>());
    b.publish_revocation(&first, until).await.unwrap();
    revoked_soon(first).await;
    tokio::time::sleep(Duration::from_millis(400)).await; // lets rounds pass: not a sync point
    let later = format!("loop-late-{}", rand::random::<u64>());
    b.publish_revocation(&later, until).await.unwrap();
    revoked_soon(later).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run returns once told to stop")
        .unwrap();
}

#[test]
fn the_sync_timeout_is_twice_the_interval_and_at_least_400ms() {
    let mut c = cluster(1, "t4").config;
    assert_eq!(timeout_of(&c), Duration::from_millis(400));
    c.sync_interval = Dur::millis(1000);
    assert_eq!(timeout_of(&c), Duration::from_millis(2000));
}

#[test]
fn keys_spread_over_the_shards() {
    let shards: std::collections::HashSet<usize> = (0..200u32)
        .map(|i| shard_of("p", &i.to_le_bytes()))
        .collect();
    assert!(shards.len() > SHARDS / 2, "{shards:?}");
    assert!(shards.iter().all(|s| *s < SHARDS));
}
