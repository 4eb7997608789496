//! Request path normalisation, done once before routing. The normalised path is what is
//! matched and what is forwarded.
//!
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other
//!   escapes keep their encoding with upper-case hex (`%2f` → `%2F`, never a separator);
//! - `.` segments are dropped and `..` segments remove the previous one; climbing above
//!   the root is an error;
//! - repeated slashes collapse to one;
//! - escaped slashes and backslashes (`%2F`, `%5C`, a raw `\`) follow
//!   [`EscapedSlashes`]: rejected by default, since upstream frameworks disagree on
//!   whether `%2F` separates segments (a `..%2F` would climb where the gateway saw none).

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not starting with `/`, or a control character / space in the path.
    Malformed,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `..` segments climb above the root.
    EscapesRoot,
    /// `%2F`, `%5C` or a raw `\` under [`EscapedSlashes::Reject`].
    EscapedSlash,
}

/// What `%2F`, `%5C` and a raw `\` in a path become (`server.paths.escaped_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// 400: the request is ambiguous.
    #[default]
    Reject,
    /// Kept escaped (`%2F`, `%5C`; a raw `\` becomes `%5C`): never a segment separator.
    Keep,
    /// Decoded to `/` (a backslash too), then normalised like any separator.
    Decode,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::Malformed => "the request path is malformed",
            PathError::BadEscape => "the request path has an invalid percent-encoding",
            PathError::EscapesRoot => "the request path climbs above the root",
            PathError::EscapedSlash => {
                "the request path contains an escaped slash or a backslash (%2F, %5C or \\)"
            }
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` needs any rewriting at all (the common case is no).
fn needs_work(p: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in p.iter().enumerate() {
        match b {
            b'%' | b'\\' => return true,
            b'/' if prev == b'/' => return true,
            b'.' if prev == b'/' => {
                // "/." followed by end, "/" or "." (".." segment)
                match p.get(i + 1) {
                    None | Some(b'/') | Some(b'.') => return true,
                    _ => {}
                }
            }
            _ => {}
        }
        prev = b;
    }
    false
}

/// Normalise a request path (without the query string), escaped slashes kept escaped.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    normalize_with(path, EscapedSlashes::Keep)
}

fn is_slash_escape(h: u8, l: u8) -> bool {
    matches!((h, l), (2, 15) | (5, 12))
}

/// Normalise a request path (without the query string).
pub fn normalize_with(path: &str, slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    let p = path.as_bytes();
    if p.first() != Some(&b'/') {
        return Err(PathError::Malformed);
    }
    if p.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(PathError::Malformed);
    }
    if !needs_work(p) {
        return Ok(Cow::Borrowed(path));
    }

    // 1. decode unreserved escapes, canonicalise the others
    let mut decoded = String::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        let b = p[i];
        if b == b'%' {
            let (h, l) = match (
                p.get(i + 1).and_then(|&c| hex_val(c)),
                p.get(i + 2).and_then(|&c| hex_val(c)),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(PathError::BadEscape),
            };
            let v = h * 16 + l;
            if is_slash_escape(h, l) {
                match slashes {
                    EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                    EscapedSlashes::Decode => {
                        decoded.push('/');
                        i += 3;
                        continue;
                    }
                    EscapedSlashes::Keep => {}
                }
            }
            if is_unreserved(v) {
                decoded.push(v as char);
            } else {
                decoded.push('%');
                decoded.push(
                    char::from_digit(h as u32, 16)
                        .unwrap_or('0')
                        .to_ascii_uppercase(),
                );
                decoded.push(
                    char::from_digit(l as u32, 16)
                        .unwrap_or('0')
                        .to_ascii_uppercase(),
                );
            }
            i += 3;
        } else if b == b'\\' {
            match slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Keep => decoded.push_str("%5C"),
                EscapedSlashes::Decode => decoded.push('/'),
            }
            i += 1;
        } else {
            // the input is a &str, so multi-byte sequences are copied whole
            let ch_len = utf8_len(b);
            decoded.push_str(&path[i..i + ch_len]);
            i += ch_len;
        }
    }

    // 2. resolve segments
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segs: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segs.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn multi_byte_characters_survive_normalisation_whole() {
        assert_eq!(n("/caf\u{e9}/./x").unwrap(), "/caf\u{e9}/x");
        assert_eq!(n("/\u{20ac}/../\u{1f600}//y").unwrap(), "/\u{1f600}/y");
        assert_eq!(n("/a\u{7f}b"), Err(PathError::Malformed));
        // an escape right after a two-byte character is still decoded
        assert_eq!(n("/caf\u{e9}%41").unwrap(), "/caf\u{e9}A");
        assert_eq!(n("/\u{e9}/%2e%2e/x").unwrap(), "/x");
    }

    #[test]
    fn each_error_says_what_is_wrong_with_the_path() {
        assert_eq!(
            PathError::Malformed.message(),
            "the request path is malformed"
        );
        assert!(PathError::BadEscape.message().contains("percent-encoding"));
        assert!(PathError::EscapesRoot.message().contains("above the root"));
        assert!(PathError::EscapedSlash.message().contains("%2F"));
    }

    #[test]
    fn plain_paths_are_borrowed() {
        assert!(matches!(normalize("/api/users/1"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/a.b/c..d/.e"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/../b").unwrap(), "/b");
        assert_eq!(n("//a///b//").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/.").unwrap(), "/");
        assert_eq!(n("/..").unwrap_err(), PathError::EscapesRoot);
        assert_eq!(n("/a/../../b").unwrap_err(), PathError::EscapesRoot);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(n("/%61pi/%7Euser").unwrap(), "/api/~user");
        assert_eq!(n("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(n("/%2e%2e/admin").unwrap_err(), PathError::EscapesRoot);
        assert_eq!(n("/x/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(
            n("/api/users/..%2f..%2fadmin").unwrap(),
            "/api/users/..%2F..%2Fadmin"
        );
        assert_eq!(n("/a%zz").unwrap_err(), PathError::BadEscape);
        assert_eq!(n("/a%2").unwrap_err(), PathError::BadEscape);
    }

    #[test]
    fn escaped_slashes() {
        let r = |p| normalize_with(p, EscapedSlashes::Reject).map(|c| c.into_owned());
        let d = |p| normalize_with(p, EscapedSlashes::Decode).map(|c| c.into_owned());
        for p in [
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a%5Cb",
            "/a\\b",
            "/p/..%2fsecret",
        ] {
            assert_eq!(r(p).unwrap_err(), PathError::EscapedSlash, "{p}");
        }
        assert_eq!(r("/a%252fb").unwrap(), "/a%252fb");
        assert_eq!(n("/a\\b").unwrap(), "/a%5Cb");
        assert_eq!(n("/a%5cb").unwrap(), "/a%5Cb");
        assert_eq!(d("/public/..%2fsecret/x").unwrap(), "/secret/x");
        assert_eq!(d("/a\\..\\b").unwrap(), "/b");
        assert_eq!(d("/a%2f%2fb").unwrap(), "/a/b");
        assert_eq!(d("/%2f..").unwrap_err(), PathError::EscapesRoot);
    }

    #[test]
    fn malformed() {
        assert_eq!(n("api").unwrap_err(), PathError::Malformed);
        assert_eq!(n("").unwrap_err(), PathError::Malformed);
    }
}
