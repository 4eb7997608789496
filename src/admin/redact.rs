//! `GET /admin/config`: the running config as JSON, with secrets replaced.
//!
//! The file's own text (as last loaded) is parsed again as plain YAML, so what is shown is
//! what the operator wrote, defaults not filled in. Redacted: values of keys that hold
//! digests or secrets (`sha256`, `token_sha256`, `metrics_token_sha256`, anything named
//! `secret`/`password`/`token`), and the password of any `scheme://user:pass@host` URL.

use serde_json::Value;

const REDACTED: &str = "REDACTED";

fn secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("sha256")
        || k == "secret"
        || k.contains("password")
        || k == "token"
        || k.ends_with("_token")
        || k == "key"
}

fn redact_url(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let (auth, host) = rest.split_once('@')?;
    if auth.contains('/') {
        return None;
    }
    let user = auth.split_once(':').map_or("", |(u, _)| u);
    Some(format!("{scheme}://{user}:{REDACTED}@{host}"))
}

fn walk(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if secret_key(k) && !child.is_object() && !child.is_array() && !child.is_null() {
                    *child = Value::String(REDACTED.into());
                } else {
                    walk(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(walk),
        Value::String(s) => {
            if let Some(r) = redact_url(s) {
                *s = r;
            }
        }
        _ => {}
    }
}

/// The config text as redacted JSON (`{"error": ...}` if it no longer parses).
pub fn running_config(text: &str) -> Value {
    match serde_yaml::from_str::<Value>(text) {
        Ok(mut v) => {
            walk(&mut v);
            v
        }
        Err(e) => serde_json::json!({ "error": "unreadable_config", "message": e.to_string() }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let v = running_config(
            "server:\n  admin: { listen: \"127.0.0.1:9090\", token_sha256: abc }\n\
             auth:\n  api_keys:\n    keys: [{ id: app, sha256: \"9f86\" }]\n  jwt:\n    - { name: c, secret_env: ENV_NAME }\n\
             rate_limits:\n  cluster: { redis: \"redis://u:hunter2@r:6379\" }\n",
        );
        assert_eq!(v["server"]["admin"]["token_sha256"], REDACTED);
        assert_eq!(v["server"]["admin"]["listen"], "127.0.0.1:9090");
        assert_eq!(v["auth"]["api_keys"]["keys"][0]["sha256"], REDACTED);
        assert_eq!(v["auth"]["api_keys"]["keys"][0]["id"], "app");
        assert_eq!(v["auth"]["jwt"][0]["secret_env"], "ENV_NAME");
        assert_eq!(
            v["rate_limits"]["cluster"]["redis"],
            "redis://u:REDACTED@r:6379"
        );
        assert!(!v.to_string().contains("hunter2"));
    }
}
