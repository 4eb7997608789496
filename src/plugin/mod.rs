//! Extending the gateway: filters that run in a route's request path.

pub mod wasm;
