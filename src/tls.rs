//! TLS with rustls (the backend pingora-rustls is built on, with the `ring` provider).
//!
//! Downstream: a [`CertResolver`] picks the certificate by SNI from a [`CertSet`] held in an
//! ArcSwap. `snapshot::build` loads the set from the files named in `server.tls`; the
//! runtime swaps it in together with the snapshot, so a reload serves new certificates to
//! new connections without a restart, and a bad file fails the reload and keeps the old set.
//!
//! Upstream: the CA certificates of an upstream's `ca_file`, in the form Pingora's peer
//! options take.

use crate::config::{CertificateConfig, Problems, TlsConfig, TlsVersion};
use arc_swap::ArcSwapOption;
use pingora_core::utils::tls::WrappedX509;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// One loaded certificate.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names (lowercase) from the SAN extension, else the CN; `*.example.com` wildcards.
    pub names: Vec<String>,
    /// `notAfter` of the leaf, for status and logs.
    pub not_after: String,
}

/// The certificates served on the TLS listener, compiled from `server.tls`.
#[derive(Debug)]
pub struct CertSet {
    /// In config order; the first is the default.
    pub certs: Vec<LoadedCert>,
    exact: HashMap<String, usize>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<String, usize>,
    pub min_version: TlsVersion,
}

impl CertSet {
    fn new(certs: Vec<LoadedCert>, min_version: TlsVersion) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for n in &c.names {
                // the first certificate naming a host wins
                match n.strip_prefix("*.") {
                    Some(base) => wildcard.entry(base.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        CertSet {
            certs,
            exact,
            wildcard,
            min_version,
        }
    }

    /// The certificate for this SNI (exact name, then a one-label wildcard, then the default).
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let idx = sni
            .and_then(|name| {
                let lower;
                let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                    lower = name.to_ascii_lowercase();
                    lower.as_str()
                } else {
                    name
                };
                let name = name.strip_suffix('.').unwrap_or(name);
                self.exact.get(name).copied().or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.wildcard.get(parent).copied()
                })
            })
            .unwrap_or(0);
        self.certs.get(idx).map(|c| &c.key)
    }
}

/// The rustls certificate resolver of the TLS listener. Its set is replaced on reload.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: ArcSwapOption<CertSet>,
}

impl CertResolver {
    pub fn new() -> CertResolver {
        CertResolver::default()
    }

    pub fn store(&self, set: Arc<CertSet>) {
        self.current.store(Some(set));
    }

    pub fn current(&self) -> Option<Arc<CertSet>> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let guard = self.current.load();
        guard.as_ref()?.select(hello.server_name()).cloned()
    }
}

/// How long a client may take to send its ClientHello when it has to be inspected.
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Enforces `min_version: "1.3"` before the handshake. Pingora's rustls listener always
/// enables TLS 1.2 and 1.3 (its `TlsSettings` takes no version list), and rustls picks 1.3
/// whenever the client offers it, so a client is held to 1.3 by refusing a ClientHello
/// whose `supported_versions` lacks it. With the default `"1.2"` nothing is read here.
pub struct MinVersionGate {
    pub resolver: Arc<CertResolver>,
}

#[async_trait::async_trait]
impl pingora_core::listeners::PreTlsProcess for MinVersionGate {
    async fn process(
        &self,
        stream: &mut pingora_core::protocols::l4::stream::Stream,
    ) -> pingora_error::Result<()> {
        use pingora_error::{Error, ErrorType};
        use tokio::io::AsyncWriteExt;
        let tls13_only = self
            .resolver
            .current()
            .is_some_and(|s| s.min_version == TlsVersion::Tls13);
        if !tls13_only {
            return Ok(());
        }
        let (raw, offers) = match tokio::time::timeout(HELLO_TIMEOUT, read_client_hello(stream))
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Error::e_explain(
                    ErrorType::TLSHandshakeFailure,
                    format!("reading the ClientHello: {e}"),
                )
            }
            Err(_) => return Error::e_explain(ErrorType::TLSHandshakeTimedout, "no ClientHello"),
        };
        // hand the bytes back: rustls reads them as if nothing happened
        stream.rewind(&raw);
        if offers == Some(false) {
            // fatal alert protocol_version (70), as a TLS 1.2 record
            let _ = stream
                .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70])
                .await;
            let _ = stream.flush().await;
            return Error::e_explain(
                ErrorType::TLSHandshakeFailure,
                "the client does not offer TLS 1.3 (min_version 1.3)",
            );
        }
        // TLS 1.3 offered, or not a ClientHello we understand: rustls decides
        Ok(())
    }
}

