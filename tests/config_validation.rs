//! `portcullis -t`: every bad config gives a clear error naming the key and line, and a
//! non-zero exit; a good one exits 0.

mod common;
use common::{assert_refused, validate};

const GOOD: &str = r#"
upstreams:
  a: { backends: [{ addr: "127.0.0.1:3001" }] }
routes:
  - match: { path: /a }
    upstream: a
"#;

#[test]
fn good_config_passes() {
    let (ok, out) = validate(GOOD);
    assert!(ok, "{out}");
    assert!(out.contains("ok (1 routes, 1 upstreams)"), "{out}");
}

#[test]
fn shipped_demo_config_is_valid() {
    let out = std::process::Command::new(common::bin())
        .args([
            "-t",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/portcullis.yaml"),
        ])
        .env("PORTCULLIS_DEMO_JWT_SECRET", "test-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_upstream() {
    assert_refused(
        "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - match: { path: /a }\n    upstream: nope\n",
        &["portcullis.yaml:5", "routes[0].upstream", "unknown upstream `nope`"],
    );
}

#[test]
fn zero_total_weight() {
    assert_refused(
        "upstreams:\n  a:\n    backends: [{ addr: \"127.0.0.1:1\", weight: 0 }]\nroutes:\n  - { match: { path: /a }, upstream: a }\n",
        &["upstreams.a.backends", ":3", "total weight"],
    );
    assert_refused(
        "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - match: { path: /a }\n    split: [{ upstream: a, weight: 0 }]\n",
        &["routes[0].split", "total weight"],
    );
}

#[test]
fn duplicate_names() {
    assert_refused(
        "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\n  a: { backends: [{ addr: \"127.0.0.1:2\" }] }\n",
        &["duplicate"],
    );
    assert_refused(
        "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - { name: x, match: { path: /a }, upstream: a }\n  - { name: x, match: { path: /b }, upstream: a }\n",
        &["routes[1].name", ":5", "also used by routes[0]"],
    );
}

#[test]
fn unparsable_address() {
    assert_refused(
        "upstreams:\n  a:\n    backends:\n      - { addr: \"127.0.0.1\" }\n      - { addr: \"not an addr:80\" }\n",
        &["upstreams.a.backends[0].addr", ":4", "needs a port", "upstreams.a.backends[1].addr", ":5"],
    );
    assert_refused(
        "server:\n  listen: [\"localhost\"]\n",
        &["server.listen[0]", ":2"],
    );
}

#[test]
fn patterns_that_can_never_match() {
    assert_refused(
        "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - { match: { path: \"/a/**/b\" }, upstream: a }\n  - { match: { path: \"/a/../b\" }, upstream: a }\n  - { match: { path: /x, methods: [] }, upstream: a }\n  - { match: { path: /y }, upstream: a }\n  - { match: { path: /y }, upstream: a }\n",
        &[
            "routes[0].match.path",
            "`**` must be the last segment",
            "routes[1].match.path",
            "never match",
            "routes[2].match.methods",
            "routes[4].match",
            "same host, path",
        ],
    );
    assert_refused(
        "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - { match: { path: \"/api/**\" }, upstream: a, strip_prefix: /other }\n",
        &["routes[0].strip_prefix", "never apply"],
    );
    assert_refused(
        "upstreams:\n  a: { backends: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - { match: { path: \"/u/:id\" }, upstream: a, rewrite: \"/v/:name\" }\n",
        &["routes[0].rewrite", "does not capture"],
    );
}

#[test]
fn unknown_keys_and_bad_units() {
    assert_refused(
        "upstreams:\n  a:\n    backends: [{ addr: \"127.0.0.1:1\" }]\n    colour: blue\n",
        &["upstreams.a", "unknown field `colour`", ":4"],
    );
    assert_refused(
        "upstreams:\n  a:\n    backends: [{ addr: \"127.0.0.1:1\" }]\n    timeouts: { read: 10 }\n",
        &["needs a unit", ":4"],
    );
    assert_refused(
        "server:\n  limits: { max_body_bytes: 10XB }\n",
        &["unknown unit", ":2"],
    );
}

#[test]
fn every_error_is_reported() {
    let (ok, out) = validate(
        "upstreams:\n  a: { backends: [{ addr: \"x\" }] }\nroutes:\n  - { match: { path: /a }, upstream: b }\n  - { match: { path: nope }, upstream: a }\n",
    );
    assert!(!ok);
    assert!(out.contains("upstreams.a.backends[0].addr"), "{out}");
    assert!(out.contains("routes[0].upstream"), "{out}");
    assert!(out.contains("routes[1].match.path"), "{out}");
    assert!(out.contains("3 error(s)"), "{out}");
}

#[test]
fn missing_file() {
    let out = std::process::Command::new(common::bin())
        .args(["-t", "-c", "/nonexistent/portcullis.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}
