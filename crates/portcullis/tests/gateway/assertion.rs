//! The identity a service can verify (issue 10 item 7), through the real gateway and SDK: the
//! gateway's assertion reaches the handler as a verified `Identity`, nothing a client sends
//! can stand in for it, key rotations are pushed over the link without a failed call, and a
//! version 1 service (an older SDK) still links.

use crate::common::*;
use axum::routing::{get, post};
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame as BodyFrame;
use portcullis_link::headers::IDENTITY;
use portcullis_link::jws;
use portcullis_sdk::{Endpoint, Identity};
use serde_json::{json, Value};
use std::time::Duration;

/// A service that reports what it received: the verified identity, how many identity headers
/// came with the call, and (for uploads) the trailers.
async fn probe(gw: &TestGateway) -> portcullis_sdk::Running {
    let router = axum::Router::new()
        .route(
            "/probe/whoami",
            get(|id: Identity, headers: HeaderMap| async move {
                axum::Json(describe(&id, &headers, None))
            }),
        )
        .route(
            "/probe/trailers",
            post(
                |id: Identity, headers: HeaderMap, body: axum::body::Body| async move {
                    let collected = body.collect().await.expect("body");
                    let trailers = collected.trailers().cloned().unwrap_or_default();
                    axum::Json(describe(&id, &headers, Some(&trailers)))
                },
            ),
        );
    let running = portcullis_sdk::Service::builder("probe")
        .gateway(gw.link_url())
        .token(token_for("probe"))
        .instance_id("probe-1")
        .endpoint(Endpoint::get("/probe/whoami"))
        .endpoint(Endpoint::post("/probe/trailers").streaming())
        .serve(router)
        .expect("service builds");
    tokio::time::timeout(Duration::from_secs(10), running.linked())
        .await
        .expect("probe links")
        .unwrap();
    running
}

