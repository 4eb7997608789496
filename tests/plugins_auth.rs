//! The `forward-auth` plugin through the real binary, against a real auth service (an
//! upstream whose handler decides by the Authorization header and counts its calls).

mod common;
use common::*;
use std::sync::Arc;

/// The auth service: `Bearer good` → 200 with `x-auth-user: alice` (and a header that is
/// not copied), `Bearer login` → 302 to /login, `Bearer nostore` → 200 that must not be
/// cached, anything else → 401 with a JSON body and `WWW-Authenticate`.
async fn auth_service() -> Upstream {
    let auth = Upstream::start("auth").await;
    auth.set_handler(Arc::new(|req| {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut r = match token {
            "Bearer good" | "Bearer nostore" => {
                let mut r = resp(200, Vec::new(), "text/plain");
                let h = r.headers_mut();
                h.insert("x-auth-user", "alice".parse().unwrap());
                h.insert("x-auth-internal", "not-copied".parse().unwrap());
                if token == "Bearer nostore" {
                    h.insert("cache-control", "no-store".parse().unwrap());
                }
                r
            }
            "Bearer login" => {
                let mut r = resp(302, Vec::new(), "text/plain");
                r.headers_mut()
                    .insert("location", "https://login.test/?next=/app".parse().unwrap());
                r
            }
            _ => {
                let mut r = resp(
                    401,
                    br#"{"denied":"by the auth service"}"#.to_vec(),
                    "application/json",
                );
                r.headers_mut()
                    .insert("www-authenticate", "Bearer realm=\"auth\"".parse().unwrap());
                r
            }
        };
        r.headers_mut()
            .insert("x-auth-service", "1".parse().unwrap());
        Some(r)
    }));
    auth
}

fn config(app: &Upstream, auth_url: &str, extra: &str) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  app: {{ backends: [{{ addr: "{app}" }}] }}
routes:
  - name: app
    match: {{ path: "/app/**" }}
    upstream: app
    plugins:
      - name: forward-auth
        config:
          url: "{auth_url}"
          copy_response_headers: [x-auth-user]
{extra}"#,
        app = app.addr,
    )
}

fn auth_url(auth: &Upstream) -> String {
    format!("http://{}/verify?from=gateway", auth.addr)
}

