//! TLS at the edge: resumption that scales (stateless tickets under a rotating key: every
//! one of 1,000 distinct reconnecting clients resumes, a ticket survives one key rotation and
//! not two), and the TLS library's complaints about peers never flood the log — a client that
//! sends an IP address as SNI (wrk, many load tools and scanners do) made rustls log a warning
//! on every handshake. They are counted in `portcullis_tls_library_messages_total` instead,
//! and shown only when the operator asks for them by name (`PORTCULLIS_LOG=info,rustls=warn`).

use crate::common::process::GatewayProcess;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS 1.3 ClientHello naming `host` in its SNI extension, as OpenSSL sends it for
/// `-servername 127.0.0.1` (rustls' own client never sends an IP address there).
fn client_hello(host: &str) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut sni = Vec::new();
    sni.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
    sni.push(0); // host_name
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host.as_bytes());
    let mut exts = Vec::new();
    ext(&mut exts, 0x0000, &sni);
    ext(&mut exts, 0x002b, &[2, 0x03, 0x04]); // supported_versions: TLS 1.3
    ext(&mut exts, 0x000a, &[0, 2, 0x00, 0x1d]); // supported_groups: x25519
    ext(
        &mut exts,
        0x000d,
        &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x08, 0x07], // ecdsa_p256, rsa_pss, ed25519
    );
    let mut share = vec![0, 36, 0x00, 0x1d, 0, 32];
    share.extend_from_slice(&[9u8; 32]); // any 32 bytes are an X25519 public key
    ext(&mut exts, 0x0033, &share);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(32);
    body.extend_from_slice(&[5u8; 32]); // legacy session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // no compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// Send the ClientHello, read the server's first flight (or its alert), hang up.
async fn handshake(at: std::net::SocketAddr, hello: &[u8]) {
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    s.write_all(hello).await.unwrap();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
}

