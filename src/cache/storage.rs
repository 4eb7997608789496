//! A bounded, in-memory [`Storage`] for pingora-cache.
//!
//! [`MemoryStorage`] holds complete responses (serialized [`CacheMeta`] plus body) in memory,
//! bounded by **bytes**, and evicts with its own admission and eviction policy, so it is meant to
//! be enabled **without** a pingora eviction manager:
//!
//! ```ignore
//! static STORAGE: Lazy<MemoryStorage> = Lazy::new(|| MemoryStorage::new(256 << 20));
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

/// Count-min sketch of key popularity with 4-bit saturating counters, lock-free.
struct FrequencySketch {
    counters: Box<[AtomicU8]>,
    width: usize,
    hasher: RandomState,
}

impl FrequencySketch {
    fn new(width: usize) -> Self {
        let width = width.clamp(64, 1 << 22).next_power_of_two();
        let counters = (0..width * SKETCH_ROWS).map(|_| AtomicU8::new(0)).collect();
        FrequencySketch {
            counters,
            width,
            hasher: RandomState::new(),
        }
    }

    fn slots(&self, key: &HashBinary) -> [usize; SKETCH_ROWS] {
        // Keyed hash, so that chosen keys cannot target counters; double hashing for the rows.
        let h = self.hasher.hash_one(key);
        let h1 = h as usize;
        let h2 = ((h >> 32) as usize) | 1;
        let mask = self.width - 1;
        let mut slots = [0; SKETCH_ROWS];
        for (row, slot) in slots.iter_mut().enumerate() {
            *slot = row * self.width + (h1.wrapping_add(row.wrapping_mul(h2)) & mask);
        }
        slots
    }

    fn increment(&self, key: &HashBinary) {
        for slot in self.slots(key) {
            if let Some(c) = self.counters.get(slot) {
                let v = c.load(Ordering::Relaxed);
                if v < SKETCH_MAX {
                    c.store(v + 1, Ordering::Relaxed);
                }
            }
        }
    }

