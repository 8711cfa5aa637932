//! Pinned sessions (issue 11, backends naming a linked service): the real gateway on port 0
//! and real services linked through the SDK, whose `Worker` serves each session over one
//! stream on its link; REST + SSE as for process workers. The instance's link dropping
//! faults its sessions (`instance-gone`); an instance that declared no sessions is never
//! pinned; a service that sends garbage on a session stream faults that session alone.

use crate::common::*;
use crate::sessions::{call, call_as, invoke, open, subscribe};
use bytes::Bytes;
use http::StatusCode;
use portcullis::config::{BackendConfig, Config};
use portcullis_link::worker::{self as wire, Envelope, FromWorker};
use serde_json::{json, Value};
use std::time::Duration;

fn config(service: &str) -> Config {
    let mut cfg = config_with_services(&[service]);
    cfg.backends
        .insert("pinned".into(), BackendConfig::pinned(service));
    cfg.sessions.heartbeat_interval = Duration::from_millis(200);
    cfg.sessions.heartbeat_grace = Duration::from_secs(5);
    cfg
}

/// The SDK worker every pinned test serves: `count` sends `n` progress events, then replies.
fn worker() -> portcullis_sdk::worker::Worker {
    use portcullis_sdk::worker::{Command, Reply, Worker};
    Worker::new()
        .command("count", "svc.run", |c: Command| async move {
            let n = c.payload["n"].as_u64().unwrap_or(0);
            for i in 1..=n {
                if c.events.send("progress", json!({ "i": i })).await.is_err() {
                    return Reply::error(500, "session gone");
                }
            }
            Reply::ok(json!({ "done": n }))
        })
        .command("status", "svc.read", |_c: Command| async move {
            Reply::error(404, "no such row")
        })
}

async fn serve_sessions(gw: &TestGateway, instance: &str) -> portcullis_sdk::Running {
    let running = portcullis_sdk::Service::builder("svc")
        .gateway(gw.link_url())
        .token(token_for("svc"))
        .instance_id(instance)
        .sessions(worker())
        .max_sessions(4)
        .serve(tower::service_fn(
            |_req: http::Request<hyper::body::Incoming>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(
                    http_body_util::Empty::<Bytes>::new(),
                ))
            },
        ))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), running.linked())
        .await
        .expect("the service links within 10 s")
        .expect("the service is not refused");
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_session_opens_invokes_streams_events_and_closes_over_rest_and_sse() {
    let gw = TestGateway::start(config("svc")).await;
    let _svc = serve_sessions(&gw, "svc-1").await;
    let s = open(&gw, "pinned").await;
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["state"], "ready");
    assert_eq!(s["instance"], "svc-1");
    assert_eq!(s["backend"], "pinned");
    assert_eq!(s["protocol_version"], 1);
    assert_eq!(
        s["commands"],
        json!({ "count": "svc.run", "status": "svc.read" })
    );

    let mut events = subscribe(&gw, &id, None).await;
    assert_eq!(events.status, StatusCode::OK);
    let (status, reply) = invoke(&gw, &id, "count", json!({ "n": 5 })).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply, json!({ "status": 0, "payload": { "done": 5 } }));
    let mut last = 0;
    for i in 1..=5 {
        let e = events.next().await.unwrap();
        assert_eq!(e.data["kind"], "progress");
        assert_eq!(e.data["payload"]["i"], i);
        assert!(e.id.unwrap() > last);
        last = e.id.unwrap();
    }
    // A backend's error is a reply, as from a process worker.
    let (status, reply) = invoke(&gw, &id, "status", json!(null)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["status"], 404);

    let (status, closed) = call(&gw, "DELETE", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(closed["session"]["state"], "closed");
    assert_eq!(closed["session"]["close_reason"], "client-close");
    let end = events.next().await.unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["state"], "closed");
    assert!(events.next().await.is_none());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_session_faults_instance_gone_when_its_link_drops_and_never_moves() {
    let gw = TestGateway::start(config("svc")).await;
    let svc = serve_sessions(&gw, "svc-1").await;
    let id = open(&gw, "pinned").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut events = subscribe(&gw, &id, None).await;
    assert_eq!(events.status, StatusCode::OK);
    // Another instance links; the session stays where it was pinned.
    let _other = serve_sessions(&gw, "svc-2").await;
    svc.abort();
    let end = events.next().await.unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["state"], "faulted");
    let (status, s) = call(&gw, "GET", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["state"], "faulted");
    assert_eq!(s["instance"], "svc-1");
    assert_eq!(s["fault"]["kind"], "instance-gone", "{s}");
    let msg = s["fault"]["message"].as_str().unwrap();
    assert!(msg.contains("svc-1") && msg.contains("went away"), "{msg}");
    let (status, v) = invoke(&gw, &id, "count", json!({ "n": 1 })).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(v["error"], "not ready, current state is faulted");
    let (_, _, metrics) = gw.get("/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"portcullis_sessions_faults_total{kind="instance-gone"} 1"#),
        "{metrics}"
    );
    // A new session goes to the instance still linked.
    let s = open(&gw, "pinned").await;
    assert_eq!(s["instance"], "svc-2");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_declares_no_sessions_links_as_before_and_is_never_pinned() {
    let gw = TestGateway::start(config("svc")).await;
    // A version 3 HELLO, as an older SDK sends it: no `sessions` field.
    let router = axum::Router::new().route("/svc/ping", axum::routing::get(|| async { "pong" }));
    let _raw = raw_h2_service_as(
        gw.link,
        "svc",
        "old-1",
        vec![descriptor("GET", "/svc/ping")],
        (3, None),
        1 << 20,
        router,
    )
    .await;
    eventually("the old instance serves calls", || async {
        gw.get("/svc/ping").await.0 == StatusCode::OK
    })
    .await;
    let (status, v) = call(
        &gw,
        "POST",
        "/api/v1/sessions",
        Some(json!({ "backend": "pinned" })),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["fault"]["kind"], "no-instance");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no linked instance of service svc serves sessions"),
        "{v}"
    );
    let (_, list) = call(&gw, "GET", "/api/v1/sessions", None).await;
    assert_eq!(list["sessions"], json!([]), "a refused open leaves nothing");
    gw.shutdown().await;
}

