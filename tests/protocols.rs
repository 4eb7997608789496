//! Protocols through the real binary: TLS termination (SNI selection, versions, certificate
//! reload), HTTP/2 over TLS (ALPN) and h2c, gRPC with trailers to an HTTP/2 upstream, TLS and
//! HTTP/2 upstreams with certificate verification, and WebSockets (auth, rate limits, idle
//! timeout, config reload).

mod common;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------- certificates

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Ca {
    cert: Certificate,
    key: KeyPair,
    pem: String,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    fn issue(&self, names: &[&str]) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    fn write(&self, dir: &Path) -> String {
        let p = dir.join("ca.pem");
        std::fs::write(&p, &self.pem).unwrap();
        p.display().to_string()
    }
}

impl Leaf {
    /// Write `<stem>.crt` and `<stem>.key`; returns their paths.
    fn write(&self, dir: &Path, stem: &str) -> (String, String) {
        let c = dir.join(format!("{stem}.crt"));
        let k = dir.join(format!("{stem}.key"));
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    fn server_config(&self, alpn: &[&[u8]]) -> rustls::ServerConfig {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        cfg
    }
}

/// Accepts any server certificate: these clients look at *which* certificate is served.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS handshake with the gateway: `sni`, these TLS versions, this ALPN offer.
async fn tls_connect(
    port: u16,
    sni: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> std::io::Result<ClientTls> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

fn served(s: &ClientTls) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn served_for(port: u16, sni: &str) -> Vec<u8> {
    let s = tls_connect(port, sni, rustls::ALL_VERSIONS, &[b"http/1.1"])
        .await
        .unwrap_or_else(|e| panic!("handshake for {sni}: {e}"));
    served(&s)
}

/// An HTTPS client that trusts `ca_pem` and sends `host` to 127.0.0.1:`port`.
fn https_client(ca_pem: &str, host: &str, port: u16, http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve(host, SocketAddr::from(([127, 0, 0, 1], port)));
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// A TLS 1.1 ClientHello (no supported_versions extension, TLS 1.0/1.1 suites only).
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = Vec::new();
    hello.extend_from_slice(&[0x03, 0x02]); // client_version TLS 1.1
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0xc0, 0x13]); // suites
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    let name = b"a.test";
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut ext = vec![0x00, 0x00];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hello.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&hello);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Send `bytes` on a new connection; what came back before the server closed it
/// (`None`: still open after 5 s).
async fn send_and_read_to_close(port: u16, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await {
        Ok(_) => Some(buf),
        Err(_) => None,
    }
}

fn echo_headers(v: &Value) -> &Value {
    &v["headers"]
}

// ---------------------------------------------------------------- TLS termination

