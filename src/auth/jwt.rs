//! JWT verification for one configured issuer: pinned algorithms, static keys (HMAC
//! secret from env or file, PEM public key) or a JWKS, and claim checks (exp, nbf with
//! leeway, iss, aud).

use super::jwks::{JwksSource, KeyLookup};
use super::{AuthFailure, IdKind, Identity};
use crate::config::{JwtIssuerConfig, Problems};
use base64::Engine;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::sync::Arc;

pub enum KeySource {
    Static(Arc<DecodingKey>),
    Jwks(Arc<JwksSource>),
}

pub struct Issuer {
    pub name: Arc<str>,
    pub iss: String,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    validation: Validation,
    forward: Vec<(String, HeaderName)>,
    tier_claim: Option<String>,
    scope_claims: Vec<String>,
    pub leeway: u64,
}

fn parse_alg(s: &str) -> Result<Algorithm, String> {
    let alg = match s {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            return Err(format!(
                "unsupported algorithm `{other}` (`none` is never accepted)"
            ))
        }
    };
    Ok(alg)
}

/// `algorithms`: known names, not empty, HMAC and public-key never mixed.
fn accepted_algorithms(c: &JwtIssuerConfig, p: &mut Problems) -> Vec<Algorithm> {
    let mut algorithms = Vec::new();
    for (i, a) in c.algorithms.iter().enumerate() {
        match parse_alg(a) {
            Ok(x) => algorithms.push(x),
            Err(e) => p.push(format!("algorithms[{i}]"), e),
        }
    }
    if c.algorithms.is_empty() {
        p.push("algorithms", "list the accepted algorithms, e.g. [RS256]");
    }
    let hmac = algorithms.iter().any(|a| is_hmac(*a));
    if hmac && algorithms.iter().any(|a| !is_hmac(*a)) {
        p.push(
            "algorithms",
            "do not mix HMAC (HS*) and public-key algorithms in one issuer (key confusion)",
        );
    }
    algorithms
}

/// Exactly one of `secret_env`, `secret_file`, `public_key_file`, `jwks_url`, usable with the
/// algorithms.
fn key_source(
    c: &JwtIssuerConfig,
    hmac: bool,
    algorithms: &[Algorithm],
    jwks: &mut dyn FnMut(&JwtIssuerConfig) -> Arc<JwksSource>,
    p: &mut Problems,
) -> Option<KeySource> {
    let sources = [
        c.secret_env.is_some(),
        c.secret_file.is_some(),
        c.public_key_file.is_some(),
        c.jwks_url.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if sources != 1 {
        p.push(
            "",
            "give exactly one key source: secret_env, secret_file, public_key_file or jwks_url",
        );
    }
    let mut keys = shared_secret(c, hmac, p);
    if let Some(path) = &c.public_key_file {
        keys = public_key(path, hmac, algorithms, p).or(keys);
    }
    if let Some(url) = &c.jwks_url {
        keys = jwks_source(c, url, hmac, jwks, p).or(keys);
    }
    keys
}

/// `secret_env` / `secret_file`: an HMAC secret.
fn shared_secret(c: &JwtIssuerConfig, hmac: bool, p: &mut Problems) -> Option<KeySource> {
    let mut keys = None;
    if let Some(var) = &c.secret_env {
        if !hmac {
            p.push("secret_env", "a shared secret needs HS256/HS384/HS512");
        }
        match std::env::var_os(var) {
            Some(v) if !v.is_empty() => {
                keys = Some(KeySource::Static(Arc::new(DecodingKey::from_secret(
                    v.as_encoded_bytes(),
                ))))
            }
            _ => p.push(
                "secret_env",
                format!("environment variable `{var}` is not set or empty"),
            ),
        }
    }
    if let Some(path) = &c.secret_file {
        if !hmac {
            p.push("secret_file", "a shared secret needs HS256/HS384/HS512");
        }
        match std::fs::read(path) {
            Ok(mut b) => {
                while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                    b.pop();
                }
                if b.is_empty() {
                    p.push("secret_file", format!("`{path}` is empty"));
                } else {
                    keys = Some(KeySource::Static(Arc::new(DecodingKey::from_secret(&b))));
                }
            }
            Err(e) => p.push("secret_file", format!("cannot read `{path}`: {e}")),
        }
    }
    keys
}

