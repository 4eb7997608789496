use super::*;
use crate::routing::path::EscapedSlashes;

/// A request view of `GET target` on `host`.
pub(crate) fn view(target: &str, host: &str) -> RequestView {
    let hosts: [&[u8]; 1] = [host.as_bytes()];
    crate::view::build(
        &crate::view::Head {
            target: target.as_bytes(),
            method: &http::Method::GET,
            version: http::Version::HTTP_11,
            hosts: &hosts,
            h2_authority: None,
            tls: false,
        },
        EscapedSlashes::Reject,
    )
    .unwrap()
}

/// A trivial plugin: stamps its configured value on the request and the response,
/// answers 418 locally when the request asks for it.
struct Stamp {
    value: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StampSettings {
    value: String,
}

fn stamp_factory(
    config: &serde_yaml::Value,
    at: &str,
    p: &mut Problems,
) -> Option<Arc<dyn Plugin>> {
    let s: StampSettings = settings::parse(config, at, p)?;
    Some(Arc::new(Stamp { value: s.value }))
}

impl Plugin for Stamp {
    fn name(&self) -> &str {
        "stamp"
    }
    fn start(&self, info: &RequestInfo<'_>) -> Box<dyn Filter> {
        Box::new(StampFilter {
            value: format!("{}@{}", self.value, info.route),
            seen: 0,
        })
    }
}

struct StampFilter {
    value: String,
    seen: usize,
}

#[async_trait]
impl Filter for StampFilter {
    async fn request_head(&mut self, cx: &mut PhaseCtx<'_>, req: &mut RequestHeader) -> Flow {
        if req.headers.contains_key("x-teapot") {
            return Flow::Respond(LocalResponse::new(418).body("short and stout"));
        }
        cx.vars_mut().set("stamp", self.value.clone());
        req.insert_header("x-stamp", self.value.as_str()).unwrap();
        Flow::Continue
    }

    fn response_body(
        &mut self,
        _cx: &mut PhaseCtx<'_>,
        chunk: &mut Option<Bytes>,
        _end: bool,
    ) -> Flow {
        self.seen += chunk.as_ref().map_or(0, Bytes::len);
        Flow::Continue
    }
}

fn registry() -> Registry {
    let mut r = builtin();
    r.register("stamp", stamp_factory);
    r
}

fn compile_yaml(yaml: &str) -> (Chain, Vec<String>) {
    let src = crate::config::parse_str("t.yaml", yaml).unwrap();
    let mut p = Problems::new(&src);
    let chain = p.within("routes[0]", |p| {
        compile(&src.config.routes[0].plugins, &registry(), p)
    });
    let errs = p
        .errors
        .iter()
        .map(|e| format!("{}@{}: {}", e.path, e.line.unwrap_or(0), e.message))
        .collect();
    (chain, errs)
}

const ROUTE: &str = "routes:\n  - match: { path: /a }\n    upstream: a\n    plugins:\n";

#[test]
fn a_registered_plugin_compiles_and_runs_its_phases() {
    let (chain, errs) = compile_yaml(&format!(
        "{ROUTE}      - name: stamp\n        config: {{ value: hello }}\n"
    ));
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(chain.len(), 1);
    let v = view("/a?x=1", "example.com");
    let mut req = RequestHeader::build("GET", b"/a?x=1", None).unwrap();
    let info = RequestInfo {
        route: "r1",
        view: &v,
        method: &http::Method::GET,
        identity: None,
        client_ip: None,
        request_id: "id-1",
        headers: &req.headers.clone(),
    };
    let mut f = chain.get(0).unwrap().start(&info);
    let (mut vars, mut whole) = (Vars::default(), false);
    let method = http::Method::GET;
    let mut cx = PhaseCtx::new(
        "r1", &v, &method, None, None, "id-1", None, &mut vars, &mut whole,
    );
    let flow = futures_lite(f.request_head(&mut cx, &mut req));
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(req.headers["x-stamp"], "hello@r1");
    assert_eq!(cx.vars().get("stamp"), Some("hello@r1"));
    // the phases it does not implement continue
    let mut resp = ResponseHeader::build(200, None).unwrap();
    assert!(matches!(
        f.response_head(&mut cx, &mut resp),
        Flow::Continue
    ));
    let mut chunk = Some(Bytes::from_static(b"abc"));
    assert!(matches!(
        f.response_body(&mut cx, &mut chunk, true),
        Flow::Continue
    ));
    // a local answer
    req.insert_header("x-teapot", "1").unwrap();
    match futures_lite(f.request_head(&mut cx, &mut req)) {
        Flow::Respond(l) => {
            assert_eq!(l.status, 418);
            assert_eq!(&l.body[..], b"short and stout");
        }
        other => panic!("{other:?}"),
    }
}

/// Drive a future that never waits (the test filters' phases do not).
fn futures_lite<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn an_unknown_plugin_is_refused_with_its_line_and_a_suggestion() {
    let (chain, errs) = compile_yaml(&format!(
        "{ROUTE}      - name: stamp\n        config: {{ value: v }}\n      - name: header-rule\n"
    ));
    assert_eq!(chain.len(), 1);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("routes[0].plugins[1].name@7: unknown plugin `header-rule`; did you mean `header-rules`?"),
        "{errs:?}"
    );
}

#[test]
fn a_plugins_own_config_errors_carry_the_key_path_and_line() {
    let (_, errs) = compile_yaml(&format!(
        "{ROUTE}      - name: stamp\n        config:\n          value: v\n          vaule: w\n      - name: stamp\n"
    ));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("routes[0].plugins[0].config.vaule@8: unknown field `vaule`"),
        "{errs:?}"
    );
    // no config at all: the plugin's required key is missing
    assert!(
        errs[1].starts_with("routes[0].plugins[1].config@9: missing field `value`"),
        "{errs:?}"
    );
}

#[test]
fn an_unknown_key_in_a_plugin_entry_is_refused_by_the_config_model() {
    let text = format!("{ROUTE}      - name: stamp\n        conifg: {{ value: v }}\n");
    let err = crate::config::parse_str("t.yaml", &text).err().unwrap();
    assert!(err.0[0].message.contains("unknown field `conifg`"), "{err}");
    assert!(err.0[0].message.contains("did you mean `config`?"), "{err}");
}

#[test]
fn a_later_registration_replaces_an_earlier_one() {
    let mut r = Registry::new();
    assert!(r.get("stamp").is_none());
    r.register("stamp", stamp_factory);
    r.register("stamp", header_rules::factory);
    assert_eq!(r.names().collect::<Vec<_>>(), ["stamp"]);
    assert!(builtin().get(header_rules::NAME).is_some());
}

#[test]
fn vars_set_replace_and_remove() {
    let mut v = Vars::default();
    assert_eq!(v.get("a"), None);
    v.set("a", "1");
    v.set("b", "2");
    v.set("a", "3");
    assert_eq!(v.get("a"), Some("3"));
    assert_eq!(v.remove("a").as_deref(), Some("3"));
    assert_eq!(v.get("a"), None);
    assert_eq!(v.get("b"), Some("2"));
}

#[test]
fn a_local_error_has_the_gateways_json_shape() {
    let l = LocalResponse::error(415, "unsupported_media_type", "no", "rid");
    assert_eq!(l.status, 415);
    assert_eq!(l.reason, Some("unsupported_media_type"));
    let v: serde_json::Value = serde_json::from_slice(&l.body).unwrap();
    assert_eq!(v["error"], "unsupported_media_type");
    assert_eq!(v["request_id"], "rid");
    assert!(l
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/json"));
}