/// Read the TLS records holding the ClientHello: (the raw bytes read, whether it offers
/// TLS 1.3; `None` when it is not a well-formed ClientHello).
async fn read_client_hello<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> std::io::Result<(Vec<u8>, Option<bool>)> {
    use tokio::io::AsyncReadExt;
    const MAX: usize = 64 * 1024;
    let mut raw = Vec::with_capacity(1024);
    let mut hs = Vec::new();
    loop {
        let mut hdr = [0u8; 5];
        s.read_exact(&mut hdr).await?;
        raw.extend_from_slice(&hdr);
        let len = u16::from_be_bytes([hdr[3], hdr[4]]) as usize;
        // not a handshake record (e.g. plain HTTP on the TLS port), or an absurd one
        if hdr[0] != 0x16 || len == 0 || len > 16_384 + 2048 {
            return Ok((raw, None));
        }
        let start = raw.len();
        raw.resize(start + len, 0);
        s.read_exact(&mut raw[start..]).await?;
        hs.extend_from_slice(&raw[start..]);
        if hs.len() >= 4 {
            let need = 4 + u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if hs[0] != 1 || need > MAX {
                return Ok((raw, None));
            }
            if hs.len() >= need {
                return Ok((raw, hello_offers_tls13(&hs[4..need])));
            }
        }
        if raw.len() > MAX {
            return Ok((raw, None));
        }
    }
}

/// Does this ClientHello body list TLS 1.3 in `supported_versions`?
pub fn hello_offers_tls13(body: &[u8]) -> Option<bool> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    fn len16(b: &mut &[u8]) -> Option<usize> {
        take(b, 2).map(|x| u16::from_be_bytes([x[0], x[1]]) as usize)
    }
    let mut b = body;
    take(&mut b, 2 + 32)?; // legacy_version, random
    let sid = *take(&mut b, 1)?.first()? as usize;
    take(&mut b, sid)?;
    let suites = len16(&mut b)?;
    take(&mut b, suites)?;
    let comp = *take(&mut b, 1)?.first()? as usize;
    take(&mut b, comp)?;
    if b.is_empty() {
        return Some(false); // no extensions: TLS 1.2 at most
    }
    let ext_len = len16(&mut b)?;
    let mut exts = take(&mut b, ext_len)?;
    while !exts.is_empty() {
        let ty = len16(&mut exts)?;
        let n = len16(&mut exts)?;
        let data = take(&mut exts, n)?;
        if ty == 0x002b {
            let (&list_len, versions) = data.split_first()?;
            let versions = versions.get(..list_len as usize)?;
            return Some(versions.chunks_exact(2).any(|v| v == [0x03, 0x04]));
        }
    }
    Some(false)
}

/// Load `server.tls` (problems relative to it).
pub fn load(cfg: &TlsConfig, p: &mut Problems) -> Option<CertSet> {
    let before = p.len();
    let mut entries: Vec<(String, CertificateConfig)> = Vec::new();
    match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            if !cfg.certificates.is_empty() {
                p.push(
                    "cert",
                    "give either `cert` + `key` or `certificates`, not both",
                );
            }
            entries.push((
                String::new(),
                CertificateConfig {
                    cert: cert.clone(),
                    key: key.clone(),
                },
            ));
        }
        (Some(_), None) => p.push("cert", "`cert` needs `key`"),
        (None, Some(_)) => p.push("key", "`key` needs `cert`"),
        (None, None) => {
            if cfg.certificates.is_empty() {
                p.push(
                    "certificates",
                    "at least one certificate is needed (`certificates: [{ cert, key }]`)",
                );
            }
        }
    }
    for (i, c) in cfg.certificates.iter().enumerate() {
        entries.push((format!("certificates[{i}]."), c.clone()));
    }
    if cfg.listen.parse::<std::net::SocketAddr>().is_err() {
        p.push(
            "listen",
            format!("`{}` is not an `ip:port` address", cfg.listen),
        );
    }
    let mut certs = Vec::with_capacity(entries.len());
    for (prefix, c) in &entries {
        match load_pair(c) {
            Ok(lc) => certs.push(lc),
            Err((field, msg)) => p.push(format!("{prefix}{field}"), msg),
        }
    }
    if p.len() != before {
        return None;
    }
    Some(CertSet::new(certs, cfg.min_version))
}

