//! A link no client can break: hostile inputs from clients holding a valid key, and from
//! anyone who can reach the link port, each answered at the gateway without costing the
//! other calls on the link.
//!
//! One test per class: request heads the service cannot take (431, not a dead link), link
//! port slot exhaustion, request bodies answered as RFC 9112 says (413, 400), request
//! trailers under the head policy, slow readers that cost only their own stream.

use crate::common::*;
use axum::body::Body as AxumBody;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A header value of `n` bytes that HPACK's Huffman code cannot shrink much.
fn incompressible(n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz~!";
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ALPHABET[(x % ALPHABET.len() as u32) as usize] as char
        })
        .collect()
}

/// Send raw bytes on a fresh HTTP/1.1 connection and return the response's status code.
async fn raw_status(gw: &TestGateway, bytes: &[u8]) -> u16 {
    let mut s = TcpStream::connect(gw.ingress).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = s.read(&mut chunk).await.expect("a response, not a reset");
            assert!(n > 0, "connection closed without a response");
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await
    .expect("a response head within 10 s");
    let line = String::from_utf8_lossy(&buf);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {line:?}"))
}

/// A body of `chunks` chunks of 16 KiB, `gap` apart.
fn slow_stream(chunks: usize, gap: Duration) -> AxumBody {
    let s = futures_util::stream::unfold(0usize, move |i| async move {
        if i == chunks {
            return None;
        }
        tokio::time::sleep(gap).await;
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(vec![b'x'; 16 * 1024])),
            i + 1,
        ))
    });
    AxumBody::from_stream(s)
}

