//! Links established per second: the whole handshake through a real gateway on loopback —
//! TCP (and TLS 1.3, full handshakes, no resumption), CHALLENGE, HELLO, HELLO_ACK — for each
//! credential: an enrolled Ed25519 key (the store lookup, the replay window, the signature
//! check; over TLS the exporter binding too), a client certificate (mTLS: the chain checked
//! against `link.client_ca` after the TLS handshake, the name), and a static token beside
//! them.
//!
//! Then what the issue asks of it, "a rolling restart of 1,000 instances must not stall the
//! gateway": 1,000 live instances (each an HTTP/2 server on its link) re-link, in waves of
//! 16, each new link replacing the old one, while a client keeps calling another service
//! through the gateway; it prints links/s and the client's p50/p99 before and during the
//! restart. `LINK_BENCH_INSTANCES` sets the count (default 1000).
//!
//! `cargo bench -p portcullis --bench link_handshake`

use criterion::{Criterion, Throughput};
use futures_util::StreamExt;
use portcullis::config::{Config, LinkAuthKind, ServiceConfig};
use portcullis_link::proof::{decode_hex, encode_hex, Proof, TLS_EXPORTER_LABEL};
use portcullis_link::{Credential, EndpointDescriptor, Frame, Hello, Protocol, MAX_FRAME_LEN};
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

const TOKEN: &str = "bench-token-0123456789abcdef";
/// Links a rolling restart replaces at once: well under `link.max_pending_handshakes_per_ip`
/// (32), since every instance of the bench dials from one address.
const WAVE: usize = 16;

fn hello(service: &str, instance: &str, credential: Credential) -> Hello {
    Hello {
        service: service.into(),
        instance_id: instance.into(),
        version: "bench".into(),
        region: None,
        endpoints: vec![EndpointDescriptor {
            method: "GET".into(),
            path: format!("/{service}/{{*rest}}"),
            timeout_ms: None,
            streaming: false,
            capability: None,
            protocol: Protocol::Http,
            workspace_scoped: false,
        }],
        openapi: None,
        credential,
    }
}

/// An instance key enrolled for `fleet` (any instance id).
struct Key {
    pair: Ed25519KeyPair,
    public: String,
}

impl Key {
    fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let public = encode_hex(pair.public_key().as_ref());
        Self { pair, public }
    }

    /// A signed HELLO of `fleet/instance` answering `nonce` on a connection with `exporter`.
    fn hello(&self, instance: &str, nonce: &str, exporter: Option<[u8; 32]>) -> Hello {
        let ts = portcullis::store::now_ms() as u64;
        let service_nonce: [u8; 32] = rand::random();
        let msg = Proof {
            version: 3,
            gateway_nonce: decode_hex::<32>(nonce).unwrap(),
            service_nonce,
            timestamp_ms: ts,
            service: "fleet".into(),
            instance_id: instance.into(),
            tls_exporter: exporter,
        }
        .encode()
        .unwrap();
        hello(
            "fleet",
            instance,
            Credential::Ed25519 {
                public_key: self.public.clone(),
                nonce: encode_hex(&service_nonce),
                timestamp_ms: ts,
                signature: encode_hex(self.pair.sign(&msg).as_ref()),
            },
        )
    }

    /// Approve the key in `gw`'s store for `fleet`, not bound to an instance.
    async fn enrol(&self, gw: &portcullis::Running) {
        let store = gw.auth.store().clone();
        let now = portcullis::store::now_ms();
        store
            .request_pairing(&portcullis::store::PairingRequest {
                public_key: self.public.clone(),
                fingerprint: portcullis_link::proof::fingerprint(
                    self.pair.public_key().as_ref().try_into().unwrap(),
                ),
                service: "fleet".into(),
                instance_id: "fleet-0".into(),
                now,
                ttl_ms: 600_000,
                max_pending: 10,
            })
            .await
            .unwrap();
        let code = store
            .link_key(&self.public)
            .await
            .unwrap()
            .unwrap()
            .code
            .unwrap();
        store
            .decide_pairing(&code, true, false, now, "bench")
            .await
            .unwrap();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// How a link dials: plain TCP, or TLS 1.3 with this connector (full handshakes).
#[derive(Clone)]
enum Dial {
    Tcp,
    Tls(tokio_rustls::TlsConnector),
}

/// What a HELLO is made from: the instance id, the CHALLENGE nonce, the TLS exporter value.
type MakeHello = Arc<dyn Fn(&str, &str, Option<[u8; 32]>) -> Hello + Send + Sync>;

/// Link attempts of the rolling restart that the gateway closed before HELLO_ACK.
static RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One link of `instance`: dial, CHALLENGE, HELLO, HELLO_ACK; the connection, ready for
/// HTTP/2 with the roles reversed; `None` if the gateway closed it first.
async fn link(
    addr: SocketAddr,
    dial: &Dial,
    make: &MakeHello,
    instance: &str,
) -> Option<Box<dyn Io>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut s, exporter): (Box<dyn Io>, _) = match dial {
        Dial::Tcp => (Box::new(tcp), None),
        Dial::Tls(c) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = c.connect(name, tcp).await.unwrap();
            let mut ex = [0u8; 32];
            tls.get_ref()
                .1
                .export_keying_material(&mut ex, TLS_EXPORTER_LABEL, None)
                .unwrap();
            (Box::new(tls), Some(ex))
        }
    };
    let Ok(Frame::Challenge(c)) = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN).await else {
        return None;
    };
    let h = make(instance, &c.nonce, exporter);
    portcullis::link::write_frame(&mut s, &Frame::Hello(Box::new(h)))
        .await
        .ok()?;
    let answer = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN)
        .await
        .ok()?;
    assert!(matches!(answer, Frame::HelloAck(_)), "{answer:?}");
    Some(s)
}

