//! Unit tests of the rate-limit policies: key kinds, what the config refuses, which
//! policy's numbers a request sees, and counters kept across reloads. Windows are an hour
//! long so that no test crosses a window boundary.

use super::*;
use crate::config::{parse_str, Problems};
use http::HeaderMap;
use std::net::{Ipv4Addr, Ipv6Addr};

fn cfg(yaml: &str) -> RateLimitsConfig {
    serde_yaml::from_str(yaml).unwrap()
}

/// Build and return the limits with every problem as `path: message`.
fn build_with(c: &RateLimitsConfig, prev: Option<&RateLimits>) -> (RateLimits, Vec<String>) {
    let src = parse_str("t.yaml", "{}").unwrap();
    let mut p = Problems::new(&src);
    let rl = RateLimits::build(c, None, prev, &mut p);
    let problems = p
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    (rl, problems)
}

fn build(yaml: &str) -> RateLimits {
    let (rl, problems) = build_with(&cfg(yaml), None);
    assert!(problems.is_empty(), "{problems:?}");
    rl
}

fn idx(rl: &RateLimits, name: &str) -> usize {
    rl.by_name[name]
}

fn ident(kind: IdKind, subject: &str, tier: Option<&str>) -> Identity {
    Identity {
        kind,
        subject: subject.to_string(),
        tier: tier.map(Arc::from),
        ..Default::default()
    }
}

fn input<'a>(
    identity: Option<&'a Identity>,
    ip: Option<IpAddr>,
    headers: &'a HeaderMap,
) -> KeyInput<'a> {
    KeyInput {
        identity,
        client_ip: ip,
        route: "r1",
        headers,
    }
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

#[test]
fn key_kinds_parse() {
    assert_eq!(KeyKind::parse("client"), Ok(KeyKind::Client));
    assert_eq!(KeyKind::parse("ip"), Ok(KeyKind::Ip));
    assert_eq!(KeyKind::parse("route"), Ok(KeyKind::Route));
    assert_eq!(
        KeyKind::parse("header:x-tenant"),
        Ok(KeyKind::Header(HeaderName::from_static("x-tenant")))
    );
    assert_eq!(
        KeyKind::parse("header:bad name"),
        Err("`bad name` is not a valid header name".to_string())
    );
    assert_eq!(
        KeyKind::parse("user"),
        Err("key `user` must be client, ip, route or header:NAME".to_string())
    );
}

#[test]
fn key_bytes_per_kind() {
    let h = HeaderMap::new();
    let key = ident(IdKind::ApiKey, "abc", None);
    let jwt = ident(IdKind::Jwt, "abc", None);
    assert_eq!(
        key_bytes(&KeyKind::Client, &input(Some(&key), Some(IP), &h)),
        Some(b"kabc".to_vec())
    );
    assert_eq!(
        key_bytes(&KeyKind::Client, &input(Some(&jwt), Some(IP), &h)),
        Some(b"jabc".to_vec())
    );
    // no identity: the client is its IP
    assert_eq!(
        key_bytes(&KeyKind::Client, &input(None, Some(IP), &h)),
        Some(vec![b'i', 10, 0, 0, 1])
    );
    assert_eq!(
        key_bytes(&KeyKind::Client, &input(None, None, &h)),
        Some(vec![b'i'])
    );
    assert_eq!(
        key_bytes(&KeyKind::Ip, &input(Some(&key), Some(IP), &h)),
        Some(vec![10, 0, 0, 1])
    );
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
    let mut want = vec![0x20, 0x01, 0x0d, 0xb8];
    want.extend_from_slice(&[0; 11]);
    want.push(7);
    assert_eq!(
        key_bytes(&KeyKind::Ip, &input(None, Some(v6), &h)),
        Some(want)
    );
    assert_eq!(
        key_bytes(&KeyKind::Ip, &input(None, None, &h)),
        Some(vec![])
    );
    assert_eq!(
        key_bytes(&KeyKind::Route, &input(None, Some(IP), &h)),
        Some(b"r1".to_vec())
    );
    let hk = KeyKind::Header(HeaderName::from_static("x-tenant"));
    assert_eq!(key_bytes(&hk, &input(None, Some(IP), &h)), None);
    let mut h2 = HeaderMap::new();
    h2.insert("x-tenant", "acme".parse().unwrap());
    assert_eq!(
        key_bytes(&hk, &input(None, Some(IP), &h2)),
        Some(b"acme".to_vec())
    );
}

