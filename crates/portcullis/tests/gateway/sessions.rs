//! Sessions (issue 11): the real gateway on port 0 and real worker processes — a worker
//! written in Python from `docs/worker-protocol.md` alone (`workers/worker.py`) — over the
//! REST + SSE surface: open → invoke → events → close, resume, ownership, limits, and each
//! misbehaving worker ending in its documented fault with its process tree gone.

use crate::common::*;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use portcullis::config::{BackendConfig, Config};
use serde_json::{json, Value};
use std::time::Duration;

const PYTHON: &str = "/usr/bin/python3";

fn script() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/gateway/workers/worker.py"
    )
    .to_string()
}

fn backend(mode: &str) -> BackendConfig {
    let mut b = BackendConfig::new(vec![PYTHON.into(), script(), "--mode".into(), mode.into()]);
    b.startup_timeout = Duration::from_secs(10);
    b.shutdown_timeout = Duration::from_secs(1);
    b
}

fn config(modes: &[&str]) -> Config {
    let mut cfg = config_with_services(&[]);
    for m in modes {
        cfg.backends.insert((*m).into(), backend(m));
    }
    cfg.sessions.heartbeat_interval = Duration::from_millis(200);
    cfg.sessions.heartbeat_grace = Duration::from_secs(5);
    cfg.sessions.handshake_timeout = Duration::from_secs(5);
    cfg
}

async fn start(cfg: Config) -> TestGateway {
    TestGateway::start(cfg).await
}

/// Debian's Python runs the test workers; without it the test is skipped loudly (a failure
/// under `PORTCULLIS_TEST_STRICT`, as in CI).
fn python_available() -> bool {
    let there = std::path::Path::new(PYTHON).exists();
    if !there {
        portcullis::store::testing::skipped(
            "the whole test",
            "it needs /usr/bin/python3 (Debian package python3)",
        );
    }
    there
}

pub(crate) async fn call(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call_as(gw, method, path, body, None).await
}

