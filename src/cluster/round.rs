//! One sync round, in named steps: take a batch of queued changes, send one pipeline
//! (epoch, changes, announcement, reads), read the reply, then apply what it says to the
//! connection state, the members, the registry and the cache.

use super::{members, purge, registry, value, Fleet, Host, Op, Settings, MAX_BATCH};
use crate::cache::purge::Target;
use crate::redis_link::LinkError;
use crate::snapshot::Snapshot;
use purge::StreamId;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use super::metrics::FLEET_METRICS;
use super::unix_ms;

/// What a round took from the state before talking to Redis.
struct Batch {
    ops: Vec<Op>,
    /// Purge-log position the read starts after.
    from: StreamId,
    /// No epoch seen yet: this process's first successful round.
    first_contact: bool,
    hash: String,
    /// Queued changes left for the next round.
    left: usize,
}

/// What Redis answered, read.
struct Reply {
    epoch: String,
    /// Redis time (unix ms) of the announcement.
    now: u64,
    prev_card: Option<String>,
    members: Vec<(String, String)>,
    seen: Vec<(String, String)>,
    registries: Vec<BTreeMap<SocketAddr, registry::Entry>>,
    maxdel: StreamId,
    purges: Vec<purge::Entry>,
}

fn bad(what: &str) -> LinkError {
    LinkError::Failed(format!("unexpected reply from Redis ({what})"))
}

impl Fleet {
    /// One sync round. `Ok(true)`: more is waiting (run the next round at once).
    pub(super) async fn round(&self, rt: &dyn Host, s: &Settings) -> Result<bool, LinkError> {
        // nothing is taken from the queue while no connection can be had
        s.link.get().await?;
        let snap = rt.snapshot();
        let batch = self.take_batch(&snap);
        let card = self.card(rt, &snap, s, &batch.hash, batch.left + batch.ops.len());
        let names: Vec<String> = snap.upstreams.keys().cloned().collect();
        let pipe = self.pipeline(s, &batch, &card, &names);
        let t0 = unix_ms();
        let values: Vec<redis::Value> = match s.link.query(&pipe).await {
            Ok(v) => v,
            Err(e) => {
                self.requeue(batch.ops);
                return Err(e);
            }
        };
        let t1 = unix_ms();
        FLEET_METRICS
            .pending
            .set(self.state.lock().pending.len() as i64);
        let reply = read_reply(&values, names.len())?;
        let (reseed, grace) = self.absorb(s, &batch, &reply, (t0 + t1) / 2);
        FLEET_METRICS.connected.set(1);

        let mut again = batch.left > 0;
        if reseed {
            // this round read an empty registry: apply nothing, write back what we knew
            self.requeue(reseed_ops(&snap));
            again = true;
        } else {
            self.apply_registry(&snap, &names, reply.registries, reply.now, grace)
                .await;
        }
        if !batch.first_contact {
            again |= self.apply_purges(batch.from, reply.maxdel, &reply.purges, reseed);
        }
        Ok(again)
    }

    fn take_batch(&self, snap: &Snapshot) -> Batch {
        let mut st = self.state.lock();
        let n = st.pending.len().min(MAX_BATCH);
        let ops: Vec<Op> = st.pending.drain(..n).collect();
        let hash = match &st.hash {
            Some((g, h)) if *g == snap.generation => h.clone(),
            _ => {
                let h = members::config_hash(&snap.config_text);
                st.hash = Some((snap.generation, h.clone()));
                h
            }
        };
        Batch {
            ops,
            from: st.cursor.unwrap_or_default(),
            first_contact: st.epoch.is_none(),
            hash,
            left: st.pending.len(),
        }
    }