#[test]
fn sketch_slots_out_of_range_are_refused() {
    for (slots, ok) in [
        (63usize, false),
        (64, true),
        (MAX_SKETCH_SLOTS, true),
        (MAX_SKETCH_SLOTS + 1, false),
    ] {
        let c = cfg(&format!(
            "{{ sketch_slots: {slots}, policies: {{ a: {{ key: ip, requests: 1, per: 1h }} }} }}"
        ));
        let src = parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        assert_eq!(sketches_fit(&c, &mut p), ok, "{slots}");
        if !ok {
            assert_eq!(p.errors[0].path, "rate_limits.sketch_slots");
            assert_eq!(p.errors[0].message, "must be between 64 and 1048576");
        }
    }
    let (rl, problems) = build_with(
        &cfg("{ sketch_slots: 63, policies: { a: { key: ip, requests: 1, per: 1h } } }"),
        None,
    );
    assert_eq!(
        problems,
        ["rate_limits.sketch_slots: must be between 64 and 1048576"]
    );
    assert!(rl.policies.is_empty());
}

#[test]
fn sketch_memory_is_bounded() {
    // 8 limiters of 2^20 slots are 512 MiB: the bound exactly
    let fits = |policies: &str, tiers: &str| {
        let c = cfg(&format!(
            "{{ sketch_slots: 1048576, tiers: {{ {tiers} }}, policies: {{ {policies} }} }}"
        ));
        let src = parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let ok = sketches_fit(&c, &mut p);
        (
            ok,
            p.errors
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>(),
        )
    };
    let ips = |n: usize| {
        (0..n)
            .map(|i| format!("p{i}: {{ key: ip, requests: 1, per: 1h }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tiers = |n: usize| {
        (0..n)
            .map(|i| format!("t{i}: {{ requests: 1, per: 1h }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert_eq!(fits(&ips(8), ""), (true, vec![]));
    let (ok, msgs) = fits(&ips(9), "");
    assert!(!ok);
    assert_eq!(
        msgs,
        ["9 limiters of 1048576 slots would take 576 MiB (at most 512 MiB): lower sketch_slots or use fewer policies"]
    );
    // tiers only add limiters to `key: client` policies
    assert_eq!(fits(&ips(8), &tiers(3)), (true, vec![]));
    let client = "c: { key: client, requests: 1, per: 1h }";
    assert_eq!(fits(client, &tiers(7)), (true, vec![]));
    assert!(!fits(client, &tiers(8)).0);
}

#[test]
fn zero_limits_are_refused() {
    let (rl, problems) = build_with(
        &cfg("{ tiers: { free: { requests: 0, per: 1h }, gold: { requests: 5, per: 0s } }, \
              policies: { a: { key: ip, requests: 0, per: 1h }, b: { key: ip, requests: 3, per: 0s }, \
              c: { key: ip, requests: 3, per: 1h }, d: { key: nope, requests: 3, per: 1h } } }"),
        None,
    );
    assert_eq!(
        problems,
        [
            "rate_limits.tiers.free: requests and per must be above 0",
            "rate_limits.tiers.gold: requests and per must be above 0",
            "rate_limits.policies.a: requests and per must be above 0",
            "rate_limits.policies.b: requests and per must be above 0",
            "rate_limits.policies.d.key: key `nope` must be client, ip, route or header:NAME",
        ]
    );
    assert_eq!(rl.policies.len(), 1);
    assert_eq!(&*rl.policies[0].name, "c");
    assert_eq!(rl.by_name.get("c"), Some(&0));
}

#[test]
fn route_policies_resolve_names() {
    let rl = build(
        "{ policies: { burst: { key: ip, requests: 1, per: 1h }, daily: { key: ip, requests: 1, per: 1h } } }",
    );
    let src = parse_str("t.yaml", "{}").unwrap();
    let mut p = Problems::new(&src);
    let names = [
        "daily".to_string(),
        "brust".to_string(),
        "burst".to_string(),
    ];
    let got = rl.route_policies(&names, "routes[2].rate_limit", &mut p);
    assert_eq!(got, [idx(&rl, "daily"), idx(&rl, "burst")]);
    assert_ne!(idx(&rl, "daily"), idx(&rl, "burst"));
    assert_eq!(p.errors.len(), 1);
    assert_eq!(p.errors[0].path, "routes[2].rate_limit[1]");
    assert_eq!(
        p.errors[0].message,
        "unknown rate-limit policy `brust`; did you mean `burst`?"
    );
}

#[test]
fn check_enforces_the_limit_and_reports_numbers() {
    let rl = build("{ policies: { a: { key: ip, requests: 2, per: 1h } } }");
    let h = HeaderMap::new();
    let k = input(None, Some(IP), &h);
    let a = [idx(&rl, "a")];
    let o = rl.check(&a, &k).unwrap().unwrap();
    assert_eq!(
        (&*o.policy, o.limit, o.window_secs, o.remaining),
        ("a", 2, 3600, 1)
    );
    assert_eq!(o.retry_after, None);
    assert!((3500..=3600).contains(&o.reset_secs), "{}", o.reset_secs);
    assert_eq!(rl.check(&a, &k).unwrap().unwrap().remaining, 0);
    let e = rl.check(&a, &k).unwrap_err();
    assert_eq!((&*e.policy, e.limit, e.remaining), ("a", 2, 0));
    // the window must end and then half the next one pass: 2 + 1 - 2 = 1 of 2 decayed
    let retry = e.retry_after.expect("a rejection says when to retry");
    assert!((5300..=5400).contains(&retry), "{retry}");
    // another IP has its own count
    let other = input(None, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))), &h);
    assert!(rl.check(&a, &other).is_ok());
    // unknown indexes and absent header keys are skipped
    assert!(rl.check(&[99], &k).unwrap().is_none());
    let rl = build("{ policies: { t: { key: 'header:x-tenant', requests: 1, per: 1h } } }");
    let t = [idx(&rl, "t")];
    for _ in 0..3 {
        assert!(rl.check(&t, &k).unwrap().is_none());
    }
    let mut h2 = HeaderMap::new();
    h2.insert("x-tenant", "acme".parse().unwrap());
    let kt = input(None, Some(IP), &h2);
    assert!(rl.check(&t, &kt).unwrap().is_some());
    assert!(rl.check(&t, &kt).is_err());
}

#[test]
fn check_reports_the_policy_closest_to_its_limit() {
    let rl = build(
        "{ policies: { a: { key: ip, requests: 10, per: 1h }, b: { key: ip, requests: 3, per: 1h }, \
         c: { key: ip, requests: 10, per: 1h } } }",
    );
    let h = HeaderMap::new();
    let k = input(None, Some(IP), &h);
    let (a, b, c) = (idx(&rl, "a"), idx(&rl, "b"), idx(&rl, "c"));
    let o = rl.check(&[a, b], &k).unwrap().unwrap();
    assert_eq!((&*o.policy, o.remaining), ("b", 2));
    let o = rl.check(&[b, a], &k).unwrap().unwrap();
    assert_eq!((&*o.policy, o.remaining), ("b", 1));
    // a tie keeps the first
    let k2 = input(None, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9))), &h);
    let o = rl.check(&[a, c], &k2).unwrap().unwrap();
    assert_eq!((&*o.policy, o.remaining), ("a", 9));
}

