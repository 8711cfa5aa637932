//! Tests against the real `portcullis` binary in its own process: the store and key commands,
//! graceful shutdown on SIGTERM, redaction of every log line, and memory bounded while
//! 256 MiB bodies stream through.

use crate::common::process::{cli, GatewayProcess};
use crate::common::*;
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
    // The real key too: accepted, and still never logged.
    let real_secret = gw.key.rsplit('_').next().unwrap().to_string();
    let req = http::Request::get(gw.url(&format!("/echo/k?api_key={}", gw.key)))
        .body(empty())
        .unwrap();
    let (status, _, _) = collect(gw.request(req).await).await;
    assert_eq!(status, StatusCode::OK);
    // Stop the gateway so every line it would write about these calls has been written.
    let logs = gw.stop_and_read_logs().await;
    assert!(
        logs.matches("\"message\":\"call\"").count() >= 5,
        "calls are logged: {logs}"
    );
    for secret in [
        "S3cretSecretSecret",
        "CookieSecretValue42",
        "Hunter2PasswordValue",
        "NonceValue0042",
        "QmFzaWNTZWNyZXRWYWx1ZQ",
        &token_for("echo"),
        &real_secret,
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

#[test]
fn cli_key_lifecycle_with_json_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Before init: a clear failure, exit 1.
    let (code, _, err) = cli(&["keys", "list", "--data-dir", d]);
    assert_eq!(code, 1);
    assert!(err.contains("portcullis init"), "{err}");
    // Usage errors exit 2.
    let (code, _, _) = cli(&["keys", "create", "--data-dir", d]);
    assert_eq!(code, 2);

    let (code, out, err) = cli(&["init", "--data-dir", d, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["workspace"], "default");
    assert!(dir.path().join("pepper").exists());
    // Idempotent.
    assert_eq!(cli(&["init", "--data-dir", d]).0, 0);

    // Bootstrap once; refused the second time.
    let (code, out, err) = cli(&["bootstrap", "--data-dir", d, "--json"]);
    assert_eq!(code, 0, "{err}");
    let admin: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(admin["api_key"].as_str().unwrap().starts_with("pcs_"));
    assert_eq!(admin["scopes"], serde_json::json!(["*"]));
    let (code, _, err) = cli(&["bootstrap", "--data-dir", d, "--json"]);
    assert_eq!(code, 1);
    assert!(err.contains("admin key already exists"), "{err}");
    assert!(
        serde_json::from_str::<serde_json::Value>(err.trim()).is_ok(),
        "JSON error: {err}"
    );

    // Create with an id, scopes and expiry; a bad scope is a usage error.
    let (code, out, err) = cli(&[
        "keys",
        "create",
        "--data-dir",
        d,
        "--workspace",
        "default",
        "--name",
        "ci",
        "--scopes",
        "echo.read,echo.write",
        "--expires",
        "30d",
        "--id",
        "ci-key",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let raw = created["api_key"].as_str().unwrap().to_string();
    assert!(raw.starts_with("pcs_ci-key_"));
    assert!(created["expires_at"].is_string());
    let (code, _, _) = cli(&[
        "keys",
        "create",
        "--data-dir",
        d,
        "--name",
        "x",
        "--scopes",
        "Bad Scope",
    ]);
    assert_eq!(code, 2);

    // Workspaces: keys live in one that exists.
    let (code, _, err) = cli(&["workspaces", "create", "team-a", "--data-dir", d, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        cli(&["workspaces", "create", "team-a", "--data-dir", d]).0,
        1
    );
    assert_eq!(
        cli(&["workspaces", "create", "Bad Name", "--data-dir", d]).0,
        2
    );
    let (code, out, _) = cli(&[
        "keys",
        "create",
        "--data-dir",
        d,
        "--workspace",
        "team-a",
        "--name",
        "a",
        "--scopes",
        "x",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("\"workspace\":\"team-a\""), "{out}");
    assert_eq!(
        cli(&[
            "keys",
            "create",
            "--data-dir",
            d,
            "--workspace",
            "nope",
            "--name",
            "a",
            "--scopes",
            "x"
        ])
        .0,
        1
    );
    let (_, out, _) = cli(&["workspaces", "list", "--data-dir", d, "--json"]);
    assert!(out.contains("team-a") && out.contains("default"), "{out}");

    // List never shows secrets or hashes.
    let (code, out, _) = cli(&["keys", "list", "--data-dir", d, "--json"]);
    assert_eq!(code, 0);
    let secret = &raw["pcs_ci-key_".len()..];
    assert!(!out.contains(secret));
    assert!(!out.contains("hmac"));
    let list: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(list["keys"].as_array().unwrap().len(), 3);
    let (_, text, _) = cli(&["keys", "list", "--data-dir", d]);
    assert!(text.contains("ci-key") && !text.contains(secret));

    // Rotate prints the new key once; revoke; both audited.
    let (code, out, err) = cli(&[
        "keys",
        "rotate",
        "ci-key",
        "--overlap",
        "0",
        "--data-dir",
        d,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let rotated: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_ne!(rotated["api_key"], created["api_key"]);
    let (code, _, err) = cli(&["keys", "revoke", "ci-key", "--data-dir", d, "--json"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = cli(&["keys", "revoke", "no-such-key", "--data-dir", d]);
    assert_eq!(code, 1);
    let (code, out, _) = cli(&["audit", "list", "--data-dir", d, "--json"]);
    assert_eq!(code, 0);
    let audit: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let events: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for e in ["bootstrap", "key_created", "key_rotated", "key_revoked"] {
        assert!(events.contains(&e), "{e} in {events:?}");
    }
    assert!(!out.contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_uninitialised_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        "[ingress]\nlisten = \"127.0.0.1:0\"\n[link]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (code, _, err) = cli(&[
        "serve",
        "--config",
        path.to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("portcullis init"), "{err}");
}

/// The field names of a JSON object, sorted.
fn fields(v: &serde_json::Value) -> Vec<String> {
    let mut f: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    f.sort();
    f
}

/// Every admin command's `--json` is its view's serde shape, with the field names scripts
/// have relied on, and the text of the same result says what the JSON says.
#[test]
fn cli_json_shapes_and_text_of_each_admin_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let json = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", d, "--json"]);
        let (code, out, err) = cli(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    let key_fields = [
        "created_at",
        "expires_at",
        "key_id",
        "last_used_at",
        "name",
        "revoked_at",
        "scopes",
        "status",
        "workspace",
    ];
    let with = |extra: &[&str]| {
        let mut f: Vec<String> = key_fields
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        f.sort();
        f
    };

    let init = json(&["init"]);
    assert_eq!(
        fields(&init),
        [
            "data_dir",
            "pepper_file_created",
            "schema_version",
            "store",
            "workspace"
        ]
    );
    assert!(init["pepper_file_created"].is_string(), "{init}");
    let created = json(&[
        "keys", "create", "--name", "ci", "--scopes", "x", "--id", "ci-key",
    ]);
    assert_eq!(fields(&created), with(&["api_key"]));
    assert_eq!(created["status"], "active");
    assert!(created["expires_at"].is_null());
    let rotated = json(&["keys", "rotate", "ci-key", "--overlap", "1h"]);
    assert_eq!(fields(&rotated), with(&["api_key", "previous_valid_until"]));
    let list = json(&["keys", "list"]);
    assert_eq!(fields(&list), ["keys"]);
    assert_eq!(fields(&list["keys"][0]), with(&[]));
    let revoked = json(&["keys", "revoke", "ci-key"]);
    assert_eq!(fields(&revoked), with(&[]));
    assert_eq!(revoked["status"], "revoked");
    let ws = json(&["workspaces", "create", "team-a"]);
    assert_eq!(fields(&ws), ["created_at", "id", "name"]);
    let wss = json(&["workspaces", "list"]);
    assert_eq!(fields(&wss["workspaces"][0]), ["created_at", "id", "name"]);
    let audit = json(&["audit", "list"]);
    assert_eq!(
        fields(&audit["entries"][0]),
        [
            "actor",
            "at",
            "detail",
            "event",
            "id",
            "key_id",
            "reason",
            "workspace"
        ]
    );

    // The text of a rotation names the key once and the overlap's end.
    let (code, text, err) = cli(&[
        "keys",
        "rotate",
        "ci-key",
        "--overlap",
        "0",
        "--data-dir",
        d,
    ]);
    assert_eq!(code, 1, "a revoked key cannot be rotated: {text}");
    assert!(err.starts_with("error: "), "{err}");
    let (_, out, _) = cli(&[
        "keys",
        "create",
        "--name",
        "t",
        "--scopes",
        "x",
        "--id",
        "text-key",
        "--data-dir",
        d,
    ]);
    assert!(
        out.starts_with("Created key text-key in workspace default (scopes: x)."),
        "{out}"
    );
    let (code, out, _) = cli(&["keys", "rotate", "text-key", "--data-dir", d]);
    assert_eq!(code, 0);
    let raw = out
        .lines()
        .find(|l| l.trim_start().starts_with("pcs_text-key_"));
    assert!(raw.is_some(), "the new key is shown: {out}");
    assert!(out.contains("The previous secret works until "), "{out}");

    // A bad flag value is a usage error, as JSON on stderr with --json.
    let (code, out, err) = cli(&[
        "keys",
        "rotate",
        "text-key",
        "--overlap",
        "soon",
        "--data-dir",
        d,
        "--json",
    ]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    let e: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(fields(&e), ["error"]);
    assert!(e["error"].as_str().unwrap().starts_with("--overlap"), "{e}");
}

/// The ingress binds one socket per data-plane thread in a `SO_REUSEPORT` group; a second
/// gateway started by mistake on the same port must not join that group (and silently take
/// half the connections): it fails to start, naming the setting, and the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_a_busy_ingress_port_refuses_to_start() {
    let gw = GatewayProcess::start("", "info");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    crate::common::process::init_and_create_key(&data);
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        format!(
            "[ingress]\nlisten = \"{}\"\n[link]\nlisten = \"127.0.0.1:0\"\n",
            gw.ingress
        ),
    )
    .unwrap();
    let (code, _, err) = cli(&[
        "serve",
        "--config",
        path.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ingress.listen"), "{err}");
    assert!(err.to_lowercase().contains("in use"), "{err}");
    for _ in 0..20 {
        let (status, _, _) = gw.get("/health/live").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "every connection still reaches the first"
        );
    }
}