#[tokio::test]
async fn tls_sni_alpn_versions_and_forwarded_proto() {
    let ca = Ca::new("Portcullis Test CA");
    let pki = tempfile::tempdir().unwrap();
    let a = ca.issue(&["a.test"]);
    let b = ca.issue(&["b.test", "*.b.test"]);
    let (a_cert, a_key) = a.write(pki.path(), "a");
    let (b_cert, b_key) = b.write(pki.path(), "b");
    let up = Upstream::start("u").await;
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  tls:
    listen: "127.0.0.1:{tls_port}"
    certificates:
      - {{ cert: "{a_cert}", key: "{a_key}" }}
      - {{ cert: "{b_cert}", key: "{b_key}" }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
routes:
  - {{ match: {{ path: "/**" }}, upstream: u }}
"#,
        up = up.addr
    ))
    .await;

    // SNI picks the certificate; unknown names and names in another case too
    assert_eq!(served_for(tls_port, "a.test").await, a.der);
    assert_eq!(served_for(tls_port, "b.test").await, b.der);
    assert_eq!(served_for(tls_port, "api.b.test").await, b.der, "wildcard");
    assert_eq!(
        served_for(tls_port, "B.TEST").await,
        b.der,
        "case-insensitive"
    );
    assert_eq!(
        served_for(tls_port, "unknown.test").await,
        a.der,
        "the first certificate is the default"
    );

    // ALPN: h2 when offered, http/1.1 otherwise
    let s = tls_connect(
        tls_port,
        "a.test",
        rustls::ALL_VERSIONS,
        &[b"h2", b"http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let s = tls_connect(tls_port, "a.test", rustls::ALL_VERSIONS, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    // TLS 1.2 and 1.3 are accepted
    let s = tls_connect(tls_port, "a.test", &[&rustls::version::TLS12], &[])
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let s = tls_connect(tls_port, "a.test", &[&rustls::version::TLS13], &[])
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // TLS 1.1: refused with an alert (record type 21), never a ServerHello
    let back = send_and_read_to_close(tls_port, &tls11_client_hello())
        .await
        .expect("the gateway closes a TLS 1.1 handshake");
    assert!(
        back.is_empty() || back[0] == 0x15,
        "TLS 1.1 answered with {:02x?}",
        &back[..back.len().min(16)]
    );

    // plain HTTP on the TLS port: no HTTP answer, the connection is closed
    let back = send_and_read_to_close(tls_port, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("the gateway closes a plain-HTTP connection on the TLS port");
    assert!(
        !String::from_utf8_lossy(&back).contains("HTTP/1.1"),
        "{back:?}"
    );

    // verified HTTPS, HTTP/1.1 and HTTP/2: X-Forwarded-Proto is https upstream
    for h1 in [true, false] {
        let c = https_client(&ca.pem, "a.test", tls_port, h1);
        let r = c
            .get(format!("https://a.test:{tls_port}/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let want = if h1 {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(r.version(), want);
        assert!(r.headers().contains_key("x-request-id"));
        // HSTS (the default security_headers.hsts) on responses to TLS requests
        assert_eq!(
            r.headers()
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap()),
            Some("max-age=31536000"),
            "HSTS on TLS responses"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(echo_headers(&v)["x-forwarded-proto"], "https", "{v}");
        assert_eq!(
            echo_headers(&v)["x-forwarded-host"],
            format!("a.test:{tls_port}")
        );
    }
    // and plain HTTP says http, without HSTS (meaningless, and ignored by browsers, there)
    let (s, h, v) = get_json(&client(), &gw.url("/x")).await;
    assert_eq!(s, 200);
    assert!(h.get("strict-transport-security").is_none(), "{h:?}");
    assert_eq!(echo_headers(&v)["x-forwarded-proto"], "http");
    // the gateway survived the broken handshakes
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}

#[tokio::test]
async fn h2_over_tls_and_h2c() {
    let ca = Ca::new("Portcullis Test CA");
    let pki = tempfile::tempdir().unwrap();
    let (cert, key) = ca.issue(&["a.test"]).write(pki.path(), "a");
    let up = Upstream::start("u").await;
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  tls: {{ listen: "127.0.0.1:{tls_port}", cert: "{cert}", key: "{key}" }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
routes:
  - {{ match: {{ path: "/api/**" }}, upstream: u }}
"#,
        up = up.addr
    ))
    .await;

    // HTTP/2 over TLS (ALPN), several streams on one connection
    let c = https_client(&ca.pem, "a.test", tls_port, false);
    for i in 0..3 {
        let r = c
            .post(format!("https://a.test:{tls_port}/api/tls/{i}"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["path"], format!("/api/tls/{i}"));
        assert_eq!(v["body_bytes"], 7);
    }

    // h2c: HTTP/2 with prior knowledge on the plain port, which still speaks HTTP/1.1
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2c.get(gw.url("/api/h2c")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/api/h2c");
    assert_eq!(echo_headers(&v)["x-forwarded-proto"], "http");
    let r = h2c.get(gw.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404, "gateway errors over h2c too");
    assert_eq!(r.headers()["content-type"], "application/json");

    let r = client().get(gw.url("/api/h1")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn h2c_can_be_turned_off() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  h2c: false
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
routes:
  - {{ match: {{ path: "/**" }}, upstream: u }}
"#,
        up = up.addr
    ))
    .await;
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(h2c.get(gw.url("/x")).send().await.is_err());
    assert_eq!(
        client().get(gw.url("/x")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn certificates_reload_without_restart() {
    let ca = Ca::new("Portcullis Test CA");
    let pki = tempfile::tempdir().unwrap();
    let v1 = ca.issue(&["a.test"]);
    let (cert, key) = v1.write(pki.path(), "a");
    let up = Upstream::start("u").await;
    let tls_port = free_port();
    let config = |min: &str| {
        format!(
            r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
  tls: {{ listen: "127.0.0.1:{tls_port}", cert: "{cert}", key: "{key}", min_version: {min} }}
upstreams:
  u: {{ backends: [{{ addr: "{up}" }}] }}
routes:
  - {{ match: {{ path: "/**" }}, upstream: u }}
"#,
            up = up.addr
        )
    };
    let gw = Gateway::start(&config("\"1.2\"")).await;
    // the process that serves, asked on the admin listener (not the Child handle we hold)
    let pid = healthz_pid(&gw).await.expect("/healthz answers with a pid");
    assert_eq!(pid, gw.pid() as u64);
    let mut open = tls_connect(tls_port, "a.test", rustls::ALL_VERSIONS, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(served(&open), v1.der);

    // renewed on disk, then reloaded: new connections get it, no restart
    let v2 = ca.issue(&["a.test"]);
    v2.write(pki.path(), "a");
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(served_for(tls_port, "a.test").await, v2.der);
    assert_eq!(
        healthz_pid(&gw).await,
        Some(pid),
        "the same process serves after the reload: no restart"
    );
    let (_, status) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(
        status["tls"]["certificates"][0]["names"][0], "a.test",
        "{status}"
    );
    assert_eq!(status["tls"]["min_version"], "1.2");
    // a connection made before the reload keeps working
    open.write_all(b"GET /before HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    open.read_to_end(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );

    // a broken certificate file fails the reload with its key path; v2 stays
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("server.tls.cert"), "{v}");
    assert_eq!(served_for(tls_port, "a.test").await, v2.der);
    // a key that is not the certificate's
    v2.write(pki.path(), "a");
    std::fs::write(&key, ca.issue(&["a.test"]).key_pem).unwrap();
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("server.tls.key"), "{v}");
    assert_eq!(served_for(tls_port, "a.test").await, v2.der);

    // min_version reloads too: TLS 1.2 clients are then refused
    v2.write(pki.path(), "a");
    gw.write_config(&config("\"1.3\""));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    let (_, status) = gw.admin(reqwest::Method::GET, "/admin/status", None).await;
    assert_eq!(status["tls"]["min_version"], "1.3", "{status}");
    let refused = tls_connect(tls_port, "a.test", &[&rustls::version::TLS12], &[])
        .await
        .expect_err("TLS 1.2 refused with min_version 1.3");
    assert!(
        refused.to_string().contains("ProtocolVersion"),
        "refused with a protocol_version alert: {refused}"
    );
    let s = tls_connect(tls_port, "a.test", rustls::ALL_VERSIONS, &[])
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // verified HTTPS still works end to end
    let r = https_client(&ca.pem, "a.test", tls_port, false)
        .get(format!("https://a.test:{tls_port}/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn tls_config_errors_name_their_keys() {
    let ca = Ca::new("Portcullis Test CA");
    let pki = tempfile::tempdir().unwrap();
    let (cert, key) = ca.issue(&["a.test"]).write(pki.path(), "a");
    let base = |tls: &str| {
        format!(
            "server:\n  listen: [\"127.0.0.1:8080\"]\n  tls: {tls}\nupstreams:\n  u: {{ backends: [{{ addr: \"127.0.0.1:1\" }}] }}\nroutes:\n  - {{ match: {{ path: /x }}, upstream: u }}\n"
        )
    };
    let (ok, out) = validate(&base(&format!(
        "{{ listen: \"127.0.0.1:8443\", cert: \"{cert}\", key: \"{key}\", min_version: 1.3 }}"
    )));
    assert!(ok, "{out}");
    let cases = [
        (
            format!("{{ listen: \"127.0.0.1:8443\", certificates: [{{ cert: \"{cert}\", key: \"/nope.key\" }}] }}"),
            "server.tls.certificates[0].key",
        ),
        (
            format!("{{ listen: \"127.0.0.1:8443\", cert: \"{cert}\" }}"),
            "server.tls.cert",
        ),
        (
            "{ listen: \"127.0.0.1:8443\" }".to_string(),
            "server.tls.certificates",
        ),
        (
            format!("{{ listen: \"127.0.0.1:8443\", cert: \"{cert}\", key: \"{key}\", min_version: \"1.1\" }}"),
            "min_version",
        ),
        (
            format!("{{ listen: \"127.0.0.1:8443\", cert: \"{cert}\", key: \"{key}\", ciphers: x }}"),
            "ciphers",
        ),
        (
            format!("{{ listen: \"nowhere\", cert: \"{cert}\", key: \"{key}\" }}"),
            "server.tls.listen",
        ),
    ];
    for (tls, want) in cases {
        assert_refused(&base(&tls), &[want]);
    }
    // upstream TLS keys
    let up = |extra: &str| {
        format!(
            "upstreams:\n  u: {{ backends: [{{ addr: \"127.0.0.1:1\" }}]{extra} }}\nroutes:\n  - {{ match: {{ path: /x }}, upstream: u }}\n"
        )
    };
    let (ok, out) = validate(&up(&format!(
        ", tls: true, ca_file: \"{}\", protocol: h2, timeouts: {{ websocket_idle: 5m }}",
        ca.write(pki.path())
    )));
    assert!(ok, "{out}");
    for (extra, want) in [
        (", sni: a.test", "upstreams.u.sni"),
        (", tls: true, ca_file: /nope.pem", "upstreams.u.ca_file"),
        (", protocol: h3", "protocol"),
        (
            ", timeouts: { websocket_idle: 0s }",
            "upstreams.u.timeouts.websocket_idle",
        ),
    ] {
        assert_refused(&up(extra), &[want]);
    }
}

// ---------------------------------------------------------------- gRPC

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

fn grpc_unframe(mut b: Bytes) -> Vec<u8> {
    assert!(b.len() >= 5, "short gRPC frame: {b:?}");
    assert_eq!(b.get_u8(), 0, "uncompressed");
    let n = b.get_u32() as usize;
    assert_eq!(b.len(), n, "one message");
    b.to_vec()
}

type GrpcBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A unary gRPC service over h2c: `Greeter/SayHello` answers `hello <name>`, or
/// NOT_FOUND (5) in the trailers for `missing`.
async fn grpc_handle(req: Request<Incoming>) -> Result<Response<GrpcBody>, Infallible> {
    let version = format!("{:?}", req.version());
    let te = req
        .headers()
        .get("te")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut trailers = http::HeaderMap::new();
    let reply = if !grpc || path != "/grpc.test.Greeter/SayHello" {
        trailers.insert("grpc-status", "12".parse().unwrap());
        trailers.insert("grpc-message", "unimplemented".parse().unwrap());
        Bytes::new()
    } else {
        let name = grpc_unframe(body);
        if name == b"missing" {
            trailers.insert("grpc-status", "5".parse().unwrap());
            trailers.insert("grpc-message", "no such name".parse().unwrap());
            Bytes::new()
        } else {
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("grpc-message", "ok".parse().unwrap());
            let mut m = b"hello ".to_vec();
            m.extend_from_slice(&name);
            grpc_frame(&m)
        }
    };
    let body = Full::new(reply)
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("x-upstream-version", version)
        .header("x-upstream-te", te)
        .body(body)
        .unwrap())
}

async fn grpc_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(grpc_handle))
                    .await;
            });
        }
    });
    addr
}

/// One unary call over h2c: (status, headers, message, trailers).
async fn grpc_call(
    port: u16,
    path: &str,
    msg: &[u8],
) -> (u16, http::HeaderMap, Bytes, Option<http::HeaderMap>) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(msg)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("gRPC response in time")
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (status, headers, collected.to_bytes(), trailers)
}

