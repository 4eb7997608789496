//! Freshness of a response, RFC 9111 §4.2: its directives (from `Cache-Control`, or from a
//! targeted field of RFC 9213 such as `CDN-Cache-Control`), its age when it arrived, and its
//! freshness lifetime (explicit, or heuristic where §4.2.2 allows one).

use super::dates;
use http::header::{AGE, DATE, EXPIRES, LAST_MODIFIED};
use http::HeaderName;
use pingora_cache::cache_control::{CacheControl, DirectiveKey};
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The largest delta-seconds value kept (RFC 9111 §1.2.2: 2^31).
const DELTA_MAX: u64 = 1 << 31;

/// Heuristic lifetimes (10 % of the time since `Last-Modified`) are capped at a day.
pub const HEURISTIC_CAP: Duration = Duration::from_secs(86_400);

/// Statuses a cache may give a heuristic lifetime (RFC 9110 §15.1, "heuristically cacheable").
pub const HEURISTIC_STATUSES: [u16; 12] =
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Statuses whose caching rules the gateway implements, for `must-understand` (§5.2.2.3).
const UNDERSTOOD_STATUSES: [u16; 17] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 500, 501, 502, 503,
];

pub fn heuristically_cacheable(status: u16) -> bool {
    HEURISTIC_STATUSES.contains(&status)
}

pub fn understood(status: u16) -> bool {
    UNDERSTOOD_STATUSES.contains(&status)
}

/// The response directives that matter to a shared cache, from whichever field rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// `no-cache` without field names.
    pub no_cache: bool,
    /// `private` without field names.
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Header names of `no-cache="..."` and `private="..."`: not stored.
    pub unstored_fields: Vec<String>,
    /// The directives came from a targeted field: `Expires` does not count.
    pub targeted: bool,
}

impl Directives {
    /// From the response's `Cache-Control` (absent: no directives).
    pub fn from_cache_control(resp: &ResponseHeader) -> Directives {
        let Some(cc) = CacheControl::from_resp_headers(resp) else {
            return Directives::default();
        };
        let secs = |r: pingora_error::Result<Option<u32>>| r.ok().flatten().map(u64::from);
        let mut unstored_fields = Vec::new();
        for names in [cc.no_cache_field_names(), cc.private_field_names()]
            .into_iter()
            .flatten()
        {
            for n in names {
                if let Ok(s) = std::str::from_utf8(n) {
                    if !s.is_empty() {
                        unstored_fields.push(s.to_ascii_lowercase());
                    }
                }
            }
        }
        Directives {
            max_age: secs(cc.max_age()),
            s_maxage: secs(cc.s_maxage()),
            no_store: cc.no_store(),
            no_cache: cc.no_cache(),
            private: cc.private(),
            public: cc.public(),
            must_revalidate: cc.must_revalidate(),
            proxy_revalidate: cc.proxy_revalidate(),
            must_understand: cc.has_key("must-understand"),
            stale_while_revalidate: secs(cc.stale_while_revalidate()),
            stale_if_error: secs(cc.stale_if_error()),
            unstored_fields,
            targeted: false,
        }
    }

    /// The first of `fields` (in precedence order) present with a valid, non-empty value
    /// (RFC 9213 §2.1), or `None`: then `Cache-Control` and `Expires` apply.
    pub fn from_targeted(resp: &ResponseHeader, fields: &[HeaderName]) -> Option<Directives> {
        fields.iter().find_map(|name| {
            let mut value = Vec::new();
            for (i, v) in resp.headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    value.extend_from_slice(b", ");
                }
                value.extend_from_slice(v.as_bytes());
            }
            parse_targeted(&value)
        })
    }

    /// Nothing about freshness may be taken from the upstream: stale windows are closed.
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some() || self.no_cache
    }

    /// `public`, `s-maxage` or `must-revalidate`: a response to a request with
    /// `Authorization` may be stored (RFC 9111 §3.5).
    pub fn allows_authorized(&self) -> bool {
        self.public || self.s_maxage.is_some() || self.must_revalidate
    }
}