/// Load one certificate chain and its key; errors name the field (`cert` or `key`).
fn load_pair(c: &CertificateConfig) -> Result<LoadedCert, (&'static str, String)> {
    pingora_core::tls::install_default_crypto_provider();
    let cert_pem =
        std::fs::read(&c.cert).map_err(|e| ("cert", format!("cannot read `{}`: {e}", c.cert)))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ("cert", format!("`{}` is not valid PEM: {e}", c.cert)))?;
    let Some(leaf) = chain.first() else {
        return Err(("cert", format!("no certificate found in `{}`", c.cert)));
    };
    let (names, not_after) =
        cert_names(leaf).map_err(|e| ("cert", format!("`{}`: {e}", c.cert)))?;
    let key_pem =
        std::fs::read(&c.key).map_err(|e| ("key", format!("cannot read `{}`: {e}", c.key)))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| ("key", format!("no usable private key in `{}`: {e}", c.key)))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| ("key", format!("`{}`: unsupported private key: {e}", c.key)))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err((
                "key",
                format!("`{}` is not the private key of `{}`", c.key, c.cert),
            ))
        }
    }
    Ok(LoadedCert {
        key: Arc::new(ck),
        names,
        not_after,
    })
}

/// The host names a certificate is valid for and its expiry.
fn cert_names(der: &CertificateDer<'_>) -> Result<(Vec<String>, String), String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer;
    let (_, x509) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        for cn in x509.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let validity = x509.validity();
    if !validity.is_valid() {
        log::warn!(
            "certificate for {:?} is not valid now (valid {} to {})",
            names,
            validity.not_before,
            validity.not_after
        );
    }
    Ok((names, validity.not_after.to_string()))
}

/// The CA certificates of `path` for an upstream's peer options, and a digest of them (so
/// pooled connections verified against other CAs are never reused).
pub fn load_ca_file(path: &str) -> Result<(Arc<[WrappedX509]>, u64), String> {
    use x509_parser::prelude::FromDer;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{path}` is not valid PEM: {e}"))?;
    if ders.is_empty() {
        return Err(format!("no certificate found in `{path}`"));
    }
    let mut out = Vec::with_capacity(ders.len());
    for d in &ders {
        // WrappedX509::new panics on bad DER: parse first
        if let Err(e) = x509_parser::certificate::X509Certificate::from_der(d.as_ref()) {
            return Err(format!("`{path}`: a certificate cannot be parsed: {e}"));
        }
        // and rustls must accept it as a trust anchor
        let mut store = rustls::RootCertStore::empty();
        if let Err(e) = store.add(d.clone()) {
            return Err(format!("`{path}`: not usable as a CA certificate: {e}"));
        }
        out.push(WrappedX509::new(
            d.as_ref().to_vec(),
            pingora_core::utils::tls::parse_x509,
        ));
    }
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pem.hash(&mut h);
        h.finish()
    };
    Ok((Arc::from(out), digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first flight of a rustls client with these versions.
    fn client_hello(versions: &[&'static rustls::SupportedProtocolVersion]) -> Vec<u8> {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(cfg),
            rustls::pki_types::ServerName::try_from("a.test").unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    async fn offers(bytes: &[u8]) -> Option<bool> {
        let mut r = bytes;
        let (raw, offers) = read_client_hello(&mut r).await.unwrap();
        assert_eq!(raw, bytes, "reads exactly the ClientHello");
        offers
    }

    #[tokio::test]
    async fn client_hello_versions() {
        assert_eq!(
            offers(&client_hello(rustls::ALL_VERSIONS)).await,
            Some(true)
        );
        assert_eq!(
            offers(&client_hello(&[&rustls::version::TLS13])).await,
            Some(true)
        );
        assert_eq!(
            offers(&client_hello(&[&rustls::version::TLS12])).await,
            Some(false)
        );
        // plain HTTP is no ClientHello
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(read_client_hello(&mut r).await.unwrap().1, None);
        // truncated
        let hello = client_hello(rustls::ALL_VERSIONS);
        assert_eq!(hello_offers_tls13(&hello[9..40]), None);
    }
}
