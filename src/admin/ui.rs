//! `GET /ui`: a read-only status page served from the binary (no CDN, no build step).
//!
//! The page itself holds no data; its script reads `/admin/status` every two seconds with the
//! admin bearer token (from `#token=...` in the address, or typed into the page and kept for
//! the tab's session), and draws the last minute of requests/s, 5xx ratio and p50/p99 from
//! the differences between polls.

use http::{Response, StatusCode};

const PAGE: &str = include_str!("ui.html");

pub fn page() -> Response<Vec<u8>> {
    let mut r = Response::new(PAGE.as_bytes().to_vec());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    // everything the page needs comes from this listener
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
        ),
    );
    r
}