/// A live instance: [`link`], then serve the connection as an instance does (HTTP/2 server:
/// PINGs answered, health and key pushes answered 200) until the task is aborted or the
/// gateway closes it. Returns once the HTTP/2 handshake is done (the gateway registers the
/// instance then).
async fn live(
    addr: SocketAddr,
    dial: &Dial,
    make: &MakeHello,
    instance: &str,
) -> tokio::task::JoinHandle<()> {
    // A refused or dropped attempt is dialled again, as the SDK does (its backoff aside).
    let mut conn = loop {
        let Some(io) = link(addr, dial, make, instance).await else {
            RETRIES.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match h2::server::handshake(io).await {
            Ok(c) => break c,
            Err(_) => {
                RETRIES.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    tokio::spawn(async move {
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            let _ = respond.send_response(http::Response::new(()), true);
        }
    })
}

/// A certificate authority made for the bench.
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

    fn leaf(&self, san: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let p = rcgen::CertificateParams::new(vec![san.to_string()]).unwrap();
        (p.signed_by(&key, &self.cert, &self.key).unwrap(), key)
    }
}

/// A TLS 1.3 connector trusting `server_ca`, presenting `client` if given, never resuming
/// (each instance of a rolling restart is a new process).
fn connector(
    server_ca: &Ca,
    client: Option<(rcgen::Certificate, rcgen::KeyPair)>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.cert.der().clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let mut cc = match client {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cc.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(cc))
}

/// A gateway on `cfg` (its store initialised) with an API key of scope `*`, and the steady
/// service `echo` (the echo example over the SDK, a static token) linked to it.
async fn gateway(
    cfg: Config,
    server_ca: Option<&Ca>,
) -> (portcullis::Running, String, portcullis_sdk::Running) {
    portcullis::admin::init(&cfg).await.unwrap();
    let gw = portcullis::Running::start(cfg.clone()).await.unwrap();
    let key = gw
        .auth
        .create_key(
            &portcullis::auth::authenticator::CreateKey {
                workspace: "default".into(),
                name: "bench".into(),
                scopes: vec!["*".into()],
                expires_in: None,
                key_id: None,
            },
            "bench",
        )
        .await
        .unwrap()
        .api_key;
    let url = match server_ca {
        Some(_) => format!("tls://localhost:{}", gw.link_addr.port()),
        None => format!("tcp://{}", gw.link_addr),
    };
    let mut b = portcullis_sdk::Service::builder("echo")
        .gateway(url)
        .token(TOKEN)
        .instance_id("echo-1");
    if let Some(ca) = server_ca {
        b = b.tls_root_ca_pem(ca.cert.pem().into_bytes());
    }
    for e in echo_service::endpoints() {
        b = b.endpoint(e);
    }
    let echo = b
        .serve(echo_service::router(echo_service::Stats::default()))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), echo.linked())
        .await
        .expect("the steady service links in time")
        .expect("the steady service links");
    (gw, key, echo)
}

