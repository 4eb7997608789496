//! Authentication in `request_filter`: JWT (static keys or JWKS, with a verified-token
//! cache and a revocation denylist) and hashed API keys, with per-route scopes.

pub mod api_key;
pub mod cache;
pub mod jwks;
pub mod jwt;
pub mod revocation;

use crate::config::{AuthConfig, Problems, RouteAuthConfig};
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdKind {
    #[default]
    Jwt,
    ApiKey,
}

impl IdKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdKind::Jwt => "jwt",
            IdKind::ApiKey => "api_key",
        }
    }
}

/// Who the client is, once verified. Shared (Arc) by the token cache and requests.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub kind: IdKind,
    /// JWT `sub`, or the API key's id.
    pub subject: String,
    pub scopes: Vec<String>,
    pub tier: Option<Arc<str>>,
    /// The JWT issuer's config name.
    pub issuer: Option<Arc<str>>,
    pub jti: Option<String>,
    /// Headers to set on the upstream request.
    pub forward: Vec<(HeaderName, HeaderValue)>,
    /// A verified JWT's claims (empty for an API key): what header rules interpolate as
    /// `${claim.<name>}`.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials of an accepted kind.
    Missing,
    /// Credentials present but not valid: a short reason (metrics label) and a description.
    Invalid {
        reason: &'static str,
        description: &'static str,
    },
    /// Valid credentials without a required scope.
    Forbidden { scope: String },
    /// The issuer's keys could not be obtained yet: a 503, so clients keep good tokens.
    Unavailable(String),
}

impl AuthFailure {
    pub fn invalid(reason: &'static str, description: &'static str) -> AuthFailure {
        AuthFailure::Invalid {
            reason,
            description,
        }
    }

    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid { reason, .. } => reason,
            AuthFailure::Forbidden { .. } => "insufficient_scope",
            AuthFailure::Unavailable(_) => "keys_unavailable",
        }
    }
}

/// A route's compiled auth policy.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    pub jwt: bool,
    /// Only this issuer (index into `Auth::issuers`).
    pub issuer: Option<usize>,
    pub api_key: bool,
    pub scopes: Vec<String>,
    pub strip_authorization: bool,
}

pub struct Auth {
    pub config: AuthConfig,
    pub issuers: Vec<Arc<jwt::Issuer>>,
    by_name: HashMap<String, usize>,
    by_iss: HashMap<String, usize>,
    pub api_keys: Option<api_key::ApiKeys>,
    pub token_cache: Arc<cache::TokenCache>,
    token_ttl: u64,
    /// Every header the gateway sets from an identity: client copies are always removed.
    pub identity_headers: Vec<HeaderName>,
}

impl Auth {
    /// Compile `auth:`, reusing the token cache and JWKS key sets of `prev` when the
    /// relevant config did not change.
    pub fn build(c: &AuthConfig, prev: Option<&Auth>, p: &mut Problems) -> Auth {
        let mut issuers = Vec::new();
        let mut by_name = HashMap::new();
        let mut by_iss = HashMap::new();
        let mut identity_headers: Vec<HeaderName> = Vec::new();
        for (i, ic) in c.jwt.iter().enumerate() {
            let base = format!("auth.jwt[{i}]");
            if by_name.contains_key(&ic.name) {
                p.push(
                    format!("{base}.name"),
                    format!("issuer name `{}` is used twice", ic.name),
                );
                continue;
            }
            let mut reuse = |ic: &crate::config::JwtIssuerConfig| -> Arc<jwks::JwksSource> {
                let existing = prev.and_then(|a| {
                    a.issuers.iter().find_map(|iss| match &iss.keys {
                        jwt::KeySource::Jwks(s) if Some(&s.url) == ic.jwks_url.as_ref() => {
                            Some(s.clone())
                        }
                        _ => None,
                    })
                });
                existing.unwrap_or_else(|| {
                    Arc::new(jwks::JwksSource::new(
                        ic.jwks_url.clone().unwrap_or_default(),
                        ic.jwks_refresh.get(),
                        ic.jwks_cooldown.get(),
                    ))
                })
            };
            if let Some(iss) = p.within(&base, |p| jwt::Issuer::build(ic, &mut reuse, p)) {
                by_name.insert(ic.name.clone(), issuers.len());
                if by_iss.insert(ic.issuer.clone(), issuers.len()).is_some() {
                    p.push(
                        format!("{base}.issuer"),
                        "two issuers share the same `issuer` value",
                    );
                }
                for h in ic.forward_claims.values() {
                    if let Ok(h) = HeaderName::from_bytes(h.as_bytes()) {
                        identity_headers.push(h);
                    }
                }
                issuers.push(Arc::new(iss));
            }
        }
        let api_keys = c
            .api_keys
            .as_ref()
            .and_then(|k| p.within("auth.api_keys", |p| api_key::ApiKeys::build(k, p)));
        if let Some(keys) = &api_keys {
            identity_headers.push(keys.forward.clone());
        }
        identity_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        identity_headers.dedup();
        if c.token_cache.max_entries == 0 {
            p.push("auth.token_cache.max_entries", "must be at least 1");
        }
        // cached verifications are only valid under the same issuer settings
        let token_cache = match prev {
            Some(a) if a.config.jwt == c.jwt && a.config.token_cache == c.token_cache => {
                a.token_cache.clone()
            }
            _ => Arc::new(cache::TokenCache::new(c.token_cache.max_entries.max(1))),
        };
        Auth {
            config: c.clone(),
            issuers,
            by_name,
            by_iss,
            api_keys,
            token_cache,
            token_ttl: c.token_cache.ttl.get().as_secs(),
            identity_headers,
        }
    }

