//! Hostile request heads and floods, answered by the early phase before any byte reaches a
//! service: RFC 9112 `Host` rules (400), transfer codings the gateway does not implement (501),
//! spoofed gateway headers, and load past the in-flight ceiling (503). Raw sockets, so nothing
//! between the test and the gateway tidies the bytes up.

use crate::common::*;
use http::StatusCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Send `head` (and `body`) on a fresh connection and read the status line of the answer.
async fn raw_status(gw: &TestGateway, head: &str, body: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(gw.ingress).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer within 10 s");
    let line = String::from_utf8_lossy(&got);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_without_exactly_one_valid_host_is_400_before_the_service_sees_it() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, stats) = gw.echo("echo-1").await;
    let key = gw.api_key().to_string();
    let before = stats.requests();
    for (case, hosts) in [
        ("missing", ""),
        ("duplicate", "Host: a.example\r\nHost: b.example\r\n"),
        ("invalid", "Host: a b\r\n"),
        ("userinfo", "Host: user@evil.example\r\n"),
    ] {
        let head = format!(
            "GET /echo/x HTTP/1.1\r\n{hosts}Authorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(raw_status(&gw, &head, b"").await, 400, "{case}");
    }
    assert_eq!(stats.requests(), before, "the service saw none of them");
    // The same request with one valid Host reaches the service.
    let head =
        format!("GET /echo/x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_status(&gw, &head, b"").await, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_other_than_chunked_is_501_and_never_forwarded() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, stats) = gw.echo("echo-1").await;
    let key = gw.api_key().to_string();
    let before = stats.requests();
    for te in ["gzip, chunked", "identity", "chunked, chunked"] {
        let head = format!(
            "POST /echo/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n"
        );
        let status = raw_status(&gw, &head, b"5\r\nhello\r\n0\r\n\r\n").await;
        // hyper itself refuses some codings with 400; either way the gateway answers, not the
        // service.
        assert!(status == 501 || status == 400, "{te}: {status}");
    }
    let head = format!(
        "POST /echo/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        raw_status(&gw, &head, b"5\r\nhello\r\n0\r\n\r\n").await,
        501,
        "gzip, chunked is the one hyper would de-chunk and pass on"
    );
    assert_eq!(stats.requests(), before, "the service saw none of them");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_ceiling_calls_are_shed_with_503_and_retry_after() {
    let mut cfg = config_with_services(&["echo"]);
    cfg.ingress.max_in_flight = 1;
    let gw = TestGateway::start(cfg).await;
    let (_svc, stats) = gw.echo("echo-1").await;
    let before = stats.requests();
    let slow = {
        let client = gw.client.clone();
        let url = gw.url("/sleep?ms=30000");
        tokio::spawn(async move {
            let resp = client
                .request(http::Request::get(url).body(empty()).unwrap())
                .await
                .unwrap();
            collect(resp).await.0
        })
    };
    // Once the slow call holds the one slot (the service has it), the next call is shed.
    eventually("the slow call reaches the service", || async {
        stats.requests() > before
    })
    .await;
    let mut shed = None;
    for _ in 0..100 {
        let (status, headers, body) = gw.get("/echo/x").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            shed = Some((headers, body));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (headers, body) = shed.expect("a call was shed while the slow one ran");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(&body[..], br#"{"error":"overloaded"}"#);
    // The slot is free again once the slow call has ended (its client gave up).
    slow.abort();
    eventually("calls admitted again", || async {
        gw.get("/echo/x").await.0 == StatusCode::OK
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_get_unimplemented_for_unrouted_paths_only_once_authenticated() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    for (key, status) in [(None, "16"), (Some(gw.api_key().to_string()), "12")] {
        let mut req = http::Request::post(gw.url("/no.Such/Method"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let resp = h2.request(req.body(empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], status);
    }
    gw.shutdown().await;
}

/// The protocol is decided by a connection's first read, which is then handed to hyper in
/// front of the socket: an HTTP/2 preface that trickles in a few bytes at a time is still
/// HTTP/2, and an HTTP/1.1 head far longer than that first read, sent in pieces with pauses,
/// is still one request, answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_read_decides_the_protocol_however_the_bytes_are_split() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, stats) = gw.echo("echo-1").await;
    let key = gw.api_key().to_string();

    // HTTP/2 prior knowledge, the preface in 5-byte pieces, then an empty SETTINGS frame:
    // the gateway answers with its own SETTINGS frame (type 4) first.
    let mut s = tokio::net::TcpStream::connect(gw.ingress).await.unwrap();
    s.set_nodelay(true).unwrap();
    for piece in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".chunks(5) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut frame))
        .await
        .expect("a frame within 10 s")
        .unwrap();
    assert_eq!(
        frame[3], 4,
        "the server's first frame is SETTINGS: {frame:?}"
    );
    drop(s);

    // HTTP/1.1 with a 6 KiB header (three times the first read), in pieces with pauses.
    let before = stats.requests();
    let head = format!(
        "GET /echo/x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {key}\r\nX-Padding: {}\r\nConnection: close\r\n\r\n",
        "p".repeat(6 * 1024)
    );
    let mut s = tokio::net::TcpStream::connect(gw.ingress).await.unwrap();
    s.set_nodelay(true).unwrap();
    for piece in head.as_bytes().chunks(1500) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("the answer within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "one answer: {answer}"
    );
    assert_eq!(
        stats.requests(),
        before + 1,
        "the service saw the one request"
    );
    gw.shutdown().await;
}
