//! Route patterns: host patterns, path patterns and rewrite templates, parsed from config.

use super::path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `:name`: one non-empty segment, captured.
    Param(String),
    /// `*`: one non-empty segment.
    Star,
    /// `**`: the rest of the path, zero or more segments. Only last.
    Rest,
}

#[derive(Debug, Clone)]
pub struct PathPattern {
    pub segments: Vec<Segment>,
}

impl PathPattern {
    pub fn parse(p: &str) -> Result<PathPattern, String> {
        if !p.starts_with('/') {
            return Err(format!("path pattern `{p}` must start with `/`"));
        }
        if p.contains("//") {
            return Err(format!(
                "path pattern `{p}` has an empty segment (`//`) and can never match a normalised path"
            ));
        }
        let raw: Vec<&str> = p[1..].split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(raw.len());
        let mut names: Vec<&str> = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let seg = if *s == "**" {
                if i + 1 != raw.len() {
                    return Err(format!("path pattern `{p}`: `**` must be the last segment"));
                }
                Segment::Rest
            } else if *s == "*" {
                Segment::Star
            } else if let Some(name) = s.strip_prefix(':') {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "path pattern `{p}`: parameter `{s}` needs a name of letters, digits or `_`"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!(
                        "path pattern `{p}`: parameter `:{name}` appears twice"
                    ));
                }
                names.push(name);
                Segment::Param(name.to_string())
            } else {
                if s.contains('*') {
                    return Err(format!(
                        "path pattern `{p}`: `*` must be a whole segment (`/*/` or `/**`)"
                    ));
                }
                // A literal must already be in normalised form, or no request can ever match it.
                let as_path = format!("/{s}");
                match path::normalize(&as_path) {
                    Ok(n) if n == as_path => {}
                    _ => {
                        return Err(format!(
                            "path pattern `{p}`: segment `{s}` is not in normalised form \
                             (dot segments, unreserved %-escapes or control characters) and can never match"
                        ))
                    }
                }
                Segment::Literal(s.to_string())
            };
            segments.push(seg);
        }
        Ok(PathPattern { segments })
    }

    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.segments
            .iter()
            .position(|s| matches!(s, Segment::Param(n) if n == name))
    }

    pub fn rest_index(&self) -> Option<usize> {
        self.segments.iter().position(|s| *s == Segment::Rest)
    }
}

/// `api.example.com` (exact) or `*.example.com` (any subdomain, not the apex).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// The suffix including the leading dot: `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(h: &str) -> Result<HostPattern, String> {
        let h = h.trim().to_ascii_lowercase();
        if h.is_empty() {
            return Err("host pattern is empty".into());
        }
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        if let Some(rest) = h.strip_prefix("*.") {
            if !valid(rest) {
                return Err(format!("host pattern `{h}` is not a valid host name"));
            }
            Ok(HostPattern::Wildcard(format!(".{rest}")))
        } else if valid(&h) {
            Ok(HostPattern::Exact(h))
        } else {
            Err(format!(
                "host pattern `{h}` must be a host name or `*.` followed by one"
            ))
        }
    }
}

/// A compiled rewrite template: literal text with `:param` and `**` holes.
#[derive(Debug, Clone)]
pub struct Rewrite {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    /// The path segment at this index.
    Seg(usize),
    /// Every segment from this index on, joined by `/`.
    Rest(usize),
}

impl Rewrite {
    pub fn parse(template: &str, pattern: &PathPattern) -> Result<Rewrite, String> {
        if !template.starts_with('/') {
            return Err(format!("rewrite `{template}` must start with `/`"));
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        for (i, seg) in template[1..].split('/').enumerate() {
            lit.push('/');
            let _ = i;
            if let Some(name) = seg.strip_prefix(':') {
                let idx = pattern.param_index(name).ok_or_else(|| {
                    format!("rewrite `{template}` uses `:{name}`, which the path pattern does not capture")
                })?;
                parts.push(Part::Lit(std::mem::take(&mut lit)));
                parts.push(Part::Seg(idx));
            } else if seg == "**" {
                let idx = pattern.rest_index().ok_or_else(|| {
                    format!("rewrite `{template}` uses `**`, but the path pattern has no `**`")
                })?;
                parts.push(Part::Lit(std::mem::take(&mut lit)));
                parts.push(Part::Rest(idx));
            } else {
                lit.push_str(seg);
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        parts.retain(|p| !matches!(p, Part::Lit(s) if s.is_empty()));
        Ok(Rewrite { parts })
    }

    /// Build the new path from the segments of the matched (normalised) path.
    pub fn apply(&self, segs: &[&str]) -> String {
        let mut out = String::with_capacity(64);
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Seg(i) => out.push_str(segs.get(*i).copied().unwrap_or("")),
                Part::Rest(i) => {
                    let rest = segs.get(*i..).unwrap_or(&[]);
                    for (k, s) in rest.iter().enumerate() {
                        if k > 0 {
                            out.push('/');
                        }
                        out.push_str(s);
                    }
                }
            }
        }
        // `/v2/**` with an empty rest leaves `/v2/`; a bare empty result becomes `/`.
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

/// Remove `prefix` from `path` at a segment boundary. `None` if it is not a prefix.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_needs_a_name_of_word_characters() {
        assert!(PathPattern::parse("/a/:").is_err());
        assert!(PathPattern::parse("/a/:x-y").is_err());
        assert!(PathPattern::parse("/a/:x_1").is_ok());
    }

    #[test]
    fn patterns() {
        let p = PathPattern::parse("/api/users/:id").unwrap();
        assert_eq!(p.segments.len(), 3);
        assert!(PathPattern::parse("/api/**/x").is_err());
        assert!(PathPattern::parse("/api/../x").is_err());
        assert!(PathPattern::parse("/api/%7Ex").is_err());
        assert!(PathPattern::parse("/api//x").is_err());
        assert!(PathPattern::parse("api").is_err());
        assert!(PathPattern::parse("/a/:id/:id").is_err());
        assert!(PathPattern::parse("/a/b*").is_err());
        assert!(PathPattern::parse("/a/%2F").is_ok());
    }

    #[test]
    fn hosts() {
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap(),
            HostPattern::Wildcard(".example.com".into())
        );
        assert!(HostPattern::parse("a*.example.com").is_err());
    }

    #[test]
    fn rewrites() {
        let p = PathPattern::parse("/api/users/:id/**").unwrap();
        let r = Rewrite::parse("/v2/u/:id/x/**", &p).unwrap();
        assert_eq!(r.apply(&["api", "users", "7", "a", "b"]), "/v2/u/7/x/a/b");
        assert_eq!(r.apply(&["api", "users", "7"]), "/v2/u/7/x/");
        assert!(Rewrite::parse("/v2/:nope", &p).is_err());
        // literal segments after the last capture are kept
        let p = PathPattern::parse("/items/:id").unwrap();
        let r = Rewrite::parse("/v2/:id/full/view", &p).unwrap();
        assert_eq!(r.apply(&["items", "7"]), "/v2/7/full/view");
        assert_eq!(strip_prefix("/api/x", "/api"), Some("/x"));
        assert_eq!(strip_prefix("/api", "/api/"), Some("/"));
        assert_eq!(strip_prefix("/apix", "/api"), None);
    }
}