#[test]
fn a_rejected_request_releases_what_earlier_policies_took() {
    let rl = build(
        "{ policies: { wide: { key: ip, requests: 5, per: 1h }, narrow: { key: ip, requests: 1, per: 1h } } }",
    );
    let h = HeaderMap::new();
    let k = input(None, Some(IP), &h);
    let (w, n) = (idx(&rl, "wide"), idx(&rl, "narrow"));
    assert!(rl.check(&[w, n], &k).is_ok());
    for _ in 0..4 {
        let e = rl.check(&[w, n], &k).unwrap_err();
        assert_eq!(&*e.policy, "narrow");
    }
    // `wide` counted only the admitted request
    for left in [3, 2, 1, 0] {
        assert_eq!(rl.check(&[w], &k).unwrap().unwrap().remaining, left);
    }
    assert_eq!(&*rl.check(&[w], &k).unwrap_err().policy, "wide");
}

#[test]
fn client_policies_follow_the_identity_tier() {
    let rl = build(
        "{ tiers: { free: { requests: 1, per: 1h }, gold: { requests: 3, per: 1h } }, \
         policies: { c: { key: client, requests: 2, per: 1h }, i: { key: ip, requests: 4, per: 1h } } }",
    );
    let h = HeaderMap::new();
    let c = [idx(&rl, "c")];
    let count = |id: Option<&Identity>, want_label: &str, want_limit: u64| {
        let k = input(id, Some(IP), &h);
        let mut n = 0;
        loop {
            match rl.check(&c, &k) {
                Ok(o) => {
                    let o = o.unwrap();
                    assert_eq!((&*o.policy, o.limit), (want_label, want_limit));
                    n += 1;
                }
                Err(e) => {
                    assert_eq!((&*e.policy, e.limit), (want_label, want_limit));
                    return n;
                }
            }
            assert!(n < 10);
        }
    };
    let gold = ident(IdKind::ApiKey, "k1", Some("gold"));
    let free = ident(IdKind::ApiKey, "k2", Some("free"));
    let typo = ident(IdKind::Jwt, "u1", Some("golld"));
    let none = ident(IdKind::Jwt, "u2", None);
    assert_eq!(count(Some(&gold), "c:gold", 3), 3);
    assert_eq!(count(Some(&free), "c:free", 1), 1);
    let unknown = crate::observe::metrics::METRICS.unknown_tiers.get();
    assert_eq!(count(Some(&typo), "c", 2), 2);
    // counted (other tests may count too, never less)
    assert!(crate::observe::metrics::METRICS.unknown_tiers.get() >= unknown + 3);
    assert_eq!(count(Some(&none), "c", 2), 2);
    assert_eq!(count(None, "c", 2), 2);
    // tiers do not apply to other keys
    let k = input(
        Some(&gold),
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))),
        &h,
    );
    let o = rl.check(&[idx(&rl, "i")], &k).unwrap().unwrap();
    assert_eq!((&*o.policy, o.limit), ("i", 4));
}

