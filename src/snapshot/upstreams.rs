//! The `upstreams` block: one pool per name. An upstream whose config did not change keeps
//! its live state (health, breakers, registrations) across a reload.

use crate::config::{Config, Problems};
use crate::upstream::Upstream;
use std::collections::BTreeMap;
use std::sync::Arc;

pub(super) fn compile(
    cfg: &Config,
    prev: Option<&BTreeMap<String, Arc<Upstream>>>,
    p: &mut Problems,
) -> BTreeMap<String, Arc<Upstream>> {
    let mut upstreams = BTreeMap::new();
    for (name, ucfg) in &cfg.upstreams {
        let base = ["upstreams.", name.as_str()].concat();
        if !valid_name(name) {
            p.push(
                &base,
                format!("upstream name `{name}` may only use letters, digits, `-`, `_` and `.`"),
            );
            continue;
        }
        let old = prev.and_then(|m| m.get(name));
        if let Some(old) = old {
            if old.config == *ucfg && !old.ca_file_changed() {
                upstreams.insert(name.clone(), old.clone());
                continue;
            }
        }
        if let Some(u) = p.within(&base, |p| Upstream::build(name, ucfg, p)) {
            if let Some(old) = old {
                // registrations made through the admin API outlive a change of the block
                u.membership.adopt(&old.membership);
            }
            upstreams.insert(name.clone(), Arc::new(u));
        }
    }
    upstreams
}

/// Names appear in metric labels, URLs of the admin API and logs.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const TWO: &str = "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\n  b: { backends: [{ addr: \"127.0.0.1:2\" }] }\n";

    #[test]
    fn an_unchanged_upstream_keeps_its_state_and_a_changed_one_is_rebuilt() {
        let src = crate::config::parse_str("t.yaml", TWO).unwrap();
        let mut p = Problems::new(&src);
        let first = compile(&src.config, None, &mut p);
        assert!(p.is_empty());
        let changed = TWO.replace("127.0.0.1:2", "127.0.0.1:3");
        let src2 = crate::config::parse_str("t.yaml", &changed).unwrap();
        let mut p2 = Problems::new(&src2);
        let second = compile(&src2.config, Some(&first), &mut p2);
        assert!(Arc::ptr_eq(&first["a"], &second["a"]));
        assert!(!Arc::ptr_eq(&first["b"], &second["b"]));
    }

    #[test]
    fn errors_are_scoped_to_the_upstream() {
        let text = "upstreams:\n  a: { backends: [{ addr: \"nowhere\", weight: 100000 }] }\n  \"b c\": { backends: [] }\n";
        let src = crate::config::parse_str("t.yaml", text).unwrap();
        let mut p = Problems::new(&src);
        let got = compile(&src.config, None, &mut p);
        assert!(got.is_empty());
        let paths: Vec<&str> = p.errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"upstreams.a.backends[0].addr"), "{paths:?}");
        assert!(
            paths.contains(&"upstreams.a.backends[0].weight"),
            "{paths:?}"
        );
        assert!(paths.contains(&"upstreams.b c"), "{paths:?}");
        assert_eq!(p.errors[0].line, Some(2));
    }
}
