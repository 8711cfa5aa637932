//! Handshake refusals over a raw socket: each bad HELLO gets its REJECT code, and the gateway
//! keeps serving linked services throughout.

use crate::common::*;
use portcullis_link::{
    Credential, EndpointDescriptor, Frame, FrameHeader, Hello, Protocol, RejectCode, HEADER_LEN,
    MAX_FRAME_LEN,
};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn read_frame(s: &mut TcpStream) -> Frame {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).await.expect("frame header");
    let h = FrameHeader::parse(&head, MAX_FRAME_LEN).expect("valid header");
    let mut body = vec![0u8; h.len as usize];
    s.read_exact(&mut body).await.expect("frame body");
    Frame::decode_body(&h, &body).expect("valid frame")
}

/// Connect, read the CHALLENGE, send `bytes`, return the gateway's answer.
async fn answer_to(gw: &TestGateway, bytes: &[u8]) -> Frame {
    let mut s = TcpStream::connect(gw.link).await.unwrap();
    assert!(matches!(read_frame(&mut s).await, Frame::Challenge(_)));
    s.write_all(bytes).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s))
        .await
        .expect("an answer")
}

fn hello(service: &str, token: &str, path: &str) -> Hello {
    Hello {
        service: service.into(),
        instance_id: "raw-1".into(),
        version: "0".into(),
        region: None,
        endpoints: vec![EndpointDescriptor {
            method: "GET".into(),
            path: path.into(),
            timeout_ms: None,
            streaming: false,
            capability: None,
            protocol: Protocol::Http,
            workspace_scoped: false,
        }],
        openapi: None,
        sessions: None,
        credential: Credential::Token {
            token: token.into(),
        },
    }
}