/// `public_key_file`: a PEM key of the algorithms' family.
fn public_key(
    path: &str,
    hmac: bool,
    algorithms: &[Algorithm],
    p: &mut Problems,
) -> Option<KeySource> {
    let mut keys = None;
    if hmac {
        p.push(
            "public_key_file",
            "a public key needs RS*, PS*, ES* or EdDSA algorithms",
        );
    }
    match std::fs::read(path) {
        Ok(pem) => {
            let fam = algorithms.first().copied().unwrap_or(Algorithm::RS256);
            let k = match fam {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            };
            match k {
                Ok(k) => keys = Some(KeySource::Static(Arc::new(k))),
                Err(e) => p.push(
                    "public_key_file",
                    format!("`{path}` is not a usable PEM key: {e}"),
                ),
            }
        }
        Err(e) => p.push("public_key_file", format!("cannot read `{path}`: {e}")),
    }

    keys
}

/// `jwks_url`: https, or http to a loopback host (or with `allow_insecure_http`).
fn jwks_source(
    c: &JwtIssuerConfig,
    url: &str,
    hmac: bool,
    jwks: &mut dyn FnMut(&JwtIssuerConfig) -> Arc<JwksSource>,
    p: &mut Problems,
) -> Option<KeySource> {
    let mut keys = None;
    if hmac {
        p.push("jwks_url", "a JWKS needs public-key algorithms");
    }
    match url.parse::<http::Uri>() {
        Ok(u)
            if u.scheme_str() == Some("http")
                && !c.allow_insecure_http
                && !u.host().is_some_and(is_loopback_host) =>
        {
            p.push(
                "jwks_url",
                format!(
                    "`{url}` is plain http: signing keys fetched that way can be \
                     replaced on the path; use https (or set allow_insecure_http: true)"
                ),
            )
        }
        Ok(u) if matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some() => {
            keys = Some(KeySource::Jwks(jwks(c)))
        }
        _ => p.push("jwks_url", format!("`{url}` is not an http(s) URL")),
    }

    keys
}

