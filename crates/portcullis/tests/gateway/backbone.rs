//! The backbone end to end: real gateway, real SDK services, real sockets on port 0.

use crate::common::*;
use http::StatusCode;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_echo_and_outcomes() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _stats) = gw.echo("echo-1").await;

    // Any method on the catch-all; the service sees the path, query and gateway headers.
    let (status, headers, body) = gw.send("PATCH", "/echo/a/b?x=1", b"hello").await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["method"], "PATCH");
    assert_eq!(v["path"], "/echo/a/b");
    assert_eq!(v["query"], "x=1");
    assert_eq!(v["body_len"], 5);
    assert_eq!(v["headers"]["x-portcullis-route"], "/echo/{*rest}");
    let cid = headers
        .get("x-correlation-id")
        .expect("correlation id returned");
    assert_eq!(v["headers"]["x-correlation-id"], cid.to_str().unwrap());

    // Unknown path → 404 with the fixed body.
    let (status, _, body) = gw.get("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(&body[..], br#"{"error":"not_found"}"#);

    // Known path, wrong method → 405 with Allow.
    let (status, headers, body) = gw.send("DELETE", "/upload", b"").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers.get("allow").unwrap(), "POST");
    assert_eq!(&body[..], br#"{"error":"method_not_allowed"}"#);

    // Dot segments and the link's reserved path never reach a service.
    let (status, _, _) = gw.get("/echo/%2e%2e/stats").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = gw.get("/.well-known/portcullis/health").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Clients cannot spoof gateway headers.
    let req = http::Request::get(gw.url("/echo/x"))
        .header("x-portcullis-route", "/forged")
        .header("x-portcullis-identity", "admin")
        .body(empty())
        .unwrap();
    let (_, _, body) = collect(gw.request(req).await).await;
    let v = json(&body);
    assert_eq!(v["headers"]["x-portcullis-route"], "/echo/{*rest}");
    // The client's value never arrives; the gateway's own signed assertion does (the SDK
    // verified it before the handler ran, or the call would be 401), and the echo hands no
    // credential back.
    assert_eq!(v["headers"]["x-portcullis-identity"], "[redacted]");

    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_timeout_is_504_and_cancels_the_call_at_the_service() {
    let gw = TestGateway::with_services(&["echo", "slow"]).await;
    // The echo service's routes, with /sleep declared with a 300 ms timeout: its handler
    // counts a cancellation when it is dropped before it answers.
    let stats = echo_service::Stats::default();
    let svc = portcullis_sdk::Service::builder("slow")
        .gateway(gw.link_url())
        .token(token_for("slow"))
        .endpoint(portcullis_sdk::Endpoint::get("/sleep").timeout(Duration::from_millis(300)))
        .serve(echo_service::router(stats.clone()))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), svc.linked())
        .await
        .expect("service links within 10 s")
        .unwrap();
    let (status, _, body) = gw.get("/sleep?ms=30000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(&body[..], br#"{"error":"upstream_timeout"}"#);
    assert_eq!(stats.requests(), 1, "the call reached the service");
    // The gateway's 504 is not the end of it: the service's handler is dropped too.
    eventually("the service observed the cancellation", || {
        let s = stats.clone();
        async move { s.cancellations() == 1 }
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_service_handler() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, stats) = gw.echo("echo-1").await;
    let before = stats.cancellations();
    let client = gw.client.clone();
    let req = http::Request::get(gw.url("/sleep?ms=20000"))
        .body(empty())
        .unwrap();
    // Give up on the call after 300 ms: the client connection is dropped.
    let r = tokio::time::timeout(Duration::from_millis(300), client.request(req)).await;
    assert!(r.is_err(), "the call must still be pending");
    drop(client);
    eventually("the service observed the cancellation", || {
        let s = stats.clone();
        async move { s.cancellations() > before }
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_load() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_a, sa) = gw.echo("echo-a").await;
    let (_b, sb) = gw.echo("echo-b").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = gw.client.clone();
        let url = gw.url("/sleep?ms=5");
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let req = http::Request::get(&url).body(empty()).unwrap();
                let (status, _, _) = collect(client.request(req).await.unwrap()).await;
                assert_eq!(status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (a, b) = (sa.requests(), sb.requests());
    assert_eq!(a + b, 200);
    assert!(a >= 20 && b >= 20, "load must be shared: a={a} b={b}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_fails_in_flight_with_502_and_new_calls_go_elsewhere() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (a, sa) = gw.echo("echo-a").await;
    let (_b, sb) = gw.echo("echo-b").await;

    // Put long calls in flight, one at a time, until both instances hold some. Selection
    // weighs in-flight calls by each link's measured round trip, so how many calls it takes
    // before the slower-looking instance gets one depends on the machine; never assume a count.
    let mut in_flight = Vec::new();
    while sa.requests() == 0 || sb.requests() == 0 {
        assert!(
            in_flight.len() < 200,
            "selection never chose one of the instances"
        );
        let client = gw.client.clone();
        let url = gw.url("/sleep?ms=20000");
        in_flight.push(tokio::spawn(async move {
            let req = http::Request::get(&url).body(empty()).unwrap();
            collect(client.request(req).await.unwrap()).await.0
        }));
        let sent = in_flight.len() as u64;
        eventually("the call reaches an instance", || {
            let (sa, sb) = (sa.clone(), sb.clone());
            async move { sa.requests() + sb.requests() == sent }
        })
        .await;
    }
    let on_a = sa.requests();
    a.abort();

    // Calls on A fail with 502 (not a timeout); calls on B keep running.
    let mut bad_gateway = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for t in in_flight.iter_mut() {
        if let Ok(Ok(status)) = tokio::time::timeout_at(deadline, t).await {
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            bad_gateway += 1;
        }
    }
    assert_eq!(
        bad_gateway, on_a,
        "every call on the killed instance fails fast with 502"
    );

    let before_b = sb.requests();
    for _ in 0..20 {
        let (status, _, _) = gw.get("/echo/after").await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        sb.requests() - before_b,
        20,
        "new calls all go to the live instance"
    );
    for t in in_flight {
        t.abort();
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_instance_finishes_in_flight_and_gets_no_new_calls() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (a, sa) = gw.echo("echo-a").await;

    let client = gw.client.clone();
    let url = gw.url("/sleep?ms=1500");
    let long = tokio::spawn(async move {
        let req = http::Request::get(&url).body(empty()).unwrap();
        collect(client.request(req).await.unwrap()).await
    });
    eventually("call in flight on A", || {
        let sa = sa.clone();
        async move { sa.requests() == 1 }
    })
    .await;

    let (_b, sb) = gw.echo("echo-b").await;
    let drain = tokio::spawn(async move { a.shutdown().await });

    // New calls go to B only, while A's call is still running.
    let before_a = sa.requests();
    for _ in 0..20 {
        let (status, _, _) = gw.get("/echo/during-drain").await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        sa.requests(),
        before_a,
        "a draining instance gets no new calls"
    );
    assert_eq!(sb.requests(), 20);

    let (status, _, body) = long.await.unwrap();
    assert_eq!(status, StatusCode::OK, "in-flight call finishes: {body:?}");
    assert_eq!(json(&body)["slept_ms"], 1500);
    drain.await.unwrap();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_draining_instances_means_503() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (a, sa) = gw.echo("echo-a").await;
    let client = gw.client.clone();
    let url = gw.url("/sleep?ms=1500");
    let long = tokio::spawn(async move {
        let req = http::Request::get(&url).body(empty()).unwrap();
        collect(client.request(req).await.unwrap()).await.0
    });
    eventually("call in flight", || {
        let sa = sa.clone();
        async move { sa.requests() == 1 }
    })
    .await;
    let drain = tokio::spawn(async move { a.shutdown().await });
    eventually("no healthy instance", || async {
        let (status, headers, body) = gw.get("/echo/x").await;
        status == StatusCode::SERVICE_UNAVAILABLE
            && headers.contains_key("retry-after")
            && &body[..] == br#"{"error":"no_healthy_instance"}"#
    })
    .await;
    assert_eq!(long.await.unwrap(), StatusCode::OK);
    drain.await.unwrap();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_conflict_between_services_is_refused() {
    let gw = TestGateway::with_services(&["echo", "other"]).await;
    let (_a, _) = gw.echo("echo-1").await;
    let err = portcullis_sdk::Service::builder("other")
        .gateway(gw.link_url())
        .token(token_for("other"))
        .endpoint(portcullis_sdk::Endpoint::post("/upload"))
        .serve(axum::Router::new())
        .unwrap();
    // The conflicting service never links; echo keeps serving /upload.
    let linked = tokio::time::timeout(Duration::from_millis(1500), err.linked()).await;
    assert!(linked.is_err(), "a conflicting service must not link");
    let (status, _, body) = gw.send("POST", "/upload", b"abc").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["bytes"], 3);
    err.abort();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_and_trailers_pass_through() {
    let gw = TestGateway::with_services(&["grpcish"]).await;
    let svc = portcullis_sdk::Service::builder("grpcish")
        .gateway(gw.link_url())
        .token(token_for("grpcish"))
        .endpoint(portcullis_sdk::Endpoint::post("/pkg.Svc/Method").grpc())
        .serve(tower::service_fn(
            |_req: http::Request<hyper::body::Incoming>| async {
                use http_body_util::{BodyExt, StreamBody};
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                let frames = vec![
                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                        bytes::Bytes::from_static(b"\0\0\0\0\x01A"),
                    )),
                    Ok(http_body::Frame::trailers(trailers)),
                ];
                let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                        .unwrap(),
                )
            },
        ))
        .unwrap();
    svc.linked().await.unwrap();

    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let req = http::Request::post(gw.url("/pkg.Svc/Method"))
        .header("authorization", format!("Bearer {}", gw.api_key()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(b"\0\0\0\0\x00"))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    use http_body_util::BodyExt;
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers pass through");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x01A");
    gw.shutdown().await;
}

/// Read one HTTP/1.1 response with a content-length body from a raw socket. Bytes past it
/// (the next pipelined response, when both arrived in one read) stay in `pending`.
async fn read_response(s: &mut tokio::net::TcpStream, pending: &mut Vec<u8>) -> (u16, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("content-length");
            assert!(!head.contains("connection: close"), "{head}");
            if pending.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = pending[end + 4..end + 4 + len].to_vec();
                pending.drain(..end + 4 + len);
                return (status, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connections_park_and_keep_serving() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = config_with_services(&["echo"]);
    cfg.ingress.park_after = Duration::from_millis(20);
    let gw = TestGateway::start(cfg).await;
    let (_svc, stats) = gw.echo("echo-1").await;

    let auth = format!("authorization: Bearer {}\r\n", gw.api_key());
    let mut s = tokio::net::TcpStream::connect(gw.ingress).await.unwrap();
    let mut pending = Vec::new();
    let req = format!("GET /echo/a HTTP/1.1\r\nhost: x\r\n{auth}\r\n");
    for _ in 0..3 {
        s.write_all(req.as_bytes()).await.unwrap();
        let (status, body) = read_response(&mut s, &mut pending).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(json(&bytes::Bytes::from(body))["path"], "/echo/a");
        // Idle past `park_after`: the connection is parked and must wake for the next call.
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    // A request head split across a park, and two pipelined requests in one write.
    s.write_all(b"GET /echo/b HTTP/1.1\r\nho").await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let rest = format!("st: x\r\n{auth}\r\nGET /echo/c HTTP/1.1\r\nhost: x\r\n{auth}\r\n");
    s.write_all(rest.as_bytes()).await.unwrap();
    let (_, b) = read_response(&mut s, &mut pending).await;
    assert_eq!(json(&bytes::Bytes::from(b))["path"], "/echo/b");
    let (_, c) = read_response(&mut s, &mut pending).await;
    assert_eq!(json(&bytes::Bytes::from(c))["path"], "/echo/c");
    assert_eq!(stats.requests(), 5);

    gw.shutdown().await;
}

/// Idle HTTP/1.1 connections wait in their event loop's lot, not in a task each: the parked
/// gauge counts them, each wakes for its next call, and the idle timeout still closes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connections_wait_in_the_lot_until_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = config_with_services(&[]);
    cfg.runtime.threads = 2;
    cfg.ingress.park_after = Duration::from_millis(20);
    cfg.ingress.idle_timeout = Duration::from_millis(1500);
    let gw = TestGateway::start(cfg).await;
    const N: usize = 20;
    let req = b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut conns = Vec::new();
    for _ in 0..N {
        let mut s = tokio::net::TcpStream::connect(gw.ingress).await.unwrap();
        s.write_all(req).await.unwrap();
        let (status, _) = read_response(&mut s, &mut Vec::new()).await;
        assert_eq!(status, 200);
        conns.push(s);
    }
    let parked = |want: f64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = parked_gauge(gw.ingress).await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "parked connections: {got}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    parked(N as f64).await;
    // Each wakes for its next call, served as usual.
    for s in &mut conns {
        s.write_all(req).await.unwrap();
        let (status, _) = read_response(s, &mut Vec::new()).await;
        assert_eq!(status, 200);
    }
    // Parked again, the idle timeout closes every one: EOF, with nothing more sent.
    for s in &mut conns {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("closed by the idle timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed with nothing more sent");
    }
    parked(0.0).await;
    gw.shutdown().await;
}

/// A parked connection still holds its admission permit: with the limit reached by parked
/// clients a new connection waits, and a parked client that hangs up frees its slot at once
/// (the lot wakes on its EOF), not at the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_counts_against_the_limit_until_its_client_hangs_up() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = config_with_services(&[]);
    cfg.runtime.threads = 2;
    cfg.ingress.park_after = Duration::from_millis(20);
    cfg.ingress.max_connections = 4;
    let gw = TestGateway::start(cfg).await;
    let req = b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(gw.ingress).await.unwrap();
        s.write_all(req).await.unwrap();
        let (status, _) = read_response(&mut s, &mut Vec::new()).await;
        assert_eq!(status, 200);
        conns.push(s);
    }
    // Let them park (no scrape here: a scrape would need a fifth slot).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fifth = tokio::net::TcpStream::connect(gw.ingress).await.unwrap();
    fifth.write_all(req).await.unwrap();
    let waited = tokio::time::timeout(
        Duration::from_millis(500),
        read_response(&mut fifth, &mut Vec::new()),
    )
    .await;
    assert!(waited.is_err(), "served past the connection limit");
    // One parked client hangs up: its slot goes to the waiting connection.
    drop(conns.pop());
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(10),
        read_response(&mut fifth, &mut Vec::new()),
    )
    .await
    .expect("served once a parked client left");
    assert_eq!(status, 200);
    drop(conns);
    drop(fifth);
    gw.shutdown().await;
}

/// `portcullis_parked_connections{listener="ingress"}`, read on a connection of its own that
/// closes after the scrape (so it is never parked itself).
async fn parked_gauge(ingress: std::net::SocketAddr) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(ingress).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .expect("metrics in time")
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("portcullis_parked_connections{listener=\"ingress\"}"));
    line.and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// With a link of the instance on each worker, a client connection's calls are served by the
