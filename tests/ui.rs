//! The status page (`/ui` on the admin listener) rendered by a real headless Chromium against
//! a running gateway with traffic: routes listed, a killed backend shown unhealthy, charts
//! drawn from live data.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn chromium() -> &'static str {
    // Debian's package (installed by `make deps` / .ci/run)
    if std::path::Path::new("/usr/bin/chromium").exists() {
        "/usr/bin/chromium"
    } else {
        "chromium"
    }
}

/// The DOM after the page ran for `budget_ms` of (virtual) time.
fn rendered_dom(url: &str, budget_ms: u32, profile: &std::path::Path) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium (Debian package `chromium`) is needed: run `make deps`");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `data-points` count of the chart `id` in the dumped DOM.
fn chart_points(dom: &str, id: &str) -> usize {
    let tag = format!("id=\"{id}\"");
    let Some(i) = dom.find(&tag) else { return 0 };
    let start = dom[..i].rfind('<').unwrap_or(0);
    let end = i + dom[i..].find('>').unwrap_or(0);
    let el = &dom[start..end];
    el.split("data-points=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn status_page_renders_routes_health_and_live_charts() {
    let live = Upstream::start("live").await;
    let mut dead = Upstream::start("dead").await;
    let yaml = format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  shop:
    backends: [{{ addr: "{live}" }}, {{ addr: "{dead}" }}]
    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
routes:
  - {{ name: catalogue, match: {{ path: "/catalogue/**" }}, upstream: shop }}
  - {{ name: checkout, match: {{ path: "/checkout/**" }}, upstream: shop }}
"#,
        live = live.addr,
        dead = dead.addr,
    );
    let gw = Gateway::start(&yaml).await;
    dead.kill();
    // the admin API sees the dead backend as unhealthy before the page is loaded
    let dead_addr = dead.addr.to_string();
    let seen = eventually(Duration::from_secs(10), || {
        let dead_addr = dead_addr.clone();
        let gw = &gw;
        async move {
            let (_, v) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
            v["upstreams"]["shop"]["backends"]
                .as_array()
                .is_some_and(|b| {
                    b.iter()
                        .any(|b| b["addr"] == dead_addr.as_str() && b["healthy"] == false)
                })
        }
    })
    .await;
    assert!(
        seen,
        "the health check never marked the killed backend down"
    );

    // traffic while the browser watches
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let url = gw.url("/catalogue/item");
        tokio::spawn(async move {
            let c = client();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = c.get(&url).send().await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}#token={}", gw.admin_url("/ui"), ADMIN_TOKEN);
    let dom = {
        let url = url.clone();
        let profile = profile.path().to_path_buf();
        tokio::task::spawn_blocking(move || rendered_dom(&url, 9000, &profile))
            .await
            .unwrap()
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.unwrap();
    assert!(sent > 10, "the load loop ran ({sent} requests)");

    assert!(
        dom.contains("data-route=\"catalogue\""),
        "routes listed:\n{dom}"
    );
    assert!(
        dom.contains("data-route=\"checkout\""),
        "routes listed:\n{dom}"
    );
    let dead_row = format!("data-backend=\"{}\" data-healthy=\"false\"", dead.addr);
    let live_row = format!("data-backend=\"{}\" data-healthy=\"true\"", live.addr);
    assert!(
        dom.contains(&dead_row),
        "the killed backend shown unhealthy:\n{dom}"
    );
    assert!(
        dom.contains(&live_row),
        "the live backend shown healthy:\n{dom}"
    );
    for chart in ["rps", "err", "p50", "p99"] {
        assert!(
            chart_points(&dom, chart) >= 2,
            "chart {chart} drawn from at least two intervals:\n{dom}"
        );
    }
    assert!(
        dom.contains("<div id=\"error\"></div>"),
        "no error shown:\n{dom}"
    );

    // without the token the page shows the login form and no data
    let dom = {
        let url = gw.admin_url("/ui");
        let profile = tempfile::tempdir().unwrap();
        tokio::task::spawn_blocking(move || rendered_dom(&url, 2000, profile.path()))
            .await
            .unwrap()
    };
    assert!(
        !dom.contains("data-route=\"catalogue\""),
        "no data without a token"
    );
}