    /// Epoch, the queued changes, the announcement, then the reads, in one pipeline.
    fn pipeline(&self, s: &Settings, b: &Batch, card: &Value, names: &[String]) -> redis::Pipeline {
        let keys = &s.keys;
        let mut pipe = redis::pipe();
        // a fresh value each time: a restarted Redis must get an epoch never seen before
        pipe.cmd("SET")
            .arg(keys.epoch())
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg("NX")
            .ignore();
        pipe.cmd("GET").arg(keys.epoch());
        for op in &b.ops {
            match op {
                Op::Registry(r) => r.add_to(&mut pipe, &keys.registry(r.upstream()), &s.id),
                Op::Purge(p) => p.add_to(
                    &mut pipe,
                    &keys.purges(),
                    s.cfg.purge_log,
                    &self.incarnation,
                    &s.id,
                ),
            }
        }
        pipe.cmd("EVAL")
            .arg(members::ANNOUNCE_SCRIPT)
            .arg(2)
            .arg(keys.members())
            .arg(keys.members_seen())
            .arg(&s.id)
            .arg(card.to_string())
            .arg(s.cfg.member_ttl.get().as_millis() as u64);
        pipe.cmd("HGETALL").arg(keys.members());
        pipe.cmd("ZRANGE")
            .arg(keys.members_seen())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        for n in names {
            pipe.cmd("HGETALL").arg(keys.registry(n));
        }
        pipe.cmd("EVAL")
            .arg(purge::READ_SCRIPT)
            .arg(1)
            .arg(keys.purges())
            .arg(b.from.to_string())
            .arg(purge::READ_COUNT);
        pipe
    }

    /// Connection state, epoch, clock, duplicate ids and members from one reply. Returns
    /// (Redis lost its data: re-publish, the reconnect grace).
    fn absorb(&self, s: &Settings, b: &Batch, r: &Reply, local_mid: u64) -> (bool, Option<u64>) {
        let mut st = self.state.lock();
        st.offset_ms = r.now as i64 - local_mid as i64;
        if !st.ever_connected {
            log::info!(
                "cluster: connected to Redis as `{}` ({} queued operations written)",
                s.id,
                b.ops.len()
            );
        } else if !st.connected {
            let away = st
                .outage_since_unix_ms
                .map_or(0, |t| unix_ms().saturating_sub(t));
            log::info!(
                "cluster: Redis reachable again after {:.1} s; {} queued operations written, \
                 registrations resynchronised",
                away as f64 / 1000.0,
                b.ops.len()
            );
            st.grace_from = Some(r.now);
        }
        let epoch_changed = st.epoch.as_deref().is_some_and(|e| e != r.epoch);
        if epoch_changed {
            log::warn!(
                "cluster: Redis lost the fleet's data (restarted empty or replaced); \
                 re-publishing this instance's registrations and reading the new purge log \
                 from its start"
            );
            st.grace_from = Some(r.now);
            st.cursor = Some(StreamId(0, 0));
        }
        if b.first_contact {
            // purges made before this process started cannot concern its cache
            let start = (self.started_unix_ms as i64 + st.offset_ms).max(0) as u64;
            st.cursor = Some(StreamId(start, 0));
        }
        st.epoch = Some(r.epoch.clone());
        st.connected = true;
        st.ever_connected = true;
        st.outage_since_unix_ms = None;
        st.last_error = None;
        st.last_ok_unix_ms = Some(unix_ms());
        if let Some(prev) = r
            .prev_card
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
        {
            let theirs = prev.get("incarnation").and_then(Value::as_str);
            if st.announced && theirs != Some(self.incarnation.as_str()) && !st.duplicate_id {
                st.duplicate_id = true;
                log::warn!(
                    "cluster: another process announces itself as `{}` too: give every \
                     instance its own cluster.instance_id",
                    s.id
                );
            }
        }
        st.announced = true;
        st.members = live_members(r, s.cfg.member_ttl.get().as_millis() as u64);
        FLEET_METRICS.members.set(st.members.len() as i64);
        FLEET_METRICS
            .config_drift
            .set(members::drift(&st.members).1 as i64);
        (epoch_changed, st.grace_from)
    }

