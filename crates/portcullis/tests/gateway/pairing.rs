//! Instance keys and pairing (docs/link-protocol.md §10), through the real gateway: the SDK
//! with an `InstanceKey`, the real binary for the admin's CLI, and hand-made signed HELLOs
//! where a test needs a HELLO the SDK would never send (a replay, a stale timestamp, a bad
//! signature).

use crate::common::*;
use portcullis::clock::ManualClock;
use portcullis::config::{Config, ServiceConfig};
use portcullis::store::testing::TestStore;
use portcullis::store::{LinkKeyState, Store, StoreOptions};
use portcullis_link::proof::{encode_hex, Proof};
use portcullis_link::{Credential, Frame, Hello, RejectCode, MAX_FRAME_LEN};
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn ed25519_config(f: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = config_with_services(&[]);
    cfg.services.insert("echo".into(), ServiceConfig::ed25519());
    f(&mut cfg);
    cfg
}

/// A gateway whose wall clock the test holds (and moves).
async fn gateway_with_clock(cfg: Config, clock: &ManualClock) -> TestGateway {
    let c = clock.clone();
    TestGateway::start_on_parts(cfg, TestStore::sqlite(), move |cfg, mut parts| {
        let pepper = portcullis::admin::load_pepper(cfg).unwrap();
        let settings = portcullis::auth::authenticator::AuthSettings {
            clock: c.clock(),
            ..portcullis::auth::authenticator::AuthSettings::from_config(&cfg.auth)
        };
        parts.api_keys = portcullis::auth::ApiKeyAuthenticator::new(
            parts.api_keys.store().clone(),
            pepper,
            settings,
        );
        parts.signing_keys = portcullis::auth::signing::MemorySigningKeys::new();
        parts
    })
    .await
}

fn data_dir(gw: &TestGateway) -> String {
    gw.store
        .as_ref()
        .unwrap()
        .data_dir()
        .to_str()
        .unwrap()
        .to_string()
}

async fn store_of(gw: &TestGateway) -> Store {
    Store::open(&StoreOptions::sqlite(gw.store.as_ref().unwrap().data_dir()))
        .await
        .unwrap()
}

/// An SDK echo instance with `key`, reporting its pairing codes on the returned channel.
fn keyed_echo(
    gw: &TestGateway,
    instance: &str,
    key: portcullis_sdk::InstanceKey,
) -> (
    portcullis_sdk::Running,
    echo_service::Stats,
    tokio::sync::mpsc::UnboundedReceiver<portcullis_sdk::Pairing>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stats = echo_service::Stats::default();
    let mut b = portcullis_sdk::Service::builder("echo")
        .gateway(gw.link_url())
        .instance_key(key)
        .instance_id(instance)
        .drain_grace(Duration::from_secs(10))
        .on_pairing(move |p| {
            let _ = tx.send(p.clone());
        });
    for e in echo_service::endpoints() {
        b = b.endpoint(e);
    }
    let running = b
        .serve(echo_service::router(stats.clone()))
        .expect("service builds");
    (running, stats, rx)
}

async fn next_code(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<portcullis_sdk::Pairing>,
) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a pairing code within 10 s")
        .expect("the service is running")
        .code
}

fn cli_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    let (code, out, err) = crate::common::process::cli(args);
    let v = serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null);
    (code, v, err)
}

/// A hand-held instance key that makes signed HELLOs on raw connections.
struct RawKey {
    pair: Ed25519KeyPair,
}

