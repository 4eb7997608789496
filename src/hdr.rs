//! Header values for addresses, written without the `fmt` machinery (the request path
//! formats a client IP for every request).

use http::HeaderValue;
use std::net::{IpAddr, SocketAddr};

/// Dotted quad into `out`; returns the length written (at most 15).
fn write_v4(ip: std::net::Ipv4Addr, out: &mut [u8; 21]) -> usize {
    let mut n = 0;
    for (i, octet) in ip.octets().iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        let mut b = itoa::Buffer::new();
        let s = b.format(*octet).as_bytes();
        out[n..n + s.len()].copy_from_slice(s);
        n += s.len();
    }
    n
}

fn value(bytes: &[u8]) -> HeaderValue {
    // digits, dots, colons and brackets are always valid header bytes
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `203.0.113.7` or `2001:db8::1`.
pub fn ip_header(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 21];
            let n = write_v4(v4, &mut buf);
            value(&buf[..n])
        }
        IpAddr::V6(v6) => value(v6.to_string().as_bytes()),
    }
}

/// `203.0.113.7:8080` or `[2001:db8::1]:8080`.
pub fn socket_addr_header(addr: SocketAddr) -> HeaderValue {
    match addr {
        SocketAddr::V4(a) => {
            let mut buf = [0u8; 21];
            let mut n = write_v4(*a.ip(), &mut buf);
            buf[n] = b':';
            n += 1;
            let mut b = itoa::Buffer::new();
            let port = b.format(a.port()).as_bytes();
            buf[n..n + port.len()].copy_from_slice(port);
            n += port.len();
            value(&buf[..n])
        }
        SocketAddr::V6(_) => value(addr.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_as_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "203.0.113.255",
            "10.20.30.4",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header(ip).to_str().unwrap(), ip.to_string());
        }
        for a in ["255.255.255.255:65535", "127.0.0.1:0", "[2001:db8::1]:8443"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(socket_addr_header(a).to_str().unwrap(), a.to_string());
        }
    }
}