    /// Apply the purge log's new entries (not our own). Returns whether more are waiting.
    fn apply_purges(
        &self,
        from: StreamId,
        maxdel: StreamId,
        entries: &[purge::Entry],
        reseed: bool,
    ) -> bool {
        let mut cursor = from;
        if maxdel > from {
            log::warn!(
                "cluster: the purge log was trimmed past this instance's position ({from}); \
                 purging the whole cache, since what was missed cannot be known"
            );
            if let Ok(n) = crate::cache::purge::purge(&Target::All) {
                log::info!("cluster: full purge removed {n} entries");
            }
            FLEET_METRICS.purges.with_label_values(&["full"]).inc();
        }
        for e in entries {
            cursor = cursor.max(e.id);
            if e.origin == self.incarnation {
                continue;
            }
            match &e.target {
                Some(t) => match crate::cache::purge::purge(t) {
                    Ok(n) => {
                        FLEET_METRICS.purges.with_label_values(&["applied"]).inc();
                        log::info!(
                            "cluster: purge {t:?} from `{}`: {n} entries removed",
                            e.instance
                        );
                    }
                    Err(err) => log::warn!(
                        "cluster: purge {t:?} from `{}` not applied: {err}",
                        e.instance
                    ),
                },
                None => log::warn!(
                    "cluster: purge-log entry {} from `{}` is unreadable; skipped",
                    e.id,
                    e.instance
                ),
            }
        }
        // a reseed in this round reset the cursor to read the new log from its start
        if !reseed {
            self.state.lock().cursor = Some(cursor);
        }
        entries.len() >= purge::READ_COUNT
    }
}

fn read_reply(values: &[redis::Value], upstreams: usize) -> Result<Reply, LinkError> {
    let mut it = values.iter();
    let epoch = it
        .next()
        .and_then(value::text)
        .ok_or_else(|| bad("epoch"))?;
    let announce = it
        .next()
        .and_then(value::items)
        .ok_or_else(|| bad("announce"))?;
    let now = announce
        .first()
        .and_then(value::int)
        .ok_or_else(|| bad("time"))?
        .max(0) as u64;
    let prev_card = announce.get(1).and_then(value::text);
    let members = value::pairs(it.next().ok_or_else(|| bad("members"))?);
    let seen = value::pairs(it.next().ok_or_else(|| bad("members seen"))?);
    let mut registries = Vec::with_capacity(upstreams);
    for _ in 0..upstreams {
        registries.push(registry::parse_hash(value::pairs(
            it.next().ok_or_else(|| bad("registry"))?,
        )));
    }
    let (maxdel, purges) = it
        .next()
        .and_then(purge::parse_read)
        .ok_or_else(|| bad("purge log"))?;
    Ok(Reply {
        epoch,
        now,
        prev_card,
        members,
        seen,
        registries,
        maxdel,
        purges,
    })
}

/// Members announced within `ttl` of the reply's time, by id.
fn live_members(r: &Reply, ttl: u64) -> Vec<members::Member> {
    let seen: HashMap<&str, u64> = r
        .seen
        .iter()
        .filter_map(|(id, score)| Some((id.as_str(), score.parse::<f64>().ok()? as u64)))
        .collect();
    let mut list: Vec<members::Member> = r
        .members
        .iter()
        .filter_map(|(id, card)| {
            let seen_ms = *seen.get(id.as_str())?;
            if r.now.saturating_sub(seen_ms) > ttl {
                return None;
            }
            Some(members::Member {
                card: serde_json::from_str(card).ok()?,
                id: id.clone(),
                seen_ms,
            })
        })
        .collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    list
}

/// Everything this instance knows of the registry, to write back to a Redis that lost it.
fn reseed_ops(snap: &Snapshot) -> Vec<Op> {
    let mut ops = Vec::new();
    for (name, up) in &snap.upstreams {
        for (addr, r) in up.membership.registered() {
            ops.push(Op::Registry(registry::Op::Seed {
                upstream: name.clone(),
                addr,
                weight: r.weight,
                ttl_ms: r.ttl.map_or(0, |t| t.as_millis() as u64),
            }));
        }
        for addr in up.membership.disabled() {
            ops.push(Op::Registry(registry::Op::SeedDrain {
                upstream: name.clone(),
                addr,
            }));
        }
    }
    ops
}