fn describe(id: &Identity, headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Value {
    json!({
        "subject": id.subject(),
        "workspace_id": id.workspace_id(),
        "workspace_name": id.workspace_name(),
        "credential": [id.credential_kind(), id.credential_id()],
        "kid": jws::peek_kid(id.assertion()),
        "identity_headers": headers.get_all(IDENTITY).iter().count(),
        "assertion_is_the_header": headers.get(IDENTITY).is_some_and(|v| v == id.assertion()),
        "trailers": trailers.map(|t| t.keys().map(|k| k.as_str().to_string()).collect::<Vec<_>>()),
    })
}

/// An assertion a client might forge: well formed, signed by a key of its own, naming an
/// admin.
fn forged() -> String {
    let doc =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let now = portcullis::store::now_ms() / 1000;
    let claims = jws::AssertionClaims {
        iss: "portcullis".into(),
        sub: "key:admin".into(),
        ws: "ws_other".into(),
        wsn: "other".into(),
        via: jws::AssertedVia {
            kind: "api_key".into(),
            id: "admin".into(),
        },
        aud: "probe".into(),
        iat: now,
        exp: now + 60,
    };
    jws::sign(&claims, "forged-kid", jws::TYP_ASSERTION, &key).unwrap()
}

async fn whoami(gw: &TestGateway) -> (http::StatusCode, Value) {
    let (status, _, body) = gw.get("/probe/whoami").await;
    let v = if status.is_success() {
        json(&body)
    } else {
        Value::Null
    };
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_call_reaches_the_handler_with_its_verified_identity() {
    let gw = TestGateway::with_services(&["probe"]).await;
    let _svc = probe(&gw).await;
    let (status, v) = whoami(&gw).await;
    assert_eq!(status, http::StatusCode::OK, "{v}");
    assert_eq!(v["subject"], format!("key:{}", gw.key_id()));
    assert_eq!(v["workspace_name"], "default");
    assert!(v["workspace_id"].as_str().is_some_and(|w| !w.is_empty()));
    assert_eq!(v["credential"], json!(["api_key", gw.key_id()]));
    assert_eq!(v["identity_headers"], 1);
    assert_eq!(v["assertion_is_the_header"], true);
    let kid = gw
        .running
        .as_ref()
        .unwrap()
        .keys()
        .signer(portcullis::store::now_ms());
    assert_eq!(v["kid"], *kid.unwrap().kid);
    // Signed once, then reused: further calls sign nothing (per data-plane thread, so at
    // most one signature per thread for the same caller).
    for _ in 0..20 {
        assert_eq!(whoami(&gw).await.0, http::StatusCode::OK);
    }
    let (_, _, m) = gw.get("/metrics").await;
    let m = String::from_utf8_lossy(&m);
    let signed: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_identity_assertions_signed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{m}"));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(
        (1..=threads + 1).contains(&signed),
        "{signed} signatures\n{m}"
    );
    assert!(
        m.contains("portcullis_identity_assertion_failures_total 0"),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_service_answers_whoami_with_the_callers_identity() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = gw.echo("echo-1").await;
    let (status, _, body) = gw.get("/whoami").await;
    assert_eq!(status, http::StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["subject"], format!("key:{}", gw.key_id()));
    assert_eq!(v["workspace"]["name"], "default");
    assert_eq!(
        v["credential"],
        json!({"kind": "api_key", "id": gw.key_id()})
    );
    // Without a key the gateway refuses, and no assertion is ever made.
    let (status, _, _) = gw.get_with_key("/whoami", None).await;
    assert_eq!(status, http::StatusCode::UNAUTHORIZED);
    gw.shutdown().await;
}

/// Whatever a client sends as `x-portcullis-identity`, in the head (any case, repeated) or in
/// trailers, the service sees exactly one, the gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sent_identity_header_or_trailer_never_reaches_the_service() {
    let gw = TestGateway::with_services(&["probe"]).await;
    let _svc = probe(&gw).await;
    let forged = forged();

    // Heads, over HTTP/1.1.
    let req = http::Request::get(gw.url("/probe/whoami"))
        .header("x-portcullis-identity", &forged)
        .header("X-Portcullis-Identity", "second")
        .body(empty())
        .unwrap();
    let (status, _, body) = collect(gw.request(req).await).await;
    assert_eq!(status, http::StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["subject"], format!("key:{}", gw.key_id()));
    assert_eq!(v["identity_headers"], 1);
    assert_eq!(v["assertion_is_the_header"], true);

    // Trailers, over HTTP/2.
    let mut trailers = HeaderMap::new();
    trailers.insert(IDENTITY, forged.parse().unwrap());
    trailers.insert("x-kept", "yes".parse().unwrap());
    let frames: Vec<Result<BodyFrame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
        Ok(BodyFrame::data(Bytes::from_static(b"hello"))),
        Ok(BodyFrame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let req = http::Request::post(gw.url("/probe/trailers"))
        .header("authorization", format!("Bearer {}", gw.api_key()))
        .header("x-portcullis-identity", &forged)
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = h2_client().request(req).await.expect("h2 call");
    let (status, _, body) = collect(resp).await;
    assert_eq!(status, http::StatusCode::OK, "{body:?}");
    let v = json(&body);
    assert_eq!(v["subject"], format!("key:{}", gw.key_id()));
    assert_eq!(v["identity_headers"], 1);
    assert_eq!(v["trailers"], json!(["x-kept"]));

    // Trailers, over HTTP/1.1 chunked, on a raw socket.
    let raw = format!(
        "POST /probe/trailers HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\n\
         transfer-encoding: chunked\r\nte: trailers\r\nconnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nx-portcullis-identity: {forged}\r\nx-kept: yes\r\n\r\n",
        gw.api_key()
    );
    let answer = raw_http1(&gw, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(
        body.contains(&format!(r#""subject":"key:{}""#, gw.key_id())),
        "{answer}"
    );
    assert!(body.contains(r#""identity_headers":1"#), "{answer}");
    assert!(!body.contains("x-portcullis-identity"), "{answer}");
    gw.shutdown().await;
}

async fn raw_http1(gw: &TestGateway, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.ingress).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    // A chunked response body: good enough to search.
    String::from_utf8_lossy(&out).into_owned()
}

/// A key added to the ring is pushed to the service at once and signs after the publish
/// delay; the old one is then dropped. No call fails on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_keep_working_across_a_signing_key_rotation_pushed_over_the_link() {
    let gw = TestGateway::with_services(&["probe"]).await;
    let _svc = probe(&gw).await;
    let ring = gw.running.as_ref().unwrap().keys().clone();
    let (status, v) = whoami(&gw).await;
    assert_eq!(status, http::StatusCode::OK);
    let old = ring.load().keys()[0].clone();
    assert_eq!(v["kid"], *old.kid);

    // A rotation in the store: the new key is published (pushed over the link) at once and
    // signs after the publish delay; the old one stops signing then. Every call works.
    let rotation = gw
        .running
        .as_ref()
        .unwrap()
        .handles
        .signing
        .rotate()
        .await
        .unwrap();
    let new_kid = rotation.kid.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, v) = whoami(&gw).await;
        assert_eq!(
            status,
            http::StatusCode::OK,
            "a call failed during the rotation"
        );
        if v["kid"] == *new_kid {
            break;
        }
        assert_eq!(v["kid"], *old.kid);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key never signed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Calls go on under the new key.
    for _ in 0..10 {
        let (status, v) = whoami(&gw).await;
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(v["kid"], *new_kid);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.shutdown().await;
}

/// Version 2 HELLO_ACKs carry the issuer and the keys; a version 1 service (an older SDK,
/// which refuses unknown fields) gets a version 1 HELLO_ACK without them and links as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_service_links_without_keys_and_a_version_2_one_gets_them() {
    use portcullis::link::{read_frame_versioned, write_frame_as};
    use portcullis_link::{Credential, Frame, Hello, MAX_FRAME_LEN};
    let gw = TestGateway::with_services(&["raw"]).await;
    let signer = gw
        .running
        .as_ref()
        .unwrap()
        .keys()
        .signer(portcullis::store::now_ms())
        .unwrap();
    for version in [1u8, 2] {
        let mut s = tokio::net::TcpStream::connect(gw.link).await.unwrap();
        let (v, challenge) = read_frame_versioned(&mut s, MAX_FRAME_LEN).await.unwrap();
        assert_eq!(
            v, 1,
            "CHALLENGE goes out as version 1, readable by every service"
        );
        let Frame::Challenge(c) = challenge else {
            panic!("expected CHALLENGE, got {challenge:?}")
        };
        assert_eq!(c.versions, vec![1, 2, 3, 4]);
        let hello = Hello {
            service: "raw".into(),
            instance_id: format!("raw-v{version}"),
            version: "0".into(),
            region: None,
            endpoints: vec![descriptor("GET", &format!("/raw/v{version}"))],
            openapi: None,
            sessions: None,
            credential: Credential::Token {
                token: token_for("raw"),
            },
        };
        write_frame_as(&mut s, &Frame::Hello(Box::new(hello)), version)
            .await
            .unwrap();
        let (v, ack) = read_frame_versioned(&mut s, MAX_FRAME_LEN).await.unwrap();
        assert_eq!(v, version, "HELLO_ACK in the HELLO's version");
        let Frame::HelloAck(ack) = ack else {
            panic!("expected HELLO_ACK, got {ack:?}")
        };
        match (version, ack.assertions) {
            (1, None) => {}
            (2, Some(a)) => {
                assert_eq!(a.issuer, "portcullis");
                let kids: Vec<_> = a.keys.public_keys().into_iter().map(|(k, _)| k).collect();
                assert_eq!(kids, vec![signer.kid.to_string()]);
            }
            (v, a) => panic!("version {v}: assertions {a:?}"),
        }
    }
    gw.shutdown().await;
}
