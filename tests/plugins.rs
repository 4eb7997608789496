//! The plugin API through the real binary: `plugins:` on routes, config errors with their
//! lines, and the built-in `header-rules` plugin (and the route's own header operations,
//! which run on the same code).

mod common;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const HS_SECRET: &str = "plugin-tests-hs256-secret-long-enough";
const API_KEY: &str = "plugin-test-key-0123456789abcdefghijklmn";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token of the `hs` issuer with these extra claims.
fn token(sub: &str, extra: Value) -> String {
    let mut c = json!({ "iss": "https://hs.test/", "sub": sub, "aud": "api", "exp": now() + 600 });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Server, one upstream `u` at `up`, JWT issuer `hs` and the API key `app`, then `routes`.
fn config(up: &Upstream, routes: &str) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
auth:
  jwt:
    - {{ name: hs, issuer: "https://hs.test/", audiences: [api], algorithms: [HS256], secret_env: PLUGIN_HS_SECRET }}
  api_keys:
    header: x-api-key
    keys:
      - {{ id: app, sha256: "{key}" }}
routes:
{routes}"#,
        up = up.addr,
        key = sha(API_KEY),
    )
}

async fn start(yaml: &str) -> Gateway {
    Gateway::start_with(yaml, &[("PLUGIN_HS_SECRET", HS_SECRET)]).await
}

const HEADER_RULES: &str = r#"
  - name: rules
    match: { path: "/rules/**" }
    upstream: u
    auth: { any_of: [jwt, api_key] }
    plugins:
      - name: header-rules
        config:
          request:
            set: { x-user: "${claim.sub}", x-org: "org=${claim.org}", x-key: "${identity.key}", x-route: "${route}" }
            add: { x-trace: "${request_id}|${method}|${path}|${host}|${header.x-client}" }
            remove: [x-internal]
          response:
            set: { x-served-for: "${claim.sub}@${client_ip}" }
            remove: [x-upstream-secret]
"#;