#[test]
fn sub_second_windows_report_configured_numbers() {
    let rl = build("{ policies: { f: { key: ip, requests: 10, per: 100ms } } }");
    let h = HeaderMap::new();
    let o = rl
        .check(&[idx(&rl, "f")], &input(None, Some(IP), &h))
        .unwrap()
        .unwrap();
    // counted as 100 per second, reported as 10 per (at least) 1 s
    assert_eq!((o.limit, o.window_secs, o.remaining), (10, 1, 9));
}

#[test]
fn headers_carry_the_outcome() {
    let o = Outcome {
        policy: Arc::from("burst"),
        limit: 10,
        window_secs: 60,
        remaining: 7,
        reset_secs: 30,
        retry_after: None,
    };
    let h = headers(&o);
    let values: Vec<&str> = h.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        values,
        ["\"burst\";q=10;w=60", "\"burst\";r=7;t=30", "10", "7", "30"]
    );
    use crate::hdr::{
        RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
    };
    let names = [
        &RATELIMIT_POLICY,
        &RATELIMIT,
        &X_RATELIMIT_LIMIT,
        &X_RATELIMIT_REMAINING,
        &X_RATELIMIT_RESET,
    ];
    for (i, n) in names.iter().enumerate() {
        assert!(std::ptr::eq(h[i].0, *n), "{i}");
    }
}

const TIERED: &str = "{ tiers: { gold: { requests: 3, per: 1h } }, \
    policies: { c: { key: client, requests: 2, per: 1h }, i: { key: ip, requests: 2, per: 1h } } }";