/// A targeted field is a Structured Fields Dictionary (RFC 8941). An invalid one, one whose
/// known directives have the wrong type, or an empty one is ignored.
fn parse_targeted(value: &[u8]) -> Option<Directives> {
    let members = sf::dictionary(value)?;
    if members.is_empty() {
        return None;
    }
    let mut d = Directives {
        targeted: true,
        ..Directives::default()
    };
    for (key, item) in members {
        let int = |item: &sf::Item| match item {
            sf::Item::Integer(n) if *n >= 0 => Some((*n as u64).min(DELTA_MAX)),
            _ => None,
        };
        match key.as_str() {
            "max-age" => d.max_age = Some(int(&item)?),
            "s-maxage" => d.s_maxage = Some(int(&item)?),
            "stale-while-revalidate" => d.stale_while_revalidate = Some(int(&item)?),
            "stale-if-error" => d.stale_if_error = Some(int(&item)?),
            "no-store" => d.no_store = true,
            "public" => d.public = true,
            "must-revalidate" => d.must_revalidate = true,
            "proxy-revalidate" => d.proxy_revalidate = true,
            "must-understand" => d.must_understand = true,
            "no-cache" | "private" => match item {
                sf::Item::String(names) => d.unstored_fields.extend(
                    names
                        .split(',')
                        .map(|n| n.trim().to_ascii_lowercase())
                        .filter(|n| !n.is_empty()),
                ),
                _ if key == "no-cache" => d.no_cache = true,
                _ => d.private = true,
            },
            _ => {} // extensions are ignored
        }
    }
    Some(d)
}

/// When a response arrived and how old it was then (RFC 9111 §4.2.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Received {
    /// The local clock when the response arrived.
    pub at: SystemTime,
    /// The response's `Date`, or `at` when it has none (or an invalid one).
    pub date: SystemTime,
    /// `corrected_initial_age`: the larger of the apparent age (`at - date`) and `Age`.
    pub initial_age: Duration,
}

impl Received {
    pub fn new(resp: &ResponseHeader, at: SystemTime) -> Received {
        let date = single_date(resp, &DATE).unwrap_or(at);
        // `Date` has a resolution of a second: the first second of apparent age is noise (a
        // response made at x.999 s and received at x+1.001 s looks a second old)
        let apparent = at
            .duration_since(date)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(1));
        let apparent = Duration::from_secs(apparent.as_secs());
        let age = Duration::from_secs(age_value(resp).unwrap_or(0));
        Received {
            at,
            date,
            initial_age: apparent.max(age),
        }
    }

    /// The instant the response was "born" by our clock: its age is measured from here.
    /// Never before 1970 (the store keeps instants since the epoch).
    pub fn epoch(&self) -> SystemTime {
        self.at
            .checked_sub(self.initial_age)
            .filter(|t| *t > UNIX_EPOCH)
            .unwrap_or(UNIX_EPOCH + Duration::from_secs(1))
    }
}

/// The `Age` value: the first member of the first line, if it is a non-negative integer
/// (larger values saturate). Anything else counts as no `Age`.
pub fn age_value(resp: &ResponseHeader) -> Option<u64> {
    let first = resp.headers.get(AGE)?.as_bytes();
    let member = first.split(|&b| b == b',').next()?.trim_ascii();
    delta_seconds(member)
}

/// `delta-seconds`: digits only, saturating at 2^31.
pub fn delta_seconds(b: &[u8]) -> Option<u64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        b.iter()
            .fold(0u64, |n, d| (n * 10 + u64::from(d - b'0')).min(DELTA_MAX)),
    )
}

/// A date header that appears exactly once with a valid value.
fn single_date(resp: &ResponseHeader, name: &HeaderName) -> Option<SystemTime> {
    let mut values = resp.headers.get_all(name).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    dates::parse(v.as_bytes())
}