async fn wait_routable(gw: &TestGateway, path: &str) {
    eventually("the raw service is routable", || async {
        gw.get(path).await.0 != http::StatusCode::NOT_FOUND
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_the_service_cannot_take_is_refused_with_431_and_the_link_and_its_calls_survive() {
    let gw = TestGateway::with_services(&["raw"]).await;
    let router = axum::Router::new()
        .route("/raw/{*rest}", axum::routing::get(|| async { "ok" }))
        .route(
            "/slow",
            axum::routing::get(|| async { slow_stream(20, Duration::from_millis(50)) }),
        );
    let _svc = raw_h2_service(
        gw.link,
        "raw",
        "raw-1",
        vec![
            descriptor("GET", "/raw/{*rest}"),
            descriptor("GET", "/slow"),
        ],
        16 * 1024,
        router,
    )
    .await;
    wait_routable(&gw, "/raw/up").await;

    // A long streaming call in flight on the same link.
    let slow = gw
        .request(http::Request::get(gw.url("/slow")).body(empty()).unwrap())
        .await;
    assert_eq!(slow.status(), http::StatusCode::OK);
    let slow = tokio::spawn(async move { slow.into_body().collect().await.map(|c| c.to_bytes()) });

    // A head under the service's limit still passes.
    let small = http::Request::get(gw.url("/raw/small"))
        .header("x-big", incompressible(8 * 1024))
        .body(empty())
        .unwrap();
    assert_eq!(gw.request(small).await.status(), http::StatusCode::OK);

    // 40 KiB in ten fields: under the gateway's 64 KiB ingress limit, over the service's
    // 16 KiB, and spread so the service sees its limit crossed before the block ends (which
    // is when h2 answers the CONTINUATION with GOAWAY instead of resetting one stream).
    let big = incompressible(4 * 1024);
    let with_big = |mut b: http::request::Builder| {
        for i in 0..10 {
            b = b.header(format!("x-big-{i}"), big.as_str());
        }
        b
    };
    let h1 = with_big(http::Request::get(gw.url("/raw/big")))
        .body(empty())
        .unwrap();
    let (status, _, body) = collect(gw.request(h1).await).await;
    assert_eq!(status, http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(&body[..], br#"{"error":"request_header_fields_too_large"}"#);

    let h2 = with_big(http::Request::get(gw.url("/raw/big")))
        .header("authorization", format!("Bearer {}", gw.api_key()))
        .body(empty())
        .unwrap();
    let resp = h2_client().request(h2).await.expect("h2 request");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let (status, _, body) = collect(resp).await;
    assert_eq!(status, http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(&body[..], br#"{"error":"request_header_fields_too_large"}"#);

    // Many headers adding up over the limit: the same.
    let mut many = http::Request::get(gw.url("/raw/many"));
    for i in 0..400 {
        many = many.header(format!("x-h{i}"), "0123456789");
    }
    let (status, _, _) = collect(gw.request(many.body(empty()).unwrap()).await).await;
    assert_eq!(status, http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // The streaming call finished whole, and the link still serves.
    let got = slow.await.unwrap().expect("the streaming call completes");
    assert_eq!(got.len(), 20 * 16 * 1024);
    let (status, _, body) = gw.get("/raw/after").await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(&body[..], b"ok");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_idle_connections_to_the_link_port_do_not_lock_a_service_out() {
    let mut cfg = config_with_services(&["echo"]);
    // Long timeouts: the service must get in because idle connections make room, not
    // because they time out.
    cfg.link.handshake_timeout = Duration::from_secs(60);
    cfg.link.hello_timeout = Duration::from_secs(60);
    let gw = TestGateway::start(cfg).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(gw.link).await.unwrap());
    }
    // Let the gateway accept all of them.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let builder = portcullis_sdk::Service::builder("echo")
        .gateway(gw.link_url())
        .token(token_for("echo"))
        .instance_id("echo-1");
    let stats = echo_service::Stats::default();
    let mut b = builder;
    for e in echo_service::endpoints() {
        b = b.endpoint(e);
    }
    let svc = b
        .serve(echo_service::router(stats.clone()))
        .expect("service builds");
    tokio::time::timeout(Duration::from_secs(10), svc.linked())
        .await
        .expect("the service links although 300 idle connections came first")
        .unwrap();
    let (status, _, _) = gw.get("/echo/in").await;
    assert_eq!(status, http::StatusCode::OK);
    drop(idle);
    svc.abort();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_over_the_limit_get_413_and_bad_chunk_framing_gets_400_every_time() {
    let mut cfg = config_with_services(&["echo"]);
    cfg.ingress.max_body_bytes = 4096;
    let gw = TestGateway::start(cfg).await;
    let (_svc, _) = gw.echo("echo-1").await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\ntransfer-encoding: chunked\r\n\r\n",
        gw.api_key()
    );
    let mut over = head.clone().into_bytes();
    over.extend_from_slice(b"2000\r\n");
    over.extend_from_slice(&[b'u'; 0x2000]);
    over.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut bad = head.clone().into_bytes();
    bad.extend_from_slice(b"5\r\nhello\r\nzz\r\nnot a chunk\r\n");

    for i in 0..30 {
        assert_eq!(
            raw_status(&gw, &over).await,
            413,
            "iteration {i}: over the limit"
        );
        assert_eq!(
            raw_status(&gw, &bad).await,
            400,
            "iteration {i}: bad framing"
        );
    }
    // Within the limit, the upload goes through.
    let mut ok = head.into_bytes();
    ok.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(raw_status(&gw, &ok).await, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_reach_the_service_without_gateway_fields_or_credentials() {
    let gw = TestGateway::with_services(&["raw"]).await;
    let router = axum::Router::new()
        .route("/raw/{*rest}", axum::routing::get(|| async { "ok" }))
        .route(
            "/trailers",
            axum::routing::post(|body: AxumBody| async move {
                // The gateway resets the stream of the oversized trailers below: the body then
                // fails here, and a panic would take the test service's connection with it.
                let Ok(collected) = body.collect().await else {
                    return axum::Json(serde_json::json!({ "error": "body reset" }));
                };
                let names: Vec<String> = collected
                    .trailers()
                    .map(|t| t.keys().map(|k| k.as_str().to_string()).collect())
                    .unwrap_or_default();
                axum::Json(serde_json::json!({ "trailers": names }))
            }),
        );
    let _svc = raw_h2_service(
        gw.link,
        "raw",
        "raw-1",
        vec![
            descriptor("GET", "/raw/{*rest}"),
            descriptor("POST", "/trailers"),
        ],
        16 * 1024,
        router,
    )
    .await;
    wait_routable(&gw, "/raw/up").await;

    let mut trailers = http::HeaderMap::new();
    for (n, v) in [
        ("x-portcullis-route", "/spoofed"),
        ("x-portcullis-key-id", "admin"),
        ("authorization", "Bearer someone-else"),
        ("proxy-authorization", "Basic eA=="),
        ("x-checksum", "abc"),
    ] {
        trailers.insert(
            http::HeaderName::from_static(n),
            http::HeaderValue::from_static(v),
        );
    }
    let frames = vec![
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(
            Bytes::from_static(b"payload"),
        )),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let req = http::Request::post(gw.url("/trailers"))
        .header("authorization", format!("Bearer {}", gw.api_key()))
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let (status, _, body) = collect(h2_client().request(req).await.expect("h2 request")).await;
    assert_eq!(status, http::StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["trailers"], serde_json::json!(["x-checksum"]), "{v}");

    // Trailers over the service's header list limit are a HEADERS block it cannot take, as an
    // oversized head is: 431, and the link keeps serving.
    let mut big = http::HeaderMap::new();
    let value = http::HeaderValue::from_str(&incompressible(4 * 1024)).unwrap();
    for i in 0..10 {
        big.insert(
            http::HeaderName::from_bytes(format!("x-t{i}").as_bytes()).unwrap(),
            value.clone(),
        );
    }
    let frames = vec![
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(
            Bytes::from_static(b"payload"),
        )),
        Ok(http_body::Frame::trailers(big)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let req = http::Request::post(gw.url("/trailers"))
        .header("authorization", format!("Bearer {}", gw.api_key()))
        .body(body)
        .unwrap();
    let (status, _, body) = collect(h2_client().request(req).await.expect("h2 request")).await;
    assert_eq!(
        status,
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{body:?}"
    );
    assert_eq!(gw.get("/raw/after").await.0, http::StatusCode::OK);
    gw.shutdown().await;
}

/// An HTTP/2 connection to the gateway whose receive window is zero: it takes nothing.
async fn zero_window_client(gw: &TestGateway, path: &str) -> h2::client::ResponseFuture {
    let tcp = TcpStream::connect(gw.ingress).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get(gw.url(path))
        .header("authorization", format!("Bearer {}", gw.api_key()))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    resp
}

/// An HTTP/1.1 download whose client never reads, with a tiny receive buffer.
async fn stalled_h1_client(gw: &TestGateway, path: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(gw.ingress).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\n\r\n",
        gw.api_key()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_four_stalled_downloads_do_not_freeze_another_clients_download_on_the_link() {
    let mut cfg = config_with_services(&["echo"]);
    // Long: the other download must get through because stalled streams cannot exhaust the
    // link's window, not because they are cut.
    cfg.ingress.response_stall_timeout = Duration::from_secs(600);
    let gw = TestGateway::start(cfg).await;
    let (_svc, _) = gw.echo("echo-1").await;
    let path = "/stream?bytes=268435456&chunk=65536";
    let mut h1 = Vec::new();
    let mut h2 = Vec::new();
    for _ in 0..12 {
        h1.push(stalled_h1_client(&gw, path).await);
        h2.push(zero_window_client(&gw, path).await);
    }
    // Give the service time to fill every stalled stream's window.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let resp = gw
        .request(
            http::Request::get(gw.url("/stream?bytes=8388608"))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), http::StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .expect("the download is not frozen behind the stalled ones")
        .expect("body");
    assert_eq!(body.to_bytes().len(), 8 << 20);
    drop((h1, h2));
    gw.shutdown().await;
}

/// Counts drops: the service's response stream was cancelled.
struct DropCount(Arc<AtomicU64>);
impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_whose_client_takes_nothing_is_cancelled_at_the_service_after_the_stall_timeout()
{
    let mut cfg = config_with_services(&["raw"]);
    cfg.ingress.response_stall_timeout = Duration::from_millis(400);
    let gw = TestGateway::start(cfg).await;
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let router = axum::Router::new()
        .route("/raw/{*rest}", axum::routing::get(|| async { "ok" }))
        .route(
            "/forever",
            axum::routing::get(move || {
                let guard = DropCount(d.clone());
                async move {
                    let s = futures_util::stream::unfold(guard, |g| async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        Some((
                            Ok::<_, std::convert::Infallible>(Bytes::from(vec![b'f'; 16 * 1024])),
                            g,
                        ))
                    });
                    AxumBody::from_stream(s)
                }
            }),
        );
    let _svc = raw_h2_service(
        gw.link,
        "raw",
        "raw-1",
        vec![
            descriptor("GET", "/raw/{*rest}"),
            descriptor("GET", "/forever"),
        ],
        64 * 1024,
        router,
    )
    .await;
    wait_routable(&gw, "/raw/up").await;
    let _stalled = zero_window_client(&gw, "/forever").await;
    eventually("the stalled stream is cancelled at the service", || async {
        dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    // The link is fine.
    assert_eq!(gw.get("/raw/after").await.0, http::StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// A burst of calls cancelled by their clients makes the gateway send HEADERS+RST_STREAM
/// pairs the service reads before accepting; with h2's default allowance (20) the service
/// answers GOAWAY ENHANCE_YOUR_CALM. The SDK raises it to the link's stream limit.
async fn a_burst_of_cancelled_calls_does_not_kill_the_link_for_the_others() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = gw.echo("echo-1").await;
    let slow = gw
        .request(
            http::Request::get(gw.url("/stream?bytes=33554432&chunk=16384"))
                .body(empty())
                .unwrap(),
        )
        .await;
    let slow =
        tokio::spawn(async move { slow.into_body().collect().await.map(|c| c.to_bytes().len()) });
    for _ in 0..5 {
        let tcp = TcpStream::connect(gw.ingress).await.unwrap();
        let (client, conn) = h2::client::Builder::new()
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.unwrap();
        let mut pending = Vec::new();
        for _ in 0..200 {
            let req = http::Request::get(gw.url("/sleep?ms=1000"))
                .header("authorization", format!("Bearer {}", gw.api_key()))
                .body(())
                .unwrap();
            client = client.ready().await.unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            pending.push(resp);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(pending);
    }
    let n = slow.await.unwrap().expect("the streaming call survives");
    assert_eq!(n, 32 << 20);
    gw.shutdown().await;
}
