//! Unit tests of the handshake, the HTTP/2 serving that follows it on the same stream, and the
//! supervisor, against a fake gateway written with the link crate.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_link::headers::IDENTITY;
use portcullis_link::jws::{self, AssertedVia, AssertionClaims, Jwk, Jwks};
use portcullis_link::{
    AssertionKeys, Challenge, Credential, EndpointDescriptor, Frame, FrameHeader, HealthReport,
    Hello, HelloAck, LinkLimits, Reject, RejectCode, HEADER_LEN, HEALTH_PATH, MAX_FRAME_LEN,
    VERSIONS,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{oneshot, watch, Notify};

use crate::handshake::{handshake, handshake_within, Proving};
use crate::serve::{serve_link, LinkService, LinkSettings, LinkTrust, LinkUp, Shared};
use crate::{Endpoint, ErrorKind, Service};
use ring::signature::Ed25519KeyPair;

const TOKEN: &str = "s3cret-token";

async fn read_frame<IO: AsyncRead + Unpin>(io: &mut IO) -> Frame {
    let mut head = [0u8; HEADER_LEN];
    io.read_exact(&mut head).await.unwrap();
    let header = FrameHeader::parse(&head, MAX_FRAME_LEN).unwrap();
    let mut body = vec![0u8; header.len as usize];
    io.read_exact(&mut body).await.unwrap();
    Frame::decode_body(&header, &body).unwrap()
}

async fn write_frame<IO: AsyncWrite + Unpin>(io: &mut IO, frame: Frame) {
    io.write_all(&frame.encode().unwrap()).await.unwrap();
    io.flush().await.unwrap();
}

fn challenge(versions: Vec<u8>) -> Frame {
    Frame::Challenge(Challenge {
        nonce: "ab".repeat(32),
        server_time_ms: 1,
        versions,
    })
}

fn ack() -> HelloAck {
    HelloAck {
        link_id: "link-1".into(),
        heartbeat_interval_ms: 5_000,
        limits: LinkLimits {
            max_concurrent_streams: 100,
            max_request_body: 1 << 20,
        },
        assertions: Some(AssertionKeys {
            issuer: ISSUER.into(),
            keys: test_jwks(),
        }),
    }
}

const ISSUER: &str = "portcullis";
const KID: &str = "test-key-1";

/// The fake gateway's signing key.
fn test_key() -> &'static Ed25519KeyPair {
    static KEY: OnceLock<Ed25519KeyPair> = OnceLock::new();
    KEY.get_or_init(new_key)
}

fn new_key() -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
}

fn test_jwks() -> Jwks {
    Jwks {
        keys: vec![Jwk::ed25519(KID, &jws::public_key_of(test_key()))],
    }
}

/// Claims the fake gateway asserts: an API key's subject, for the service `echo`, now.
fn claims() -> AssertionClaims {
    let now = crate::identity::now_s();
    AssertionClaims {
        iss: ISSUER.into(),
        sub: "key:k1".into(),
        ws: "ws_1".into(),
        wsn: "default".into(),
        via: AssertedVia {
            kind: "api_key".into(),
            id: "k1".into(),
        },
        aud: "echo".into(),
        iat: now,
        exp: now + 60,
    }
}

/// A valid assertion of [`claims`].
fn assertion() -> String {
    jws::sign(&claims(), KID, jws::TYP_ASSERTION, test_key()).unwrap()
}

/// A GET to the service carrying a valid assertion, as the gateway sends it.
fn signed_get<T>(uri: T) -> http::request::Builder
where
    http::Uri: TryFrom<T>,
    <http::Uri as TryFrom<T>>::Error: Into<http::Error>,
{
    Request::get(uri).header(IDENTITY, assertion())
}

/// A POST to the service carrying a valid assertion.
fn signed_post<T>(uri: T) -> http::request::Builder
where
    http::Uri: TryFrom<T>,
    <http::Uri as TryFrom<T>>::Error: Into<http::Error>,
{
    Request::post(uri).header(IDENTITY, assertion())
}

fn hello() -> Hello {
    Hello {
        service: "echo".into(),
        instance_id: "echo-1".into(),
        version: "1.0.0".into(),
        region: Some("eu-west".into()),
        endpoints: vec![EndpointDescriptor::from(Endpoint::get("/hello"))],
        openapi: None,
        sessions: None,
        credential: Credential::Token {
            token: TOKEN.into(),
        },
    }
}

/// Gateway side up to HELLO: sends CHALLENGE, returns the HELLO it got.
async fn gateway_hello(io: &mut DuplexStream) -> Hello {
    write_frame(io, challenge(VERSIONS.to_vec())).await;
    match read_frame(io).await {
        Frame::Hello(h) => *h,
        other => panic!("expected HELLO, got {other:?}"),
    }
}

struct Gate {
    entered: Arc<Notify>,
    release: Arc<Notify>,
    dropped: watch::Sender<bool>,
}

/// A router with `/hello` and `/slow` (which waits for `release` and reports its drop).
fn router() -> (
    axum::Router,
    Arc<Notify>,
    Arc<Notify>,
    watch::Receiver<bool>,
) {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (dropped, dropped_rx) = watch::channel(false);
    let gate = Arc::new(Gate {
        entered: Arc::clone(&entered),
        release: Arc::clone(&release),
        dropped,
    });
    let r = axum::Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/slow",
            get(move || {
                let gate = Arc::clone(&gate);
                async move {
                    struct OnDrop(Arc<Gate>);
                    impl Drop for OnDrop {
                        fn drop(&mut self) {
                            self.0.dropped.send_replace(true);
                        }
                    }
                    let _guard = OnDrop(Arc::clone(&gate));
                    gate.entered.notify_one();
                    gate.release.notified().await;
                    "done"
                }
            }),
        );
    (r, entered, release, dropped_rx)
}