#[tokio::test]
async fn grpc_unary_passes_through_with_trailers() {
    let grpc = grpc_server().await;
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  greeter: {{ backends: [{{ addr: "{grpc}" }}], protocol: h2 }}
routes:
  - {{ match: {{ path: "/grpc.test.Greeter/**" }}, upstream: greeter }}
"#
    ))
    .await;

    let (status, headers, body, trailers) =
        grpc_call(gw.port, "/grpc.test.Greeter/SayHello", b"world").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["x-upstream-version"], "HTTP/2.0", "h2c upstream");
    assert_eq!(
        headers["x-upstream-te"], "trailers",
        "te: trailers forwarded"
    );
    assert_eq!(grpc_unframe(body), b"hello world");
    let trailers = trailers.expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");

    // an application error travels in the trailers too
    let (status, _, body, trailers) =
        grpc_call(gw.port, "/grpc.test.Greeter/SayHello", b"missing").await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    let trailers = trailers.expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "5");
    assert_eq!(trailers["grpc-message"], "no such name");
}

// ---------------------------------------------------------------- TLS and h2 upstreams

/// A TLS upstream (HTTP/1.1 and, when ALPN offers it, HTTP/2) answering with JSON that
/// tells the protocol version it saw.
async fn tls_upstream(leaf: &Leaf, alpn: &[&[u8]]) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(leaf.server_config(alpn)));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let v = serde_json::json!({
                        "version": format!("{:?}", req.version()),
                        "path": req.uri().path(),
                    });
                    Ok::<_, Infallible>(resp(200, v.to_string().into_bytes(), "application/json"))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_upstreams_verify_certificates() {
    let ca = Ca::new("Portcullis Test CA");
    let pki = tempfile::tempdir().unwrap();
    let ca_file = ca.write(pki.path());
    let leaf = ca.issue(&["127.0.0.1", "backend.test"]);
    let h1 = tls_upstream(&leaf, &[b"http/1.1"]).await;
    let h2 = tls_upstream(&leaf, &[b"h2", b"http/1.1"]).await;
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  trusted: {{ backends: [{{ addr: "{h1}" }}], tls: true, ca_file: "{ca_file}" }}
  by_name: {{ backends: [{{ addr: "{h1}" }}], tls: true, ca_file: "{ca_file}", sni: backend.test }}
  untrusted: {{ backends: [{{ addr: "{h1}" }}], tls: true, retry: {{ attempts: 0 }} }}
  wrong_name: {{ backends: [{{ addr: "{h1}" }}], tls: true, ca_file: "{ca_file}", sni: other.test, retry: {{ attempts: 0 }} }}
  insecure: {{ backends: [{{ addr: "{h1}" }}], tls: true, verify: false }}
  h2tls: {{ backends: [{{ addr: "{h2}" }}], tls: true, ca_file: "{ca_file}", protocol: h2 }}
  h1tls: {{ backends: [{{ addr: "{h2}" }}], tls: true, ca_file: "{ca_file}" }}
routes:
  - {{ match: {{ path: "/trusted/**" }}, upstream: trusted }}
  - {{ match: {{ path: "/by_name/**" }}, upstream: by_name }}
  - {{ match: {{ path: "/untrusted/**" }}, upstream: untrusted }}
  - {{ match: {{ path: "/wrong_name/**" }}, upstream: wrong_name }}
  - {{ match: {{ path: "/insecure/**" }}, upstream: insecure }}
  - {{ match: {{ path: "/h2tls/**" }}, upstream: h2tls }}
  - {{ match: {{ path: "/h1tls/**" }}, upstream: h1tls }}
"#
    ))
    .await;
    let c = client();
    for (path, status, version) in [
        ("/trusted/x", 200, "HTTP/1.1"),
        ("/by_name/x", 200, "HTTP/1.1"),
        ("/insecure/x", 200, "HTTP/1.1"),
        ("/h2tls/x", 200, "HTTP/2.0"),
        ("/h1tls/x", 200, "HTTP/1.1"),
        ("/untrusted/x", 502, ""),
        ("/wrong_name/x", 502, ""),
    ] {
        let (s, _, v) = get_json(&c, &gw.url(path)).await;
        assert_eq!(s, status, "{path}: {v}\n{}", gw.log());
        if status == 200 {
            assert_eq!(v["version"], version, "{path}");
            assert_eq!(v["path"], path);
        } else {
            assert_eq!(v["error"], "bad_gateway", "{path}: {v}");
        }
    }
}