fn code(f: Frame) -> RejectCode {
    match f {
        Frame::Reject(r) => r.code,
        other => panic!("expected REJECT, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_get_their_reject_codes_and_the_gateway_keeps_serving() {
    let gw = TestGateway::with_services(&["echo", "raw"]).await;
    let (_svc, _) = gw.echo("echo-1").await;

    // Malformed: right header, body is not JSON.
    let mut bytes = vec![b'P', b'C', 1, 2];
    bytes.extend_from_slice(&5u32.to_be_bytes());
    bytes.extend_from_slice(b"{nope");
    assert_eq!(
        code(answer_to(&gw, &bytes).await),
        RejectCode::MalformedFrame
    );

    // Garbage magic.
    assert_eq!(
        code(answer_to(&gw, b"GET / HTTP/1.1\r\n\r\n").await),
        RejectCode::MalformedFrame
    );

    // Oversized: the header announces more than the limit; the body is never read.
    let mut bytes = vec![b'P', b'C', 1, 2];
    bytes.extend_from_slice(&(MAX_FRAME_LEN + 1).to_be_bytes());
    assert_eq!(code(answer_to(&gw, &bytes).await), RejectCode::TooLarge);

    // Unknown version.
    let mut bytes = Frame::Hello(Box::new(hello("raw", &token_for("raw"), "/raw")))
        .encode()
        .unwrap();
    bytes[2] = 99;
    assert_eq!(
        code(answer_to(&gw, &bytes).await),
        RejectCode::UnsupportedVersion
    );

    // Wrong token, and unknown service: the same answer.
    let bytes = Frame::Hello(Box::new(hello("raw", "wrong", "/raw")))
        .encode()
        .unwrap();
    assert_eq!(
        code(answer_to(&gw, &bytes).await),
        RejectCode::BadCredential
    );
    let bytes = Frame::Hello(Box::new(hello("ghost", "x", "/raw")))
        .encode()
        .unwrap();
    assert_eq!(
        code(answer_to(&gw, &bytes).await),
        RejectCode::BadCredential
    );

    // A route another service serves.
    let bytes = Frame::Hello(Box::new(hello("raw", &token_for("raw"), "/stats")))
        .encode()
        .unwrap();
    assert_eq!(
        code(answer_to(&gw, &bytes).await),
        RejectCode::RouteConflict
    );

    // An invalid template.
    let bytes = Frame::Hello(Box::new(hello("raw", &token_for("raw"), "/a/{*x}/b")))
        .encode()
        .unwrap();
    assert_eq!(
        code(answer_to(&gw, &bytes).await),
        RejectCode::InvalidDescriptor
    );

    // A valid HELLO is acknowledged.
    let bytes = Frame::Hello(Box::new(hello("raw", &token_for("raw"), "/raw")))
        .encode()
        .unwrap();
    assert!(matches!(answer_to(&gw, &bytes).await, Frame::HelloAck(_)));

    // Through all of it the linked service kept serving.
    let (status, _, _) = gw.get("/echo/still-here").await;
    assert_eq!(status, http::StatusCode::OK);

    // The refused link credentials reached the one audit sink, like refused API keys.
    let store = gw.auth.store().clone();
    eventually("link refusals in the audit log", || {
        let store = store.clone();
        async move {
            store
                .audit_list(100)
                .await
                .unwrap()
                .iter()
                .any(|e| e.reason.as_deref() == Some("link_token"))
        }
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_hello_cannot_kick_a_live_link() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, stats) = gw.echo("echo-1").await;
    let mut h = hello("echo", "not-the-token", "/other");
    h.instance_id = "echo-1".into();
    let bytes = Frame::Hello(Box::new(h)).encode().unwrap();
    assert_eq!(
        code(answer_to(&gw, &bytes).await),
        RejectCode::BadCredential
    );
    let (status, _, _) = gw.get("/echo/x").await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(stats.requests(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_is_dropped() {
    // The service is linked through a relay we can freeze: bytes stop flowing both ways but
    // the sockets stay open, as with a dead host. The gateway must drop the link on its own.
    let gw = TestGateway::with_services(&["echo"]).await;
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let link = gw.link;
    let f = frozen.clone();
    tokio::spawn(async move {
        let (mut a, _) = relay.accept().await.unwrap();
        let mut b = TcpStream::connect(link).await.unwrap();
        let (mut ar, mut aw) = a.split();
        let (mut br, mut bw) = b.split();
        let mut buf1 = vec![0u8; 65536];
        let mut buf2 = vec![0u8; 65536];
        loop {
            tokio::select! {
                n = ar.read(&mut buf1) => {
                    let Ok(n) = n else { break };
                    if n == 0 { break; }
                    if !f.load(std::sync::atomic::Ordering::SeqCst) { let _ = bw.write_all(&buf1[..n]).await; }
                }
                n = br.read(&mut buf2) => {
                    let Ok(n) = n else { break };
                    if n == 0 { break; }
                    if !f.load(std::sync::atomic::Ordering::SeqCst) { let _ = aw.write_all(&buf2[..n]).await; }
                }
            }
        }
        // Keep both sockets open (silent) until the test ends.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop((a, b));
    });

    let (svc, _stats) = serve_echo(
        portcullis_sdk::Service::builder("echo")
            .gateway(format!("tcp://{relay_addr}"))
            .token(token_for("echo"))
            .instance_id("echo-silent"),
    )
    .await;
    let (status, _, _) = gw.get("/echo/x").await;
    assert_eq!(status, http::StatusCode::OK);

    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    // Heartbeat is 200 ms in tests: the link goes Unstable, then is dropped and its routes
    // disappear.
    eventually("the silent link is dropped", || async {
        let (status, _, _) = gw.get("/echo/x").await;
        status == http::StatusCode::NOT_FOUND
    })
    .await;
    svc.abort();
    gw.shutdown().await;
}

/// `docs/link-protocol.md` §4.5: paths under `/.well-known/portcullis/` belong to the link
/// (health exchange, key push) and a HELLO declaring one is refused, however it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_declaring_a_reserved_path_is_refused_with_invalid_descriptor() {
    let gw = TestGateway::with_services(&["raw"]).await;
    for path in [
        portcullis_link::HEALTH_PATH,
        portcullis_link::KEYS_PATH,
        "/.well-known/portcullis/{*rest}",
        "/.well-known/portcullis",
    ] {
        let bytes = Frame::Hello(Box::new(hello("raw", &token_for("raw"), path)))
            .encode()
            .unwrap();
        assert_eq!(
            code(answer_to(&gw, &bytes).await),
            RejectCode::InvalidDescriptor,
            "{path}"
        );
    }
    // Its neighbours are ordinary paths.
    let bytes = Frame::Hello(Box::new(hello(
        "raw",
        &token_for("raw"),
        "/.well-known/raw",
    )))
    .encode()
    .unwrap();
    assert!(matches!(answer_to(&gw, &bytes).await, Frame::HelloAck(_)));
    gw.shutdown().await;
}
