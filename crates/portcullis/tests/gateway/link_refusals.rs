//! What a service hears from the gateway, against a real gateway: a refusal retrying cannot fix
//! fails `linked()` with the REJECT's code and message and calls `on_rejected` once; every
//! REJECT is counted by code in `/metrics`; a malformed HELLO is told which field is wrong, and
//! the gateway's log line names the service it claimed; a gateway that shuts down tells its
//! links, which drain (in-flight calls finish) and dial again.

use crate::common::process::GatewayProcess;
use crate::common::*;
use portcullis_link::{Frame, FrameType, RejectCode, MAGIC, MAX_FRAME_LEN};
use portcullis_sdk::{Endpoint, Error, ErrorKind, Service, ServiceBuilder};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Serve `builder` with an `on_rejected` that records what it is told; `linked()` must fail.
/// Returns its error and what the callback was told once it had.
async fn refused(builder: ServiceBuilder) -> (Error, Vec<Error>) {
    let told = Arc::new(Mutex::new(Vec::new()));
    let t = told.clone();
    let running = builder
        .on_rejected(move |e| t.lock().unwrap().push(e.clone()))
        .serve(axum::Router::new())
        .expect("the service builds");
    let err = tokio::time::timeout(Duration::from_secs(20), running.linked())
        .await
        .expect("linked() fails instead of waiting")
        .expect_err("the gateway refuses the service");
    // The slot has stopped dialling: nothing more can be told.
    let told = told.lock().unwrap().clone();
    (err, told)
}

