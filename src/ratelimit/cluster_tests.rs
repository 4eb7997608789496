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

async fn redis_get(port: u16, key: &str) -> Option<u64> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut c = client.get_multiplexed_tokio_connection().await.unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
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