async fn h2_client(io: DuplexStream) -> SendRequest<Empty<Bytes>> {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn get_body(send: &mut SendRequest<Empty<Bytes>>, path: &str) -> (StatusCode, Bytes) {
    let req = signed_get(format!("http://service{path}"))
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// The service half of a link over `io`: handshake, then serve `router` until `stop`.
fn spawn_service_side(
    io: tokio::io::DuplexStream,
    router: axum::Router,
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), crate::Error>> {
    spawn_service_side_with(io, router, shared, stop, default_settings())
}

fn default_settings() -> LinkSettings {
    LinkSettings {
        max_header_list_size: crate::DEFAULT_MAX_HEADER_LIST_SIZE,
    }
}

fn spawn_service_side_with(
    mut io: tokio::io::DuplexStream,
    router: axum::Router,
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
    settings: LinkSettings,
) -> tokio::task::JoinHandle<Result<(), crate::Error>> {
    let up = LinkUp::new(shared);
    tokio::spawn(async move {
        let ack = handshake(&mut io, &hello(), Proving::default()).await?;
        let slot = slot_for("127.0.0.1:9".parse().unwrap());
        let trust = LinkTrust::new(crate::supervisor::link_verifier(&slot, &ack, "test"));
        serve_link(
            io,
            &ack,
            &settings,
            LinkService::new(router, up, trust),
            stop,
        )
        .await
        .map(|_| ())
    })
}
#[tokio::test]
async fn handshake_then_http2_on_the_same_stream() {
    let (svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let (r, ..) = router();
    let shared = Shared::new(100, 1);
    let (stop, stop_rx) = watch::channel(false);
    let service_side = spawn_service_side(svc_io, r, &shared, stop_rx);

    let got = gateway_hello(&mut gw_io).await;
    assert_eq!(got, hello());
    assert!(!format!("{got:?}").contains(TOKEN));
    let Credential::Token { token } = &got.credential else {
        panic!("not a token credential")
    };
    assert_eq!(token, TOKEN);
    write_frame(&mut gw_io, Frame::HelloAck(ack())).await;

    // The gateway starts HTTP/2 right away: nothing may have been over-read by the SDK.
    let mut send = h2_client(gw_io).await;
    assert_eq!(
        get_body(&mut send, "/hello").await,
        (StatusCode::OK, Bytes::from_static(b"hello"))
    );
    let (status, body) = get_body(&mut send, HEALTH_PATH).await;
    assert_eq!(status, StatusCode::OK);
    let report: HealthReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        report,
        HealthReport {
            in_flight: 0,
            load: 0.0,
            draining: false
        }
    );
    assert_eq!(get_body(&mut send, "/nope").await.0, StatusCode::NOT_FOUND);

    stop.send_replace(true);
    service_side.await.unwrap().unwrap();
}

/// The gateway's drain notice: only `POST` takes it (anything else is 405 and changes
/// nothing); then the link drains — the call in flight finishes, no new one is taken — and
/// ends as drained by the gateway, not as a crash.
#[tokio::test]
async fn the_gateways_drain_notice_drains_the_link() {
    let (svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let (r, entered, release, _) = router();
    let shared = Shared::new(100, 1);
    let (_stop, stop_rx) = watch::channel(false);
    let up = LinkUp::new(&shared);
    let service_side = tokio::spawn(async move {
        let mut io = svc_io;
        let ack = handshake(&mut io, &hello(), Proving::default()).await?;
        let slot = slot_for("127.0.0.1:9".parse().unwrap());
        let trust = LinkTrust::new(crate::supervisor::link_verifier(&slot, &ack, "test"));
        let settings = default_settings();
        serve_link(io, &ack, &settings, LinkService::new(r, up, trust), stop_rx).await
    });
    gateway_hello(&mut gw_io).await;
    write_frame(&mut gw_io, Frame::HelloAck(ack())).await;
    let mut send = h2_client(gw_io).await;
    let drain = |method: &str| {
        Request::builder()
            .method(method)
            .uri(format!("http://service{}", portcullis_link::DRAIN_PATH))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    for method in ["GET", "PUT", "DELETE"] {
        let resp = send.send_request(drain(method)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
    }
    assert_eq!(get_body(&mut send, "/hello").await.0, StatusCode::OK);

    let mut slow_send = send.clone();
    let slow = tokio::spawn(async move { get_body(&mut slow_send, "/slow").await });
    entered.notified().await;
    let resp = send.send_request(drain("POST")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // GOAWAY: the link takes no new call...
    tokio::time::timeout(Duration::from_secs(10), async {
        while send.ready().await.is_ok() {
            let req = signed_get("http://service/hello".to_string())
                .body(Empty::new())
                .unwrap();
            if send.send_request(req).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the link refuses new calls after the notice");
    // ... and the one in flight finishes.
    release.notify_one();
    assert_eq!(
        slow.await.unwrap(),
        (StatusCode::OK, Bytes::from_static(b"done"))
    );
    let end = tokio::time::timeout(Duration::from_secs(10), service_side)
        .await
        .expect("the link ends once drained")
        .unwrap()
        .unwrap();
    assert_eq!(end, crate::serve::LinkEnd::GatewayDrained);
}

#[tokio::test]
async fn reject_is_reported_with_code_and_retry_after() {
    let (mut svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let service_side =
        tokio::spawn(async move { handshake(&mut svc_io, &hello(), Proving::default()).await });
    gateway_hello(&mut gw_io).await;
    write_frame(
        &mut gw_io,
        Frame::Reject(Reject {
            code: RejectCode::BadCredential,
            message: "unknown token".into(),
            retry_after_ms: Some(1500),
            pairing: None,
        }),
    )
    .await;
    drop(gw_io);
    let err = service_side.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(err.reject_code(), Some(RejectCode::BadCredential));
    assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
    assert!(err.to_string().contains("unknown token"), "{err}");
}

#[tokio::test]
async fn garbage_from_the_gateway_is_answered_with_reject() {
    let (mut svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let service_side =
        tokio::spawn(async move { handshake(&mut svc_io, &hello(), Proving::default()).await });
    gw_io.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let err = service_side.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    match read_frame(&mut gw_io).await {
        Frame::Reject(r) => assert_eq!(r.code, RejectCode::MalformedFrame),
        other => panic!("expected REJECT, got {other:?}"),
    }
}

/// Version 1 gateways send no assertion keys, so the SDK could verify no call: it refuses to
/// link to them rather than register an instance that answers every call with 401.
#[tokio::test]
async fn unsupported_versions_are_refused() {
    for versions in [vec![7], vec![1]] {
        let (mut svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
        let service_side =
            tokio::spawn(async move { handshake(&mut svc_io, &hello(), Proving::default()).await });
        write_frame(&mut gw_io, challenge(versions.clone())).await;
        let err = service_side.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{versions:?}");
        match read_frame(&mut gw_io).await {
            Frame::Reject(r) => assert_eq!(r.code, RejectCode::UnsupportedVersion),
            other => panic!("expected REJECT, got {other:?}"),
        }
    }
}

/// Sessions are a version 4 field: offered 4, the SDK sends it; offered only older versions,
/// it refuses to link an instance whose sessions no backend could reach. Without sessions it
/// still links to a version 3 gateway, with the same HELLO as before.
#[tokio::test]
async fn a_hello_declaring_sessions_needs_version_4() {
    let declaring = || Hello {
        sessions: Some(portcullis_link::SessionsDecl { max_sessions: 2 }),
        ..hello()
    };
    let (mut svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let h = declaring();
    tokio::spawn(async move { handshake(&mut svc_io, &h, Proving::default()).await });
    write_frame(&mut gw_io, challenge(VERSIONS.to_vec())).await;
    match read_frame(&mut gw_io).await {
        Frame::Hello(h) => assert_eq!(h.sessions.unwrap().max_sessions, 2),
        other => panic!("expected HELLO, got {other:?}"),
    }

    let (mut svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let service_side =
        tokio::spawn(async move { handshake(&mut svc_io, &declaring(), Proving::default()).await });
    write_frame(&mut gw_io, challenge(vec![1, 2, 3])).await;
    let err = service_side.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.to_string().contains("pinned sessions"), "{err}");
    match read_frame(&mut gw_io).await {
        Frame::Reject(r) => assert_eq!(r.code, RejectCode::UnsupportedVersion),
        other => panic!("expected REJECT, got {other:?}"),
    }

    let (mut svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move { handshake(&mut svc_io, &hello(), Proving::default()).await });
    write_frame(&mut gw_io, challenge(vec![1, 2, 3])).await;
    assert!(matches!(read_frame(&mut gw_io).await, Frame::Hello(h) if h.sessions.is_none()));
}

#[tokio::test]
async fn unexpected_frame_is_a_protocol_error() {
    let (mut svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let service_side =
        tokio::spawn(async move { handshake(&mut svc_io, &hello(), Proving::default()).await });
    write_frame(&mut gw_io, Frame::HelloAck(ack())).await;
    let err = service_side.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
}

#[tokio::test(start_paused = true)]
async fn silent_gateway_times_out() {
    let (mut svc_io, _gw_io) = tokio::io::duplex(64 * 1024);
    let err = handshake_within(
        &mut svc_io,
        &hello(),
        Proving::default(),
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

/// RST_STREAM from the gateway drops the handler; GOAWAY waits for in-flight calls.
#[tokio::test]
async fn cancellation_and_drain() {
    let (svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let (r, entered, release, mut dropped) = router();
    let shared = Shared::new(4, 1);
    let (stop, stop_rx) = watch::channel(false);
    let service_side = spawn_service_side(svc_io, r, &shared, stop_rx);
    gateway_hello(&mut gw_io).await;
    write_frame(&mut gw_io, Frame::HelloAck(ack())).await;
    let mut send = h2_client(gw_io).await;

    // Cancel: drop the response future while the handler waits.
    let req = signed_get("http://service/slow")
        .body(Empty::new())
        .unwrap();
    let pending = send.send_request(req);
    let call = tokio::spawn(pending);
    entered.notified().await;
    assert_eq!(shared.health().in_flight, 1);
    assert_eq!(shared.health().load, 0.25);
    call.abort();
    dropped.wait_for(|d| *d).await.unwrap();
    shared.idle().await;
    assert_eq!(shared.health().in_flight, 0);

    // Drain: a call in flight finishes after GOAWAY.
    let req = signed_get("http://service/slow")
        .body(Empty::new())
        .unwrap();
    let call = tokio::spawn(send.send_request(req));
    entered.notified().await;
    stop.send_replace(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!service_side.is_finished(), "drain must wait for the call");
    release.notify_one();
    let resp = call.await.unwrap().unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from_static(b"done"));
    service_side.await.unwrap().unwrap();
    assert_eq!(shared.health().in_flight, 0);
}

/// What the real gateway does once the instance is routable: a health request on the link.
async fn registered(mut send: SendRequest<Empty<Bytes>>) -> SendRequest<Empty<Bytes>> {
    let req = signed_get(format!("http://service{HEALTH_PATH}"))
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    send
}

/// Fake gateway on a real listener: first attempt rejected with retry_after, second accepted.
#[tokio::test]
async fn supervisor_retries_reconnects_and_aborts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (r, entered, _release, mut dropped) = router();
    let (hellos_tx, mut hellos) = tokio::sync::mpsc::unbounded_channel::<Hello>();
    let (links_tx, mut links) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (mut io, _) = listener.accept().await.unwrap();
            n += 1;
            write_frame(&mut io, challenge(VERSIONS.to_vec())).await;
            let Frame::Hello(h) = read_frame(&mut io).await else {
                panic!("expected HELLO")
            };
            hellos_tx.send(*h).unwrap();
            if n == 1 {
                let reject = Reject {
                    code: RejectCode::Unavailable,
                    message: "starting".into(),
                    retry_after_ms: Some(50),
                    pairing: None,
                };
                write_frame(&mut io, Frame::Reject(reject)).await;
                continue;
            }
            write_frame(&mut io, Frame::HelloAck(ack())).await;
            // A second handle on the socket, to kill the link from the gateway side.
            let std_io = io.into_std().unwrap();
            let killer = std_io.try_clone().unwrap();
            let io = tokio::net::TcpStream::from_std(std_io).unwrap();
            let (send, conn): (SendRequest<Empty<Bytes>>, _) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .unwrap();
            let (closed_tx, closed_rx) = oneshot::channel();
            tokio::spawn(async move {
                let _ = conn.await;
                let _ = closed_tx.send(());
            });
            let send = registered(send).await;
            links_tx.send((send, closed_rx, killer)).unwrap();
        }
    });

    let running = Service::builder("echo")
        .gateway(format!("tcp://{addr}"))
        .token(TOKEN)
        .instance_id("echo-7")
        .endpoint(Endpoint::get("/hello"))
        .endpoint(Endpoint::get("/slow"))
        .serve(r)
        .unwrap();
    assert!(!format!("{running:?}").contains(TOKEN));
    running.linked().await.unwrap();
    assert_eq!(running.links_up(), 1);
    assert_eq!(hellos.recv().await.unwrap().instance_id, "echo-7");
    assert_eq!(hellos.recv().await.unwrap().instance_id, "echo-7");

    let (mut send, _closed, killer) = links.recv().await.unwrap();
    let req = signed_get("http://service/hello")
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // The gateway drops the link: the service re-registers with a new HELLO.
    killer.shutdown(std::net::Shutdown::Both).unwrap();
    let h = tokio::time::timeout(Duration::from_secs(10), hellos.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.instance_id, "echo-7");
    let (mut send, closed, _killer) = links.recv().await.unwrap();
    running.wait_for_links(1).await.unwrap();

    // A crash: abort drops the link and the in-flight handler, no drain.
    let req = signed_get("http://service/slow")
        .body(Empty::new())
        .unwrap();
    let call = tokio::spawn(send.send_request(req));
    entered.notified().await;
    running.abort();
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .unwrap()
        .unwrap();
    assert!(call.await.unwrap().is_err());
    tokio::time::timeout(Duration::from_secs(5), dropped.wait_for(|d| *d))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.links_up(), 0);
    assert!(!running.health().draining);
    let _ = &mut send;
}

#[tokio::test]
async fn shutdown_drains_and_reports_draining() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (r, ..) = router();
    let (links_tx, mut links) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut io, _) = listener.accept().await.unwrap();
            write_frame(&mut io, challenge(VERSIONS.to_vec())).await;
            let _ = read_frame(&mut io).await;
            write_frame(&mut io, Frame::HelloAck(ack())).await;
            let (send, conn): (SendRequest<Empty<Bytes>>, _) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .unwrap();
            let (closed_tx, closed_rx) = oneshot::channel::<()>();
            tokio::spawn(async move {
                let _ = conn.await;
                let _ = closed_tx.send(());
            });
            let send = registered(send).await;
            links_tx.send((send, closed_rx)).unwrap();
        }
    });
    let running = Service::builder("echo")
        .gateway(addr.to_string())
        .token(TOKEN)
        .links_per_gateway(2)
        .drain_grace(Duration::from_secs(5))
        .serve(r)
        .unwrap();
    running.wait_for_links(2).await.unwrap();
    let (_s1, c1) = links.recv().await.unwrap();
    let (_s2, c2) = links.recv().await.unwrap();
    running.shutdown().await;
    assert!(running.health().draining);
    assert_eq!(running.links_up(), 0);
    let _ = tokio::time::timeout(Duration::from_secs(5), c1)
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), c2)
        .await
        .unwrap();
}

#[test]
fn builder_validates_before_dialling() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let ok = || {
        Service::builder("echo")
            .gateway("tcp://127.0.0.1:1")
            .token(TOKEN)
    };
    let r = axum::Router::new();
    let err = |b: crate::ServiceBuilder| b.serve(r.clone()).unwrap_err();

    let e = err(ok().endpoint(Endpoint::new("get", "/x")));
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("get /x"), "{e}");
    assert!(err(Service::builder("Echo").gateway("x:1").token("t"))
        .to_string()
        .contains("service name"));
    assert!(err(Service::builder("echo").token("t"))
        .to_string()
        .contains("gateway"));
    assert!(err(Service::builder("echo").gateway("x:1"))
        .to_string()
        .contains("token"));
    assert!(err(ok().gateway("tls://gw:1"))
        .to_string()
        .contains("root CA"));
    assert!(err(ok().links_per_gateway(0))
        .to_string()
        .contains("links_per_gateway"));
    assert!(err(ok().region("eu west")).to_string().contains("region"));
    assert!(err(ok().instance_id("a b"))
        .to_string()
        .contains("instance id"));
    assert!(
        err(ok().max_header_list_size(crate::MIN_MAX_HEADER_LIST_SIZE - 1))
            .to_string()
            .contains("max_header_list_size")
    );
    assert!(
        err(ok().max_header_list_size(crate::MAX_MAX_HEADER_LIST_SIZE + 1))
            .to_string()
            .contains("max_header_list_size")
    );
    let e = err(ok()
        .endpoint(Endpoint::any("/x"))
        .endpoint(Endpoint::get("/x")));
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("GET /x: declared twice"), "{e}");
    let e = err(ok().gateway("http://x:1"));
    assert!(!format!("{e:?}").contains(TOKEN));
    assert!(!format!("{:?}", ok()).contains(TOKEN));
}

// ----- What the gateway may send over a link: heads, resets, uploads ---------------------------

/// A router for the limits tests: `/headers` sums the value lengths of `x-big-*` headers,
/// `/hold` never reads its body until `release`, `/upload` reads its body and returns its length.
fn limits_router(release: Arc<Notify>) -> axum::Router {
    axum::Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/headers",
            get(|h: http::HeaderMap| async move {
                h.iter()
                    .filter(|(k, _)| k.as_str().starts_with("x-big-"))
                    .map(|(_, v)| v.len())
                    .sum::<usize>()
                    .to_string()
            }),
        )
        .route(
            "/hold",
            axum::routing::post(move |body: axum::body::Body| async move {
                // Held unread inside the future (a closure argument the future does not use
                // would be dropped at once, releasing its window).
                let _unread = body;
                release.notified().await;
                "held"
            }),
        )
        .route(
            "/upload",
            axum::routing::post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("handler panics");
                }
                "unreachable"
            }),
        )
}

