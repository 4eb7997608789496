//! conf/grafana/portcullis.json and conf/prometheus/alerts.yml only use metrics the running
//! gateway exports, and the alert rules pass `promtool check rules`.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

fn repo_file(rel: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `portcullis_*` / `process_*` metric name the text mentions.
fn names_used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["portcullis_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    out
}

/// Metric families in a Prometheus text exposition, with their type.
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

fn exported(name: &str, fams: &[(String, String)]) -> bool {
    fams.iter().any(|(f, kind)| {
        f == name
            || (kind == "histogram"
                && ["_bucket", "_count", "_sum"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str())))
    })
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let up = Upstream::start("up").await;
    // a backend that refuses connections, so that retries (and their series) happen
    let dead = dead_port();
    let dead_addr = format!("127.0.0.1:{}", dead.port);
    // a fleet of one, so that the cluster series exist
    let redis = Redis::start(free_port());
    let yaml = format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  up:
    backends: [{{ addr: "{live}" }}, {{ addr: "{dead_addr}" }}]
    retry: {{ attempts: 2, backoff: 1ms }}
rate_limits:
  policies:
    one: {{ key: ip, requests: 1, per: 60s }}
cluster: {{ redis: "redis://127.0.0.1:{redis_port}" }}
routes:
  - {{ name: cached, match: {{ path: "/c/**" }}, upstream: up, cache: {{ default_ttl: 60s }} }}
  - {{ name: limited, match: {{ path: "/rl/**" }}, upstream: up, rate_limit: [one] }}
  - {{ name: plain, match: {{ path: "/p/**" }}, upstream: up }}
"#,
        live = up.addr,
        redis_port = redis.port,
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    // traffic that creates every labelled series: proxied (some retried), cached, limited,
    // unmatched, a good and a bad reload
    for i in 0..6 {
        let _ = c.get(gw.url(&format!("/p/{i}"))).send().await;
    }
    for _ in 0..2 {
        let _ = c.get(gw.url("/c/x")).send().await;
        let _ = c.get(gw.url("/rl/x")).send().await;
    }
    let _ = c.get(gw.url("/nowhere")).send().await;
    let (s, _) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200);
    gw.write_config(&yaml.replace("upstream: up, rate_limit", "upstream: nope, rate_limit"));
    let (s, _) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 400);

    let wanted: BTreeSet<String> = names_used(&repo_file("conf/grafana/portcullis.json"))
        .into_iter()
        .chain(names_used(&repo_file("conf/prometheus/alerts.yml")))
        .collect();
    assert!(wanted.len() >= 15, "the files use {wanted:?}");
    // the retry and the scrape-time gauges settle within a moment: poll with a deadline
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let missing = loop {
        let text = c
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let fams = families(&text);
        let missing: Vec<String> = wanted
            .iter()
            .filter(|n| !exported(n, &fams))
            .cloned()
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        missing.is_empty(),
        "used in conf/grafana or conf/prometheus but not exported: {missing:?}"
    );
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/prometheus/alerts.yml");
    // `make deps` and .ci/run install Debian's `prometheus` package, which ships promtool
    let out = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool (Debian package `prometheus`) is needed: run `make deps`");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules failed:\n{text}");
    assert!(text.contains("SUCCESS: 11 rules found"), "{text}");
}

#[test]
fn dashboard_is_valid_grafana_json() {
    let v: serde_json::Value =
        serde_json::from_str(&repo_file("conf/grafana/portcullis.json")).unwrap();
    assert_eq!(v["uid"], "portcullis");
    let panels = v["panels"].as_array().unwrap();
    assert!(panels.len() >= 12);
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert!(t["expr"]
                .as_str()
                .is_some_and(|e| e.contains("portcullis_") || e.contains("process_")));
        }
    }
}