// ---------------------------------------------------------------- WebSocket

/// A WebSocket echo server.
async fn ws_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

const WS_KEY: &str = "ws-secret-key";

fn ws_config(ws: SocketAddr, extra_route: &str) -> String {
    format!(
        r#"
server:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin_port}}", token_sha256: "{{admin_sha}}" }}
auth:
  api_keys:
    keys: [ {{ id: ws-client, sha256: "{key}" }} ]
rate_limits:
  policies:
    ws: {{ key: ip, requests: 4, per: 60s }}
upstreams:
  ws:
    backends: [{{ addr: "{ws}" }}]
    timeouts: {{ read: 300ms, total: 600ms, websocket_idle: 2s }}
routes:
  - {{ match: {{ path: /ws }}, upstream: ws, auth: {{ any_of: [api_key] }}, rate_limit: [ws] }}
{extra_route}
"#,
        key = sha(WS_KEY)
    )
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(port: u16, key: Option<&str>) -> Result<Ws, u16> {
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    if let Some(k) = key {
        req.headers_mut().insert("x-api-key", k.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

async fn ws_roundtrip(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .expect("stream open")
        .expect("message");
    assert_eq!(m.into_text().unwrap().as_str(), text);
}

#[tokio::test]
async fn websocket_auth_idle_timeout_and_reload() {
    let ws = ws_echo().await;
    let gw = Gateway::start(&ws_config(ws, "")).await;

    // the upgrade request goes through auth like any request
    assert_eq!(ws_connect(gw.port, None).await.err(), Some(401));
    assert_eq!(ws_connect(gw.port, Some("wrong")).await.err(), Some(401));

    let mut a = ws_connect(gw.port, Some(WS_KEY)).await.unwrap();
    ws_roundtrip(&mut a, "hello").await;
    // quiet for longer than the upstream's read and total timeouts: still open
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ws_roundtrip(&mut a, "still here").await;

    // a reload does not cut the open WebSocket, failed or applied
    gw.write_config(&ws_config(
        ws,
        "  - { match: { path: /other }, upstream: other }",
    ));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    // `other` is not an upstream: the reload fails, nothing changes
    assert_eq!(s, 400, "{v}");
    ws_roundtrip(&mut a, "after a failed reload").await;
    gw.write_config(&ws_config(
        ws,
        "  - { match: { path: /ws2 }, upstream: ws }",
    ));
    let (s, v) = gw.admin(reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(s, 200, "{v}");
    ws_roundtrip(&mut a, "after reload").await;
    let mut b = ws_connect(gw.port, Some(WS_KEY)).await.unwrap();
    ws_roundtrip(&mut b, "new connection").await;
    ws_roundtrip(&mut a, "first one still fine").await;

    // rate limits apply to upgrades: 4 per minute (a and b made 2; the 401s did not count)
    let _c = ws_connect(gw.port, Some(WS_KEY)).await.unwrap();
    let _d = ws_connect(gw.port, Some(WS_KEY)).await.unwrap();
    assert_eq!(ws_connect(gw.port, Some(WS_KEY)).await.err(), Some(429));

    // idle for websocket_idle (2 s): the gateway closes it
    let t = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match a.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the idle WebSocket was not closed");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "closed after {waited:?}, before the idle timeout"
    );
}