/// Handshake over a duplex and hand back the gateway side, ready for HTTP/2.
async fn linked_duplex(
    router: axum::Router,
    settings: LinkSettings,
) -> (
    DuplexStream,
    tokio::task::JoinHandle<Result<(), crate::Error>>,
    watch::Sender<bool>,
) {
    let (svc_io, mut gw_io) = tokio::io::duplex(256 * 1024);
    let shared = Shared::new(100, 1);
    let (stop, stop_rx) = watch::channel(false);
    let service_side = spawn_service_side_with(svc_io, router, &shared, stop_rx, settings);
    gateway_hello(&mut gw_io).await;
    write_frame(&mut gw_io, Frame::HelloAck(ack())).await;
    (gw_io, service_side, stop)
}

/// A GET of `/headers` carrying `headers`; answers (status, body).
async fn get_with_headers(
    send: &mut SendRequest<Empty<Bytes>>,
    headers: &[(String, http::HeaderValue)],
) -> Result<(StatusCode, Bytes), hyper::Error> {
    let mut req = signed_get("http://service/headers")
        .body(Empty::new())
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.clone(),
        );
    }
    let resp = send.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// `n` headers `x-big-<i>` of `len` bytes each, all `byte`.
fn big_headers(n: usize, len: usize, byte: u8) -> Vec<(String, http::HeaderValue)> {
    (0..n)
        .map(|i| {
            let v = http::HeaderValue::from_bytes(&vec![byte; len]).unwrap();
            (format!("x-big-{i}"), v)
        })
        .collect()
}