/// The explicit freshness lifetime (§4.2.1): `s-maxage`, else `max-age`, else `Expires` minus
/// `Date` (ignored under a targeted field). An invalid `Expires` (or several) means "already
/// expired". `None`: the response has no explicit expiration time.
pub fn explicit_lifetime(d: &Directives, resp: &ResponseHeader, rx: &Received) -> Option<Duration> {
    if let Some(s) = d.s_maxage.or(d.max_age) {
        return Some(Duration::from_secs(s));
    }
    if d.targeted || !resp.headers.contains_key(EXPIRES) {
        return None;
    }
    Some(match single_date(resp, &EXPIRES) {
        Some(expires) => expires.duration_since(rx.date).unwrap_or_default(),
        None => Duration::ZERO,
    })
}

/// A heuristic lifetime (§4.2.2): a tenth of the time since `Last-Modified`, capped.
pub fn heuristic_lifetime(resp: &ResponseHeader, rx: &Received) -> Option<Duration> {
    let lm = single_date(resp, &LAST_MODIFIED)?;
    let since = rx.date.duration_since(lm).ok()?;
    Some((since / 10).min(HEURISTIC_CAP))
}

/// The request directives a cache acts on (§5.2.1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestDirectives {
    pub max_age: Option<u64>,
    /// `max-stale` with no value: any staleness.
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub no_cache: bool,
    pub only_if_cached: bool,
}

impl RequestDirectives {
    pub fn new(req: &RequestHeader) -> RequestDirectives {
        let Some(cc) = CacheControl::from_req_headers(req) else {
            // Pragma: no-cache counts only without Cache-Control (RFC 9111 §5.4)
            let pragma = req
                .headers
                .get_all(http::header::PRAGMA)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"));
            return RequestDirectives {
                no_cache: pragma,
                ..Default::default()
            };
        };
        let secs = |key: &str| -> Option<u64> {
            let v = cc
                .directives
                .get(&DirectiveKey::from_lowercase(key))?
                .as_ref()?;
            delta_seconds(v.parse_as_bytes())
        };
        let max_stale = match cc
            .directives
            .get(&DirectiveKey::from_lowercase("max-stale"))
        {
            Some(None) => Some(u64::MAX),
            Some(Some(v)) => delta_seconds(v.parse_as_bytes()),
            None => None,
        };
        RequestDirectives {
            max_age: secs("max-age"),
            max_stale,
            min_fresh: secs("min-fresh"),
            no_cache: cc.has_key("no-cache"),
            only_if_cached: cc.only_if_cached(),
        }
    }
}

/// A minimal RFC 8941 Dictionary parser: enough to tell valid targeted fields from invalid ones
/// and read their directives.
mod sf {
    #[derive(Debug, Clone, PartialEq)]
    pub enum Item {
        Integer(i64),
        Decimal,
        String(String),
        Token,
        Bytes,
        Boolean(bool),
        InnerList,
    }