fn assert_refused(err: &Error, told: &[Error], code: RejectCode, gateway: &str) {
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert_eq!(err.reject_code(), Some(code), "{err}");
    assert_eq!(err.gateway(), Some(gateway));
    let text = err.to_string();
    assert!(
        text.contains(code.as_str()) && text.contains(gateway),
        "{text}"
    );
    assert_eq!(told.len(), 1, "on_rejected is called once: {told:?}");
    assert_eq!(told[0].reject_code(), Some(code));
    assert_eq!(told[0].to_string(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_linked_with_bad_credential_and_calls_on_rejected_once() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let wrong = "not-the-token-0123456789abcdef0123";
    let (err, told) = refused(
        Service::builder("echo")
            .gateway(gw.link_url())
            .token(wrong)
            .endpoint(Endpoint::get("/x")),
    )
    .await;
    assert_refused(&err, &told, RejectCode::BadCredential, &gw.link_url());
    assert!(
        !format!("{err} {err:?}").contains(wrong),
        "the token leaked"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_the_gateway_refuses_fails_linked_with_invalid_descriptor() {
    let gw = TestGateway::with_services(&["echo"]).await;
    // A capability of the gateway's own: the SDK cannot know the gateway's registry.
    let (err, told) = refused(
        Service::builder("echo")
            .gateway(gw.link_url())
            .token(token_for("echo"))
            .endpoint(Endpoint::get("/x").capability("metrics.read")),
    )
    .await;
    assert_refused(&err, &told, RejectCode::InvalidDescriptor, &gw.link_url());
    assert!(err.to_string().contains("/x"), "names the endpoint: {err}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_conflict_past_the_patience_fails_linked_with_route_conflict() {
    let gw = TestGateway::with_services(&["echo", "other"]).await;
    let (_echo, _) = gw.echo("echo-1").await;
    let (err, told) = refused(
        Service::builder("other")
            .gateway(gw.link_url())
            .token(token_for("other"))
            .conflict_patience(Duration::ZERO)
            .endpoint(Endpoint::post("/upload")),
    )
    .await;
    assert_refused(&err, &told, RejectCode::RouteConflict, &gw.link_url());
    // echo keeps its route.
    let (status, _, _) = gw.send("POST", "/upload", b"abc").await;
    assert_eq!(status, http::StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_link_is_counted_by_its_reject_code() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (err, _) = refused(
        Service::builder("echo")
            .gateway(gw.link_url())
            .token("not-the-token-0123456789abcdef0123")
            .endpoint(Endpoint::get("/x")),
    )
    .await;
    assert_eq!(err.reject_code(), Some(RejectCode::BadCredential));
    let (status, _, body) = gw.get("/metrics").await;
    assert_eq!(status, http::StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("portcullis_link_rejects_total{code=\"bad_credential\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("portcullis_link_rejects_total{code=\"route_conflict\"}"),
        "only codes sent appear: {text}"
    );
    gw.shutdown().await;
}

/// Send `body` as a frame of `frame_type` after the CHALLENGE; the REJECT that answers.
async fn reject_of(link: std::net::SocketAddr, frame_type: FrameType, body: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(link).await.unwrap();
    let challenge = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN)
        .await
        .unwrap();
    assert!(matches!(challenge, Frame::Challenge(_)));
    let mut bytes = Vec::from(MAGIC);
    bytes.extend([portcullis_link::VERSION, frame_type as u8]);
    bytes.extend(u32::try_from(body.len()).unwrap().to_be_bytes());
    bytes.extend(body);
    s.write_all(&bytes).await.unwrap();
    match portcullis::link::read_frame(&mut s, MAX_FRAME_LEN).await {
        Ok(Frame::Reject(r)) => {
            assert_eq!(r.code, RejectCode::MalformedFrame, "{}", r.message);
            r.message
        }
        other => panic!("expected REJECT, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_hello_is_told_which_field_and_the_log_names_the_claimed_service() {
    let mut gw = GatewayProcess::start("", "info");
    let cred = format!(
        r#""credential":{{"type":"token","token":"{}"}}"#,
        token_for("echo")
    );
    let unknown = format!(
        r#"{{"service":"echo","instance_id":"e-1","version":"1","endpoints":[],{cred},"colour":"red"}}"#
    );
    let m = reject_of(gw.link, FrameType::Hello, unknown.as_bytes()).await;
    assert!(
        m.starts_with("malformed HELLO frame: unknown field `colour`, expected one of"),
        "{m}"
    );
    let missing = format!(r#"{{"service":"echo","instance_id":"e-1","endpoints":[],{cred}}}"#);
    let m = reject_of(gw.link, FrameType::Hello, missing.as_bytes()).await;
    assert_eq!(m, "malformed HELLO frame: missing field `version`");
    let wrong_type =
        format!(r#"{{"service":"echo","instance_id":"e-1","version":1,"endpoints":[],{cred}}}"#);
    let m = reject_of(gw.link, FrameType::Hello, wrong_type.as_bytes()).await;
    assert_eq!(
        m,
        "malformed HELLO frame: invalid type: integer `1`, expected a string at `version`"
    );
    let ack = br#"{"link_id":"l-1","heartbeat_interval_ms":1000,"limits":{"max_concurrent_streams":1,"max_request_body":1}}"#;
    let m = reject_of(gw.link, FrameType::HelloAck, ack).await;
    assert_eq!(m, "expected HELLO, got HELLO_ACK");
    // A hostile field name is cut in the REJECT and in the log.
    let long = "z".repeat(5000);
    let hostile = format!(r#"{{"service":"spy\u001b[31m{long}","{long}":1}}"#);
    let m = reject_of(gw.link, FrameType::Hello, hostile.as_bytes()).await;
    assert!(m.len() < 512 && m.contains("unknown field `zzz"), "{m}");

    let logs = gw.stop_and_read_logs().await;
    let refusals: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.contains("link refused"))
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    assert_eq!(refusals.len(), 5, "{logs}");
    let field = |v: &serde_json::Value, k: &str| {
        v["fields"][k]
            .as_str()
            .or(v[k].as_str())
            .unwrap_or_default()
            .to_string()
    };
    for r in &refusals[..3] {
        assert_eq!(field(r, "service"), "echo", "{r}");
        assert_eq!(field(r, "code"), "malformed_frame", "{r}");
        assert!(field(r, "peer").starts_with("127.0.0.1:"), "{r}");
    }
    assert!(field(&refusals[0], "error").contains("unknown field `colour`"));
    assert!(field(&refusals[1], "error").contains("missing field `version`"));
    assert_eq!(
        field(&refusals[3], "service"),
        "-",
        "a HELLO_ACK claims nothing"
    );
    let spy = field(&refusals[4], "service");
    assert!(
        spy.starts_with("spy") && spy.chars().count() <= 72 && !spy.contains('\u{1b}'),
        "{spy:?}"
    );
    assert!(!logs.contains(&long), "the peer's bytes are cut in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shutting_down_drains_its_links_and_the_sdk_dials_again() {
    let mut gw = GatewayProcess::start("[shutdown]\ngrace_period = \"10s\"\n", "info");
    let (svc, _stats) = gw.echo().await;
    let client = gw.client.clone();
    let slow = http::Request::get(gw.url("/sleep?ms=800"))
        .body(empty())
        .unwrap();
    let call = tokio::spawn(async move { collect(client.request(slow).await.unwrap()).await });
    eventually("the call is in flight at the service", || async {
        svc.health().in_flight == 1
    })
    .await;

    gw.signal("-TERM");
    let (status, _, body) = call.await.unwrap();
    assert_eq!(status, http::StatusCode::OK, "{body:?}");
    eventually("the SDK saw the gateway's drain notice", || async {
        svc.gateway_drains() == 1
    })
    .await;
    assert!(gw.wait_exit(Duration::from_secs(15)).await.is_some());
    assert!(svc.failures().is_empty(), "a gateway restart is no refusal");
    assert_eq!(svc.links_up(), 0);
    let logs = gw.logs();
    assert!(
        logs.contains("gateway shutdown; link drained by the service"),
        "{logs}"
    );
    svc.abort();
}
