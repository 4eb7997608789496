//! A bounded, in-memory [`Storage`] for pingora-cache.
//!
//! [`MemoryStorage`] holds complete responses (serialized [`CacheMeta`] plus body) in memory,
//! bounded by **bytes**, and evicts with its own admission and eviction policy, so it is meant to
//! be enabled **without** a pingora eviction manager:
//!
//! ```ignore
//! static STORAGE: LazyLock<MemoryStorage> = LazyLock::new(|| MemoryStorage::new(256 << 20));
//! session.cache.enable(&*STORAGE, None, Some(&*PREDICTOR), Some(&*LOCK), None);
//! session.cache.set_max_file_size_bytes(STORAGE.max_object_bytes());
//! ```
//!
//! # Weight
//!
//! Every entry weighs `serialized meta + body + 2 × primary key + ENTRY_OVERHEAD` bytes
//! ([`ENTRY_OVERHEAD`] approximates the map slot, queue node, index node and allocation headers;
//! the primary key is counted twice because the entry and the prefix index each hold a copy).
//! [`MemoryStorage::bytes_stored`] is the sum of those weights and never exceeds `max_bytes`.
//! Bodies still being filled and bodies of purged or evicted entries that a hit is still
//! streaming are not counted: they are bounded by the number of concurrent requests.
//!
//! # Admission
//!
//! An object heavier than [`MemoryStorage::max_object_bytes`] (by default `max_bytes / 8`) is
//! never stored: the miss handler stops buffering as soon as the weight passes that limit and
//! `finish` reports `MissFinishType::Created(0)`, so the response is still served, just not cached.
//!
//! # Eviction: TinyLFU admission + S3-FIFO eviction, weighted by bytes
//!
//! This is the design of `TinyUFO` (Cloudflare's `tinyufo` crate), reimplemented here because
//! `TinyUFO` 0.9.1 weighs items with a `u16` (too small for byte weights), keeps stale queue
//! nodes after `remove` that are later double-counted, and has an open race between concurrent
//! `put`s that underflows its weight counters (pingora issue #768, an `add with overflow`
//! panic in debug builds).
//!
//! * New entries enter a *small* FIFO queue (target 10 % of `max_bytes`). Entries read at least
//!   twice while in it are promoted to the *main* FIFO; others are evicted from it early, and
//!   their key hash is remembered in a bounded *ghost* queue.
//! * A new entry whose key is in the ghost queue goes straight to the main queue.
//! * The main queue is a CLOCK: an entry read since it was last examined gets a second chance
//!   (its counter, capped at 3, is decremented and it is requeued), otherwise it is evicted.
//! * Before the first victim is evicted for a new entry (not a ghost hit, not a replacement),
//!   the two are compared in a count-min frequency sketch (4 rows of 4-bit counters, bumped on
//!   every lookup, halved periodically): if the victim is more popular, the new entry is
//!   rejected, nothing is evicted, and the victim goes back to the tail of its queue.
//!
//! # Concurrency
//!
//! Lookups take only a read lock on one of 64 shards and bump atomic counters; they never touch
//! the policy [`Mutex`]. Everything that changes the contents (a fill's `finish`, `update_meta`,
//! `expire`, purges, evictions) is serialised by that one mutex, held for short, non-async
//! sections; memory of removed entries is freed after it is released. A fill is invisible until
//! its `finish` publishes the whole entry ([`Storage::support_streaming_partial_write`] is false),
//! so readers keep getting the previous version (or a miss, and wait on the cache lock).
//!
//! # Purges
//!
//! * [`Storage::purge`] removes the entry of one exact key (primary + variance).
//! * [`MemoryStorage::purge_primary`] removes every variant of one primary key.
//! * [`MemoryStorage::purge_prefix`] removes every entry whose primary key *bytes* (the
//!   `primary` given to [`CacheKey::new`]) start with a prefix; the key layout decides what a
//!   prefix means (e.g. a primary of `"/api/users/1?x=2"` makes `"/api/"` purge a path subtree).
//! * [`MemoryStorage::purge_all`] empties the cache.
//!
//! A fill that was already in flight (its miss handler created) when a matching purge ran is
//! not admitted when it finishes, so a purge is not undone by a response fetched before it.
//!
//! Keys: entries are keyed by the combined hash of primary and variance, like pingora's own
//! storages; the `user_tag` is not part of the identity.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use ahash::RandomState;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use pingora_cache::eviction::CacheEntryKey;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};