impl RawKey {
    fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Self {
            pair: Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap(),
        }
    }

    fn public_hex(&self) -> String {
        encode_hex(self.pair.public_key().as_ref())
    }

    /// A version 3 HELLO for `echo`/`instance` answering `challenge_nonce`, signed at
    /// `timestamp_ms` with service nonce `nonce`; `tamper` breaks the signature.
    fn hello(
        &self,
        instance: &str,
        challenge_nonce: &str,
        timestamp_ms: u64,
        nonce: [u8; 32],
        tamper: bool,
    ) -> Hello {
        let message = Proof {
            version: portcullis_link::VERSION,
            gateway_nonce: portcullis_link::proof::decode_hex::<32>(challenge_nonce).unwrap(),
            service_nonce: nonce,
            timestamp_ms,
            service: "echo".into(),
            instance_id: instance.into(),
            tls_exporter: None,
        }
        .encode()
        .unwrap();
        let mut sig = self.pair.sign(&message).as_ref().to_vec();
        if tamper {
            sig[0] ^= 1;
        }
        Hello {
            service: "echo".into(),
            instance_id: instance.into(),
            version: "0".into(),
            region: None,
            endpoints: vec![descriptor("GET", "/raw/{*rest}")],
            openapi: None,
            sessions: None,
            credential: Credential::Ed25519 {
                public_key: self.public_hex(),
                nonce: encode_hex(&nonce),
                timestamp_ms,
                signature: encode_hex(&sig),
            },
        }
    }
}

/// Dial, read CHALLENGE, send what `make` builds from its nonce, return the answer.
async fn attempt(
    gw: &TestGateway,
    make: impl FnOnce(&str) -> Hello,
) -> (Frame, tokio::net::TcpStream) {
    let mut s = tokio::net::TcpStream::connect(gw.link).await.unwrap();
    let Frame::Challenge(c) = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN)
        .await
        .unwrap()
    else {
        panic!("no challenge")
    };
    let hello = make(&c.nonce);
    portcullis::link::write_frame(&mut s, &Frame::Hello(Box::new(hello)))
        .await
        .unwrap();
    let answer = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN)
        .await
        .unwrap();
    (answer, s)
}

fn code_of(f: &Frame) -> Option<RejectCode> {
    match f {
        Frame::Reject(r) => Some(r.code),
        _ => None,
    }
}

fn now_ms(clock: &ManualClock) -> u64 {
    clock.now_ms() as u64
}

/// Pair `key` for `echo`/`instance` through the store (as `pairings approve` does).
async fn enrol(gw: &TestGateway, clock: &ManualClock, key: &RawKey, instance: &str) {
    let (answer, _) = attempt(gw, |n| {
        key.hello(instance, n, now_ms(clock), rand::random(), false)
    })
    .await;
    let Frame::Reject(r) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(r.code, RejectCode::PairingRequired);
    let code = r.pairing.expect("a pairing code").code;
    let store = store_of(gw).await;
    store
        .decide_pairing(&code, true, false, clock.now_ms(), "test")
        .await
        .unwrap();
    store.close().await;
}

async fn key_state(gw: &TestGateway, key: &RawKey) -> (LinkKeyState, Option<String>) {
    let store = store_of(gw).await;
    let k = store.link_key(&key.public_hex()).await.unwrap().unwrap();
    store.close().await;
    (k.state, k.revoked_reason)
}

