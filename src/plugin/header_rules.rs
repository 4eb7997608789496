//! Header rules: `set` / `add` / `remove` on the request sent upstream and on the response,
//! with values that may interpolate what the gateway knows about the request. The one
//! implementation behind a route's `request_headers` / `response_headers` and the
//! `header-rules` plugin.
//!
//! Variables: `${claim.<name>}` (a claim of the verified JWT; `${claim.sub}` its subject),
//! `${identity.key}` (the API key's id), `${identity.subject}` (JWT `sub` or key id),
//! `${route}`, `${request_id}`, `${client_ip}`, `${host}`, `${path}` (canonical),
//! `${method}`, `${header.<name>}` (the client's request header), `${var.<name>}` (a value
//! another plugin of the request set). `$${` is a literal `${`.
//!
//! A rule whose variable has no value for a request (no JWT, no such claim or header), or
//! whose result is not a valid header value (a CR, LF or other control character, from a
//! claim or a header), produces no value: a `set` rule then still removes the header (the
//! client's copy never passes for the gateway's), an `add` rule adds nothing. Values are
//! never forwarded empty or half-built. Rules without variables are parsed once, at load.

use crate::auth::{IdKind, Identity};
use crate::config::{HeaderOps, Problems};
use crate::hdr::Headers;
use crate::plugin::{Filter, Flow, PhaseCtx, Plugin, RequestInfo, Vars};
use crate::view::RequestView;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;

pub const NAME: &str = "header-rules";

/// What variables read: the request as the gateway sees it.
pub struct Scope<'a> {
    pub route: &'a str,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub view: Option<&'a RequestView>,
    pub method: &'a http::Method,
    pub identity: Option<&'a Identity>,
    /// The client's request headers.
    pub headers: Option<&'a HeaderMap>,
    pub vars: Option<&'a Vars>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Claim(String),
    IdentityKey,
    IdentitySubject,
    Route,
    RequestId,
    ClientIp,
    Host,
    Path,
    Method,
    Header(HeaderName),
    Plugin(String),
}

const KNOWN: &str = "claim.<name>, identity.key, identity.subject, route, request_id, client_ip, host, path, method, header.<name>, var.<name>";

impl Var {
    fn parse(name: &str) -> Result<Var, String> {
        let v = match name {
            "identity.key" => Var::IdentityKey,
            "identity.subject" => Var::IdentitySubject,
            "route" => Var::Route,
            "request_id" => Var::RequestId,
            "client_ip" => Var::ClientIp,
            "host" => Var::Host,
            "path" => Var::Path,
            "method" => Var::Method,
            _ => {
                if let Some(c) = name.strip_prefix("claim.").filter(|c| !c.is_empty()) {
                    Var::Claim(c.to_string())
                } else if let Some(h) = name.strip_prefix("header.") {
                    match HeaderName::from_bytes(h.as_bytes()) {
                        Ok(h) => Var::Header(h),
                        Err(_) => return Err(format!("`{h}` is not a valid header name")),
                    }
                } else if let Some(v) = name.strip_prefix("var.").filter(|v| !v.is_empty()) {
                    Var::Plugin(v.to_string())
                } else {
                    return Err(format!("unknown variable `${{{name}}}` (known: {KNOWN})"));
                }
            }
        };
        Ok(v)
    }

    /// Append this variable's value for `s` to `out`; false when it has none.
    fn render(&self, s: &Scope<'_>, out: &mut String) -> bool {
        match self {
            Var::Claim(name) => {
                let Some(v) = s.identity.and_then(|i| i.claims.get(name)) else {
                    return false;
                };
                claim_text(v, out)
            }
            Var::IdentityKey => match s.identity {
                Some(i) if matches!(i.kind, IdKind::ApiKey) => push(out, &i.subject),
                _ => false,
            },
            Var::IdentitySubject => s.identity.is_some_and(|i| push(out, &i.subject)),
            Var::Route => push(out, s.route),
            Var::RequestId => push(out, s.request_id),
            Var::ClientIp => match s.client_ip {
                Some(ip) => {
                    use std::fmt::Write;
                    let _ = write!(out, "{ip}");
                    true
                }
                None => false,
            },
            Var::Host => s.view.is_some_and(|v| push(out, &v.host)),
            Var::Path => s.view.is_some_and(|v| push(out, &v.path)),
            Var::Method => push(out, s.method.as_str()),
            Var::Header(h) => {
                let Some(v) = s.headers.and_then(|m| m.get(h)) else {
                    return false;
                };
                match v.to_str() {
                    Ok(t) => push(out, t),
                    Err(_) => false,
                }
            }
            Var::Plugin(name) => match s.vars.and_then(|v| v.get(name)) {
                Some(v) => push(out, v),
                None => false,
            },
        }
    }
}

