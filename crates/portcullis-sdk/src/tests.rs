//! Unit tests of the handshake, the HTTP/2 serving that follows it on the same stream, and the
//! supervisor, against a fake gateway written with the link crate.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_link::{
    Challenge, Credential, EndpointDescriptor, Frame, FrameHeader, HealthReport, Hello, HelloAck,
    LinkLimits, Reject, RejectCode, HEADER_LEN, HEALTH_PATH, MAX_FRAME_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{oneshot, watch, Notify};

use crate::handshake::{handshake, handshake_within};
use crate::serve::{serve_link, LinkService, LinkUp, Shared};
use crate::{Endpoint, ErrorKind, Service};

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
    }
}

fn hello() -> Hello {
    Hello {
        service: "echo".into(),
        instance_id: "echo-1".into(),
        version: "1.0.0".into(),
        region: Some("eu-west".into()),
        endpoints: vec![EndpointDescriptor::from(Endpoint::get("/hello"))],
        openapi: None,
        credential: Credential::Token {
            token: TOKEN.into(),
        },
    }
}

/// Gateway side up to HELLO: sends CHALLENGE, returns the HELLO it got.
async fn gateway_hello(io: &mut DuplexStream) -> Hello {
    write_frame(io, challenge(vec![1])).await;
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
    let req = Request::get(format!("http://service{path}"))
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// The service half of a link over `io`: handshake, then serve `router` until `stop`.
fn spawn_service_side(
    mut io: tokio::io::DuplexStream,
    router: axum::Router,
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), crate::Error>> {
    let up = LinkUp::new(shared);
    tokio::spawn(async move {
        let ack = handshake(&mut io, &hello()).await?;
        serve_link(io, &ack, LinkService::new(router, up), stop).await
    })
}
#[tokio::test]
async fn handshake_then_http2_on_the_same_stream() {
    let (svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let (r, ..) = router();
    let shared = Shared::new(100);
    let (stop, stop_rx) = watch::channel(false);
    let service_side = spawn_service_side(svc_io, r, &shared, stop_rx);

    let got = gateway_hello(&mut gw_io).await;
    assert_eq!(got, hello());
    assert!(!format!("{got:?}").contains(TOKEN));
    let Credential::Token { token } = &got.credential;
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

#[tokio::test]
async fn reject_is_reported_with_code_and_retry_after() {
    let (mut svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let service_side = tokio::spawn(async move { handshake(&mut svc_io, &hello()).await });
    gateway_hello(&mut gw_io).await;
    write_frame(
        &mut gw_io,
        Frame::Reject(Reject {
            code: RejectCode::BadCredential,
            message: "unknown token".into(),
            retry_after_ms: Some(1500),
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
    let service_side = tokio::spawn(async move { handshake(&mut svc_io, &hello()).await });
    gw_io.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let err = service_side.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    match read_frame(&mut gw_io).await {
        Frame::Reject(r) => assert_eq!(r.code, RejectCode::MalformedFrame),
        other => panic!("expected REJECT, got {other:?}"),
    }
}

#[tokio::test]
async fn unsupported_versions_are_refused() {
    let (mut svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let service_side = tokio::spawn(async move { handshake(&mut svc_io, &hello()).await });
    write_frame(&mut gw_io, challenge(vec![7])).await;
    let err = service_side.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    match read_frame(&mut gw_io).await {
        Frame::Reject(r) => assert_eq!(r.code, RejectCode::UnsupportedVersion),
        other => panic!("expected REJECT, got {other:?}"),
    }
}

#[tokio::test]
async fn unexpected_frame_is_a_protocol_error() {
    let (mut svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let service_side = tokio::spawn(async move { handshake(&mut svc_io, &hello()).await });
    write_frame(&mut gw_io, Frame::HelloAck(ack())).await;
    let err = service_side.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
}

#[tokio::test(start_paused = true)]
async fn silent_gateway_times_out() {
    let (mut svc_io, _gw_io) = tokio::io::duplex(64 * 1024);
    let err = handshake_within(&mut svc_io, &hello(), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

/// RST_STREAM from the gateway drops the handler; GOAWAY waits for in-flight calls.
#[tokio::test]
async fn cancellation_and_drain() {
    let (svc_io, mut gw_io) = tokio::io::duplex(64 * 1024);
    let (r, entered, release, mut dropped) = router();
    let shared = Shared::new(4);
    let (stop, stop_rx) = watch::channel(false);
    let service_side = spawn_service_side(svc_io, r, &shared, stop_rx);
    gateway_hello(&mut gw_io).await;
    write_frame(&mut gw_io, Frame::HelloAck(ack())).await;
    let mut send = h2_client(gw_io).await;

    // Cancel: drop the response future while the handler waits.
    let req = Request::get("http://service/slow")
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
    let req = Request::get("http://service/slow")
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
    let req = Request::get(format!("http://service{HEALTH_PATH}"))
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
            write_frame(&mut io, challenge(vec![1])).await;
            let Frame::Hello(h) = read_frame(&mut io).await else {
                panic!("expected HELLO")
            };
            hellos_tx.send(*h).unwrap();
            if n == 1 {
                let reject = Reject {
                    code: RejectCode::Unavailable,
                    message: "starting".into(),
                    retry_after_ms: Some(50),
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
    running.linked().await;
    assert_eq!(running.links_up(), 1);
    assert_eq!(hellos.recv().await.unwrap().instance_id, "echo-7");
    assert_eq!(hellos.recv().await.unwrap().instance_id, "echo-7");

    let (mut send, _closed, killer) = links.recv().await.unwrap();
    let req = Request::get("http://service/hello")
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
    running.wait_for_links(1).await;

    // A crash: abort drops the link and the in-flight handler, no drain.
    let req = Request::get("http://service/slow")
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
            write_frame(&mut io, challenge(vec![1])).await;
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
    running.wait_for_links(2).await;
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
    let e = err(ok().gateway("http://x:1"));
    assert!(!format!("{e:?}").contains(TOKEN));
    assert!(!format!("{:?}", ok()).contains(TOKEN));
}
