//! mTLS on links: services whose `auth` requires a client certificate from `link.client_ca`
//! naming them, through the real gateway and SDK over TLS, with certificates made by rcgen.

use crate::common::*;
use portcullis::config::{LinkAuthKind, ServiceConfig};
use portcullis_link::RejectCode;
use std::time::Duration;

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        Self {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A leaf for `san`, (cert PEM, key PEM); `expired` puts its validity in the past.
    fn leaf(&self, san: &str, expired: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![san.to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, san);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Setup {
    gw: TestGateway,
    server_ca: Ca,
    client_ca: Ca,
    _dir: tempfile::TempDir,
}

async fn setup(auth: Vec<LinkAuthKind>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("Portcullis test server CA");
    let client_ca = Ca::new("Portcullis test client CA");
    let (cert, key) = server_ca.leaf("localhost", false);
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("cert.pem"), cert).unwrap();
    std::fs::write(path("key.pem"), key).unwrap();
    std::fs::write(path("client-ca.pem"), client_ca.cert.pem()).unwrap();
    let mut cfg = config_with_services(&[]);
    cfg.link.tls = Some(portcullis::config::TlsConfig::new(
        path("cert.pem"),
        path("key.pem"),
    ));
    cfg.link.client_ca = Some(path("client-ca.pem"));
    cfg.services.insert(
        "echo".into(),
        ServiceConfig {
            token_sha256: auth.contains(&LinkAuthKind::Token).then(|| {
                portcullis::config::Secret::new(hex::encode(portcullis::link::hash_token(
                    &token_for("echo"),
                )))
            }),
            auth,
        },
    );
    let gw = TestGateway::start(cfg).await;
    Setup {
        gw,
        server_ca,
        client_ca,
        _dir: dir,
    }
}

fn builder(s: &Setup, cert: Option<(String, String)>) -> portcullis_sdk::ServiceBuilder {
    let mut b = portcullis_sdk::Service::builder("echo")
        .gateway(format!("tls://localhost:{}", s.gw.link.port()))
        .tls_root_ca_pem(s.server_ca.cert.pem().into_bytes())
        .instance_id("echo-1");
    if let Some((c, k)) = cert {
        b = b.tls_client_cert_pem(c, k);
    }
    b
}

/// The refusal a service built from `b` gets (it gives up at once: retrying cannot fix it).
async fn refusal(mut b: portcullis_sdk::ServiceBuilder) -> portcullis_sdk::Error {
    for e in echo_service::endpoints() {
        b = b.endpoint(e);
    }
    let running = b
        .serve(echo_service::router(echo_service::Stats::default()))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), running.try_linked())
        .await
        .expect("refused within 10 s")
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_naming_the_service_links_and_a_wrong_ca_name_or_expiry_is_refused_and_audited(
) {
    let s = setup(vec![LinkAuthKind::Mtls]).await;
    let (running, _stats) = serve_echo(builder(&s, Some(s.client_ca.leaf("echo", false)))).await;
    let (status, _, body) = s.gw.get("/echo/mtls").await;
    assert_eq!(status, 200, "{body:?}");
    running.shutdown().await;

    let other_ca = Ca::new("Someone else's CA");
    for (cert, reason) in [
        (Some(other_ca.leaf("echo", false)), "link_mtls_unknown_ca"),
        (Some(s.client_ca.leaf("billing", false)), "link_mtls_name"),
        (Some(s.client_ca.leaf("echo", true)), "link_mtls_expired"),
    ] {
        let e = refusal(builder(&s, cert)).await;
        assert_eq!(
            e.reject_code(),
            Some(RejectCode::BadCredential),
            "{reason}: {e}"
        );
        assert!(e.to_string().contains(reason), "a clear reason: {e}");
    }
    // No certificate at all, with a token the service does not accept alone.
    let e = refusal(builder(&s, None).token("whatever")).await;
    assert_eq!(e.reject_code(), Some(RejectCode::BadCredential), "{e}");

    let store = s.gw.auth.store().clone();
    eventually("every refusal reason is in the audit log", || {
        let store = store.clone();
        async move {
            let rows = store.audit_list(100).await.unwrap();
            [
                "link_mtls_unknown_ca",
                "link_mtls_name",
                "link_mtls_expired",
                "link_mtls_missing",
            ]
            .iter()
            .all(|r| rows.iter().any(|e| e.reason.as_deref() == Some(*r)))
        }
    })
    .await;
    s.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_and_a_token_are_both_required_when_both_are_listed() {
    let s = setup(vec![LinkAuthKind::Mtls, LinkAuthKind::Token]).await;
    // The certificate alone is not enough.
    let e = refusal(builder(&s, Some(s.client_ca.leaf("echo", false)))).await;
    assert_eq!(e.reject_code(), Some(RejectCode::BadCredential), "{e}");
    // The token alone neither.
    let e = refusal(builder(&s, None).token(token_for("echo"))).await;
    assert!(e.to_string().contains("link_mtls_missing"), "{e}");
    // Both link.
    let (running, _) =
        serve_echo(builder(&s, Some(s.client_ca.leaf("echo", false))).token(token_for("echo")))
            .await;
    assert_eq!(s.gw.get("/echo/both").await.0, 200);
    running.shutdown().await;
    s.gw.shutdown().await;
}