/// The issue's case: a ~60 KiB head of many fields (under the gateway's default 64 KiB, over
/// hyper's 16 KiB default). With the old limit h2 answered it with GOAWAY COMPRESSION_ERROR.
#[tokio::test]
async fn a_60_kib_request_head_reaches_the_handler_and_the_link_survives() {
    let router = limits_router(Arc::new(Notify::new()));
    let (gw_io, service_side, stop) = linked_duplex(router, default_settings()).await;
    let mut send = h2_client(gw_io).await;
    let headers = big_headers(60, 1000, b'a');
    let (status, body) = get_with_headers(&mut send, &headers).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "60000");
    assert_eq!(
        get_body(&mut send, "/hello").await,
        (StatusCode::OK, Bytes::from_static(b"hello"))
    );
    assert!(!service_side.is_finished(), "the link must stay up");
    stop.send_replace(true);
    service_side.await.unwrap().unwrap();
}

/// HELLO_ACK's heartbeat is any u64 above zero: the largest must not overflow the keep-alive
/// clock (hyper adds the interval to an `Instant`) and kill the link's task. A guard: this
/// holds without any change, on a clock whose range takes it.
#[tokio::test]
async fn a_huge_heartbeat_interval_is_served_not_a_panic() {
    let (svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let shared = Shared::new(100, 1);
    let (stop, stop_rx) = watch::channel(false);
    let (r, ..) = router();
    let service_side = spawn_service_side(svc_io, r, &shared, stop_rx);
    gateway_hello(&mut gw_io).await;
    let mut a = ack();
    a.heartbeat_interval_ms = u64::MAX;
    write_frame(&mut gw_io, Frame::HelloAck(a)).await;
    let mut send = h2_client(gw_io).await;
    assert_eq!(get_body(&mut send, "/hello").await.0, StatusCode::OK);
    assert_eq!(get_body(&mut send, "/hello").await.0, StatusCode::OK);
    stop.send_replace(true);
    service_side.await.expect("no panic").unwrap();
}

/// A handler that panics costs its own stream (reset), not the link.
#[tokio::test]
async fn a_panicking_handler_resets_its_stream_only() {
    let router = limits_router(Arc::new(Notify::new()));
    let (gw_io, service_side, stop) = linked_duplex(router, default_settings()).await;
    let mut send = h2_client(gw_io).await;
    let req = signed_get("http://service/panic")
        .body(Empty::new())
        .unwrap();
    assert!(send.send_request(req).await.is_err());
    assert_eq!(get_body(&mut send, "/hello").await.0, StatusCode::OK);
    assert!(!service_side.is_finished(), "the link must stay up");
    stop.send_replace(true);
    service_side.await.unwrap().unwrap();
}

/// A router whose handlers report the task they ran on, and one that busy-waits `busy` first.
fn task_router(busy: Duration) -> axum::Router {
    axum::Router::new()
        .route(
            "/task",
            get(|| async { format!("{:?}", tokio::task::try_id()) }),
        )
        .route(
            "/busy",
            get(move || async move {
                let t = std::time::Instant::now();
                while t.elapsed() < busy {
                    std::hint::spin_loop();
                }
                format!("{:?}", tokio::task::try_id())
            }),
        )
}

/// A handler with nothing to wait for answers on the link's own task (one task, no
/// cross-thread wake, its response written with the rest of the batch), call after call.
#[tokio::test]
async fn calls_that_answer_at_once_run_on_the_links_task() {
    let (gw_io, service_side, stop) =
        linked_duplex(task_router(Duration::ZERO), default_settings()).await;
    let mut send = h2_client(gw_io).await;
    let mut tasks = std::collections::HashSet::new();
    for _ in 0..20 {
        let (status, body) = get_body(&mut send, "/task").await;
        assert_eq!(status, StatusCode::OK);
        tasks.insert(body);
    }
    assert_eq!(tasks.len(), 1, "every call on the link's task: {tasks:?}");
    stop.send_replace(true);
    service_side.await.unwrap().unwrap();
}

/// A handler that holds its first poll for long, call after call, is moved off the link's
/// task (each call then its own task, as with a spawning executor) and the link keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_slow_before_their_first_await_are_moved_off_the_links_task() {
    let (gw_io, service_side, stop) = linked_duplex(
        task_router(crate::inline::SLOW_POLL * 2),
        default_settings(),
    )
    .await;
    let mut send = h2_client(gw_io).await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (status, body) = get_body(&mut send, "/busy").await;
        assert_eq!(status, StatusCode::OK);
        tasks.push(body);
    }
    let link_task = &tasks[0];
    let inline = tasks.iter().filter(|t| *t == link_task).count();
    assert!(
        (crate::inline::SLOW_TRIP as usize..40).contains(&inline),
        "the first {} calls inline, then on tasks of their own: {inline} inline",
        crate::inline::SLOW_TRIP
    );
    assert!(
        tasks[tasks.len() - 1] != *link_task,
        "the last calls are spawned"
    );
    assert_eq!(get_body(&mut send, "/task").await.0, StatusCode::OK);
    stop.send_replace(true);
    service_side.await.unwrap().unwrap();
}

