//! A route's `request_headers` / `response_headers`: names and values checked once.

use crate::config::{HeaderOps, Problems};
use http::{HeaderName, HeaderValue};

#[derive(Default)]
pub struct CompiledHeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl CompiledHeaderOps {
    /// Remove, then set, then add (a route's `request_headers` / `response_headers`).
    pub fn apply(&self, h: &mut impl crate::hdr::Headers) -> pingora_error::Result<()> {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n, v)?;
        }
        for (n, v) in &self.add {
            h.append(n, v)?;
        }
        Ok(())
    }
}

/// Compile `ops`, reporting each bad name or value under `{path}.set.NAME`, `{path}.add.NAME`
/// or `{path}.remove[i]`.
pub(crate) fn compile(ops: &HeaderOps, path: &str, p: &mut Problems) -> CompiledHeaderOps {
    let mut out = CompiledHeaderOps::default();
    let mut pair = |k: &str, v: &str, kind: &str| -> Option<(HeaderName, HeaderValue)> {
        let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
            p.push(
                format!("{path}.{kind}.{k}"),
                format!("`{k}` is not a valid header name"),
            );
            return None;
        };
        match HeaderValue::from_str(v) {
            Ok(val) => Some((name, val)),
            Err(_) => {
                p.push(
                    format!("{path}.{kind}.{k}"),
                    "the value is not a valid header value",
                );
                None
            }
        }
    };
    for (k, v) in &ops.set {
        out.set.extend(pair(k, v, "set"));
    }
    for (k, v) in &ops.add {
        out.add.extend(pair(k, v, "add"));
    }
    for (i, k) in ops.remove.iter().enumerate() {
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => out.remove.push(n),
            Err(_) => p.push(
                format!("{path}.remove[{i}]"),
                format!("`{k}` is not a valid header name"),
            ),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_and_values_are_reported_by_key() {
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let mut ops = HeaderOps::default();
        ops.set.insert("x-ok".into(), "1".into());
        ops.set.insert("bad name".into(), "1".into());
        ops.add.insert("x-add".into(), "a\nb".into());
        ops.remove.push("x-gone".into());
        ops.remove.push("".into());
        let c = compile(&ops, "routes[0].request_headers", &mut p);
        assert_eq!(c.set.len(), 1);
        assert!(c.add.is_empty());
        assert_eq!(c.remove.len(), 1);
        let paths: Vec<&str> = p.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].request_headers.set.bad name",
                "routes[0].request_headers.add.x-add",
                "routes[0].request_headers.remove[1]"
            ]
        );
    }

    #[test]
    fn remove_then_set_then_add() {
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let mut ops = HeaderOps::default();
        ops.remove.push("x-a".into());
        ops.set.insert("x-a".into(), "set".into());
        ops.add.insert("x-a".into(), "added".into());
        let c = compile(&ops, "r", &mut p);
        let mut h = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
        h.insert_header("x-a", "client").unwrap();
        c.apply(&mut h).unwrap();
        let got: Vec<&[u8]> = h
            .headers
            .get_all("x-a")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(got, [b"set".as_slice(), b"added".as_slice()]);
    }
}
