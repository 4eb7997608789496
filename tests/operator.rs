//! What an operator sees when something goes wrong, through the real binary: the reason of
//! each refusal in the access log and in metrics, per-backend and process series, the query
//! in the log (redacted), readiness that says what is missing, `-t` suggestions, reload
//! feedback, and the running config with its secrets redacted.

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

const KEY: &str = "operator-test-key";

/// Access-log lines (JSON) whose `request_id` is `id`.
fn log_line(gw: &Gateway, id: &str) -> Option<Value> {
    gw.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["request_id"] == id)
}

async fn logged(gw: &Gateway, id: &str) -> Value {
    let mut found = None;
    let ok = eventually(Duration::from_secs(10), || {
        found = log_line(gw, id);
        let hit = found.is_some();
        async move { hit }
    })
    .await;
    assert!(ok, "no access-log line for request {id:?}:\n{}", gw.log());
    found.unwrap_or_default()
}

async fn admin_up(gw: &Gateway) {
    let port = gw.admin_port;
    let up = eventually(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "admin listener never came up");
}

fn config(up: &Upstream, extra_server: &str) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" {extra_server} }}
upstreams:
  up: {{ backends: [{{ addr: "{addr}" }}] }}
  empty: {{ backends: [] }}
auth:
  api_keys:
    query_param: api_key
    keys:
      - {{ id: gold-user, sha256: "{key}", tier: gold }}
rate_limits:
  tiers:
    free: {{ requests: 100, per: 60s }}
  policies:
    per_client: {{ key: client, requests: 2, per: 60s }}
routes:
  - {{ name: private, match: {{ path: "/private/**" }}, upstream: up, auth: {{ any_of: [api_key] }}, rate_limit: [per_client] }}
  - {{ name: ro, match: {{ path: "/ro/**", methods: [GET] }}, upstream: up }}
  - {{ name: nowhere, match: {{ path: "/nowhere/**" }}, upstream: empty }}
  - {{ name: public, match: {{ path: "/pub/**" }}, upstream: up, log_redact_query: [token] }}
"#,
        addr = up.addr,
        key = sha(KEY),
    )
}

async fn call(gw: &Gateway, method: reqwest::Method, path: &str) -> (u16, String) {
    let r = client().request(method, gw.url(path)).send().await.unwrap();
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (r.status().as_u16(), id)
}

#[tokio::test]
async fn refusals_say_why_in_the_log_and_metrics() {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&config(&up, "")).await;
    admin_up(&gw).await;
    let cases = [
        (reqwest::Method::GET, "/private/x", 401, "unauthorized"),
        (reqwest::Method::GET, "/missing", 404, "not_found"),
        (reqwest::Method::DELETE, "/ro/x", 405, "method_not_allowed"),
        (
            reqwest::Method::GET,
            "/nowhere/x",
            503,
            "no_healthy_backend",
        ),
    ];
    for (m, path, status, reason) in cases {
        let (s, id) = call(&gw, m, path).await;
        assert_eq!(s, status, "{path}");
        let line = logged(&gw, &id).await;
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(
            line["error"], reason,
            "the log says why {path} was refused: {line}"
        );
    }
    // the tier the key names is not configured: counted, logged once, the policy applies
    for _ in 0..3 {
        let r = client()
            .get(gw.url("/private/x"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 200 | 429));
    }
    let (s, id) = call(
        &gw,
        reqwest::Method::GET,
        &format!("/private/y?api_key={KEY}"),
    )
    .await;
    assert_eq!(
        s, 429,
        "the policy's own limit (2) applies to an unknown tier"
    );
    assert_eq!(logged(&gw, &id).await["error"], "rate_limited");
    let text = metrics(&gw).await;
    for reason in [
        "unauthorized",
        "not_found",
        "method_not_allowed",
        "no_healthy_backend",
        "rate_limited",
    ] {
        let v = series(
            &text,
            &format!("portcullis_rejections_total{{reason=\"{reason}\"}}"),
        );
        assert!(v.unwrap_or(0.0) >= 1.0, "{reason} counted:\n{text}");
    }
    assert!(
        series(&text, "portcullis_ratelimit_unknown_tier_total").unwrap_or(0.0) >= 4.0,
        "{text}"
    );
    let warned = gw.log().matches("names the rate-limit tier `gold`").count();
    assert_eq!(warned, 1, "the unknown tier is logged once:\n{}", gw.log());
    // the API key in the query never reaches the log
    assert!(!gw.log().contains(KEY), "the API key leaked into the log");
}