/// The default covers the largest head a gateway may be configured to forward
/// (`ingress.max_header_bytes` at its 1 MiB maximum, plus the headers the gateway adds), in
/// the worst HPACK case: bytes whose Huffman code is 28 bits, so the encoded head is 3.5 times
/// its size and spans some 230 CONTINUATION frames.
#[tokio::test]
async fn the_default_takes_a_1_mib_head_whatever_its_encoded_size() {
    let router = limits_router(Arc::new(Notify::new()));
    let (gw_io, service_side, stop) = linked_duplex(router, default_settings()).await;
    let mut send = h2_client(gw_io).await;
    // 100 fields (hyper's HTTP/1.1 limit at the gateway's ingress) filling 1 MiB.
    let mut headers = big_headers(100, (1 << 20) / 100, 0xdc);
    for (k, v) in [
        ("x-correlation-id", "c".repeat(36)),
        ("x-portcullis-route", format!("/{}", "r".repeat(1023))),
        ("x-forwarded-for", "203.0.113.7, 198.51.100.23".into()),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ),
    ] {
        headers.push((k.into(), http::HeaderValue::from_str(&v).unwrap()));
    }
    let (status, body) = get_with_headers(&mut send, &headers).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, ((1 << 20) / 100 * 100).to_string());
    assert_eq!(get_body(&mut send, "/hello").await.0, StatusCode::OK);
    assert!(!service_side.is_finished(), "the link must stay up");
    stop.send_replace(true);
    service_side.await.unwrap().unwrap();
}

/// `ServiceBuilder::max_header_list_size` reaches the server: a 10 KiB head, which the
/// default takes, is one stream's 431 under an 8 KiB limit, and the link carries on.
#[tokio::test]
async fn a_lowered_header_limit_refuses_larger_heads_with_431_on_their_stream_only() {
    let router = limits_router(Arc::new(Notify::new()));
    let settings = LinkSettings {
        max_header_list_size: crate::MIN_MAX_HEADER_LIST_SIZE,
    };
    let (gw_io, service_side, stop) = linked_duplex(router, settings).await;
    let mut send = h2_client(gw_io).await;
    let (status, _) = get_with_headers(&mut send, &big_headers(1, 10 * 1024, b'a'))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(get_body(&mut send, "/hello").await.0, StatusCode::OK);
    assert!(!service_side.is_finished(), "the link must stay up");
    stop.send_replace(true);
    service_side.await.unwrap().unwrap();
}

/// Clients of the gateway that give up on their calls make it reset the link's streams; when
/// a burst of them arrives before the service has accepted the streams, h2's default (20
/// pending) answered with GOAWAY ENHANCE_YOUR_CALM and every other call on the link failed.
#[tokio::test]
async fn a_burst_of_calls_reset_before_accept_does_not_close_the_link() {
    let router = limits_router(Arc::new(Notify::new()));
    let (gw_io, service_side, stop) = linked_duplex(router, default_settings()).await;
    let (client, conn) = h2::client::handshake(gw_io).await.unwrap();
    let conn = tokio::spawn(conn);
    let get = || signed_get("http://service/hello").body(()).unwrap();
    // One call first, so both sides' SETTINGS are in force.
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get(), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    // As many as the link may have open (HELLO_ACK's max_concurrent_streams), each reset at
    // once: the test task does not yield, so they leave in one write and arrive in one read.
    let burst = ack().limits.max_concurrent_streams;
    for _ in 0..burst {
        client = client.ready().await.unwrap();
        let (resp, mut stream) = client.send_request(get(), false).unwrap();
        stream.send_reset(h2::Reason::CANCEL);
        drop(resp);
    }
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get(), true).unwrap();
    let resp = resp.await.expect("the link must survive the burst");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!conn.is_finished() && !service_side.is_finished());
    stop.send_replace(true);
    service_side.await.unwrap().unwrap();
}

/// `Content-Length: 5, 5` is valid HTTP/1.1 (equal values) that the gateway forwards as it is;
/// h2 refuses it with a stream reset, and hyper's default closed the link at the 1025th such
/// reset over its life.
#[tokio::test]
async fn malformed_calls_reset_their_streams_without_ever_closing_the_link() {
    let router = limits_router(Arc::new(Notify::new()));
    let (gw_io, service_side, stop) = linked_duplex(router, default_settings()).await;
    let (client, conn) = h2::client::handshake(gw_io).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    for _ in 0..1100 {
        let req = signed_post("http://service/upload")
            .header(http::header::CONTENT_LENGTH, "5, 5")
            .body(())
            .unwrap();
        client = client.ready().await.unwrap();
        let (resp, mut body) = client.send_request(req, false).unwrap();
        let _ = body.send_data(Bytes::from_static(b"hello"), true);
        let err = resp.await.expect_err("h2 refuses the head");
        assert_eq!(err.reason(), Some(h2::Reason::PROTOCOL_ERROR), "{err}");
    }
    let req = signed_get("http://service/hello").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    assert!(!conn.is_finished() && !service_side.is_finished());
    stop.send_replace(true);
    service_side.await.unwrap().unwrap();
}

/// Send `len` bytes on `stream` as h2 grants capacity (both windows), ending the stream with
/// the last chunk if `end`.
async fn send_when_granted(stream: &mut h2::SendStream<Bytes>, len: usize, end: bool) {
    let mut left = len;
    while left > 0 {
        stream.reserve_capacity(left);
        let granted = match futures_util::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n.min(left),
            other => panic!("no capacity: {other:?}"),
        };
        if granted > 0 {
            left -= granted;
            let chunk = Bytes::from(vec![7u8; granted]);
            stream.send_data(chunk, end && left == 0).unwrap();
        }
    }
}

