//! Configuration: the YAML model, its units, and errors that name the file, key path and line.

pub mod cache;
pub mod cluster;
pub mod lines;
pub mod model;
pub mod unique;
pub mod units;

pub use cluster::{FleetConfig, RedisEndpoints};
pub use lines::LineIndex;
pub use model::*;
pub use units::{ByteSize, Dur};

use std::fmt;
use std::path::Path;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects semantic errors against a source, resolving each key path to its line.
/// The one collector of config problems: each carries the file, the key path and the line.
/// Builders report keys relative to where they are called from; [`Problems::within`]
/// scopes a builder under a prefix so that it need not know where its block sits.
pub struct Problems<'a> {
    src: &'a Source,
    scope: String,
    pub errors: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    pub fn new(src: &'a Source) -> Self {
        Problems {
            src,
            scope: String::new(),
            errors: Vec::new(),
        }
    }

    /// Report `message` at `path` (below the current scope, if any).
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = join_path(&self.scope, path.into());
        self.errors.push(ConfigError {
            file: self.src.file.clone(),
            line: self.src.index().line_of(&path),
            path,
            message: message.into(),
        });
    }

    /// Run `f` with every key it reports placed below `prefix`: inside
    /// `p.within("server.tls", ..)`, `p.push("cert", ..)` reports `server.tls.cert`.
    pub fn within<R>(&mut self, prefix: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        let outer = self.scope.len();
        self.scope = join_path(&self.scope, prefix.to_string());
        let r = f(self);
        self.scope.truncate(outer);
        r
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// How many problems so far (compare before and after a step to see whether it failed).
    pub fn len(&self) -> usize {
        self.errors.len()
    }
}

/// `scope` + `path` as a key path: `a.b` + `c` → `a.b.c`, `a` + `[0].c` → `a[0].c`.
fn join_path(scope: &str, path: String) -> String {
    if scope.is_empty() {
        path
    } else if path.is_empty() {
        scope.to_string()
    } else if path.starts_with('[') {
        [scope, path.as_str()].concat()
    } else {
        [scope, ".", path.as_str()].concat()
    }
}

/// A parsed config together with what is needed to report problems in it.
pub struct Source {
    pub file: String,
    /// Shared with the snapshot built from it: a reload does not copy the parsed config.
    pub config: std::sync::Arc<Config>,
    text: std::sync::Arc<str>,
    /// Built only when a problem needs a line number (it costs a second parse).
    index: std::sync::OnceLock<LineIndex>,
}

impl Source {
    /// The file's text as loaded.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The file's text, shared.
    pub fn shared_text(&self) -> std::sync::Arc<str> {
        self.text.clone()
    }

    pub fn index(&self) -> &LineIndex {
        self.index.get_or_init(|| LineIndex::build(&self.text))
    }
}

pub fn load_file(path: &Path) -> Result<Source, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            path: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse_str(&file, &text)
}

/// `; did you mean `x`?` when one of `candidates` is close to `name` (edit distance at most
/// a third of the name, and at least 1); empty otherwise.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let limit = (name.chars().count() / 3).max(1);
    let best = candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, c)) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}

/// Edit distance with adjacent transpositions counted as one edit (`crop` → `corp`: 1).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// For "duplicate key `k`" / "duplicate field `k`", serde_yaml points at the first
/// occurrence (or the mapping); the line to fix is the repeat: the second line at the same
/// indentation from there that starts with `k:`.
fn duplicate_line(text: &str, message: &str, line: usize) -> Option<usize> {
    let key = message
        .strip_prefix("duplicate key `")
        .or_else(|| message.strip_prefix("duplicate field `"))?
        .split('`')
        .next()?;
    let lines: Vec<&str> = text.lines().collect();
    let starts = |l: &str| {
        let t = l.trim_start().trim_start_matches("- ");
        t.strip_prefix(key)
            .or_else(|| t.strip_prefix(&format!("\"{key}\"")))
            .is_some_and(|r| r.trim_start().starts_with(':'))
    };
    let first = (line.saturating_sub(1)..lines.len()).find(|&i| starts(lines[i]))?;
    let indent = lines[first].len() - lines[first].trim_start().len();
    (first + 1..lines.len())
        .take_while(|&i| {
            let l = lines[i];
            l.trim().is_empty() || l.len() - l.trim_start().len() >= indent
        })
        .find(|&i| starts(lines[i]) && lines[i].len() - lines[i].trim_start().len() == indent)
        .map(|i| i + 1)
}

/// serde's "unknown field `x`, expected one of `a`, `b`" gains a suggestion.
fn with_key_suggestion(message: String) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message;
    };
    let Some((field, tail)) = rest.split_once('`') else {
        return message;
    };
    let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let hint = suggest(field, expected);
    if hint.is_empty() {
        message
    } else {
        [message.as_str(), &hint].concat()
    }
}

/// serde_yaml's error as (key path, message, line): it prefixes the path ("routes[0].match:
/// unknown field ...") and appends " at line L column C".
fn split_yaml_error(e: &serde_yaml::Error, text: &str) -> (String, String, Option<usize>) {
    let line = e.location().map(|l| l.line());
    let msg = e.to_string();
    let msg = match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    let (path, message) = match msg.split_once(": ") {
        Some((p, m)) if !p.contains(' ') => (p.to_string(), m.to_string()),
        _ => (String::new(), msg),
    };
    let message = with_key_suggestion(message);
    let line = line.map(|l| duplicate_line(text, &message, l).unwrap_or(l));
    (path, message, line)
}

