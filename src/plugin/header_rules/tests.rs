use super::*;
use crate::plugin::tests::view;

fn problems_of(f: impl FnOnce(&mut Problems)) -> Vec<String> {
    let src = crate::config::parse_str("t.yaml", "{}").unwrap();
    let mut p = Problems::new(&src);
    f(&mut p);
    p.errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect()
}

fn jwt_identity(claims: serde_json::Value) -> Identity {
    Identity {
        kind: IdKind::Jwt,
        subject: claims["sub"].as_str().unwrap_or_default().to_string(),
        claims: claims.as_object().cloned().unwrap_or_default(),
        ..Identity::default()
    }
}

fn scope<'a>(
    v: &'a RequestView,
    identity: Option<&'a Identity>,
    headers: &'a HeaderMap,
    vars: &'a Vars,
) -> Scope<'a> {
    Scope {
        route: "orders",
        request_id: "rid-1",
        client_ip: Some("203.0.113.9".parse().unwrap()),
        view: Some(v),
        method: &http::Method::POST,
        identity,
        headers: Some(headers),
        vars: Some(vars),
    }
}

fn render(t: &str, s: &Scope<'_>) -> Option<String> {
    Template::parse(t)
        .unwrap()
        .render(s)
        .map(|v| v.to_str().unwrap().to_string())
}

#[test]
fn every_variable_interpolates() {
    let v = view("/api/x?q=1", "shop.example.com");
    let id = jwt_identity(serde_json::json!({
        "sub": "u-42", "org": "acme", "n": 7, "admin": true, "roles": ["a", "b"]
    }));
    let mut h = HeaderMap::new();
    h.insert("x-tenant", HeaderValue::from_static("t1"));
    let mut vars = Vars::default();
    vars.set("plan", "gold");
    let s = scope(&v, Some(&id), &h, &vars);
    let t = "${claim.sub}|${claim.org}|${claim.n}|${claim.admin}|${claim.roles}|${identity.subject}|${route}|${request_id}|${client_ip}|${host}|${path}|${method}|${header.x-tenant}|${var.plan}";
    assert_eq!(
        render(t, &s).unwrap(),
        "u-42|acme|7|true|a,b|u-42|orders|rid-1|203.0.113.9|shop.example.com|/api/x|POST|t1|gold"
    );
    assert_eq!(
        render("Bearer $${literal}", &s).unwrap(),
        "Bearer ${literal}"
    );
    // an API key's id, only for an API key
    assert_eq!(render("${identity.key}", &s), None);
    let key = Identity {
        kind: IdKind::ApiKey,
        subject: "mobile-app".into(),
        ..Identity::default()
    };
    let s = scope(&v, Some(&key), &h, &vars);
    assert_eq!(render("k=${identity.key}", &s).unwrap(), "k=mobile-app");
    assert_eq!(render("${claim.sub}", &s), None);
}

#[test]
fn a_missing_value_or_a_control_character_gives_no_value() {
    let v = view("/a", "h");
    let h = HeaderMap::new();
    let vars = Vars::default();
    let s = scope(&v, None, &h, &vars);
    assert_eq!(render("x-${claim.sub}", &s), None);
    assert_eq!(render("${header.x-absent}", &s), None);
    let id = jwt_identity(serde_json::json!({
        "sub": "evil\r\nx-admin: yes", "tab": "a\tb", "obj": {"a": 1}, "empty": ""
    }));
    let s = scope(&v, Some(&id), &h, &vars);
    assert_eq!(render("${claim.sub}", &s), None);
    assert_eq!(render("${claim.tab}", &s), None);
    assert_eq!(render("${claim.obj}", &s), None);
    assert_eq!(render("${claim.empty}", &s), None);
}

#[test]
fn templates_are_checked_when_loaded() {
    assert!(Template::parse("static").unwrap().is_static());
    assert!(!Template::parse("a ${route}").unwrap().is_static());
    let e = Template::parse("${nope}").unwrap_err();
    assert!(e.contains("unknown variable `${nope}`"), "{e}");
    assert!(Template::parse("${route").unwrap_err().contains("closing"));
    assert!(Template::parse("${claim.}").is_err());
    assert!(Template::parse("${header.bad name}").is_err());
    assert!(Template::parse("a\nb ${route}").is_err());
}