/// A handler that does not read its upload holds its stream's window (1 MiB). With the
/// connection window equal to it (hyper's default), that one call stopped every other upload
/// on the link until it finished. Paused time: a stall would run into the deadline at once.
#[tokio::test(start_paused = true)]
async fn a_handler_not_reading_its_upload_does_not_stop_other_uploads() {
    let release = Arc::new(Notify::new());
    let router = limits_router(Arc::clone(&release));
    let (gw_io, service_side, stop) = linked_duplex(router, default_settings()).await;
    let (client, conn) = h2::client::handshake(gw_io).await.unwrap();
    tokio::spawn(conn);
    let post = |path: &str| {
        signed_post(format!("http://service{path}"))
            .body(())
            .unwrap()
    };
    let mut client = client.ready().await.unwrap();
    let (held, mut hold) = client.send_request(post("/hold"), false).unwrap();
    send_when_granted(&mut hold, 1 << 20, false).await;

    let mut client = client.ready().await.unwrap();
    let (uploaded, mut upload) = client.send_request(post("/upload"), false).unwrap();
    let upload_len = 256 * 1024;
    let call = async {
        send_when_granted(&mut upload, upload_len, true).await;
        let resp = uploaded.await.unwrap();
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            got.extend_from_slice(&chunk);
        }
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the upload must not wait for the held call");
    assert_eq!(got, upload_len.to_string().as_bytes());

    release.notify_one();
    // The handler answered without reading: the server may have reset the upload already.
    let _ = hold.send_data(Bytes::new(), true);
    assert_eq!(held.await.unwrap().status(), StatusCode::OK);
    stop.send_replace(true);
    service_side.await.unwrap().unwrap();
}

// ----- REJECT codes retrying cannot fix -----------------------------------------------------

/// A fake gateway on a real listener that answers every HELLO with `reject` and reports each
/// attempt (the instance id of its HELLO).
async fn rejecting_gateway(
    reject: Reject,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut io, _)) = listener.accept().await else {
                return;
            };
            write_frame(&mut io, challenge(VERSIONS.to_vec())).await;
            let Frame::Hello(h) = read_frame(&mut io).await else {
                panic!("expected HELLO")
            };
            write_frame(&mut io, Frame::Reject(reject.clone())).await;
            if tx.send(h.instance_id).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// A fake gateway that accepts every link and keeps it registered.
async fn accepting_gateway() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut io, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                write_frame(&mut io, challenge(VERSIONS.to_vec())).await;
                let _ = read_frame(&mut io).await;
                write_frame(&mut io, Frame::HelloAck(ack())).await;
                let (send, conn): (SendRequest<Empty<Bytes>>, _) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let send = registered(send).await;
                // Keep the link (and its sender) until the service drops it.
                std::future::pending::<()>().await;
                drop(send);
            });
        }
    });
    addr
}

fn reject(code: RejectCode, message: &str) -> Reject {
    Reject {
        code,
        message: message.into(),
        retry_after_ms: Some(1),
        pairing: None,
    }
}

fn slot_for(addr: std::net::SocketAddr) -> crate::supervisor::LinkSlot {
    crate::supervisor::LinkSlot {
        addr: crate::gateway::GatewayAddr::parse(&format!("tcp://{addr}")).unwrap(),
        tls: None,
        hello: hello(),
        settings: default_settings(),
        issuer: None,
        key: None,
        on_pairing: None,
        on_rejected: None,
        conflict_patience: crate::DEFAULT_CONFLICT_PATIENCE,
    }
}

/// Every code retrying cannot fix ends the slot after one attempt, keeping the reason.
#[tokio::test]
async fn a_permanent_reject_ends_dialling_with_the_gateways_reason() {
    for code in [
        RejectCode::InvalidDescriptor,
        RejectCode::UnsupportedVersion,
        RejectCode::MalformedFrame,
        RejectCode::TooLarge,
        RejectCode::BadCredential,
    ] {
        let (addr, mut attempts) = rejecting_gateway(reject(code, "refused for a reason")).await;
        let shared = Shared::new(100, 1);
        let (_stop, stop_rx) = watch::channel(false);
        let (r, ..) = router();
        // supervise returns only on shutdown or when it gives up: its end is the proof.
        tokio::time::timeout(
            Duration::from_secs(30),
            crate::supervisor::supervise(slot_for(addr), Arc::clone(&shared), r, stop_rx),
        )
        .await
        .unwrap_or_else(|_| panic!("{code}: the slot must stop dialling"));
        assert_eq!(attempts.recv().await.as_deref(), Some("echo-1"));
        assert!(attempts.try_recv().is_err(), "{code}: dialled again");
        let failures = shared.failures();
        assert_eq!(failures.len(), 1, "{code}");
        let e = &failures[0];
        assert_eq!(e.kind(), ErrorKind::Rejected);
        assert_eq!(e.reject_code(), Some(code));
        assert!(e.is_permanent());
        let gateway = format!("tcp://{addr}");
        assert_eq!(e.gateway(), Some(gateway.as_str()));
        let msg = e.to_string();
        assert!(msg.contains(&gateway), "{msg}");
        assert!(
            msg.contains(code.as_str()) && msg.contains("refused for a reason"),
            "{msg}"
        );
        assert_eq!(*shared.dialling.borrow(), 0);
    }
}

/// Codes that describe the gateway's state, not the HELLO, keep the backoff going.
#[tokio::test]
async fn a_transient_reject_keeps_retrying() {
    for code in [
        RejectCode::Unavailable,
        RejectCode::Timeout,
        RejectCode::RouteConflict,
        RejectCode::DuplicateInstance,
    ] {
        let (addr, mut attempts) = rejecting_gateway(reject(code, "later")).await;
        let shared = Shared::new(100, 1);
        let (stop, stop_rx) = watch::channel(false);
        let (r, ..) = router();
        let slot = tokio::spawn(crate::supervisor::supervise(
            slot_for(addr),
            Arc::clone(&shared),
            r,
            stop_rx,
        ));
        for _ in 0..3 {
            assert_eq!(attempts.recv().await.as_deref(), Some("echo-1"), "{code}");
        }
        assert!(!slot.is_finished(), "{code}: must still be dialling");
        assert!(shared.failures().is_empty(), "{code}");
        assert_eq!(*shared.dialling.borrow(), 1);
        stop.send_replace(true);
        slot.await.unwrap();
        assert!(
            shared.failures().is_empty(),
            "{code}: shutdown is not a failure"
        );
    }
}

/// With two gateways, the one that refuses for good stops being dialled and the other links;
/// `Running` says why the second link will never come.
#[tokio::test]
async fn a_permanent_reject_from_one_gateway_leaves_the_others_linked() {
    let (refusing, _attempts) = rejecting_gateway(reject(
        RejectCode::InvalidDescriptor,
        "endpoint * /x: declared twice",
    ))
    .await;
    let accepting = accepting_gateway().await;
    let (r, ..) = router();
    let running = Service::builder("echo")
        .gateway(format!("tcp://{refusing}"))
        .gateway(format!("tcp://{accepting}"))
        .token(TOKEN)
        .endpoint(Endpoint::get("/hello"))
        .serve(r)
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), running.try_wait_for_links(2))
        .await
        .expect("the refusing gateway's slot must give up")
        .unwrap_err();
    assert_eq!(err.reject_code(), Some(RejectCode::InvalidDescriptor));
    assert_eq!(err.gateway(), Some(format!("tcp://{refusing}").as_str()));
    assert!(err.to_string().contains("declared twice"), "{err}");
    running.try_linked().await.unwrap();
    assert_eq!(running.links_up(), 1);
    let failures = running.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].gateway(), err.gateway());
    running.shutdown().await;
}

