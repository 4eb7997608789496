//! Micro-benchmarks of the request path's own work.
//!
//! `cargo bench --bench hot_paths` (or `make bench`).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use portcullis::routing::{self, HostPattern, Methods, PathPattern, RouteSpec, Router};

fn routes(n: usize) -> Router {
    let mut specs = Vec::with_capacity(n + 3);
    for i in 0..n {
        // a mix of literal, param and wildcard routes, like a real API surface
        let path = match i % 4 {
            0 => format!("/api/svc{i}/items/:id"),
            1 => format!("/api/svc{i}/items/:id/details"),
            2 => format!("/api/svc{i}/static/**"),
            _ => format!("/api/svc{i}/*/list"),
        };
        specs.push(RouteSpec {
            host: if i % 10 == 0 {
                Some(HostPattern::parse(&format!("h{i}.example.com")).unwrap())
            } else {
                None
            },
            path: PathPattern::parse(&path).unwrap(),
            methods: Methods::ANY,
            headers: vec![],
            method_fallthrough: false,
        });
    }
    specs.push(RouteSpec {
        host: None,
        path: PathPattern::parse("/api/users/:id").unwrap(),
        methods: Methods::parse(&["GET".to_string()]).unwrap(),
        headers: vec![],
        method_fallthrough: false,
    });
    specs.push(RouteSpec {
        host: None,
        path: PathPattern::parse("/api/**").unwrap(),
        methods: Methods::ANY,
        headers: vec![],
        method_fallthrough: false,
    });
    Router::new(specs)
}

fn bench_router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router_lookup");
    let headers = HeaderMap::new();
    for n in [10usize, 10_000] {
        let r = routes(n);
        g.bench_with_input(BenchmarkId::new("param_route", n), &r, |b, r| {
            b.iter(|| {
                let path = black_box("/api/users/12345");
                let norm = routing::path::normalize(path).unwrap();
                let segs = routing::segments(&norm);
                black_box(r.lookup("api.example.com", &segs, &Method::GET, &headers))
            })
        });
        g.bench_with_input(BenchmarkId::new("fallback_double_star", n), &r, |b, r| {
            b.iter(|| {
                let path = black_box("/api/unknown/deep/path/here");
                let norm = routing::path::normalize(path).unwrap();
                let segs = routing::segments(&norm);
                black_box(r.lookup("api.example.com", &segs, &Method::GET, &headers))
            })
        });
    }
    g.finish();
}

/// A snapshot built from YAML, as the gateway does at start-up.
fn snapshot(yaml: &str) -> portcullis::snapshot::Snapshot {
    let src = portcullis::config::parse_str("bench.yaml", yaml).unwrap();
    match portcullis::snapshot::build(&src, None, 1) {
        Ok(s) => s,
        Err(e) => panic!("{e:?}"),
    }
}

const BENCH_KEY: &str = "bench-key-0123456789abcdefghijklmnopqrstuvwxyz";

fn auth_yaml(pubkey_path: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        r#"
upstreams:
  u: {{ backends: [{{ addr: "127.0.0.1:1" }}] }}
auth:
  jwt:
    - {{ name: rs, issuer: "https://rs.bench/", audiences: [api], algorithms: [RS256], public_key_file: "{pubkey_path}" }}
  api_keys:
    keys: [{{ id: bench, sha256: "{}" }}]
rate_limits:
  policies:
    per_client: {{ key: client, requests: 1000000000, per: 1s }}
routes:
  - {{ match: {{ path: "/jwt/**" }}, upstream: u, auth: {{ jwt: rs }} }}
  - {{ match: {{ path: "/key/**" }}, upstream: u, auth: {{ any_of: [api_key] }}, rate_limit: [per_client] }}
"#,
        hex::encode(Sha256::digest(BENCH_KEY.as_bytes()))
    )
}

