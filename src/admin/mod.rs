//! The admin listener: `/healthz`, `/readyz`, and the token-protected `/admin/` API.
//! A separate Pingora service, loopback by default, apart from client traffic.

mod redact;
mod ui;

use crate::runtime::Runtime;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;

pub struct AdminApp {
    pub runtime: Arc<Runtime>,
}

fn reply(status: StatusCode, body: Value) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec_pretty(&body).unwrap_or_default();
    let mut r = Response::new(bytes);
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Vec<u8>> {
    reply(status, json!({ "error": code, "message": message.into() }))
}

/// Reload, logging the outcome. Returns the outcome for the caller to report.
pub async fn reload_and_log(
    rt: &Runtime,
) -> Result<crate::runtime::ReloadOutcome, Vec<crate::config::ConfigError>> {
    let r = rt.reload().await;
    match &r {
        Ok(o) => log::info!(
            "config reloaded: generation {}, {} routes, {:.1} ms",
            o.generation,
            o.routes,
            o.millis
        ),
        Err(errs) => {
            for e in errs {
                log::error!(
                    "config reload rejected, keeping generation {}: {e}",
                    rt.generation()
                );
            }
        }
    }
    r
}

/// Constant-time check of `Authorization: Bearer <token>` against the configured digest.
/// Totals for the status page's charts (it takes the differences between polls): requests,
/// 5xx answers, and the request-duration histogram summed over routes (`[le, count]`,
/// cumulative, as Prometheus keeps it).
fn traffic() -> Value {
    let mut requests = 0.0;
    let mut errors = 0.0;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for mf in crate::observe::metrics::METRICS.registry.gather() {
        match mf.name() {
            "portcullis_requests_total" => {
                for m in mf.get_metric() {
                    let v = m.get_counter().value();
                    requests += v;
                    let server_error = m
                        .get_label()
                        .iter()
                        .any(|l| l.name() == "status" && l.value().starts_with('5'));
                    if server_error {
                        errors += v;
                    }
                }
            }
            "portcullis_request_duration_seconds" => {
                for m in mf.get_metric() {
                    for (i, b) in m.get_histogram().get_bucket().iter().enumerate() {
                        match buckets.get_mut(i) {
                            Some(slot) => slot.1 += b.cumulative_count() as f64,
                            None => buckets.push((b.upper_bound(), b.cumulative_count() as f64)),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let buckets: Vec<Value> = buckets.into_iter().map(|(le, c)| json!([le, c])).collect();
    json!({ "requests": requests, "errors_5xx": errors, "latency_buckets": buckets })
}

fn authorized(session: &ServerSession, digest_hex: &str) -> bool {
    let Some(h) = session.get_header(http::header::AUTHORIZATION) else {
        return false;
    };
    let Ok(s) = h.to_str() else { return false };
    let Some(token) = s
        .strip_prefix("Bearer ")
        .or_else(|| s.strip_prefix("bearer "))
    else {
        return false;
    };
    let Ok(want) = hex::decode(digest_hex) else {
        return false;
    };
    let got = Sha256::digest(token.trim().as_bytes());
    subtle::ConstantTimeEq::ct_eq(&got[..], want.as_slice()).into()
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(b)) => {
                out.extend_from_slice(&b);
                if out.len() > 1 << 20 {
                    return Err("request body over 1 MiB".into());
                }
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl AdminApp {
    fn status(&self) -> Value {
        let snap = self.runtime.snapshot();
        let upstreams: serde_json::Map<String, Value> = snap
            .upstreams
            .iter()
            .map(|(name, u)| {
                let backends: Vec<Value> = u
                    .backend_status()
                    .into_iter()
                    .map(|b| {
                        let (addr, weight, healthy, st) = (b.addr, b.weight, b.healthy, b.state);
                        json!({
                            "addr": addr.to_string(),
                            "weight": weight,
                            "healthy": healthy,
                            "in_flight": st.as_ref().map(|s| s.in_flight.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0),
                            "requests": st.as_ref().map(|s| s.requests.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0),
                            "circuit": match st.as_ref().map(|s| s.breaker.state()) {
                                Some(crate::upstream::breaker::OPEN) => "open",
                                Some(crate::upstream::breaker::HALF_OPEN) => "half_open",
                                _ => "closed",
                            },
                        })
                    })
                    .collect();
                (name.clone(), json!({ "lb": format!("{:?}", u.config.lb), "backends": backends }))
            })
            .collect();
        let routes: Vec<Value> = snap.routes.iter().map(|r| json!(r.name.as_ref())).collect();
        // what the TLS listener serves now (the last good set, even after a failed reload)
        let tls = self.runtime.certs.current().map(|set| {
            let certs: Vec<Value> = set
                .certs
                .iter()
                .map(|c| json!({ "names": c.names, "not_after": c.not_after }))
                .collect();
            let min = match set.min_version {
                crate::config::TlsVersion::Tls12 => "1.2",
                crate::config::TlsVersion::Tls13 => "1.3",
            };
            json!({ "min_version": min, "certificates": certs })
        });
        let last_reload = self.runtime.last_reload.lock().clone().map(|r| {
            json!({ "at_unix": r.at_unix, "ok": r.ok, "generation": r.generation,
                    "errors": r.errors, "warnings": r.warnings })
        });
        json!({
            "generation": snap.generation,
            "traffic": traffic(),
            "last_reload": last_reload,
            "uptime_seconds": self.runtime.started.elapsed().as_secs(),
            "routes": routes,
            "upstreams": upstreams,
            "cache": crate::cache::STATS.to_json(),
            "tls": tls,
        })
    }

    /// `/metrics` is open unless `server.admin.metrics_token_sha256` is set; then it takes
    /// that token or the admin token.
    fn metrics_allowed(&self, session: &ServerSession) -> bool {
        let snap = self.runtime.snapshot();
        let Some(admin) = snap.config.server.admin.as_ref() else {
            return true;
        };
        let Some(metrics_digest) = admin.metrics_token_sha256.as_deref() else {
            return true;
        };
        authorized(session, metrics_digest)
            || admin
                .token_sha256
                .as_deref()
                .is_some_and(|d| authorized(session, d))
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        use crate::observe::metrics::METRICS;
        let snap = self.runtime.snapshot();
        // state gauges are computed now, for the upstreams of the current config
        METRICS.circuit_state.reset();
        METRICS.backend_healthy.reset();
        for (name, u) in &snap.upstreams {
            for b in u.backend_status() {
                let (healthy, st) = (b.healthy, b.state);
                let a = b.addr.to_string();
                METRICS
                    .backend_healthy
                    .with_label_values(&[name, &a])
                    .set(healthy as i64);
                let state = st.map(|s| s.breaker.state()).unwrap_or(0);
                METRICS
                    .circuit_state
                    .with_label_values(&[name, &a])
                    .set(state as i64);
            }
        }
        METRICS
            .cache_bytes
            .set(crate::cache::STATS.bytes_stored() as i64);
        METRICS
            .cache_evictions
            .set(crate::cache::STATS.evictions() as i64);
        let mut r = Response::new(crate::observe::metrics::render());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    }

    fn readyz(&self) -> Response<Vec<u8>> {
        use crate::config::{ReadinessKeyword, ReadinessUpstreams};
        let snap = self.runtime.snapshot();
        let rc = snap
            .config
            .server
            .admin
            .as_ref()
            .map(|a| a.readiness.clone())
            .unwrap_or_default();
        let gates = |name: &str| match &rc.upstreams {
            ReadinessUpstreams::Keyword(ReadinessKeyword::All) => true,
            ReadinessUpstreams::Keyword(ReadinessKeyword::None) => false,
            ReadinessUpstreams::List(l) => l.iter().any(|n| n == name),
        };
        let mut ready = true;
        let mut why: Vec<String> = Vec::new();
        let upstreams: serde_json::Map<String, Value> = snap
            .upstreams
            .iter()
            .map(|(name, u)| {
                let healthy = u.healthy_count();
                let gating = gates(name);
                if healthy == 0 && gating {
                    ready = false;
                    why.push(format!("upstream `{name}` has no healthy backend"));
                }
                (
                    name.clone(),
                    json!({ "healthy_backends": healthy, "ready": healthy > 0, "gates_readiness": gating }),
                )
            })
            .collect();
        let issuers: serde_json::Map<String, Value> = snap
            .auth
            .issuers
            .iter()
            .filter_map(|i| match &i.keys {
                crate::auth::jwt::KeySource::Jwks(src) => {
                    let loaded = src.loaded();
                    if !loaded && rc.jwks {
                        ready = false;
                        why.push(format!(
                            "issuer `{}`: its JWKS ({}) has not been loaded",
                            i.name, src.url
                        ));
                    }
                    Some((
                        i.name.to_string(),
                        json!({ "jwks_loaded": loaded, "keys": src.key_count(), "gates_readiness": rc.jwks }),
                    ))
                }
                crate::auth::jwt::KeySource::Static(_) => None,
            })
            .collect();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        reply(
            status,
            json!({ "ready": ready, "generation": snap.generation, "not_ready_because": why,
                    "upstreams": upstreams, "issuers": issuers }),
        )
    }

    async fn backends(
        &self,
        session: &mut ServerSession,
        method: &Method,
        rest: &str,
    ) -> Response<Vec<u8>> {
        // rest: "{name}/backends", "{name}/backends/{addr}", "{name}/backends/{addr}/heartbeat"
        let parts: Vec<&str> = rest.split('/').collect();
        let snap = self.runtime.snapshot();
        let Some(up) = parts.first().and_then(|n| snap.upstreams.get(*n)).cloned() else {
            return error(StatusCode::NOT_FOUND, "not_found", "unknown upstream");
        };
        let parse_addr = |s: &str| -> Result<SocketAddr, Box<Response<Vec<u8>>>> {
            s.parse().map_err(|_| {
                Box::new(error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("`{s}` is not an ip:port address"),
                ))
            })
        };
        match (method, parts.as_slice()) {
            (&Method::POST, [_, "backends"]) => {
                let body = match read_body(session).await {
                    Ok(b) => b,
                    Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e),
                };
                let v: Value = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            format!("invalid JSON: {e}"),
                        )
                    }
                };
                let Some(addr) = v.get("addr").and_then(|a| a.as_str()) else {
                    return error(StatusCode::BAD_REQUEST, "bad_request", "`addr` is required");
                };
                let addr = match parse_addr(addr) {
                    Ok(a) => a,
                    Err(r) => return *r,
                };
                let weight = match v.get("weight") {
                    None => 1,
                    Some(w) => match w.as_u64() {
                        Some(w) if (1..=65535).contains(&w) => w as u32,
                        _ => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "bad_request",
                                "`weight` must be 1..65535",
                            )
                        }
                    },
                };
                let ttl = match v.get("ttl") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => match crate::config::units::parse_duration(s) {
                        Ok(d) if !d.is_zero() => Some(d),
                        _ => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "bad_request",
                                "`ttl` must be a duration such as `30s`",
                            )
                        }
                    },
                    Some(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            "`ttl` must be a string such as `30s`",
                        )
                    }
                };
                self.runtime.fleet.register(&up, addr, weight, ttl);
                up.refresh().await;
                log::info!(
                    "upstream `{}`: registered {addr} (weight {weight})",
                    up.name
                );
                reply(
                    StatusCode::CREATED,
                    json!({ "upstream": up.name.as_ref(), "addr": addr.to_string(), "weight": weight }),
                )
            }
            (&Method::PUT, [_, "backends", addr, "heartbeat"]) => {
                let addr = match parse_addr(addr) {
                    Ok(a) => a,
                    Err(r) => return *r,
                };
                if self.runtime.fleet.heartbeat(&up, addr) {
                    reply(StatusCode::OK, json!({ "renewed": addr.to_string() }))
                } else {
                    error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "that backend is not registered",
                    )
                }
            }
            (&Method::DELETE, [_, "backends", addr]) => {
                let addr = match parse_addr(addr) {
                    Ok(a) => a,
                    Err(r) => return *r,
                };
                if self.runtime.fleet.deregister(&up, addr) {
                    up.refresh().await;
                    log::info!("upstream `{}`: removed {addr} from rotation", up.name);
                    reply(StatusCode::OK, json!({ "removed": addr.to_string() }))
                } else {
                    error(StatusCode::NOT_FOUND, "not_found", "no such backend")
                }
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }

    /// `{"key": "/api/x?a=1"}`, `{"prefix": "/api/"}` or `{"all": true}`
    async fn purge_cache(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e),
        };
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("invalid JSON: {e}"),
                )
            }
        };
        let target = match crate::cache::purge::Target::from_json(&v) {
            Ok(t) => t,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e),
        };
        match crate::cache::purge::purge(&target) {
            Ok(n) => {
                log::info!("cache purge {target:?}: {n} entries removed");
                self.runtime.fleet.purged(&target);
                reply(StatusCode::OK, json!({ "purged": n }))
            }
            Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", e),
        }
    }

    /// `{"jti": "...", "until": <unix seconds>}`
    async fn revoke(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e),
        };
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("invalid JSON: {e}"),
                )
            }
        };
        let Some(jti) = v
            .get("jti")
            .and_then(|j| j.as_str())
            .filter(|j| !j.is_empty() && j.len() <= 256)
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "`jti` (a non-empty string) is required",
            );
        };
        let Some(until) = v.get("until").and_then(|u| u.as_u64()) else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "`until` (unix seconds) is required",
            );
        };
        if until <= crate::auth::revocation::unix_now() {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "`until` is in the past",
            );
        }
        crate::auth::revocation::REVOCATIONS.add(jti.to_string(), until);
        if let Some(cluster) = self.runtime.snapshot().limits.cluster.clone() {
            if let Err(e) = cluster.publish_revocation(jti, until).await {
                log::warn!("revocation of {jti} is local only: Redis: {e}");
            }
        }
        log::info!("revoked jti {jti} until {until}");
        reply(
            StatusCode::CREATED,
            json!({ "revoked": jti, "until": until }),
        )
    }

    async fn admin(
        &self,
        session: &mut ServerSession,
        method: &Method,
        path: &str,
    ) -> Response<Vec<u8>> {
        let snap = self.runtime.snapshot();
        let Some(digest) = snap
            .config
            .server
            .admin
            .as_ref()
            .and_then(|a| a.token_sha256.clone())
        else {
            return error(
                StatusCode::NOT_FOUND,
                "admin_disabled",
                "the admin API is disabled: set server.admin.token_sha256",
            );
        };
        drop(snap);
        if !authorized(session, &digest) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin bearer token is required",
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
            );
            return r;
        }
        match (method, path) {
            (&Method::GET, "/admin/status") => reply(StatusCode::OK, self.status()),
            (&Method::GET, "/admin/config") => reply(
                StatusCode::OK,
                redact::running_config(&self.runtime.snapshot().config_text),
            ),
            (&Method::POST, "/admin/reload") => match reload_and_log(&self.runtime).await {
                Ok(o) => reply(
                    StatusCode::OK,
                    json!({ "generation": o.generation, "routes": o.routes, "millis": o.millis,
                            "warnings": o.warnings }),
                ),
                Err(errs) => {
                    let list: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                    reply(
                        StatusCode::BAD_REQUEST,
                        json!({ "error": "invalid_config", "message": "the config was rejected; the running one stays", "errors": list }),
                    )
                }
            },
            (&Method::POST, "/admin/revocations") => self.revoke(session).await,
            (&Method::POST, "/admin/cache/purge") => self.purge_cache(session).await,
            (&Method::GET, "/admin/cluster") => match self.runtime.fleet.status(&*self.runtime) {
                Some(v) => reply(StatusCode::OK, v),
                None => error(
                    StatusCode::NOT_FOUND,
                    "cluster_disabled",
                    "this instance is standalone: no `cluster` block in its config",
                ),
            },
            (&Method::GET, "/admin/cache/stats") => {
                reply(StatusCode::OK, crate::cache::STATS.to_json())
            }
            (_, p) if p.starts_with("/admin/upstreams/") => {
                let rest = p.trim_start_matches("/admin/upstreams/").to_string();
                self.backends(session, method, &rest).await
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => {
                // a dead proxy service fails liveness (the process also exits: lifecycle.rs)
                let dead = crate::lifecycle::dead_services();
                let (status, word) = if dead.is_empty() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "failed")
                };
                reply(
                    status,
                    json!({ "status": word, "pid": std::process::id(), "generation": self.runtime.generation(), "dead_services": dead }),
                )
            }
            (&Method::GET, "/readyz") => self.readyz(),
            (&Method::GET, "/ui") => ui::page(),
            (&Method::GET, "/metrics") => {
                if self.metrics_allowed(session) {
                    self.metrics()
                } else {
                    let mut r = error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "/metrics needs the metrics (or admin) bearer token",
                    );
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer realm=\"portcullis-metrics\""),
                    );
                    r
                }
            }
            (_, p) if p.starts_with("/admin/") => self.admin(session, &method, p).await,
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    }
}