/// With every gateway refusing for good, `try_linked` fails instead of waiting forever.
#[tokio::test]
async fn try_linked_fails_once_no_gateway_is_left() {
    // Keep the attempt receivers: a fake gateway stops listening once its receiver is gone.
    let (a, _a_attempts) =
        rejecting_gateway(reject(RejectCode::BadCredential, "bad credential")).await;
    let (b, _b_attempts) =
        rejecting_gateway(reject(RejectCode::BadCredential, "bad credential")).await;
    let (r, ..) = router();
    let running = Service::builder("echo")
        .gateway(a.to_string())
        .gateway(b.to_string())
        .token(TOKEN)
        .links_per_gateway(2)
        .endpoint(Endpoint::get("/hello"))
        .serve(r)
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), running.try_linked())
        .await
        .expect("try_linked must fail, not wait")
        .unwrap_err();
    assert_eq!(err.reject_code(), Some(RejectCode::BadCredential));
    assert_eq!(running.failures().len(), 4);
    assert_eq!(running.links_up(), 0);
    assert!(!format!("{:?}", running.failures()).contains(TOKEN));
}

// ----- Identity assertions: verified before the handler, handed to it -------------------------

/// `/whoami` echoes the verified identity and the assertion it came in (and counts its runs);
/// `/maybe` takes an optional one.
fn identity_router(runs: Arc<std::sync::atomic::AtomicUsize>) -> axum::Router {
    use crate::Identity;
    axum::Router::new()
        .route(
            "/whoami",
            get(move |id: Identity| {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    format!(
                        "{} {} {} {} {}\n{}",
                        id.subject(),
                        id.workspace_id(),
                        id.workspace_name(),
                        id.credential_kind(),
                        id.credential_id(),
                        id.assertion()
                    )
                }
            }),
        )
        .route(
            "/maybe",
            get(|id: Option<Identity>| async move {
                id.map_or("nobody".to_string(), |i| i.subject().to_string())
            }),
        )
}

async fn call_with(
    send: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    assertions: &[&str],
    grpc: bool,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut req = Request::get(format!("http://service{path}"));
    for a in assertions {
        req = req.header(IDENTITY, *a);
    }
    if grpc {
        req = req.header(http::header::CONTENT_TYPE, "application/grpc");
    }
    let resp = send
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn a_verified_identity_reaches_the_handler_as_an_extractor() {
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (gw_io, _service_side, _stop) =
        linked_duplex(identity_router(runs.clone()), default_settings()).await;
    let mut send = h2_client(gw_io).await;
    let a = assertion();
    let (status, _, body) = call_with(&mut send, "/whoami", &[&a], false).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(body, format!("key:k1 ws_1 default api_key k1\n{a}"));
    let (status, _, body) = call_with(&mut send, "/maybe", &[&a], false).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"key:k1"[..]));
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The health exchange needs no assertion: the SDK answers it.
    let (status, _, _) = call_with(&mut send, HEALTH_PATH, &[], false).await;
    assert_eq!(status, StatusCode::OK);
}

