//! The gateway's own answer to a request it will not proxy (a 4xx or 5xx it writes
//! itself). A leaf: the domain modules return it, the request path writes it.

/// A response the gateway answers itself instead of proxying.
#[derive(Debug, Clone)]
pub struct Reject {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub headers: Vec<(&'static str, String)>,
}

impl Reject {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Reject {
        Reject {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reject {
        self.headers.push((name, value.into()));
        self
    }
}

/// The body of every answer the gateway makes itself: `{"error": code, "message": text,
/// "request_id": id}`.
pub fn error_body(code: &str, message: &str, request_id: &str) -> Vec<u8> {
    let v = serde_json::json!({ "error": code, "message": message, "request_id": request_id });
    serde_json::to_vec(&v).unwrap_or_default()
}