/// Non-empty text; empty counts as no value.
fn push(out: &mut String, v: &str) -> bool {
    out.push_str(v);
    !v.is_empty()
}

/// A claim as header text: strings as they are, numbers and booleans as JSON writes them,
/// an array of those joined with `,`; objects and null have no value.
fn claim_text(v: &serde_json::Value, out: &mut String) -> bool {
    use serde_json::Value;
    let scalar = |v: &Value, out: &mut String| match v {
        Value::String(s) => push(out, s),
        Value::Number(n) => push(out, &n.to_string()),
        Value::Bool(b) => push(out, if *b { "true" } else { "false" }),
        _ => false,
    };
    match v {
        Value::Array(items) => {
            let mut any = false;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !scalar(item, out) {
                    return false;
                }
                any = true;
            }
            any
        }
        other => scalar(other, out),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// A header value that may interpolate variables, parsed once.
#[derive(Debug, Clone)]
pub struct Template(Repr);

#[derive(Debug, Clone)]
enum Repr {
    /// No variables: the value itself.
    Static(HeaderValue),
    Dynamic(Vec<Part>),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            if rest[..i].ends_with('$') {
                // `$${` is a literal `${`
                lit.push_str(&rest[..i]);
                lit.push('{');
                rest = &rest[i + 2..];
                continue;
            }
            lit.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(end) = after.find('}') else {
                return Err("`${` without a closing `}`".into());
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(Var::parse(after[..end].trim())?));
            rest = &after[end + 1..];
        }
        lit.push_str(rest);
        if parts.is_empty() {
            return HeaderValue::from_str(&lit)
                .map(|v| Template(Repr::Static(v)))
                .map_err(|_| "the value is not a valid header value".into());
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        for p in &parts {
            if let Part::Lit(l) = p {
                if HeaderValue::from_str(l).is_err() {
                    return Err("the value is not a valid header value".into());
                }
            }
        }
        Ok(Template(Repr::Dynamic(parts)))
    }

    /// The value for this request; `None` when a variable has no value or the result is
    /// not a valid header value.
    pub fn render(&self, s: &Scope<'_>) -> Option<HeaderValue> {
        let parts = match &self.0 {
            Repr::Static(v) => return Some(v.clone()),
            Repr::Dynamic(parts) => parts,
        };
        let mut out = String::new();
        for p in parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var(v) => {
                    if !v.render(s, &mut out) {
                        return None;
                    }
                }
            }
        }
        // stricter than HeaderValue: no control character at all (tab included)
        if out.bytes().any(|b| b < b' ' || b == 0x7f) {
            log::debug!("header rule: an interpolated value with a control character is dropped");
            return None;
        }
        HeaderValue::try_from(out).ok()
    }

    pub fn is_static(&self) -> bool {
        matches!(self.0, Repr::Static(_))
    }
}

/// One side's rules (the request sent upstream, or the response), compiled.
#[derive(Debug, Default, Clone)]
pub struct HeaderRules {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, Template)>,
    pub add: Vec<(HeaderName, Template)>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Remove, then set, then add.
    pub fn apply(&self, h: &mut impl Headers, s: &Scope<'_>) -> pingora_error::Result<()> {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, t) in &self.set {
            match t.render(s) {
                Some(v) => h.insert(n, &v)?,
                // no value: the header is not the client's either
                None => h.remove(n),
            }
        }
        for (n, t) in &self.add {
            if let Some(v) = t.render(s) {
                h.append(n, &v)?;
            }
        }
        Ok(())
    }
}

