//! A gateway with a plugin of its own: the complete example of README's "Extending
//! Portcullis", built so that tests/plugins_api.rs runs it.
//!
//! `tenant` checks that a request names a known tenant (header `x-tenant` by default),
//! forwards the tenant's plan as `x-tenant-plan`, shares it with later plugins as
//! `${var.plan}`, and names the tenant on the response. With `PORTCULLIS_EXAMPLE_FAULTS=1`
//! the binary also registers `fault`, which the tests use to make a chosen phase answer or
//! fail (`x-fault: <phase>:<respond|error>`).

use portcullis::plugin::{self, async_trait, http, ConfigValue, Filter, Flow, LocalResponse};
use portcullis::plugin::{PhaseCtx, Plugin, Problems, RequestHeader, RequestInfo, ResponseHeader};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

/// `config:` of the `tenant` plugin, checked when the config is loaded.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantSettings {
    #[serde(default = "default_header")]
    header: String,
    /// Tenant → plan.
    plans: BTreeMap<String, String>,
}

fn default_header() -> String {
    "x-tenant".into()
}

/// Compiled once per route entry (and per reload); shared by its requests.
struct Tenant {
    header: http::HeaderName,
    plans: Arc<BTreeMap<String, String>>,
}

/// The factory: settings from `config:`, problems reported with their key path and line.
fn tenant(config: &ConfigValue, at: &str, p: &mut Problems) -> Option<Arc<dyn Plugin>> {
    let s: TenantSettings = plugin::settings::parse(config, at, p)?;
    let Ok(header) = http::HeaderName::from_bytes(s.header.as_bytes()) else {
        p.push(format!("{at}.header"), "not a valid header name");
        return None;
    };
    if s.plans.is_empty() {
        p.push(format!("{at}.plans"), "name at least one tenant");
        return None;
    }
    Some(Arc::new(Tenant {
        header,
        plans: Arc::new(s.plans),
    }))
}

impl Plugin for Tenant {
    fn name(&self) -> &str {
        "tenant"
    }

    fn start(&self, _info: &RequestInfo<'_>) -> Box<dyn Filter> {
        Box::new(TenantFilter {
            header: self.header.clone(),
            plans: self.plans.clone(),
            tenant: None,
        })
    }
}

/// One request's state.
struct TenantFilter {
    header: http::HeaderName,
    plans: Arc<BTreeMap<String, String>>,
    tenant: Option<String>,
}

#[async_trait]
impl Filter for TenantFilter {
    async fn request_head(&mut self, cx: &mut PhaseCtx<'_>, req: &mut RequestHeader) -> Flow {
        let name = req.headers.get(&self.header).and_then(|v| v.to_str().ok());
        let Some((tenant, plan)) = name.and_then(|n| self.plans.get_key_value(n)) else {
            // the gateway's own JSON error shape, counted under its code
            return Flow::Respond(LocalResponse::error(
                403,
                "unknown_tenant",
                "this request names no known tenant",
                cx.request_id,
            ));
        };
        if let Err(e) = req.insert_header("x-tenant-plan", plan.as_str()) {
            return Flow::Error(e.to_string());
        }
        cx.vars_mut().set("plan", plan.as_str());
        self.tenant = Some(tenant.clone());
        Flow::Continue
    }

    fn response_head(&mut self, _cx: &mut PhaseCtx<'_>, resp: &mut ResponseHeader) -> Flow {
        match &self.tenant {
            Some(t) => match resp.insert_header("x-tenant", t.as_str()) {
                Ok(()) => Flow::Continue,
                Err(e) => Flow::Error(e.to_string()),
            },
            None => Flow::Continue,
        }
    }

    fn log(&mut self, cx: &PhaseCtx<'_>, status: u16) {
        log::info!(
            "tenant {} on route {}: {status}",
            self.tenant.as_deref().unwrap_or("-"),
            cx.route
        );
    }
}

fn main() -> ExitCode {
    let mut registry = plugin::builtin();
    registry.register("tenant", tenant);
    if std::env::var_os("PORTCULLIS_EXAMPLE_FAULTS").is_some() {
        registry.register("fault", fault::factory);
    }
    portcullis::run_with(registry)
}

/// A fault injector for the tests: the phase named by the request's `x-fault` header
/// (`request_head`, `request_body`, `whole_body`, `upstream_request`, `response_head`,
/// `response_body`) answers (`respond`: 418 with a text body) or fails (`error`).
/// `x-fault-upper: 1` reads the whole body and sends it upstream in upper case.
mod fault {
    use super::*;
    use portcullis::plugin::Bytes;

    pub fn factory(config: &ConfigValue, at: &str, p: &mut Problems) -> Option<Arc<dyn Plugin>> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Nothing {}
        let _: Nothing = plugin::settings::parse(config, at, p)?;
        Some(Arc::new(Fault))
    }

    struct Fault;

    impl Plugin for Fault {
        fn name(&self) -> &str {
            "fault"
        }

        fn start(&self, info: &RequestInfo<'_>) -> Box<dyn Filter> {
            let text = |n: &str| {
                info.headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let fault = text("x-fault").and_then(|f| {
                let (phase, action) = f.split_once(':')?;
                Some((phase.to_string(), action == "error"))
            });
            Box::new(FaultFilter {
                fault,
                upper: text("x-fault-upper").is_some(),
            })
        }
    }

    struct FaultFilter {
        fault: Option<(String, bool)>,
        upper: bool,
    }

    impl FaultFilter {
        fn at(&self, phase: &str) -> Flow {
            match &self.fault {
                Some((p, true)) if p == phase => Flow::Error(format!("injected at {phase}")),
                Some((p, false)) if p == phase => Flow::Respond(
                    LocalResponse::new(418)
                        .header("content-type", "text/plain")
                        .header("x-fault", phase)
                        .body(format!("answered at {phase}")),
                ),
                _ => Flow::Continue,
            }
        }
    }

    #[async_trait]
    impl Filter for FaultFilter {
        async fn request_head(&mut self, cx: &mut PhaseCtx<'_>, _req: &mut RequestHeader) -> Flow {
            let whole = matches!(&self.fault, Some((p, _)) if p == "whole_body");
            if whole || self.upper {
                cx.read_whole_body();
            }
            self.at("request_head")
        }

        async fn request_body(
            &mut self,
            _cx: &mut PhaseCtx<'_>,
            chunk: &mut Option<Bytes>,
            end: bool,
        ) -> Flow {
            if self.upper {
                if let Some(b) = chunk.as_ref() {
                    *chunk = Some(Bytes::from(b.to_ascii_uppercase()));
                }
            }
            if matches!(&self.fault, Some((p, _)) if p == "whole_body") {
                return self.at("whole_body");
            }
            if end || chunk.is_some() {
                return self.at("request_body");
            }
            Flow::Continue
        }

        fn upstream_request(&mut self, _cx: &mut PhaseCtx<'_>, _req: &mut RequestHeader) -> Flow {
            self.at("upstream_request")
        }

        fn response_head(&mut self, _cx: &mut PhaseCtx<'_>, _resp: &mut ResponseHeader) -> Flow {
            self.at("response_head")
        }

        fn response_body(
            &mut self,
            _cx: &mut PhaseCtx<'_>,
            chunk: &mut Option<Bytes>,
            _end: bool,
        ) -> Flow {
            if chunk.as_ref().is_some_and(|c| !c.is_empty()) {
                return self.at("response_body");
            }
            Flow::Continue
        }
    }
}
