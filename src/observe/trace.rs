//! W3C trace context: keep a valid incoming `traceparent` (forwarding it with this hop's
//! own span id), or start a new trace. `tracestate` passes through untouched.

fn is_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The trace id and flags of a valid `traceparent` (version 00).
pub fn parse(v: &[u8]) -> Option<(&str, &str)> {
    if v.len() != 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (ver, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    if !(is_hex(ver) && is_hex(trace) && is_hex(parent) && is_hex(flags)) || ver == b"ff" {
        return None;
    }
    if trace.iter().all(|b| *b == b'0') || parent.iter().all(|b| *b == b'0') {
        return None;
    }
    let s = std::str::from_utf8(v).ok()?;
    Some((&s[3..35], &s[53..55]))
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
}

/// `00-{trace}-{span}-{flags}`
fn traceparent(trace: &str, span: &[u8], flags: &str) -> String {
    let mut tp = String::with_capacity(55);
    tp.push_str("00-");
    tp.push_str(trace);
    tp.push('-');
    push_hex(&mut tp, span);
    tp.push('-');
    tp.push_str(flags);
    tp
}

/// (trace id, the traceparent to send upstream).
pub fn next(incoming: Option<&[u8]>) -> (String, String) {
    let span: [u8; 8] = rand::random::<u64>().max(1).to_be_bytes();
    match incoming.and_then(parse) {
        Some((trace, flags)) => (trace.to_string(), traceparent(trace, &span, flags)),
        None => {
            let mut trace = String::with_capacity(32);
            push_hex(&mut trace, &rand::random::<u128>().max(1).to_be_bytes());
            let tp = traceparent(&trace, &span, "01");
            (trace, tp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_trace_id_new_span() {
        let inc = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, tp) = next(Some(inc));
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!tp.contains("00f067aa0ba902b7"));
        assert!(tp.ends_with("-01"));
    }

    #[test]
    fn invalid_starts_a_new_trace() {
        for bad in [
            &b"garbage"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let (trace, tp) = next(Some(bad));
            assert_eq!(trace.len(), 32);
            assert!(parse(tp.as_bytes()).is_some(), "{tp}");
        }
    }
}