#[tokio::test]
async fn first_contact_pends_until_the_cli_approves_then_the_instance_links_and_serves() {
    let gw = TestGateway::start(ed25519_config(|_| {})).await;
    let (key, _) = portcullis_sdk::InstanceKey::generate().unwrap();
    let fingerprint = key.fingerprint();
    let (svc, _stats, mut codes) = keyed_echo(&gw, "echo-1", key);
    let code = next_code(&mut codes).await;
    assert!(portcullis_link::valid_pairing_code(&code), "{code}");
    // Nothing is trusted before the approval.
    assert_eq!(svc.links_up(), 0);
    let (status, _, _) = gw.get("/echo/hi").await;
    assert_eq!(status, 404, "no route before approval");
    // The instance keeps asking, with the same code while it is pending.
    assert_eq!(next_code(&mut codes).await, code);

    let dir = data_dir(&gw);
    let (exit, list, err) = cli_json(&[
        "pairings",
        "list",
        "--pending",
        "--data-dir",
        &dir,
        "--json",
    ]);
    assert_eq!(exit, 0, "{err}");
    let p = &list["pairings"][0];
    assert_eq!(p["state"], "pending");
    assert_eq!(p["code"], code.as_str());
    assert_eq!(p["service"], "echo");
    assert_eq!(p["instance"], "echo-1");
    assert_eq!(p["fingerprint"], fingerprint.as_str());

    let lower = code.to_ascii_lowercase();
    let (exit, approved, err) =
        cli_json(&["pairings", "approve", &lower, "--data-dir", &dir, "--json"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(approved["decision"], "approved");
    assert_eq!(approved["pairing"]["state"], "approved");
    // A code is used once.
    let (exit, _, err) = cli_json(&["pairings", "approve", &code, "--data-dir", &dir, "--json"]);
    assert_eq!(exit, 1, "{err}");
    let (exit, _, _) = cli_json(&["pairings", "approve", "0OIL", "--data-dir", &dir, "--json"]);
    assert_eq!(exit, 2, "not a code: usage error");

    tokio::time::timeout(Duration::from_secs(15), svc.linked())
        .await
        .expect("the approved instance links")
        .unwrap();
    let (status, _, body) = gw.get("/echo/hi").await;
    assert_eq!(status, 200, "{body:?}");
    svc.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_denied_key_never_links_and_the_sdk_stops_dialling() {
    let gw = TestGateway::start(ed25519_config(|_| {})).await;
    let (key, _) = portcullis_sdk::InstanceKey::generate().unwrap();
    let (svc, _stats, mut codes) = keyed_echo(&gw, "echo-1", key);
    let code = next_code(&mut codes).await;
    let dir = data_dir(&gw);
    let (exit, denied, err) = cli_json(&["pairings", "deny", &code, "--data-dir", &dir, "--json"]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(denied["pairing"]["state"], "denied");
    let err = tokio::time::timeout(Duration::from_secs(15), svc.try_linked())
        .await
        .expect("the SDK reports the refusal")
        .unwrap_err();
    assert_eq!(err.reject_code(), Some(RejectCode::PairingDenied), "{err}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_pairing_lapses_on_the_gateway_clock_and_the_next_hello_gets_a_new_code() {
    let clock = ManualClock::starting_now();
    let gw = gateway_with_clock(
        ed25519_config(|c| c.link.pairing.ttl = Duration::from_secs(600)),
        &clock,
    )
    .await;
    let key = RawKey::new();
    let pending = |f: &Frame| match f {
        Frame::Reject(r) if r.code == RejectCode::PairingRequired => r.pairing.clone().unwrap(),
        other => panic!("{other:?}"),
    };
    let (a, _) = attempt(&gw, |n| {
        key.hello("echo-1", n, now_ms(&clock), rand::random(), false)
    })
    .await;
    let first = pending(&a);
    assert_eq!(first.expires_at_ms, now_ms(&clock) + 600_000);
    clock.advance(Duration::from_secs(599));
    let (a, _) = attempt(&gw, |n| {
        key.hello("echo-1", n, now_ms(&clock), rand::random(), false)
    })
    .await;
    assert_eq!(pending(&a).code, first.code, "still the same pairing");
    clock.advance(Duration::from_secs(1));
    // Lapsed: an admin can no longer approve it...
    let store = store_of(&gw).await;
    let e = store
        .decide_pairing(&first.code, true, false, clock.now_ms(), "test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    // ...and the instance's next attempt starts a new one.
    let (a, _) = attempt(&gw, |n| {
        key.hello("echo-1", n, now_ms(&clock), rand::random(), false)
    })
    .await;
    let second = pending(&a);
    assert_ne!(second.code, first.code);
    store
        .decide_pairing(&second.code, true, false, clock.now_ms(), "test")
        .await
        .unwrap();
    store.close().await;
    let (a, _) = attempt(&gw, |n| {
        key.hello("echo-1", n, now_ms(&clock), rand::random(), false)
    })
    .await;
    assert!(matches!(a, Frame::HelloAck(_)), "{a:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_replayed_hello_is_refused_and_revokes_the_key() {
    let clock = ManualClock::starting_now();
    let gw = gateway_with_clock(ed25519_config(|_| {}), &clock).await;
    let key = RawKey::new();
    enrol(&gw, &clock, &key, "echo-1").await;
    let nonce: [u8; 32] = rand::random();
    let ts = now_ms(&clock);
    let (a, conn) = attempt(&gw, |n| key.hello("echo-1", n, ts, nonce, false)).await;
    assert!(matches!(a, Frame::HelloAck(_)), "{a:?}");
    drop(conn);
    // The same service nonce again (what a copy of that HELLO carries; the signature cannot
    // match this connection's challenge either).
    let (a, _) = attempt(&gw, |n| key.hello("echo-1", n, ts, nonce, false)).await;
    assert_eq!(code_of(&a), Some(RejectCode::BadCredential));
    assert_eq!(
        key_state(&gw, &key).await,
        (LinkKeyState::Revoked, Some("link_replay".into()))
    );
    // The key must pair again: even a fresh, correct HELLO is not trusted.
    let (a, _) = attempt(&gw, |n| {
        key.hello("echo-1", n, now_ms(&clock), rand::random(), false)
    })
    .await;
    assert_eq!(code_of(&a), Some(RejectCode::PairingRequired));
    let store = store_of(&gw).await;
    let audit = store.audit_list(50).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.event == "link_key_revoked" && e.reason.as_deref() == Some("link_replay")),
        "{audit:?}"
    );
    store.close().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stale_timestamp_is_refused_and_does_not_count_against_the_key() {
    let clock = ManualClock::starting_now();
    let gw = gateway_with_clock(
        ed25519_config(|c| {
            c.link.pairing.max_skew = Duration::from_secs(30);
            c.link.pairing.max_failures = 1;
        }),
        &clock,
    )
    .await;
    let key = RawKey::new();
    enrol(&gw, &clock, &key, "echo-1").await;
    for off in [-31_000i64, 31_000] {
        let ts = (clock.now_ms() + off) as u64;
        let (a, _) = attempt(&gw, |n| key.hello("echo-1", n, ts, rand::random(), false)).await;
        assert_eq!(code_of(&a), Some(RejectCode::StaleTimestamp), "{off}");
    }
    assert_eq!(key_state(&gw, &key).await.0, LinkKeyState::Approved);
    // Within the skew it links.
    let ts = (clock.now_ms() - 29_000) as u64;
    let (a, _) = attempt(&gw, |n| key.hello("echo-1", n, ts, rand::random(), false)).await;
    assert!(matches!(a, Frame::HelloAck(_)), "{a:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_bad_signatures_revokes_the_key() {
    let clock = ManualClock::starting_now();
    let gw = gateway_with_clock(
        ed25519_config(|c| {
            c.link.pairing.max_failures = 3;
            c.link.pairing.failure_window = Duration::from_secs(60);
        }),
        &clock,
    )
    .await;
    let key = RawKey::new();
    enrol(&gw, &clock, &key, "echo-1").await;
    // Failures older than the window are forgotten.
    for _ in 0..3 {
        let (a, _) = attempt(&gw, |n| {
            key.hello("echo-1", n, now_ms(&clock), rand::random(), true)
        })
        .await;
        assert_eq!(code_of(&a), Some(RejectCode::BadCredential));
    }
    clock.advance(Duration::from_secs(61));
    for _ in 0..3 {
        let (a, _) = attempt(&gw, |n| {
            key.hello("echo-1", n, now_ms(&clock), rand::random(), true)
        })
        .await;
        assert_eq!(code_of(&a), Some(RejectCode::BadCredential));
    }
    assert_eq!(key_state(&gw, &key).await.0, LinkKeyState::Approved);
    // One more within the window is one too many.
    let (a, _) = attempt(&gw, |n| {
        key.hello("echo-1", n, now_ms(&clock), rand::random(), true)
    })
    .await;
    assert_eq!(code_of(&a), Some(RejectCode::BadCredential));
    assert_eq!(
        key_state(&gw, &key).await,
        (LinkKeyState::Revoked, Some("link_failures".into()))
    );
    let (a, _) = attempt(&gw, |n| {
        key.hello("echo-1", n, now_ms(&clock), rand::random(), false)
    })
    .await;
    assert_eq!(
        code_of(&a),
        Some(RejectCode::PairingRequired),
        "re-pairing required"
    );
    gw.shutdown().await;
}

/// Approve whatever pairing the SDK instance shows, and wait for it to link.
async fn approve_and_link(
    gw: &TestGateway,
    svc: &portcullis_sdk::Running,
    codes: &mut tokio::sync::mpsc::UnboundedReceiver<portcullis_sdk::Pairing>,
) {
    let code = next_code(codes).await;
    let store = store_of(gw).await;
    store
        .decide_pairing(&code, true, false, portcullis::store::now_ms(), "test")
        .await
        .unwrap();
    store.close().await;
    tokio::time::timeout(Duration::from_secs(15), svc.linked())
        .await
        .expect("links after approval")
        .unwrap();
}

#[tokio::test]
async fn a_hello_with_another_key_for_a_live_instance_leaves_the_live_link_serving() {
    let gw = TestGateway::start(ed25519_config(|_| {})).await;
    let (key, _) = portcullis_sdk::InstanceKey::generate().unwrap();
    let (svc, stats, mut codes) = keyed_echo(&gw, "echo-1", key);
    approve_and_link(&gw, &svc, &mut codes).await;
    let (status, _, _) = gw.get("/echo/a").await;
    assert_eq!(status, 200);

    // Another key claims the same instance: it only gets a pairing of its own...
    let intruder = RawKey::new();
    let clock = ManualClock::starting_now();
    let (a, _) = attempt(&gw, |n| {
        intruder.hello("echo-1", n, now_ms(&clock), rand::random(), false)
    })
    .await;
    assert_eq!(code_of(&a), Some(RejectCode::PairingRequired));
    // ...and a bad signature for it is refused: neither touches the live link.
    let (a, _) = attempt(&gw, |n| {
        intruder.hello("echo-1", n, now_ms(&clock), rand::random(), true)
    })
    .await;
    assert_eq!(code_of(&a), Some(RejectCode::BadCredential));
    let before = stats.requests();
    for _ in 0..5 {
        let (status, _, _) = gw.get("/echo/b").await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        stats.requests(),
        before + 5,
        "the live instance served them"
    );
    assert_eq!(svc.links_up(), 1);
    svc.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_correct_hello_for_a_live_instance_replaces_it_and_its_calls_in_flight_finish() {
    let gw = TestGateway::start(ed25519_config(|_| {})).await;
    let (key, _) = portcullis_sdk::InstanceKey::generate().unwrap();
    let (old, old_stats, mut codes) = keyed_echo(&gw, "echo-1", key.clone());
    approve_and_link(&gw, &old, &mut codes).await;
    // A slow call on the old link.
    let slow = {
        let client = gw.client.clone();
        let url = gw.url("/sleep?ms=1500");
        tokio::spawn(async move {
            let req = http::Request::get(url).body(empty()).unwrap();
            collect(client.request(req).await.unwrap()).await
        })
    };
    eventually("the slow call reached the old instance", || {
        let s = old_stats.clone();
        async move { s.requests() >= 1 }
    })
    .await;
    // The same instance restarts (same key, same id) while the call runs.
    let (new, new_stats, _codes) = keyed_echo(&gw, "echo-1", key);
    tokio::time::timeout(Duration::from_secs(15), new.linked())
        .await
        .expect("the new link authenticates and replaces the old")
        .unwrap();
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, 200, "the call in flight finished: {body:?}");
    assert_eq!(json(&body)["slept_ms"], 1500);
    // New calls go to the new link only.
    let before = old_stats.requests();
    for _ in 0..5 {
        let (status, _, _) = gw.get("/echo/c").await;
        assert_eq!(status, 200);
    }
    assert_eq!(old_stats.requests(), before);
    assert_eq!(new_stats.requests(), 5);
    old.abort();
    new.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn revoking_an_instance_closes_its_link_and_it_must_pair_again() {
    let gw = TestGateway::start(ed25519_config(|_| {})).await;
    let (key, _) = portcullis_sdk::InstanceKey::generate().unwrap();
    let (svc, _stats, mut codes) = keyed_echo(&gw, "echo-1", key);
    approve_and_link(&gw, &svc, &mut codes).await;
    let dir = data_dir(&gw);
    let (exit, revoked, err) = cli_json(&[
        "pairings",
        "revoke",
        "echo/echo-1",
        "--data-dir",
        &dir,
        "--json",
    ]);
    assert_eq!(exit, 0, "{err}");
    assert_eq!(revoked["revoked"][0]["state"], "revoked");
    assert_eq!(revoked["revoked"][0]["revoked_reason"], "admin");
    // The gateway sees the change on its poll and closes the link; the instance then gets a
    // new pairing code.
    let code = next_code(&mut codes).await;
    assert!(portcullis_link::valid_pairing_code(&code));
    let (status, _, _) = gw.get("/echo/d").await;
    assert_eq!(status, 404);
    let (exit, _, _) = cli_json(&[
        "pairings",
        "revoke",
        "echo/nobody",
        "--data-dir",
        &dir,
        "--json",
    ]);
    assert_eq!(exit, 1);
    let (exit, _, _) = cli_json(&[
        "pairings",
        "revoke",
        "not a target",
        "--data-dir",
        &dir,
        "--json",
    ]);
    assert_eq!(exit, 2);
    svc.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_token_hello_for_an_ed25519_service_and_a_key_for_a_token_service_are_refused() {
    let mut cfg = ed25519_config(|_| {});
    cfg.services.insert(
        "tok".into(),
        ServiceConfig::token(hex::encode(portcullis::link::hash_token(&token_for("tok")))),
    );
    let gw = TestGateway::start(cfg).await;
    // A token for the Ed25519 service.
    let mut s = tokio::net::TcpStream::connect(gw.link).await.unwrap();
    let _ = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN)
        .await
        .unwrap();
    let mut hello = RawKey::new().hello("echo-1", &"00".repeat(32), 0, [0; 32], false);
    hello.credential = Credential::Token {
        token: token_for("echo"),
    };
    portcullis::link::write_frame(&mut s, &Frame::Hello(Box::new(hello)))
        .await
        .unwrap();
    let a = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN)
        .await
        .unwrap();
    assert_eq!(code_of(&a), Some(RejectCode::BadCredential));
    // A key for the token service: no pairing is created for it.
    let key = RawKey::new();
    let (a, _) = attempt(&gw, |n| {
        let mut h = key.hello(
            "tok-1",
            n,
            portcullis::store::now_ms() as u64,
            rand::random(),
            false,
        );
        h.service = "tok".into();
        h
    })
    .await;
    assert_eq!(code_of(&a), Some(RejectCode::BadCredential));
    let store = store_of(&gw).await;
    assert!(store.link_key(&key.public_hex()).await.unwrap().is_none());
    store.close().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn pending_pairings_are_bounded() {
    let gw = TestGateway::start(ed25519_config(|c| c.link.pairing.max_pending = 2)).await;
    let now = || portcullis::store::now_ms() as u64;
    let seen = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3 {
        let key = RawKey::new();
        let (a, _) = attempt(&gw, |n| {
            key.hello(&format!("echo-{i}"), n, now(), rand::random(), false)
        })
        .await;
        seen.lock().unwrap().push(code_of(&a));
        if let Frame::Reject(r) = &a {
            if r.code == RejectCode::Unavailable {
                assert!(r.retry_after_ms.is_some());
            }
        }
    }
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            Some(RejectCode::PairingRequired),
            Some(RejectCode::PairingRequired),
            Some(RejectCode::Unavailable)
        ]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_lists_approves_and_revokes_pairings_and_needs_its_capability() {
    let gw = TestGateway::start(ed25519_config(|_| {})).await;
    let (key, _) = portcullis_sdk::InstanceKey::generate().unwrap();
    let (svc, _stats, mut codes) = keyed_echo(&gw, "echo-1", key);
    let code = next_code(&mut codes).await;
    // Pairings span every workspace: the admin role in `*` administers them.
    gw.auth
        .store()
        .grant_role(
            &portcullis::store::NewRoleBinding {
                subject_kind: portcullis::store::SubjectKind::Key,
                subject_id: gw.key_id().to_string(),
                role: "admin".into(),
                workspace_id: "*".into(),
            },
            "test",
        )
        .await
        .unwrap();
    eventually("the admin binding applies", || async {
        gw.get("/api/v1/iam/pairings?pending=true").await.0 == 200
    })
    .await;
    let (status, _, body) = gw.get("/api/v1/iam/pairings?pending=true").await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(json(&body)["pairings"][0]["code"], code.as_str());
    // A key without the capability is refused with the fixed 403.
    let (_, reader) = gw.create_key("reader", &["echo.read"]).await;
    let req = http::Request::get(gw.url("/api/v1/iam/pairings"))
        .header("authorization", format!("Bearer {reader}"))
        .body(empty())
        .unwrap();
    let (status, _, _) = collect(gw.request(req).await).await;
    assert_eq!(status, 403);
    let (status, _, body) = gw
        .send(
            "POST",
            &format!("/api/v1/iam/pairings/{code}/approve"),
            b"{\"bind_instance\":true}",
        )
        .await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(json(&body)["pairing"]["bound_instance"], "echo-1");
    tokio::time::timeout(Duration::from_secs(15), svc.linked())
        .await
        .expect("links")
        .unwrap();
    let (status, _, body) = gw
        .send(
            "POST",
            "/api/v1/iam/pairings/revoke",
            b"{\"service\":\"echo\",\"instance\":\"echo-1\"}",
        )
        .await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(json(&body)["revoked"][0]["state"], "revoked");
    let (status, _, _) = gw
        .send("POST", "/api/v1/iam/pairings/ABCDEFGH/deny", b"")
        .await;
    assert_eq!(status, 404);
    svc.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn services_list_shows_each_link_with_its_credential_and_key_and_metrics_count_keys_and_failures(
) {
    let gw = TestGateway::start(ed25519_config(|_| {})).await;
    let (key, _) = portcullis_sdk::InstanceKey::generate().unwrap();
    let fingerprint = key.fingerprint();
    let (svc, _stats, mut codes) = keyed_echo(&gw, "echo-1", key);
    approve_and_link(&gw, &svc, &mut codes).await;
    gw.auth
        .store()
        .grant_role(
            &portcullis::store::NewRoleBinding {
                subject_kind: portcullis::store::SubjectKind::Key,
                subject_id: gw.key_id().to_string(),
                role: "admin".into(),
                workspace_id: "*".into(),
            },
            "test",
        )
        .await
        .unwrap();
    eventually("the admin binding applies", || async {
        gw.get("/api/v1/iam/services").await.0 == 200
    })
    .await;
    // The CLI asks the running gateway, the key from the environment.
    let base = format!("http://{}", gw.ingress);
    // Off the runtime: the gateway under test answers on it meanwhile.
    let (b, k) = (base.clone(), gw.api_key().to_string());
    let out = tokio::task::spawn_blocking(move || {
        crate::common::process::run(
            &["services", "list", "--gateway", &b, "--json"],
            &[("PORTCULLIS_KEY", &k)],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let link = &v["services"][0]["links"][0];
    assert_eq!(v["services"][0]["service"], "echo");
    assert_eq!(link["instance"], "echo-1");
    assert_eq!(link["state"], "online");
    assert_eq!(link["credential"], "ed25519");
    assert_eq!(link["key_fingerprint"], fingerprint.as_str());
    assert!(link["rtt_ms"].as_f64().is_some() && link["since"].as_str().is_some());
    let out = crate::common::process::run(&["services", "list", "--gateway", &base], &[]);
    assert_eq!(out.status.code(), Some(2), "no key: usage error");

    // A bad signature is counted by reason; the store's keys by state.
    let intruder = RawKey::new();
    let now = portcullis::store::now_ms() as u64;
    let (a, _) = attempt(&gw, |n| {
        intruder.hello("echo-9", n, now, rand::random(), true)
    })
    .await;
    assert_eq!(code_of(&a), Some(RejectCode::BadCredential));
    eventually("metrics count keys and the failure", || async {
        let (_, _, m) = gw.get("/metrics").await;
        let m = String::from_utf8_lossy(&m).to_string();
        m.contains("portcullis_link_keys{state=\"approved\"} 1")
            && m.contains("portcullis_auth_failures_total{reason=\"link_signature\"} 1")
            && m.contains("portcullis_link_pairings_total{event=\"requested\"} 1")
    })
    .await;
    svc.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_pending_pairing_is_posted_signed_to_the_webhook_and_a_failing_one_is_recorded() {
    // A local webhook receiver.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(http::HeaderMap, bytes::Bytes)>();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let secret = "webhook-secret-0123456789";
    let gw = TestGateway::start(ed25519_config(|c| {
        c.link.pairing.webhook = Some(portcullis::link::webhook::WebhookConfig {
            url: format!("http://{hook}/hook"),
            secret: portcullis::config::Secret::new(secret),
            attempts: 3,
            timeout: Duration::from_secs(2),
        });
    }))
    .await;
    let key = RawKey::new();
    let now = portcullis::store::now_ms() as u64;
    let (a, _) = attempt(&gw, |n| key.hello("echo-1", n, now, rand::random(), false)).await;
    let Frame::Reject(r) = a else { panic!() };
    let code = r.pairing.unwrap().code;
    let (headers, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the webhook is called")
        .unwrap();
    let sig = headers[portcullis::link::webhook::SIGNATURE_HEADER]
        .to_str()
        .unwrap();
    assert_eq!(
        sig,
        portcullis::link::webhook::signature(secret.as_bytes(), &body)
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["event"], "pairing.pending");
    assert_eq!(v["code"], code.as_str());
    assert_eq!(v["service"], "echo");
    assert_eq!(v["instance"], "echo-1");
    let dir = data_dir(&gw);
    eventually("the delivery is recorded", || {
        let dir = dir.clone();
        async move {
            let (_, list, _) = tokio::task::spawn_blocking(move || {
                cli_json(&["pairings", "list", "--data-dir", &dir, "--json"])
            })
            .await
            .unwrap();
            list["pairings"][0]["webhook"] == "sent"
        }
    })
    .await;
    gw.shutdown().await;

    // A webhook nobody answers: retried, then recorded as failed for the admin to see.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = TestGateway::start(ed25519_config(|c| {
        c.link.pairing.webhook = Some(portcullis::link::webhook::WebhookConfig {
            url: format!("http://{closed}/hook"),
            secret: portcullis::config::Secret::new(secret),
            attempts: 2,
            timeout: Duration::from_secs(1),
        });
    }))
    .await;
    let (a, _) = attempt(&gw, |n| key.hello("echo-1", n, now, rand::random(), false)).await;
    assert_eq!(code_of(&a), Some(RejectCode::PairingRequired));
    let dir = data_dir(&gw);
    eventually("the failure is recorded", || {
        let dir = dir.clone();
        async move {
            let (_, list, _) = tokio::task::spawn_blocking(move || {
                cli_json(&["pairings", "list", "--data-dir", &dir, "--json"])
            })
            .await
            .unwrap();
            list["pairings"][0]["webhook"] == "failed"
                && list["pairings"][0]["webhook_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("attempt 2: cannot connect"))
        }
    })
    .await;
    gw.shutdown().await;
}
