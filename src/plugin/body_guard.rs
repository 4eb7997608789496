//! `body-guard`: refuse request bodies of the wrong size or shape before they reach the
//! upstream.
//!
//! - `max_bytes`: a longer body is a 413 `body_too_large` (a declared `Content-Length` is
//!   refused at once, a chunked body when it passes the limit);
//! - `content_types`: the media types a body may have (`application/json`, `text/*`,
//!   `application/*+json`); a body with another or none is a 415 `unsupported_media_type`.
//!   A request without a body passes;
//! - `json: { max_depth, max_keys }`: a JSON body (`application/json` or `*/*+json`) must
//!   parse (400 `invalid_json`), nest at most `max_depth` arrays and objects (default 32,
//!   at most 128; 400 `json_too_deep`) and hold at most `max_keys` object keys in all (400
//!   `json_too_many_keys`).
//!
//! The JSON checks need the whole body before anything goes upstream: the guard asks the
//! gateway for it (`PhaseCtx::read_whole_body`), which holds at most 64 KiB, so `max_bytes`
//! is at most 64KiB with `json` (and 64KiB when not given). The same happens for a body
//! without `Content-Length` when `max_bytes` fits the buffer; a larger `max_bytes` without
//! `json` counts a chunked body as it streams, and refusing it then aborts the upstream
//! request (the client still gets the 413 if no response has started).

use crate::config::units::ByteSize;
use crate::config::Problems;
use crate::plugin::{
    Filter, Flow, LocalResponse, PhaseCtx, Plugin, RequestInfo, BODY_BUFFER_LIMIT,
};
use bytes::Bytes;
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::sync::Arc;

pub const NAME: &str = "body-guard";

/// serde_json's own nesting limit: deeper documents never parse.
const MAX_DEPTH_LIMIT: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    max_bytes: Option<ByteSize>,
    #[serde(default)]
    content_types: Vec<String>,
    #[serde(default)]
    json: Option<JsonSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSettings {
    #[serde(default = "default_depth")]
    max_depth: usize,
    #[serde(default)]
    max_keys: Option<usize>,
}

fn default_depth() -> usize {
    32
}

#[derive(Debug)]
struct Rules {
    max_bytes: Option<u64>,
    /// Lower-case media types; `type/*` matches the whole type, `type/*+suffix` the
    /// subtypes with that suffix.
    content_types: Vec<String>,
    json: Option<(usize, Option<usize>)>,
}

pub struct BodyGuard {
    rules: Arc<Rules>,
}