#[test]
fn bad_names_and_values_are_reported_by_key() {
    let mut ops = HeaderOps::default();
    ops.set.insert("x-ok".into(), "1".into());
    ops.set.insert("bad name".into(), "1".into());
    ops.add.insert("x-add".into(), "a\nb".into());
    ops.add.insert("x-var".into(), "${whatever}".into());
    ops.remove.push("x-gone".into());
    ops.remove.push("".into());
    let mut c = HeaderRules::default();
    let errs = problems_of(|p| c = compile(&ops, "routes[0].request_headers", p));
    assert_eq!(c.set.len(), 1);
    assert!(c.add.is_empty());
    assert_eq!(c.remove.len(), 1);
    let paths: Vec<&str> = errs.iter().map(|e| e.split(": ").next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].request_headers.set.bad name",
            "routes[0].request_headers.add.x-add",
            "routes[0].request_headers.add.x-var",
            "routes[0].request_headers.remove[1]"
        ]
    );
}

#[test]
fn framing_connection_and_host_are_not_for_rules() {
    let mut ops = HeaderOps::default();
    ops.set.insert("Host".into(), "other.test".into());
    ops.set.insert("x-fine".into(), "1".into());
    ops.add.insert("transfer-encoding".into(), "chunked".into());
    ops.remove.push("content-length".into());
    ops.remove.push("Connection".into());
    ops.remove.push("x-gone".into());
    let mut c = HeaderRules::default();
    let errs = problems_of(|p| c = compile(&ops, "routes[0].request_headers", p));
    assert_eq!((c.set.len(), c.add.len(), c.remove.len()), (1, 0, 1));
    assert_eq!(errs.len(), 4, "{errs:?}");
    for (e, at) in errs.iter().zip([
        "routes[0].request_headers.set.Host",
        "routes[0].request_headers.add.transfer-encoding",
        "routes[0].request_headers.remove[0]",
        "routes[0].request_headers.remove[1]",
    ]) {
        assert!(e.starts_with(&format!("{at}: ")), "{e}");
        assert!(e.contains("set by the gateway"), "{e}");
    }
}

#[test]
fn remove_then_set_then_add_and_a_set_without_value_removes() {
    let mut ops = HeaderOps::default();
    ops.remove.push("x-a".into());
    ops.set.insert("x-a".into(), "set".into());
    ops.add.insert("x-a".into(), "added".into());
    ops.set.insert("x-user".into(), "${claim.sub}".into());
    ops.add.insert("x-extra".into(), "${claim.sub}".into());
    let mut c = HeaderRules::default();
    assert!(problems_of(|p| c = compile(&ops, "r", p)).is_empty());
    let mut req = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header("x-a", "client").unwrap();
    req.insert_header("x-user", "spoofed").unwrap();
    let (v, h, vars) = (view("/", "h"), HeaderMap::new(), Vars::default());
    c.apply(&mut req, &scope(&v, None, &h, &vars)).unwrap();
    let got: Vec<&[u8]> = req
        .headers
        .get_all("x-a")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    assert_eq!(got, [b"set".as_slice(), b"added".as_slice()]);
    // no JWT: the client's x-user is not passed off as the gateway's
    assert!(req.headers.get("x-user").is_none());
    assert!(req.headers.get("x-extra").is_none());
}

#[test]
fn the_plugin_needs_rules_and_knows_its_keys() {
    let text = "routes:\n  - match: { path: /a }\n    upstream: a\n    plugins:\n      - name: header-rules\n        config:\n          request: { set: { x-a: \"${nope}\" } }\n      - name: header-rules\n      - name: header-rules\n        config: { requests: {} }\n";
    let src = crate::config::parse_str("t.yaml", text).unwrap();
    let mut p = Problems::new(&src);
    let chain = p.within("routes[0]", |p| {
        crate::plugin::compile(&src.config.routes[0].plugins, &crate::plugin::builtin(), p)
    });
    assert!(chain.is_empty());
    let errs: Vec<String> = p
        .errors
        .iter()
        .map(|e| format!("{}@{}: {}", e.path, e.line.unwrap_or(0), e.message))
        .collect();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].starts_with("routes[0].plugins[0].config.request.set.x-a@7: unknown variable"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("routes[0].plugins[1].config@8: no rules"),
        "{errs:?}"
    );
    assert!(
        errs[2].starts_with("routes[0].plugins[2].config.requests@10: unknown field `requests`"),
        "{errs:?}"
    );
}