/// Fixed bytes added to every entry's weight for bookkeeping (map slot, queue node, index node,
/// `Arc` and allocation headers).
pub const ENTRY_OVERHEAD: usize = 256;

/// Objects heavier than `max_bytes / DEFAULT_MAX_OBJECT_DIVISOR` are not admitted by
/// [`MemoryStorage::new`].
pub const DEFAULT_MAX_OBJECT_DIVISOR: usize = 8;

/// Number of read shards.
const SHARD_COUNT: usize = 64;
/// Largest chunk a hit handler returns from one `read_body` (zero-copy slices of the body).
const READ_CHUNK: usize = 64 * 1024;
/// Per-entry access counter cap (S3-FIFO uses 2 bits).
const FREQ_MAX: u8 = 3;
/// Reads while in the small queue needed to be promoted to the main queue.
const PROMOTE_THRESHOLD: u8 = 2;
/// Share of `max_bytes` targeted by the small queue, in percent.
const SMALL_QUEUE_PERCENT: usize = 10;
/// Minimum number of evicted keys the ghost queue remembers.
const MIN_GHOST: usize = 1024;
/// Stale queue nodes tolerated before the queues are compacted (also needs stale > live).
const MIN_STALE_FOR_COMPACTION: usize = 1024;
/// Purges remembered to reject fills that were in flight when the purge ran.
const PURGE_LOG_LEN: usize = 1024;
/// Count-min sketch rows.
const SKETCH_ROWS: usize = 4;
/// Saturation value of a sketch counter (4 bits of information).
const SKETCH_MAX: u8 = 15;

/// The weight of an entry with these parts; see the module documentation.
fn entry_weight(primary_len: usize, meta_len: usize, body_len: usize) -> usize {
    ENTRY_OVERHEAD
        .saturating_add(primary_len.saturating_mul(2))
        .saturating_add(meta_len)
        .saturating_add(body_len)
}

/// A 64-bit fingerprint of a key hash (the key is a blake2b digest, so any 8 bytes will do).
fn fingerprint(key: &HashBinary) -> u64 {
    u64::from_le_bytes([
        key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
    ])
}

/// One stored response. Immutable once published, except for the access counter: a metadata
/// update publishes a new `Entry` with the same `id` and body.
struct Entry {
    /// Identity of this generation of the key, for queue nodes (`update_meta` keeps it).
    id: u64,
    key: HashBinary,
    primary: Box<[u8]>,
    meta_internal: Box<[u8]>,
    meta_header: Box<[u8]>,
    body: Bytes,
    weight: usize,
    /// S3-FIFO access counter, `0..=FREQ_MAX`, bumped by lookups without locking.
    freq: AtomicU8,
}

impl Entry {
    fn touch(&self) {
        let f = self.freq.load(Ordering::Relaxed);
        if f < FREQ_MAX {
            // A lost increment under a race only makes the counter approximate.
            self.freq.store(f + 1, Ordering::Relaxed);
        }
    }

    /// A copy with new serialized meta (same identity, body and access count).
    fn with_meta(&self, meta_internal: Vec<u8>, meta_header: Vec<u8>) -> Entry {
        let weight = entry_weight(
            self.primary.len(),
            meta_internal.len().saturating_add(meta_header.len()),
            self.body.len(),
        );
        Entry {
            id: self.id,
            key: self.key,
            primary: self.primary.clone(),
            meta_internal: meta_internal.into_boxed_slice(),
            meta_header: meta_header.into_boxed_slice(),
            body: self.body.clone(),
            weight,
            freq: AtomicU8::new(self.freq.load(Ordering::Relaxed)),
        }
    }

    fn meta(&self) -> Result<CacheMeta> {
        CacheMeta::deserialize(&self.meta_internal, &self.meta_header)
    }
}

