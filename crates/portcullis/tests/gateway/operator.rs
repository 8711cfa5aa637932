//! What a Prometheus and Kubernetes operator expects of `/metrics` and the access log: the
//! process metrics and the in-flight gauge by name, the Prometheus text format when a scraper
//! asks for it, probes and scrapes kept out of the call metrics, and an access log line whose
//! duration covers the whole response body, not just its head.

use crate::common::*;
use http_body_util::BodyExt;
use std::time::Duration;

async fn scrape(gw: &TestGateway, accept: Option<&str>) -> (String, String) {
    let mut req = http::Request::get(gw.url("/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let (status, headers, body) = collect(gw.request(req.body(empty()).unwrap()).await).await;
    assert_eq!(status, http::StatusCode::OK);
    (
        headers["content-type"].to_str().unwrap().to_string(),
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_process_and_in_flight_figures_and_leave_probes_out_of_calls() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = gw.echo("echo-1").await;
    for path in ["/health/live", "/health/ready", "/health/startup"] {
        assert_eq!(gw.get(path).await.0, http::StatusCode::OK, "{path}");
    }
    let _ = scrape(&gw, None).await;
    assert_eq!(gw.get("/echo/hi").await.0, http::StatusCode::OK);

    let (ct, m) = scrape(&gw, None).await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "portcullis_in_flight_calls",
        "portcullis_store_connections{state=\"idle\"}",
        "portcullis_store_connections{state=\"in_use\"}",
        "portcullis_key_verification_queries_total",
    ] {
        assert!(value(&m, name).is_some(), "{name} in:\n{m}");
    }
    assert!(value(&m, "process_resident_memory_bytes").unwrap() > 1e6);
    // The test key was looked up in the store at least once (then cached).
    assert!(value(&m, "portcullis_key_verification_queries_total").unwrap() >= 1.0);
    // The RTT selection uses, per link, once a heartbeat has measured it.
    eventually("the link's RTT is exported", || async {
        value(
            &scrape(&gw, None).await.1,
            "portcullis_link_rtt_seconds{service=\"echo\",instance=\"echo-1\"}",
        )
        .is_some_and(|v| v > 0.0)
    })
    .await;
    // The scrape itself is the one call in flight.
    assert_eq!(value(&m, "portcullis_in_flight_calls"), Some(1.0));
    // The echo call is counted; the probes and the scrapes are not calls.
    let calls: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("portcullis_requests_total{"))
        .collect();
    assert!(
        calls.iter().any(|l| l.contains("service=\"echo\"")),
        "{calls:?}"
    );
    assert!(
        calls.iter().all(|l| !l.contains("service=\"-\"")),
        "probes or scrapes counted as calls: {calls:?}"
    );

    // A call in progress shows in the gauge until its response ends.
    let slow = tokio::spawn({
        let client = gw.client.clone();
        let url = gw.url("/sleep?ms=1500");
        async move {
            let resp = client
                .request(http::Request::get(url).body(empty()).unwrap())
                .await
                .unwrap();
            collect(resp).await.0
        }
    });
    eventually("the slow call is in flight", || async {
        value(&scrape(&gw, None).await.1, "portcullis_in_flight_calls") == Some(2.0)
    })
    .await;
    assert_eq!(slow.await.unwrap(), http::StatusCode::OK);
    assert_eq!(
        value(&scrape(&gw, None).await.1, "portcullis_in_flight_calls"),
        Some(1.0)
    );

    // Prometheus text 0.0.4 for a scraper that asks for it.
    let (ct, text) = scrape(&gw, Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    assert!(
        text.contains("# TYPE portcullis_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_duration_covers_the_whole_response_body() {
    let mut gw = process::GatewayProcess::start("", "info");
    let (_svc, _) = gw.echo().await;
    // 32 MiB: far more than the windows and socket buffers between, so the body ends only once
    // the client has read it, 700 ms after the head.
    let resp = gw
        .request(
            http::Request::get(gw.url("/stream?bytes=33554432"))
                .header("x-correlation-id", "slow-reader-1")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), http::StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 33_554_432);
    // A probe, which is logged at debug only.
    let probe = http::Request::get(gw.url("/health/live"))
        .header("x-correlation-id", "probe-1")
        .body(empty())
        .unwrap();
    assert_eq!(gw.request(probe).await.status(), http::StatusCode::OK);

    let logs = gw.stop_and_read_logs().await;
    let calls: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "call")
        .collect();
    let call = calls
        .iter()
        .find(|v| v["correlation_id"] == "slow-reader-1")
        .unwrap_or_else(|| panic!("an access log line for the call:\n{logs}"));
    let ms = call["duration_ms"].as_f64().unwrap();
    assert!(
        ms >= 650.0,
        "the log line's duration ({ms} ms) covers the body: {call}"
    );
    assert!(
        calls.iter().all(|v| v["correlation_id"] != "probe-1"),
        "a probe in the access log: {logs}"
    );
}

/// A client that sends its head and part of its body, then nothing: after
/// `ingress.request_body_stall_timeout` the call is ended with 408 (the service's stream is
/// cancelled), instead of holding a call slot and a stream until the route's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_ended_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = config_with_services(&["echo"]);
    cfg.ingress.request_body_stall_timeout = Duration::from_millis(300);
    let gw = TestGateway::start(cfg).await;
    let (_svc, _) = gw.echo("echo-1").await;
    let mut s = tokio::net::TcpStream::connect(gw.ingress).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\ncontent-length: 100\r\n\r\n0123456789",
        gw.api_key()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer before the route's timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"request_timeout"}"#),
        "{answer}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    // The slot is given back.
    eventually("no call in flight", || async {
        let (_, m) = scrape(&gw, None).await;
        value(&m, "portcullis_in_flight_calls") == Some(1.0)
    })
    .await;
    gw.shutdown().await;
}
