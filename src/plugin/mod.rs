//! Compiled-in extensions: the plugin API.
//!
//! Two levels, as in proxy-wasm's root and HTTP contexts:
//!
//! - a [`Plugin`] is compiled once per route entry from its `plugins:` config when the config
//!   is loaded or reloaded; it is immutable, shared by every request of that snapshot and
//!   dropped with it, so a reload swaps plugins atomically with the rest of the config;
//! - a [`Filter`] is one request's instance of a plugin ([`Plugin::start`]), called at each
//!   phase the gateway exposes. Every phase method has a default that does nothing, and
//!   returns a [`Flow`]: go on, answer the client locally, or fail.
//!
//! Factories are registered by name in a [`Registry`] ([`builtin`] holds the plugins that
//! ship with Portcullis); a route lists the plugins it runs, in order:
//!
//! ```yaml
//! routes:
//!   - match: { path: "/api/**" }
//!     upstream: app
//!     plugins:
//!       - { name: header-rules, config: { request: { set: { x-user: "${claim.sub}" } } } }
//! ```
//!
//! A route without plugins pays nothing per request: no filter is started, nothing is
//! allocated, each phase checks one empty list. This module is a domain module: it knows the
//! request view, the identity and the config's problem collector, never the proxy, the
//! runtime or the snapshot (the proxy calls it, `src/proxy/plugins.rs`).

pub mod body_guard;
pub mod forward_auth;
pub mod header_rules;
pub mod settings;
pub mod wasm;

pub use crate::auth::{IdKind, Identity};
pub use crate::config::Problems;
pub use crate::view::RequestView;
/// What a plugin's own crate needs, at the versions Portcullis uses.
pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use http;
pub use pingora_http::{RequestHeader, ResponseHeader};
/// A plugin's `config:` block as the factory receives it.
pub type ConfigValue = serde_yaml::Value;

use crate::config::PluginConfig;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The most request body the gateway holds for a plugin that asked to see the whole body
/// before anything goes upstream ([`PhaseCtx::read_whole_body`]): Pingora's request body
/// buffer (the one a retry replays). A longer body is refused with 413.
pub const BODY_BUFFER_LIMIT: usize = 64 * 1024;

/// A plugin compiled from one route entry's config. Immutable and shared by all the
/// requests of the snapshot it belongs to.
pub trait Plugin: Send + Sync + 'static {
    /// The name it is registered under (labels metrics and logs).
    fn name(&self) -> &str;
    /// This request's state. Called only for requests routed to a route that lists the
    /// plugin, after routing, auth and rate limits let them through.
    fn start(&self, info: &RequestInfo<'_>) -> Box<dyn Filter>;
}

/// One request's instance of a plugin. Every method has a default that does nothing, so a
/// plugin implements only the phases it needs. Filters run in the route's list order, in
/// every phase (responses too); the first that does not continue ends the phase.
#[async_trait]
pub trait Filter: Send {
    /// After routing, auth and rate limits (`request_filter`): may change the request head
    /// (headers, path: a changed path is forwarded as it is, routing is not redone) or answer
    /// locally. Ask for the whole body here ([`PhaseCtx::read_whole_body`]) to see it before
    /// anything goes upstream.
    async fn request_head(&mut self, _cx: &mut PhaseCtx<'_>, _req: &mut RequestHeader) -> Flow {
        Flow::Continue
    }

    /// Each request body chunk (`end` on the last; `None` when there is none). When a filter
    /// asked for the whole body, this is called once, in `request_filter`, with all of it
    /// and `end`, before anything goes upstream: a rewrite replaces the body sent (and its
    /// `Content-Length`), a `Respond` answers instead. Otherwise it is called per chunk as the
    /// body streams upstream: a `Respond` then aborts the upstream request and answers if no
    /// response has started.
    async fn request_body(
        &mut self,
        _cx: &mut PhaseCtx<'_>,
        _chunk: &mut Option<Bytes>,
        _end: bool,
    ) -> Flow {
        Flow::Continue
    }

    /// The request as it goes upstream, after the gateway's own forwarding headers, identity
    /// headers and the route's `request_headers`. Called once per attempt (a retry calls it
    /// again on a fresh copy of the request).
    fn upstream_request(&mut self, _cx: &mut PhaseCtx<'_>, _req: &mut RequestHeader) -> Flow {
        Flow::Continue
    }

