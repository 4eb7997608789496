//! Config file → model → compiled snapshot must never panic, whatever the bytes.
//!
//! Errors are fine (they are the expected answer to almost every input); a panic, an
//! abort or an out-of-memory is a bug.
//!
//! Two things are changed before `snapshot::build`, so that the fuzzer stays on this
//! machine and fast (neither changes what is parsed or validated):
//! - backend / discovery host names other than `localhost` are replaced by
//!   `127.0.0.1:<same port>`: `snapshot::build` resolves names with blocking lookups, and
//!   a fuzzer must not send thousands of DNS queries to the resolver;
//! - `secret_file` / `public_key_file` paths that exist but are not small regular files
//!   (`/dev/zero`, `/dev/stdin`, `/proc/...`) are replaced by a path that does not exist:
//!   reading them blocks or never ends.
//!
//! Inputs that once crashed it live in fuzz/regressions/config_parser/ and are replayed by
//! fuzz/run.sh and by tests/fuzz_regressions.rs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;
use portcullis::upstream::discovery::AddrSpec;
use std::sync::LazyLock;

/// Where an address would make `snapshot::build` do a DNS lookup, use loopback instead.
fn no_dns(addr: &mut String) {
    if let Ok(AddrSpec::Name { host, port }) = AddrSpec::parse(addr) {
        if host != "localhost" {
            *addr = format!("127.0.0.1:{port}");
        }
    }
}

fn safe_path(path: &mut String) {
    let special = ["/dev", "/proc", "/sys", "/run"]
        .iter()
        .any(|p| path.starts_with(p));
    let ok = !special
        && match std::fs::metadata(&*path) {
            Err(_) => true, // does not exist (or unreadable): fails fast
            Ok(m) => m.is_file() && m.len() <= 64 * 1024,
        };
    if !ok {
        *path = "/nonexistent/portcullis-fuzz".to_string();
    }
}

fn sanitize(cfg: &mut Config) {
    for u in cfg.upstreams.values_mut() {
        for b in &mut u.backends {
            no_dns(&mut b.addr);
        }
        if let Some(d) = &mut u.discovery {
            no_dns(&mut d.dns);
        }
    }
    for j in &mut cfg.auth.jwt {
        if let Some(p) = &mut j.secret_file {
            safe_path(p);
        }
        if let Some(p) = &mut j.public_key_file {
            safe_path(p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut src = match portcullis::config::parse_str("fuzz.yaml", text) {
        Ok(src) => src,
        Err(errs) => {
            // the error report is user-facing text: rendering it must not panic either
            let _ = errs.to_string();
            return;
        }
    };
    sanitize(&mut src.config);
    match portcullis::snapshot::build(&src, None, 1) {
        Ok(snap) => {
            // A reload with the previous snapshot takes the carry-over paths.
            let again = portcullis::snapshot::build(&src, Some(&snap), 2);
            assert!(
                again.is_ok(),
                "a config that built once must build again on reload: {:?}",
                again.err()
            );
            // Route lookups over whatever router the config compiled to.
            let headers = http::HeaderMap::new();
            for path in ["/", "/api/users/1", "/a/b/c"] {
                let segs = portcullis::routing::segments(path);
                let _ = snap
                    .router
                    .lookup("example.com", &segs, &http::Method::GET, &headers);
            }
        }
        Err(errs) => {
            for e in errs {
                let _ = e.to_string();
            }
        }
    }
});
