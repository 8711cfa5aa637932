//! Tests against the real `portcullis` binary in its own process: graceful shutdown on
//! SIGTERM, redaction of every log line, and memory bounded while 256 MiB bodies stream through.

mod common;

use common::process::GatewayProcess;
use common::*;
use http::StatusCode;
use sha2::{Digest, Sha256};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_calls_finish_and_exits_zero() {
    let mut gw = GatewayProcess::start("[shutdown]\ngrace_period = \"20s\"\n", "info");
    let (_svc, stats) = gw.echo().await;
    let ((status, _, body), ()) = tokio::join!(gw.get("/sleep?ms=1500"), async {
        eventually("the call is in flight", || {
            let s = stats.clone();
            async move { s.requests() == 1 }
        })
        .await;
        gw.signal("-TERM");
    });
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let exit = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway exits within the grace period");
    assert!(exit.success(), "exit status {exit:?}");
    let logs = gw.logs();
    assert!(logs.contains("draining"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_logs() {
    let mut gw = GatewayProcess::start("", "trace");
    let (_svc, _) = gw.echo().await;
    let key = "pcs_testkey1_S3cretSecretSecretSecret1abcde";
    for path in [
        "/echo/x",
        "/nope",
        &format!("/echo/y?api_key={key}"),
        "/echo/z?password=Hunter2PasswordValue&nonce=NonceValue0042",
    ] {
        let req = http::Request::get(gw.url(path))
            .header("authorization", format!("Bearer {key}"))
            .header("cookie", "session=CookieSecretValue42")
            .header("x-api-key", key)
            .header("proxy-authorization", "Basic QmFzaWNTZWNyZXRWYWx1ZQ==")
            .body(empty())
            .unwrap();
        let _ = collect(gw.request(req).await).await;
    }
    // Stop the gateway so every line it would write about these calls has been written.
    gw.signal("-TERM");
    assert!(gw.wait_exit(Duration::from_secs(15)).await.is_some());
    eventually("the last log line is read", || {
        let done = gw.logs().contains("gateway stopped");
        async move { done }
    })
    .await;
    let logs = gw.logs();
    assert!(
        logs.matches("\"message\":\"call\"").count() >= 4,
        "calls are logged: {logs}"
    );
    for secret in [
        "S3cretSecretSecret",
        "CookieSecretValue42",
        "Hunter2PasswordValue",
        "NonceValue0042",
        "QmFzaWNTZWNyZXRWYWx1ZQ",
        &token_for("echo"),
    ] {
        assert!(!logs.contains(secret), "secret {secret} leaked into logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_bounded_gateway_memory() {
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    const SIZE: u64 = 256 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let gw = GatewayProcess::start("", "info");
    let (_svc, _) = gw.echo().await;

    // Upload 256 MiB generated on the fly; the service hashes what it receives.
    let chunk: bytes::Bytes = (0..CHUNK)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut expected = Sha256::new();
    for _ in 0..(SIZE as usize / CHUNK) {
        expected.update(&chunk);
    }
    let expected = hex::encode(expected.finalize());
    let c = chunk.clone();
    let stream = futures_util::stream::iter(0..(SIZE as usize / CHUNK))
        .map(move |_| Ok::<_, std::convert::Infallible>(http_body::Frame::data(c.clone())));
    let body = StreamBody::new(stream)
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { match e {} })
        .boxed();
    let req = http::Request::post(gw.url("/upload")).body(body).unwrap();
    let (status, _, body) = collect(gw.request(req).await).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["bytes"], SIZE);
    assert_eq!(v["sha256"], expected.as_str());

    // Download 256 MiB; compare with the same stream taken from the service directly.
    let req = http::Request::get(gw.url(&format!("/stream?bytes={SIZE}")))
        .body(empty())
        .unwrap();
    let resp = gw.request(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let (mut n, mut h) = (0u64, Sha256::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            n += data.len() as u64;
            h.update(&data);
        }
    }
    assert_eq!(n, SIZE);
    let direct = {
        use tower::ServiceExt;
        let req = http::Request::get(format!("/stream?bytes={SIZE}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = echo_service::router(echo_service::Stats::default())
            .oneshot(req)
            .await
            .unwrap();
        let mut body = resp.into_body();
        let mut h = Sha256::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                h.update(&data);
            }
        }
        h.finalize()
    };
    assert_eq!(h.finalize(), direct, "the download arrives intact");

    // The gateway never held a body: its peak memory stays far below one body.
    let peak = gw.peak_rss();
    eprintln!(
        "gateway peak RSS after 2 x 256 MiB: {} MiB",
        peak / (1024 * 1024)
    );
    assert!(
        peak < 96 * 1024 * 1024,
        "gateway peak RSS {} MiB",
        peak / (1024 * 1024)
    );
}
