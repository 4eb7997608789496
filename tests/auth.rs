//! Authentication through the real binary: JWTs signed in the test (HS256, RS256, ES256),
//! a JWKS that rotates and goes down, API keys, scopes, identity headers, revocation.

mod common;
use base64::Engine;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const HS_SECRET: &str = "test-hs256-secret-that-is-long-enough";
const API_KEY: &str = "k3y-for-tests-0123456789abcdefghijklmnopqrs";
const OLD_KEY: &str = "expired-key-0123456789";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

struct Keys {
    rsa_priv_pem: String,
    rsa_pub_pem: String,
    ec_priv_pem: String,
    ec_pub_pem: String,
}

fn keys() -> Keys {
    let mut rng = rand::thread_rng();
    let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let ec = p256::SecretKey::random(&mut rng);
    Keys {
        rsa_priv_pem: rsa.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
        rsa_pub_pem: rsa
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
        ec_priv_pem: ec.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
        ec_pub_pem: p256::pkcs8::EncodePublicKey::to_public_key_pem(
            &ec.public_key(),
            LineEnding::LF,
        )
        .unwrap(),
    }
}

fn claims(iss: &str, sub: &str, extra: Value) -> Value {
    let mut c = json!({ "iss": iss, "sub": sub, "aud": "api", "exp": now() + 600, "iat": now() });
    if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    c
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, c: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, c, key).unwrap()
}

async fn start(up: &Upstream, k: &Keys, jwks_url: &str) -> Gateway {
    start_cooldown(up, k, jwks_url, "1s").await
}

async fn start_cooldown(up: &Upstream, k: &Keys, jwks_url: &str, cooldown: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap().keep();
    let rsa_pub = dir.join("rsa.pem");
    let ec_pub = dir.join("ec.pem");
    std::fs::write(&rsa_pub, &k.rsa_pub_pem).unwrap();
    std::fs::write(&ec_pub, &k.ec_pub_pem).unwrap();
    let yaml = format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
auth:
  jwt:
    - {{ name: hs, issuer: "https://hs.test/", audiences: [api], algorithms: [HS256], secret_env: TEST_HS_SECRET, leeway: 5s }}
    - {{ name: rs, issuer: "https://rs.test/", audiences: [api], algorithms: [RS256], public_key_file: "{rsa}", leeway: 5s,
         forward_claims: {{ sub: X-Auth-Subject, email: X-Auth-Email }} }}
    - {{ name: es, issuer: "https://es.test/", audiences: [api, other], algorithms: [ES256], public_key_file: "{ec}", leeway: 5s }}
    - {{ name: jwks, issuer: "https://jwks.test/", audiences: [api], algorithms: [RS256], jwks_url: "{jwks_url}",
         jwks_refresh: 1h, jwks_cooldown: {cooldown}, leeway: 5s }}
  api_keys:
    header: x-api-key
    query_param: api_key
    keys:
      - {{ id: mobile, sha256: "{key}", scopes: [read, users:read], tier: free }}
      - {{ id: old, sha256: "{old}", expires: "2020-01-01T00:00:00Z" }}
routes:
  - {{ name: any, match: {{ path: "/any/**" }}, upstream: u, auth: {{ any_of: [jwt, api_key] }} }}
  - {{ name: keys, match: {{ path: "/keys/**" }}, upstream: u, auth: {{ any_of: [api_key] }} }}
  - {{ name: rs-only, match: {{ path: "/rs/**" }}, upstream: u, auth: {{ jwt: rs, strip_authorization: true }} }}
  - {{ name: scoped, match: {{ path: "/scoped/**" }}, upstream: u, auth: {{ any_of: [jwt, api_key], scopes: ["users:write"] }} }}
  - {{ name: jwks, match: {{ path: "/jwks/**" }}, upstream: u, auth: {{ jwt: jwks }} }}
  - {{ name: public, match: {{ path: "/public/**" }}, upstream: u }}
"#,
        up = up.addr,
        rsa = rsa_pub.display(),
        ec = ec_pub.display(),
        key = sha(API_KEY),
        old = sha(OLD_KEY),
    );
    Gateway::start_with(&yaml, &[("TEST_HS_SECRET", HS_SECRET)]).await
}

