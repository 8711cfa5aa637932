//! mTLS on links: services whose `auth` requires a client certificate from `link.client_ca`
//! naming them (SAN, or CN when there is no DNS/URI SAN), not revoked by `link.client_crls`,
//! through the real gateway and SDK over TLS, with certificates and CRLs made by rcgen.

use crate::common::*;
use portcullis::config::{Config, LinkAuthKind, ServiceConfig};
use portcullis_link::RejectCode;
use std::path::Path;
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
        self.leaf_with(Some(san), san, |p| {
            if expired {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
        })
    }

    /// A leaf with a SAN dNSName `san` (or none) and the subject CN `cn`, adjusted by `f`.
    fn leaf_with(
        &self,
        san: Option<&str>,
        cn: &str,
        f: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(san.map(String::from).into_iter().collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        f(&mut p);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf for `san` with serial number `serial`.
    fn leaf_serial(&self, san: &str, serial: u64) -> (String, String) {
        self.leaf_with(Some(san), san, |p| {
            p.serial_number = Some(rcgen::SerialNumber::from(serial));
        })
    }

    /// A CRL of this CA revoking `serials`.
    fn crl(&self, serials: &[u64]) -> rcgen::CertificateRevocationList {
        rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2040, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2024, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .unwrap()
    }
}

struct Setup {
    gw: TestGateway,
    server_ca: Ca,
    client_ca: Ca,
    _dir: tempfile::TempDir,
}

async fn setup(auth: Vec<LinkAuthKind>) -> Setup {
    setup_with(auth, |_, _, _| {}).await
}

/// The gateway of [`setup`], its configuration adjusted by `f` (given the data directory
/// for files and the client CA).
async fn setup_with(auth: Vec<LinkAuthKind>, f: impl FnOnce(&mut Config, &Path, &Ca)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("Portcullis test server CA");
    let client_ca = Ca::new("Portcullis test client CA");
    let mut cfg = tls_config(dir.path(), &server_ca, &client_ca, auth);
    f(&mut cfg, dir.path(), &client_ca);
    let gw = TestGateway::start(cfg).await;
    Setup {
        gw,
        server_ca,
        client_ca,
        _dir: dir,
    }
}

/// A configuration with TLS links, `link.client_ca` and the service `echo` requiring `auth`;
/// its files are written to `dir`.
fn tls_config(dir: &Path, server_ca: &Ca, client_ca: &Ca, auth: Vec<LinkAuthKind>) -> Config {
    let (cert, key) = server_ca.leaf("localhost", false);
    let path = |n: &str| dir.join(n);
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
    cfg
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

/// The count of `portcullis_auth_failures_total{reason}` on `gw`'s `/metrics`.
async fn failures(gw: &TestGateway, reason: &str) -> u64 {
    let (_, _, body) = gw.get("/metrics").await;
    let prefix = format!("portcullis_auth_failures_total{{reason=\"{reason}\"}} ");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&prefix)
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// Wait until the audit log has a row with each of `reasons`.
async fn audited(gw: &TestGateway, reasons: &[&str]) {
    let store = gw.auth.store().clone();
    let reasons: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
    eventually("every refusal reason is in the audit log", || {
        let (store, reasons) = (store.clone(), reasons.clone());
        async move {
            let rows = store.audit_list(200).await.unwrap();
            reasons
                .iter()
                .all(|r| rows.iter().any(|e| e.reason.as_deref() == Some(r.as_str())))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cn_names_the_service_only_when_the_certificate_has_no_dns_or_uri_san() {
    let s = setup(vec![LinkAuthKind::Mtls]).await;
    // CN only, naming the service: it links and serves.
    let (running, _) = serve_echo(builder(
        &s,
        Some(s.client_ca.leaf_with(None, "echo", |_| {})),
    ))
    .await;
    assert_eq!(s.gw.get("/echo/cn").await.0, 200);
    running.shutdown().await;

    for (cert, case) in [
        (
            s.client_ca.leaf_with(None, "billing", |_| {}),
            "CN only, another service",
        ),
        (
            s.client_ca.leaf_with(Some("billing"), "echo", |_| {}),
            "SAN for another service, CN for this one: the SAN wins",
        ),
        (
            s.client_ca.leaf_with(None, "echo", |p| {
                p.subject_alt_names = vec![rcgen::SanType::URI(
                    "spiffe://example.org/billing".try_into().unwrap(),
                )];
            }),
            "a URI SAN, CN for this one: the SAN wins",
        ),
    ] {
        let e = refusal(builder(&s, Some(cert))).await;
        assert_eq!(
            e.reject_code(),
            Some(RejectCode::BadCredential),
            "{case}: {e}"
        );
        assert!(e.to_string().contains("link_mtls_name"), "{case}: {e}");
    }
    audited(&s.gw, &["link_mtls_name"]).await;
    assert_eq!(failures(&s.gw, "link_mtls_name").await, 3);
    s.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_expired_certificate_is_refused_with_its_own_reason_an_audit_row_and_a_metric()
{
    let s = setup_with(vec![LinkAuthKind::Mtls], |cfg, dir, ca| {
        // One PEM CRL and one DER CRL of the same CA: both files load.
        std::fs::write(dir.join("revoked.pem"), ca.crl(&[666]).pem().unwrap()).unwrap();
        std::fs::write(dir.join("empty.crl"), ca.crl(&[]).der()).unwrap();
        cfg.link.client_crls = vec![dir.join("revoked.pem"), dir.join("empty.crl")];
    })
    .await;
    // A certificate the CRL does not list links.
    let (running, _) = serve_echo(builder(&s, Some(s.client_ca.leaf_serial("echo", 7)))).await;
    assert_eq!(s.gw.get("/echo/not-revoked").await.0, 200);
    running.shutdown().await;

    for (cert, reason) in [
        (s.client_ca.leaf_serial("echo", 666), "link_mtls_revoked"),
        (s.client_ca.leaf("echo", true), "link_mtls_expired"),
    ] {
        let e = refusal(builder(&s, Some(cert))).await;
        assert_eq!(
            e.reject_code(),
            Some(RejectCode::BadCredential),
            "{reason}: {e}"
        );
        assert!(e.to_string().contains(reason), "a clear reason: {e}");
    }
    audited(&s.gw, &["link_mtls_revoked", "link_mtls_expired"]).await;
    assert_eq!(failures(&s.gw, "link_mtls_revoked").await, 1);
    assert_eq!(failures(&s.gw, "link_mtls_expired").await, 1);
    s.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_crls_a_certificate_of_a_ca_without_one_is_refused() {
    // Two CAs in the bundle, a CRL for the first only: the second's status is unknown.
    let second = Ca::new("Portcullis second client CA");
    let s = setup_with(vec![LinkAuthKind::Mtls], |cfg, dir, ca| {
        let bundle = format!("{}{}", ca.cert.pem(), second.cert.pem());
        std::fs::write(dir.join("client-ca.pem"), bundle).unwrap();
        std::fs::write(dir.join("crl.pem"), ca.crl(&[]).pem().unwrap()).unwrap();
        cfg.link.client_crls = vec![dir.join("crl.pem")];
    })
    .await;
    let e = refusal(builder(&s, Some(second.leaf("echo", false)))).await;
    assert!(
        e.to_string().contains("link_mtls_revocation_unknown"),
        "{e}"
    );
    let (running, _) = serve_echo(builder(&s, Some(s.client_ca.leaf("echo", false)))).await;
    assert_eq!(s.gw.get("/echo/covered").await.0, 200);
    running.shutdown().await;
    s.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_under_the_ca_name_that_does_not_verify_revokes_nothing_and_refuses_everything() {
    // Someone else's key under the client CA's name: its CRL cannot clear or revoke anything.
    let forger = Ca::new("Portcullis test client CA");
    let s = setup_with(vec![LinkAuthKind::Mtls], |cfg, dir, _| {
        std::fs::write(dir.join("forged.pem"), forger.crl(&[]).pem().unwrap()).unwrap();
        cfg.link.client_crls = vec![dir.join("forged.pem")];
    })
    .await;
    let e = refusal(builder(&s, Some(s.client_ca.leaf("echo", false)))).await;
    assert_eq!(e.reject_code(), Some(RejectCode::BadCredential), "{e}");
    assert!(
        e.to_string().contains("link_mtls_revocation_unknown"),
        "{e}"
    );
    audited(&s.gw, &["link_mtls_revocation_unknown"]).await;
    s.gw.shutdown().await;
}

#[tokio::test]
async fn a_garbage_missing_or_certificate_only_crl_file_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    std::fs::write(dir.path().join("garbage.crl"), b"\x30\x03\x02\x01").unwrap();
    std::fs::write(
        dir.path().join("garbage.pem"),
        "-----BEGIN X509 CRL-----\nnot base64!\n-----END X509 CRL-----\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("cert.pem"), client_ca.cert.pem()).unwrap();
    for file in ["garbage.crl", "garbage.pem", "absent.crl", "cert.pem"] {
        let mut cfg = tls_config(dir.path(), &server_ca, &client_ca, vec![LinkAuthKind::Mtls]);
        cfg.data_dir = dir.path().join(format!("data-{file}"));
        cfg.link.client_crls = vec![dir.path().join(file)];
        portcullis::admin::init(&cfg).await.unwrap();
        let e = portcullis::Running::start(cfg)
            .await
            .err()
            .unwrap_or_else(|| panic!("{file}: the gateway must not start"));
        let msg = format!("{e:#}");
        assert!(
            msg.contains("link.client_crls") && msg.contains(file),
            "{file}: {msg}"
        );
    }
}

/// Enrol the public key of `key` for `echo` in `gw`'s store, as an approved pairing would.
async fn enrol(gw: &TestGateway, key: &portcullis_sdk::InstanceKey) {
    let store = gw.auth.store().clone();
    let public = hex::encode(key.public_key());
    let now = portcullis::store::now_ms();
    store
        .request_pairing(&portcullis::store::PairingRequest {
            public_key: public.clone(),
            fingerprint: key.fingerprint(),
            service: "echo".into(),
            instance_id: "echo-1".into(),
            now,
            ttl_ms: 600_000,
            max_pending: 10,
        })
        .await
        .unwrap();
    let code = store
        .link_key(&public)
        .await
        .unwrap()
        .unwrap()
        .code
        .unwrap();
    store
        .decide_pairing(&code, true, false, now, "test")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_requiring_mtls_and_ed25519_links_only_with_a_certificate_and_an_enrolled_key() {
    let s = setup(vec![LinkAuthKind::Mtls, LinkAuthKind::Ed25519]).await;
    let (key, pkcs8) = portcullis_sdk::InstanceKey::generate().unwrap();
    enrol(&s.gw, &key).await;
    let again = || portcullis_sdk::InstanceKey::from_pkcs8(&pkcs8).unwrap();

    // Both: it links and serves a call.
    let (running, _) =
        serve_echo(builder(&s, Some(s.client_ca.leaf("echo", false))).instance_key(again())).await;
    let (status, _, body) = s.gw.get("/echo/both").await;
    assert_eq!(status, 200, "{body:?}");
    running.shutdown().await;

    // The certificate without a key: `bad_credential`, and the SDK gives up.
    let e = refusal(builder(&s, Some(s.client_ca.leaf("echo", false)))).await;
    assert_eq!(e.reject_code(), Some(RejectCode::BadCredential), "{e}");

    // The certificate with a key nobody enrolled: `pairing_required`, nothing trusted.
    let (tx, mut codes) = tokio::sync::mpsc::unbounded_channel();
    let (unknown, _) = portcullis_sdk::InstanceKey::generate().unwrap();
    let mut b = builder(&s, Some(s.client_ca.leaf("echo", false)))
        .instance_key(unknown)
        .on_pairing(move |p| {
            let _ = tx.send(p.code.clone());
        });
    for e in echo_service::endpoints() {
        b = b.endpoint(e);
    }
    let pending = b.serve(echo_service::router(Default::default())).unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), codes.recv())
        .await
        .expect("a pairing code within 10 s")
        .unwrap();
    assert!(portcullis_link::valid_pairing_code(&code), "{code}");
    assert_eq!(pending.links_up(), 0);
    pending.shutdown().await;

    // The enrolled key without a certificate: `bad_credential` (`link_mtls_missing`); the
    // SDK keeps dialling with a key, and never links.
    let keyed = builder(&s, None).instance_key(again());
    let mut keyed = keyed;
    for e in echo_service::endpoints() {
        keyed = keyed.endpoint(e);
    }
    let keyed = keyed
        .serve(echo_service::router(Default::default()))
        .unwrap();
    audited(&s.gw, &["link_credential_kind", "link_mtls_missing"]).await;
    assert_eq!(keyed.links_up(), 0);
    assert_eq!(s.gw.get("/echo/key-only").await.0, 404, "no route");
    keyed.shutdown().await;
    s.gw.shutdown().await;
}

#[test]
fn check_config_refuses_revocation_lists_without_a_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crls.toml");
    std::fs::write(
        &file,
        "[link]\nclient_crls = [\"/etc/portcullis/ca.crl\"]\n",
    )
    .unwrap();
    let (code, _, err) = crate::common::process::cli(&["check-config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("link.client_crls") && err.contains("needs link.client_ca"),
        "{err}"
    );
}
