//! Regressions found by `fuzz/` (see fuzz/README.md). Each input once made
//! `config::parse_str` + `snapshot::build`, or `Auth::authenticate`, panic or run out
//! of memory; each must now be an ordinary error (or, for 5, an ordinary success).

use portcullis::config::ConfigError;
use portcullis::snapshot::{self, Snapshot};

fn build(yaml: &str) -> Result<Snapshot, Vec<ConfigError>> {
    let src = portcullis::config::parse_str("fuzz.yaml", yaml).expect("the YAML parses");
    snapshot::build(&src, None, 1)
}

fn assert_config_error(yaml: &str, path_part: &str) {
    match build(yaml) {
        Ok(_) => panic!("expected a config error at `{path_part}` for:\n{yaml}"),
        Err(errs) => assert!(
            errs.iter().any(|e| e.path.contains(path_part)),
            "no error at `{path_part}`: {errs:?}"
        ),
    }
}

/// 1: pingora's HttpHealthCheck::new unwraps the Host header value.
#[test]
fn health_check_host_that_is_not_a_header_value_is_an_error() {
    let yaml = "upstreams:\n  a:\n    backends: [{ addr: \"127.0.0.1:1\" }]\n    health_check: { host: \"a\\nb\" }\n";
    assert_config_error(yaml, "health_check");
}

/// 2: ketama multiplies the total weight by 160 in u32.
#[test]
fn consistent_hash_weight_overflow_is_an_error() {
    let yaml = "upstreams:\n  a:\n    lb: consistent_hash\n    backends: [{ addr: \"127.0.0.1:1\", weight: 30000000 }]\n";
    assert_config_error(yaml, "upstreams.a");
}

/// 3: weighted selection holds one u16 per unit of weight (8 GiB here).
/// Without the fix this test allocates ~8 GiB and is slow: run it alone.
#[test]
fn huge_round_robin_weight_is_an_error() {
    let yaml = "upstreams:\n  a:\n    backends: [{ addr: \"127.0.0.1:1\", weight: 4000000000 }]\n";
    assert_config_error(yaml, "upstreams.a");
}

/// 4: the days-from-civil arithmetic in `httpdate_like` overflows for huge years.
#[test]
fn api_key_expiry_with_a_huge_year_is_an_error() {
    for date in ["999999999999-01-01", "9223372036854775807-01-01T00:00:00Z"] {
        let yaml = format!(
            "auth:\n  api_keys:\n    keys: [{{ id: a, sha256: \"0f6d1ae1d3e1d1b3e2f1c3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4\", expires: \"{date}\" }}]\n"
        );
        assert_config_error(&yaml, "expires");
    }
}

/// 5: `exp + leeway` overflows for a verified token with exp = u64::MAX.
#[test]
fn jwt_with_exp_u64_max_does_not_panic() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    const SECRET: &str = "fuzz-regression-hs256-secret-0123456789";
    std::env::set_var("PORTCULLIS_FUZZ_REGRESSION_HS", SECRET);
    let yaml = r#"
upstreams:
  u: { backends: [{ addr: "127.0.0.1:1" }] }
auth:
  jwt:
    - { name: hs, issuer: "https://hs.fuzz/", audiences: [api], algorithms: [HS256],
        secret_env: PORTCULLIS_FUZZ_REGRESSION_HS, leeway: 5s }
routes:
  - { match: { path: "/any/**" }, upstream: u, auth: { any_of: [jwt] } }
"#;
    let snap = build(yaml).unwrap_or_else(|e| panic!("{e:?}"));
    let policy = snap.routes[0].auth.clone().unwrap();
    let claims =
        serde_json::json!({ "iss": "https://hs.fuzz/", "aud": "api", "sub": "s", "exp": u64::MAX });
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut req = pingora_http::RequestHeader::build("GET", b"/any/x", None).unwrap();
    req.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A validly signed, never-expiring token: accepted (twice, the second time from cache).
    for _ in 0..2 {
        let r = rt.block_on(snap.auth.authenticate(&policy, &req));
        assert!(r.is_ok(), "{r:?}");
    }
}

/// 6: an out-of-range sketch_slots is reported, but 1 GiB limiters were still built
/// for every policy before the error was returned. The error alone is the same with or
/// without the fix, so the test also measures what `build` asks the allocator for on this
/// thread: the broken version builds the limiter anyway (1 GiB in the original bug; 256 MiB
/// in a mutant checked by hand that kept building with the slots clamped to 4 Mi), the fixed
/// one a few KiB. The 64 MiB bound is 4× below the smallest broken request seen and far
/// above anything a refused config needs.
#[test]
fn out_of_range_sketch_slots_is_an_error() {
    let yaml = "rate_limits:\n  sketch_slots: 99999999999\n  policies:\n    a: { key: ip, requests: 1, per: 1s }\n";
    let src = portcullis::config::parse_str("fuzz.yaml", yaml).expect("the YAML parses");
    let (result, peak) = alloc_count::peak_during(|| snapshot::build(&src, None, 1));
    match result {
        Ok(_) => panic!("expected a config error at `rate_limits.sketch_slots`"),
        Err(errs) => assert!(
            errs.iter()
                .any(|e| e.path.contains("rate_limits.sketch_slots")),
            "{errs:?}"
        ),
    }
    assert!(
        peak < 64 << 20,
        "building a refused config asked for {} MiB",
        peak >> 20
    );
}

/// Counts the bytes each thread has allocated and not freed, and the peak since the last
/// reset: a thread-local measure, so tests running in parallel do not disturb it.
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(n: isize) {
        let _ = LIVE.try_with(|l| {
            let v = l.get() + n;
            l.set(v);
            let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
        });
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let p = System.alloc(l);
            if !p.is_null() {
                add(l.size() as isize);
            }
            p
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            let p = System.alloc_zeroed(l);
            if !p.is_null() {
                add(l.size() as isize);
            }
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            System.dealloc(p, l);
            add(-(l.size() as isize));
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            let q = System.realloc(p, l, new);
            if !q.is_null() {
                add(new as isize - l.size() as isize);
            }
            q
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Run `f`; return its result and the peak of this thread's live bytes above the
    /// level at the start.
    pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let base = LIVE.with(|l| l.get());
        PEAK.with(|p| p.set(base));
        let out = f();
        let peak = PEAK.with(|p| p.get());
        (out, (peak - base).max(0) as usize)
    }
}

/// 7: the ketama ring has 160 points per unit of *total* weight; each weight is capped,
/// the sum is not. Without a fix this test takes minutes and ~3 GB: run it alone.
#[test]
fn consistent_hash_total_weight_is_bounded() {
    let mut yaml = String::from("upstreams:\n  a:\n    lb: consistent_hash\n    backends:\n");
    for i in 0..230 {
        yaml.push_str(&format!(
            "      - {{ addr: \"10.0.{}.{}:80\", weight: 10000 }}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    let t = std::time::Instant::now();
    assert_config_error(&yaml, "upstreams.a");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
}

/// 8: each limiter may take 64 MiB, and there may be any number of them.
/// Without a fix this test allocates ~3 GiB before it fails.
#[test]
fn total_rate_limit_sketch_memory_is_bounded() {
    let mut yaml = String::from("rate_limits:\n  sketch_slots: 1048576\n  policies:\n");
    for i in 0..48 {
        yaml.push_str(&format!("    p{i}: {{ key: ip, requests: 1, per: 1s }}\n"));
    }
    assert_config_error(&yaml, "rate_limits");
}
