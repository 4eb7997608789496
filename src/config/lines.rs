//! Maps config key paths (`routes[2].match.path`) to the line they appear on, so that
//! semantic errors found after deserialisation can still point at the file.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    pub fn build(text: &str) -> LineIndex {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error is reported by serde_yaml with its own line; the index just stops.
        let _ = parser.load(&mut b, false);
        LineIndex { lines: b.lines }
    }

    /// The line of `path`, or of its nearest ancestor that is in the file.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Builder {
    fn path(&self) -> String {
        let mut out = String::new();
        for f in &self.stack {
            match f {
                Frame::Map { key: Some(k), .. } => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Frame::Map { key: None, .. } => {}
                Frame::Seq { index } => {
                    out.push('[');
                    out.push_str(&index.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    /// Called when a value (scalar or container) starts at the current position.
    fn value_started(&mut self, line: usize) {
        let path = self.path();
        self.lines.entry(path).or_insert(line);
    }

    /// Called after a value is complete: advance the parent.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(s, ..) => {
                if let Some(Frame::Map { key }) = self.stack.last_mut() {
                    if key.is_none() {
                        *key = Some(s);
                        let path = self.path();
                        self.lines.entry(path).or_insert(line);
                        return;
                    }
                }
                self.value_started(line);
                self.value_done();
            }
            Event::Alias(_) => {
                self.value_started(line);
                self.value_done();
            }
            Event::MappingStart(..) => {
                self.value_started(line);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.value_started(line);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys() {
        let text = "server:\n  listen: [\"0.0.0.0:8080\"]\nroutes:\n  - match: { path: /a }\n    upstream: x\n  - match:\n      path: /b\n    upstream: y\n";
        let idx = LineIndex::build(text);
        assert_eq!(idx.line_of("server.listen"), Some(2));
        assert_eq!(idx.line_of("routes[0].upstream"), Some(5));
        assert_eq!(idx.line_of("routes[1].match.path"), Some(7));
        assert_eq!(idx.line_of("routes[1].upstream"), Some(8));
        // unknown leaf falls back to the parent
        assert_eq!(idx.line_of("routes[1].match.host"), Some(6));
    }
}