#[tokio::test]
async fn header_rules_interpolate_claims_and_request_facts() {
    let up = Upstream::start("u").await;
    up.set_handler(std::sync::Arc::new(|_req| {
        let mut r = resp(200, b"{}".to_vec(), "application/json");
        r.headers_mut()
            .insert("x-upstream-secret", "s3cr3t".parse().unwrap());
        Some(r)
    }));
    let gw = start(&config(&up, HEADER_RULES)).await;
    let c = client();
    let t = token("u-42", json!({ "org": "acme" }));
    let r = send(
        &c,
        reqwest::Method::GET,
        &gw.url("/rules/a?q=1"),
        &[
            ("authorization", &format!("Bearer {t}")),
            ("x-client", "cli-7"),
            ("x-internal", "from-client"),
            ("x-user", "spoofed"),
            ("x-request-id", "req-abc"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = up.last_headers().unwrap();
    assert_eq!(h["x-user"], "u-42");
    assert_eq!(h["x-org"], "org=acme");
    assert_eq!(h["x-route"], "rules");
    assert_eq!(h["x-trace"], "req-abc|GET|/rules/a|127.0.0.1|cli-7");
    assert!(h.get("x-internal").is_none(), "removed");
    // a JWT has no API key: the rule has no value, and the header is not the client's
    assert!(h.get("x-key").is_none());
    assert_eq!(r.h("x-served-for"), Some("u-42@127.0.0.1"));
    assert_eq!(r.h("x-upstream-secret"), None);

    // an API key: its id, and no claims (the `set` rules still remove the client's copies)
    let r = send(
        &c,
        reqwest::Method::GET,
        &gw.url("/rules/b"),
        &[("x-api-key", API_KEY), ("x-user", "spoofed")],
    )
    .await;
    assert_eq!(r.status, 200);
    let h = up.last_headers().unwrap();
    assert_eq!(h["x-key"], "app");
    assert!(h.get("x-user").is_none(), "{h:?}");
    assert!(h.get("x-org").is_none());
    assert_eq!(r.h("x-served-for"), None);
}

#[tokio::test]
async fn a_claim_with_a_line_break_is_never_forwarded() {
    let up = Upstream::start("u").await;
    let gw = start(&config(&up, HEADER_RULES)).await;
    // (the gateway's own `forward_claims` refuses a token whose `sub` has one)
    let t = token("u-1", json!({ "org": "acme\r\nx-admin: true" }));
    let r = send(
        &client(),
        reqwest::Method::GET,
        &gw.url("/rules/x"),
        &[("authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = up.last_headers().unwrap();
    assert_eq!(h["x-user"], "u-1");
    assert!(h.get("x-org").is_none(), "{h:?}");
    assert!(h.get("x-admin").is_none(), "{h:?}");
    assert_eq!(h["x-route"], "rules");
}

#[tokio::test]
async fn route_header_operations_run_on_the_same_rules() {
    let up = Upstream::start("u").await;
    let routes = r#"
  - name: plain
    match: { path: "/plain/**" }
    upstream: u
    auth: { any_of: [jwt] }
    request_headers:
      set: { x-static: "1", x-sub: "${claim.sub}" }
    response_headers:
      add: { x-route: "${route}" }
"#;
    let gw = start(&config(&up, routes)).await;
    let t = token("u-9", json!({}));
    let r = send(
        &client(),
        reqwest::Method::GET,
        &gw.url("/plain/x"),
        &[("authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(r.status, 200);
    let h = up.last_headers().unwrap();
    assert_eq!(h["x-static"], "1");
    assert_eq!(h["x-sub"], "u-9");
    assert_eq!(r.h("x-route"), Some("plain"));
}

#[test]
fn plugin_config_errors_name_the_key_and_the_line() {
    let up_addr = "127.0.0.1:9";
    let yaml = format!(
        r#"upstreams:
  u: {{ backends: [{{ addr: "{up_addr}" }}] }}
routes:
  - match: {{ path: /a }}
    upstream: u
    plugins:
      - name: header-rule
  - match: {{ path: /b }}
    upstream: u
    plugins:
      - name: header-rules
        config:
          request:
            set: {{ x-a: "${{claim.sub}}" }}
            sett: {{ x-b: "1" }}
  - match: {{ path: /c }}
    upstream: u
    response_headers:
      set: {{ x-c: "${{nope}}" }}
"#
    );
    assert_refused(
        &yaml,
        &[
            ":7: routes[0].plugins[0].name: unknown plugin `header-rule`; did you mean `header-rules`?",
            ":15: routes[1].plugins[0].config.request.sett: unknown field `sett`",
            ":19: routes[2].response_headers.set.x-c: unknown variable `${nope}`",
        ],
    );
}

#[tokio::test]
async fn a_reload_swaps_plugin_config_without_failing_a_request() {
    let up = Upstream::start("u").await;
    let routes = |version: &str| {
        format!(
            r#"
  - name: live
    match: {{ path: "/live/**" }}
    upstream: u
    plugins:
      - name: header-rules
        config: {{ response: {{ set: {{ x-version: "{version}-${{route}}" }} }} }}
"#
        )
    };
    let gw = start(&config(&up, &routes("v1"))).await;
    let c = client();
    let version = || async {
        let r = send(&c, reqwest::Method::GET, &gw.url("/live/x"), &[]).await;
        assert_eq!(r.status, 200);
        r.h("x-version").map(str::to_string)
    };
    assert_eq!(version().await.as_deref(), Some("v1-live"));
    let load = Load::start(&[gw.url("/live/x")], 4);
    load.progress(20).await;
    gw.write_config(&config(&up, &routes("v2")));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    load.progress(20).await;
    assert_eq!(version().await.as_deref(), Some("v2-live"));
    // a plugin config that does not compile keeps the running one
    gw.write_config(&config(&up, &routes("${nope}")));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_ne!(s, 200, "{v}");
    assert!(v.to_string().contains("unknown variable"), "{v}");
    load.progress(20).await;
    assert_eq!(version().await.as_deref(), Some("v2-live"));
    let stats = load.stop().await;
    assert_eq!(stats.failures, 0, "no request failed across the reloads");
}
