//! API keys: the config holds only the SHA-256 of each key; a presented key is hashed
//! and looked up, and the digests compared in constant time.

use super::{AuthFailure, IdKind, Identity};
use crate::config::{ApiKeyConfig, ApiKeysConfig, Problems};
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

struct KeyEntry {
    digest: [u8; 32],
    expires: Option<u64>,
    identity: Arc<Identity>,
}

pub struct ApiKeys {
    pub header: HeaderName,
    pub query_param: Option<String>,
    pub forward: HeaderName,
    by_digest: HashMap<[u8; 32], KeyEntry>,
}

/// Parse `expires`: unix seconds or an RFC 3339 UTC time.
fn parse_expiry(v: &serde_yaml::Value) -> Result<u64, String> {
    match v {
        serde_yaml::Value::Number(n) => {
            n.as_u64().ok_or_else(|| "must be unix seconds".to_string())
        }
        serde_yaml::Value::String(s) => rfc3339_seconds(s),
        _ => Err("must be unix seconds or an RFC 3339 time".into()),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) or `YYYY-MM-DD`.
fn rfc3339_seconds(s: &str) -> Result<u64, String> {
    let err = || format!("`{s}` is not an RFC 3339 UTC time such as 2027-01-31T00:00:00Z");
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, t.trim_end_matches('Z')),
        None => (s, "00:00:00"),
    };
    let d: Vec<u64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| err()))
        .collect::<Result<_, _>>()?;
    let t: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().map_err(|_| err()))
        .collect::<Result<_, _>>()?;
    if d.len() != 3
        || t.len() != 3
        || !(1970..=9999).contains(&d[0])
        || !(1..=12).contains(&d[1])
        || !(1..=31).contains(&d[2])
        || t[0] > 23
        || t[1] > 59
        || t[2] > 60
    {
        return Err(err());
    }
    // days from civil (Howard Hinnant's algorithm)
    let (y, m, day) = (d[0] as i64, d[1] as i64, d[2] as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    if days < 0 {
        return Err(err());
    }
    Ok(days as u64 * 86_400 + t[0] * 3600 + t[1] * 60 + t[2])
}

impl ApiKeys {
    /// Compile (problems relative to `auth.api_keys`).
    pub fn build(c: &ApiKeysConfig, p: &mut Problems) -> Option<ApiKeys> {
        let before = p.len();
        let header = HeaderName::from_bytes(c.header.as_bytes()).unwrap_or_else(|_| {
            p.push(
                "header",
                format!("`{}` is not a valid header name", c.header),
            );
            HeaderName::from_static("x-api-key")
        });
        let forward = HeaderName::from_bytes(c.forward_id_header.as_bytes()).unwrap_or_else(|_| {
            p.push("forward_id_header", "not a valid header name");
            HeaderName::from_static("x-auth-subject")
        });
        let mut by_digest = HashMap::new();
        let mut ids = HashMap::new();
        for (i, k) in c.keys.iter().enumerate() {
            if let Err(e) = Self::add(&mut by_digest, &forward, k) {
                p.push(format!("keys[{i}].{}", e.0), e.1);
            }
            if let Some(j) = ids.insert(k.id.clone(), i) {
                p.push(
                    format!("keys[{i}].id"),
                    format!("key id `{}` is also used by keys[{j}]", k.id),
                );
            }
        }
        if p.len() != before {
            return None;
        }
        Some(ApiKeys {
            header,
            query_param: c.query_param.clone(),
            forward,
            by_digest,
        })
    }