#[test]
fn unchanged_policies_keep_their_counters_across_reloads() {
    let h = HeaderMap::new();
    let k = input(None, Some(IP), &h);
    let old = build(TIERED);
    for n in ["c", "i"] {
        let p = [idx(&old, n)];
        rl_fill(&old, &p, &k);
    }
    let (new, problems) = build_with(&cfg(TIERED), Some(&old));
    assert!(problems.is_empty());
    for n in ["c", "i"] {
        assert!(Arc::ptr_eq(
            &old.policies[idx(&old, n)],
            &new.policies[idx(&new, n)]
        ));
        assert!(new.check(&[idx(&new, n)], &k).is_err(), "{n}");
    }
    // a changed limit starts afresh
    let changed = TIERED.replace("i: { key: ip, requests: 2", "i: { key: ip, requests: 3");
    let (new2, _) = build_with(&cfg(&changed), Some(&new));
    assert!(new2.check(&[idx(&new2, "i")], &k).is_ok());
    assert!(new2.check(&[idx(&new2, "c")], &k).is_err());
    // so does a changed sketch size
    let (new3, _) = build_with(
        &cfg(&TIERED.replace("{ tiers", "{ sketch_slots: 128, tiers")),
        Some(&new),
    );
    assert!(new3.check(&[idx(&new3, "c")], &k).is_ok());
}

fn rl_fill(rl: &RateLimits, p: &[usize], k: &KeyInput) {
    while rl.check(p, k).is_ok() {}
}

#[test]
fn changed_tiers_rebuild_tier_limiters_but_keep_the_base() {
    let h = HeaderMap::new();
    let anon = input(None, Some(IP), &h);
    let gold = ident(IdKind::ApiKey, "k1", Some("gold"));
    let kg = input(Some(&gold), Some(IP), &h);
    let old = build(TIERED);
    let (c, i) = ([idx(&old, "c")], [idx(&old, "i")]);
    rl_fill(&old, &c, &anon);
    rl_fill(&old, &c, &kg);
    rl_fill(&old, &i, &anon);
    for tiers in [
        "{ gold: { requests: 4, per: 1h } }",
        "{ gold: { requests: 3, per: 2h } }",
        "{ gold: { requests: 3, per: 1h }, free: { requests: 1, per: 1h } }",
        "{ silver: { requests: 3, per: 1h } }",
        "{}",
    ] {
        let yaml = TIERED.replace("{ gold: { requests: 3, per: 1h } }", tiers);
        assert_ne!(yaml, TIERED);
        let (new, problems) = build_with(&cfg(&yaml), Some(&old));
        assert!(problems.is_empty());
        let (nc, ni) = (idx(&new, "c"), idx(&new, "i"));
        assert!(
            !Arc::ptr_eq(&old.policies[c[0]], &new.policies[nc]),
            "{tiers}"
        );
        assert!(Arc::ptr_eq(
            &old.policies[c[0]].base,
            &new.policies[nc].base
        ));
        assert!(!tiers_equal(&old.policies[c[0]], &cfg(&yaml)), "{tiers}");
        // the base counters are kept, the tier's start afresh
        assert!(new.check(&[nc], &anon).is_err(), "{tiers}");
        if tiers.contains("gold") {
            assert!(new.check(&[nc], &kg).is_ok(), "{tiers}");
        }
        // tiers do not concern other keys
        assert!(tiers_equal(&old.policies[i[0]], &cfg(&yaml)));
        assert!(Arc::ptr_eq(&old.policies[i[0]], &new.policies[ni]));
        assert!(new.check(&[ni], &anon).is_err());
    }
    assert!(tiers_equal(&old.policies[c[0]], &cfg(TIERED)));
}

#[test]
fn an_unknown_tier_is_logged_once_and_the_names_kept_are_bounded() {
    let mut seen = std::collections::HashSet::new();
    assert!(first_sighting(&mut seen, "gold"));
    assert!(!first_sighting(&mut seen, "gold"), "logged once per name");
    for i in 1..1024 {
        assert!(first_sighting(&mut seen, &format!("made-up-{i}")));
    }
    assert_eq!(seen.len(), 1024);
    assert!(
        !first_sighting(&mut seen, "one-too-many"),
        "the set stops at 1,024"
    );
    assert_eq!(seen.len(), 1024);
}

fn cluster_of(rl: &RateLimits) -> &Arc<cluster::Cluster> {
    rl.cluster.as_ref().expect("a cluster")
}

fn with_cluster(block: &str) -> RateLimitsConfig {
    cfg(&format!(
        "{{ policies: {{ a: {{ key: ip, requests: 1, per: 1h }} }}, cluster: {block} }}"
    ))
}