fn tls_gateway(dir: &std::path::Path, log: &str) -> GatewayProcess {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    GatewayProcess::start(
        &format!(
            "[ingress.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
        log,
    )
}

/// `/metrics` over HTTPS, with curl (no certificate check: the test's own self-signed one).
async fn metrics(gw: &GatewayProcess) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sSk", &format!("https://{}/metrics", gw.ingress)])
        .output()
        .await
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn counted(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_tls_library_messages_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no TLS library counter in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_handshakes_with_an_ip_address_as_sni_log_nothing_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let hello = client_hello("127.0.0.1");

    // Asked for by name, the library's warning is there: this ClientHello provokes one.
    let mut shown = tls_gateway(dir.path(), "info,rustls=warn");
    for _ in 0..5 {
        handshake(shown.ingress, &hello).await;
    }
    let logs = shown.stop_and_read_logs().await;
    assert!(logs.matches("rustls").count() >= 5, "{logs}");

    // By default: 1,000 handshakes, no line about any of them, every one counted.
    let mut gw = tls_gateway(dir.path(), "info");
    let before = gw.logs().lines().count();
    for _ in 0..10 {
        let batch = (0..100).map(|_| handshake(gw.ingress, &hello));
        futures_util::future::join_all(batch).await;
    }
    let m = metrics(&gw).await;
    assert!(counted(&m) >= 1000, "{m}");
    let logs = gw.stop_and_read_logs().await;
    let during: Vec<&str> = logs
        .lines()
        .skip(before)
        .filter(|l| !l.contains("shutting down") && !l.contains("drain") && !l.contains("stopped"))
        .collect();
    assert!(
        during.len() < 10,
        "{} lines for 1,000 handshakes:\n{}",
        during.len(),
        during.join("\n")
    );
    assert!(!logs.contains("rustls"), "{logs}");
}

/// A CA and a `localhost` certificate it signed, written to `dir` (cert.pem, key.pem).
fn ca_and_leaf(dir: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Portcullis test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    ca.der().clone()
}

/// A client of its own (its own session store), trusting `ca`.
fn tls_client(ca: &rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

/// One HTTPS call to `/health/live` on a new connection (reading the answer also reads the
/// tickets the server sends after the handshake): was the session resumed?
async fn resumed(at: std::net::SocketAddr, client: &tokio_rustls::TlsConnector) -> bool {
    let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = client.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /health/live HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // rustls may hold what was written (and its own Finished) until flushed.
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reconnecting_client_resumes_and_a_ticket_survives_one_key_rotation_not_two() {
    use crate::common::TestGateway;
    use portcullis::auth::authenticator::{ApiKeyAuthenticator, AuthSettings};
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_and_leaf(dir.path());
    let clock = portcullis::clock::ManualClock::starting_now();
    let mut cfg = crate::common::config_with_services(&[]);
    let mut tls =
        portcullis::config::TlsConfig::new(dir.path().join("cert.pem"), dir.path().join("key.pem"));
    tls.ticket_rotation = Duration::from_secs(60);
    cfg.ingress.tls = Some(tls);
    let c = clock.clone();
    let gw = TestGateway::start_on_parts(
        cfg,
        portcullis::store::testing::TestStore::sqlite(),
        move |cfg, mut parts| {
            let pepper = portcullis::admin::load_pepper(cfg).unwrap();
            let settings = AuthSettings {
                clock: c.clock(),
                ..AuthSettings::from_config(&cfg.auth)
            };
            parts.api_keys =
                ApiKeyAuthenticator::new(parts.api_keys.store().clone(), pepper, settings);
            parts
        },
    )
    .await;
    let at = gw.ingress;

    // 1,000 distinct clients, each reconnecting once: every reconnect resumes (rustls'
    // default server cache held 256 sessions, so past ~128 clients resumption failed).
    let clients: Vec<_> = (0..1000).map(|_| tls_client(&ca)).collect();
    for batch in clients.chunks(50) {
        let first = futures_util::future::join_all(batch.iter().map(|c| resumed(at, c))).await;
        assert!(
            first.iter().all(|r| !r),
            "a first contact is a full handshake"
        );
    }
    // Every client has connected once before any reconnects.
    let mut resumed_count = 0;
    for batch in clients.chunks(50) {
        let second = futures_util::future::join_all(batch.iter().map(|c| resumed(at, c))).await;
        resumed_count += second.iter().filter(|r| **r).count();
    }
    assert_eq!(resumed_count, 1000);

    // Across one rotation of the ticket key the ticket still opens (the previous key)...
    let client = tls_client(&ca);
    assert!(!resumed(at, &client).await);
    clock.advance(Duration::from_secs(61));
    assert!(
        resumed(at, &client).await,
        "a ticket of the previous key resumes"
    );
    // ...and the tickets that connection brought home are two rotations old here: refused,
    // a full handshake (the server's key is gone, so is what it could open).
    clock.advance(Duration::from_secs(122));
    assert!(
        !resumed(at, &client).await,
        "two rotations later: full handshake"
    );
    assert!(
        resumed(at, &client).await,
        "and resumption works again from there"
    );
    gw.shutdown().await;
}

/// A TLS client offering HTTP/1.1 by ALPN, as browsers and curl do.
fn tls_h1_client(ca: &rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

type ClientTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// One keep-alive `GET /health/live` on `tls`: the status line's code.
async fn health(tls: &mut ClientTls) -> u16 {
    tls.write_all(b"GET /health/live HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer is small and has a content-length: read until its body is in.
    while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}")) {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    std::str::from_utf8(&got[9..12]).unwrap().parse().unwrap()
}

/// `portcullis_parked_connections{listener="ingress"}`, scraped on a connection of its own.
async fn parked_tls(at: std::net::SocketAddr, client: &tokio_rustls::TlsConnector) -> f64 {
    let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = client.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut text = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut text)).await;
    String::from_utf8_lossy(&text)
        .lines()
        .find(|l| l.starts_with("portcullis_parked_connections{listener=\"ingress\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Idle HTTPS/1.1 connections park like plain ones (hyper's buffers dropped, the TLS session
/// kept): counted in the parked gauge, served again on their next request over the same
/// session, and closed by the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_http1_connections_park_keep_their_session_and_close_at_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_and_leaf(dir.path());
    let mut cfg = crate::common::config_with_services(&[]);
    cfg.ingress.tls = Some(portcullis::config::TlsConfig::new(
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    ));
    cfg.ingress.park_after = Duration::from_millis(20);
    cfg.ingress.idle_timeout = Duration::from_millis(1500);
    let gw = crate::common::TestGateway::start(cfg).await;
    let client = tls_h1_client(&ca);
    const N: usize = 10;
    let mut conns = Vec::new();
    for _ in 0..N {
        let tcp = tokio::net::TcpStream::connect(gw.ingress).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = client.connect(name, tcp).await.expect("TLS handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(b"http/1.1".as_slice())
        );
        assert_eq!(health(&mut tls).await, 200);
        conns.push(tls);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = parked_tls(gw.ingress, &client).await;
        if got == N as f64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "parked: {got}, not {N}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each is served again over the session it parked with.
    for tls in &mut conns {
        assert_eq!(health(tls).await, 200);
    }
    // Parked again, the idle timeout closes each one.
    for tls in &mut conns {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("closed by the idle timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed with nothing more sent");
    }
    assert_eq!(parked_tls(gw.ingress, &client).await, 0.0);
    gw.shutdown().await;
}