    fn add(
        map: &mut HashMap<[u8; 32], KeyEntry>,
        forward: &HeaderName,
        k: &ApiKeyConfig,
    ) -> Result<(), (String, String)> {
        let raw = hex::decode(k.sha256.trim()).map_err(|_| {
            (
                "sha256".to_string(),
                "must be 64 hex characters".to_string(),
            )
        })?;
        let digest: [u8; 32] = raw.try_into().map_err(|_| {
            (
                "sha256".to_string(),
                "must be 64 hex characters (32 bytes)".to_string(),
            )
        })?;
        if map.contains_key(&digest) {
            return Err(("sha256".into(), "the same key is listed twice".into()));
        }
        let expires = k
            .expires
            .as_ref()
            .map(parse_expiry)
            .transpose()
            .map_err(|e| ("expires".to_string(), e))?;
        let id_value = HeaderValue::from_str(&k.id)
            .map_err(|_| ("id".to_string(), "must be printable ASCII".to_string()))?;
        let identity = Arc::new(Identity {
            kind: IdKind::ApiKey,
            subject: k.id.clone(),
            scopes: k.scopes.clone(),
            tier: k.tier.as_deref().map(Arc::from),
            issuer: None,
            jti: None,
            forward: vec![(forward.clone(), id_value)],
            claims: serde_json::Map::new(),
        });
        map.insert(
            digest,
            KeyEntry {
                digest,
                expires,
                identity,
            },
        );
        Ok(())
    }