#[test]
fn a_cluster_block_is_checked_and_kept_across_reloads_while_unchanged() {
    let (rl, problems) = build_with(&with_cluster("{ redis: \"http://127.0.0.1:6379\" }"), None);
    assert!(rl.cluster.is_none());
    assert_eq!(
        problems,
        ["rate_limits.cluster.redis: must be a redis:// URL"]
    );
    let (rl, problems) = build_with(
        &with_cluster("{ redis: \"redis://127.0.0.1:6379\", sync_interval: 0ms }"),
        None,
    );
    assert!(rl.cluster.is_none());
    assert_eq!(
        problems,
        ["rate_limits.cluster.sync_interval: must be above 0"]
    );
    let (first, problems) =
        build_with(&with_cluster("{ redis: \"redis://127.0.0.1:6379\" }"), None);
    assert!(problems.is_empty(), "{problems:?}");
    let c1 = cluster_of(&first).clone();
    assert_eq!(c1.config.redis, "redis://127.0.0.1:6379");
    let (tls, problems) = build_with(
        &with_cluster("{ redis: \"rediss://127.0.0.1:6380\" }"),
        None,
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(cluster_of(&tls).config.redis, "rediss://127.0.0.1:6380");
    // unchanged: the same cluster (its sync task and counters) goes on; changed: a new one
    let (again, _) = build_with(
        &with_cluster("{ redis: \"redis://127.0.0.1:6379\" }"),
        Some(&first),
    );
    assert!(Arc::ptr_eq(&c1, cluster_of(&again)));
    let (moved, _) = build_with(
        &with_cluster("{ redis: \"redis://127.0.0.1:6390\" }"),
        Some(&first),
    );
    assert!(!Arc::ptr_eq(&c1, cluster_of(&moved)));
    let (faster, _) = build_with(
        &with_cluster("{ redis: \"redis://127.0.0.1:6379\", sync_interval: 50ms }"),
        Some(&first),
    );
    assert!(!Arc::ptr_eq(&c1, cluster_of(&faster)));
    let (none, _) = build_with(
        &cfg("{ policies: { a: { key: ip, requests: 1, per: 1h } } }"),
        Some(&first),
    );
    assert!(none.cluster.is_none(), "the block removed: no cluster");
}

/// The fleet's top-level `cluster` shares the limits; a reload keeps its cluster only while
/// its settings, its Redis endpoints and its CA file are all unchanged.
#[test]
fn the_fleet_cluster_is_kept_only_while_settings_endpoints_and_ca_are_unchanged() {
    let fleet = |yaml: &str| -> crate::config::FleetConfig { serde_yaml::from_str(yaml).unwrap() };
    let limits = cfg("{ policies: { a: { key: ip, requests: 1, per: 1h } } }");
    let build_fleet = |f: &crate::config::FleetConfig, prev: Option<&RateLimits>| {
        let src = parse_str("t.yaml", "{}").unwrap();
        let mut p = Problems::new(&src);
        let rl = RateLimits::build(&limits, Some(f), prev, &mut p);
        assert!(p.errors.is_empty());
        rl
    };
    let base = "redis: \"redis://127.0.0.1:6379\"";
    let first = build_fleet(&fleet(&format!("{{ {base} }}")), None);
    let c1 = cluster_of(&first).clone();
    assert_eq!(c1.config.redis, "redis://127.0.0.1:6379");
    let same = build_fleet(&fleet(&format!("{{ {base} }}")), Some(&first));
    assert!(Arc::ptr_eq(&c1, cluster_of(&same)), "unchanged: kept");
    for changed in [
        // another Redis: settings and endpoints differ
        "{ redis: \"redis://127.0.0.1:6390\" }".to_string(),
        // another prefix: the settings differ, the endpoints do not
        format!("{{ {base}, key_prefix: other }}"),
        // another CA file only
        format!("{{ {base}, tls_ca_file: /etc/ssl/fleet-ca.pem }}"),
    ] {
        let next = build_fleet(&fleet(&changed), Some(&first));
        assert!(
            !Arc::ptr_eq(&c1, cluster_of(&next)),
            "{changed}: a new cluster"
        );
    }
}
