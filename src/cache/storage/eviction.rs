//! The admission and eviction policy of [`super::MemoryStorage`]: the frequency sketch,
//! the small and main FIFO queues, the ghost queue, the prefix index and the purge log.

use super::*;

/// Count-min sketch of key popularity with 4-bit saturating counters, lock-free.
pub(super) struct FrequencySketch {
    pub(super) counters: Box<[AtomicU8]>,
    pub(super) width: usize,
    pub(super) hasher: RandomState,
}

impl FrequencySketch {
    pub(super) fn new(width: usize) -> Self {
        let width = width.clamp(64, 1 << 22).next_power_of_two();
        let counters = (0..width * SKETCH_ROWS).map(|_| AtomicU8::new(0)).collect();
        FrequencySketch {
            counters,
            width,
            hasher: RandomState::new(),
        }
    }

    pub(super) fn slots(&self, key: &HashBinary) -> [usize; SKETCH_ROWS] {
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

    pub(super) fn increment(&self, key: &HashBinary) {
        for slot in self.slots(key) {
            if let Some(c) = self.counters.get(slot) {
                let v = c.load(Ordering::Relaxed);
                if v < SKETCH_MAX {
                    c.store(v + 1, Ordering::Relaxed);
                }
            }
        }
    }

    pub(super) fn estimate(&self, key: &HashBinary) -> u8 {
        self.slots(key)
            .iter()
            .filter_map(|&slot| self.counters.get(slot))
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Age all counters so that past popularity fades.
    pub(super) fn halve(&self) {
        for c in self.counters.iter() {
            c.store(c.load(Ordering::Relaxed) >> 1, Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Queue {
    Small,
    Main,
}

pub(super) struct Record {
    pub(super) entry: Arc<Entry>,
    pub(super) queue: Queue,
}

/// A queue slot; it is stale when its key is gone or now has another `id`.
#[derive(Clone, Copy)]
pub(super) struct Node {
    pub(super) key: HashBinary,
    pub(super) id: u64,
}

/// Keys recently evicted from the small queue (S3-FIFO's ghost queue), bounded.
#[derive(Default)]
pub(super) struct Ghost {
    pub(super) order: VecDeque<(u64, u64)>,
    pub(super) members: HashMap<u64, u64, RandomState>,
    pub(super) seq: u64,
}

impl Ghost {
    pub(super) fn insert(&mut self, fp: u64, cap: usize) {
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
    pub(super) fn take(&mut self, fp: u64) -> bool {
        self.members.remove(&fp).is_some()
    }

    pub(super) fn clear(&mut self) {
        self.order.clear();
        self.members.clear();
    }
}

/// What a purge covered, remembered to reject fills that were in flight when it ran.
pub(super) enum PurgeScope {
    Key(HashBinary),
    Primary(Box<[u8]>),
    Prefix(Box<[u8]>),
    All,
}

impl PurgeScope {
    pub(super) fn covers(&self, key: &HashBinary, primary: &[u8]) -> bool {
        match self {
            PurgeScope::Key(k) => k == key,
            PurgeScope::Primary(p) => &**p == primary,
            PurgeScope::Prefix(p) => primary.starts_with(p),
            PurgeScope::All => true,
        }
    }
}

/// Everything that changes on a write, behind the policy mutex.
pub(super) struct Policy {
    pub(super) records: HashMap<HashBinary, Record, RandomState>,
    pub(super) small: VecDeque<Node>,
    pub(super) main: VecDeque<Node>,
    pub(super) small_bytes: usize,
    pub(super) main_bytes: usize,
    /// Queue nodes whose record is gone or replaced (removed lazily).
    pub(super) stale_nodes: usize,
    pub(super) ghost: Ghost,
    /// Primary key bytes → combined keys of its stored variants.
    pub(super) index: BTreeMap<Box<[u8]>, Vec<HashBinary>>,
    pub(super) next_id: u64,
    pub(super) admissions_since_aging: usize,
    /// Number of purges so far (mirrored in `MemoryStorage::purge_generation`).
    pub(super) purge_generation: u64,
    /// The last purges, oldest first, with the generation each one created.
    pub(super) purge_log: VecDeque<(u64, PurgeScope)>,
}

impl Policy {
    pub(super) fn new() -> Self {
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

    pub(super) fn total_bytes(&self) -> usize {
        self.small_bytes.saturating_add(self.main_bytes)
    }

    pub(super) fn add_bytes(&mut self, queue: Queue, weight: usize) {
        match queue {
            Queue::Small => self.small_bytes = self.small_bytes.saturating_add(weight),
            Queue::Main => self.main_bytes = self.main_bytes.saturating_add(weight),
        }
    }

    pub(super) fn sub_bytes(&mut self, queue: Queue, weight: usize) {
        match queue {
            Queue::Small => self.small_bytes = self.small_bytes.saturating_sub(weight),
            Queue::Main => self.main_bytes = self.main_bytes.saturating_sub(weight),
        }
    }

    pub(super) fn push_node(&mut self, queue: Queue, node: Node) {
        match queue {
            Queue::Small => self.small.push_back(node),
            Queue::Main => self.main.push_back(node),
        }
    }

    pub(super) fn index_add(&mut self, primary: &[u8], key: HashBinary) {
        if let Some(keys) = self.index.get_mut(primary) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        } else {
            self.index.insert(primary.into(), vec![key]);
        }
    }

    pub(super) fn index_remove(&mut self, primary: &[u8], key: &HashBinary) {
        if let Some(keys) = self.index.get_mut(primary) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.index.remove(primary);
            }
        }
    }

    pub(super) fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<HashBinary> {
        self.index
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(primary, _)| primary.starts_with(prefix))
            .flat_map(|(_, keys)| keys.iter().copied())
            .collect()
    }

    pub(super) fn keys_of_primary(&self, primary: &[u8]) -> Vec<HashBinary> {
        self.index.get(primary).cloned().unwrap_or_default()
    }

    /// Pop the next eviction victim following S3-FIFO, promoting and requeueing on the way.
    /// The victim's record stays in place; the caller evicts it or pushes the node back.
    pub(super) fn pick_victim(&mut self, small_target: usize) -> Option<(Node, Queue)> {
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
    pub(super) fn requeue(&mut self, node: Node, queue: Queue) {
        self.push_node(queue, node);
    }

    /// Drop stale nodes once they outnumber live entries, so that churn without eviction
    /// pressure (purges, refills) cannot grow the queues without bound.
    pub(super) fn maybe_compact(&mut self) {
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
    pub(super) fn purged_since(&self, since: u64, key: &HashBinary, primary: &[u8]) -> bool {
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
pub(super) enum Admission {
    Stored(usize),
    Rejected,
}
