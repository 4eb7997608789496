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
        });
    }
    specs.push(RouteSpec {
        host: None,
        path: PathPattern::parse("/api/users/:id").unwrap(),
        methods: Methods::parse(&["GET".to_string()]).unwrap(),
        headers: vec![],
    });
    specs.push(RouteSpec {
        host: None,
        path: PathPattern::parse("/api/**").unwrap(),
        methods: Methods::ANY,
        headers: vec![],
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

criterion_group!(benches, bench_router);
criterion_main!(benches);
