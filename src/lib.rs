//! Portcullis: an edge proxy and API gateway on Cloudflare's Pingora.
//!
//! Data flows one way: config file → model ([`config`]) → compile ([`snapshot::build`]) →
//! [`snapshot::Snapshot`] → request path ([`proxy::Gateway`]). ARCHITECTURE.md at the top
//! of the repository draws the layers and says which module owns what.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod fetch;
pub mod hdr;
pub mod lifecycle;
pub mod net;
pub mod observe;
pub mod plugin;
pub mod proxy;
pub mod ratelimit;
pub mod redis_link;
pub mod reject;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod supervisor;
pub mod tls;
pub mod upstream;
pub mod view;

pub use cli::run_with;

/// A new API key (256 random bits, URL-safe base64) and the config line holding its hash.
pub fn keygen(id: &str) -> (String, String) {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let bytes: [u8; 32] = rand::random();
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let line = format!("- {{ id: {id}, sha256: \"{digest}\" }}");
    (key, line)
}