    /// The response head on its way to the client (from the upstream or the cache), after
    /// the gateway's own headers. A `Respond` replaces the response (nothing of it was sent).
    /// Responses the gateway writes itself (refusals, local answers) do not come here.
    fn response_head(&mut self, _cx: &mut PhaseCtx<'_>, _resp: &mut ResponseHeader) -> Flow {
        Flow::Continue
    }

    /// Each response body chunk. A filter changing the length must have removed
    /// `Content-Length` in `response_head`. A `Respond` or an `Error` here replaces the
    /// response if its head has not been written yet, and otherwise cuts it short (the
    /// connection is closed).
    fn response_body(
        &mut self,
        _cx: &mut PhaseCtx<'_>,
        _chunk: &mut Option<Bytes>,
        _end: bool,
    ) -> Flow {
        Flow::Continue
    }

    /// The request is done: `status` is what the client got (499 when it went away, 0 when
    /// nothing was sent).
    fn log(&mut self, _cx: &PhaseCtx<'_>, _status: u16) {}
}

/// What a phase decided.
#[derive(Debug)]
pub enum Flow {
    Continue,
    /// Answer the client locally with this status, headers and body; nothing (more) goes
    /// upstream. In response phases, where the head may be sent already, the gateway writes
    /// it if it still can and cuts the response short otherwise.
    Respond(LocalResponse),
    /// The plugin failed: the gateway answers 500 (JSON error body, `plugin_error`), counts
    /// it in `portcullis_plugin_errors_total{route,plugin}` and logs the message (which the
    /// client does not see).
    Error(String),
}

/// A response a plugin answers with instead of the upstream's.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    /// 200..=599; anything else is a plugin error.
    pub status: u16,
    /// Written in order; a repeated name gives repeated headers. `Content-Length` is the
    /// gateway's (from `body`); `X-Request-Id` is added.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// When this is one of the gateway's JSON errors ([`LocalResponse::error`]): its code,
    /// counted in `portcullis_rejections_total{reason}` and logged as the request's error.
    pub reason: Option<&'static str>,
}

impl LocalResponse {
    pub fn new(status: u16) -> LocalResponse {
        LocalResponse {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            reason: None,
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> LocalResponse {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> LocalResponse {
        self.body = body.into();
        self
    }

    /// The gateway's own error shape: `{"error": code, "message": .., "request_id": ..}`,
    /// JSON, not stored by caches.
    pub fn error(status: u16, code: &'static str, message: &str, request_id: &str) -> Self {
        let body = crate::reject::error_body(code, message, request_id);
        LocalResponse {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: Bytes::from(body),
            reason: Some(code),
        }
    }
}

/// What a request looks like when its filters start: read-only.
pub struct RequestInfo<'a> {
    /// The route's name (`name:`, else its match).
    pub route: &'a str,
    /// The canonical view of the request: host, normalised path, query.
    pub view: &'a RequestView,
    pub method: &'a http::Method,
    /// Who the request is authenticated as, on a route with `auth`.
    /// (shared: a filter that keeps it for later phases clones the `Arc`, not the identity)
    pub identity: Option<&'a Arc<Identity>>,
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a str,
    /// The request head as received (after the gateway's header policy).
    pub headers: &'a http::HeaderMap,
}

/// Typed access to what the gateway decided for this request, in every phase: the route,
/// the canonical view, the identity, the client, the request id, and a small map the
/// filters of one request share ([`Vars`]).
pub struct PhaseCtx<'a> {
    pub route: &'a str,
    pub view: &'a RequestView,
    pub method: &'a http::Method,
    pub identity: Option<&'a Identity>,
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a str,
    /// The client's request head, in the phases that are not given it to change
    /// (`request_head` is: there this is `None`).
    pub request: Option<&'a RequestHeader>,
    vars: &'a mut Vars,
    whole_body: &'a mut bool,
}

impl<'a> PhaseCtx<'a> {
    /// For the gateway (and tests): a context over these parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        route: &'a str,
        view: &'a RequestView,
        method: &'a http::Method,
        identity: Option<&'a Identity>,
        client_ip: Option<IpAddr>,
        request_id: &'a str,
        request: Option<&'a RequestHeader>,
        vars: &'a mut Vars,
        whole_body: &'a mut bool,
    ) -> PhaseCtx<'a> {
        PhaseCtx {
            route,
            view,
            method,
            identity,
            client_ip,
            request_id,
            request,
            vars,
            whole_body,
        }
    }

    /// Values shared by this request's filters (set by one, read by a later one).
    pub fn vars(&self) -> &Vars {
        self.vars
    }

    pub fn vars_mut(&mut self) -> &mut Vars {
        self.vars
    }

    /// From `request_head`: read the whole request body (up to [`BODY_BUFFER_LIMIT`], a
    /// longer one is refused with 413) and call `request_body` with it before anything goes
    /// upstream.
    pub fn read_whole_body(&mut self) {
        *self.whole_body = true;
    }

    /// What `${name}` in a header rule reads: this context's view of the request.
    pub fn scope(&self, headers: Option<&'a http::HeaderMap>) -> header_rules::Scope<'_> {
        header_rules::Scope {
            route: self.route,
            request_id: self.request_id,
            client_ip: self.client_ip,
            view: Some(self.view),
            method: self.method,
            identity: self.identity,
            headers: headers.or(self.request.map(|r| &r.headers)),
            vars: Some(self.vars),
        }
    }
}