/// link on the worker that accepted the connection (each worker accepts on its own socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stay_on_the_worker_of_their_connection() {
    let mut cfg = config_with_services(&["echo"]);
    cfg.runtime.threads = 2;
    // No PING during the test: a slow one on a loaded machine would raise one link's RTT.
    cfg.link.heartbeat_interval = Duration::from_secs(60);
    let gw = TestGateway::start(cfg).await;
    // The two links of one instance, as the SDK names them with `links_per_gateway(2)`, each
    // counted apart. Links go to the worker with the fewest: one on each.
    let (_a, sa) = gw.echo("echo-a").await;
    let (_b, sb) = gw.echo("echo-a.1").await;
    let connect = || async {
        let s = tokio::net::TcpStream::connect(gw.ingress).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    };
    let key = format!("Bearer {}", gw.api_key());
    let get = || {
        http::Request::get("/echo/x")
            .header("host", "gateway")
            .header("authorization", &key)
            .body(empty())
            .unwrap()
    };
    // Each connection is accepted on one worker's socket (the kernel picks by a hash of the
    // addresses) and its calls all go to that worker's link; new connections land on both
    // workers (16 all on one would be a 1 in 32,768 chance).
    let mut seen = (false, false);
    for n in 0..16 {
        let mut conn = connect().await;
        let (a0, b0) = (sa.requests(), sb.requests());
        for _ in 0..10 {
            conn.ready().await.expect("connection ready");
            let resp = conn.send_request(get()).await.expect("call");
            let (status, _, _) = collect(resp).await;
            assert_eq!(status, StatusCode::OK);
        }
        let (a, b) = (sa.requests() - a0, sb.requests() - b0);
        assert!(
            (a, b) == (10, 0) || (a, b) == (0, 10),
            "connection {n}: its calls stay on one worker's link: a={a} b={b}"
        );
        seen = (seen.0 || a > 0, seen.1 || b > 0);
        if seen == (true, true) {
            break;
        }
    }
    assert_eq!(
        seen,
        (true, true),
        "connections are accepted on both workers, each served by its own link"
    );
    gw.shutdown().await;
}

