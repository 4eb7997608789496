//! Observability: metrics, the access log, request ids and trace context.

pub mod access_log;
pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod request_id;
pub mod trace;
