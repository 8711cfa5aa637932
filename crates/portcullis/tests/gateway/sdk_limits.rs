//! The SDK's link through the real gateway: what the gateway forwards, the service takes.

use crate::common::*;
use http::StatusCode;

/// A ~60 KiB head of many fields: under the gateway's default `ingress.max_header_bytes`
/// (64 KiB), over the 16 KiB the SDK's HTTP/2 server used to take. It used to come back as 502
/// with the link closed under every other call; now it reaches the handler and the link stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_kib_head_reaches_the_service_and_the_link_survives() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (svc, _) = gw.echo("echo-1").await;
    let mut req = http::Request::get(gw.url("/echo/big"))
        .body(empty())
        .unwrap();
    let value = "a".repeat(1000);
    for i in 0..60 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-big-{i}").as_bytes()).unwrap(),
            http::HeaderValue::from_str(&value).unwrap(),
        );
    }
    let (status, _, body) = collect(gw.request(req).await).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v = json(&body);
    for i in 0..60 {
        assert_eq!(
            v["headers"][format!("x-big-{i}")],
            value.as_str(),
            "x-big-{i}"
        );
    }
    // Same link, next call.
    let (status, _, _) = gw.get("/echo/after").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(svc.links_up(), 1);
    svc.shutdown().await;
    gw.shutdown().await;
}
