//! The `logging` phase: metrics and one access-log line per request.

use super::ctx::Ctx;
use crate::observe::access_log::{self, Record};
use crate::observe::metrics::{self, METRICS};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;
use std::time::SystemTime;

/// Status recorded for a request whose client went away before its response was complete
/// (nginx's "client closed request"), whatever had been sent.
pub const CLIENT_CLOSED: u16 = 499;

/// Whether `e` is the client hanging up (its connection closed or reset while the gateway
/// waited for the upstream, or while it sent the response): not a failure of the upstream.
pub fn client_gone(e: &Error) -> bool {
    matches!(e.esource(), ErrorSource::Downstream)
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

/// The status the request ended with, and whether that is the client having gone away
/// (then the status is [`CLIENT_CLOSED`]).
pub fn status(session: &Session, e: Option<&Error>, ctx: &Ctx) -> (u16, bool) {
    // a WebSocket (101) ends when either side closes it: not a hang-up
    let gone = e.is_some_and(client_gone)
        && session
            .response_written()
            .is_none_or(|r| r.status.as_u16() != 101);
    let status = if gone {
        CLIENT_CLOSED
    } else {
        session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.outcome.status)
            .unwrap_or(if e.is_some() { 502 } else { 0 })
    };
    (status, gone)
}

pub fn finish(session: &Session, e: Option<&Error>, ctx: &mut Ctx) {
    // the reason of an answer the gateway made itself: the code its JSON body carries
    let reason = ctx.refusal_code();
    if let Some(r) = reason {
        metrics::rejection(r);
    }
    if ctx.in_flight {
        METRICS.in_flight.dec();
        ctx.in_flight = false;
    }
    let (status, gone) = status(session, e, ctx);
    if gone {
        // Pingora's ERROR line for it is suppressed (`suppress_error_log`)
        log::info!(
            "client closed the connection before the response was complete (499): {} {} route {} after {} response body bytes",
            session.req_header().method,
            session.req_header().uri.path(),
            ctx.route().map(|r| r.name.as_ref()).unwrap_or("-"),
            session.body_bytes_sent()
        );
    }
    let elapsed = ctx.start.elapsed();
    if ctx.trace.exported {
        export_spans(session, status, elapsed, ctx);
    }
    let req = session.req_header();
    let route = ctx.route();
    let upstream_name = ctx.attempts.upstream.as_ref().map(|u| u.name.clone());
    match route {
        Some(r) => {
            let up = r.metrics.upstream_index(upstream_name.as_deref());
            r.metrics
                .record(&req.method, status, up, elapsed.as_secs_f64());
        }
        None => metrics::UNMATCHED.record(&req.method, status, 0, elapsed.as_secs_f64()),
    }
    if !access_log::enabled() {
        return;
    }
    let snap = &ctx.snapshot;
    let cfg = &snap.config.access_log;
    let sampled = cfg.sample >= 1.0
        || (cfg.always_log_errors && status >= 400)
        || (cfg.sample > 0.0 && rand::random::<f64>() < cfg.sample);
    if !sampled {
        return;
    }
    let route = route.map(|r| r.name.clone());
    // the last phase: the record takes the ids instead of copying them
    let request_id = std::mem::take(&mut ctx.request_id);
    let trace_id = std::mem::take(&mut ctx.trace.id);
    access_log::submit(Record {
        time: SystemTime::now() - elapsed,
        request_id,
        trace_id,
        client_ip: ctx.client.ip,
        identity: ctx
            .identity
            .as_ref()
            .map(|i| [i.kind.as_str(), ":", i.subject.as_str()].concat()),
        method: req.method.clone(),
        // the canonical path when the request got that far, else what was received
        path: match &ctx.view {
            Some(v) => v.path.clone(),
            None => req.uri.path().to_string(),
        },
        query: ctx.view.as_ref().and_then(|v| {
            let q = v.query.as_deref()?;
            let key_param = snap
                .auth
                .api_keys
                .as_ref()
                .and_then(|k| k.query_param.as_deref());
            let redact = ctx.route().map_or(&[][..], |r| &r.log_redact_query[..]);
            Some(logged_query(q, key_param, redact))
        }),
        route,
        upstream: upstream_name,
        backend: ctx.attempts.backend.as_ref().map(|b| b.0.addr),
        status,
        bytes_in: session.body_bytes_read(),
        bytes_out: session.body_bytes_sent(),
        duration_us: elapsed.as_micros() as u64,
        upstream_us: ctx.attempts.upstream_us,
        retries: ctx.attempts.retries,
        cache: ctx.outcome.cache_status,
        rate_limit: ctx
            .rate_limit
            .as_ref()
            .map(|o| (o.policy.clone(), o.remaining, o.retry_after.is_some())),
        error: match (reason, e) {
            (Some(code), _) => Some(code.to_string()),
            (None, Some(_)) if gone => Some("client_closed".to_string()),
            (None, Some(e)) => Some(e.etype().as_str().to_string()),
            (None, None) => None,
        },
    });
}