/// serde stops at the first structural error. When the file is valid YAML, each route and
/// each upstream is read again on its own, so that one `-t` lists the problems of all of
/// them (lines from the key-path index).
fn more_structure_errors(file: &str, text: &str, first: &ConfigError) -> Vec<ConfigError> {
    let Ok(root) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return Vec::new();
    };
    let index = LineIndex::build(text);
    let mut out = Vec::new();
    let mut note = |base: String, e: serde_yaml::Error| {
        let (sub, message, _) = split_yaml_error(&e, text);
        let path = if sub.is_empty() {
            base
        } else {
            [base.as_str(), ".", sub.as_str()].concat()
        };
        let line = index.line_of(&path);
        if line == first.line && message == first.message {
            return;
        }
        out.push(ConfigError {
            file: file.to_string(),
            path,
            line,
            message,
        });
    };
    if let Some(routes) = root.get("routes").and_then(|r| r.as_sequence()) {
        for (i, r) in routes.iter().enumerate() {
            if let Err(e) = serde_yaml::from_value::<RouteConfig>(r.clone()) {
                note(format!("routes[{i}]"), e);
            }
        }
    }
    if let Some(ups) = root.get("upstreams").and_then(|u| u.as_mapping()) {
        for (k, u) in ups {
            if let (Some(name), Err(e)) = (
                k.as_str(),
                serde_yaml::from_value::<UpstreamConfig>(u.clone()),
            ) {
                note(format!("upstreams.{name}"), e);
            }
        }
    }
    out
}

pub fn parse_str(file: &str, text: &str) -> Result<Source, ConfigErrors> {
    let config: Config = match serde_yaml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let (path, message, line) = split_yaml_error(&e, text);
            let first = ConfigError {
                file: file.to_string(),
                path,
                line,
                message,
            };
            let more = more_structure_errors(file, text, &first);
            let mut all = vec![first];
            all.extend(more);
            return Err(ConfigErrors(all));
        }
    };
    Ok(Source {
        file: file.to_string(),
        config: std::sync::Arc::new(config),
        text: text.into(),
        index: std::sync::OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_problems_join_key_paths_and_find_lines() {
        let text = "server:\n  trusted_proxies:\n    - x\n";
        let src = parse_str("t.yaml", text).unwrap();
        let mut p = Problems::new(&src);
        p.within("server", |p| {
            p.within("trusted_proxies", |p| p.push("[0]", "bad"));
            p.push("[0]", "indexed");
            p.push("", "the block itself");
        });
        p.push("top", "unscoped");
        let got: Vec<(&str, Option<usize>)> =
            p.errors.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("server.trusted_proxies[0]", Some(3)),
                ("server[0]", Some(1)),
                ("server", Some(1)),
                ("top", None)
            ]
        );
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn a_duplicate_is_reported_where_it_repeats() {
        let text = "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\n  b: { backends: [] }\n  a: { backends: [] }\n";
        let err = parse_str("t.yaml", text).err().unwrap();
        assert_eq!(err.0[0].line, Some(4), "{}", err.0[0]);
        let text = "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - match: { path: /a }\n    upstream: a\n    upstream: a\n";
        let err = parse_str("t.yaml", text).err().unwrap();
        assert_eq!(err.0[0].line, Some(6), "{}", err.0[0]);
    }

    #[test]
    fn every_route_with_a_structure_error_is_listed() {
        let text = "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - match: { path: /a, bogus: 1 }\n    upstream: a\n  - match: { path: /b }\n    upstream: a\n  - match: { path: /c }\n    upstrem: a\n";
        let err = parse_str("t.yaml", text).err().unwrap();
        assert_eq!(err.0.len(), 2, "{err}");
        assert_eq!(err.0[0].line, Some(4), "{}", err.0[0]);
        assert!(err.0[1].path.starts_with("routes[2]"), "{}", err.0[1]);
        assert_eq!(err.0[1].line, Some(8), "{}", err.0[1]);
        assert!(
            err.0[1].message.contains("did you mean `upstream`?"),
            "{}",
            err.0[1]
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("ordrs", ["orders", "users"]),
            "; did you mean `orders`?"
        );
        assert_eq!(suggest("zzz", ["orders", "users"]), "");
        let text = "upstreams:\n  a:\n    backends: [{ addr: \"127.0.0.1:1\" }]\nroutes:\n  - match: { path: /a }\n    upstream: a\n    rate_limt: []\n";
        let err = parse_str("t.yaml", text).err().unwrap();
        assert!(
            err.0[0].message.contains("did you mean `rate_limit`?"),
            "{}",
            err.0[0]
        );
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let text = "upstreams:\n  a:\n    backends: [{ addr: \"127.0.0.1:1\" }]\nroutes:\n  - match: { path: /a, bogus: 1 }\n    upstream: a\n";
        let err = parse_str("t.yaml", text).err().unwrap();
        let e = &err.0[0];
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.path.starts_with("routes[0]"), "{e}");
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_duration_is_reported() {
        let text = "upstreams:\n  a:\n    backends: [{ addr: \"127.0.0.1:1\" }]\n    timeouts: { connect: 5 }\n";
        let err = parse_str("t.yaml", text).err().unwrap();
        assert!(err.0[0].message.contains("needs a unit"), "{}", err);
        assert_eq!(err.0[0].line, Some(4));
    }
}