#[tokio::test]
async fn backend_and_process_series_and_the_logged_query() {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&config(&up, "")).await;
    admin_up(&gw).await;
    let (s, id) = call(
        &gw,
        reqwest::Method::GET,
        "/pub/a?x=1&token=s3cr3t-value&y=2",
    )
    .await;
    assert_eq!(s, 200);
    let line = logged(&gw, &id).await;
    assert_eq!(line["path"], "/pub/a");
    assert_eq!(line["query"], "x=1&token=REDACTED&y=2", "{line}");
    assert!(
        !gw.log().contains("s3cr3t-value"),
        "a redacted value was logged"
    );

    let text = metrics(&gw).await;
    // labels come out in name order
    let backend = format!("backend=\"{}\"", up.addr);
    let ok = series(
        &text,
        &format!(
            "portcullis_backend_attempts_total{{{backend},outcome=\"success\",upstream=\"up\"}}"
        ),
    );
    assert!(ok.unwrap_or(0.0) >= 1.0, "per-backend attempts:\n{text}");
    let count = series(
        &text,
        &format!("portcullis_backend_response_duration_seconds_count{{{backend},upstream=\"up\"}}"),
    );
    assert!(count.unwrap_or(0.0) >= 1.0, "per-backend latency:\n{text}");
    let rss = series(&text, "process_resident_memory_bytes").unwrap_or(0.0);
    assert!(rss > 1_000_000.0, "process RSS exported: {rss}");
    assert!(series(&text, "process_open_fds").unwrap_or(0.0) > 0.0);
}

#[tokio::test]
async fn readiness_names_what_is_missing_and_is_configurable() {
    let up = Upstream::start("up").await;
    // a JWKS issuer whose keys can never load: a reserved loopback port that refuses
    let closed = dead_port();
    let jwks_port = closed.port;
    let base = config(&up, "").replace(
        "auth:\n",
        &format!(
            "auth:\n  jwt:\n    - {{ name: idp, issuer: https://idp.test/, algorithms: [RS256], jwks_url: \"http://127.0.0.1:{jwks_port}/jwks\" }}\n"
        ),
    );
    let gw = Gateway::start(&base).await;
    admin_up(&gw).await;
    let c = client();
    let ready = |gw: &Gateway| {
        let url = gw.admin_url("/readyz");
        let c = c.clone();
        async move {
            let r = c.get(url).send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = ready(&gw).await;
    assert_eq!(s, 503, "{v}");
    let why = v["not_ready_because"].to_string();
    assert!(why.contains("`empty` has no healthy backend"), "{why}");
    assert!(why.contains("issuer `idp`"), "{why}");
    assert_eq!(v["issuers"]["idp"]["jwks_loaded"], false);
    assert_eq!(v["upstreams"]["up"]["ready"], true);

    // only `up` gates readiness, and not the JWKS
    gw.write_config(&base.replace(
        "token_sha256: \"{admin_sha}\" ",
        "token_sha256: \"{admin_sha}\", readiness: { upstreams: [up], jwks: false } ",
    ));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = ready(&gw).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["upstreams"]["empty"]["gates_readiness"], false);

    // `none`: upstreams never gate; a name that does not exist is a config error
    gw.write_config(&base.replace(
        "token_sha256: \"{admin_sha}\" ",
        "token_sha256: \"{admin_sha}\", readiness: { upstreams: [upp] } ",
    ));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["errors"].to_string().contains("did you mean `up`?"),
        "{v}"
    );
}

