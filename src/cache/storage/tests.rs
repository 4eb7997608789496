//! Unit tests of the in-memory storage: weights, eviction, admission, purges, concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
