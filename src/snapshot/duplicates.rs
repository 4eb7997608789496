//! Routes that can never match because an earlier route has the same host, path shape,
//! header matches and (a superset of the) methods.

use crate::config::Problems;
use crate::routing::{Methods, PathPattern, Segment};
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
pub(super) struct DuplicateRoutes {
    /// Match key → (route index, methods) of the routes seen with it.
    seen: HashMap<String, Vec<(usize, Methods)>>,
}

impl DuplicateRoutes {
    /// Record route `i`; report at `match` when an earlier route shadows it. Returns the
    /// route's match key (unique among routes that can match, so also a cache namespace).
    pub fn add(
        &mut self,
        i: usize,
        host: Option<&str>,
        pattern: &PathPattern,
        headers: &BTreeMap<String, String>,
        methods: Methods,
        p: &mut Problems,
    ) -> String {
        let key = match_key(host, pattern, headers);
        let entry = self.seen.entry(key.clone()).or_default();
        if let Some((j, _)) = entry.iter().find(|(_, m)| m.0 & methods.0 == methods.0) {
            p.push(
                "match",
                format!(
                    "routes[{j}] has the same host, path, headers and methods, so this route can never match"
                ),
            );
        }
        entry.push((i, methods));
        key
    }
}

/// Host, path shape (parameter names do not matter) and header matches, separated by bytes
/// no header holds.
fn match_key(
    host: Option<&str>,
    pattern: &PathPattern,
    headers: &BTreeMap<String, String>,
) -> String {
    let mut key = String::with_capacity(64);
    if let Some(h) = host {
        key.push_str(&h.to_ascii_lowercase());
    }
    for seg in &pattern.segments {
        key.push('/');
        key.push_str(match seg {
            Segment::Literal(l) => l.as_str(),
            Segment::Param(_) => ":",
            Segment::Star => "*",
            Segment::Rest => "**",
        });
    }
    for (k, v) in headers {
        key.push('\n');
        key.push_str(&k.to_ascii_lowercase());
        key.push('\0');
        key.push_str(v);
    }
    key
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// (host, path, methods) of each route.
    type Spec<'a> = (Option<&'a str>, &'a str, Option<&'a [&'a str]>);

    fn run(routes: &[Spec]) -> Vec<String> {
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let mut d = DuplicateRoutes::default();
        for (i, (host, path, methods)) in routes.iter().enumerate() {
            let pt = PathPattern::parse(path).unwrap();
            let m = match methods {
                None => Methods::ANY,
                Some(l) => {
                    Methods::parse(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
                }
            };
            p.within(&format!("routes[{i}]"), |p| {
                d.add(i, *host, &pt, &BTreeMap::new(), m, p)
            });
        }
        p.errors
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn same_shape_and_methods_is_refused() {
        let e = run(&[(None, "/a/:id", None), (None, "/a/:other", None)]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("routes[1].match: routes[0]"), "{e:?}");
    }

    #[test]
    fn other_methods_hosts_or_shapes_are_fine() {
        let get: &[&str] = &["GET"];
        let post: &[&str] = &["POST"];
        assert!(run(&[(None, "/a", Some(get)), (None, "/a", Some(post))]).is_empty());
        assert!(run(&[
            (Some("a.example"), "/a", None),
            (Some("b.example"), "/a", None)
        ])
        .is_empty());
        assert!(run(&[(None, "/a/*", None), (None, "/a/**", None)]).is_empty());
        // a narrower method set after a route taking every method is shadowed
        assert_eq!(run(&[(None, "/a", None), (None, "/a", Some(get))]).len(), 1);
        // host case does not make a route different
        assert_eq!(
            run(&[
                (Some("A.example"), "/a", None),
                (Some("a.example"), "/a", None)
            ])
            .len(),
            1
        );
    }
}