mod eviction;
mod handlers;
#[cfg(test)]
mod tests;

use eviction::{Admission, FrequencySketch, Node, Policy, PurgeScope, Queue, Record};
use handlers::Fill;
pub use handlers::{MemoryHitHandler, MemoryMissHandler};

type Shard = RwLock<HashMap<HashBinary, Arc<Entry>, RandomState>>;

/// A bounded in-memory cache storage: TinyLFU admission, S3-FIFO eviction, weighted by bytes,
/// with purge by key, by primary key and by primary-key prefix. See the module documentation.
///
/// [`Storage`] methods take `&'static self`: keep it in a `static` (`std::sync::LazyLock`) or
/// leak it.
pub struct MemoryStorage {
    shards: [Shard; SHARD_COUNT],
    policy: Mutex<Policy>,
    sketch: FrequencySketch,
    max_bytes: usize,
    max_object_bytes: usize,
    small_target: usize,
    /// Admissions between two halvings of the sketch.
    aging_period: usize,
    purge_generation: AtomicU64,
    bytes: AtomicUsize,
    entries: AtomicUsize,
    evictions: AtomicU64,
    rejections: AtomicU64,
}

impl fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("max_bytes", &self.max_bytes)
            .field("max_object_bytes", &self.max_object_bytes)
            .field("bytes_stored", &self.bytes_stored())
            .field("entries", &self.entries())
            .field("evictions", &self.evictions())
            .field("rejections", &self.rejections())
            .finish()
    }
}

impl MemoryStorage {
    /// A storage holding at most `max_bytes` (see the module documentation for how entries are
    /// weighed); objects heavier than `max_bytes / 8` are not admitted.
    pub fn new(max_bytes: usize) -> Self {
        Self::with_max_object_bytes(max_bytes, max_bytes / DEFAULT_MAX_OBJECT_DIVISOR)
    }