    /// Check a presented key.
    pub fn check(&self, key: &[u8], now: u64) -> Result<Arc<Identity>, AuthFailure> {
        if key.is_empty() || key.len() > 512 {
            return Err(AuthFailure::invalid(
                "malformed",
                "the API key is malformed",
            ));
        }
        let digest: [u8; 32] = Sha256::digest(key).into();
        let Some(entry) = self.by_digest.get(&digest) else {
            return Err(AuthFailure::invalid(
                "unknown_key",
                "the API key is not valid",
            ));
        };
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            &entry.digest[..],
            &digest[..],
        )) {
            return Err(AuthFailure::invalid(
                "unknown_key",
                "the API key is not valid",
            ));
        }
        if entry.expires.is_some_and(|e| now >= e) {
            return Err(AuthFailure::invalid("expired", "the API key has expired"));
        }
        Ok(entry.identity.clone())
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_formats() {
        assert_eq!(rfc3339_seconds("1970-01-02T00:00:00Z").unwrap(), 86_400);
        assert_eq!(rfc3339_seconds("2000-03-01").unwrap(), 951_868_800);
        assert!(rfc3339_seconds("2000-13-01").is_err());
        assert!(rfc3339_seconds("soon").is_err());
    }

    #[test]
    fn check_keys() {
        let key = "secret-key-1";
        let cfg = ApiKeysConfig {
            header: "x-api-key".into(),
            query_param: None,
            forward_id_header: "X-Auth-Subject".into(),
            keys: vec![
                ApiKeyConfig {
                    id: "one".into(),
                    sha256: hex::encode(Sha256::digest(key.as_bytes())),
                    scopes: vec!["read".into()],
                    tier: Some("free".into()),
                    expires: None,
                },
                ApiKeyConfig {
                    id: "old".into(),
                    sha256: hex::encode(Sha256::digest(b"old-key")),
                    scopes: vec![],
                    tier: None,
                    expires: Some(serde_yaml::Value::Number(1000.into())),
                },
            ],
        };
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let keys = ApiKeys::build(&cfg, &mut p).unwrap();
        let id = keys.check(key.as_bytes(), 2000).unwrap();
        assert_eq!(id.subject, "one");
        assert_eq!(id.tier.as_deref(), Some("free"));
        assert!(keys.check(b"nope", 2000).is_err());
        assert!(matches!(
            keys.check(b"old-key", 2000),
            Err(AuthFailure::Invalid {
                reason: "expired",
                ..
            })
        ));
        assert!(keys.check(b"old-key", 10).is_ok());
    }

    #[test]
    fn expiry_string_is_parsed() {
        let v = serde_yaml::Value::String("1970-01-02T00:00:00Z".into());
        assert_eq!(parse_expiry(&v).unwrap(), 86_400);
        assert_eq!(
            parse_expiry(&serde_yaml::Value::Number(1234.into())).unwrap(),
            1234
        );
        assert!(parse_expiry(&serde_yaml::Value::Bool(true)).is_err());
    }

    #[test]
    fn expiry_time_arithmetic() {
        assert_eq!(rfc3339_seconds("1970-01-01").unwrap(), 0);
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            rfc3339_seconds("1970-01-02T10:20:30Z").unwrap(),
            86_400 + 10 * 3600 + 20 * 60 + 30
        );
        assert_eq!(
            rfc3339_seconds("2027-01-31T23:59:59Z").unwrap(),
            1_801_439_999
        );
    }

    #[test]
    fn expiry_field_bounds() {
        // the largest accepted values
        assert_eq!(
            rfc3339_seconds("1970-01-01T23:59:60Z").unwrap(),
            23 * 3600 + 59 * 60 + 60
        );
        assert_eq!(rfc3339_seconds("1970-01-01T23:00:00Z").unwrap(), 23 * 3600);
        assert_eq!(rfc3339_seconds("1970-01-01T00:59:00Z").unwrap(), 59 * 60);
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:60Z").unwrap(), 60);
        assert!(rfc3339_seconds("9999-12-31").is_ok());
        // one past
        for bad in [
            "1970-01-01T24:00:00Z",
            "1970-01-01T00:60:00Z",
            "1970-01-01T00:00:61Z",
            "10000-01-01",
            "1969-12-31",
            "2000-01-32",
            "2000-00-10",
            // wrong number of fields
            "2000-01-01-05",
            "2000-01",
            "2000-01-01T00:00Z",
            "2000-01-01T00:00:00:00Z",
        ] {
            assert!(rfc3339_seconds(bad).is_err(), "{bad} accepted");
        }
    }

    fn build(keys: Vec<ApiKeyConfig>) -> ApiKeys {
        let cfg = ApiKeysConfig {
            header: "x-api-key".into(),
            query_param: None,
            forward_id_header: "X-Auth-Subject".into(),
            keys,
        };
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        ApiKeys::build(&cfg, &mut p).unwrap()
    }

    fn key_cfg(id: &str, key: &[u8], expires: Option<serde_yaml::Value>) -> ApiKeyConfig {
        ApiKeyConfig {
            id: id.into(),
            sha256: hex::encode(Sha256::digest(key)),
            scopes: vec![],
            tier: None,
            expires,
        }
    }

    fn reason(r: Result<Arc<Identity>, AuthFailure>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(AuthFailure::Invalid { reason, .. }) => reason,
            Err(_) => "other",
        }
    }

    #[test]
    fn key_length_limits() {
        let long = vec![b'k'; 512];
        let too_long = vec![b'k'; 513];
        let keys = build(vec![
            key_cfg("long", &long, None),
            key_cfg("too-long", &too_long, None),
            key_cfg("empty", b"", None),
        ]);
        assert_eq!(reason(keys.check(&long, 0)), "ok");
        assert_eq!(reason(keys.check(&too_long, 0)), "malformed");
        assert_eq!(reason(keys.check(&vec![b'k'; 4096], 0)), "malformed");
        assert_eq!(reason(keys.check(b"", 0)), "malformed");
        assert_eq!(reason(keys.check(b"other", 0)), "unknown_key");
    }

    #[test]
    fn expiry_given_as_date_string() {
        let keys = build(vec![key_cfg(
            "dated",
            b"dated-key",
            Some(serde_yaml::Value::String("1970-01-02".into())),
        )]);
        assert_eq!(reason(keys.check(b"dated-key", 86_399)), "ok");
        assert_eq!(reason(keys.check(b"dated-key", 86_400)), "expired");
    }

    #[test]
    fn len_and_is_empty() {
        let none = build(vec![]);
        assert!(none.is_empty());
        assert_eq!(none.len(), 0);
        let two = build(vec![key_cfg("a", b"a", None), key_cfg("b", b"b", None)]);
        assert!(!two.is_empty());
        assert_eq!(two.len(), 2);
    }
}
