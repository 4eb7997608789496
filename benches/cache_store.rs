//! The response store: our byte-weighted TinyLFU/S3-FIFO `MemoryStorage` against moka's
//! weighted W-TinyLFU `Cache` holding the same serialized entries. Both sides pay for what
//! pingora-cache needs on a hit (the stored meta deserialized, the body handed out) and on a
//! fill (the meta serialized, the entry admitted, a victim evicted once full).
//!
//! After the timed runs it prints the memory bound each keeps right after a burst of
//! inserts: bytes held against the configured maximum.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::{MissFinishType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_http::ResponseHeader;
use portcullis::cache::storage::MemoryStorage;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const MAX_BYTES: usize = 64 << 20;
const BODY: usize = 4096;
/// Distinct keys the hit benchmarks cycle over (all resident: 1,000 × ~4.5 KiB < 64 MiB).
const HOT_KEYS: usize = 1000;

fn meta() -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).unwrap();
    h.append_header("content-type", "application/json").unwrap();
    h.append_header("cache-control", "max-age=60").unwrap();
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(60), now, 5, 10, h)
}

fn key(i: usize) -> CacheKey {
    CacheKey::new(format!("example.com/items/{i}"), "")
}

/// One stored response as the moka variant would hold it.
struct Stored {
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
}

/// Weight of the `Stored` values alive (held by moka or not yet dropped after eviction).
static LIVE: AtomicUsize = AtomicUsize::new(0);

impl Stored {
    fn new(m: &CacheMeta, body: &Bytes) -> Stored {
        let s = Stored {
            meta: m.serialize().unwrap(),
            body: body.clone(),
        };
        LIVE.fetch_add(s.weight(), Ordering::Relaxed);
        s
    }

    fn weight(&self) -> usize {
        self.meta.0.len() + self.meta.1.len() + self.body.len() + 256
    }
}

impl Drop for Stored {
    fn drop(&mut self) {
        LIVE.fetch_sub(self.weight(), Ordering::Relaxed);
    }
}

fn moka_cache() -> moka::sync::Cache<HashBinary, Arc<Stored>> {
    moka::sync::Cache::builder()
        .max_capacity(MAX_BYTES as u64)
        .weigher(|_, v: &Arc<Stored>| v.weight().min(u32::MAX as usize) as u32)
        .build()
}

async fn ours_put(s: &'static MemoryStorage, k: &CacheKey, m: &CacheMeta, body: &Bytes) {
    let span = Span::inactive().handle();
    let mut miss = s.get_miss_handler(k, m, &span).await.unwrap();
    miss.write_body(body.clone(), true).await.unwrap();
    let _: MissFinishType = miss.finish().await.unwrap();
}

fn bench_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let body = Bytes::from(vec![b'x'; BODY]);
    let m = meta();
    let ours: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(MAX_BYTES)));
    let moka = moka_cache();
    let keys: Vec<CacheKey> = (0..HOT_KEYS).map(key).collect();
    rt.block_on(async {
        for k in &keys {
            ours_put(ours, k, &m, &body).await;
        }
    });
    for k in &keys {
        moka.insert(k.combined_bin(), Arc::new(Stored::new(&m, &body)));
    }

    let mut g = c.benchmark_group("cache_store");
    let mut i = 0usize;
    g.bench_function("hit_ours", |b| {
        b.iter(|| {
            i = (i + 1) % HOT_KEYS;
            rt.block_on(async {
                let span = Span::inactive().handle();
                let (meta, mut hit) = ours.lookup(&keys[i], &span).await.unwrap().unwrap();
                let chunk = hit.read_body().await.unwrap();
                black_box((meta, chunk));
            })
        })
    });
    g.bench_function("hit_moka", |b| {
        b.iter(|| {
            i = (i + 1) % HOT_KEYS;
            let v = moka.get(&keys[i].combined_bin()).unwrap();
            let meta = CacheMeta::deserialize(&v.meta.0, &v.meta.1).unwrap();
            black_box((meta, v.body.clone()));
        })
    });
    // fills of new keys into a full store: every admission evicts
    let mut n = HOT_KEYS;
    g.bench_function("fill_evicting_ours", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(ours_put(ours, &key(n), &m, &body));
        })
    });
    g.bench_function("fill_evicting_moka", |b| {
        b.iter(|| {
            n += 1;
            moka.insert(key(n).combined_bin(), Arc::new(Stored::new(&m, &body)));
        })
    });
    g.finish();

    // memory bound right after a burst: 4× the capacity inserted as fast as possible
    let burst = 4 * MAX_BYTES / BODY;
    let ours2: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(MAX_BYTES)));
    let mut ours_peak = 0;
    rt.block_on(async {
        for j in 0..burst {
            ours_put(ours2, &key(j), &m, &body).await;
            ours_peak = ours_peak.max(ours2.bytes_stored());
        }
    });
    drop(moka);
    let moka2 = moka_cache();
    let base = LIVE.load(Ordering::Relaxed);
    let mut moka_peak = 0;
    for j in 0..burst {
        moka2.insert(key(j).combined_bin(), Arc::new(Stored::new(&m, &body)));
        moka_peak = moka_peak.max(LIVE.load(Ordering::Relaxed).saturating_sub(base));
    }
    println!(
        "memory bound after a burst of {burst} × {BODY} B into {} MiB: ours peak {:.1} MiB (counted on every admission), moka peak {:.1} MiB (entries alive: evictions wait for its maintenance)",
        MAX_BYTES >> 20,
        ours_peak as f64 / (1 << 20) as f64,
        moka_peak as f64 / (1 << 20) as f64,
    );
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