pub fn factory(config: &serde_yaml::Value, at: &str, p: &mut Problems) -> Option<Arc<dyn Plugin>> {
    let s: Settings = crate::plugin::settings::parse(config, at, p)?;
    let before = p.len();
    let key = |k: &str| [at, ".", k].concat();
    let buffer = BODY_BUFFER_LIMIT as u64;
    let mut max_bytes = s.max_bytes.map(|b| b.0);
    if max_bytes == Some(0) {
        p.push(key("max_bytes"), "must be above 0");
    }
    if let Some(j) = &s.json {
        match max_bytes {
            Some(m) if m > buffer => p.push(
                key("max_bytes"),
                format!(
                    "with `json` checks the body is held whole: at most {buffer} bytes (64KiB)"
                ),
            ),
            None => max_bytes = Some(buffer),
            _ => {}
        }
        if j.max_depth == 0 || j.max_depth > MAX_DEPTH_LIMIT {
            p.push(
                key("json.max_depth"),
                format!("must be 1..{MAX_DEPTH_LIMIT}"),
            );
        }
        if j.max_keys == Some(0) {
            p.push(
                key("json.max_keys"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
    }
    let mut content_types = Vec::with_capacity(s.content_types.len());
    for (i, t) in s.content_types.iter().enumerate() {
        let t = t.trim().to_ascii_lowercase();
        let ok = t
            .split_once('/')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !t.contains([';', ' ']));
        if !ok {
            p.push(
                [at, ".content_types[", itoa::Buffer::new().format(i), "]"].concat(),
                format!("`{t}` is not a media type (`type/subtype` or `type/*`)"),
            );
        }
        content_types.push(t);
    }
    if s.max_bytes.is_none() && s.content_types.is_empty() && s.json.is_none() {
        p.push(
            at,
            "nothing to check: give `max_bytes`, `content_types` and/or `json`",
        );
    }
    if p.len() != before {
        return None;
    }
    Some(Arc::new(BodyGuard {
        rules: Arc::new(Rules {
            max_bytes,
            content_types,
            json: s.json.map(|j| (j.max_depth, j.max_keys)),
        }),
    }))
}

impl Plugin for BodyGuard {
    fn name(&self) -> &str {
        NAME
    }

    fn start(&self, _info: &RequestInfo<'_>) -> Box<dyn Filter> {
        Box::new(GuardFilter {
            rules: self.rules.clone(),
            seen: 0,
            check_type: false,
            check_json: false,
        })
    }
}

struct GuardFilter {
    rules: Arc<Rules>,
    seen: u64,
    /// The content type could not be judged from the head (a body of unknown length).
    check_type: bool,
    /// The body is JSON and is read whole to be checked.
    check_json: bool,
}

/// The media type of a `Content-Type` value, lower-cased, without parameters.
fn media_type(v: &str) -> String {
    v.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_json(media: &str) -> bool {
    media == "application/json" || (media.contains('/') && media.ends_with("+json"))
}

impl Rules {
    fn type_allowed(&self, media: Option<&str>) -> bool {
        if self.content_types.is_empty() {
            return true;
        }
        let Some(m) = media.filter(|m| !m.is_empty()) else {
            return false;
        };
        let Some((mt, ms)) = m.split_once('/') else {
            return false;
        };
        self.content_types.iter().any(|t| {
            let Some((pt, ps)) = t.split_once('/') else {
                return false;
            };
            let sub = match ps.strip_prefix('*') {
                Some("") => true,
                // `application/*+json`: any subtype with that structured-syntax suffix
                Some(suffix) if suffix.starts_with('+') => ms.ends_with(suffix),
                _ => ps == ms,
            };
            (pt == mt || pt == "*") && sub
        })
    }
}

fn refuse(cx: &PhaseCtx<'_>, status: u16, code: &'static str, message: &str) -> Flow {
    Flow::Respond(LocalResponse::error(status, code, message, cx.request_id))
}

fn too_large(cx: &PhaseCtx<'_>, max: u64) -> Flow {
    refuse(
        cx,
        413,
        "body_too_large",
        &format!("the request body is over {max} bytes"),
    )
}

fn unsupported(cx: &PhaseCtx<'_>, rules: &Rules) -> Flow {
    refuse(
        cx,
        415,
        "unsupported_media_type",
        &format!(
            "the request body must be one of: {}",
            rules.content_types.join(", ")
        ),
    )
}

#[async_trait::async_trait]
impl Filter for GuardFilter {
    async fn request_head(&mut self, cx: &mut PhaseCtx<'_>, req: &mut RequestHeader) -> Flow {
        let rules = &self.rules;
        let h = &req.headers;
        let declared = h
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let chunked = h.contains_key(http::header::TRANSFER_ENCODING);
        // HTTP/1 frames every body; an HTTP/2 request without a length may still have one
        let unknown = declared.is_none() && !chunked && req.version == http::Version::HTTP_2;
        let has_body = declared.is_some_and(|n| n > 0) || chunked;
        if !has_body && !unknown {
            return Flow::Continue;
        }
        if let (Some(max), Some(n)) = (rules.max_bytes, declared) {
            if n > max {
                return too_large(cx, max);
            }
        }
        let media = h
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(media_type);
        if !rules.type_allowed(media.as_deref()) {
            if has_body {
                return unsupported(cx, rules);
            }
            // perhaps no body at all: judged when one shows up
            self.check_type = true;
        }
        self.check_json = rules.json.is_some() && media.as_deref().is_some_and(is_json);
        let size_unknown = declared.is_none()
            && rules
                .max_bytes
                .is_some_and(|m| m <= BODY_BUFFER_LIMIT as u64);
        if self.check_json || size_unknown || self.check_type {
            cx.read_whole_body();
        }
        Flow::Continue
    }

    async fn request_body(
        &mut self,
        cx: &mut PhaseCtx<'_>,
        chunk: &mut Option<Bytes>,
        end: bool,
    ) -> Flow {
        let rules = &self.rules;
        let n = chunk.as_ref().map_or(0, Bytes::len) as u64;
        self.seen += n;
        if let Some(max) = rules.max_bytes.filter(|m| self.seen > *m) {
            return too_large(cx, max);
        }
        if self.check_type && n > 0 {
            return unsupported(cx, rules);
        }
        if !end || !self.check_json {
            return Flow::Continue;
        }
        let (Some(body), Some((depth, keys))) = (chunk.as_ref(), rules.json) else {
            return Flow::Continue;
        };
        match check_json(body, depth, keys) {
            Ok(()) => Flow::Continue,
            Err((code, message)) => refuse(cx, 400, code, &message),
        }
    }
}

/// Nesting and key count first (a deep document is refused before anything recurses into
/// it), then a full parse.
fn check_json(
    body: &[u8],
    max_depth: usize,
    max_keys: Option<usize>,
) -> Result<(), (&'static str, String)> {
    let (mut depth, mut keys) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err((
                        "json_too_deep",
                        format!("the JSON body nests deeper than {max_depth} levels"),
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            // outside strings, a colon separates an object key from its value
            b':' => {
                keys += 1;
                if let Some(max) = max_keys.filter(|m| keys > *m) {
                    return Err((
                        "json_too_many_keys",
                        format!("the JSON body has more than {max} object keys"),
                    ));
                }
            }
            _ => {}
        }
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| {
            (
                "invalid_json",
                format!("the request body is not valid JSON: {e}"),
            )
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_keys_and_syntax() {
        assert!(check_json(br#"{"a":[1,{"b":"x:y{["}]}"#, 3, Some(2)).is_ok());
        assert_eq!(
            check_json(br#"{"a":[1,{"b":2}]}"#, 2, None).unwrap_err().0,
            "json_too_deep"
        );
        assert_eq!(
            check_json(br#"{"a":1,"b":2,"c":3}"#, 4, Some(2))
                .unwrap_err()
                .0,
            "json_too_many_keys"
        );
        // escaped quotes do not end a string
        assert!(check_json(br#"{"a\":{{{":"\\"}"#, 1, Some(1)).is_ok());
        assert_eq!(
            check_json(b"{\"a\":", 4, None).unwrap_err().0,
            "invalid_json"
        );
        assert_eq!(check_json(b"\xff", 4, None).unwrap_err().0, "invalid_json");
        let deep = "[".repeat(100_000);
        assert_eq!(
            check_json(deep.as_bytes(), 128, None).unwrap_err().0,
            "json_too_deep"
        );
    }

    #[test]
    fn media_types_match_exactly_or_by_type() {
        let r = Rules {
            max_bytes: None,
            content_types: vec!["application/json".into(), "text/*".into()],
            json: None,
        };
        assert!(!r.type_allowed(Some("application/problem+json")));
        assert!(r.type_allowed(Some(&media_type("Application/JSON; charset=utf-8"))));
        assert!(r.type_allowed(Some("text/csv")));
        assert!(!r.type_allowed(Some("application/xml")));
        assert!(!r.type_allowed(Some("texts/plain")));
        assert!(!r.type_allowed(None));
        let r = Rules {
            content_types: vec!["application/*+json".into(), "*/*".into()],
            ..r
        };
        assert!(r.type_allowed(Some("application/problem+json")));
        assert!(r.type_allowed(Some("image/png")));
        let r = Rules {
            content_types: vec!["application/*+json".into()],
            ..r
        };
        assert!(!r.type_allowed(Some("application/problem+xml")));
        assert!(!r.type_allowed(Some("text/x+json")));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("application/jsonp"));
    }

    fn problems(yaml: &str) -> Vec<String> {
        let src = crate::config::parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let _ = factory(&v, "c", &mut p);
        p.errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn settings_are_checked() {
        assert!(
            problems("{ max_bytes: 1KiB, content_types: [application/json], json: {} }").is_empty()
        );
        assert!(problems("{ max_bytes: 10MiB }").is_empty());
        let e = problems("{ max_bytes: 1MiB, json: { max_depth: 0, max_keys: 0 } }");
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("c.max_bytes: with `json`"), "{e:?}");
        assert!(e[1].starts_with("c.json.max_depth"), "{e:?}");
        assert!(e[2].starts_with("c.json.max_keys"), "{e:?}");
        let e = problems("{ content_types: [json, \"text/plain; q=1\"] }");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("c.content_types[0]"), "{e:?}");
        let e = problems("{}");
        assert!(e[0].starts_with("c: nothing to check"), "{e:?}");
        let e = problems("{ max_byte: 1 }");
        assert!(e[0].starts_with("c.max_byte: unknown field"), "{e:?}");
    }
}