    pub fn jwks_sources(&self) -> Vec<Arc<jwks::JwksSource>> {
        self.issuers
            .iter()
            .filter_map(|i| match &i.keys {
                jwt::KeySource::Jwks(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Compile a route's `auth:`.
    pub fn route_policy(
        &self,
        c: &RouteAuthConfig,
        base: &str,
        p: &mut Problems,
    ) -> Option<RoutePolicy> {
        let mut pol = RoutePolicy {
            jwt: false,
            issuer: None,
            api_key: false,
            scopes: c.scopes.clone(),
            strip_authorization: c.strip_authorization,
        };
        if let Some(kinds) = &c.any_of {
            if kinds.is_empty() {
                p.push(
                    format!("{base}.any_of"),
                    "list at least one of `jwt`, `api_key`",
                );
            }
            for (i, k) in kinds.iter().enumerate() {
                match k.as_str() {
                    "jwt" => pol.jwt = true,
                    "api_key" => pol.api_key = true,
                    other => p.push(
                        format!("{base}.any_of[{i}]"),
                        format!("`{other}`: use `jwt` or `api_key`"),
                    ),
                }
            }
        }
        if let Some(name) = &c.jwt {
            match self.by_name.get(name) {
                Some(i) => {
                    pol.jwt = true;
                    pol.issuer = Some(*i);
                }
                // an issuer that is configured but failed to build has its own error
                None if self.config.jwt.iter().any(|j| &j.name == name) => {}
                None => {
                    let hint = crate::config::suggest(
                        name,
                        self.config.jwt.iter().map(|j| j.name.as_str()),
                    );
                    p.push(
                        format!("{base}.jwt"),
                        format!("unknown JWT issuer `{name}`{hint}"),
                    )
                }
            }
        }
        if c.any_of.is_none() && c.jwt.is_none() {
            p.push(
                base.to_string(),
                "give `any_of: [jwt, api_key]` or `jwt: ISSUER`",
            );
        }
        if pol.jwt && self.issuers.is_empty() && self.config.jwt.is_empty() {
            p.push(
                base.to_string(),
                "the route accepts JWTs but `auth.jwt` lists no issuer",
            );
        }
        if pol.api_key && self.config.api_keys.is_none() {
            p.push(
                base.to_string(),
                "the route accepts API keys but `auth.api_keys` is not configured",
            );
        }
        Some(pol)
    }

    /// The API key from the configured header, else the query parameter.
    fn presented_key<'a>(
        &self,
        keys: &api_key::ApiKeys,
        req: &'a RequestHeader,
    ) -> Option<(std::borrow::Cow<'a, [u8]>, bool)> {
        if let Some(v) = req.headers.get(&keys.header) {
            return Some((std::borrow::Cow::Borrowed(v.as_bytes()), false));
        }
        let name = keys.query_param.as_deref()?;
        let q = req.uri.query()?;
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == name {
                return Some((std::borrow::Cow::Owned(percent_decode(v)), true));
            }
        }
        None
    }

    /// Authenticate a request under `pol`. On success also says whether the API key came
    /// from the query string (to be removed before forwarding).
    pub async fn authenticate(
        &self,
        pol: &RoutePolicy,
        req: &RequestHeader,
    ) -> Result<(Arc<Identity>, bool), AuthFailure> {
        let now = revocation::unix_now();
        let mut first_error: Option<AuthFailure> = None;
        let mut presented = false;

        if pol.api_key {
            if let Some(keys) = &self.api_keys {
                if let Some((key, from_query)) = self.presented_key(keys, req) {
                    presented = true;
                    match keys.check(&key, now) {
                        Ok(id) => return self.check_scopes(pol, id).map(|id| (id, from_query)),
                        Err(e) => first_error = Some(e),
                    }
                }
            }
        }
        if pol.jwt {
            if let Some(token) = bearer(req) {
                presented = true;
                match self.verify_jwt(pol, token, now).await {
                    Ok(id) => return self.check_scopes(pol, id).map(|id| (id, false)),
                    Err(e) => {
                        if first_error.is_none() || matches!(e, AuthFailure::Unavailable(_)) {
                            first_error = Some(e);
                        }
                    }
                }
            } else if req.headers.contains_key(http::header::AUTHORIZATION) {
                presented = true;
                first_error.get_or_insert(AuthFailure::invalid(
                    "malformed",
                    "the Authorization header is not a Bearer token",
                ));
            }
        }
        if !presented {
            return Err(AuthFailure::Missing);
        }
        Err(first_error.unwrap_or(AuthFailure::Missing))
    }

    fn check_scopes(
        &self,
        pol: &RoutePolicy,
        id: Arc<Identity>,
    ) -> Result<Arc<Identity>, AuthFailure> {
        for s in &pol.scopes {
            if !id.scopes.iter().any(|have| have == s) {
                return Err(AuthFailure::Forbidden {
                    scope: pol.scopes.join(" "),
                });
            }
        }
        Ok(id)
    }

    async fn verify_jwt(
        &self,
        pol: &RoutePolicy,
        token: &str,
        now: u64,
    ) -> Result<Arc<Identity>, AuthFailure> {
        if token.len() > 8192 || token.split('.').count() != 3 {
            return Err(AuthFailure::invalid("malformed", "the token is malformed"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let issuer_idx = match pol.issuer {
            Some(i) => i,
            None if self.issuers.len() == 1 => 0,
            None => {
                let iss = jwt::peek_issuer(token)
                    .ok_or(AuthFailure::invalid("malformed", "the token is malformed"))?;
                *self.by_iss.get(&iss).ok_or(AuthFailure::invalid(
                    "wrong_issuer",
                    "the token is from an unknown issuer",
                ))?
            }
        };
        let issuer = self
            .issuers
            .get(issuer_idx)
            .ok_or(AuthFailure::Unavailable(
                "the issuer is not configured".into(),
            ))?;
        if let Some(id) = self.token_cache.get(&digest, now) {
            if id.issuer.as_deref() == Some(&*issuer.name) {
                if id
                    .jti
                    .as_deref()
                    .is_some_and(|j| revocation::REVOCATIONS.is_revoked(j))
                {
                    return Err(AuthFailure::invalid(
                        "revoked",
                        "the token has been revoked",
                    ));
                }
                return Ok(id);
            }
        }
        // boxed: a token not seen before is the rare case, and its future (a JWKS fetch
        // among it) would otherwise be part of every request's `request_filter` future
        let id = Box::pin(issuer.verify(token)).await?;
        if id
            .jti
            .as_deref()
            .is_some_and(|j| revocation::REVOCATIONS.is_revoked(j))
        {
            return Err(AuthFailure::invalid(
                "revoked",
                "the token has been revoked",
            ));
        }
        let exp = jwt_exp(token).unwrap_or(now);
        let valid_until = exp
            .saturating_add(issuer.leeway)
            .min(now.saturating_add(self.token_ttl));
        if valid_until > now {
            self.token_cache
                .insert(digest, id.clone(), valid_until, now);
        }
        Ok(id)
    }
}

/// `exp` of a token whose signature was already verified.
fn jwt_exp(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_u64()
}

fn bearer(req: &RequestHeader) -> Option<&str> {
    let v = req
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let t = token.trim();
        (!t.is_empty()).then_some(t)
    } else {
        None
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                b.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        } else if b[i] == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The query string without parameter `name` (for removing an API key).
pub fn query_without(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|p| p.split_once('=').map(|(k, _)| k).unwrap_or(p) != name)
        .collect::<Vec<_>>()
        .join("&")
}
