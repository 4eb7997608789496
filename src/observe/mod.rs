//! Observability: request ids (metrics and access logs plug in here).

pub mod request_id;
