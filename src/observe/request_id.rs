//! Request ids: keep a valid incoming `X-Request-Id`, else make a new one.

use std::cell::Cell;

/// 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

thread_local! {
    static STATE: Cell<(u64, u64)> = Cell::new((rand::random::<u64>() | 1, 0));
}

/// A new 32-hex-digit id: a per-thread random 64-bit prefix and a 64-bit mixed counter.
pub fn generate() -> String {
    let (seed, n) = STATE.with(|s| {
        let (seed, n) = s.get();
        s.set((seed, n.wrapping_add(1)));
        (seed, n)
    });
    // splitmix64 of the counter so consecutive ids do not look sequential
    let mut z = n.wrapping_add(seed).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut out = String::with_capacity(32);
    push_hex(&mut out, seed);
    push_hex(&mut out, z);
    out
}

fn push_hex(out: &mut String, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        assert!(is_valid(b"abc-123_x.y:z"));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"a b"));
        assert!(!is_valid(&[b'a'; 129]));
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 32);
        assert!(is_valid(a.as_bytes()));
        assert_ne!(a, b);
    }
}
