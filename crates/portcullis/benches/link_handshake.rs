//! Links established per second: the whole handshake through a real gateway on loopback —
//! TCP, CHALLENGE, a HELLO signed with an enrolled Ed25519 key (the store lookup, the replay
//! window, the signature check), HELLO_ACK — for a static token beside it. What a rolling
//! restart of 1,000 instances costs the gateway.
//!
//! `cargo bench -p portcullis --bench link_handshake`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis::config::{Config, ServiceConfig};
use portcullis_link::proof::{decode_hex, encode_hex, Proof};
use portcullis_link::{Credential, EndpointDescriptor, Frame, Hello, Protocol, MAX_FRAME_LEN};
use ring::signature::{Ed25519KeyPair, KeyPair};

fn hello(instance: &str, credential: Credential) -> Hello {
    Hello {
        service: "echo".into(),
        instance_id: instance.into(),
        version: "bench".into(),
        region: None,
        endpoints: vec![EndpointDescriptor {
            method: "GET".into(),
            path: "/echo/{*rest}".into(),
            timeout_ms: None,
            streaming: false,
            capability: None,
            protocol: Protocol::Http,
            workspace_scoped: false,
        }],
        openapi: None,
        sessions: None,
        credential,
    }
}

/// One link: dial, answer the CHALLENGE with `make`, read HELLO_ACK, close.
async fn link(addr: std::net::SocketAddr, make: impl FnOnce(&str) -> Hello) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let Ok(Frame::Challenge(c)) = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN).await else {
        panic!("no challenge")
    };
    portcullis::link::write_frame(&mut s, &Frame::Hello(Box::new(make(&c.nonce))))
        .await
        .unwrap();
    let answer = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN)
        .await
        .unwrap();
    assert!(matches!(answer, Frame::HelloAck(_)), "{answer:?}");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = "bench-token-0123456789abcdef";
    let mut cfg = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    cfg.ingress.listen = "127.0.0.1:0".parse().unwrap();
    cfg.link.listen = "127.0.0.1:0".parse().unwrap();
    cfg.services.insert("echo".into(), ServiceConfig::ed25519());
    let mut tok_cfg = cfg.clone();
    tok_cfg.data_dir = dir.path().join("tok");
    tok_cfg.services.insert(
        "echo".into(),
        ServiceConfig::token(hex::encode(portcullis::link::hash_token(token))),
    );
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let public = encode_hex(key.public_key().as_ref());
    let (ed_gw, tok_gw) = rt.block_on(async {
        portcullis::admin::init(&cfg).await.unwrap();
        portcullis::admin::init(&tok_cfg).await.unwrap();
        let ed = portcullis::Running::start(cfg).await.unwrap();
        let tok = portcullis::Running::start(tok_cfg).await.unwrap();
        // Enrol the key: the first HELLO pends, the store approves.
        let store = ed.auth.store().clone();
        store
            .request_pairing(&portcullis::store::PairingRequest {
                public_key: public.clone(),
                fingerprint: portcullis_link::proof::fingerprint(
                    key.public_key().as_ref().try_into().unwrap(),
                ),
                service: "echo".into(),
                instance_id: "echo-0".into(),
                now: portcullis::store::now_ms(),
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
            .decide_pairing(&code, true, false, portcullis::store::now_ms(), "bench")
            .await
            .unwrap();
        (ed, tok)
    });
    let mut g = c.benchmark_group("link_handshake");
    g.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    g.bench_function("ed25519", |b| {
        b.iter(|| {
            n += 1;
            let instance = format!("echo-{n}");
            let (key, public) = (&key, public.clone());
            rt.block_on(link(ed_gw.link_addr, move |nonce| {
                let ts = portcullis::store::now_ms() as u64;
                let service_nonce: [u8; 32] = rand::random();
                let msg = Proof {
                    version: portcullis_link::VERSION,
                    gateway_nonce: decode_hex::<32>(nonce).unwrap(),
                    service_nonce,
                    timestamp_ms: ts,
                    service: "echo".into(),
                    instance_id: instance.clone(),
                    tls_exporter: None,
                }
                .encode()
                .unwrap();
                hello(
                    &instance,
                    Credential::Ed25519 {
                        public_key: public,
                        nonce: encode_hex(&service_nonce),
                        timestamp_ms: ts,
                        signature: encode_hex(key.sign(&msg).as_ref()),
                    },
                )
            }))
        })
    });
    g.bench_function("token", |b| {
        b.iter(|| {
            n += 1;
            let instance = format!("echo-{n}");
            rt.block_on(link(tok_gw.link_addr, move |_| {
                hello(
                    &instance,
                    Credential::Token {
                        token: token.into(),
                    },
                )
            }))
        })
    });
    g.finish();
    rt.block_on(async {
        let _ = ed_gw.shutdown().await;
        let _ = tok_gw.shutdown().await;
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