async fn call(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    get_with(&client(), &gw.url(path), headers).await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn jwt_algorithms_claims_and_identity_headers() {
    let up = Upstream::start("u").await;
    let k = keys();
    let no_idp = dead_port(); // an IdP that refuses, on a reserved port
    let gw = start(
        &up,
        &k,
        &format!("http://127.0.0.1:{}/jwks.json", no_idp.port),
    )
    .await;
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let rs = EncodingKey::from_rsa_pem(k.rsa_priv_pem.as_bytes()).unwrap();
    let es = EncodingKey::from_ec_pem(k.ec_priv_pem.as_bytes()).unwrap();

    // three algorithms, each verified by its issuer; identity forwarded upstream
    let t = sign(
        Algorithm::HS256,
        &hs,
        None,
        &claims("https://hs.test/", "alice", json!({})),
    );
    let (s, _, v) = call(
        &gw,
        "/any/x",
        &[
            ("authorization", &bearer(&t)),
            ("x-auth-subject", "mallory"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["headers"]["x-auth-subject"], "alice",
        "spoofed identity header replaced"
    );
    assert!(
        v["headers"].get("authorization").is_some(),
        "Authorization kept by default"
    );

    let t = sign(
        Algorithm::RS256,
        &rs,
        None,
        &claims("https://rs.test/", "bob", json!({ "email": "bob@x.test" })),
    );
    let (s, _, v) = call(
        &gw,
        "/rs/x",
        &[
            ("authorization", &bearer(&t)),
            ("x-auth-email", "evil@x.test"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["headers"]["x-auth-subject"], "bob");
    assert_eq!(v["headers"]["x-auth-email"], "bob@x.test");
    assert!(
        v["headers"].get("authorization").is_none(),
        "strip_authorization removes it"
    );

    let t = sign(
        Algorithm::ES256,
        &es,
        None,
        &claims("https://es.test/", "carol", json!({ "aud": "other" })),
    );
    let (s, _, v) = call(&gw, "/any/x", &[("authorization", &bearer(&t))]).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["headers"]["x-auth-subject"], "carol");

    // a public route never sees client identity headers either
    let (_, _, v) = call(&gw, "/public/x", &[("x-auth-subject", "mallory")]).await;
    assert!(v["headers"].get("x-auth-subject").is_none());

    // pinned issuer: an HS token is refused on the RS-only route
    let t = sign(
        Algorithm::HS256,
        &hs,
        None,
        &claims("https://hs.test/", "alice", json!({})),
    );
    let (s, h, v) = call(&gw, "/rs/x", &[("authorization", &bearer(&t))]).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"], "invalid_token");
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));

    let before = up.hits();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            sign(
                Algorithm::RS256,
                &rs,
                None,
                &claims("https://rs.test/", "x", json!({ "exp": now() - 120 })),
            ),
            "expired",
        ),
        (
            "not yet valid",
            sign(
                Algorithm::RS256,
                &rs,
                None,
                &claims("https://rs.test/", "x", json!({ "nbf": now() + 600 })),
            ),
            "not valid yet",
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                &rs,
                None,
                &claims("https://evil.test/", "x", json!({})),
            ),
            "another issuer",
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                &rs,
                None,
                &claims("https://rs.test/", "x", json!({ "aud": "nope" })),
            ),
            "another audience",
        ),
        (
            "no exp",
            sign(
                Algorithm::RS256,
                &rs,
                None,
                &json!({ "iss": "https://rs.test/", "sub": "x", "aud": "api" }),
            ),
            "required claim",
        ),
        (
            "wrong claim types",
            sign(
                Algorithm::RS256,
                &rs,
                None,
                &claims("https://rs.test/", "x", json!({ "exp": "tomorrow" })),
            ),
            // jsonwebtoken reads an `exp` that is not a number as no `exp` at all: refused,
            // and said so (the check used to be `contains("")`, true of any header)
            "error_description=\"the token lacks a required claim\"",
        ),
    ];
    for (name, token, desc) in cases {
        let (s, h, v) = call(&gw, "/rs/x", &[("authorization", &bearer(&token))]).await;
        assert_eq!(s, 401, "{name}: {v}");
        let www = h["www-authenticate"].to_str().unwrap();
        assert!(
            www.starts_with("Bearer realm=\"portcullis\", error=\"invalid_token\""),
            "{name}: {www}"
        );
        assert!(www.contains(desc), "{name}: {www}");
        assert!(!www.contains(&token), "the token is never echoed");
    }

    // alg none, alg swap (HS256 signed with the RSA public key), tampered signature
    let header_none = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64(
        serde_json::to_vec(&claims("https://rs.test/", "x", json!({})))
            .unwrap()
            .as_slice(),
    );
    let none_token = format!("{header_none}.{body}.");
    let swapped = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(k.rsa_pub_pem.as_bytes()),
        None,
        &claims("https://rs.test/", "x", json!({})),
    );
    let good = sign(
        Algorithm::RS256,
        &rs,
        None,
        &claims("https://rs.test/", "x", json!({})),
    );
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let tampered_body = b64(
        serde_json::to_vec(&claims("https://rs.test/", "admin", json!({})))
            .unwrap()
            .as_slice(),
    );
    parts[1] = tampered_body;
    let tampered = parts.join(".");
    let junk = vec![
        none_token,
        swapped,
        tampered,
        "a.b.c".to_string(),
        "not-a-token".to_string(),
        "eyJhbGciOiJSUzI1NiJ9.%%%%.abc".to_string(),
        "ünïcödé.jünk.tökén".to_string(),
        "x".repeat(9000),
    ];
    for token in &junk {
        let (s, _, v) = call(
            &gw,
            "/rs/x",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(s, 401, "token {:.40}: {v}", token);
    }
    // a header far over any sane token size gets a 4xx, never a 5xx or a crash
    let huge = format!("Bearer {}", "A".repeat(100_000));
    let r = client()
        .get(gw.url("/rs/x"))
        .header("authorization", huge)
        .send()
        .await
        .expect("the gateway answers an oversized Authorization header (no reset)");
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_eq!(
        up.hits(),
        before,
        "no failed authentication reached the upstream"
    );
    // the gateway is still healthy
    let t = sign(
        Algorithm::RS256,
        &rs,
        None,
        &claims("https://rs.test/", "bob", json!({})),
    );
    assert_eq!(
        call(&gw, "/rs/x", &[("authorization", &bearer(&t))])
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn api_keys_scopes_and_missing_credentials() {
    let up = Upstream::start("u").await;
    let k = keys();
    let no_idp = dead_port(); // an IdP that refuses, on a reserved port
    let gw = start(
        &up,
        &k,
        &format!("http://127.0.0.1:{}/jwks.json", no_idp.port),
    )
    .await;

    let (s, h, v) = call(&gw, "/keys/x", &[]).await;
    assert_eq!(s, 401);
    assert_eq!(h["www-authenticate"], "Bearer realm=\"portcullis\"");
    assert_eq!(v["error"], "unauthorized");

    let (s, _, v) = call(&gw, "/keys/x", &[("x-api-key", API_KEY)]).await;
    assert_eq!(s, 200);
    assert_eq!(v["headers"]["x-auth-subject"], "mobile");
    assert!(
        v["headers"].get("x-api-key").is_none(),
        "the key itself is not forwarded"
    );

    let (s, h, _) = call(&gw, "/keys/x", &[("x-api-key", "wrong-key")]).await;
    assert_eq!(s, 401);
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));
    let (s, h, _) = call(&gw, "/keys/x", &[("x-api-key", OLD_KEY)]).await;
    assert_eq!(s, 401);
    assert!(h["www-authenticate"].to_str().unwrap().contains("expired"));

    // from the query string, removed before forwarding
    let (s, _, v) = call(&gw, &format!("/keys/x?a=1&api_key={API_KEY}&b=2"), &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v["query"], "a=1&b=2");

    // valid credentials without the scope: 403
    let (s, h, v) = call(&gw, "/scoped/x", &[("x-api-key", API_KEY)]).await;
    assert_eq!(s, 403);
    assert_eq!(v["error"], "insufficient_scope");
    let www = h["www-authenticate"].to_str().unwrap();
    assert!(
        www.contains("error=\"insufficient_scope\"") && www.contains("scope=\"users:write\""),
        "{www}"
    );
    // a JWT with the scope passes (scope string and scp array forms)
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let t = sign(
        Algorithm::HS256,
        &hs,
        None,
        &claims(
            "https://hs.test/",
            "a",
            json!({ "scope": "read users:write" }),
        ),
    );
    assert_eq!(
        call(&gw, "/scoped/x", &[("authorization", &bearer(&t))])
            .await
            .0,
        200
    );
    let t = sign(
        Algorithm::HS256,
        &hs,
        None,
        &claims("https://hs.test/", "a", json!({ "scp": ["users:write"] })),
    );
    assert_eq!(
        call(&gw, "/scoped/x", &[("authorization", &bearer(&t))])
            .await
            .0,
        200
    );
    // a JWT on the keys-only route is "missing" credentials of an accepted kind
    assert_eq!(
        call(&gw, "/keys/x", &[("authorization", &bearer(&t))])
            .await
            .0,
        401
    );
}

