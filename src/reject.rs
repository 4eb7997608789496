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