    /// Like [`MemoryStorage::new`] with an explicit per-object limit (capped at `max_bytes`).
    pub fn with_max_object_bytes(max_bytes: usize, max_object_bytes: usize) -> Self {
        // Sized for objects of about 4 KiB on average.
        let sketch_width = (max_bytes / 4096).clamp(256, 1 << 20);
        let sketch = FrequencySketch::new(sketch_width);
        let aging_period = sketch.width;
        MemoryStorage {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::with_hasher(RandomState::new()))),
            policy: Mutex::new(Policy::new()),
            sketch,
            max_bytes,
            max_object_bytes: max_object_bytes.min(max_bytes),
            small_target: max_bytes / 100 * SMALL_QUEUE_PERCENT,
            aging_period,
            purge_generation: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
        }
    }

    /// The byte bound given at construction.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The heaviest object that is admitted; suitable for `HttpCache::set_max_file_size_bytes`.
    pub fn max_object_bytes(&self) -> usize {
        self.max_object_bytes
    }

    /// Sum of the weights of the stored entries (always `<= max_bytes`).
    pub fn bytes_stored(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of stored entries (each variant of a primary key counts).
    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Entries removed to make room since start (purges are not counted).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Finished fills that were not stored: too heavy, refused by the frequency admission
    /// filter, or covered by a purge that ran while they were in flight.
    pub fn rejections(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }

    /// Remove every entry whose primary key bytes start with `prefix`; returns how many entries
    /// (variants included) were removed. An empty prefix removes everything.
    pub fn purge_prefix(&self, prefix: &[u8]) -> usize {
        self.purge_matching(PurgeScope::Prefix(prefix.into()), |p| {
            p.keys_with_prefix(prefix)
        })
    }

    /// Remove every variant stored under exactly this primary key; returns how many.
    pub fn purge_primary(&self, primary: &[u8]) -> usize {
        self.purge_matching(PurgeScope::Primary(primary.into()), |p| {
            p.keys_of_primary(primary)
        })
    }

    /// Remove everything; returns how many entries were removed.
    pub fn purge_all(&self) -> usize {
        let mut garbage: Vec<HashMap<HashBinary, Arc<Entry>, RandomState>> =
            Vec::with_capacity(SHARD_COUNT);
        let removed = {
            let mut p = self.policy.lock();
            self.log_purge_locked(&mut p, PurgeScope::All);
            let removed = p.records.len();
            p.records.clear();
            p.small.clear();
            p.main.clear();
            p.small_bytes = 0;
            p.main_bytes = 0;
            p.stale_nodes = 0;
            p.ghost.clear();
            p.index.clear();
            for shard in &self.shards {
                garbage.push(std::mem::take(&mut *shard.write()));
            }
            self.publish_locked(&p);
            removed
        };
        drop(garbage);
        removed
    }

    fn shard(&self, key: &HashBinary) -> &Shard {
        &self.shards[usize::from(key[15]) % SHARD_COUNT]
    }

    fn lookup_entry(&self, key: &HashBinary) -> Option<Arc<Entry>> {
        self.shard(key).read().get(key).cloned()
    }

    fn publish_locked(&self, p: &Policy) {
        self.bytes.store(p.total_bytes(), Ordering::Relaxed);
        self.entries.store(p.records.len(), Ordering::Relaxed);
    }

    fn log_purge_locked(&self, p: &mut Policy, scope: PurgeScope) {
        p.purge_generation = p.purge_generation.wrapping_add(1);
        let generation = p.purge_generation;
        p.purge_log.push_back((generation, scope));
        while p.purge_log.len() > PURGE_LOG_LEN {
            p.purge_log.pop_front();
        }
        self.purge_generation.store(generation, Ordering::Release);
    }

    fn purge_matching(
        &self,
        scope: PurgeScope,
        select: impl FnOnce(&Policy) -> Vec<HashBinary>,
    ) -> usize {
        let mut garbage = Vec::new();
        {
            let mut p = self.policy.lock();
            self.log_purge_locked(&mut p, scope);
            for key in select(&p) {
                if let Some(entry) = self.remove_locked(&mut p, &key, false) {
                    garbage.push(entry);
                }
            }
            p.maybe_compact();
            self.publish_locked(&p);
        }
        garbage.len()
    }

    /// Remove `key` from the policy, the index and its shard. `node_popped` says whether its
    /// queue node was already taken off the queue (eviction) or is left behind stale.
    fn remove_locked(
        &self,
        p: &mut Policy,
        key: &HashBinary,
        node_popped: bool,
    ) -> Option<Arc<Entry>> {
        let record = p.records.remove(key)?;
        p.sub_bytes(record.queue, record.entry.weight);
        if !node_popped {
            p.stale_nodes = p.stale_nodes.saturating_add(1);
        }
        p.index_remove(&record.entry.primary, key);
        let mut shard = self.shard(key).write();
        if shard.get(key).is_some_and(|e| e.id == record.entry.id) {
            shard.remove(key);
        }
        Some(record.entry)
    }

    /// Evict one victim; returns false when there is nothing left to evict.
    fn evict_one_locked(&self, p: &mut Policy, garbage: &mut Vec<Arc<Entry>>) -> bool {
        let Some((node, queue)) = p.pick_victim(self.small_target) else {
            return false;
        };
        self.evict_node_locked(p, node, queue, garbage);
        true
    }

    fn evict_node_locked(
        &self,
        p: &mut Policy,
        node: Node,
        queue: Queue,
        garbage: &mut Vec<Arc<Entry>>,
    ) {
        if let Some(entry) = self.remove_locked(p, &node.key, true) {
            if queue == Queue::Small {
                let cap = p.records.len().max(MIN_GHOST);
                p.ghost.insert(fingerprint(&node.key), cap);
            }
            self.evictions.fetch_add(1, Ordering::Relaxed);
            garbage.push(entry);
        }
    }

    /// Swap the stored entry of `entry.key` (same id) for `entry`, then evict if it grew.
    /// Returns whether the new entry is still stored afterwards.
    fn replace_locked(
        &self,
        p: &mut Policy,
        entry: Arc<Entry>,
        garbage: &mut Vec<Arc<Entry>>,
    ) -> bool {
        let key = entry.key;
        let Some(record) = p.records.get_mut(&key) else {
            return false;
        };
        let old = std::mem::replace(&mut record.entry, entry.clone());
        let queue = record.queue;
        p.sub_bytes(queue, old.weight);
        p.add_bytes(queue, entry.weight);
        if old.primary != entry.primary {
            p.index_remove(&old.primary, &key);
            p.index_add(&entry.primary, key);
        }
        if let Some(previous) = self.shard(&key).write().insert(key, entry.clone()) {
            garbage.push(previous);
        }
        garbage.push(old);
        while p.total_bytes() > self.max_bytes {
            if !self.evict_one_locked(p, garbage) {
                break;
            }
        }
        p.records
            .get(&key)
            .is_some_and(|r| Arc::ptr_eq(&r.entry, &entry))
    }

    /// Store a finished fill, evicting as needed; see the module documentation for the policy.
    fn admit(&self, fill: Fill) -> Admission {
        let weight = entry_weight(
            fill.primary.len(),
            fill.meta_internal
                .len()
                .saturating_add(fill.meta_header.len()),
            fill.body.len(),
        );
        if weight > self.max_object_bytes {
            self.rejections.fetch_add(1, Ordering::Relaxed);
            return Admission::Rejected;
        }
        let mut garbage = Vec::new();
        let admission = {
            let mut p = self.policy.lock();
            p.admissions_since_aging += 1;
            if p.admissions_since_aging >= self.aging_period {
                p.admissions_since_aging = 0;
                self.sketch.halve();
            }
            let admission = if p.purged_since(fill.purge_generation, &fill.key, &fill.primary) {
                Admission::Rejected
            } else if let Some(existing) = p.records.get(&fill.key).map(|r| r.entry.clone()) {
                // A refill of a stored key: keep its place in the queues and its access count.
                let entry = Arc::new(Entry {
                    id: existing.id,
                    key: fill.key,
                    primary: fill.primary,
                    meta_internal: fill.meta_internal,
                    meta_header: fill.meta_header,
                    body: fill.body,
                    weight,
                    freq: AtomicU8::new(existing.freq.load(Ordering::Relaxed)),
                });
                if self.replace_locked(&mut p, entry, &mut garbage) {
                    Admission::Stored(weight)
                } else {
                    Admission::Rejected
                }
            } else {
                self.insert_new_locked(&mut p, fill, weight, &mut garbage)
            };
            self.publish_locked(&p);
            admission
        };
        if matches!(admission, Admission::Rejected) {
            self.rejections.fetch_add(1, Ordering::Relaxed);
        }
        drop(garbage);
        admission
    }

    fn insert_new_locked(
        &self,
        p: &mut Policy,
        fill: Fill,
        weight: usize,
        garbage: &mut Vec<Arc<Entry>>,
    ) -> Admission {
        let ghost_hit = p.ghost.take(fingerprint(&fill.key));
        let mut first_victim = !ghost_hit;
        while p.total_bytes().saturating_add(weight) > self.max_bytes {
            let Some((node, queue)) = p.pick_victim(self.small_target) else {
                return Admission::Rejected;
            };
            if first_victim {
                first_victim = false;
                if self.sketch.estimate(&node.key) > self.sketch.estimate(&fill.key) {
                    // TinyLFU: the victim is more popular than the newcomer; keep the victim.
                    p.requeue(node, queue);
                    return Admission::Rejected;
                }
            }
            self.evict_node_locked(p, node, queue, garbage);
        }
        let id = p.next_id;
        p.next_id = p.next_id.wrapping_add(1);
        let entry = Arc::new(Entry {
            id,
            key: fill.key,
            primary: fill.primary,
            meta_internal: fill.meta_internal,
            meta_header: fill.meta_header,
            body: fill.body,
            weight,
            freq: AtomicU8::new(0),
        });
        let queue = if ghost_hit { Queue::Main } else { Queue::Small };
        p.records.insert(
            fill.key,
            Record {
                entry: entry.clone(),
                queue,
            },
        );
        p.push_node(queue, Node { key: fill.key, id });
        p.add_bytes(queue, weight);
        p.index_add(&entry.primary, fill.key);
        if let Some(previous) = self.shard(&fill.key).write().insert(fill.key, entry) {
            garbage.push(previous);
        }
        Admission::Stored(weight)
    }

    /// The stored key a purge target names, or `None` for an identified target (this storage
    /// hands out no entry IDs, so an identified entry cannot be one of its own).
    fn target_key(target: PurgeTarget<'_>) -> Option<HashBinary> {
        match target {
            PurgeTarget::Exact(CacheEntryKey::Identified { .. }) => None,
            _ => Some(target.key().combined_bin()),
        }
    }

    /// Rewrite the meta of the entry under `key` with `edit`; `Ok(false)` if there is none.
    fn edit_meta(&self, key: &HashBinary, edit: impl FnOnce(&mut CacheMeta)) -> Result<bool> {
        let mut garbage = Vec::new();
        let stored = {
            let mut p = self.policy.lock();
            let Some(current) = p.records.get(key).map(|r| r.entry.clone()) else {
                return Ok(false);
            };
            let mut meta = current.meta()?;
            edit(&mut meta);
            let (internal, header) = meta.serialize()?;
            let entry = Arc::new(current.with_meta(internal, header));
            let stored = self.replace_locked(&mut p, entry, &mut garbage);
            self.publish_locked(&p);
            stored
        };
        drop(garbage);
        Ok(stored)
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined_bin();
        self.sketch.increment(&hash);
        let Some(entry) = self.lookup_entry(&hash) else {
            return Ok(None);
        };
        entry.touch();
        let meta = entry.meta()?;
        let hit = MemoryHitHandler {
            body: entry.body.clone(),
            pos: 0,
            end: entry.body.len(),
            weight: entry.weight,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        // Read before the body arrives: a purge after this point rejects this fill.
        let purge_generation = self.purge_generation.load(Ordering::Acquire);
        let (internal, header) = meta.serialize()?;
        let primary: Box<[u8]> = key.primary_key().into();
        let base_weight = entry_weight(
            primary.len(),
            internal.len().saturating_add(header.len()),
            0,
        );
        Ok(Box::new(MemoryMissHandler {
            storage: self,
            key: key.combined_bin(),
            primary,
            meta_internal: internal.into_boxed_slice(),
            meta_header: header.into_boxed_slice(),
            chunks: Vec::new(),
            body_len: 0,
            base_weight,
            purge_generation,
            oversized: base_weight > self.max_object_bytes,
            eof: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let Some(key) = Self::target_key(target) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let removed = {
            let mut p = self.policy.lock();
            if matches!(purge_type, PurgeType::Invalidation) {
                self.log_purge_locked(&mut p, PurgeScope::Key(key));
            }
            let removed = self.remove_locked(&mut p, &key, false);
            p.maybe_compact();
            self.publish_locked(&p);
            removed
        };
        match removed {
            Some(_entry) => {
                if matches!(purge_type, PurgeType::Eviction) {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                Ok(PurgeOutcome::Purged(None))
            }
            None => Ok(PurgeOutcome::NotFound),
        }
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let Some(key) = Self::target_key(target) else {
            return Ok(PurgeOutcome::NotFound);
        };
        let now = SystemTime::now();
        if self.edit_meta(&key, |meta| meta.expire_at(now))? {
            Ok(PurgeOutcome::Expired)
        } else {
            Ok(PurgeOutcome::NotFound)
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let hash = key.combined_bin();
        let (internal, header) = meta.serialize()?;
        let mut garbage = Vec::new();
        let updated = {
            let mut p = self.policy.lock();
            let Some(current) = p.records.get(&hash).map(|r| r.entry.clone()) else {
                return Ok(false);
            };
            let entry = Arc::new(current.with_meta(internal, header));
            let updated = self.replace_locked(&mut p, entry, &mut garbage);
            self.publish_locked(&p);
            updated
        };
        drop(garbage);
        Ok(updated)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Compile-time check that the storage can be shared as pingora requires.
const _: fn() = || {
    fn assert_bounds<T: Send + Sync + 'static>() {}
    assert_bounds::<MemoryStorage>();
};