/// Every way an assertion can be wrong is the same fixed 401, and the handler never runs.
#[tokio::test]
async fn a_call_without_a_valid_assertion_is_refused_before_the_handler() {
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (gw_io, _service_side, _stop) =
        linked_duplex(identity_router(runs.clone()), default_settings()).await;
    let mut send = h2_client(gw_io).await;

    let other_key = new_key();
    let valid = assertion();
    let mut parts = valid.split('.');
    let (h, p, _) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let sign = |c: &AssertionClaims| jws::sign(c, KID, jws::TYP_ASSERTION, test_key()).unwrap();
    let mut admin = claims();
    admin.sub = "key:admin".into();
    let mut wrong_aud = claims();
    wrong_aud.aud = "billing".into();
    let mut expired = claims();
    expired.iat -= 200;
    expired.exp = expired.iat + 60;
    let mut too_long = claims();
    too_long.exp = too_long.iat + 61;
    let mut wrong_iss = claims();
    wrong_iss.iss = "another-gateway".into();
    let mut future = claims();
    future.iat += 120;
    future.exp = future.iat + 60;
    let none_header = b64(br#"{"alg":"none","kid":"test-key-1","typ":"portcullis-identity+jwt"}"#);
    let forged_sig = jws::sign(&claims(), KID, jws::TYP_ASSERTION, &other_key).unwrap();
    let forged_sig = forged_sig.rsplit('.').next().unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("forged signature", format!("{h}.{p}.{forged_sig}")),
        (
            "claims re-signed with another key under the gateway's kid",
            jws::sign(&admin, KID, jws::TYP_ASSERTION, &other_key).unwrap(),
        ),
        (
            "claims changed under the original signature",
            format!(
                "{h}.{}.{}",
                b64(&serde_json::to_vec(&admin).unwrap()),
                valid.rsplit('.').next().unwrap()
            ),
        ),
        ("alg none", format!("{none_header}.{p}.")),
        (
            "alg none with a signature",
            format!("{none_header}.{p}.{}", b64(&[0u8; 64])),
        ),
        ("wrong audience", sign(&wrong_aud)),
        ("expired", sign(&expired)),
        ("valid longer than 60 s", sign(&too_long)),
        ("issued in the future", sign(&future)),
        ("another issuer", sign(&wrong_iss)),
        (
            "unknown kid",
            jws::sign(&claims(), "another-kid", jws::TYP_ASSERTION, test_key()).unwrap(),
        ),
        (
            "an access token, not an assertion",
            jws::sign(&claims(), KID, jws::TYP_ACCESS_TOKEN, test_key()).unwrap(),
        ),
        ("garbage", "not.a.token".into()),
    ];
    for (what, token) in &cases {
        let (status, headers, body) = call_with(&mut send, "/whoami", &[token], false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(body, r#"{"error":"unauthorized"}"#, "{what}");
        assert_eq!(headers[http::header::CONTENT_TYPE], "application/json");
    }
    let (status, _, _) = call_with(&mut send, "/whoami", &[], false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "missing header");
    let (status, _, _) = call_with(&mut send, "/whoami", &[&valid, &valid], false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "two assertions");
    // A public-looking handler (optional identity) is refused just the same: every routed
    // call needs an assertion.
    let (status, _, _) = call_with(&mut send, "/maybe", &[], false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "optional identity");
    // gRPC callers get a gRPC status.
    let (status, headers, body) = call_with(&mut send, "/whoami", &[], true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "16");
    assert!(body.is_empty());
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The link is fine and a valid call still goes through.
    let (status, _, _) = call_with(&mut send, "/whoami", &[&valid], false).await;
    assert_eq!(status, StatusCode::OK);
}

async fn put_keys(send: &mut SendRequest<Full<Bytes>>, body: Vec<u8>, method: &str) -> StatusCode {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://service{}", portcullis_link::KEYS_PATH))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send.send_request(req).await.unwrap().status()
}

async fn whoami(send: &mut SendRequest<Full<Bytes>>, assertion: &str) -> StatusCode {
    let req = Request::get("http://service/whoami")
        .header(IDENTITY, assertion)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.send_request(req).await.unwrap().status()
}

/// The gateway's `PUT` of new keys replaces the link's: assertions of the new key verify,
/// those of a dropped key stop verifying at once, even one verified (and cached) before.
/// Bad bodies change nothing.
#[tokio::test]
async fn keys_pushed_by_the_gateway_replace_the_links_keys() {
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (gw_io, _service_side, _stop) =
        linked_duplex(identity_router(runs), default_settings()).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(gw_io))
            .await
            .unwrap();
    tokio::spawn(conn);

    let old = assertion();
    assert_eq!(whoami(&mut send, &old).await, StatusCode::OK);
    let next = new_key();
    let next_assertion = jws::sign(&claims(), "test-key-2", jws::TYP_ASSERTION, &next).unwrap();
    assert_eq!(
        whoami(&mut send, &next_assertion).await,
        StatusCode::UNAUTHORIZED
    );

    // Refused bodies leave the keys alone.
    let too_many = Jwks {
        keys: (0..=jws::MAX_JWKS_KEYS)
            .map(|i| Jwk::ed25519(&format!("k{i}"), &[1u8; 32]))
            .collect(),
    };
    for (body, method, expected) in [
        (b"{nope".to_vec(), "PUT", StatusCode::BAD_REQUEST),
        (
            serde_json::to_vec(&too_many).unwrap(),
            "PUT",
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![b' '; portcullis_link::MAX_KEYS_BODY + 1],
            "PUT",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (Vec::new(), "GET", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        assert_eq!(put_keys(&mut send, body, method).await, expected);
    }
    assert_eq!(whoami(&mut send, &old).await, StatusCode::OK);

    // Rotation: both keys, then only the new one.
    let both = Jwks {
        keys: vec![
            Jwk::ed25519(KID, &jws::public_key_of(test_key())),
            Jwk::ed25519("test-key-2", &jws::public_key_of(&next)),
        ],
    };
    let body = serde_json::to_vec(&both).unwrap();
    assert_eq!(
        put_keys(&mut send, body, "PUT").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(whoami(&mut send, &old).await, StatusCode::OK);
    assert_eq!(whoami(&mut send, &next_assertion).await, StatusCode::OK);
    let only_next = Jwks {
        keys: vec![Jwk::ed25519("test-key-2", &jws::public_key_of(&next))],
    };
    let body = serde_json::to_vec(&only_next).unwrap();
    assert_eq!(
        put_keys(&mut send, body, "PUT").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(whoami(&mut send, &old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(whoami(&mut send, &next_assertion).await, StatusCode::OK);
}

/// A gateway that announced no keys, or another issuer than the service expects, gets every
/// call refused rather than trusted.
#[tokio::test]
async fn a_link_without_keys_or_with_another_issuer_refuses_every_call() {
    let ack_without = HelloAck {
        assertions: None,
        ..ack()
    };
    let mut slot = slot_for("127.0.0.1:9".parse().unwrap());
    let v = crate::supervisor::link_verifier(&slot, &ack_without, "test");
    assert!(v.verify(&assertion()).is_err());
    slot.issuer = Some("another-gateway".into());
    let v = crate::supervisor::link_verifier(&slot, &ack(), "test");
    assert_eq!(
        v.verify(&assertion()).unwrap_err(),
        crate::VerifyError::Issuer
    );
    slot.issuer = Some(ISSUER.into());
    let v = crate::supervisor::link_verifier(&slot, &ack(), "test");
    assert_eq!(v.verify(&assertion()).unwrap().subject(), "key:k1");
}

/// A hot assertion is checked once and then served from the cache, which new keys empty.
#[test]
fn a_verified_assertion_is_cached_until_the_keys_change() {
    let v = crate::Verifier::new("echo", ISSUER, &test_jwks());
    let a = assertion();
    let first = v.verify(&a).unwrap();
    assert_eq!(v.cached(), 1);
    for _ in 0..10 {
        assert_eq!(v.verify(&a).unwrap(), first);
    }
    assert_eq!(v.cached(), 1);
    // Past `exp` the cached entry no longer counts: the claims are checked again.
    let later = first.expires_at() + jws::LEEWAY_S;
    assert_eq!(
        v.verify_at(&a, later).unwrap_err(),
        crate::VerifyError::Token(jws::JwsError::Expired)
    );
    v.set_keys(&test_jwks());
    assert_eq!(v.cached(), 0);
    // Bounded: a small verifier holds at most its capacity (one per shard at least).
    let small = crate::Verifier::with_capacity("echo", ISSUER, &test_jwks(), 1);
    for i in 0..50 {
        let mut c = claims();
        c.sub = format!("key:k{i}");
        small
            .verify(&jws::sign(&c, KID, jws::TYP_ASSERTION, test_key()).unwrap())
            .unwrap();
    }
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(small.cached() <= shards, "{}", small.cached());
}

/// Outside the SDK's verification (a router served without a link) the extractor refuses
/// with the same fixed 401.
#[tokio::test]
async fn the_extractor_refuses_a_call_the_sdk_did_not_verify() {
    use tower::ServiceExt;
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let resp = identity_router(runs.clone())
        .oneshot(
            Request::get("/whoami")
                .header(IDENTITY, assertion())
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, r#"{"error":"unauthorized"}"#);
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// `POST /.well-known/portcullis/sessions` is the SDK's own: a service that serves no
/// sessions answers 404, and one that does refuses, before any worker runs, another method,
/// a stream without its session id, nonce or known protocol version, an over-long id, and a
/// session past its bound.
#[tokio::test]
async fn the_sessions_path_refuses_what_is_not_a_session_stream() {
    use portcullis_link::headers::{SESSION_ID, WORKER_NONCE, WORKER_PROTOCOL};
    use portcullis_link::SESSIONS_PATH;
    let post = |id: &str, nonce: Option<&str>, version: &str| {
        let mut r = Request::post(format!("http://service{SESSIONS_PATH}"))
            .header(SESSION_ID, id)
            .header(WORKER_PROTOCOL, version);
        if let Some(n) = nonce {
            r = r.header(WORKER_NONCE, n);
        }
        r.body(Empty::<Bytes>::new()).unwrap()
    };
    for serving in [false, true] {
        let (svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
        let (r, ..) = router();
        let shared = Shared::new(100, 1);
        if serving {
            let worker = crate::worker::Worker::new().command(
                "k",
                "svc.run",
                |_c: crate::worker::Command| async {
                    crate::worker::Reply::ok(serde_json::json!(0))
                },
            );
            shared.serve_sessions(worker, 1);
        }
        let (stop, stop_rx) = watch::channel(false);
        let service_side = spawn_service_side(svc_io, r, &shared, stop_rx);
        gateway_hello(&mut gw_io).await;
        write_frame(&mut gw_io, Frame::HelloAck(ack())).await;
        let mut send = h2_client(gw_io).await;
        let mut status = |req| {
            let fut = send.send_request(req);
            async move { fut.await.unwrap().status() }
        };
        if !serving {
            let s = status(post("node.1", Some("n"), "1")).await;
            assert_eq!(s, StatusCode::NOT_FOUND);
        } else {
            let get = Request::get(format!("http://service{SESSIONS_PATH}"))
                .body(Empty::new())
                .unwrap();
            assert_eq!(status(get).await, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(
                status(post("node.1", None, "1")).await,
                StatusCode::BAD_REQUEST
            );
            assert_eq!(
                status(post("node.1", Some("n"), "2")).await,
                StatusCode::BAD_REQUEST
            );
            assert_eq!(
                status(post(&"x".repeat(200), Some("n"), "1")).await,
                StatusCode::BAD_REQUEST
            );
            assert_eq!(status(post("node.1", Some("n"), "1")).await, StatusCode::OK);
            assert_eq!(
                status(post("node.2", Some("n"), "1")).await,
                StatusCode::SERVICE_UNAVAILABLE,
                "one session at a time"
            );
        }
        stop.send_replace(true);
        drop(send);
        let _ = tokio::time::timeout(Duration::from_secs(5), service_side).await;
    }
}