/// The server span of a traced request and its upstream attempts, to the OTLP exporter.
fn export_spans(session: &Session, status: u16, elapsed: std::time::Duration, ctx: &mut Ctx) {
    use crate::observe::otlp::{self, RequestSpans, Value};
    let end = SystemTime::now();
    let mut attempts = std::mem::take(&mut ctx.trace.spans);
    let ctx: &Ctx = ctx;
    let req = session.req_header();
    let route = ctx.route();
    let mut attributes: Vec<(&'static str, Value)> = vec![
        (
            "http.request.method",
            Value::Str(req.method.as_str().to_string()),
        ),
        ("http.response.status_code", Value::Int(i64::from(status))),
    ];
    if let Some(v) = &ctx.view {
        attributes.push(("url.path", Value::Str(v.path.clone())));
        attributes.push(("server.address", Value::Str(v.authority.clone())));
    }
    if let Some(r) = route {
        attributes.push(("http.route", Value::Str(r.name.to_string())));
    }
    if let Some(ip) = ctx.client.ip {
        attributes.push(("client.address", Value::Str(ip.to_string())));
    }
    let auth = match (&ctx.identity, ctx.refusal_code()) {
        (Some(_), _) => "authenticated",
        (None, Some("unauthorized" | "invalid_token")) => "refused",
        (None, Some("insufficient_scope")) => "forbidden",
        _ if route.is_some_and(|r| r.auth.is_some()) => "not_reached",
        _ => "none",
    };
    attributes.push(("portcullis.auth", Value::Str(auth.into())));
    if let Some(id) = &ctx.identity {
        attributes.push(("enduser.id", Value::Str(id.subject.clone())));
    }
    if let Some(rl) = &ctx.rate_limit {
        let decision = if rl.retry_after.is_some() {
            "limited"
        } else {
            "allowed"
        };
        attributes.push(("portcullis.rate_limit", Value::Str(decision.into())));
        attributes.push((
            "portcullis.rate_limit.policy",
            Value::Str(rl.policy.to_string()),
        ));
    }
    if let Some(c) = ctx.outcome.cache_status {
        attributes.push(("portcullis.cache", Value::Str(c.into())));
    }
    if let Some(code) = ctx.refusal_code() {
        attributes.push(("error.type", Value::Str(code.into())));
    }
    if let Some(last) = attempts.last_mut().filter(|a| a.end.is_none()) {
        last.end = Some(end);
        if status >= 500 {
            last.error = Some(ctx.attempts.last_failure().map_or("error", |f| f.label()));
        }
    }
    let tracestate = req
        .headers
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let name = match route {
        Some(r) => [req.method.as_str(), " ", &r.name].concat(),
        None => req.method.as_str().to_string(),
    };
    otlp::submit(RequestSpans {
        trace_id: crate::observe::trace::trace_id_bytes(&ctx.trace.id),
        server_span_id: ctx.trace.span_id,
        parent_span_id: ctx.trace.parent_span_id,
        name,
        start: end - elapsed,
        end,
        error: status >= 500,
        attributes,
        tracestate,
        attempts,
    });
}

/// The query for the log: an API-key parameter removed (the key is a credential), the
/// values of `redact` (`*`: every parameter) replaced by `REDACTED`.
fn logged_query(query: &str, key_param: Option<&str>, redact: &[String]) -> String {
    let all = redact.iter().any(|r| r == "*");
    let mut out = String::with_capacity(query.len());
    for pair in query.split('&') {
        let (k, v) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        if key_param == Some(k) {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(k);
        if let Some(v) = v {
            out.push('=');
            if all || redact.iter().any(|r| r == k) {
                out.push_str("REDACTED");
            } else {
                out.push_str(v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::logged_query;

    #[test]
    fn query_redaction() {
        let r = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(logged_query("a=1&b=2", None, &[]), "a=1&b=2");
        assert_eq!(
            logged_query(
                "a=1&api_key=s3cr3t&token=t",
                Some("api_key"),
                &r(&["token"])
            ),
            "a=1&token=REDACTED"
        );
        assert_eq!(
            logged_query("a=1&flag", None, &r(&["*"])),
            "a=REDACTED&flag"
        );
    }
}
