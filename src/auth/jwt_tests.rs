//! Unit tests of one issuer's checks: the claims, the algorithms, what the identity carries
//! and what the config refuses. Tokens are signed here with an HMAC secret from a file.

use super::*;
use crate::config::{parse_str, Problems};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use std::time::Duration;

const SECRET: &[u8] = b"unit-test-secret-of-sufficient-length";

/// Written once per process: tests run in parallel threads and must not see it rewritten.
fn secret_file() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portcullis-jwt-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        // a trailing newline is not part of the secret
        std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
        path.display().to_string()
    })
    .clone()
}

fn config(extra: &str) -> JwtIssuerConfig {
    let yaml = format!(
        "{{ name: t, issuer: 'https://t.test/', algorithms: [HS256], secret_file: '{}', leeway: 5s{extra} }}",
        secret_file()
    );
    serde_yaml::from_str(&yaml).unwrap()
}

fn build(c: &JwtIssuerConfig) -> Result<Issuer, Vec<String>> {
    let src = parse_str("t.yaml", "{}").unwrap();
    let mut p = Problems::new(&src);
    let mut no_jwks = |_: &JwtIssuerConfig| -> Arc<JwksSource> { unreachable!("no JWKS here") };
    let issuer = Issuer::build(c, &mut no_jwks, &mut p);
    let problems: Vec<String> = p
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    match issuer {
        Some(i) if problems.is_empty() => Ok(i),
        _ => Err(problems),
    }
}

