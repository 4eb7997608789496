//! RS256 signature checks per second with jsonwebtoken's two backends, interleaved in one
//! run: `rust_crypto` (pure-Rust `rsa`, what the gateway used before) and `aws_lc_rs` (what
//! it uses now). Run with `./load-tests/jwt-backends.sh`.
use jsonwebtoken::crypto::{aws_lc, rust_crypto, CryptoProvider};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use std::time::Instant;

fn median_us(p: &CryptoProvider, key: &DecodingKey, msg: &[u8], sig: &Vec<u8>) -> f64 {
    let mut runs = Vec::new();
    for _ in 0..15 {
        let n = 200;
        let t = Instant::now();
        for _ in 0..n {
            let v = (p.verifier_factory)(&Algorithm::RS256, key).unwrap();
            assert!(v.verify(msg, sig).is_ok());
        }
        runs.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    runs[runs.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (private, public) = match args.as_slice() {
        [_, a, b] => (std::fs::read(a).unwrap(), std::fs::read(b).unwrap()),
        _ => panic!("usage: jwt-backends PRIVATE.pem PUBLIC.pem"),
    };
    let enc = EncodingKey::from_rsa_pem(&private).unwrap();
    let dec = DecodingKey::from_rsa_pem(&public).unwrap();
    let msg = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEiLCJhdWQiOiJhcGkiLCJleHAiOjQxMDI0NDQ4MDB9";
    let signer = (aws_lc::DEFAULT_PROVIDER.signer_factory)(&Algorithm::RS256, &enc).unwrap();
    let sig: Vec<u8> = signature::Signer::try_sign(&*signer, msg).unwrap();
    // interleave the two backends, three rounds each
    for round in 1..=3 {
        let r = median_us(&rust_crypto::DEFAULT_PROVIDER, &dec, msg, &sig);
        let a = median_us(&aws_lc::DEFAULT_PROVIDER, &dec, msg, &sig);
        println!("round {round}: rust_crypto {r:.1} us, aws_lc_rs {a:.1} us, ratio {:.1}x", r / a);
    }
}