fn bench_auth(c: &mut Criterion) {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pub_path = dir.path().join("rs.pem");
    std::fs::write(
        &pub_path,
        key.to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let snap = snapshot(&auth_yaml(&pub_path.display().to_string()));
    let enc =
        EncodingKey::from_rsa_pem(key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({ "iss": "https://rs.bench/", "aud": "api", "sub": "user-1", "exp": now + 3600 });
    let token = encode(&Header::new(Algorithm::RS256), &claims, &enc).unwrap();
    let mut req = pingora_http::RequestHeader::build("GET", b"/jwt/x", None).unwrap();
    req.insert_header("authorization", format!("Bearer {token}"))
        .unwrap();
    let jwt_policy = snap.routes[0].auth.clone().unwrap();
    let mut key_req = pingora_http::RequestHeader::build("GET", b"/key/x", None).unwrap();
    key_req.insert_header("x-api-key", BENCH_KEY).unwrap();
    let key_policy = snap.routes[1].auth.clone().unwrap();

    let mut g = c.benchmark_group("auth");
    g.bench_function("jwt_rs256_uncached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(snap.auth.issuers[0].verify(&token).await.unwrap()) })
    });
    g.bench_function("jwt_rs256_cached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(snap.auth.authenticate(&jwt_policy, &req).await.unwrap()) })
    });
    g.bench_function("api_key", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(snap.auth.authenticate(&key_policy, &key_req).await.unwrap())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("rate_limit");
    let headers = http::HeaderMap::new();
    let route = &snap.routes[1];
    let identity = rt
        .block_on(snap.auth.authenticate(&key_policy, &key_req))
        .unwrap()
        .0;
    g.bench_function("one_key", |b| {
        b.iter(|| {
            let input = portcullis::ratelimit::KeyInput {
                identity: Some(&identity),
                client_ip: None,
                route: &route.name,
                headers: &headers,
            };
            black_box(snap.limits.check(&route.rate_limit, &input).is_ok())
        })
    });
    let mut i: u32 = 0;
    g.bench_function("million_keys", |b| {
        b.iter(|| {
            i = (i + 1) % 1_000_000;
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let input = portcullis::ratelimit::KeyInput {
                identity: None,
                client_ip: Some(ip),
                route: &route.name,
                headers: &headers,
            };
            black_box(snap.limits.check(&route.rate_limit, &input).is_ok())
        })
    });
    g.finish();
}

fn bench_reload(c: &mut Criterion) {
    let mut yaml =
        String::from("upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n");
    for i in 0..10_000 {
        yaml.push_str(&format!(
            "  - {{ match: {{ path: \"/r{i}/items/:id\" }}, upstream: a }}\n"
        ));
    }
    let first = snapshot(&yaml);
    let mut g = c.benchmark_group("reload");
    g.sample_size(10);
    // What a reload does before the new snapshot serves. Dropping the built snapshot (the
    // old one, in a real reload, released after the swap, off the request path) is left out.
    g.bench_function("parse_and_compile_10k_routes", |b| {
        b.iter_with_large_drop(|| {
            let src = portcullis::config::parse_str("bench.yaml", &yaml).unwrap();
            portcullis::snapshot::build(&src, Some(&first), 2)
        })
    });
    g.bench_function("parse_only_10k_routes", |b| {
        b.iter(|| black_box(portcullis::config::parse_str("bench.yaml", &yaml).is_ok()))
    });
    g.finish();
}

fn bench_metrics(c: &mut Criterion) {
    use portcullis::observe::metrics::RouteMetrics;
    let m = RouteMetrics::new("bench-route", &["bench"]);
    let up = m.upstream_index(Some("bench"));
    let mut g = c.benchmark_group("metrics");
    // What every proxied request records: counter {route,method,status,upstream} + histogram.
    g.bench_function("record_request", |b| {
        b.iter(|| {
            m.record(
                black_box(&Method::GET),
                black_box(200),
                up,
                black_box(0.000_42),
            )
        })
    });
    // A status outside the pre-resolved set takes the label-lookup path.
    g.bench_function("record_request_rare_status", |b| {
        b.iter(|| {
            m.record(
                black_box(&Method::GET),
                black_box(418),
                up,
                black_box(0.000_42),
            )
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_router,
    bench_auth,
    bench_reload,
    bench_metrics
);
criterion_main!(benches);