/// HTTPS on the ingress (ALPN `h2` and `http/1.1`, curl as the client) and a TLS link (the SDK
/// dialling `tls://` with the CA as its root): both handshakes run on the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_ingress_and_tls_link_serve_calls() {
    let curl = std::process::Command::new("curl").arg("--version").output();
    if !curl.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2")) {
        portcullis::store::testing::skipped(
            "the whole test",
            "it needs curl with HTTP/2 (Debian package curl)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL takes a leaf whose issuer equals its subject for self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Portcullis test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    let tls = portcullis::config::TlsConfig::new(path("cert.pem"), path("key.pem"));
    let mut cfg = config_with_services(&["echo"]);
    cfg.ingress.tls = Some(tls.clone());
    cfg.link.tls = Some(tls);
    let gw = TestGateway::start(cfg).await;

    let (running, stats) = serve_echo(
        portcullis_sdk::Service::builder("echo")
            .gateway(format!("tls://localhost:{}", gw.link.port()))
            .tls_root_ca_pem(ca.pem().into_bytes())
            .token(token_for("echo"))
            .instance_id("echo-tls"),
    )
    .await;

    // The key goes to curl in a header file, never on its command line.
    std::fs::write(
        path("auth.header"),
        format!("Authorization: Bearer {}\n", gw.api_key()),
    )
    .unwrap();
    let port = gw.ingress.port();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .arg("--cacert")
            .arg(path("ca.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg("-H")
            .arg(format!("@{}", path("auth.header").display()))
            .arg(flag)
            .arg(format!("https://localhost:{port}/echo/x"))
            .output()
            .await
            .expect("curl runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("200 {version}"),
            "curl {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(stats.requests(), 2);
    running.shutdown().await;
    gw.shutdown().await;
}