pub(crate) async fn call_as(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(gw.url(path))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let body: Body = match body {
        Some(v) => http_body_util::Full::new(Bytes::from(v.to_string()))
            .map_err(|e| match e {})
            .boxed(),
        None => empty(),
    };
    let resp = gw.client.request(req.body(body).unwrap()).await.unwrap();
    let (status, _, bytes) = collect(resp).await;
    let v = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

pub(crate) async fn open(gw: &TestGateway, backend: &str) -> Value {
    let (status, v) = call(
        gw,
        "POST",
        "/api/v1/sessions",
        Some(json!({ "backend": backend })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

pub(crate) async fn invoke(
    gw: &TestGateway,
    id: &str,
    kind: &str,
    payload: Value,
) -> (StatusCode, Value) {
    call(
        gw,
        "POST",
        &format!("/api/v1/sessions/{id}/invoke"),
        Some(json!({ "kind": kind, "payload": payload })),
    )
    .await
}

/// Whether `command` runs here; if not, the test is skipped loudly (a failure under
/// `PORTCULLIS_TEST_STRICT`), naming the Debian package that brings it.
fn have_command(command: &str, package: &str) -> bool {
    let there = std::process::Command::new(command)
        .arg("--version")
        .output()
        .is_ok();
    if !there {
        portcullis::store::testing::skipped(
            "the whole test",
            &format!("it needs {command} (Debian package {package})"),
        );
    }
    there
}

fn pid_alive(pid: u64) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn gone(pid: u64) {
    assert!(pid > 0);
    eventually(&format!("process {pid} is gone"), || async move {
        !pid_alive(pid)
    })
    .await;
}

/// One server-sent event.
#[derive(Debug)]
pub(crate) struct Sse {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

pub(crate) struct SseStream {
    pub status: StatusCode,
    source: SseSource,
    buf: Vec<u8>,
}

/// Where an event stream's bytes come from: the in-process client's body, or the output of
/// `curl -N`.
enum SseSource {
    Body(hyper::body::Incoming),
    Curl(tokio::process::ChildStdout),
}

impl SseSource {
    /// More bytes, or `None` at the end of the stream.
    async fn more(&mut self) -> Option<Vec<u8>> {
        match self {
            SseSource::Body(body) => {
                let frame = body.frame().await?.ok()?;
                Some(frame.into_data().map(|d| d.to_vec()).unwrap_or_default())
            }
            SseSource::Curl(out) => {
                let mut chunk = vec![0u8; 4096];
                let n = tokio::io::AsyncReadExt::read(out, &mut chunk).await.ok()?;
                (n > 0).then(|| chunk[..n].to_vec())
            }
        }
    }
}

impl SseStream {
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let (mut id, mut event, mut data) = (None, String::from("message"), None);
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                match data {
                    Some(data) => return Some(Sse { id, event, data }),
                    None => continue, // a keepalive comment
                }
            }
            let more = tokio::time::timeout(Duration::from_secs(20), self.source.more())
                .await
                .expect("an event within 20 s")?;
            self.buf.extend_from_slice(&more);
        }
    }
}

pub(crate) async fn subscribe(gw: &TestGateway, id: &str, last_event_id: Option<u64>) -> SseStream {
    let mut req = http::Request::get(gw.url(&format!("/api/v1/sessions/{id}/events")));
    if let Some(l) = last_event_id {
        req = req.header("last-event-id", l.to_string());
    }
    let resp = gw.client.request(req.body(empty()).unwrap()).await.unwrap();
    let status = resp.status();
    SseStream {
        status,
        source: SseSource::Body(resp.into_body()),
        buf: Vec::new(),
    }
}

/// Subscribe, retrying while the previous subscriber's connection is still being noticed
/// as gone (one subscriber at a time).
async fn resubscribe(gw: &TestGateway, id: &str, last_event_id: u64) -> SseStream {
    for _ in 0..100 {
        let s = subscribe(gw, id, Some(last_event_id)).await;
        if s.status != StatusCode::CONFLICT {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the first subscriber's slot was never freed");
}

#[tokio::test]
async fn open_invoke_events_close_over_rest_and_sse() {
    if !python_available() {
        return;
    }
    let gw = start(config(&["normal"])).await;
    let s = open(&gw, "normal").await;
    let id = s["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("node."), "{id}");
    assert_eq!(id.len(), "node.".len() + 32);
    assert_eq!(s["state"], "ready");
    assert_eq!(s["protocol_version"], 1);
    assert_eq!(s["commands"]["count"], "compute.run");
    let pid = s["worker_pid"].as_u64().unwrap();
    assert!(pid_alive(pid));

    let mut events = subscribe(&gw, &id, None).await;
    assert_eq!(events.status, StatusCode::OK);
    let (status, reply) = invoke(&gw, &id, "count", json!({ "n": 5 })).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply, json!({ "status": 0, "payload": { "done": 5 } }));
    let mut last = 0;
    for i in 1..=5 {
        let e = events.next().await.unwrap();
        assert_eq!(e.event, "event");
        assert_eq!(e.data["kind"], "progress");
        assert_eq!(e.data["payload"]["i"], i);
        let seq = e.id.unwrap();
        assert!(seq > last);
        assert_eq!(e.data["sequence"], seq);
        last = seq;
    }

    // A backend's own error is a reply, its status and fields intact.
    let (status, reply) = invoke(&gw, &id, "status", json!(null)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        reply,
        json!({ "status": 404, "payload": { "error": "no such row", "rows": [] } })
    );

    // A grandchild in the worker's group goes with it.
    let (_, spawned) = invoke(&gw, &id, "spawn", json!(null)).await;
    let child = spawned["payload"]["child_pid"].as_u64().unwrap();
    assert!(pid_alive(child));

    let (status, closed) = call(&gw, "DELETE", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(closed["result"], "closed");
    assert_eq!(closed["session"]["state"], "closed");
    assert_eq!(closed["session"]["close_reason"], "client-close");
    assert_eq!(closed["session"]["worker_killed"], Value::Null);
    let end = events.next().await.unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["state"], "closed");
    assert!(events.next().await.is_none());
    gone(pid).await;
    gone(child).await;

    let (_, again) = call(&gw, "DELETE", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(again["result"], "was already closed");
    let (status, read) = call(&gw, "GET", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["state"], "closed");
    let (status, v) = invoke(&gw, &id, "echo", json!(1)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(v["error"], "not ready, current state is closed");
    gw.shutdown().await;
}

#[tokio::test]
async fn resume_after_reconnect_delivers_every_event_exactly_once_in_order() {
    if !python_available() {
        return;
    }
    let mut cfg = config(&["normal"]);
    cfg.sessions.event_buffer = 12;
    let gw = start(cfg).await;
    let id = open(&gw, "normal").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut first = subscribe(&gw, &id, None).await;
    let (status, _) = invoke(&gw, &id, "count", json!({ "n": 10 })).await;
    assert_eq!(status, StatusCode::OK);
    // A second subscriber is refused while the first is attached.
    let second = subscribe(&gw, &id, None).await;
    assert_eq!(second.status, StatusCode::CONFLICT);
    let mut seen = Vec::new();
    let mut last = 0;
    for _ in 0..4 {
        let e = first.next().await.unwrap();
        seen.push(e.data["payload"]["i"].as_u64().unwrap());
        last = e.id.unwrap();
    }
    drop(first);
    let mut again = resubscribe(&gw, &id, last).await;
    assert_eq!(again.status, StatusCode::OK);
    while seen.len() < 10 {
        let e = again.next().await.unwrap();
        assert!(e.id.unwrap() > last);
        last = e.id.unwrap();
        seen.push(e.data["payload"]["i"].as_u64().unwrap());
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    drop(again);
    // 15 more: the buffer of 12 lets the oldest delivered ones go; resuming before them is
    // a clear error, never a silent gap.
    let mut third = resubscribe(&gw, &id, last).await;
    invoke(&gw, &id, "count", json!({ "n": 15 })).await;
    for _ in 0..15 {
        third.next().await.unwrap();
    }
    drop(third);
    let mut gone_resp = resubscribe(&gw, &id, 1).await;
    assert_eq!(gone_resp.status, StatusCode::GONE);
    let body = gone_resp.source.more().await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("no longer held"),
        "{v}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn misbehaving_workers_end_in_their_documented_fault_with_the_process_gone() {
    if !python_available() {
        return;
    }
    let mut cfg = config(&[
        "wrong-nonce",
        "wrong-version",
        "never-ready",
        "no-connect",
        "backend-fault",
    ]);
    cfg.sessions.handshake_timeout = Duration::from_secs(1);
    cfg.backends.get_mut("no-connect").unwrap().startup_timeout = Duration::from_secs(1);
    let gw = start(cfg).await;
    for (mode, kind, message) in [
        ("wrong-nonce", "protocol", "nonce mismatch"),
        (
            "wrong-version",
            "protocol",
            "unsupported protocol version 2",
        ),
        ("never-ready", "handshake-timeout", "no hello and ready"),
        ("no-connect", "startup-timeout", "did not connect"),
        ("backend-fault", "protocol", "the licence server is down"),
    ] {
        let (status, v) = call(
            &gw,
            "POST",
            "/api/v1/sessions",
            Some(json!({ "backend": mode })),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{mode}: {v}");
        assert_eq!(v["fault"]["kind"], kind, "{mode}: {v}");
        assert!(
            v["fault"]["message"].as_str().unwrap().contains(message),
            "{mode}: {v}"
        );
        gone(v["worker_pid"].as_u64().unwrap()).await;
    }
    // A failed open leaves nothing in the registry.
    let (_, list) = call(&gw, "GET", "/api/v1/sessions", None).await;
    assert_eq!(list["sessions"], json!([]));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_crashes_mid_command_faults_the_session() {
    if !python_available() {
        return;
    }
    let gw = start(config(&["normal"])).await;
    let s = open(&gw, "normal").await;
    let id = s["id"].as_str().unwrap();
    let pid = s["worker_pid"].as_u64().unwrap();
    let (status, v) = invoke(&gw, id, "crash", json!(null)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["state"], "faulted");
    assert_eq!(v["fault"]["kind"], "worker-exited");
    assert!(
        v["fault"]["message"]
            .as_str()
            .unwrap()
            .contains("exit code 1 (unexpected failure)"),
        "{v}"
    );
    gone(pid).await;
    let (_, read) = call(&gw, "GET", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(read["state"], "faulted");
    // Faulted only goes to Closed, keeping its fault.
    let (_, closed) = call(&gw, "DELETE", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(closed["session"]["state"], "closed");
    assert_eq!(closed["session"]["fault"]["kind"], "worker-exited");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_ignores_shutdown_is_killed_with_its_tree() {
    if !python_available() {
        return;
    }
    let gw = start(config(&["ignore-shutdown"])).await;
    let s = open(&gw, "ignore-shutdown").await;
    let id = s["id"].as_str().unwrap();
    let pid = s["worker_pid"].as_u64().unwrap();
    let (_, spawned) = invoke(&gw, id, "spawn", json!(null)).await;
    let child = spawned["payload"]["child_pid"].as_u64().unwrap();
    let (status, closed) = call(&gw, "DELETE", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(closed["session"]["state"], "closed");
    assert_eq!(closed["session"]["worker_killed"], "shutdown-timeout");
    gone(pid).await;
    gone(child).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn an_event_flood_faults_the_session_naming_the_full_hop() {
    if !python_available() {
        return;
    }
    let mut cfg = config(&["normal"]);
    cfg.sessions.event_buffer = 16;
    let gw = start(cfg).await;
    let s = open(&gw, "normal").await;
    let id = s["id"].as_str().unwrap();
    let pid = s["worker_pid"].as_u64().unwrap();
    // Nobody subscribes: the buffer fills with events no one took.
    let (status, v) = invoke(&gw, id, "flood", json!({ "n": 200 })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["fault"]["kind"], "queue-overflow");
    assert_eq!(
        v["fault"]["message"],
        "event stream queue overflowed at session-buffer"
    );
    gone(pid).await;
    let (_, _, metrics) = gw.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.contains(r#"portcullis_sessions_queue_overflows_total{hop="session-buffer"} 1"#),
        "{text}"
    );
    for line in [
        "portcullis_sessions_opened_total 1",
        r#"portcullis_sessions_faults_total{kind="queue-overflow"} 1"#,
        r#"portcullis_sessions_workers_killed_total{reason="fault"} 1"#,
        r#"portcullis_sessions_commands_total{kind="flood",outcome="started"} 1"#,
        r#"portcullis_sessions_commands_total{kind="flood",outcome="failed"} 1"#,
        "portcullis_sessions_workers_running 0",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn the_worker_gets_only_the_allowlisted_environment_and_the_protocol_arguments() {
    if !python_available() {
        return;
    }
    let mut cfg = config(&["normal"]);
    cfg.backends.get_mut("normal").unwrap().env = vec!["PATH".into()];
    cfg.backends.get_mut("normal").unwrap().working_dir = Some("/".into());
    let gw = start(cfg).await;
    let s = open(&gw, "normal").await;
    let id = s["id"].as_str().unwrap();
    let (_, v) = invoke(&gw, id, "env", json!(null)).await;
    let mut env: Vec<&str> = v["payload"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .filter(|e| !e.starts_with("LC_")) // Python may set its locale coercion variable
        .collect();
    env.sort();
    assert_eq!(env, ["PATH", "PORTCULLIS_WORKER_NONCE"]);
    let argv: Vec<&str> = v["payload"]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(argv.len(), 9, "{argv:?}");
    assert_eq!(&argv[1..4], ["--mode", "normal", "--session-id"]);
    assert_eq!(argv[4], id);
    assert_eq!(argv[5], "--socket");
    assert_eq!(&argv[7..], ["--protocol-version", "1"]);
    assert_eq!(v["payload"]["cwd"], "/");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_session_belongs_to_its_identity_and_capabilities_are_checked() {
    if !python_available() {
        return;
    }
    let gw = start(config(&["normal"])).await;
    let id = open(&gw, "normal").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Another identity with every sessions capability does not see it.
    let (_, other) = gw
        .create_key(
            "other",
            &[
                "sessions.read",
                "sessions.close",
                "sessions.events.read",
                "compute.read",
            ],
        )
        .await;
    let (status, _) = call_as(
        &gw,
        "GET",
        &format!("/api/v1/sessions/{id}"),
        None,
        Some(&other),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call_as(
        &gw,
        "DELETE",
        &format!("/api/v1/sessions/{id}"),
        None,
        Some(&other),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Without the capability: the fixed 403.
    let (status, body) = call_as(
        &gw,
        "POST",
        "/api/v1/sessions",
        Some(json!({"backend": "normal"})),
        Some(&other),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, json!({ "error": "forbidden" }));
    // Unauthenticated: the fixed 401.
    let (status, _, body) = gw.get_with_key("/api/v1/sessions", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json(&body), json!({ "error": "unauthorized" }));
    // Its own session, a kind's declared capability: compute.read allows echo, not count.
    let (_, mine) = gw
        .create_key("mine", &["sessions.open", "compute.read"])
        .await;
    let (status, s) = call_as(
        &gw,
        "POST",
        "/api/v1/sessions",
        Some(json!({"backend": "normal"})),
        Some(&mine),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let sid = s["id"].as_str().unwrap();
    let path = format!("/api/v1/sessions/{sid}/invoke");
    let (status, v) = call_as(
        &gw,
        "POST",
        &path,
        Some(json!({"kind": "echo", "payload": [1, "two"]})),
        Some(&mine),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["payload"], json!([1, "two"]));
    let (status, _) = call_as(
        &gw,
        "POST",
        &path,
        Some(json!({"kind": "count", "payload": {"n": 1}})),
        Some(&mine),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A kind the worker did not declare needs admin.sessions.invoke.
    let (status, _) = call_as(
        &gw,
        "POST",
        &path,
        Some(json!({"kind": "undeclared"})),
        Some(&mine),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = call_as(&gw, "POST", &path, Some(json!({"payload": 1})), Some(&mine)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"], "a command kind is required");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_session_limit_refuses_with_a_clear_error_and_shutdown_closes_every_session() {
    if !python_available() {
        return;
    }
    let mut cfg = config(&["normal"]);
    cfg.sessions.max = 2;
    cfg.sessions.max_per_workspace = 1;
    let gw = start(cfg).await;
    let s = open(&gw, "normal").await;
    let pid = s["worker_pid"].as_u64().unwrap();
    let (status, v) = call(
        &gw,
        "POST",
        "/api/v1/sessions",
        Some(json!({"backend": "normal"})),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        v["error"],
        "session limit 1 of the workspace has been reached"
    );
    let (status, v) = call(
        &gw,
        "POST",
        "/api/v1/sessions",
        Some(json!({"backend": "missing"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], r#"no backend "missing" is configured"#);
    let (status, v) = call(
        &gw,
        "POST",
        "/api/v1/sessions",
        Some(json!({"backend": "normal", "command_timeout_ms": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"], "command_timeout_ms must be greater than zero");
    gw.shutdown().await;
    gone(pid).await;
}

#[tokio::test]
async fn a_command_that_times_out_is_cancelled_at_the_worker() {
    if !python_available() {
        return;
    }
    let gw = start(config(&["normal"])).await;
    let id = open(&gw, "normal").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut events = subscribe(&gw, &id, None).await;
    let (status, v) = call(
        &gw,
        "POST",
        &format!("/api/v1/sessions/{id}/invoke"),
        Some(json!({ "kind": "sleep", "payload": { "ms": 5000 }, "timeout_ms": 200 })),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(v["error"], "command sleep timed out after 200 ms");
    let e = events.next().await.unwrap();
    assert_eq!(e.data["kind"], "cancelled");
    assert!(e.data["payload"]["correlation_id"].is_string());
    // The session is still usable.
    let (status, _) = invoke(&gw, &id, "echo", json!("still here")).await;
    assert_eq!(status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_silent_worker_faults_when_its_heartbeat_grace_passes() {
    if !python_available() {
        return;
    }
    let mut cfg = config(&["silent"]);
    cfg.sessions.heartbeat_grace = Duration::from_millis(600);
    let gw = start(cfg).await;
    let s = open(&gw, "silent").await;
    let id = s["id"].as_str().unwrap().to_string();
    let pid = s["worker_pid"].as_u64().unwrap();
    let g = &gw;
    let path = format!("/api/v1/sessions/{id}");
    eventually("the session faults", || {
        let path = path.clone();
        async move { call(g, "GET", &path, None).await.1["state"] == "faulted" }
    })
    .await;
    let (_, v) = call(&gw, "GET", &path, None).await;
    assert_eq!(v["fault"]["kind"], "heartbeat-expired");
    gone(pid).await;
    gw.shutdown().await;
}

/// The SDK's worker mode, through the example the demo runs (`portcullis demo-worker`).
#[tokio::test]
async fn an_sdk_worker_streams_progress_and_acknowledges_shutdown() {
    let mut cfg = config_with_services(&[]);
    cfg.backends.insert(
        "progress".into(),
        BackendConfig::new(vec![
            crate::common::process::binary().to_string(),
            "demo-worker".into(),
        ]),
    );
    cfg.sessions.default_backend = Some("progress".into());
    let gw = start(cfg).await;
    let (status, s) = call(&gw, "POST", "/api/v1/sessions", Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    assert_eq!(s["backend"], "progress");
    assert_eq!(s["commands"]["primes"], "compute.run");
    let id = s["id"].as_str().unwrap();
    let pid = s["worker_pid"].as_u64().unwrap();
    let mut events = subscribe(&gw, id, None).await;
    let (status, reply) = invoke(&gw, id, "primes", json!({ "below": 100_000, "steps": 5 })).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply,
        json!({ "status": 0, "payload": { "below": 100000, "primes": 9592 } })
    );
    for step in 1..=5 {
        let e = events.next().await.unwrap();
        assert_eq!(e.data["kind"], "progress");
        assert_eq!(e.data["payload"]["step"], step);
    }
    // A payload that does not fit the kind is the backend's own 400, in-band.
    let (status, reply) = invoke(&gw, id, "primes", json!("lots")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["status"], 400);
    let (_, closed) = call(&gw, "DELETE", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(closed["session"]["state"], "closed");
    assert_eq!(closed["session"]["worker_killed"], Value::Null);
    assert_eq!(closed["session"]["worker_exit"], "exit code 0 (ok)");
    gone(pid).await;
    gw.shutdown().await;
}

/// `portcullis.sessions.v1.Sessions` from Python `grpcio`, stubs generated from the repo's
/// `.proto`: open → invoke → events → close, and the mapped status codes.
#[tokio::test]
async fn the_grpc_service_serves_python_grpcio_with_the_mapped_status_codes() {
    let have = |m: &str| {
        std::process::Command::new(PYTHON)
            .args(["-c", &format!("import {m}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !python_available() {
        return;
    }
    if !have("grpc") || !have("google.protobuf") {
        portcullis::store::testing::skipped(
            "the whole test",
            "it needs Python grpcio and protobuf (Debian packages python3-grpcio python3-protobuf)",
        );
        return;
    }
    if !have_command("protoc", "protobuf-compiler") {
        return;
    }
    let gw = start(config(&["normal"])).await;
    let out_dir = tempfile::tempdir().unwrap();
    let target = gw.ingress.to_string();
    let key = gw.api_key().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(PYTHON)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/gateway/workers/grpc_client.py"
            ))
            // The key through the environment, never on the command line.
            .env("PORTCULLIS_KEY", key.as_str())
            .args([
                target.as_str(),
                concat!(env!("CARGO_MANIFEST_DIR"), "/proto"),
                out_dir.path().to_str().unwrap(),
                "normal",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["open"]["backend"], "normal");
    assert_eq!(v["open"]["version"], 1);
    assert_eq!(v["open"]["capabilities"]["count"], "compute.run");
    assert!(v["open"]["pid"].as_u64().unwrap() > 0);
    assert_eq!(v["count"], json!({ "status": 0, "payload": { "done": 3 } }));
    let events = v["events"].as_array().unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["kind"], "progress");
        assert_eq!(e["payload"]["i"], i + 1);
    }
    assert!(events[0]["sequence"].as_u64() < events[1]["sequence"].as_u64());
    assert_eq!(
        v["backend_error"],
        json!({ "status": 404, "payload": { "error": "no such row", "rows": [] } })
    );
    assert_eq!(
        v["codes"],
        json!({
            "second_subscriber": "RESOURCE_EXHAUSTED",
            "unknown_session": "NOT_FOUND",
            "no_command": "INVALID_ARGUMENT",
            "timeout": "DEADLINE_EXCEEDED",
            "unauthenticated": "UNAUTHENTICATED",
        })
    );
    assert_eq!(
        v["close"],
        json!({ "state": "closed", "result": "closed", "reason": "client-close" })
    );
    assert_eq!(v["stream_end"], "OK");
    assert_eq!(v["after_close"], "FAILED_PRECONDITION");
    assert_eq!(v["close_again"], "was already closed");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_cli_lists_reads_and_closes_sessions_with_the_usual_exit_codes() {
    if !python_available() {
        return;
    }
    let gw = start(config(&["normal"])).await;
    let id = open(&gw, "normal").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{}", gw.ingress);
    let key = gw.api_key().to_string();
    let run = move |args: Vec<String>, with_key: bool| {
        let url = url.clone();
        let key = key.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut a: Vec<&str> = vec!["sessions"];
                a.extend(args.iter().map(String::as_str));
                a.extend(["--gateway", url.as_str()]);
                let env: Vec<(&str, &str)> = if with_key {
                    vec![("PORTCULLIS_KEY", key.as_str())]
                } else {
                    vec![]
                };
                let out = crate::common::process::run(&a, &env);
                (
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .await
            .unwrap()
        }
    };
    let (code, out, err) = run(vec!["list".into(), "--json".into()], true).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sessions"][0]["id"], id.as_str());
    let (code, out, _) = run(vec!["get".into(), id.clone()], true).await;
    assert_eq!(code, 0);
    assert!(out.contains("ready") && out.contains(&id), "{out}");
    let (code, out, _) = run(vec!["close".into(), id.clone()], true).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("closed\n"), "{out}");
    let (code, out, _) = run(vec!["close".into(), id.clone()], true).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("was already closed\n"), "{out}");
    let (code, _, err) = run(vec!["get".into(), "node.0000".into()], true).await;
    assert_eq!(code, 1);
    assert!(err.contains("no such session"), "{err}");
    let (code, _, _) = run(vec!["get".into(), "Not An Id".into()], true).await;
    assert_eq!(code, 2);
    let (code, _, err) = run(vec!["list".into()], false).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = run(vec!["list".into(), "--bogus".into()], true).await;
    assert_eq!(code, 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_faults_the_session_at_its_queue() {
    if !python_available() {
        return;
    }
    let mut cfg = config(&["normal"]);
    cfg.sessions.subscriber_queue = 4;
    let gw = start(cfg).await;
    let s = open(&gw, "normal").await;
    let id = s["id"].as_str().unwrap();
    let pid = s["worker_pid"].as_u64().unwrap();
    // Subscribed, and never read: the connection's buffers fill, then the queue of 4.
    let stalled = subscribe(&gw, id, None).await;
    assert_eq!(stalled.status, StatusCode::OK);
    let (status, v) = invoke(&gw, id, "flood", json!({ "n": 100_000 })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        v["fault"]["message"],
        "event stream queue overflowed at subscriber-queue"
    );
    gone(pid).await;
    drop(stalled);
    gw.shutdown().await;
}

/// The REST + SSE surface driven by curl, as the README shows it: open, subscribe with
/// `curl -N`, invoke, read the events in order with their ids, close, and the stream's end.
#[tokio::test]
async fn curl_opens_invokes_streams_and_closes_a_session() {
    if !python_available() {
        return;
    }
    if !have_command("curl", "curl") {
        return;
    }
    let gw = start(config(&["normal"])).await;
    let base = format!("http://{}/api/v1/sessions", gw.ingress);
    // The key goes to curl in a header file (`-H @file`), never on its command line.
    let dir = tempfile::tempdir().unwrap();
    let header_file = dir.path().join("auth.header");
    std::fs::write(
        &header_file,
        format!("Authorization: Bearer {}\n", gw.api_key()),
    )
    .unwrap();
    std::fs::set_permissions(
        &header_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let auth = format!("@{}", header_file.display());
    let curl = |args: Vec<String>| {
        let auth = auth.clone();
        async move {
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::process::Command::new("curl")
                    .args(["-sS", "--max-time", "20", "-H", &auth])
                    .args(["-H", "Content-Type: application/json"])
                    .args(&args)
                    .output(),
            )
            .await
            .expect("curl finished")
            .unwrap();
            assert!(out.status.success(), "curl {args:?}: {out:?}");
            serde_json::from_slice::<Value>(&out.stdout)
                .unwrap_or_else(|e| panic!("curl {args:?}: not JSON ({e}): {out:?}"))
        }
    };

    let opened = curl(vec![
        "-X".into(),
        "POST".into(),
        "-d".into(),
        json!({ "backend": "normal" }).to_string(),
        base.clone(),
    ])
    .await;
    assert_eq!(opened["state"], "ready", "{opened}");
    let id = opened["id"].as_str().unwrap().to_string();

    let mut sse = tokio::process::Command::new("curl")
        .args(["-sSN", "--max-time", "30", "-H", &auth])
        .arg(format!("{base}/{id}/events"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut events = SseStream {
        status: StatusCode::OK,
        source: SseSource::Curl(sse.stdout.take().unwrap()),
        buf: Vec::new(),
    };

    let reply = curl(vec![
        "-X".into(),
        "POST".into(),
        "-d".into(),
        json!({ "kind": "count", "payload": { "n": 5 } }).to_string(),
        format!("{base}/{id}/invoke"),
    ])
    .await;
    assert_eq!(reply, json!({ "status": 0, "payload": { "done": 5 } }));

    let mut last = 0;
    for i in 1..=5 {
        let e = events.next().await.expect("an event record");
        assert_eq!(e.event, "event", "{}", e.data);
        assert_eq!(e.data["kind"], "progress");
        assert_eq!(e.data["payload"]["i"], i);
        let seq =
            e.id.expect("every event carries its sequence as the SSE id");
        assert!(seq > last, "in order: {seq} after {last}");
        assert_eq!(e.data["sequence"], seq);
        last = seq;
    }

    let closed = curl(vec!["-X".into(), "DELETE".into(), format!("{base}/{id}")]).await;
    assert_eq!(closed["result"], "closed");
    let again = curl(vec!["-X".into(), "DELETE".into(), format!("{base}/{id}")]).await;
    assert_eq!(again["result"], "was already closed");
    let end = events.next().await.expect("the end record");
    assert_eq!(end.event, "end", "{}", end.data);
    assert!(events.next().await.is_none(), "the stream ends after `end`");
    let status = tokio::time::timeout(Duration::from_secs(20), sse.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "curl -N ends cleanly when the stream ends: {status}"
    );
    gw.shutdown().await;
}