/// `forward_claims`: claim → header name.
fn forwarded_claims(c: &JwtIssuerConfig, p: &mut Problems) -> Vec<(String, HeaderName)> {
    let mut forward = Vec::new();
    for (claim, header) in &c.forward_claims {
        match HeaderName::from_bytes(header.as_bytes()) {
            Ok(h) => forward.push((claim.clone(), h)),
            Err(_) => p.push(
                format!("forward_claims.{claim}"),
                format!("`{header}` is not a valid header name"),
            ),
        }
    }
    forward
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl Issuer {
    /// Compile (problems relative to the issuer's block). `jwks` returns an existing source
    /// for the URL so keys survive reloads.
    pub fn build(
        c: &JwtIssuerConfig,
        jwks: &mut dyn FnMut(&JwtIssuerConfig) -> Arc<JwksSource>,
        p: &mut Problems,
    ) -> Option<Issuer> {
        let before = p.len();
        let algorithms = accepted_algorithms(c, p);
        let hmac = algorithms.iter().any(|a| is_hmac(*a));
        let keys = key_source(c, hmac, &algorithms, jwks, p);
        let forward = forwarded_claims(c, p);
        if p.len() != before {
            return None;
        }
        let Some(keys) = keys else {
            p.push("", "no key source");
            return None;
        };
        let leeway = c.leeway.get().as_secs();
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.clone();
        validation.leeway = leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&c.issuer]);
        if c.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&c.audiences);
        }
        if c.audiences.is_empty() {
            validation.set_required_spec_claims(&["exp", "iss"]);
        } else {
            // an issuer that names its audiences never accepts a token without one
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        }
        Some(Issuer {
            name: c.name.as_str().into(),
            iss: c.issuer.clone(),
            algorithms,
            keys,
            validation,
            forward,
            tier_claim: c.tier_claim.clone(),
            scope_claims: c.scope_claims.clone(),
            leeway,
        })
    }

    /// Verify `token` (signature and claims) into an identity.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthFailure> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthFailure::invalid("malformed", "the token is malformed"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthFailure::invalid(
                "bad_algorithm",
                "the token's algorithm is not accepted",
            ));
        }
        let key = match &self.keys {
            KeySource::Static(k) => k.clone(),
            KeySource::Jwks(src) => match src.lookup(header.kid.as_deref()) {
                KeyLookup::Found(k) => k,
                miss => {
                    if matches!(miss, KeyLookup::Unavailable) {
                        src.ensure_loaded().await;
                    } else {
                        src.refresh_for_unknown_kid().await;
                    }
                    match src.lookup(header.kid.as_deref()) {
                        KeyLookup::Found(k) => k,
                        KeyLookup::Unknown => {
                            return Err(AuthFailure::invalid(
                                "unknown_key",
                                "the token is signed with an unknown key",
                            ))
                        }
                        KeyLookup::Unavailable => {
                            return Err(AuthFailure::Unavailable(
                                "the issuer's signing keys are not available yet".into(),
                            ))
                        }
                    }
                }
            },
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
                let (reason, text) = match e.kind() {
                    ErrorKind::ExpiredSignature => ("expired", "the token has expired"),
                    ErrorKind::ImmatureSignature => ("not_yet_valid", "the token is not valid yet"),
                    ErrorKind::InvalidSignature => {
                        ("bad_signature", "the token's signature is invalid")
                    }
                    ErrorKind::InvalidAudience => {
                        ("wrong_audience", "the token is for another audience")
                    }
                    ErrorKind::InvalidIssuer => {
                        ("wrong_issuer", "the token is from another issuer")
                    }
                    // keys are checked when the config loads, so a key that does not fit
                    // is a token whose algorithm is of another family than the key's
                    ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidAlgorithmName
                    | ErrorKind::InvalidKeyFormat => {
                        ("bad_algorithm", "the token's algorithm is not accepted")
                    }
                    ErrorKind::MissingRequiredClaim(_) => {
                        ("missing_claim", "the token lacks a required claim")
                    }
                    _ => ("malformed", "the token is malformed"),
                };
                AuthFailure::invalid(reason, text)
            })?;
        self.identity(data.claims).map(Arc::new)
    }

    /// The identity a verified token carries. A claim forwarded to the upstream that is not
    /// a valid header value (a CR or LF, say) refuses the token: dropping it silently would
    /// let the request through without the header the upstream relies on.
    fn identity(&self, claims: Map<String, Value>) -> Result<Identity, AuthFailure> {
        let text = |v: &Value| -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        };
        let mut scopes: Vec<String> = Vec::new();
        for k in &self.scope_claims {
            match claims.get(k) {
                Some(Value::Array(a)) => {
                    scopes.extend(a.iter().filter_map(|v| v.as_str().map(str::to_string)))
                }
                Some(Value::String(s)) => scopes.extend(s.split_whitespace().map(str::to_string)),
                _ => {}
            }
        }
        let mut forward = Vec::with_capacity(self.forward.len());
        for (claim, h) in &self.forward {
            let Some(v) = claims.get(claim).and_then(text) else {
                continue;
            };
            match HeaderValue::from_str(&v) {
                Ok(v) if !v.as_bytes().iter().any(|b| *b < b' ' || *b == 0x7f) => {
                    forward.push((h.clone(), v))
                }
                _ => {
                    return Err(AuthFailure::invalid(
                        "bad_claim",
                        "a claim of the token cannot be forwarded as a header",
                    ))
                }
            }
        }
        Ok(Identity {
            kind: IdKind::Jwt,
            subject: claims.get("sub").and_then(text).unwrap_or_default(),
            scopes,
            tier: self
                .tier_claim
                .as_ref()
                .and_then(|c| claims.get(c))
                .and_then(text)
                .map(|s| Arc::from(s.as_str())),
            issuer: Some(self.name.clone()),
            jti: claims.get("jti").and_then(text),
            forward,
            claims,
        })
    }
}

/// `localhost`, `127.0.0.0/8` or `[::1]`: a JWKS there may be fetched over plain http.
fn is_loopback_host(h: &str) -> bool {
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The unverified `iss` claim, used only to pick which issuer verifies the token.
pub fn peek_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "jwt_tests.rs"]
mod tests;
