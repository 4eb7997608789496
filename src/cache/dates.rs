//! HTTP dates (RFC 9110 §5.6.7): the preferred IMF-fixdate and the two obsolete forms a
//! recipient must still accept, rfc850-date and asctime-date.
//!
//! ```text
//! Sun, 06 Nov 1994 08:49:37 GMT    IMF-fixdate
//! Sunday, 06-Nov-94 08:49:37 GMT   rfc850-date (two-digit year)
//! Sun Nov  6 08:49:37 1994         asctime-date
//! ```
//!
//! Names (weekday, month, `GMT`) are matched without regard to case, as caches in the wild do;
//! everything else follows the grammar: two-digit hours, colons, single spaces, `GMT` and no
//! other zone. The weekday is not checked against the date. A two-digit rfc850 year is the
//! nearest year with those digits that is not more than 50 years ahead of `now`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MONTHS: [&[u8; 3]; 12] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
];
const DAYS: [&[u8; 3]; 7] = [b"mon", b"tue", b"wed", b"thu", b"fri", b"sat", b"sun"];
const LONG_DAYS: [&[u8]; 7] = [
    b"monday",
    b"tuesday",
    b"wednesday",
    b"thursday",
    b"friday",
    b"saturday",
    b"sunday",
];

/// Parse an HTTP date; `None` if it is not one.
pub fn parse(value: &[u8]) -> Option<SystemTime> {
    parse_at(value, SystemTime::now())
}

/// [`parse`], with `now` for the rfc850 two-digit year.
pub fn parse_at(value: &[u8], now: SystemTime) -> Option<SystemTime> {
    let v = value.trim_ascii();
    let comma = v.iter().position(|&b| b == b',');
    match comma {
        Some(3) => imf_fixdate(v),
        Some(_) => rfc850(v, now),
        None => asctime(v),
    }
}

fn imf_fixdate(v: &[u8]) -> Option<SystemTime> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    if v.len() != 29 || !is_day(&v[0..3]) || &v[3..5] != b", " {
        return None;
    }
    let day = digits(&v[5..7])?;
    sp(v[7])?;
    let month = month(&v[8..11])?;
    sp(v[11])?;
    let year = digits(&v[12..16])?;
    sp(v[16])?;
    let (h, m, s) = time_of_day(&v[17..25])?;
    sp(v[25])?;
    gmt(&v[26..29])?;
    to_time(year, month, day, h, m, s)
}

fn rfc850(v: &[u8], now: SystemTime) -> Option<SystemTime> {
    // "Sunday, 06-Nov-94 08:49:37 GMT"
    let comma = v.iter().position(|&b| b == b',')?;
    let name = &v[..comma];
    if !LONG_DAYS.iter().any(|d| name.eq_ignore_ascii_case(d)) {
        return None;
    }
    let rest = &v[comma..];
    if rest.len() != 24 || &rest[..2] != b", " {
        return None;
    }
    let day = digits(&rest[2..4])?;
    dash(rest[4])?;
    let month = month(&rest[5..8])?;
    dash(rest[8])?;
    let yy = digits(&rest[9..11])?;
    sp(rest[11])?;
    let (h, m, s) = time_of_day(&rest[12..20])?;
    sp(rest[20])?;
    gmt(&rest[21..24])?;
    let this_year = civil_year(now);
    let mut year = this_year - this_year.rem_euclid(100) + i64::from(yy);
    if year > this_year + 50 {
        year -= 100;
    }
    to_time(u32::try_from(year).ok()?, month, day, h, m, s)
}

fn asctime(v: &[u8]) -> Option<SystemTime> {
    // "Sun Nov  6 08:49:37 1994" (day: two digits or space + digit)
    if v.len() != 24 || !is_day(&v[0..3]) {
        return None;
    }
    sp(v[3])?;
    let month = month(&v[4..7])?;
    sp(v[7])?;
    let day = match v[8] {
        b' ' => digits(&v[9..10])?,
        _ => digits(&v[8..10])?,
    };
    sp(v[10])?;
    let (h, m, s) = time_of_day(&v[11..19])?;
    sp(v[19])?;
    let year = digits(&v[20..24])?;
    to_time(year, month, day, h, m, s)
}

fn is_day(name: &[u8]) -> bool {
    DAYS.iter().any(|d| name.eq_ignore_ascii_case(&d[..]))
}

fn month(name: &[u8]) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| name.eq_ignore_ascii_case(&m[..]))
        .map(|i| i as u32 + 1)
}

fn sp(b: u8) -> Option<()> {
    (b == b' ').then_some(())
}

fn dash(b: u8) -> Option<()> {
    (b == b'-').then_some(())
}

fn gmt(b: &[u8]) -> Option<()> {
    b.eq_ignore_ascii_case(b"GMT").then_some(())
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

fn time_of_day(b: &[u8]) -> Option<(u32, u32, u32)> {
    // "08:49:37"
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, s) = (digits(&b[0..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
    // 60: a leap second
    (h < 24 && m < 60 && s <= 60).then_some((h, m, s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_year(t: SystemTime) -> i64 {
    let days = t
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    // inverse of days_from_civil, year only
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let y = yoe + era * 400;
    if mp >= 10 {
        y + 1
    } else {
        y
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

fn to_time(year: u32, month: u32, day: u32, h: u32, m: u32, s: u32) -> Option<SystemTime> {
    let year = i64::from(year);
    if year < 1970 || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let secs = days * 86_400 + u64::from(h) * 3600 + u64::from(m) * 60 + u64::from(s);
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn secs(v: &str) -> Option<u64> {
        // 2026-12-01, for the rfc850 century
        let now = UNIX_EPOCH + Duration::from_secs(1_796_083_200);
        parse_at(v.as_bytes(), now).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs())
    }

    #[test]
    fn the_three_formats() {
        assert_eq!(secs("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(secs("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(secs("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
        assert_eq!(secs("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(secs("Tue, 19 Jan 2038 03:14:08 GMT"), Some(1 << 31));
        assert_eq!(secs("Sun, 21 Nov 2286 04:46:39 GMT"), Some(10_000_039_599));
        // rfc850: two-digit years within 50 years ahead are in this century
        assert_eq!(
            secs("Thursday, 18-Aug-50 02:01:18 GMT"),
            secs("Thu, 18 Aug 2050 02:01:18 GMT")
        );
        assert_eq!(
            secs("Monday, 01-Jan-80 00:00:00 GMT"),
            secs("Tue, 01 Jan 1980 00:00:00 GMT")
        );
    }

    #[test]
    fn names_ignore_case() {
        let want = secs("Thu, 18 Aug 2050 02:01:18 GMT");
        assert!(want.is_some());
        for v in [
            "THU, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 AUG 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 gMT",
        ] {
            assert_eq!(secs(v), want, "{v}");
        }
    }

    #[test]
    fn malformed_dates() {
        for v in [
            "0",
            "",
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 31 Feb 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 24:01:18 GMT",
            "Thursday, 18-Aug-2050 02:01:18 GMT",
            "Thu Aug 8 02:01:18 2050",
        ] {
            assert_eq!(secs(v), None, "{v}");
        }
    }
}
