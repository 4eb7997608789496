//! IP networks as the config writes them: a CIDR block or a single address.

use crate::config::Problems;
use ipnet::IpNet;
use std::net::IpAddr;

/// `10.0.0.0/8`, `::1/128` or a bare address (a /32 or /128). Host bits are dropped.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))
}

/// Every entry of `list`; each bad one is reported at `{path}[i]`.
pub fn parse_nets(list: &[String], path: &str, p: &mut Problems) -> Vec<IpNet> {
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        match parse_net(s) {
            Ok(n) => out.push(n),
            Err(e) => p.push(format!("{path}[{i}]"), e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_net;

    #[test]
    fn cidr_and_bare_addresses() {
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
    }
}