fn base_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    cfg.ingress.listen = "127.0.0.1:0".parse().unwrap();
    cfg.link.listen = "127.0.0.1:0".parse().unwrap();
    let token = ServiceConfig::token(hex::encode(portcullis::link::hash_token(TOKEN)));
    cfg.services.insert("echo".into(), token.clone());
    cfg.services.insert("tok".into(), token);
    cfg.services
        .insert("fleet".into(), ServiceConfig::ed25519());
    cfg
}

/// The steady client: GET /echo/steady through the gateway, one call after another, until
/// `stop`; the latency of each call, and the calls that failed.
async fn steady(ingress: SocketAddr, key: String, stop: Arc<AtomicBool>) -> Calls {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut out = Calls::default();
    while !stop.load(Ordering::Relaxed) {
        let req = http::Request::get(format!("http://{ingress}/echo/steady"))
            .header("authorization", format!("Bearer {key}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let t = Instant::now();
        let ok = match client.request(req).await {
            Ok(res) => {
                let status = res.status();
                http_body_util::BodyExt::collect(res.into_body())
                    .await
                    .is_ok()
                    && status == 200
            }
            Err(_) => false,
        };
        out.latencies.push(t.elapsed());
        out.failed += usize::from(!ok);
    }
    out
}

/// What the steady client saw.
#[derive(Default)]
struct Calls {
    latencies: Vec<Duration>,
    failed: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(calls: Calls) -> String {
    let mut lat = calls.latencies;
    lat.sort();
    format!(
        "{} calls ({} failed), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        calls.failed,
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    )
}

/// Link `instances` in waves of [`WAVE`]; the live tasks, and links/s.
async fn link_all(
    addr: SocketAddr,
    dial: &Dial,
    make: &MakeHello,
    instances: &[String],
) -> (Vec<tokio::task::JoinHandle<()>>, f64) {
    let t = Instant::now();
    let tasks: Vec<_> = futures_util::stream::iter(instances)
        .map(|i| live(addr, dial, make, i))
        .buffer_unordered(WAVE)
        .collect()
        .await;
    (tasks, instances.len() as f64 / t.elapsed().as_secs_f64())
}

/// Instances of `service` online, from the gateway's `/metrics`.
async fn online(gw: &portcullis::Running, api_key: &str, service: &str) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(format!("http://{}/metrics", gw.ingress_addr))
        .header("authorization", format!("Bearer {api_key}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let body = match client.request(req).await {
        Ok(res) => http_body_util::BodyExt::collect(res.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default(),
        Err(_) => Default::default(),
    };
    let prefix = format!("portcullis_links{{service=\"{service}\",state=\"online\"}} ");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "?".into())
}

/// The rolling restart (see the module comment), printed as `label`.
async fn rolling_restart(
    label: &str,
    gw: &portcullis::Running,
    api_key: &str,
    service: &str,
    dial: Dial,
    make: MakeHello,
    n: usize,
) {
    let instances: Vec<String> = (0..n).map(|i| format!("fleet-{i}")).collect();
    RETRIES.store(0, Ordering::Relaxed);
    let (old, first) = link_all(gw.link_addr, &dial, &make, &instances).await;
    let first_retries = RETRIES.swap(0, Ordering::Relaxed);
    // Before: the steady client alone, the fleet linked.
    let stop = Arc::new(AtomicBool::new(false));
    let client = tokio::spawn(steady(gw.ingress_addr, api_key.to_string(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let before = client.await.unwrap();
    // During: every instance re-links (the new link replaces the old, then the old process
    // goes away), the steady client calling all along.
    let stop = Arc::new(AtomicBool::new(false));
    let client = tokio::spawn(steady(gw.ingress_addr, api_key.to_string(), stop.clone()));
    let (new, restart) = link_all(gw.link_addr, &dial, &make, &instances).await;
    stop.store(true, Ordering::Relaxed);
    let during = client.await.unwrap();
    for t in old {
        t.abort();
    }
    println!(
        "rolling restart {label}: {n} instances linked at {first:.0} links/s ({first_retries} \
         attempts closed before HELLO_ACK and dialled again); re-linked at {restart:.0} \
         links/s ({} dialled again) (waves of {WAVE}); {} online after\n  steady client \
         before: {}\n  steady client during: {}",
        RETRIES.load(Ordering::Relaxed),
        online(gw, api_key, service).await,
        summary(before),
        summary(during)
    );
    for t in new {
        t.abort();
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(Key::new());

    // Plain TCP: Ed25519 and token.
    let tcp_cfg = base_config(&dir.path().join("tcp"));
    // TLS 1.3, with a client CA: mTLS and Ed25519 bound to the TLS exporter.
    let server_ca = Ca::new("bench server CA");
    let client_ca = Ca::new("bench client CA");
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let (server_cert, server_key) = server_ca.leaf("localhost");
    std::fs::write(tls_dir.join("cert.pem"), server_cert.pem()).unwrap();
    std::fs::write(tls_dir.join("key.pem"), server_key.serialize_pem()).unwrap();
    std::fs::write(tls_dir.join("client-ca.pem"), client_ca.cert.pem()).unwrap();
    let mut tls_cfg = base_config(&tls_dir);
    tls_cfg.link.tls = Some(portcullis::config::TlsConfig::new(
        tls_dir.join("cert.pem"),
        tls_dir.join("key.pem"),
    ));
    tls_cfg.link.client_ca = Some(tls_dir.join("client-ca.pem"));
    tls_cfg.services.insert(
        "certs".into(),
        ServiceConfig {
            token_sha256: None,
            auth: vec![LinkAuthKind::Mtls],
        },
    );
    let mtls = Dial::Tls(connector(&server_ca, Some(client_ca.leaf("certs"))));
    let tls_only = Dial::Tls(connector(&server_ca, None));

    let ((tcp_gw, tcp_key, tcp_echo), (tls_gw, tls_key, tls_echo)) = rt.block_on(async {
        let tcp = gateway(tcp_cfg, None).await;
        let tls = gateway(tls_cfg, Some(&server_ca)).await;
        key.enrol(&tcp.0).await;
        key.enrol(&tls.0).await;
        (tcp, tls)
    });

    let signed: MakeHello = {
        let key = key.clone();
        Arc::new(move |instance, nonce, exporter| key.hello(instance, nonce, exporter))
    };
    let token: MakeHello = Arc::new(|instance, _, _| {
        hello(
            "tok",
            instance,
            Credential::Token {
                token: TOKEN.into(),
            },
        )
    });
    let certificate: MakeHello =
        Arc::new(|instance, _, _| hello("certs", instance, Credential::TlsClientCertificate {}));

    let mut g = c.benchmark_group("link_handshake");
    g.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    for (name, addr, dial, make) in [
        ("ed25519", tcp_gw.link_addr, &Dial::Tcp, &signed),
        ("token", tcp_gw.link_addr, &Dial::Tcp, &token),
        ("mtls", tls_gw.link_addr, &mtls, &certificate),
        ("ed25519_tls", tls_gw.link_addr, &tls_only, &signed),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let instance = format!("bench-{n}");
                rt.block_on(async {
                    link(addr, dial, make, &instance)
                        .await
                        .expect("a HELLO_ACK")
                })
            })
        });
    }
    g.finish();

    let count = std::env::var("LINK_BENCH_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    rt.block_on(async {
        rolling_restart(
            "ed25519 (TCP)",
            &tcp_gw,
            &tcp_key,
            "fleet",
            Dial::Tcp,
            signed,
            count,
        )
        .await;
        let certs: MakeHello = Arc::new(|instance, _, _| {
            hello("certs", instance, Credential::TlsClientCertificate {})
        });
        rolling_restart(
            "mtls (TLS 1.3)",
            &tls_gw,
            &tls_key,
            "certs",
            mtls,
            certs,
            count,
        )
        .await;
        tcp_echo.shutdown().await;
        tls_echo.shutdown().await;
        let _ = tcp_gw.shutdown().await;
        let _ = tls_gw.shutdown().await;
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