#[tokio::test]
async fn forward_auth_lets_through_copies_headers_or_answers_with_the_services_denial() {
    let (app, auth) = (Upstream::start("app").await, auth_service().await);
    let gw = Gateway::start(&config(&app, &auth_url(&auth), "")).await;
    let c = client();
    let ok = send(
        &c,
        reqwest::Method::POST,
        &gw.url("/app/orders/../items?id=7"),
        &[
            ("authorization", "Bearer good"),
            ("cookie", "session=abc"),
            ("x-auth-user", "mallory"),
            ("x-other", "kept"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // what the auth service was asked
    let asked = auth.last_headers().unwrap();
    assert_eq!(asked["authorization"], "Bearer good");
    assert_eq!(asked["cookie"], "session=abc");
    assert_eq!(asked["x-forwarded-method"], "POST");
    assert_eq!(asked["x-forwarded-uri"], "/app/items?id=7");
    assert_eq!(asked["x-forwarded-proto"], "http");
    assert_eq!(asked["x-forwarded-host"], format!("127.0.0.1:{}", gw.port));
    assert_eq!(asked["x-forwarded-for"], "127.0.0.1");
    assert!(
        asked.get("x-other").is_none(),
        "only forward_headers go to the service"
    );
    assert_eq!(auth.hits_for("/verify"), 1);
    // what the app got: the service's x-auth-user, not the client's; nothing else of it
    let got = app.last_headers().unwrap();
    assert_eq!(got["x-auth-user"], "alice");
    assert_eq!(got.get_all("x-auth-user").iter().count(), 1);
    assert!(got.get("x-auth-internal").is_none());
    assert_eq!(got["x-other"], "kept");
    assert_eq!(app.hits(), 1);

    // a denial is the service's own answer, and nothing goes upstream
    let denied = send(
        &c,
        reqwest::Method::GET,
        &gw.url("/app/x"),
        &[("authorization", "Bearer bad")],
    )
    .await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["denied"], "by the auth service");
    assert_eq!(denied.h("www-authenticate"), Some("Bearer realm=\"auth\""));
    assert_eq!(denied.h("content-type"), Some("application/json"));
    assert!(denied.h("x-request-id").is_some());
    let redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = send(
        &redirect,
        reqwest::Method::GET,
        &gw.url("/app/x"),
        &[("authorization", "Bearer login")],
    )
    .await;
    assert_eq!(login.status, 302);
    assert_eq!(login.h("location"), Some("https://login.test/?next=/app"));
    assert_eq!(app.hits(), 1, "denied requests never reach the app");
    let m = metrics(&gw).await;
    assert!(
        series(
            &m,
            "portcullis_rejections_total{reason=\"forward_auth_denied\"}"
        ) >= Some(2.0),
        "{m}"
    );
}

#[tokio::test]
async fn forward_auth_caches_decisions_by_the_key_headers() {
    let (app, auth) = (Upstream::start("app").await, auth_service().await);
    let extra = "          cache: { ttl: 1m, key_headers: [authorization], max_entries: 100 }\n";
    let gw = Gateway::start(&config(&app, &auth_url(&auth), extra)).await;
    let c = client();
    let get = |token: &'static str, cookie: &'static str| {
        let (c, url) = (c.clone(), gw.url("/app/x"));
        async move {
            send(
                &c,
                reqwest::Method::GET,
                &url,
                &[("authorization", token), ("cookie", cookie)],
            )
            .await
            .status
        }
    };
    assert_eq!(get("Bearer good", "a=1").await, 200);
    assert_eq!(get("Bearer good", "a=2").await, 200);
    assert_eq!(get("Bearer good", "a=3").await, 200);
    assert_eq!(auth.hits(), 1, "one decision for one Authorization");
    // the copied headers come from the cached decision too
    assert_eq!(app.last_headers().unwrap()["x-auth-user"], "alice");
    assert_eq!(app.hits(), 3);
    // a denial is a decision as well
    assert_eq!(get("Bearer bad", "").await, 401);
    assert_eq!(get("Bearer bad", "").await, 401);
    assert_eq!(auth.hits(), 2);
    // `no-store` from the service is never cached
    assert_eq!(get("Bearer nostore", "").await, 200);
    assert_eq!(get("Bearer nostore", "").await, 200);
    assert_eq!(auth.hits(), 4);
}

#[tokio::test]
async fn without_an_answer_on_error_denies_with_503_or_allows() {
    let app = Upstream::start("app").await;
    let dead = dead_port();
    let slow = Upstream::start("slow").await;
    slow.set_mode(Mode::Delay(std::time::Duration::from_secs(5)));
    let extra = format!(
        r#"  - name: open
    match: {{ path: "/open/**" }}
    upstream: app
    plugins:
      - name: forward-auth
        config:
          url: "http://127.0.0.1:{dead}/verify"
          on_error: allow
          copy_response_headers: [x-auth-user]
  - name: slow
    match: {{ path: "/slow/**" }}
    upstream: app
    plugins:
      - name: forward-auth
        config: {{ url: "http://{slow}/verify", timeout: 200ms }}
"#,
        dead = dead.port,
        slow = slow.addr,
    );
    let gw = Gateway::start(&config(
        &app,
        &format!("http://127.0.0.1:{}/v", dead.port),
        &extra,
    ))
    .await;
    let c = client();
    let r = send(
        &c,
        reqwest::Method::GET,
        &gw.url("/app/x"),
        &[("authorization", "Bearer good")],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "auth_unavailable");
    assert_eq!(r.h("retry-after"), Some("5"));
    let r = send(&c, reqwest::Method::GET, &gw.url("/slow/x"), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "auth_unavailable");
    assert_eq!(app.hits(), 0);
    // on_error: allow lets it through, never with the client's copy of a copied header
    let r = send(
        &c,
        reqwest::Method::GET,
        &gw.url("/open/x"),
        &[("x-auth-user", "mallory")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(app.last_headers().unwrap().get("x-auth-user").is_none());
}

#[test]
fn forward_auth_settings_are_checked_at_load() {
    let yaml = r#"upstreams:
  u: { backends: [{ addr: "127.0.0.1:9" }] }
routes:
  - match: { path: /a }
    upstream: u
    plugins:
      - name: forward-auth
        config:
          url: "ftp://auth/"
          timeout: 0s
          cache: { ttl: 10s, key_header: [authorization] }
  - match: { path: /b }
    upstream: u
    plugins:
      - name: forward-auth
        config: { url: "http://auth/", on_error: maybe, forward_headers: ["bad name"] }
"#;
    assert_refused(
        yaml,
        &[
            ":11: routes[0].plugins[0].config.cache.key_header: unknown field `key_header`",
            ":16: routes[1].plugins[0].config.on_error: unknown variant `maybe`",
        ],
    );
    let yaml = yaml
        .replace("key_header:", "key_headers:")
        .replace("maybe", "allow");
    assert_refused(
        &yaml,
        &[
            ":9: routes[0].plugins[0].config.url: URL `ftp://auth/` must be http:// or https://",
            ":10: routes[0].plugins[0].config.timeout: must be above 0",
            ":16: routes[1].plugins[0].config.forward_headers[0]: `bad name` is not a valid header name",
        ],
    );
}