fn frame(session: &str, sequence: u64, body: FromWorker) -> Vec<u8> {
    wire::encode(
        &Envelope {
            version: wire::PROTOCOL_VERSION,
            session_id: session.into(),
            sequence,
            correlation_id: None,
            body,
        },
        wire::MAX_WORKER_FRAME_LEN,
    )
    .unwrap()
}

/// A session stream written by hand: hello and ready, then either heartbeats (a well
/// behaved session) or, for the first session, an announced frame over the limit.
async fn hostile_session(
    headers: http::HeaderMap,
    hostile: bool,
) -> http::Response<axum::body::Body> {
    let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_string();
    let id = h("x-portcullis-session-id");
    let nonce = h("x-portcullis-worker-nonce");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let hello = FromWorker::Hello {
            protocol_version: 1,
            nonce,
            pid: 7,
            commands: vec![],
        };
        let _ = tx.send(Ok(frame(&id, 1, hello).into())).await;
        let _ = tx
            .send(Ok(frame(&id, 2, FromWorker::Ready { pid: 7 }).into()))
            .await;
        if hostile {
            // 16 MiB announced, then garbage: refused before anything is allocated for it.
            let mut b = (16u32 << 20).to_be_bytes().to_vec();
            b.extend_from_slice(b"garbage garbage garbage");
            let _ = tx.send(Ok(b.into())).await;
            std::future::pending::<()>().await;
        }
        for seq in 3.. {
            if tx
                .send(Ok(frame(&id, seq, FromWorker::Heartbeat { pid: 7 }).into()))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    http::Response::new(axum::body::Body::from_stream(stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_session_stream_faults_that_session_only() {
    let gw = TestGateway::start(config("svc")).await;
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = opened.clone();
    let router = axum::Router::new()
        .route("/svc/ping", axum::routing::get(|| async { "pong" }))
        .route(
            "/.well-known/portcullis/sessions",
            axum::routing::post(move |headers: http::HeaderMap| {
                let first = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                hostile_session(headers, first)
            }),
        );
    let _raw = raw_h2_service_as(
        gw.link,
        "svc",
        "raw-1",
        vec![descriptor("GET", "/svc/ping")],
        (
            portcullis_link::SESSIONS_VERSION,
            Some(portcullis_link::SessionsDecl { max_sessions: 4 }),
        ),
        1 << 20,
        router,
    )
    .await;
    eventually("the instance is linked", || async {
        gw.get("/svc/ping").await.0 == StatusCode::OK
    })
    .await;
    let bad = open(&gw, "pinned").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let good = open(&gw, "pinned").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut fault = Value::Null;
    for _ in 0..200 {
        let (_, s) = call(&gw, "GET", &format!("/api/v1/sessions/{bad}"), None).await;
        if s["state"] == "faulted" {
            fault = s["fault"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fault["kind"], "protocol", "{fault}");
    assert!(
        fault["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit"),
        "{fault}"
    );
    // The link and the other session on it are untouched.
    let (status, _, body) = gw.get("/svc/ping").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"pong"[..]));
    let (_, s) = call(&gw, "GET", &format!("/api/v1/sessions/{good}"), None).await;
    assert_eq!(s["state"], "ready", "{s}");
    let third = open(&gw, "pinned").await;
    assert_eq!(third["instance"], "raw-1");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_every_workspaces_sessions_with_filters_and_others_only_their_own() {
    let gw = TestGateway::start(config("svc")).await;
    let _svc = serve_sessions(&gw, "svc-1").await;
    // The operator: the bootstrap admin, bound to `admin` on every workspace (`*`). The
    // harness's own `*` key is a key of the default workspace only.
    gw.auth.revoke(gw.key_id(), "test").await.unwrap();
    let dir = gw.store.as_ref().unwrap().data_dir();
    let (code, _, err) = crate::iam::cli_with_stdin(
        &[
            "bootstrap",
            "--admin-user",
            "root",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        &format!("{}\n", crate::iam::ROOT_PASSWORD),
    );
    assert_eq!(code, 0, "{err}");
    let root = crate::iam::login(&gw, "default", "root", crate::iam::ROOT_PASSWORD).await;
    let op = Some(root.as_str());
    let (status, v) = call_as(
        &gw,
        "POST",
        "/api/v1/iam/workspaces",
        Some(json!({ "name": "team-b" })),
        op,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let scopes = ["sessions.open", "sessions.read", "sessions.close"];
    let (_, a) = gw.create_key("a", &scopes).await;
    let (_, b) = gw.create_key_in("team-b", "b", &scopes).await;
    let body = || Some(json!({ "backend": "pinned" }));
    let (status, sa) = call_as(&gw, "POST", "/api/v1/sessions", body(), Some(&a)).await;
    assert_eq!(status, StatusCode::CREATED, "{sa}");
    let (status, sb) = call_as(&gw, "POST", "/api/v1/sessions", body(), Some(&b)).await;
    assert_eq!(status, StatusCode::CREATED, "{sb}");
    let team_b = sb["workspace"].as_str().unwrap().to_string();
    assert_ne!(sa["workspace"], sb["workspace"]);
    let ids = |v: &Value| -> Vec<String> {
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Without all: one's own, whatever one holds.
    let (_, mine) = call_as(&gw, "GET", "/api/v1/sessions", None, Some(&a)).await;
    assert_eq!(ids(&mine), [sa["id"].as_str().unwrap()]);
    // sessions.read in one's own workspace is not sessions.read on `*`.
    let (status, v) = call_as(&gw, "GET", "/api/v1/sessions?all=true", None, Some(&a)).await;
    assert_eq!(
        (status, v),
        (StatusCode::FORBIDDEN, json!({ "error": "forbidden" }))
    );

    let (status, every) = call_as(&gw, "GET", "/api/v1/sessions?all=true", None, op).await;
    assert_eq!(status, StatusCode::OK, "{every}");
    let mut all = ids(&every);
    all.sort();
    let mut want = vec![
        sa["id"].as_str().unwrap().to_string(),
        sb["id"].as_str().unwrap().to_string(),
    ];
    want.sort();
    assert_eq!(all, want);
    let (_, in_b) = call_as(
        &gw,
        "GET",
        &format!("/api/v1/sessions?all=true&workspace={team_b}&backend=pinned&state=ready"),
        None,
        op,
    )
    .await;
    assert_eq!(ids(&in_b), [sb["id"].as_str().unwrap()]);
    let (_, closed) = call_as(
        &gw,
        "GET",
        "/api/v1/sessions?all=true&state=closed",
        None,
        op,
    )
    .await;
    assert_eq!(closed["sessions"], json!([]));

    // Hostile filters: named, never ignored.
    for q in [
        "workspace=x",
        "all=true&state=nope",
        "all=true&bogus=1",
        "all=maybe",
    ] {
        let (status, v) = call_as(&gw, "GET", &format!("/api/v1/sessions?{q}"), None, op).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert!(v["error"].is_string(), "{q}: {v}");
    }

    // The CLI: --all with filters, and --workspace alone is a usage error.
    let url = format!("http://{}", gw.ingress);
    let key = root.clone();
    let run = move |args: Vec<String>| {
        let (url, key) = (url.clone(), key.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let mut a: Vec<&str> = vec!["sessions", "list"];
                a.extend(args.iter().map(String::as_str));
                a.extend(["--gateway", url.as_str()]);
                let out = crate::common::process::run(&a, &[("PORTCULLIS_KEY", key.as_str())]);
                (
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                )
            })
            .await
            .unwrap()
        }
    };
    let (code, out) = run(vec![
        "--all".into(),
        "--workspace".into(),
        team_b.clone(),
        "--json".into(),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&v), [sb["id"].as_str().unwrap()]);
    let (code, out) = run(vec!["--all".into()]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&team_b) && out.contains(sa["id"].as_str().unwrap()),
        "{out}"
    );
    let (code, _) = run(vec!["--workspace".into(), team_b.clone()]).await;
    assert_eq!(code, 2);
    let (code, _) = run(vec!["--all".into(), "--state".into(), "not a state".into()]).await;
    assert_eq!(code, 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_takes_at_most_its_session_slots_and_gets_them_back_on_close() {
    let mut cfg = config("svc");
    cfg.sessions.max_pinned_per_instance = 1;
    let gw = TestGateway::start(cfg).await;
    let _svc = serve_sessions(&gw, "svc-1").await;
    let first = open(&gw, "pinned").await;
    let body = || Some(json!({ "backend": "pinned" }));
    let (status, v) = call(&gw, "POST", "/api/v1/sessions", body()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["fault"]["kind"], "no-instance");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("as many sessions as it may"),
        "{v}"
    );
    let id = first["id"].as_str().unwrap();
    let (status, _) = call(&gw, "DELETE", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let again = open(&gw, "pinned").await;
    assert_eq!(again["instance"], "svc-1");
    gw.shutdown().await;
}
