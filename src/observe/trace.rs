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

/// This hop's trace context.
#[derive(Debug, Clone, Default)]
pub struct TraceContext {
    /// 32 hex digits.
    pub trace_id: String,
    /// The `traceparent` sent upstream: the trace id with this hop's span id.
    pub traceparent: String,
    /// This hop's span id (in `traceparent`, and the server span's id when traced).
    pub span_id: [u8; 8],
    /// The caller's span, from a valid incoming `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// The caller asked for sampling (flags bit 0); `None` without a caller.
    pub parent_sampled: Option<bool>,
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The trace id as 16 bytes.
pub fn trace_id_bytes(hex: &str) -> [u8; 16] {
    hex_bytes::<16>(hex).unwrap_or([0; 16])
}

/// Continue the incoming trace, or start one.
pub fn next(incoming: Option<&[u8]>) -> TraceContext {
    let span: [u8; 8] = rand::random::<u64>().max(1).to_be_bytes();
    match incoming.and_then(parse) {
        Some((trace, flags)) => {
            let parent = incoming
                .and_then(|v| std::str::from_utf8(&v[36..52]).ok())
                .and_then(hex_bytes::<8>);
            let sampled = hex_bytes::<1>(flags).map(|f| f[0] & 1 == 1);
            TraceContext {
                trace_id: trace.to_string(),
                traceparent: traceparent(trace, &span, flags),
                span_id: span,
                parent_span_id: parent,
                parent_sampled: sampled,
            }
        }
        None => {
            let mut trace = String::with_capacity(32);
            push_hex(&mut trace, &rand::random::<u128>().max(1).to_be_bytes());
            let tp = traceparent(&trace, &span, "01");
            TraceContext {
                trace_id: trace,
                traceparent: tp,
                span_id: span,
                parent_span_id: None,
                parent_sampled: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_trace_id_new_span() {
        let inc = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = next(Some(inc));
        let (trace, tp) = (t.trace_id, t.traceparent);
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(t.parent_sampled, Some(true));
        assert_eq!(&tp[36..52], &{
            let mut h = String::new();
            push_hex(&mut h, &t.span_id);
            h
        });
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
            let t = next(Some(bad));
            let (trace, tp) = (t.trace_id, t.traceparent);
            assert_eq!(trace.len(), 32);
            assert!(t.parent_span_id.is_none());
            assert!(parse(tp.as_bytes()).is_some(), "{tp}");
        }
    }
}
