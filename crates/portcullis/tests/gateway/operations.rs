//! Operating the gateway (issue #3): health endpoints, readiness during drain, metrics after
//! traffic, correlation ids and trace context, configuration checking and display, the
//! binary's help, OTLP export, log lines, signals, and services surviving a gateway's exit.
//!
//! In-process tests use the `TestGateway` harness; what only a process shows (exit codes,
//! signals, log output, span export) uses the real binary through `crate::common::process`.

use crate::common::process::{self, GatewayProcess};
use crate::common::*;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use portcullis::config::{Config, Secret, ServiceConfig, TlsConfig};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Helpers

/// One sample of the Prometheus/OpenMetrics text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse the exposition text (label values may contain `{`, `}` and `,`).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("bad line {line}"));
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let chars: Vec<char> = body.chars().collect();
            let mut i = 0;
            loop {
                match chars[i] {
                    '}' => {
                        i += 1;
                        break;
                    }
                    ',' => i += 1,
                    _ => {
                        let eq = i + chars[i..].iter().position(|c| *c == '=').unwrap();
                        let key: String = chars[i..eq].iter().collect();
                        assert_eq!(chars[eq + 1], '"', "{line}");
                        let mut j = eq + 2;
                        let mut val = String::new();
                        while chars[j] != '"' {
                            if chars[j] == '\\' {
                                j += 1;
                            }
                            val.push(chars[j]);
                            j += 1;
                        }
                        labels.insert(key, val);
                        i = j + 1;
                    }
                }
            }
            let consumed: usize = chars[..i].iter().map(|c| c.len_utf8()).sum();
            rest = &body[consumed..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value in {line}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the sample called `name` whose labels include `labels`.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(gw: &TestGateway) -> (String, Vec<Sample>) {
    let (status, headers, body) = gw.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let ct = headers.get("content-type").unwrap().to_str().unwrap();
    assert!(
        ct.starts_with("application/openmetrics-text") || ct.starts_with("text/plain"),
        "{ct}"
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    let samples = parse_metrics(&text);
    (text, samples)
}

/// A request for a gateway-owned path over a fresh raw connection, with no credentials and
/// `Connection: close`: what an orchestrator's probe sends.
async fn probe(addr: std::net::SocketAddr, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .header("connection", "close")
        .body(empty())
        .unwrap();
    collect(client().request(req).await.expect("probe answered")).await
}

/// Link the echo service instance `echo-1` and wait until the gateway routes to it: the SDK
/// reports the link up on HELLO_ACK, a moment before the gateway has registered the routes.
async fn linked_echo(gw: &TestGateway) -> (portcullis_sdk::Running, echo_service::Stats) {
    let linked = gw.echo("echo-1").await;
    eventually("the gateway routes to echo", || async {
        let (_, _, body) = gw.get("/metrics").await;
        process::links_online(&String::from_utf8_lossy(&body), "echo") >= 1
    })
    .await;
    linked
}

fn is_generated_id(v: &str) -> bool {
    v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------------------------
// Health

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer_json_without_credentials() {
    let gw = TestGateway::with_services(&["echo"]).await;
    for (path, check) in [
        ("/health/live", "process"),
        ("/health/startup", "startup"),
        ("/health/ready", "listeners"),
    ] {
        let (status, headers, body) = probe(gw.ingress, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body:?}");
        assert_eq!(headers.get("content-type").unwrap(), "application/json");
        assert!(headers.contains_key("x-correlation-id"), "{path}");
        let v = json(&body);
        assert_eq!(v["status"], "ok", "{path}: {v}");
        assert_eq!(v["checks"][check], "ok", "{path}: {v}");
    }
    let (_, _, body) = probe(gw.ingress, "/health/ready").await;
    assert_eq!(json(&body)["checks"]["draining"], "ok");
    gw.shutdown().await;
}

/// Readiness is never 200 once draining. New connections are refused at once; a connection
/// accepted before the drain whose first request is still arriving is served, and its
/// readiness probe answers 503 `draining`; an idle keep-alive connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_while_draining() {
    let mut cfg = config_with_services(&["echo"]);
    // Far longer than the test may take: the drain must end because every connection
    // finished, not because the grace period ran out.
    cfg.shutdown.grace_period = Duration::from_secs(3600);
    let mut gw = TestGateway::start(cfg).await;

    // B: the only connection used for probes and scrapes before the drain.
    let b = TcpStream::connect(gw.ingress).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(b))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(path)
            .header("host", "gateway")
            .body(empty())
            .unwrap()
    };
    let (status, _, body) = collect(sender.send_request(get("/health/ready")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");

    // A: accepted, its first request head not finished.
    let mut a = TcpStream::connect(gw.ingress).await.unwrap();
    a.write_all(b"GET /health/ready HTTP/1.1\r\nhost: gateway\r\n")
        .await
        .unwrap();
    // Wait until the gateway serves A: two ingress connections, A and B, and no other.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        sender.ready().await.unwrap();
        let (_, _, body) = collect(sender.send_request(get("/metrics")).await.unwrap()).await;
        let samples = parse_metrics(std::str::from_utf8(&body).unwrap());
        let open = sample(
            &samples,
            "portcullis_active_connections",
            &[("listener", "ingress")],
        );
        if open == Some(2.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "A is never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // One more round trip on B: the gateway has now also seen A's bytes arrive.
    sender.ready().await.unwrap();
    let (status, _, _) = collect(sender.send_request(get("/health/live")).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);

    // Drain: readiness turns first, then the listener closes.
    let stopping = tokio::spawn(gw.running.take().unwrap().shutdown());
    let ingress = gw.ingress;
    eventually("new connections are refused", || async move {
        TcpStream::connect(ingress).await.is_err()
    })
    .await;

    a.write_all(b"\r\n").await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), a.read_to_end(&mut resp))
        .await
        .expect("A is answered and closed")
        .unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["status"], "draining", "{v}");
    assert_eq!(v["checks"]["draining"], "draining", "{v}");

    // B was idle: the drain closed it, and with A answered nothing is left to wait for.
    tokio::time::timeout(Duration::from_secs(60), stopping)
        .await
        .expect("the drain ends when the last connection does")
        .unwrap()
        .expect("clean shutdown");
    assert!(sender.send_request(get("/health/ready")).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic_have_counters_histograms_and_bounded_labels() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = linked_echo(&gw).await;

    for _ in 0..2 {
        let (status, _, _) = gw.get("/echo/abc123").await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = gw.send("POST", "/echo/order-9f8e7d", b"x").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = gw.get("/no-such-route/xyz789").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A service with a wrong token is refused and counted.
    let intruder = portcullis_sdk::Service::builder("echo")
        .gateway(gw.link_url())
        .token("not-the-token-0123456789abcdef0123")
        .instance_id("intruder")
        .endpoint(portcullis_sdk::Endpoint::get("/intruder"))
        .serve(axum::Router::new())
        .unwrap();

    let route = "/echo/{*rest}";
    let echo_get = [
        ("service", "echo"),
        ("route", route),
        ("method", "GET"),
        ("status", "200"),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (last, samples) = loop {
        let (text, samples) = scrape(&gw).await;
        let at_least_one = |name: &str, labels: &[(&str, &str)]| {
            sample(&samples, name, labels).is_some_and(|v| v >= 1.0)
        };
        let ready = sample(&samples, "portcullis_requests_total", &echo_get) == Some(2.0)
            && sample(
                &samples,
                "portcullis_request_duration_seconds_count",
                &[("service", "echo"), ("route", route)],
            ) == Some(3.0)
            && at_least_one("portcullis_link_frames_total", &[("type", "ping")])
            && at_least_one("portcullis_link_frames_total", &[("type", "reject")])
            && at_least_one(
                "portcullis_auth_failures_total",
                &[("reason", "link_token")],
            );
        if ready {
            break (text, samples);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed the traffic:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(intruder);

    // Calls, by service, route template, method and status.
    let post = [
        ("service", "echo"),
        ("route", route),
        ("method", "POST"),
        ("status", "200"),
    ];
    assert_eq!(
        sample(&samples, "portcullis_requests_total", &post),
        Some(1.0)
    );
    let unrouted = [
        ("service", "-"),
        ("route", "-"),
        ("method", "GET"),
        ("status", "404"),
    ];
    assert_eq!(
        sample(&samples, "portcullis_requests_total", &unrouted),
        Some(1.0)
    );

    // Histograms by service and route template: buckets, sum and count.
    for h in [
        "portcullis_request_duration_seconds",
        "portcullis_upstream_duration_seconds",
    ] {
        let labels = [("service", "echo"), ("route", route)];
        assert_eq!(
            sample(&samples, &format!("{h}_count"), &labels),
            Some(3.0),
            "{h}\n{last}"
        );
        assert!(sample(&samples, &format!("{h}_sum"), &labels).is_some());
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == format!("{h}_bucket")
                    && s.labels.get("route").map(String::as_str) == Some(route)
            })
            .collect();
        assert!(buckets.len() > 5, "{h} has buckets");
        let inf = buckets
            .iter()
            .find(|s| s.labels["le"] == "+Inf")
            .expect("+Inf bucket");
        assert_eq!(inf.value, 3.0);
    }

    // Links, link frames, connections, build.
    assert_eq!(
        sample(
            &samples,
            "portcullis_links",
            &[("service", "echo"), ("state", "online")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &samples,
            "portcullis_links",
            &[("service", "echo"), ("state", "draining")]
        ),
        Some(0.0)
    );
    for t in ["challenge", "hello", "hello_ack", "reject"] {
        assert!(
            sample(&samples, "portcullis_link_frames_total", &[("type", t)])
                .is_some_and(|v| v >= 1.0),
            "frames of type {t}\n{last}"
        );
    }
    for l in ["ingress", "link"] {
        assert!(
            sample(
                &samples,
                "portcullis_active_connections",
                &[("listener", l)]
            )
            .is_some_and(|v| v >= 1.0),
            "{l} connections\n{last}"
        );
    }
    assert_eq!(
        sample(
            &samples,
            "portcullis_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    // Labels are bounded: no raw path or id ever becomes a label value.
    for raw in ["abc123", "order-9f8e7d", "xyz789", "intruder"] {
        assert!(!last.contains(raw), "{raw} leaked into a label:\n{last}");
    }
    for s in &samples {
        if let Some(r) = s.labels.get("route") {
            assert!(r == "-" || r == route, "unexpected route label {r}");
        }
    }
    gw.shutdown().await;
}

/// The count of the `le` bucket of the histogram `name` with `labels`, cumulative.
fn bucket(samples: &[Sample], name: &str, labels: &[(&str, &str)], le: &str) -> Option<f64> {
    let mut with_le = labels.to_vec();
    with_le.push(("le", le));
    sample(samples, &format!("{name}_bucket"), &with_le)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_sizes_land_in_the_right_buckets_and_probes_stay_out() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = linked_echo(&gw).await;
    // 5000 bytes up; the answer is a short JSON document.
    let (status, _, body) = gw.send("POST", "/upload", &[b'x'; 5000]).await;
    assert_eq!(status, StatusCode::OK);
    let upload_answer = body.len() as f64;
    assert!(upload_answer < 256.0, "{upload_answer}");
    // Nothing up; 300000 bytes down, streamed in chunks.
    let (status, _, body) = gw.get("/stream?bytes=300000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 300_000);
    for path in ["/health/live", "/health/ready", "/metrics"] {
        probe(gw.ingress, path).await;
    }

    let (req, resp) = (
        "portcullis_request_size_bytes",
        "portcullis_response_size_bytes",
    );
    let upload = [("service", "echo"), ("route", "/upload")];
    let stream = [("service", "echo"), ("route", "/stream")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (text, samples) = loop {
        let (text, samples) = scrape(&gw).await;
        let done = |name: &str, labels: &[(&str, &str)]| {
            sample(&samples, &format!("{name}_count"), labels) == Some(1.0)
        };
        if done(req, &upload) && done(resp, &upload) && done(req, &stream) && done(resp, &stream) {
            break (text, samples);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sizes never showed the calls:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sum = |name: &str, labels: &[(&str, &str)]| {
        sample(&samples, &format!("{name}_sum"), labels).unwrap()
    };
    assert_eq!(sum(req, &upload), 5000.0, "{text}");
    assert_eq!(bucket(&samples, req, &upload, "4096.0"), Some(0.0));
    assert_eq!(bucket(&samples, req, &upload, "16384.0"), Some(1.0));
    assert_eq!(sum(resp, &upload), upload_answer);
    assert_eq!(bucket(&samples, resp, &upload, "256.0"), Some(1.0));
    assert_eq!(sum(req, &stream), 0.0);
    assert_eq!(bucket(&samples, req, &stream, "64.0"), Some(1.0));
    assert_eq!(sum(resp, &stream), 300_000.0);
    assert_eq!(bucket(&samples, resp, &stream, "262144.0"), Some(0.0));
    assert_eq!(bucket(&samples, resp, &stream, "1048576.0"), Some(1.0));
    assert_eq!(bucket(&samples, resp, &stream, "+Inf"), Some(1.0));
    // Probes and scrapes answered, but are not calls: no size was recorded for them.
    for name in [req, resp] {
        assert_eq!(
            sample(&samples, &format!("{name}_count"), &[("service", "-")]),
            None,
            "{text}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitoring_listener_serves_health_and_metrics_and_takes_metrics_off_the_public_port() {
    let mut gw = GatewayProcess::start("[monitoring]\nlisten = \"127.0.0.1:0\"\n", "info");
    let mon = gw
        .monitoring
        .expect("the log line names the monitoring address");
    assert_ne!(mon, gw.ingress);
    for path in ["/health/live", "/health/ready", "/health/startup"] {
        let (status, headers, body) = probe(mon, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "ok", "{path}");
    }
    let (status, headers, body) = probe(mon, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = std::str::from_utf8(&body).unwrap();
    // One style of HELP for every family, the collectors' included.
    for help in text.lines().filter(|l| l.starts_with("# HELP ")) {
        assert!(help.ends_with('.'), "{help}");
    }
    let samples = parse_metrics(text);
    assert!(sample(
        &samples,
        "portcullis_active_connections",
        &[("listener", "monitoring")]
    )
    .is_some_and(|v| v >= 1.0));
    // Anything else there is what an unrouted path is everywhere: 401 without a credential.
    let (status, _, _) = probe(mon, "/api/v1/iam/users").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The public port: health stays, /metrics is the fixed 404 with or without a key.
    let (status, _, _) = probe(gw.ingress, "/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = probe(gw.ingress, "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(&body[..], br#"{"error":"not_found"}"#);
    let (status, _, _) = gw.get("/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let logs = gw.stop_and_read_logs().await;
    assert!(logs.contains("gateway stopped"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitoring_listener_on_a_busy_port_stops_the_start_naming_key_and_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    process::init_and_create_key(dir.path());
    let file = dir.path().join("portcullis.toml");
    std::fs::write(
        &file,
        format!(
            "[ingress]\nlisten = \"127.0.0.1:0\"\n[link]\nlisten = \"127.0.0.1:0\"\n[monitoring]\nlisten = \"{addr}\"\n"
        ),
    )
    .unwrap();
    let out = process::run(
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("monitoring.listen {addr}: cannot listen:"))
            && err.to_lowercase().contains("in use"),
        "{err}"
    );
    drop(busy);
}

// ---------------------------------------------------------------------------------------------
// Correlation ids and trace context

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_id_comes_back_and_reaches_the_service() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = linked_echo(&gw).await;

    let id = "order-42_retry.1";
    let req = http::Request::get(gw.url("/echo/x"))
        .header("x-correlation-id", id)
        .body(empty())
        .unwrap();
    let (status, headers, body) = collect(gw.request(req).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-correlation-id"], id);
    assert_eq!(json(&body)["headers"]["x-correlation-id"], id);

    // Without one, the gateway makes one, returns it and passes it on.
    let (_, headers, body) = gw.get("/echo/y").await;
    let made = headers["x-correlation-id"].to_str().unwrap().to_string();
    assert!(is_generated_id(&made), "{made}");
    assert_eq!(json(&body)["headers"]["x-correlation-id"], made.as_str());

    // Errors carry it too.
    let req = http::Request::get(gw.url("/nope"))
        .header("x-correlation-id", id)
        .body(empty())
        .unwrap();
    let (status, headers, _) = collect(gw.request(req).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-correlation-id"], id);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_correlation_ids_are_replaced() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = linked_echo(&gw).await;

    let long = "a".repeat(4096);
    let just_too_long = "b".repeat(129);
    let hostile: Vec<http::HeaderValue> = vec![
        http::HeaderValue::from_str(&long).unwrap(),
        http::HeaderValue::from_str(&just_too_long).unwrap(),
        http::HeaderValue::from_static("id with spaces"),
        http::HeaderValue::from_static("id;injected=1"),
        http::HeaderValue::from_static("<script>alert(1)</script>"),
        http::HeaderValue::from_bytes("caf\u{e9}-\u{1F600}".as_bytes()).unwrap(),
        http::HeaderValue::from_static(""),
    ];
    for v in hostile {
        let req = http::Request::get(gw.url("/echo/x"))
            .header("x-correlation-id", v.clone())
            .body(empty())
            .unwrap();
        let (status, headers, body) = collect(gw.request(req).await).await;
        assert_eq!(status, StatusCode::OK);
        let back = headers["x-correlation-id"].to_str().unwrap();
        assert!(is_generated_id(back), "{v:?} came back as {back}");
        assert_eq!(json(&body)["headers"]["x-correlation-id"], back);
    }

    // CR/LF cannot be sent through an HTTP client: write it raw. The gateway must never echo
    // it back, whatever it answers.
    let mut s = TcpStream::connect(gw.ingress).await.unwrap();
    s.write_all(
        b"GET /health/live HTTP/1.1\r\nhost: gateway\r\nx-correlation-id: abc\rset-cookie: pwned=1\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let resp = String::from_utf8_lossy(&resp).to_ascii_lowercase();
    assert!(resp.starts_with("http/1.1 "), "{resp}");
    assert!(!resp.contains("pwned"), "{resp}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_reaches_the_service_unchanged_without_otlp() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = linked_echo(&gw).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = http::Request::get(gw.url("/echo/x"))
        .header("traceparent", tp)
        .header("tracestate", "vendor=abc")
        .body(empty())
        .unwrap();
    let (status, _, body) = collect(gw.request(req).await).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["headers"]["traceparent"], tp);
    assert_eq!(v["headers"]["tracestate"], "vendor=abc");
    gw.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown as a service sees it

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_keeps_serving_through_another_gateway_when_one_stops() {
    let gw1 = TestGateway::with_services(&["echo"]).await;
    let gw2 = TestGateway::with_services(&["echo"]).await;
    let (svc, _stats) = serve_echo(
        portcullis_sdk::Service::builder("echo")
            .gateway(gw1.link_url())
            .gateway(gw2.link_url())
            .token(token_for("echo"))
            .instance_id("echo-both"),
    )
    .await;
    eventually("linked to both gateways", || {
        let up = svc.links_up();
        async move { up == 2 }
    })
    .await;
    for gw in [&gw1, &gw2] {
        eventually("each gateway routes to echo", || async {
            let (_, _, body) = gw.get("/metrics").await;
            process::links_online(&String::from_utf8_lossy(&body), "echo") == 1
        })
        .await;
    }
    assert_eq!(gw1.get("/echo/one").await.0, StatusCode::OK);

    gw1.shutdown().await;
    eventually("the link to the stopped gateway is closed", || {
        let up = svc.links_up();
        async move { up == 1 }
    })
    .await;
    assert_eq!(gw2.get("/echo/two").await.0, StatusCode::OK);
    svc.shutdown().await;
    gw2.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// Every field of the configuration, as dotted key paths with their JSON values.
fn leaves(v: &serde_json::Value, prefix: &str, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &key, out);
            }
        }
        serde_json::Value::Object(_) => {}
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn toml_literal(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => format!("\"{s}\""),
        serde_json::Value::Array(a) if a.is_empty() => "[]".into(),
        other => other.to_string(),
    }
}

#[test]
fn configuration_doc_lists_every_field_with_its_default() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .expect("docs/configuration.md exists");

    // Defaults as the code has them; optional tables filled in to reach their fields.
    let mut defaults = BTreeMap::new();
    leaves(
        &serde_json::to_value(Config::default()).unwrap(),
        "",
        &mut defaults,
    );
    let mut full_cfg = Config::default();
    let tls = TlsConfig::new("cert.pem", "key.pem");
    full_cfg.ingress.tls = Some(tls.clone());
    full_cfg.link.tls = Some(tls);
    full_cfg.link.pairing.webhook = Some(portcullis::link::webhook::WebhookConfig {
        url: "https://hooks.example/pairing".into(),
        secret: Secret::new("x"),
        attempts: 5,
        timeout: std::time::Duration::from_secs(5),
    });
    full_cfg.services.insert(
        "<name>".into(),
        ServiceConfig {
            token_sha256: Some(Secret::new("x")),
            auth: vec![portcullis::config::LinkAuthKind::Token],
        },
    );
    full_cfg.backends.insert(
        "<name>".into(),
        portcullis::config::BackendConfig::new(vec!["/w".into()]),
    );
    let mut fields = defaults.clone();
    leaves(&serde_json::to_value(&full_cfg).unwrap(), "", &mut fields);
    // A backend's fields have defaults of their own, but its command.
    let mut backend_defaults = BTreeMap::new();
    leaves(
        &serde_json::to_value(portcullis::config::BackendConfig::new(Vec::new())).unwrap(),
        "backends.<name>",
        &mut backend_defaults,
    );
    backend_defaults.remove("backends.<name>.command");

    let row = |key: &str| {
        doc.lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{key}`"))
    };
    for key in fields.keys() {
        let r = row(key);
        let env = format!(
            "PORTCULLIS_{}",
            key.replace('.', "__").replace("<name>", "<NAME>")
        )
        .to_uppercase();
        match defaults.get(key).or_else(|| backend_defaults.get(key)) {
            // Optional, absent by default.
            Some(serde_json::Value::Null) => {
                assert!(
                    r.contains("| absent |"),
                    "`{key}` is absent by default: {r}"
                )
            }
            Some(v) => {
                let lit = toml_literal(v);
                assert!(
                    r.contains(&format!("| `{lit}` |")),
                    "`{key}` defaults to {lit}: {r}"
                )
            }
            // A field with a default inside an optional table (`ingress.tls.session_cache`):
            // the default of the table as `TlsConfig::new` makes it.
            None if key.contains(".tls.") && !key.ends_with(".cert") && !key.ends_with(".key") => {
                let lit = toml_literal(&fields[key]);
                assert!(
                    r.contains(&format!("| `{lit}` |")),
                    "`{key}` defaults to {lit}: {r}"
                )
            }
            // Inside an optional table or a map entry.
            None => assert!(r.contains("required"), "`{key}` is required: {r}"),
        }
        // An optional table is set through its fields' overrides.
        let is_optional_table = key.ends_with(".tls") || key.ends_with(".webhook");
        if !is_optional_table {
            assert!(r.contains(&env), "`{key}` names its override {env}: {r}");
        }
    }

    // No row documents a field that does not exist.
    let mut known: Vec<String> = fields.keys().cloned().collect();
    known.extend(["ingress.tls".into(), "link.tls".into()]);
    for l in doc.lines().filter(|l| l.starts_with("| `")) {
        let key = l.split('`').nth(1).unwrap();
        if key.contains('.') {
            assert!(known.iter().any(|k| k == key), "stale row for `{key}`");
        }
    }

    // The example is a valid configuration.
    let example = doc
        .split("## Example")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("an example block");
    Config::from_toml(example).unwrap_or_else(|e| panic!("the example is invalid: {e:?}"));
}

#[test]
fn check_config_names_every_problem_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[ingress]\nlisten = \"127.0.0.1:0\"\nbogus = 1\nmax_body_bytes = \"lots\"\n[shutdown]\ngrace_period = 30\n",
    )
    .unwrap();
    let out = process::run(&["check-config", bad.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for key in [
        "ingress.bogus",
        "ingress.max_body_bytes",
        "shutdown.grace_period",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(key) && l.contains("bad.toml")),
            "{key} not named:\n{stderr}"
        );
    }
    assert!(stderr.contains("unknown field"), "{stderr}");
    assert!(stderr.contains("invalid type"), "{stderr}");

    // A problem introduced by an override is named the same way.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, process::echo_service_toml()).unwrap();
    let out = process::run(
        &["check-config", good.to_str().unwrap()],
        &[("PORTCULLIS_LINK__HEARTBEAT_INTERVAL", "1ms")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("link.heartbeat_interval"), "{stderr}");

    let out = process::run(&["check-config", good.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "a token on a loopback link listener is fine: {out:?}"
    );
    // A static token on a link listener other networks reach: valid, with a warning.
    let out = process::run(
        &["check-config", good.to_str().unwrap()],
        &[("PORTCULLIS_LINK__LISTEN", "0.0.0.0:7070")],
    );
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "warning: services.echo: accepts a static token on a non-loopback link listener"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("ed25519"), "{stderr}");

    // A syntax error names its line.
    std::fs::write(&bad, "[ingress]\nlisten = \n").unwrap();
    let out = process::run(&["check-config", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{out:?}"
    );
}

#[test]
fn check_config_names_an_otlp_endpoint_that_is_not_an_http_or_https_url() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    for bad in [
        "grpc://127.0.0.1:4317",
        "127.0.0.1:4318/v1/traces",
        "https:///v1/traces",
    ] {
        std::fs::write(&file, format!("[telemetry]\notlp_endpoint = \"{bad}\"\n")).unwrap();
        let out = process::run(&["check-config", file.to_str().unwrap()], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(
            stderr.contains("telemetry.otlp_endpoint") && stderr.contains("https://"),
            "{bad}: {stderr}"
        );
    }
    for good in [
        "http://127.0.0.1:4318/v1/traces",
        "https://collector.example:4318/v1/traces",
    ] {
        std::fs::write(&file, format!("[telemetry]\notlp_endpoint = \"{good}\"\n")).unwrap();
        let out = process::run(&["check-config", file.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{good}: {out:?}");
    }
}

#[test]
fn config_show_masks_secrets_and_shows_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.toml");
    std::fs::write(&file, process::echo_service_toml()).unwrap();
    let hash = hex::encode(portcullis::link::hash_token(&token_for("echo")));
    let out = process::run(
        &["config", "show", "--config", file.to_str().unwrap()],
        &[
            ("PORTCULLIS_INGRESS__MAX_BODY_BYTES", "1234"),
            ("PORTCULLIS_SHUTDOWN__GRACE_PERIOD", "45s"),
            ("PORTCULLIS_ROUTING__NEIGHBOUR_REGIONS", r#"["eu-central"]"#),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !stdout.contains(&hash),
        "the token hash is shown:\n{stdout}"
    );
    let shown: toml::Table = stdout.parse().expect("config show prints TOML");
    assert_eq!(
        shown["services"]["echo"]["token_sha256"].as_str(),
        Some("***")
    );
    assert_eq!(shown["ingress"]["max_body_bytes"].as_integer(), Some(1234));
    assert_eq!(shown["shutdown"]["grace_period"].as_str(), Some("45s"));
    assert_eq!(
        shown["routing"]["neighbour_regions"][0].as_str(),
        Some("eu-central")
    );
    // Defaults fill the rest.
    assert_eq!(shown["ingress"]["listen"].as_str(), Some("127.0.0.1:8080"));

    // A secret set from the environment is masked too; an unknown override is an error.
    let billing = "c".repeat(64);
    let out = process::run(
        &["config", "show"],
        &[(
            "PORTCULLIS_SERVICES__BILLING__TOKEN_SHA256",
            billing.as_str(),
        )],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(!stdout.contains("cccc"), "{stdout}");
    assert!(stdout.contains("[services.billing]"), "{stdout}");
    let out = process::run(&["config", "show"], &[("PORTCULLIS_INGRESS__BOGUS", "1")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ingress.bogus"));
}

#[test]
fn check_config_config_show_and_hash_token_print_their_documented_json() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[ingress]\nlisten = \"127.0.0.1:8080\"\n[monitoring]\nlisten = \"127.0.0.1:9090\"\n{}",
            process::echo_service_toml()
        ),
    )
    .unwrap();
    let g = good.to_str().unwrap();
    let json = |out: &std::process::Output| -> serde_json::Value {
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.lines().count(), 1, "one document: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };

    // check-config: the verdict, the listeners; the text names the monitoring split.
    let out = process::run(&["check-config", g, "--json"], &[]);
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    assert_eq!(v["file"], g);
    assert_eq!(v["ok"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["warnings"], serde_json::json!([]));
    assert_eq!(v["listeners"]["ingress"], "127.0.0.1:8080");
    assert_eq!(v["listeners"]["link"], "127.0.0.1:7070");
    assert_eq!(v["listeners"]["monitoring"], "127.0.0.1:9090");
    let (code, text, _) = process::cli(&["check-config", g]);
    assert_eq!(code, 0);
    assert!(text.starts_with(&format!("{g}: ok\n")), "{text}");
    assert!(text.contains("monitoring.listen 127.0.0.1:9090"), "{text}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[ingress]\nmax_connections = 0\nbogus = 1\n").unwrap();
    let out = process::run(
        &["check-config", "--json", "--config", bad.to_str().unwrap()],
        &[("PORTCULLIS_MONITORING__MAX_CONNECTIONS", "0")],
    );
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["listeners"], serde_json::Value::Null);
    let keys: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"ingress.bogus"), "{v}");
    assert!(keys.contains(&"ingress.max_connections"), "{v}");
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["key"] == "monitoring.max_connections"
                && p["message"]
                    .as_str()
                    .unwrap()
                    .contains("PORTCULLIS_MONITORING__MAX_CONNECTIONS")),
        "{v}"
    );
    let out = process::run(&["check-config", "--json", "/nonexistent/p.toml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["problems"][0]["key"], serde_json::Value::Null);

    // config show: the configuration's own keys, absent fields null, secrets masked.
    let out = process::run(&["config", "show", "--json", "--config", g], &[]);
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    assert_eq!(v["ingress"]["listen"], "127.0.0.1:8080");
    assert_eq!(v["monitoring"]["listen"], "127.0.0.1:9090");
    assert_eq!(v["monitoring"]["max_connections"], 64);
    assert_eq!(v["routing"]["region"], serde_json::Value::Null);
    assert_eq!(v["services"]["echo"]["token_sha256"], "***");
    // Credentials in the OTLP endpoint's URL are not shown either.
    let out = process::run(
        &["config", "show", "--json"],
        &[(
            "PORTCULLIS_TELEMETRY__OTLP_ENDPOINT",
            "https://user:s3cret@otel.example/v1/traces?api-key=k3y",
        )],
    );
    let v = json(&out);
    assert_eq!(
        v["telemetry"]["otlp_endpoint"],
        "https://***@otel.example/v1/traces?***"
    );

    // hash-token: the hash only; the token is in no output.
    let token = "tok-en-with-secret-0123456789abcdef";
    let hash = |args: &[&str]| {
        let mut child = process::command()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = hash(&["hash-token", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    let expected = hex::encode(portcullis::link::hash_token(token));
    assert_eq!(v, serde_json::json!({ "token_sha256": expected }));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(token));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(token));
    let out = hash(&["hash-token"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{expected}\n")
    );
    let out = process::run(&["hash-token", "--json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).trim()).unwrap();
    assert_eq!(err["error"], "empty token on standard input");
}

#[test]
fn help_of_the_binary_and_every_subcommand_reads_well() {
    let cases: [(&[&str], &[&str]); 7] = [
        (
            &["--help"],
            &[
                "serve",
                "demo",
                "check-config",
                "config",
                "hash-token",
                "--version",
            ],
        ),
        (&["serve", "--help"], &["--config", "PORTCULLIS_CONFIG"]),
        (&["demo", "--help"], &["--ingress", "--link", "--json"]),
        (&["check-config", "--help"], &["<FILE>", "key path"]),
        (&["config", "--help"], &["show"]),
        (&["config", "show", "--help"], &["--config", "masked"]),
        (
            &["hash-token", "--help"],
            &["standard input", "token_sha256"],
        ),
    ];
    for (args, words) in cases {
        let out = process::run(args, &[]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(text.starts_with(char::is_alphabetic), "{args:?}:\n{text}");
        for w in words {
            assert!(text.contains(w), "{args:?} does not mention {w}:\n{text}");
        }
    }
    let out = process::run(&["--version"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    // Without a subcommand: usage on stderr, non-zero.
    let out = process::run(&[], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

// ---------------------------------------------------------------------------------------------
// The binary: logs, spans, signals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_log_line_has_every_field_and_the_correlation_id_is_on_every_line() {
    let mut gw = GatewayProcess::start("", "debug");
    let (_svc, _) = gw.echo().await;
    for (path, cid) in [("/echo/x", "cid-logs-ok"), ("/nope", "cid-logs-404")] {
        let req = http::Request::get(gw.url(path))
            .header("x-correlation-id", cid)
            .body(empty())
            .unwrap();
        let _ = collect(gw.request(req).await).await;
    }
    let logs = gw.stop_and_read_logs().await;
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();

    let call = lines
        .iter()
        .find(|v| v["message"] == "call" && v["correlation_id"] == "cid-logs-ok")
        .unwrap_or_else(|| panic!("no access line:\n{logs}"));
    assert!(call["timestamp"].is_string(), "{call}");
    assert_eq!(call["level"], "INFO");
    assert_eq!(call["method"], "GET");
    assert_eq!(call["route"], "/echo/{*rest}");
    assert_eq!(call["service"], "echo");
    assert_eq!(call["instance"], "echo-1");
    assert_eq!(call["status"], 200);
    assert!(call["duration_ms"].is_number(), "{call}");

    // Every line written while handling the 404 carries its correlation id.
    let refused: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["message"] == "call refused")
        .collect();
    assert!(!refused.is_empty(), "{logs}");
    for v in refused {
        assert!(v.to_string().contains("cid-logs-404"), "{v}");
    }
}

/// What a fake collector saw: each export's path, content type and body size.
type Exports = Arc<Mutex<Vec<(String, String, usize)>>>;

/// A fake OTLP/HTTP collector: records each export's path, content type and body size. With
/// `tls`, it speaks HTTPS.
async fn fake_collector_with(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (std::net::SocketAddr, Exports) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Exports = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let g = g.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve_collector(stream, g).await;
                        }
                    }
                    None => serve_collector(stream, g).await,
                }
            });
        }
    });
    (addr, got)
}

async fn fake_collector() -> (std::net::SocketAddr, Exports) {
    fake_collector_with(None).await
}

async fn serve_collector<IO>(io: IO, g: Exports)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let g = g.clone();
        async move {
            let path = req.uri().path().to_string();
            let ct = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = req.into_body().collect().await.map(|c| c.to_bytes());
            let len = body.map(|b| b.len()).unwrap_or(0);
            g.lock().unwrap().push((path, ct, len));
            let mut resp = http::Response::new(http_body_util::Full::new(Bytes::new()));
            resp.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/x-protobuf"),
            );
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_and_flushed_on_shutdown() {
    let (collector, got) = fake_collector().await;
    let mut gw = GatewayProcess::start(
        &format!("[telemetry]\notlp_endpoint = \"http://{collector}/v1/traces\"\n"),
        "info",
    );
    let (_svc, _) = gw.echo().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let req = http::Request::get(gw.url("/echo/traced"))
        .header("traceparent", &tp)
        .body(empty())
        .unwrap();
    let (status, _, body) = collect(gw.request(req).await).await;
    assert_eq!(status, StatusCode::OK);
    // The gateway continues the client's trace: same trace id, its own span as the parent.
    let seen = json(&body)["headers"]["traceparent"]
        .as_str()
        .expect("the service receives a traceparent")
        .to_string();
    assert!(seen.starts_with(&format!("00-{trace_id}-")), "{seen}");
    assert_ne!(seen, tp);

    gw.signal("-TERM");
    let exit = gw.wait_exit(Duration::from_secs(20)).await.expect("exits");
    assert!(exit.success(), "{exit:?}\n{}", gw.logs());
    let got = got.lock().unwrap().clone();
    assert!(
        !got.is_empty(),
        "no export reached the collector\n{}",
        gw.logs()
    );
    for (path, ct, len) in &got {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ct, "application/x-protobuf");
        assert!(*len > 0);
    }
}

/// An `https://` endpoint works: the exporter speaks TLS through rustls on the ring provider
/// (no second TLS stack, no aws-lc) and trusts the roots of `SSL_CERT_FILE`, like the system's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_https_otlp_to_a_collector_the_roots_trust() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Portcullis test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "collector");
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let (collector, got) =
        fake_collector_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))).await;

    let mut gw = GatewayProcess::start_with_env(
        &format!("[telemetry]\notlp_endpoint = \"https://{collector}/v1/traces\"\n"),
        &[
            ("PORTCULLIS_LOG", "info"),
            ("SSL_CERT_FILE", ca_file.to_str().unwrap()),
        ],
    );
    let (_svc, _) = gw.echo().await;
    let (status, _, _) = gw.get("/echo/traced").await;
    assert_eq!(status, StatusCode::OK);
    gw.signal("-TERM");
    let exit = gw.wait_exit(Duration::from_secs(20)).await.expect("exits");
    assert!(exit.success(), "{exit:?}\n{}", gw.logs());
    let got = got.lock().unwrap().clone();
    assert!(
        !got.is_empty(),
        "no export reached the https collector\n{}",
        gw.logs()
    );
    for (path, ct, len) in &got {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ct, "application/x-protobuf");
        assert!(*len > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut gw = GatewayProcess::start("[shutdown]\ngrace_period = \"10m\"\n", "info");
    let (_svc, stats) = gw.echo().await;
    let (call, ()) = tokio::join!(gw.try_get("/sleep?ms=600000"), async {
        eventually("the call is in flight", || {
            let s = stats.clone();
            async move { s.requests() == 1 }
        })
        .await;
        gw.signal("-TERM");
        eventually("the gateway drains", || {
            let draining = gw.logs().contains("draining");
            async move { draining }
        })
        .await;
        gw.signal("-TERM");
    });
    assert!(call.is_err(), "the call cannot finish: {call:?}");
    let exit = gw
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the second signal ends the process long before the grace period");
    assert!(!exit.success(), "{exit:?}");
}

/// Drain on an HTTP/2 client connection: the gateway sends GOAWAY, so the client opens no new
/// stream on it, while the call already in flight on it still completes with 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_goaway_and_their_in_flight_call_finishes() {
    let mut cfg = config_with_services(&["echo"]);
    cfg.shutdown.grace_period = Duration::from_secs(3600);
    let mut gw = TestGateway::start(cfg).await;
    let (_svc, stats) = gw.echo("echo-1").await;

    let io = TcpStream::connect(gw.ingress).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = |path: &str| {
        http::Request::get(format!("http://gateway{path}"))
            .header("authorization", format!("Bearer {}", gw.api_key()))
            .body(empty())
            .unwrap()
    };
    sender.ready().await.unwrap();
    let in_flight = tokio::spawn(sender.send_request(req("/sleep?ms=1500")));
    eventually("the call is in flight", || {
        let s = stats.clone();
        async move { s.requests() == 1 }
    })
    .await;

    let stopping = tokio::spawn(gw.running.take().unwrap().shutdown());
    // After GOAWAY the connection takes no new stream (the client refuses it, or the gateway
    // resets it as past the last stream id); before it arrives a call may still pass.
    let key = gw.api_key().to_string();
    eventually("new streams on the connection are refused", || {
        let mut sender = sender.clone();
        let req = http::Request::get("http://gateway/echo/after-goaway")
            .header("authorization", format!("Bearer {key}"))
            .body(empty())
            .unwrap();
        async move { sender.send_request(req).await.is_err() }
    })
    .await;
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight call is answered");
    let (status, _, _) = collect(resp).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the connection closes once its last stream ends")
        .unwrap()
        .ok();
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the drain ends with the last call")
        .unwrap()
        .unwrap();
    if let Some(s) = gw.store.take() {
        s.cleanup().await;
    }
}