fn issuer(extra: &str) -> Issuer {
    build(&config(extra)).unwrap_or_else(|e| panic!("{e:?}"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(alg: Algorithm, secret: &[u8], claims: serde_json::Value) -> String {
    sign_with(alg, &EncodingKey::from_secret(secret), claims)
}

fn sign_with(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn token(claims: serde_json::Value) -> String {
    sign(Algorithm::HS256, SECRET, claims)
}

fn base() -> serde_json::Value {
    json!({ "iss": "https://t.test/", "sub": "alice", "exp": now() + 300, "aud": "api" })
}

fn with(mut v: serde_json::Value, k: &str, x: serde_json::Value) -> serde_json::Value {
    v[k] = x;
    v
}

async fn reason(i: &Issuer, t: &str) -> &'static str {
    match i.verify(t).await {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

#[tokio::test]
async fn a_valid_token_carries_its_identity() {
    let i = issuer(
        ", forward_claims: { sub: x-auth-subject, org: x-org, n: x-n }, tier_claim: plan, scope_claims: [scope, permissions]",
    );
    let claims = json!({
        "iss": "https://t.test/", "sub": "alice", "exp": now() + 300, "jti": "id-1",
        "org": "acme", "n": 7, "plan": "gold",
        "scope": "read write", "permissions": ["admin", 3]
    });
    let id = i.verify(&token(claims)).await.unwrap();
    assert_eq!(id.subject, "alice");
    assert_eq!(id.kind, IdKind::Jwt);
    assert_eq!(id.issuer.as_deref(), Some("t"));
    assert_eq!(id.jti.as_deref(), Some("id-1"));
    assert_eq!(id.tier.as_deref(), Some("gold"));
    assert_eq!(id.scopes, ["read", "write", "admin"]);
    let fwd: Vec<(String, String)> = id
        .forward
        .iter()
        .map(|(h, v)| (h.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        fwd,
        [("x-n", "7"), ("x-org", "acme"), ("x-auth-subject", "alice")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
}

#[tokio::test]
async fn time_claims_are_checked_with_the_leeway() {
    let i = issuer("");
    assert_eq!(
        reason(&i, &token(with(base(), "exp", json!(now() - 60)))).await,
        "expired"
    );
    // 2 s late is inside the 5 s leeway
    assert_eq!(
        reason(&i, &token(with(base(), "exp", json!(now() - 2)))).await,
        "ok"
    );
    assert_eq!(
        reason(&i, &token(with(base(), "nbf", json!(now() + 60)))).await,
        "not_yet_valid"
    );
    assert_eq!(
        reason(&i, &token(with(base(), "nbf", json!(now() + 2)))).await,
        "ok"
    );
    let mut no_exp = base();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(reason(&i, &token(no_exp)).await, "missing_claim");
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let i = issuer(", audiences: [api, other]");
    assert_eq!(reason(&i, &token(base())).await, "ok");
    assert_eq!(
        reason(&i, &token(with(base(), "aud", json!(["x", "other"])))).await,
        "ok"
    );
    assert_eq!(
        reason(&i, &token(with(base(), "aud", json!("else")))).await,
        "wrong_audience"
    );
    assert_eq!(
        reason(&i, &token(with(base(), "iss", json!("https://evil.test/")))).await,
        "wrong_issuer"
    );
    let mut no_aud = base();
    no_aud.as_object_mut().unwrap().remove("aud");
    // an issuer that names audiences never takes a token without one
    assert_eq!(reason(&i, &token(no_aud.clone())).await, "missing_claim");
    // without audiences configured, `aud` is neither required nor checked
    let open = issuer("");
    assert_eq!(reason(&open, &token(no_aud)).await, "ok");
    assert_eq!(
        reason(&open, &token(with(base(), "aud", json!("else")))).await,
        "ok"
    );
}

#[tokio::test]
async fn signatures_and_algorithms_are_pinned() {
    let i = issuer("");
    assert_eq!(
        reason(&i, &sign(Algorithm::HS256, b"another-secret", base())).await,
        "bad_signature"
    );
    // the right secret under an algorithm the issuer does not list
    assert_eq!(
        reason(&i, &sign(Algorithm::HS384, SECRET, base())).await,
        "bad_algorithm"
    );
    let t = token(base());
    let (head, rest) = t.split_once('.').unwrap();
    let none =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    assert_ne!(reason(&i, &format!("{none}.{rest}")).await, "ok");
    assert_eq!(reason(&i, "not-a-token").await, "malformed");
    assert_eq!(
        reason(&i, &format!("{head}.{rest}x")).await,
        "bad_signature"
    );
}

#[tokio::test]
async fn a_claim_that_cannot_be_a_header_refuses_the_token() {
    let i = issuer(", forward_claims: { sub: x-auth-subject }");
    let bad = with(base(), "sub", json!("alice\r\nx-admin: 1"));
    assert_eq!(reason(&i, &token(bad)).await, "bad_claim");
    let tab = with(base(), "sub", json!("a\tb"));
    assert_eq!(reason(&i, &token(tab)).await, "bad_claim");
    // a space is a header value's business, a boolean is forwarded as its word
    let i2 = issuer(", forward_claims: { sub: x-auth-subject, admin: x-admin }");
    let claims = with(with(base(), "sub", json!("a b")), "admin", json!(true));
    let id = i2.verify(&token(claims)).await.unwrap();
    let fwd: Vec<String> = id
        .forward
        .iter()
        .map(|(h, v)| format!("{h}={}", v.to_str().unwrap()))
        .collect();
    assert!(fwd.contains(&"x-auth-subject=a b".to_string()), "{fwd:?}");
    assert!(fwd.contains(&"x-admin=true".to_string()), "{fwd:?}");
    // a claim that is not forwarded may hold anything
    let other = with(base(), "note", json!("line\r\nbreak"));
    assert_eq!(reason(&i, &token(other)).await, "ok");
}

#[test]
fn the_config_is_checked() {
    assert!(build(&config("")).is_ok());
    let mix = serde_yaml::from_str::<JwtIssuerConfig>(&format!(
        "{{ name: t, issuer: i, algorithms: [HS256, RS256], secret_file: '{}' }}",
        secret_file()
    ))
    .unwrap();
    let e = build(&mix).map(|_| ()).unwrap_err();
    assert!(e.iter().any(|m| m.contains("key confusion")), "{e:?}");
    let none = serde_yaml::from_str::<JwtIssuerConfig>(&format!(
        "{{ name: t, issuer: i, algorithms: [none], secret_file: '{}' }}",
        secret_file()
    ))
    .unwrap();
    let e = build(&none).map(|_| ()).unwrap_err();
    assert!(e.iter().any(|m| m.starts_with("algorithms[0]")), "{e:?}");
    let empty =
        serde_yaml::from_str::<JwtIssuerConfig>("{ name: t, issuer: i, algorithms: [HS256] }")
            .unwrap();
    assert!(build(&empty).is_err());
    let rs_secret = serde_yaml::from_str::<JwtIssuerConfig>(&format!(
        "{{ name: t, issuer: i, algorithms: [RS256], secret_file: '{}' }}",
        secret_file()
    ))
    .unwrap();
    let e = build(&rs_secret).map(|_| ()).unwrap_err();
    assert!(e.iter().any(|m| m.starts_with("secret_file")), "{e:?}");
}

#[test]
fn peeking_and_loopback() {
    assert_eq!(
        peek_issuer(&token(base())).as_deref(),
        Some("https://t.test/")
    );
    assert_eq!(peek_issuer("a.b.c"), None);
    assert_eq!(peek_issuer(&token(json!({ "sub": "x" }))), None);
    for h in [
        "localhost",
        "LOCALHOST",
        "127.0.0.1",
        "127.9.9.9",
        "[::1]",
        "::1",
    ] {
        assert!(is_loopback_host(h), "{h}");
    }
    for h in ["example.com", "10.0.0.1", "[::2]", "localhost.evil.test"] {
        assert!(!is_loopback_host(h), "{h}");
    }
}

/// Problems of an RS256 issuer with `extra` keys, and how often a JWKS source was asked for.
fn build_rs(extra: &str) -> (Vec<String>, usize) {
    let c: JwtIssuerConfig = serde_yaml::from_str(&format!(
        "{{ name: t, issuer: i, algorithms: [RS256]{extra} }}"
    ))
    .unwrap();
    let src = parse_str("t.yaml", "{}").unwrap();
    let mut p = Problems::new(&src);
    let mut asked = 0;
    let mut jwks = |c: &JwtIssuerConfig| -> Arc<JwksSource> {
        asked += 1;
        Arc::new(JwksSource::new(
            c.jwks_url.clone().unwrap_or_default(),
            Duration::from_secs(60),
            Duration::from_secs(1),
        ))
    };
    let issuer = Issuer::build(&c, &mut jwks, &mut p);
    let problems: Vec<String> = p
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    assert_eq!(issuer.is_some(), problems.is_empty(), "{problems:?}");
    (problems, asked)
}

#[test]
fn jwks_urls_are_https_or_loopback_http() {
    for ok in [
        "https://idp.test/jwks",
        "http://127.0.0.1:9/jwks",
        "http://localhost/jwks",
    ] {
        assert_eq!(
            build_rs(&format!(", jwks_url: '{ok}'")),
            (vec![], 1),
            "{ok}"
        );
    }
    let (e, asked) = build_rs(", jwks_url: 'http://idp.test/jwks'");
    assert!(e.len() == 1 && e[0].contains("plain http"), "{e:?}");
    assert_eq!(asked, 0);
    assert_eq!(
        build_rs(", jwks_url: 'http://idp.test/jwks', allow_insecure_http: true"),
        (vec![], 1)
    );
    for bad in ["ftp://idp.test/jwks", "/jwks", "https:///x"] {
        let (e, asked) = build_rs(&format!(", jwks_url: '{bad}'"));
        assert!(
            e.iter().any(|m| m.contains("is not an http(s) URL")),
            "{bad}: {e:?}"
        );
        assert_eq!(asked, 0);
    }
}

#[test]
fn a_secret_from_the_environment_must_be_set_and_hmac() {
    let var = format!("PORTCULLIS_JWT_UNIT_{}", std::process::id());
    let hs = |extra: &str| {
        serde_yaml::from_str::<JwtIssuerConfig>(&format!(
            "{{ name: t, issuer: i, algorithms: [HS256], secret_env: {var}{extra} }}"
        ))
        .unwrap()
    };
    let e = build(&hs("")).map(|_| ()).unwrap_err();
    assert!(e.iter().any(|m| m.contains("is not set or empty")), "{e:?}");
    std::env::set_var(&var, "");
    assert!(build(&hs("")).is_err(), "an empty secret is refused");
    std::env::set_var(&var, "a-secret-from-the-environment");
    assert!(build(&hs("")).is_ok());
    let rs = serde_yaml::from_str::<JwtIssuerConfig>(&format!(
        "{{ name: t, issuer: i, algorithms: [RS256], secret_env: {var} }}"
    ))
    .unwrap();
    let e = build(&rs).map(|_| ()).unwrap_err();
    assert!(e.iter().any(|m| m.contains("needs HS256")), "{e:?}");
    std::env::remove_var(&var);
}

#[test]
fn a_public_key_file_is_read_for_its_algorithm_family() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, alg: &'static rcgen::SignatureAlgorithm| {
        let pem = rcgen::KeyPair::generate_for(alg).unwrap().public_key_pem();
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let ec = write("ec.pem", &rcgen::PKCS_ECDSA_P256_SHA256);
    let ed = write("ed.pem", &rcgen::PKCS_ED25519);
    let with = |alg: &str, path: &str| {
        let c: JwtIssuerConfig = serde_yaml::from_str(&format!(
            "{{ name: t, issuer: i, algorithms: [{alg}], public_key_file: '{path}' }}"
        ))
        .unwrap();
        build(&c).map(|_| ())
    };
    assert_eq!(with("ES256", &ec), Ok(()));
    assert_eq!(with("EdDSA", &ed), Ok(()));
    let e = with("ES256", &ed).unwrap_err();
    assert!(
        e.iter().any(|m| m.contains("not a usable PEM key")),
        "{e:?}"
    );
    let e = with("RS256", &ec).unwrap_err();
    assert!(
        e.iter().any(|m| m.contains("not a usable PEM key")),
        "{e:?}"
    );
}

/// An issuer that lists algorithms of two families with one key file: a token under the
/// family the key is not of is refused as `bad_algorithm`, not taken for a malformed token.
#[tokio::test]
async fn a_token_of_another_family_than_the_key_is_a_bad_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let path = dir.path().join("ec.pem");
    std::fs::write(&path, ec.public_key_pem()).unwrap();
    let c: JwtIssuerConfig = serde_yaml::from_str(&format!(
        "{{ name: t, issuer: 'https://t.test/', algorithms: [ES256, EdDSA], public_key_file: '{}' }}",
        path.display()
    ))
    .unwrap();
    let i = build(&c).unwrap_or_else(|e| panic!("{e:?}"));
    let ec_key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
    assert_eq!(
        reason(&i, &sign_with(Algorithm::ES256, &ec_key, base())).await,
        "ok"
    );
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_key = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
    let ed_token = sign_with(Algorithm::EdDSA, &ed_key, base());
    assert_eq!(reason(&i, &ed_token).await, "bad_algorithm");
}