    fn estimate(&self, key: &HashBinary) -> u8 {
        self.slots(key)
            .iter()
            .filter_map(|&slot| self.counters.get(slot))
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Age all counters so that past popularity fades.
    fn halve(&self) {
        for c in self.counters.iter() {
            c.store(c.load(Ordering::Relaxed) >> 1, Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Queue {
    Small,
    Main,
}

struct Record {
    entry: Arc<Entry>,
    queue: Queue,
}

/// A queue slot; it is stale when its key is gone or now has another `id`.
#[derive(Clone, Copy)]
struct Node {
    key: HashBinary,
    id: u64,
}

/// Keys recently evicted from the small queue (S3-FIFO's ghost queue), bounded.
#[derive(Default)]
struct Ghost {
    order: VecDeque<(u64, u64)>,
    members: HashMap<u64, u64, RandomState>,
    seq: u64,
}

impl Ghost {
    fn insert(&mut self, fp: u64, cap: usize) {
        self.seq = self.seq.wrapping_add(1);
        self.members.insert(fp, self.seq);
        self.order.push_back((fp, self.seq));
        while self.order.len() > cap {
            if let Some((old, seq)) = self.order.pop_front() {
                if self.members.get(&old) == Some(&seq) {
                    self.members.remove(&old);
                }
            }
        }
    }

    /// Whether `fp` was remembered; forgets it.
    fn take(&mut self, fp: u64) -> bool {
        self.members.remove(&fp).is_some()
    }

    fn clear(&mut self) {
        self.order.clear();
        self.members.clear();
    }
}

/// What a purge covered, remembered to reject fills that were in flight when it ran.
enum PurgeScope {
    Key(HashBinary),
    Primary(Box<[u8]>),
    Prefix(Box<[u8]>),
    All,
}

impl PurgeScope {
    fn covers(&self, key: &HashBinary, primary: &[u8]) -> bool {
        match self {
            PurgeScope::Key(k) => k == key,
            PurgeScope::Primary(p) => &**p == primary,
            PurgeScope::Prefix(p) => primary.starts_with(p),
            PurgeScope::All => true,
        }
    }
}

/// Everything that changes on a write, behind the policy mutex.
struct Policy {
    records: HashMap<HashBinary, Record, RandomState>,
    small: VecDeque<Node>,
    main: VecDeque<Node>,
    small_bytes: usize,
    main_bytes: usize,
    /// Queue nodes whose record is gone or replaced (removed lazily).
    stale_nodes: usize,
    ghost: Ghost,
    /// Primary key bytes → combined keys of its stored variants.
    index: BTreeMap<Box<[u8]>, Vec<HashBinary>>,
    next_id: u64,
    admissions_since_aging: usize,
    /// Number of purges so far (mirrored in `MemoryStorage::purge_generation`).
    purge_generation: u64,
    /// The last purges, oldest first, with the generation each one created.
    purge_log: VecDeque<(u64, PurgeScope)>,
}

impl Policy {
    fn new() -> Self {
        Policy {
            records: HashMap::with_hasher(RandomState::new()),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            main_bytes: 0,
            stale_nodes: 0,
            ghost: Ghost::default(),
            index: BTreeMap::new(),
            next_id: 0,
            admissions_since_aging: 0,
            purge_generation: 0,
            purge_log: VecDeque::new(),
        }
    }

    fn total_bytes(&self) -> usize {
        self.small_bytes.saturating_add(self.main_bytes)
    }

    fn add_bytes(&mut self, queue: Queue, weight: usize) {
        match queue {
            Queue::Small => self.small_bytes = self.small_bytes.saturating_add(weight),
            Queue::Main => self.main_bytes = self.main_bytes.saturating_add(weight),
        }
    }

    fn sub_bytes(&mut self, queue: Queue, weight: usize) {
        match queue {
            Queue::Small => self.small_bytes = self.small_bytes.saturating_sub(weight),
            Queue::Main => self.main_bytes = self.main_bytes.saturating_sub(weight),
        }
    }

    fn push_node(&mut self, queue: Queue, node: Node) {
        match queue {
            Queue::Small => self.small.push_back(node),
            Queue::Main => self.main.push_back(node),
        }
    }

    fn index_add(&mut self, primary: &[u8], key: HashBinary) {
        if let Some(keys) = self.index.get_mut(primary) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        } else {
            self.index.insert(primary.into(), vec![key]);
        }
    }

    fn index_remove(&mut self, primary: &[u8], key: &HashBinary) {
        if let Some(keys) = self.index.get_mut(primary) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.index.remove(primary);
            }
        }
    }

    fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<HashBinary> {
        self.index
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(primary, _)| primary.starts_with(prefix))
            .flat_map(|(_, keys)| keys.iter().copied())
            .collect()
    }

    fn keys_of_primary(&self, primary: &[u8]) -> Vec<HashBinary> {
        self.index.get(primary).cloned().unwrap_or_default()
    }

    /// Pop the next eviction victim following S3-FIFO, promoting and requeueing on the way.
    /// The victim's record stays in place; the caller evicts it or pushes the node back.
    fn pick_victim(&mut self, small_target: usize) -> Option<(Node, Queue)> {
        // Lookups may bump counters concurrently, so bound the second chances we hand out.
        let mut budget = (self.small.len() + self.main.len())
            .saturating_mul(usize::from(FREQ_MAX) + 1)
            .saturating_add(16);
        loop {
            let from_small = !self.small.is_empty()
                && (self.small_bytes >= small_target || self.main.is_empty());
            let queue = if from_small {
                Queue::Small
            } else {
                Queue::Main
            };
            let node = match queue {
                Queue::Small => self.small.pop_front(),
                Queue::Main => self.main.pop_front(),
            }?;
            let Some(record) = self.records.get_mut(&node.key) else {
                self.stale_nodes = self.stale_nodes.saturating_sub(1);
                continue;
            };
            if record.entry.id != node.id || record.queue != queue {
                self.stale_nodes = self.stale_nodes.saturating_sub(1);
                continue;
            }
            budget = budget.saturating_sub(1);
            let freq = record.entry.freq.load(Ordering::Relaxed);
            match queue {
                Queue::Small if freq >= PROMOTE_THRESHOLD && budget > 0 => {
                    record.queue = Queue::Main;
                    let weight = record.entry.weight;
                    self.small_bytes = self.small_bytes.saturating_sub(weight);
                    self.main_bytes = self.main_bytes.saturating_add(weight);
                    self.main.push_back(node);
                }
                Queue::Main if freq > 0 && budget > 0 => {
                    record.entry.freq.store(freq - 1, Ordering::Relaxed);
                    self.main.push_back(node);
                }
                _ => return Some((node, queue)),
            }
        }
    }

    /// Give a victim returned by [`Policy::pick_victim`] another round: back to the tail of
    /// its queue (as `TinyUFO` does), so that one popular entry does not block every admission.
    fn requeue(&mut self, node: Node, queue: Queue) {
        self.push_node(queue, node);
    }

    /// Drop stale nodes once they outnumber live entries, so that churn without eviction
    /// pressure (purges, refills) cannot grow the queues without bound.
    fn maybe_compact(&mut self) {
        if self.stale_nodes < MIN_STALE_FOR_COMPACTION || self.stale_nodes <= self.records.len() {
            return;
        }
        let records = &self.records;
        let live = |node: &Node, queue: Queue| {
            records
                .get(&node.key)
                .is_some_and(|r| r.entry.id == node.id && r.queue == queue)
        };
        self.small.retain(|n| live(n, Queue::Small));
        self.main.retain(|n| live(n, Queue::Main));
        self.stale_nodes = 0;
    }

    /// Whether a fill begun at purge generation `since` must be dropped because a purge that
    /// ran meanwhile covers it.
    fn purged_since(&self, since: u64, key: &HashBinary, primary: &[u8]) -> bool {
        if self.purge_generation <= since {
            return false;
        }
        match self.purge_log.front() {
            // The log no longer reaches back to `since`: be conservative.
            Some((oldest, _)) if *oldest > since.saturating_add(1) => true,
            None => true,
            _ => self
                .purge_log
                .iter()
                .filter(|(generation, _)| *generation > since)
                .any(|(_, scope)| scope.covers(key, primary)),
        }
    }
}

/// Result of [`MemoryStorage::admit`].
enum Admission {
    Stored(usize),
    Rejected,
}

type Shard = RwLock<HashMap<HashBinary, Arc<Entry>, RandomState>>;

/// A bounded in-memory cache storage: TinyLFU admission, S3-FIFO eviction, weighted by bytes,
/// with purge by key, by primary key and by primary-key prefix. See the module documentation.
///
/// [`Storage`] methods take `&'static self`: keep it in a `static` (`once_cell::sync::Lazy`) or
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

/// A fill ready to be admitted.
struct Fill {
    key: HashBinary,
    primary: Box<[u8]>,
    meta_internal: Box<[u8]>,
    meta_header: Box<[u8]>,
    body: Bytes,
    purge_generation: u64,
}

/// Hit handler: zero-copy slices of a stored body, seekable.
pub struct MemoryHitHandler {
    body: Bytes,
    pos: usize,
    end: usize,
    weight: usize,
}

#[async_trait]
impl HandleHit for MemoryHitHandler {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let stop = self.end.min(self.pos.saturating_add(READ_CHUNK));
        let chunk = self.body.slice(self.pos..stop);
        self.pos = stop;
        Ok(Some(chunk))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        if start >= len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {len}"),
            );
        }
        let end = end.map_or(len, |e| e.min(len));
        if end < start {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek end {end} before start {start}"),
            );
        }
        self.pos = start;
        self.end = end;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Miss handler: buffers the body and publishes the whole entry on `finish`. Dropping it
