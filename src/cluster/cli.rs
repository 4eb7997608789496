//! `portcullis register` / `portcullis deregister`: a service puts itself in (or takes
//! itself out of) an upstream's shared registry by talking to the fleet's Redis directly,
//! without the admin token. Run `register` again before the TTL lapses to renew it.

use super::registry::Op;
use crate::config::RedisEndpoints;
use crate::redis_link::{Keys, Link};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

pub struct Target {
    pub endpoints: RedisEndpoints,
    pub keys: Keys,
}

/// Where the registry is: `--redis` URLs (more than one: a Redis Cluster), else the
/// `cluster` block of the config file.
pub fn target(config: &Path, redis: &[String], prefix: Option<&str>) -> Result<Target, String> {
    if !redis.is_empty() {
        let endpoints = if redis.len() == 1 {
            RedisEndpoints::Single(redis[0].clone())
        } else {
            RedisEndpoints::Cluster(redis.to_vec())
        };
        return Ok(Target {
            endpoints,
            keys: Keys::new(prefix.unwrap_or("portcullis")),
        });
    }
    let src = crate::config::load_file(config).map_err(|e| e.to_string())?;
    let c = src.config.cluster.clone().ok_or_else(|| {
        format!(
            "{}: no `cluster` block; give the Redis with --redis",
            config.display()
        )
    })?;
    Ok(Target {
        endpoints: c.redis,
        keys: Keys::new(prefix.unwrap_or(&c.key_prefix)),
    })
}

/// `HOST:PORT` to the addresses it names.
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("`{addr}`: {e}"))?
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(format!("`{addr}` resolves to no address"));
    }
    Ok(out)
}

/// Register (`ttl` 0: no TTL) or, with `remove`, deregister each address. Returns one
/// line per address.
pub fn run(
    t: &Target,
    upstream: &str,
    addrs: &[SocketAddr],
    weight: u32,
    ttl: Duration,
    remove: bool,
) -> Result<Vec<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let link = Link::new(
            t.endpoints.clone(),
            Duration::from_secs(3),
            Duration::from_millis(100),
            Duration::from_secs(1),
        );
        let by = format!("portcullis-cli@{}", super::hostname());
        let mut pipe = redis::pipe();
        for addr in addrs {
            let op = if remove {
                Op::Deregister {
                    upstream: upstream.to_string(),
                    addr: *addr,
                }
            } else {
                Op::Register {
                    upstream: upstream.to_string(),
                    addr: *addr,
                    weight,
                    ttl_ms: ttl.as_millis() as u64,
                }
            };
            op.add_to(&mut pipe, &t.keys.registry(upstream), &by);
        }
        // the ops' replies are ignored; a PING confirms the round trip
        pipe.cmd("PING");
        let _: Vec<redis::Value> = link.query(&pipe).await.map_err(|e| e.to_string())?;
        Ok(addrs
            .iter()
            .map(|a| {
                if remove {
                    format!("deregistered {a} from upstream `{upstream}`")
                } else if ttl.is_zero() {
                    format!("registered {a} in upstream `{upstream}` (weight {weight}, no TTL)")
                } else {
                    format!(
                        "registered {a} in upstream `{upstream}` (weight {weight}, TTL {} ms: \
                         run again before it lapses)",
                        ttl.as_millis()
                    )
                }
            })
            .collect())
    })
}