    struct P<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl P<'_> {
        fn peek(&self) -> Option<u8> {
            self.s.get(self.i).copied()
        }
        fn eat(&mut self, b: u8) -> bool {
            if self.peek() == Some(b) {
                self.i += 1;
                true
            } else {
                false
            }
        }
        fn sp(&mut self) {
            while self.peek() == Some(b' ') {
                self.i += 1;
            }
        }
        fn ows(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t')) {
                self.i += 1;
            }
        }
        fn key(&mut self) -> Option<String> {
            let start = self.i;
            match self.peek() {
                Some(b'a'..=b'z' | b'*') => self.i += 1,
                _ => return None,
            }
            while matches!(
                self.peek(),
                Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
            ) {
                self.i += 1;
            }
            std::str::from_utf8(&self.s[start..self.i])
                .ok()
                .map(str::to_string)
        }
        fn params(&mut self) -> Option<()> {
            while self.eat(b';') {
                self.sp();
                self.key()?;
                if self.eat(b'=') {
                    self.bare_item()?;
                }
            }
            Some(())
        }
        fn bare_item(&mut self) -> Option<Item> {
            match self.peek()? {
                b'-' | b'0'..=b'9' => self.number(),
                b'"' => self.string(),
                b':' => self.bytes(),
                b'?' => {
                    self.i += 1;
                    let v = match self.peek()? {
                        b'0' => false,
                        b'1' => true,
                        _ => return None,
                    };
                    self.i += 1;
                    Some(Item::Boolean(v))
                }
                b'A'..=b'Z' | b'a'..=b'z' | b'*' => {
                    self.i += 1;
                    while let Some(c) = self.peek() {
                        let tchar = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c);
                        if !tchar {
                            break;
                        }
                        self.i += 1;
                    }
                    Some(Item::Token)
                }
                _ => None,
            }
        }
        fn number(&mut self) -> Option<Item> {
            let neg = self.eat(b'-');
            let start = self.i;
            let mut dot = None;
            while let Some(c) = self.peek() {
                if c.is_ascii_digit() {
                    self.i += 1;
                } else if c == b'.' && dot.is_none() {
                    dot = Some(self.i);
                    self.i += 1;
                } else {
                    break;
                }
            }
            let digits = &self.s[start..self.i];
            match dot {
                None => {
                    if digits.is_empty() || digits.len() > 15 {
                        return None;
                    }
                    let n = std::str::from_utf8(digits).ok()?.parse::<i64>().ok()?;
                    Some(Item::Integer(if neg { -n } else { n }))
                }
                Some(d) => {
                    let (int, frac) = (d - start, self.i - d - 1);
                    ((1..=12).contains(&int) && (1..=3).contains(&frac)).then_some(Item::Decimal)
                }
            }
        }
        fn string(&mut self) -> Option<Item> {
            self.i += 1;
            let mut out = String::new();
            loop {
                let c = self.peek()?;
                self.i += 1;
                match c {
                    b'"' => return Some(Item::String(out)),
                    b'\\' => {
                        let e = self.peek()?;
                        if e != b'"' && e != b'\\' {
                            return None;
                        }
                        self.i += 1;
                        out.push(e as char);
                    }
                    0x20..=0x7e => out.push(c as char),
                    _ => return None,
                }
            }
        }
        fn bytes(&mut self) -> Option<Item> {
            self.i += 1;
            while let Some(c) = self.peek() {
                self.i += 1;
                if c == b':' {
                    return Some(Item::Bytes);
                }
                if !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')) {
                    return None;
                }
            }
            None
        }
        fn item_or_inner_list(&mut self) -> Option<Item> {
            if self.eat(b'(') {
                loop {
                    self.sp();
                    if self.eat(b')') {
                        self.params()?;
                        return Some(Item::InnerList);
                    }
                    self.bare_item()?;
                    self.params()?;
                    if !matches!(self.peek(), Some(b' ' | b')')) {
                        return None;
                    }
                }
            }
            let item = self.bare_item()?;
            self.params()?;
            Some(item)
        }
    }

    /// The members of a Dictionary, or `None` if `value` is not one.
    pub fn dictionary(value: &[u8]) -> Option<Vec<(String, Item)>> {
        let mut p = P { s: value, i: 0 };
        p.sp();
        let mut out = Vec::new();
        if p.peek().is_none() {
            return Some(out);
        }
        loop {
            let key = p.key()?;
            let item = if p.eat(b'=') {
                p.item_or_inner_list()?
            } else {
                p.params()?;
                Item::Boolean(true)
            };
            out.retain(|(k, _)| *k != key);
            out.push((key, item));
            p.ows();
            if p.peek().is_none() {
                return Some(out);
            }
            if !p.eat(b',') {
                return None;
            }
            p.ows();
            // a trailing comma is an error
            p.peek()?;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn age_values() {
        for (v, want) in [
            ("30", Some(30)),
            ("0, 7200", Some(0)),
            ("7200, 0", Some(7200)),
            ("abc", None),
            ("-7200", None),
            ("7200.0", None),
            ("2147483649", Some(1 << 31)),
            ("99999999999999999999999", Some(1 << 31)),
        ] {
            assert_eq!(age_value(&resp(&[("age", v)])), want, "{v}");
        }
        assert_eq!(
            age_value(&resp(&[("age", "7200"), ("age", "0")])),
            Some(7200)
        );
    }

    #[test]
    fn initial_age_is_the_larger_of_apparent_age_and_age() {
        let at = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let date = httpdate::fmt_http_date(at - Duration::from_secs(10));
        let rx = Received::new(&resp(&[("date", &date), ("age", "3")]), at);
        // the first second does not count (Date is rounded down to the second)
        assert_eq!(rx.initial_age, Duration::from_secs(9));
        let rx = Received::new(&resp(&[("date", &date), ("age", "25")]), at);
        assert_eq!(rx.initial_age, Duration::from_secs(25));
        assert_eq!(rx.epoch(), at - Duration::from_secs(25));
        // a Date from the future: no apparent age
        let future = httpdate::fmt_http_date(at + Duration::from_secs(10));
        let rx = Received::new(&resp(&[("date", &future)]), at);
        assert_eq!(rx.initial_age, Duration::ZERO);
        // an absurd Age does not take the epoch before 1970
        let rx = Received::new(&resp(&[("age", "2147483648")]), at);
        assert!(rx.epoch() > UNIX_EPOCH);
    }

    #[test]
    fn explicit_lifetimes() {
        let at = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let date = httpdate::fmt_http_date(at + Duration::from_secs(400));
        let exp = httpdate::fmt_http_date(at + Duration::from_secs(700));
        let r = resp(&[("date", &date), ("expires", &exp)]);
        let rx = Received::new(&r, at);
        let d = Directives::from_cache_control(&r);
        // measured against Date, not the local clock
        assert_eq!(
            explicit_lifetime(&d, &r, &rx),
            Some(Duration::from_secs(300))
        );
        let r = resp(&[("expires", "0")]);
        let rx = Received::new(&r, at);
        assert_eq!(
            explicit_lifetime(&Directives::from_cache_control(&r), &r, &rx),
            Some(Duration::ZERO)
        );
        let r = resp(&[("cache-control", "max-age=-1")]);
        assert_eq!(
            explicit_lifetime(&Directives::from_cache_control(&r), &r, &rx),
            None
        );
        let r = resp(&[("cache-control", "max-age='3600'")]);
        assert_eq!(
            explicit_lifetime(&Directives::from_cache_control(&r), &r, &rx),
            None
        );
        let r = resp(&[("cache-control", "max-age=10, s-maxage=20")]);
        assert_eq!(
            explicit_lifetime(&Directives::from_cache_control(&r), &r, &rx),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn targeted_fields() {
        let names = [HeaderName::from_static("cdn-cache-control")];
        let t = |v: &str| Directives::from_targeted(&resp(&[("cdn-cache-control", v)]), &names);
        assert_eq!(t("max-age=60").unwrap().max_age, Some(60));
        assert!(t("no-store").unwrap().no_store);
        assert!(t("private").unwrap().private);
        assert!(t("no-cache").unwrap().no_cache);
        assert_eq!(t("foobar, max-age=60").unwrap().max_age, Some(60));
        assert_eq!(t("max-age=99999999999").unwrap().max_age, Some(1 << 31));
        for bad in [
            "",
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age=1,",
            "Max-Age=1",
        ] {
            assert!(t(bad).is_none(), "{bad}");
        }
        // absent: Cache-Control applies
        assert!(Directives::from_targeted(&resp(&[]), &names).is_none());
    }

    #[test]
    fn request_directives() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("cache-control", "max-stale, min-fresh=5, only-if-cached")
            .unwrap();
        let d = RequestDirectives::new(&req);
        assert_eq!(d.max_stale, Some(u64::MAX));
        assert_eq!(d.min_fresh, Some(5));
        assert!(d.only_if_cached);
        req.insert_header("cache-control", "max-age=3, max-stale=10")
            .unwrap();
        let d = RequestDirectives::new(&req);
        assert_eq!((d.max_age, d.max_stale), (Some(3), Some(10)));
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("pragma", "no-cache").unwrap();
        assert!(RequestDirectives::new(&req).no_cache);
    }
}