#[tokio::test]
async fn reload_feedback_status_and_the_running_config() {
    let up = Upstream::start("up").await;
    let yaml = config(&up, "");
    let gw = Gateway::start(&yaml).await;
    admin_up(&gw).await;
    let (_, v) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert!(v["last_reload"].is_null(), "no reload yet: {v}");

    // a reload that changes the listeners applies the rest and says what waits for a restart
    let other = free_port();
    gw.write_config(&yaml.replace(
        "listen: [\"127.0.0.1:{port}\"]",
        &format!("listen: [\"127.0.0.1:{other}\"]"),
    ));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["warnings"].to_string().contains("server.listen changed"),
        "{v}"
    );
    let (_, st) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(st["last_reload"]["ok"], true, "{st}");
    assert!(st["last_reload"]["warnings"]
        .to_string()
        .contains("server.listen"));

    // a bad one keeps the running config, and the status says why
    gw.write_config(&yaml.replace("upstream: up,", "upstream: upp,"));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["errors"].to_string().contains("did you mean `up`?"),
        "{v}"
    );
    let (_, st) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(st["last_reload"]["ok"], false, "{st}");
    assert!(st["last_reload"]["errors"].to_string().contains("upp"));
    assert_eq!(call(&gw, reqwest::Method::GET, "/pub/x").await.0, 200);

    // the running config, secrets redacted, behind the admin token
    let r = client()
        .get(gw.admin_url("/admin/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, cfg) = gw.admin(reqwest::Method::GET, "/admin/config", None).await;
    assert_eq!(s, 200);
    assert_eq!(cfg["server"]["admin"]["token_sha256"], "REDACTED", "{cfg}");
    assert_eq!(cfg["auth"]["api_keys"]["keys"][0]["sha256"], "REDACTED");
    assert_eq!(cfg["auth"]["api_keys"]["keys"][0]["id"], "gold-user");
    let text = cfg.to_string();
    assert!(!text.contains(&sha(KEY)) && !text.contains(&admin_token_sha256()));
}

#[test]
fn config_test_suggests_names() {
    let yaml = |route: &str, extra: &str| {
        format!(
            r#"
upstreams:
  orders: {{ backends: [{{ addr: "127.0.0.1:1" }}] }}
{extra}
routes:
  - {route}
"#
        )
    };
    let (ok, out) = validate(&yaml("{ match: { path: /a }, upstream: ordrs }", ""));
    assert!(!ok && out.contains("did you mean `orders`?"), "{out}");
    let (ok, out) = validate(&yaml(
        "{ match: { path: /a }, upstream: orders, rate_limt: [x] }",
        "",
    ));
    assert!(!ok && out.contains("did you mean `rate_limit`?"), "{out}");
    let (ok, out) = validate(&yaml(
        "{ match: { path: /a }, upstream: orders, rate_limit: [per_clent] }",
        "rate_limits:\n  policies:\n    per_client: { key: client, requests: 1, per: 1s }",
    ));
    assert!(!ok && out.contains("did you mean `per_client`?"), "{out}");
    // an issuer refused for its own reason is not also "unknown" on the routes using it
    let (ok, out) = validate(&yaml(
        "{ match: { path: /a }, upstream: orders, auth: { jwt: corp } }",
        "auth:\n  jwt:\n    - { name: corp, issuer: https://i/, algorithms: [RS256, none], jwks_url: \"https://i/jwks\" }",
    ));
    assert!(!ok && out.contains("algorithms"), "{out}");
    assert!(!out.contains("unknown JWT issuer"), "{out}");
    let (ok, out) = validate(&yaml(
        "{ match: { path: /a }, upstream: orders, auth: { jwt: crop } }",
        "auth:\n  jwt:\n    - { name: corp, issuer: https://i/, algorithms: [RS256], jwks_url: \"https://i/jwks\" }",
    ));
    assert!(!ok && out.contains("did you mean `corp`?"), "{out}");
}