/// Headers the gateway decides itself: the message's framing and connection, and the Host
/// the request was routed and cached by (`preserve_host` chooses it). A rule that changed
/// one would forward something other than what routing, the cache key and the body checks
/// saw, so the config refuses it.
const GATEWAY_OWNED: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// The header name of a rule, or the problem with it.
fn rule_name(k: &str) -> Result<HeaderName, String> {
    let name = HeaderName::from_bytes(k.as_bytes())
        .map_err(|_| format!("`{k}` is not a valid header name"))?;
    if GATEWAY_OWNED.contains(&name.as_str()) {
        return Err(format!(
            "`{k}` is set by the gateway (framing, connection or the routed Host) and cannot be changed by a rule"
        ));
    }
    Ok(name)
}

/// Compile `ops`, reporting each bad name or value under `{path}.set.NAME`, `{path}.add.NAME`
/// or `{path}.remove[i]`.
pub fn compile(ops: &HeaderOps, path: &str, p: &mut Problems) -> HeaderRules {
    let mut out = HeaderRules::default();
    let mut pair = |k: &str, v: &str, kind: &str| -> Option<(HeaderName, Template)> {
        let key = [path, ".", kind, ".", k].concat();
        let name = match rule_name(k) {
            Ok(n) => n,
            Err(e) => {
                p.push(key, e);
                return None;
            }
        };
        match Template::parse(v) {
            Ok(t) => Some((name, t)),
            Err(e) => {
                p.push(key, e);
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
        match rule_name(k) {
            Ok(n) => out.remove.push(n),
            Err(e) => p.push(
                [path, ".remove[", itoa::Buffer::new().format(i), "]"].concat(),
                e,
            ),
        }
    }
    out
}

/// The plugin's `config:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// On the request sent upstream (after the gateway's own forwarding headers).
    #[serde(default)]
    request: HeaderOps,
    /// On the response to the client (after the gateway's own headers).
    #[serde(default)]
    response: HeaderOps,
}

struct Rules {
    request: HeaderRules,
    response: HeaderRules,
}

/// The `header-rules` plugin.
pub struct HeaderRulesPlugin {
    rules: Arc<Rules>,
}

pub fn factory(config: &serde_yaml::Value, at: &str, p: &mut Problems) -> Option<Arc<dyn Plugin>> {
    let s: Settings = crate::plugin::settings::parse(config, at, p)?;
    let before = p.len();
    let request = compile(&s.request, &[at, ".request"].concat(), p);
    let response = compile(&s.response, &[at, ".response"].concat(), p);
    if p.len() != before {
        return None;
    }
    if request.is_empty() && response.is_empty() {
        p.push(at, "no rules: give `request` and/or `response` rules");
        return None;
    }
    Some(Arc::new(HeaderRulesPlugin {
        rules: Arc::new(Rules { request, response }),
    }))
}

impl Plugin for HeaderRulesPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn start(&self, _info: &RequestInfo<'_>) -> Box<dyn Filter> {
        Box::new(HeaderRulesFilter {
            rules: self.rules.clone(),
        })
    }
}

struct HeaderRulesFilter {
    rules: Arc<Rules>,
}

#[async_trait::async_trait]
impl Filter for HeaderRulesFilter {
    fn upstream_request(&mut self, cx: &mut PhaseCtx<'_>, req: &mut RequestHeader) -> Flow {
        if self.rules.request.is_empty() {
            return Flow::Continue;
        }
        match self.rules.request.apply(req, &cx.scope(None)) {
            Ok(()) => Flow::Continue,
            Err(e) => Flow::Error(format!("request header rules: {e}")),
        }
    }

    fn response_head(&mut self, cx: &mut PhaseCtx<'_>, resp: &mut ResponseHeader) -> Flow {
        if self.rules.response.is_empty() {
            return Flow::Continue;
        }
        match self.rules.response.apply(resp, &cx.scope(None)) {
            Ok(()) => Flow::Continue,
            Err(e) => Flow::Error(format!("response header rules: {e}")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