fn jwk(kid: &str, pem_priv: &str) -> Value {
    use rsa::pkcs8::DecodePrivateKey;
    let k = rsa::RsaPrivateKey::from_pkcs8_pem(pem_priv).unwrap();
    json!({ "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64(&k.n().to_bytes_be()), "e": b64(&k.e().to_bytes_be()) })
}

#[tokio::test]
async fn jwks_rotation_outage_and_unavailable_keys() {
    let up = Upstream::start("u").await;
    let k1 = keys();
    let k2 = keys();
    let mut idp = Upstream::start("idp").await;
    let served: Arc<Mutex<Value>> =
        Arc::new(Mutex::new(json!({ "keys": [jwk("k1", &k1.rsa_priv_pem)] })));
    let s2 = served.clone();
    idp.set_handler(Arc::new(move |req| {
        (req.uri().path() == "/jwks.json").then(|| {
            resp(
                200,
                serde_json::to_vec(&*s2.lock().unwrap()).unwrap(),
                "application/json",
            )
        })
    }));
    let gw = start(&up, &k1, &format!("http://{}/jwks.json", idp.addr)).await;
    let key1 = EncodingKey::from_rsa_pem(k1.rsa_priv_pem.as_bytes()).unwrap();
    let key2 = EncodingKey::from_rsa_pem(k2.rsa_priv_pem.as_bytes()).unwrap();
    let t1 = sign(
        Algorithm::RS256,
        &key1,
        Some("k1"),
        &claims("https://jwks.test/", "u1", json!({})),
    );
    assert_eq!(
        call(&gw, "/jwks/x", &[("authorization", &bearer(&t1))])
            .await
            .0,
        200
    );

    // the IdP rotates: a token with the new kid forces an early refresh
    *served.lock().unwrap() =
        json!({ "keys": [jwk("k1", &k1.rsa_priv_pem), jwk("k2", &k2.rsa_priv_pem)] });
    let t2 = sign(
        Algorithm::RS256,
        &key2,
        Some("k2"),
        &claims("https://jwks.test/", "u2", json!({})),
    );
    let (s, _, v) = call(&gw, "/jwks/x", &[("authorization", &bearer(&t2))]).await;
    assert_eq!(s, 200, "{v}");
    // an unknown kid is a 401
    let t3 = sign(
        Algorithm::RS256,
        &key2,
        Some("k3"),
        &claims("https://jwks.test/", "u3", json!({})),
    );
    let (s, h, _) = call(&gw, "/jwks/x", &[("authorization", &bearer(&t3))]).await;
    assert_eq!(s, 401);
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("unknown key"));

    // the IdP goes down: the last good keys keep working (a fresh token, not from the cache)
    idp.kill();
    wait_out(Duration::from_secs(1)).await; // past the 1 s jwks_cooldown
    let t2b = sign(
        Algorithm::RS256,
        &key2,
        Some("k2"),
        &claims("https://jwks.test/", "u2b", json!({})),
    );
    let (s, _, v) = call(&gw, "/jwks/x", &[("authorization", &bearer(&t2b))]).await;
    assert_eq!(s, 200, "{v}");
    let t3b = sign(
        Algorithm::RS256,
        &key2,
        Some("k9"),
        &claims("https://jwks.test/", "u", json!({})),
    );
    assert_eq!(
        call(&gw, "/jwks/x", &[("authorization", &bearer(&t3b))])
            .await
            .0,
        401
    );
    drop(gw);

    // a gateway that never obtained keys answers 503, not 401
    let no_idp = dead_port(); // an IdP that refuses, on a reserved port
    let gw = start(
        &up,
        &k1,
        &format!("http://127.0.0.1:{}/jwks.json", no_idp.port),
    )
    .await;
    let (s, h, v) = call(&gw, "/jwks/x", &[("authorization", &bearer(&t1))]).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"], "auth_unavailable");
    assert!(h.contains_key("retry-after"));
}

#[tokio::test]
async fn revoked_tokens_are_refused_even_when_cached() {
    let up = Upstream::start("u").await;
    let k = keys();
    let no_idp = dead_port(); // an IdP that refuses, on a reserved port
    let gw = start(
        &up,
        &k,
        &format!("http://127.0.0.1:{}/jwks.json", no_idp.port),
    )
    .await;
    let rs = EncodingKey::from_rsa_pem(k.rsa_priv_pem.as_bytes()).unwrap();
    let t = sign(
        Algorithm::RS256,
        &rs,
        None,
        &claims("https://rs.test/", "dave", json!({ "jti": "tok-42" })),
    );
    for _ in 0..3 {
        assert_eq!(
            call(&gw, "/rs/x", &[("authorization", &bearer(&t))])
                .await
                .0,
            200
        );
    }
    // admin auth: no token, wrong token
    let r = client()
        .post(gw.admin_url("/admin/revocations"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(gw.admin_url("/admin/revocations"))
        .bearer_auth("wrong")
        .json(&json!({ "jti": "tok-42", "until": now() + 3600 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/revocations",
            Some(json!({ "jti": "tok-42", "until": now() + 3600 })),
        )
        .await;
    assert_eq!(s, 201);
    let (s, h, _) = call(&gw, "/rs/x", &[("authorization", &bearer(&t))]).await;
    assert_eq!(s, 401);
    assert!(h["www-authenticate"].to_str().unwrap().contains("revoked"));
    let (s, _) = gw
        .admin(
            reqwest::Method::POST,
            "/admin/revocations",
            Some(json!({ "jti": "x" })),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn jwks_cooldown_bounds_early_refreshes() {
    let up = Upstream::start("u").await;
    let k1 = keys();
    let k2 = keys();
    let idp = Upstream::start("idp").await;
    let jwks = json!({ "keys": [jwk("k1", &k1.rsa_priv_pem)] });
    idp.set_handler(Arc::new(move |req| {
        (req.uri().path() == "/jwks.json")
            .then(|| resp(200, serde_json::to_vec(&jwks).unwrap(), "application/json"))
    }));
    let gw = start_cooldown(&up, &k1, &format!("http://{}/jwks.json", idp.addr), "1h").await;
    let key1 = EncodingKey::from_rsa_pem(k1.rsa_priv_pem.as_bytes()).unwrap();
    let key2 = EncodingKey::from_rsa_pem(k2.rsa_priv_pem.as_bytes()).unwrap();
    let t1 = sign(
        Algorithm::RS256,
        &key1,
        Some("k1"),
        &claims("https://jwks.test/", "u1", json!({})),
    );
    // the keys are fetched (at start or on first use) and the known kid is accepted
    assert!(
        eventually(Duration::from_secs(10), || async {
            call(&gw, "/jwks/x", &[("authorization", &bearer(&t1))])
                .await
                .0
                == 200
        })
        .await
    );
    let before = idp.hits_for("/jwks.json");
    assert!(before >= 1);
    // ten tokens with kids the IdP does not have: the first forces one early refresh, the
    // other nine fall inside the 1 h cooldown and must not touch the IdP. Without the
    // cooldown the IdP would see ten fetches.
    for i in 0..10 {
        let t = sign(
            Algorithm::RS256,
            &key2,
            Some(&format!("unknown-{i}")),
            &claims("https://jwks.test/", "u", json!({})),
        );
        let (s, _, v) = call(&gw, "/jwks/x", &[("authorization", &bearer(&t))]).await;
        assert_eq!(s, 401, "{v}");
    }
    let early = idp.hits_for("/jwks.json") - before;
    assert_eq!(early, 1, "early JWKS refreshes within one cooldown");
}
