//! The ingress limits and the shutdown force path, end to end on real sockets: the body limit
//! (413), the connection limit, the idle and header-read timeouts, and the grace period.
//!
//! These run against a whole gateway, whose connections live on the data-plane worker
//! runtimes (`portcullis::workers`: one runtime per thread). A paused clock in the test's
//! runtime does not reach those runtimes, so the time-based tests here cannot use
//! `start_paused`; they configure short timeouts and assert only what happened (the
//! connection was closed), never how long it took — the deadlines below are generous bounds
//! that only a broken limit reaches. The timing logic itself (idle and park timers) has
//! paused-time tests next to it in `ingress/mod.rs`.

use crate::common::*;
use http::StatusCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than any limit configured here by far: reaching it means the limit did not act.
const DEADLINE: Duration = Duration::from_secs(10);

const HEALTH: &[u8] = b"GET /health/live HTTP/1.1\r\nhost: gateway\r\n\r\n";

/// Read what arrives until the peer closes. `None` if it did not close within [`DEADLINE`].
async fn read_to_close(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .ok()
        .map(|()| got)
}

/// Send one request and read one response head (the bodies here are small and arrive with
/// it). Returns the status line.
async fn round_trip(s: &mut TcpStream, req: &[u8]) -> String {
    s.write_all(req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a response");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response within the deadline");
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_body_over_max_body_bytes_is_413_and_never_reaches_the_service() {
    let mut cfg = config_with_services(&["echo"]);
    cfg.ingress.max_body_bytes = 1024;
    let gw = TestGateway::start(cfg).await;
    let (_svc, stats) = gw.echo("echo-1").await;

    let (status, _, body) = gw.send("POST", "/upload", &[b'x'; 1024]).await;
    assert_eq!(status, StatusCode::OK, "at the limit");
    assert_eq!(json(&body)["bytes"], 1024);
    let before = stats.requests();

    let (status, _, _) = gw.send("POST", "/upload", &[b'x'; 1025]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "one byte over");
    assert_eq!(stats.requests(), before, "the service never saw it");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_the_next_connection_waits_until_one_closes() {
    let mut cfg = config_with_services(&[]);
    cfg.ingress.max_connections = 1;
    let gw = TestGateway::start(cfg).await;

    // The one connection allowed, served and kept open (keep-alive).
    let mut first = TcpStream::connect(gw.ingress).await.unwrap();
    assert!(round_trip(&mut first, HEALTH).await.contains(" 200 "));

    // The next one is connected by the kernel but not taken: its request is not answered...
    let mut second = TcpStream::connect(gw.ingress).await.unwrap();
    second.write_all(HEALTH).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "answered while the limit was reached: {early:?}"
    );

    // ...until the first closes; then it is served, request already sent and all.
    drop(first);
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = second.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed instead of served");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("served once the first connection closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 "));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_a_connection_with_no_call_in_progress() {
    let mut cfg = config_with_services(&[]);
    cfg.ingress.idle_timeout = Duration::from_millis(300);
    let gw = TestGateway::start(cfg).await;
    let mut s = TcpStream::connect(gw.ingress).await.unwrap();
    assert!(round_trip(&mut s, HEALTH).await.contains(" 200 "));
    // Nothing more is sent: the gateway closes the connection (after parking it).
    let rest = read_to_close(&mut s).await;
    assert_eq!(
        rest.as_deref(),
        Some(&b""[..]),
        "closed, with nothing more sent"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_read_timeout_closes_a_connection_that_sends_half_a_head() {
    let mut cfg = config_with_services(&[]);
    cfg.ingress.header_read_timeout = Duration::from_millis(300);
    let gw = TestGateway::start(cfg).await;

    // Half a head on a fresh connection, then silence.
    let mut s = TcpStream::connect(gw.ingress).await.unwrap();
    s.write_all(b"GET /health/live HTTP/1.1\r\nhost: gat")
        .await
        .unwrap();
    let got = read_to_close(&mut s)
        .await
        .expect("closed by the header-read timeout");
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "half a head is never served: {}",
        String::from_utf8_lossy(&got)
    );

    // The same after a first call on a kept-alive connection (the next head times out too).
    let mut s = TcpStream::connect(gw.ingress).await.unwrap();
    assert!(round_trip(&mut s, HEALTH).await.contains(" 200 "));
    s.write_all(b"GET /health/live HTTP/1.1\r\nho")
        .await
        .unwrap();
    let got = read_to_close(&mut s)
        .await
        .expect("closed by the header-read timeout");
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_still_running_when_the_grace_period_ends_is_cut_and_the_gateway_stops() {
    let mut cfg = config_with_services(&["echo"]);
    cfg.shutdown.grace_period = Duration::from_millis(300);
    let mut gw = TestGateway::start(cfg).await;
    let (_svc, stats) = gw.echo("echo-1").await;

    // A call that would run for a minute, in progress at the service.
    let client = gw.client.clone();
    let url = gw.url("/sleep?ms=60000");
    let call = tokio::spawn(async move {
        let req = http::Request::get(&url).body(empty()).unwrap();
        match client.request(req).await {
            Ok(resp) => Ok(collect(resp).await.0),
            Err(e) => Err(e.to_string()),
        }
    });
    eventually("the call reached the service", || {
        let s = stats.clone();
        async move { s.requests() == 1 }
    })
    .await;

    // Shutdown does not wait for it past the grace period: the gateway stops...
    let running = gw.running.take().expect("running");
    tokio::time::timeout(DEADLINE, running.shutdown())
        .await
        .expect("the gateway stops after the grace period")
        .expect("and stops cleanly");
    // ...and the call is cut rather than answered.
    let outcome = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("the cut call ends")
        .unwrap();
    assert!(
        !matches!(outcome, Ok(StatusCode::OK)),
        "a call past the grace period was not cut: {outcome:?}"
    );
    if let Some(store) = gw.store.take() {
        store.cleanup().await;
    }
}
