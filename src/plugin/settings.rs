//! Reading a plugin's `config:` block into its own typed settings, with the same errors as
//! the rest of the config: serde with `deny_unknown_fields`, each problem reported through
//! `Problems` under the block's key path, so that it carries the file and the line.

use crate::config::Problems;
use serde::de::DeserializeOwned;

/// Deserialize `value` (the block at `at`) into `T`. An unknown key is reported at its own
/// key path (`plugins[0].config.cache.ttll`), so its line is the line of that key; other
/// errors at the deepest key serde names.
pub fn parse<T: DeserializeOwned>(
    value: &serde_yaml::Value,
    at: &str,
    problems: &mut Problems,
) -> Option<T> {
    // An absent `config:` is an empty block: a plugin whose keys all have defaults needs none.
    let empty = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    let value = if value.is_null() { &empty } else { value };
    // Through the text: serde_yaml tracks the key path only when it reads a document.
    let text = match serde_yaml::to_string(value) {
        Ok(t) => t,
        Err(e) => {
            problems.push(at, e.to_string());
            return None;
        }
    };
    match serde_yaml::from_str::<T>(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            let (path, message) = split(&e);
            problems.push(join(at, &path), message);
            None
        }
    }
}

/// serde_yaml's "a.b: message at line L column C" as (`a.b`, message); an unknown field's
/// name is added to the path.
fn split(e: &serde_yaml::Error) -> (String, String) {
    let msg = e.to_string();
    let msg = match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    let (mut path, message) = match msg.split_once(": ") {
        Some((p, m)) if !p.contains(' ') => (p.to_string(), m.to_string()),
        _ => (String::new(), msg),
    };
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        path = join(&path, field);
    }
    (path, message)
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a.to_string(),
        (true, false) => b.to_string(),
        _ if b.starts_with('[') => [a, b].concat(),
        _ => [a, ".", b].concat(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        ttl: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        #[serde(default)]
        cache: Option<Inner>,
    }

    #[test]
    fn an_unknown_nested_key_is_reported_at_its_own_line() {
        let text = "routes:\n  - match: { path: /a }\n    plugins:\n      - name: x\n        config:\n          cache:\n            ttl: 1s\n            ttll: 2s\n";
        let src = crate::config::parse_str("t.yaml", text).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
        let block = &v["routes"][0]["plugins"][0]["config"];
        let mut p = Problems::new(&src);
        let got = p.within("routes[0]", |p| {
            parse::<Outer>(block, "plugins[0].config", p)
        });
        assert!(got.is_none());
        let e = &p.errors[0];
        assert_eq!(e.path, "routes[0].plugins[0].config.cache.ttll", "{e}");
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("unknown field `ttll`"), "{e}");
    }

    #[test]
    fn an_absent_block_is_empty() {
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let got = parse::<Outer>(&serde_yaml::Value::Null, "c", &mut p).unwrap();
        assert!(got.cache.is_none());
        assert!(p.is_empty());
    }
}
