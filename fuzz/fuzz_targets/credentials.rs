//! Credential extraction and checking: JWTs (as presented, and as signed by a known
//! issuer with fuzzed header and claims) and API keys (header and query parameter).
//!
//! The first input byte picks how the rest is presented; every mode runs the request
//! through `Auth::authenticate` under two route policies (`any_of: [jwt, api_key]`, where
//! the issuer is chosen by peeking at `iss`, and `jwt: hs` with a required scope), and
//! the rest of the input is also given to `jwt::peek_issuer`. Errors are the expected
//! answer; a panic is a bug.
//!
//! (The one bug found here, `exp + leeway` overflowing for `exp` near u64::MAX, was fixed
//! in f05c369; its input is in fuzz/regressions/credentials/.)

#![no_main]

use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;
use portcullis::auth::{IdKind, RoutePolicy};
use portcullis::snapshot::Snapshot;
use sha2::{Digest, Sha256, Sha384};
use std::sync::LazyLock;

pub const HS_SECRET: &str = "fuzz-hs256-secret-0123456789abcdef";
pub const HS2_SECRET: &str = "fuzz-hs384-secret-fedcba9876543210";
pub const API_KEY: &str = "fuzz-api-key-0123456789abcdefghijklmnop";
pub const OLD_KEY: &str = "fuzz-expired-key-0123456789";

struct World {
    rt: tokio::runtime::Runtime,
    snap: Snapshot,
    /// `any_of: [jwt, api_key]`
    any: RoutePolicy,
    /// `jwt: hs`, scopes `[read]`
    hs_only: RoutePolicy,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    // Single-threaded at this point: the fuzz loop has not started.
    std::env::set_var("PORTCULLIS_FUZZ_HS_SECRET", HS_SECRET);
    std::env::set_var("PORTCULLIS_FUZZ_HS2_SECRET", HS2_SECRET);
    let sha = |k: &str| hex::encode(Sha256::digest(k.as_bytes()));
    let yaml = format!(
        r#"
upstreams:
  u: {{ backends: [{{ addr: "127.0.0.1:1" }}] }}
auth:
  jwt:
    - {{ name: hs, issuer: "https://hs.fuzz/", audiences: [api], algorithms: [HS256],
         secret_env: PORTCULLIS_FUZZ_HS_SECRET, leeway: 5s, tier_claim: tier,
         forward_claims: {{ sub: X-Auth-Subject, email: X-Auth-Email }} }}
    - {{ name: hs2, issuer: "https://hs2.fuzz/", algorithms: [HS384, HS512],
         secret_env: PORTCULLIS_FUZZ_HS2_SECRET }}
  api_keys:
    header: x-api-key
    query_param: api_key
    keys:
      - {{ id: fuzz, sha256: "{key}", scopes: [read], tier: free }}
      - {{ id: old, sha256: "{old}", expires: "2020-01-01T00:00:00Z" }}
  token_cache: {{ max_entries: 1024, ttl: 60s }}
routes:
  - {{ name: any, match: {{ path: "/any/**" }}, upstream: u, auth: {{ any_of: [jwt, api_key] }} }}
  - {{ name: hs, match: {{ path: "/hs/**" }}, upstream: u, auth: {{ jwt: hs, scopes: [read] }} }}
"#,
        key = sha(API_KEY),
        old = sha(OLD_KEY),
    );
    let src = portcullis::config::parse_str("fuzz-credentials.yaml", &yaml)
        .unwrap_or_else(|e| panic!("fuzz config: {e}"));
    let snap =
        portcullis::snapshot::build(&src, None, 1).unwrap_or_else(|e| panic!("fuzz config: {e:?}"));
    let any = snap.routes[0].auth.clone().expect("route 0 has auth");
    let hs_only = snap.routes[1].auth.clone().expect("route 1 has auth");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    World {
        rt,
        snap,
        any,
        hs_only,
    }
});

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// `b64(header).b64(claims).b64(hmac)`: a token whose signature is right, so that the
/// fuzzed header and claims get past signature verification.
fn sign(header: &[u8], claims: &[u8], alg: u8) -> String {
    let signing_input = format!("{}.{}", b64(header), b64(claims));
    let sig = match alg % 3 {
        0 => {
            let mut m = Hmac::<Sha256>::new_from_slice(HS_SECRET.as_bytes()).unwrap();
            m.update(signing_input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        1 => {
            let mut m = Hmac::<Sha384>::new_from_slice(HS2_SECRET.as_bytes()).unwrap();
            m.update(signing_input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut m = Hmac::<sha2::Sha512>::new_from_slice(HS2_SECRET.as_bytes()).unwrap();
            m.update(signing_input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
    };
    format!("{signing_input}.{}", b64(&sig))
}

fn request(path: &[u8]) -> Option<RequestHeader> {
    RequestHeader::build("GET", path, None).ok()
}

fn with_header(name: &'static str, value: Vec<u8>) -> Option<RequestHeader> {
    let mut req = request(b"/any/x")?;
    req.insert_header(name, value).ok()?;
    Some(req)
}

fn bearer(token: &[u8]) -> Option<RequestHeader> {
    let mut v = b"Bearer ".to_vec();
    v.extend_from_slice(token);
    with_header("authorization", v)
}

fn check(w: &World, req: &RequestHeader) {
    for pol in [&w.any, &w.hs_only] {
        match w.rt.block_on(w.snap.auth.authenticate(pol, req)) {
            Ok((id, _from_query)) => {
                // Only a credential the harness holds can authenticate.
                match id.kind {
                    IdKind::ApiKey => assert_eq!(id.subject, "fuzz", "API key accepted: {id:?}"),
                    IdKind::Jwt => assert!(
                        matches!(id.issuer.as_deref(), Some("hs") | Some("hs2")),
                        "JWT accepted from {:?}",
                        id.issuer
                    ),
                }
                for s in &pol.scopes {
                    assert!(id.scopes.contains(s), "scope {s} not held by {id:?}");
                }
            }
            Err(e) => {
                let _ = e.reason();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = &*WORLD;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if let Ok(s) = std::str::from_utf8(rest) {
        let _ = portcullis::auth::jwt::peek_issuer(s);
    }
    let req = match mode % 8 {
        // Authorization: Bearer <bytes>
        0 => bearer(rest),
        // Authorization: <bytes> (scheme parsing)
        1 => with_header("authorization", rest.to_vec()),
        // x-api-key: <bytes>
        2 => with_header("x-api-key", rest.to_vec()),
        // /any/x?api_key=<bytes>
        3 => {
            let mut p = b"/any/x?api_key=".to_vec();
            p.extend_from_slice(rest);
            request(&p)
        }
        // /any/x?<bytes> (the query as a whole)
        4 => {
            let mut p = b"/any/x?".to_vec();
            p.extend_from_slice(rest);
            request(&p)
        }
        // A signed token, HEADER \n CLAIMS, with the issuer's secret
        5..=6 => {
            let (h, c) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&b"{\"alg\":\"HS256\",\"typ\":\"JWT\"}"[..], rest),
            };
            let alg = if mode % 8 == 5 { 0 } else { mode / 8 };
            bearer(sign(h, c, alg).as_bytes())
        }
        // A signed token with a fixed HS256 header: the claims are the input
        _ => bearer(sign(b"{\"alg\":\"HS256\",\"typ\":\"JWT\"}", rest, 0).as_bytes()),
    };
    if let Some(req) = req {
        check(w, &req);
    }
});
