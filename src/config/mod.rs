//! Configuration: the YAML model, its units, and errors that name the file, key path and line.

pub mod lines;
pub mod model;
pub mod unique;
pub mod units;

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
pub struct Problems<'a> {
    src: &'a Source,
    pub errors: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    pub fn new(src: &'a Source) -> Self {
        Problems {
            src,
            errors: Vec::new(),
        }
    }

    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        self.errors.push(ConfigError {
            file: self.src.file.clone(),
            line: self.src.index().line_of(&path),
            path,
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A parsed config together with what is needed to report problems in it.
pub struct Source {
    pub file: String,
    pub config: Config,
    text: String,
    /// Built only when a problem needs a line number (it costs a second parse).
    index: once_cell::sync::OnceCell<LineIndex>,
}

impl Source {
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

pub fn parse_str(file: &str, text: &str) -> Result<Source, ConfigErrors> {
    let config: Config = match serde_yaml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let line = e.location().map(|l| l.line());
            let msg = e.to_string();
            // serde_yaml appends " at line L column C"; the line is shown up front already.
            let msg = match msg.rfind(" at line ") {
                Some(i) => msg[..i].to_string(),
                None => msg,
            };
            // serde_yaml prefixes the key path: "routes[0].match: unknown field ..."
            let (path, message) = match msg.split_once(": ") {
                Some((p, m)) if !p.contains(' ') => (p.to_string(), m.to_string()),
                _ => (String::new(), msg),
            };
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_string(),
                path,
                line,
                message,
            }]));
        }
    };
    Ok(Source {
        file: file.to_string(),
        config,
        text: text.to_string(),
        index: once_cell::sync::OnceCell::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
