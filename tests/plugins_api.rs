//! The Rust plugin API through a real binary built on it: README's example
//! (`src/bin/plugin-example.rs`, a `main` that registers its own `tenant` plugin and runs
//! `portcullis::run_with`), and a fault injector that makes each phase answer or fail.

mod common;
use common::*;

fn config(up: &Upstream) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
routes:
  - name: tenants
    match: {{ path: "/t/**" }}
    upstream: u
    plugins:
      - name: tenant
        config: {{ plans: {{ acme: gold, globex: free }} }}
      - name: header-rules
        config: {{ request: {{ set: {{ x-plan-seen: "${{var.plan}}" }} }} }}
  - name: faults
    match: {{ path: "/f/**" }}
    upstream: u
    plugins:
      - name: fault
"#,
        up = up.addr
    )
}

async fn start(up: &Upstream) -> Gateway {
    let opts = StartOptions {
        bin: Some(example_bin()),
        env: vec![("PORTCULLIS_EXAMPLE_FAULTS".into(), "1".into())],
        ..StartOptions::default()
    };
    Gateway::start_opts(&config(up), opts).await
}

#[tokio::test]
async fn a_plugin_registered_from_its_own_main_runs_in_the_chain() {
    let up = Upstream::start("u").await;
    let gw = start(&up).await;
    let c = client();
    let r = send(
        &c,
        reqwest::Method::GET,
        &gw.url("/t/x"),
        &[("x-tenant", "acme")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.h("x-tenant"), Some("acme"));
    let h = up.last_headers().unwrap();
    assert_eq!(h["x-tenant-plan"], "gold");
    // a later plugin reads what an earlier one shared
    assert_eq!(h["x-plan-seen"], "gold");
    let r = send(
        &c,
        reqwest::Method::GET,
        &gw.url("/t/x"),
        &[("x-tenant", "initech")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "unknown_tenant");
    assert!(r.h("x-request-id").is_some());
    assert_eq!(up.hits(), 1);
    // counted in the logging phase, which may run just after the client has its answer
    let rejected = "portcullis_rejections_total{reason=\"unknown_tenant\"}";
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            series(&metrics(&gw).await, rejected) == Some(1.0)
        })
        .await,
        "{}",
        metrics(&gw).await
    );
    // its log phase ran with the final status
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            gw.log().contains("tenant acme on route tenants: 200")
                && gw.log().contains("tenant - on route tenants: 403")
        })
        .await,
        "{}",
        gw.log()
    );
}

#[tokio::test]
async fn the_example_plugins_config_is_checked_like_any_other() {
    let yaml = "upstreams:\n  u: { backends: [{ addr: \"127.0.0.1:9\" }] }\nroutes:\n  - match: { path: /a }\n    upstream: u\n    plugins:\n      - name: tenant\n        config: { plan: { a: b } }\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(example_bin())
        .args(["-t", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains(":8: routes[0].plugins[0].config.plan: unknown field `plan`"),
        "{text}"
    );
    // the stock binary does not know the plugin
    assert_refused(
        yaml,
        &[":7: routes[0].plugins[0].name: unknown plugin `tenant`"],
    );
}

async fn fault(gw: &Gateway, method: reqwest::Method, fault: &str, body: &str) -> Reply {
    let mut rb = client()
        .request(method, gw.url("/f/x"))
        .header("x-fault", fault);
    if !body.is_empty() {
        rb = rb.body(body.to_string());
    }
    let r = rb.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let body = r.bytes().await.unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn each_phase_can_answer_locally_or_fail_as_a_plugin_error() {
    let up = Upstream::start("u").await;
    let gw = start(&up).await;
    use reqwest::Method;
    // answers before anything goes upstream
    for phase in ["request_head", "whole_body", "upstream_request"] {
        let r = fault(&gw, Method::POST, &format!("{phase}:respond"), "payload").await;
        assert_eq!(r.status, 418, "{phase}: {}", r.text());
        assert_eq!(r.text(), format!("answered at {phase}"));
        assert_eq!(r.h("x-fault"), Some(phase));
        assert!(r.h("x-request-id").is_some());
    }
    assert_eq!(up.hits(), 0, "no request reached the upstream");
    // a body streaming upstream: the upstream request is abandoned, the client answered
    let r = fault(&gw, Method::POST, "request_body:respond", "payload").await;
    assert_eq!(r.status, 418, "{}", r.text());
    assert_eq!(r.text(), "answered at request_body");
    // the response head is replaced (the upstream did answer)
    let hits = up.hits();
    let r = fault(&gw, Method::GET, "response_head:respond", "").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "answered at response_head");
    assert_eq!(up.hits(), hits + 1);
    // a failure is the gateway's 500 plugin_error, wherever it happens before the response
    let phases = [
        "request_head",
        "whole_body",
        "request_body",
        "upstream_request",
        "response_head",
    ];
    for (i, phase) in phases.iter().enumerate() {
        let r = fault(&gw, Method::POST, &format!("{phase}:error"), "payload").await;
        assert_eq!(r.status, 500, "{phase}: {}", r.text());
        assert_eq!(r.json()["error"], "plugin_error", "{phase}");
        assert_eq!(r.json()["message"], "plugin `fault` failed");
        let m = metrics(&gw).await;
        let n = series(
            &m,
            "portcullis_plugin_errors_total{plugin=\"fault\",route=\"faults\"}",
        );
        assert_eq!(n, Some(i as f64 + 1.0), "{m}");
    }
    assert!(gw
        .log()
        .contains("plugin `fault` on route `faults` failed: injected at whole_body"));
    // in the response body: the 500 when the head is still unsent, else the response is
    // cut short (which of the two depends on whether Pingora flushed the head first)
    let cut = client()
        .get(gw.url("/f/x"))
        .header("x-fault", "response_body:error")
        .send()
        .await
        .unwrap();
    match cut.status().as_u16() {
        500 => {
            let v: serde_json::Value = cut.json().await.unwrap();
            assert_eq!(v["error"], "plugin_error");
        }
        200 => assert!(cut.bytes().await.is_err(), "the body is cut short"),
        other => panic!("status {other}"),
    }
    let m = metrics(&gw).await;
    let n = series(
        &m,
        "portcullis_plugin_errors_total{plugin=\"fault\",route=\"faults\"}",
    );
    assert_eq!(n, Some(6.0), "{m}");
    // and the gateway goes on serving
    let r = fault(&gw, Method::GET, "none:respond", "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_body_read_whole_may_be_rewritten_before_it_goes_upstream() {
    let up = Upstream::start("u").await;
    let gw = start(&up).await;
    let r = client()
        .post(gw.url("/f/x"))
        .header("x-fault-upper", "1")
        .body("hello, plugins")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last_body().unwrap(), "HELLO, PLUGINS");
    let h = up.last_headers().unwrap();
    assert_eq!(h["content-length"], "14");
}

#[test]
fn the_readme_shows_the_example_that_is_tested() {
    let root = env!("CARGO_MANIFEST_DIR");
    let bin = std::fs::read_to_string(format!("{root}/src/bin/plugin-example.rs")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let start = bin.find("use portcullis::plugin::").unwrap();
    let end = bin.find("\n/// A fault injector").unwrap();
    // the README's copy leaves out the test-only fault injector
    let code = bin[start..end].trim_end().replace(
        "    if std::env::var_os(\"PORTCULLIS_EXAMPLE_FAULTS\").is_some() {\n        registry.register(\"fault\", fault::factory);\n    }\n",
        "",
    );
    assert!(
        readme.contains(&code),
        "README.md (\"Extending Portcullis\") must show src/bin/plugin-example.rs as it is"
    );
}