/// Small string map for the filters of one request. Empty (and unallocated) until a
/// filter sets something.
#[derive(Debug, Default)]
pub struct Vars {
    list: Vec<(String, String)>,
}

impl Vars {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.list
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Set `name` (replacing its value).
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        match self.list.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.list.push((name, value)),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        let i = self.list.iter().position(|(k, _)| k == name)?;
        Some(self.list.swap_remove(i).1)
    }
}

/// Builds a plugin from its `config:` block. `at` is the key path of that block relative
/// to the problems' scope (prefix every key reported with it); a problem means `None`, and
/// the config is refused with every problem listed (file, key path, line).
pub type Factory =
    fn(config: &ConfigValue, at: &str, problems: &mut Problems) -> Option<Arc<dyn Plugin>>;

/// Plugin factories by name: the one place plugins are registered.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<&'static str, Factory>,
}

impl Registry {
    /// No plugins at all ([`builtin`] has the ones Portcullis ships).
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Register `f` under `name` (replacing a plugin of that name, built-in ones included).
    pub fn register(&mut self, name: &'static str, f: Factory) {
        self.factories.insert(name, f);
    }

    pub fn get(&self, name: &str) -> Option<Factory> {
        self.factories.get(name).copied()
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.factories.keys().copied()
    }
}

/// The plugins that ship with Portcullis: `header-rules`, `forward-auth`, `body-guard`.
pub fn builtin() -> Registry {
    let mut r = Registry::new();
    r.register(header_rules::NAME, header_rules::factory);
    r.register(forward_auth::NAME, forward_auth::factory);
    r.register(body_guard::NAME, body_guard::factory);
    r
}

/// A route's plugins, compiled, in the order they run.
#[derive(Clone, Default)]
pub struct Chain {
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Chain {
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    pub fn get(&self, i: usize) -> Option<&Arc<dyn Plugin>> {
        self.plugins.get(i)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Plugin>> {
        self.plugins.iter()
    }

    /// Add a plugin at the end (after the route's `plugins` list: wasm filters, say).
    pub fn push(&mut self, p: Arc<dyn Plugin>) {
        self.plugins.push(p);
    }
}

/// Compile a route's `plugins` list (reported under `plugins[i]`).
pub fn compile(list: &[PluginConfig], registry: &Registry, p: &mut Problems) -> Chain {
    let mut chain = Chain::default();
    for (i, entry) in list.iter().enumerate() {
        let base = ["plugins[", itoa::Buffer::new().format(i), "]"].concat();
        let Some(factory) = registry.get(&entry.name) else {
            let hint = crate::config::suggest(&entry.name, registry.names());
            let known = registry.names().collect::<Vec<_>>().join(", ");
            p.push(
                [base.as_str(), ".name"].concat(),
                format!(
                    "unknown plugin `{}`{hint} (registered: {known})",
                    entry.name
                ),
            );
            continue;
        };
        let at = [base.as_str(), ".config"].concat();
        if let Some(plugin) = factory(&entry.config, &at, p) {
            chain.push(plugin);
        }
    }
    chain
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