/// without `finish` discards the fill.
pub struct MemoryMissHandler {
    storage: &'static MemoryStorage,
    key: HashBinary,
    primary: Box<[u8]>,
    meta_internal: Box<[u8]>,
    meta_header: Box<[u8]>,
    chunks: Vec<Bytes>,
    body_len: usize,
    /// Weight without the body.
    base_weight: usize,
    purge_generation: u64,
    oversized: bool,
    eof: bool,
}

#[async_trait]
impl HandleMiss for MemoryMissHandler {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        if self.eof && !data.is_empty() {
            return Error::e_explain(ErrorType::InternalError, "cache body written after EOF");
        }
        self.eof |= eof;
        if self.oversized || data.is_empty() {
            return Ok(());
        }
        self.body_len = self.body_len.saturating_add(data.len());
        if self.base_weight.saturating_add(self.body_len) > self.storage.max_object_bytes {
            // Too heavy to admit: stop buffering; the response is still served.
            self.oversized = true;
            self.chunks = Vec::new();
            return Ok(());
        }
        self.chunks.push(data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let this = *self;
        if this.oversized {
            this.storage.rejections.fetch_add(1, Ordering::Relaxed);
            return Ok(MissFinishType::Created(0));
        }
        // One exact-size copy: the stored body does not pin the upstream read buffers, so its
        // accounted size is its real size.
        let mut body = Vec::with_capacity(this.body_len);
        for chunk in &this.chunks {
            body.extend_from_slice(chunk);
        }
        let fill = Fill {
            key: this.key,
            primary: this.primary,
            meta_internal: this.meta_internal,
            meta_header: this.meta_header,
            body: Bytes::from(body),
            purge_generation: this.purge_generation,
        };
        match this.storage.admit(fill) {
            Admission::Stored(weight) => Ok(MissFinishType::Created(weight)),
            Admission::Rejected => Ok(MissFinishType::Created(0)),
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use pingora_cache::key::CompactCacheKey;
    use pingora_cache::trace::Span;
    use pingora_http::ResponseHeader;
    use std::time::Duration;

    fn leak(max_bytes: usize) -> &'static MemoryStorage {
        Box::leak(Box::new(MemoryStorage::new(max_bytes)))
    }

    fn span() -> SpanHandle {
        Span::inactive().handle()
    }

    fn meta_with(header_value: &str) -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header
            .append_header("content-type", "application/json")
            .unwrap();
        header.append_header("x-test", header_value).unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 5, 10, header)
    }

    fn meta() -> CacheMeta {
        meta_with("v1")
    }

    fn key(primary: &str) -> CacheKey {
        CacheKey::new(primary, "")
    }

    /// miss → write `chunks` → finish; returns the finish size.
    async fn put(
        s: &'static MemoryStorage,
        key: &CacheKey,
        meta: &CacheMeta,
        chunks: &[&[u8]],
    ) -> usize {
        let mut miss = s.get_miss_handler(key, meta, &span()).await.unwrap();
        for (i, chunk) in chunks.iter().enumerate() {
            miss.write_body(Bytes::copy_from_slice(chunk), i + 1 == chunks.len())
                .await
                .unwrap();
        }
        match miss.finish().await.unwrap() {
            MissFinishType::Created(size) => size,
            MissFinishType::Appended(..) => panic!("appended"),
        }
    }

    async fn read_all(hit: &mut HitHandler) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = hit.read_body().await.unwrap() {
            out.extend_from_slice(&chunk);
        }
        out
    }

    async fn get(s: &'static MemoryStorage, key: &CacheKey) -> Option<(CacheMeta, Vec<u8>)> {
        let (meta, mut hit) = s.lookup(key, &span()).await.unwrap()?;
        let body = read_all(&mut hit).await;
        Some((meta, body))
    }

    /// The internal structures agree with each other and with the published counters.
    fn check_invariants(s: &MemoryStorage) {
        let p = s.policy.lock();
        let weights: usize = p.records.values().map(|r| r.entry.weight).sum();
        assert_eq!(weights, p.total_bytes());
        assert_eq!(weights, s.bytes_stored());
        assert_eq!(p.records.len(), s.entries());
        assert!(s.bytes_stored() <= s.max_bytes());
        let small: usize = p
            .records
            .values()
            .filter(|r| r.queue == Queue::Small)
            .map(|r| r.entry.weight)
            .sum();
        assert_eq!(small, p.small_bytes);
        let in_shards: usize = s.shards.iter().map(|sh| sh.read().len()).sum();
        assert_eq!(in_shards, p.records.len());
        let indexed: usize = p.index.values().map(Vec::len).sum();
        assert_eq!(indexed, p.records.len());
        for (key, record) in &p.records {
            let in_queue = match record.queue {
                Queue::Small => &p.small,
                Queue::Main => &p.main,
            }
            .iter()
            .filter(|n| n.key == *key && n.id == record.entry.id)
            .count();
            assert_eq!(in_queue, 1, "each entry has exactly one live queue node");
        }
    }

    #[tokio::test]
    async fn miss_write_finish_then_hit_reads_back_meta_and_body() {
        let s = leak(1 << 20);
        let k = key("/api/users/1?a=1");
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());

        let m = meta();
        let size = put(s, &k, &m, &[b"hello ", b"world"]).await;
        assert!(size > 11);
        assert_eq!(size, s.bytes_stored());
        assert_eq!(s.entries(), 1);

        let (m2, body) = get(s, &k).await.unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(m2.fresh_until(), m.fresh_until());
        assert_eq!(m2.created(), m.created());
        assert_eq!(m2.headers().get("x-test").unwrap(), "v1");
        assert_eq!(
            m2.headers().get("content-type").unwrap(),
            "application/json"
        );
        assert_eq!(m2.response_header().status, 200);
        // the user tag is not part of the identity, the variance is
        assert!(s
            .lookup(&CacheKey::new("/api/users/1?a=1", "other"), &span())
            .await
            .unwrap()
            .is_some());
        let mut varied = k.clone();
        varied.set_variance_key([7; 16]);
        assert!(s.lookup(&varied, &span()).await.unwrap().is_none());
        check_invariants(s);
    }

    #[tokio::test]
    async fn empty_body_and_large_body_in_chunks() {
        let s = leak(16 << 20);
        let empty = key("/empty");
        put(s, &empty, &meta(), &[]).await;
        let (_, body) = get(s, &empty).await.unwrap();
        assert!(body.is_empty());

        let big = key("/big");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        put(s, &big, &meta(), &[&data[..100_000], &data[100_000..]]).await;
        let (_, mut hit) = s.lookup(&big, &span()).await.unwrap().unwrap();
        let first = hit.read_body().await.unwrap().unwrap();
        assert_eq!(first.len(), READ_CHUNK);
        let mut all = first.to_vec();
        all.extend(read_all(&mut hit).await);
        assert_eq!(all, data);
    }

    #[tokio::test]
    async fn seek_reads_ranges() {
        let s = leak(1 << 20);
        let k = key("/range");
        put(s, &k, &meta(), &[b"test1test2"]).await;
        let (_, mut hit) = s.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(hit.can_seek());
        assert!(hit.seek(10_000, None).is_err());
        hit.seek(5, None).unwrap();
        assert_eq!(read_all(&mut hit).await, b"test2");
        hit.seek(4, Some(5)).unwrap();
        assert_eq!(read_all(&mut hit).await, b"1");
        hit.seek(8, Some(100)).unwrap();
        assert_eq!(read_all(&mut hit).await, b"t2");
        assert!(hit.seek(6, Some(3)).is_err());
    }

    #[tokio::test]
    async fn purge_by_key_removes_it() {
        let s = leak(1 << 20);
        let k = key("/api/x?a=1");
        let other = key("/api/x?a=2");
        put(s, &k, &meta(), &[b"one"]).await;
        put(s, &other, &meta(), &[b"two"]).await;
        let compact = k.to_compact();

        let outcome = s
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert_eq!(outcome, PurgeOutcome::Purged(None));
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());
        assert!(s.lookup(&other, &span()).await.unwrap().is_some());
        assert_eq!(s.entries(), 1);
        let again = s
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert_eq!(again, PurgeOutcome::NotFound);

        // an identified target cannot name one of this storage's entries
        let other_compact = other.to_compact();
        let identified =
            CacheEntryKey::identified(other_compact.clone(), pingora_cache::CacheEntryId::new(0));
        let outcome = s
            .purge(
                PurgeTarget::Exact(&identified),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert_eq!(outcome, PurgeOutcome::NotFound);
        assert!(s.lookup(&other, &span()).await.unwrap().is_some());
        // a key-only exact target does
        let key_only = CacheEntryKey::key_only(other_compact);
        let outcome = s
            .purge(PurgeTarget::Exact(&key_only), PurgeType::Eviction, &span())
            .await
            .unwrap();
        assert_eq!(outcome, PurgeOutcome::Purged(None));
        assert_eq!(s.entries(), 0);
        assert_eq!(s.bytes_stored(), 0);
        check_invariants(s);
    }

    #[tokio::test]
    async fn purge_prefix_removes_only_matching_primary_keys() {
        let s = leak(1 << 20);
        let keys = [
            "/api/a",
            "/api/b?x=1",
            "/api/deep/c",
            "/apix",
            "/other/api/",
            "/ap",
        ];
        for k in keys {
            put(s, &key(k), &meta(), &[k.as_bytes()]).await;
        }
        // a second variant of /api/a counts separately
        let mut variant = key("/api/a");
        variant.set_variance_key([1; 16]);
        put(s, &variant, &meta(), &[b"variant"]).await;
        assert_eq!(s.entries(), 7);

        assert_eq!(s.purge_prefix(b"/api/"), 4);
        for gone in ["/api/a", "/api/b?x=1", "/api/deep/c"] {
            assert!(
                s.lookup(&key(gone), &span()).await.unwrap().is_none(),
                "{gone}"
            );
        }
        assert!(s.lookup(&variant, &span()).await.unwrap().is_none());
        for kept in ["/apix", "/other/api/", "/ap"] {
            let (_, body) = get(s, &key(kept)).await.unwrap();
            assert_eq!(body, kept.as_bytes());
        }
        assert_eq!(s.entries(), 3);
        assert_eq!(s.purge_prefix(b"/api/"), 0);
        check_invariants(s);

        assert_eq!(s.purge_primary(b"/ap"), 1);
        assert!(s.lookup(&key("/apix"), &span()).await.unwrap().is_some());
        assert_eq!(s.purge_all(), 2);
        assert_eq!(s.entries(), 0);
        assert_eq!(s.bytes_stored(), 0);
        check_invariants(s);
    }

    #[tokio::test]
    async fn byte_bound_holds_and_entries_are_evicted() {
        let max = 64 * 1024;
        let s = leak(max);
        let body = vec![b'x'; 1000];
        for i in 0..500 {
            let k = key(&format!("/items/{i}"));
            // a lookup miss first, as pingora does
            assert!(s.lookup(&k, &span()).await.unwrap().is_none());
            put(s, &k, &meta(), &[&body]).await;
            assert!(s.bytes_stored() <= max);
            // read some entries back so that the policy has something to work with
            if i % 3 == 0 {
                let _ = s.lookup(&k, &span()).await.unwrap();
            }
        }
        assert!(s.bytes_stored() <= max);
        assert!(s.bytes_stored() > max / 2, "the cache is used");
        assert!(s.evictions() > 0);
        assert!(s.entries() > 10 && s.entries() < 500);
        check_invariants(s);
    }

    #[tokio::test]
    async fn oversized_object_is_not_stored() {
        let max = 64 * 1024;
        let s = leak(max);
        assert_eq!(s.max_object_bytes(), max / 8);
        let k = key("/huge");
        let chunk = vec![0u8; 4096];
        // 3 × 4 KiB of body alone exceeds 8 KiB
        let size = put(s, &k, &meta(), &[&chunk, &chunk, &chunk]).await;
        assert_eq!(size, 0);
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());
        assert_eq!(s.entries(), 0);
        assert_eq!(s.bytes_stored(), 0);
        assert_eq!(s.rejections(), 1);

        // just under the limit is stored
        let small = key("/fits");
        let size = put(s, &small, &meta(), &[&chunk]).await;
        assert!(size > 4096 && size <= max / 8);
        assert!(s.lookup(&small, &span()).await.unwrap().is_some());
        check_invariants(s);
    }

    #[tokio::test]
    async fn fill_is_published_only_on_finish_and_replaces_previous_version() {
        let s = leak(1 << 20);
        let k = key("/versioned");
        assert!(!s.support_streaming_partial_write());

        let mut miss = s.get_miss_handler(&k, &meta(), &span()).await.unwrap();
        miss.write_body(Bytes::from_static(b"v1"), true)
            .await
            .unwrap();
        // readers during the fill see a miss
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());
        miss.finish().await.unwrap();
        assert_eq!(get(s, &k).await.unwrap().1, b"v1");

        // a refill: readers keep seeing v1 until it finishes
        let mut miss = s
            .get_miss_handler(&k, &meta_with("v2"), &span())
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"version2"), false)
            .await
            .unwrap();
        assert_eq!(get(s, &k).await.unwrap().1, b"v1");
        // a reader that started on v1 keeps reading v1 after the swap
        let (_, mut old_hit) = s.lookup(&k, &span()).await.unwrap().unwrap();
        miss.finish().await.unwrap();
        let (m, body) = get(s, &k).await.unwrap();
        assert_eq!(body, b"version2");
        assert_eq!(m.headers().get("x-test").unwrap(), "v2");
        assert_eq!(read_all(&mut old_hit).await, b"v1");
        assert_eq!(s.entries(), 1);
        check_invariants(s);

        // a fill dropped without finish stores nothing
        let dropped = key("/dropped");
        let mut miss = s
            .get_miss_handler(&dropped, &meta(), &span())
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"partial"), false)
            .await
            .unwrap();
        drop(miss);
        assert!(s.lookup(&dropped, &span()).await.unwrap().is_none());

        // writing after EOF is an error, not a panic
        let mut miss = s
            .get_miss_handler(&dropped, &meta(), &span())
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"x"), true)
            .await
            .unwrap();
        assert!(miss
            .write_body(Bytes::from_static(b"y"), false)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn fill_in_flight_during_a_purge_is_not_admitted() {
        let s = leak(1 << 20);
        let k = key("/api/stale");
        let unrelated = key("/other");
        let mut miss = s.get_miss_handler(&k, &meta(), &span()).await.unwrap();
        let mut miss2 = s
            .get_miss_handler(&unrelated, &meta(), &span())
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"old"), true)
            .await
            .unwrap();
        miss2
            .write_body(Bytes::from_static(b"fine"), true)
            .await
            .unwrap();
        assert_eq!(s.purge_prefix(b"/api/"), 0);
        miss.finish().await.unwrap();
        miss2.finish().await.unwrap();
        assert!(s.lookup(&k, &span()).await.unwrap().is_none());
        assert!(s.lookup(&unrelated, &span()).await.unwrap().is_some());
        // a fill that starts after the purge is admitted
        put(s, &k, &meta(), &[b"new"]).await;
        assert_eq!(get(s, &k).await.unwrap().1, b"new");
    }

    #[tokio::test]
    async fn update_meta_and_expire() {
        let s = leak(1 << 20);
        let k = key("/meta");
        put(s, &k, &meta(), &[b"body"]).await;
        let updated = s.update_meta(&k, &meta_with("v9"), &span()).await.unwrap();
        assert!(updated);
        let (m, body) = get(s, &k).await.unwrap();
        assert_eq!(m.headers().get("x-test").unwrap(), "v9");
        assert_eq!(body, b"body");
        assert!(!s
            .update_meta(&key("/absent"), &meta(), &span())
            .await
            .unwrap());
        check_invariants(s);

        let compact = k.to_compact();
        let outcome = s
            .expire(PurgeTarget::Active(&compact), &span())
            .await
            .unwrap();
        assert_eq!(outcome, PurgeOutcome::Expired);
        let (m, body) = get(s, &k).await.unwrap();
        assert!(!m.is_fresh(SystemTime::now() + Duration::from_secs(1)));
        assert_eq!(body, b"body");
        let absent: CompactCacheKey = key("/absent").to_compact();
        let outcome = s
            .expire(PurgeTarget::Active(&absent), &span())
            .await
            .unwrap();
        assert_eq!(outcome, PurgeOutcome::NotFound);
        check_invariants(s);
    }

    #[tokio::test]
    async fn frequently_read_entry_survives_a_scan() {
        let max = 64 * 1024;
        let s = leak(max);
        let hot = key("/hot");
        put(s, &hot, &meta(), &[&[b'h'; 1000]]).await;
        for i in 0..2000 {
            if i % 10 == 0 {
                assert!(s.lookup(&hot, &span()).await.unwrap().is_some(), "at {i}");
            }
            let k = key(&format!("/scan/{i}"));
            let _ = s.lookup(&k, &span()).await.unwrap();
            put(s, &k, &meta(), &[&[b'c'; 1000]]).await;
        }
        assert!(s.lookup(&hot, &span()).await.unwrap().is_some());
        assert!(s.evictions() > 1000);
        check_invariants(s);
    }

    #[tokio::test]
    async fn popular_victim_rejects_unpopular_newcomer() {
        let max = 16 * 1024;
        let s = leak(max);
        let mut i = 0;
        // fill the cache with entries that were requested often before being stored
        while s.bytes_stored() + 2000 < max {
            let k = key(&format!("/popular/{i}"));
            for _ in 0..20 {
                let _ = s.lookup(&k, &span()).await.unwrap();
            }
            put(s, &k, &meta(), &[&[b'p'; 1000]]).await;
            i += 1;
        }
        let entries = s.entries();
        let before = s.bytes_stored();
        // fill the remaining space
        let mut j = 0;
        while s.evictions() == 0 {
            let k = key(&format!("/newcomer/{j}"));
            let stored = put(s, &k, &meta(), &[&[b'n'; 1000]]).await;
            if stored == 0 {
                break;
            }
            j += 1;
            assert!(j < 100);
        }
        assert!(s.rejections() >= 1, "a never-requested newcomer is refused");
        assert_eq!(s.evictions(), 0, "no popular entry was evicted for it");
        assert!(s.entries() >= entries);
        assert!(s.bytes_stored() >= before);
        check_invariants(s);
    }

    #[tokio::test]
    async fn churn_does_not_grow_the_queues() {
        let s = leak(1 << 20);
        for round in 0..3000 {
            let k = key(&format!("/churn/{}", round % 7));
            put(s, &k, &meta(), &[b"x"]).await;
            s.purge_primary(k.primary_key());
        }
        let p = s.policy.lock();
        assert!(p.small.len() + p.main.len() <= MIN_STALE_FOR_COMPACTION + 8);
        assert!(p.purge_log.len() <= PURGE_LOG_LEN);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_lookups_while_inserting() {
        let max = 256 * 1024;
        let s = leak(max);
        let body_for = |i: usize| format!("body-{i}-").repeat(1 + i % 50).into_bytes();
        let mut tasks = Vec::new();
        for w in 0..4 {
            tasks.push(tokio::spawn(async move {
                for i in 0..400 {
                    let n = (i * 4 + w) % 600;
                    let k = key(&format!("/c/{n}"));
                    let body = body_for(n);
                    let half = body.len() / 2;
                    let mut miss = s.get_miss_handler(&k, &meta(), &span()).await.unwrap();
                    miss.write_body(Bytes::copy_from_slice(&body[..half]), false)
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                    miss.write_body(Bytes::copy_from_slice(&body[half..]), true)
                        .await
                        .unwrap();
                    miss.finish().await.unwrap();
                    if i % 50 == 0 {
                        s.purge_prefix(format!("/c/{}", i % 10).as_bytes());
                    }
                }
            }));
        }
        let mut readers = Vec::new();
        for r in 0..4 {
            readers.push(tokio::spawn(async move {
                let mut hits = 0;
                for i in 0..3000 {
                    let n = (i * 7 + r) % 600;
                    if let Some((m, body)) = get(s, &key(&format!("/c/{n}"))).await {
                        assert_eq!(body, body_for(n));
                        assert_eq!(m.response_header().status, 200);
                        hits += 1;
                    }
                    if i % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                hits
            }));
        }
        let mut hits = 0;
        for t in readers {
            hits += t.await.unwrap();
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(
            hits > 0,
            "readers saw entries while they were being written"
        );
        assert!(s.bytes_stored() <= max);
        assert!(s.entries() > 0);
        check_invariants(s);
    }
}
