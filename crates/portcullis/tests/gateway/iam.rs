//! IAM end to end: the first admin bootstrapped by the real CLI, then workspaces, users and role
//! bindings managed over `/api/v1/iam/`, each decision made in the workspace acted on, and the
//! effects of a change reaching the call path within the invalidation poll.

use crate::common::process;
use crate::common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use std::io::Write;
use std::process::Stdio;

pub(crate) const ROOT_PASSWORD: &str = "correct horse battery staple";
const BOB_PASSWORD: &str = "bob's own long password";

type Reply = (StatusCode, http::HeaderMap, bytes::Bytes);

/// `portcullis ARGS` with `stdin` on standard input.
pub(crate) fn cli_with_stdin(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut cmd = process::command();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn send(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    bearer: Option<&str>,
    workspace: Option<&str>,
) -> Reply {
    let mut req = http::Request::builder()
        .method(method)
        .uri(gw.url(path))
        .header("content-type", "application/json");
    // Without a bearer the request carries an explicit non-credential, so the client's default
    // key is not added: an unauthenticated call.
    req = req.header(
        "authorization",
        match bearer {
            Some(t) => format!("Bearer {t}"),
            None => "Basic eA==".to_string(),
        },
    );
    if let Some(w) = workspace {
        req = req.header("x-portcullis-workspace", w);
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(
        body.map(|b| b.to_string()).unwrap_or_default(),
    ))
    .map_err(|e| match e {})
    .boxed();
    let resp = gw
        .client
        .inner
        .request(req.body(body).unwrap())
        .await
        .expect("request reaches the gateway");
    collect(resp).await
}

pub(crate) async fn login(
    gw: &TestGateway,
    workspace: &str,
    username: &str,
    password: &str,
) -> String {
    let (status, _, body) = send(
        gw,
        "POST",
        "/api/v1/auth/login",
        Some(
            serde_json::json!({"workspace": workspace, "username": username, "password": password}),
        ),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    json(&body)["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_bootstrapped_by_the_cli_manages_workspaces_users_and_roles() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = gw.echo("echo-1").await;
    eventually("echo is routed", || async {
        gw.get("/echo/up").await.0 == StatusCode::OK
    })
    .await;
    let dir = gw.store.as_ref().unwrap().data_dir();
    let d = dir.to_str().unwrap();

    // Bootstrap is for the first admin only: the harness's `*` key counts as one.
    gw.auth.revoke(gw.key_id(), "test").await.unwrap();
    // The first admin: a user bound to `admin` in every workspace, password on stdin.
    let (code, out, err) = cli_with_stdin(
        &[
            "bootstrap",
            "--admin-user",
            "root",
            "--data-dir",
            d,
            "--json",
        ],
        &format!("{ROOT_PASSWORD}\n"),
    );
    assert_eq!(code, 0, "{err}");
    let boot: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(boot["user"]["username"], "root");
    assert_eq!(boot["binding"]["role"], "admin");
    assert_eq!(boot["binding"]["workspace"], "*");
    assert!(!out.contains(ROOT_PASSWORD) && !err.contains(ROOT_PASSWORD));
    // Only while no admin exists.
    let (code, _, _) = cli_with_stdin(
        &["bootstrap", "--admin-user", "second", "--data-dir", d],
        &format!("{ROOT_PASSWORD}\n"),
    );
    assert_eq!(code, 1);

    let root = login(&gw, "default", "root", ROOT_PASSWORD).await;

    // Without a credential the IAM API is the same 401 as everything else.
    let (status, _, body) = send(&gw, "GET", "/api/v1/iam/workspaces", None, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(&body[..], br#"{"error":"unauthorized"}"#);

    let (status, _, body) = send(
        &gw,
        "POST",
        "/api/v1/iam/workspaces",
        Some(serde_json::json!({"name": "acme", "display_name": "Acme"})),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let acme = json(&body)["id"].as_str().unwrap().to_string();

    let (status, _, body) = send(
        &gw,
        "POST",
        "/api/v1/iam/users",
        Some(serde_json::json!({"workspace": "acme", "username": "bob", "password": BOB_PASSWORD})),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let bob_id = json(&body)["id"].as_str().unwrap().to_string();
    assert!(!String::from_utf8_lossy(&body).contains("argon2"));

    // Bob without a role: authenticated, but refused everything.
    let bob = login(&gw, "acme", "bob", BOB_PASSWORD).await;
    let (status, _, body) = gw.get_with_key("/echo/x", Some(&bob)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(&body[..], br#"{"error":"forbidden"}"#);

    let (status, _, body) = send(
        &gw,
        "POST",
        "/api/v1/iam/role-bindings",
        Some(serde_json::json!({"subject": format!("user:{bob_id}"), "role": "reader", "workspace": "acme"})),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let binding = json(&body)["id"].as_str().unwrap().to_string();
    // An unknown role is a 400, never a binding that grants nothing.
    let (status, _, _) = send(
        &gw,
        "POST",
        "/api/v1/iam/role-bindings",
        Some(serde_json::json!({"subject": format!("user:{bob_id}"), "role": "nosuch", "workspace": "acme"})),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // `reader` in acme: echo.read and iam.*.read there, within the poll; nothing elsewhere.
    eventually("the reader binding grants echo.read", || async {
        gw.get_with_key("/echo/x", Some(&bob)).await.0 == StatusCode::OK
    })
    .await;
    // `reader` (`*.read`) reads services, never identities: administration is granted only by
    // `admin` or a role that names `iam.*`.
    for (method, path, body) in [
        ("GET", "/api/v1/iam/users?workspace=acme", None),
        ("GET", "/api/v1/iam/users?workspace=default", None),
        ("GET", "/api/v1/iam/workspaces", None),
        (
            "POST",
            "/api/v1/iam/users",
            Some(
                serde_json::json!({"workspace": "acme", "username": "eve", "password": BOB_PASSWORD}),
            ),
        ),
        ("POST", "/api/v1/iam/workspaces/default/disable", None),
    ] {
        let (status, _, b) = send(&gw, method, path, body, Some(&bob), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(&b[..], br#"{"error":"forbidden"}"#, "{method} {path}");
    }

    // Bob's own keys: issued to him, they act with his roles narrowed by their scopes.
    let (status, _, body) = send(
        &gw,
        "POST",
        "/api/v1/iam/keys",
        Some(serde_json::json!({"name": "bob's laptop", "scopes": ["echo.read"]})),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let reading_key = json(&body)["api_key"].as_str().unwrap().to_string();
    let reading_id = json(&body)["key_id"].as_str().unwrap().to_string();
    assert_eq!(json(&body)["workspace"], "acme");
    let (status, _, body) = send(
        &gw,
        "POST",
        "/api/v1/iam/keys",
        Some(serde_json::json!({"name": "narrow", "scopes": ["echo.write"]})),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let writing_key = json(&body)["api_key"].as_str().unwrap().to_string();
    assert_eq!(
        gw.get_with_key("/echo/x", Some(&reading_key)).await.0,
        StatusCode::OK
    );
    // The scope allows echo.write but bob's reader role does not: both must.
    assert_eq!(
        gw.get_with_key("/echo/x", Some(&writing_key)).await.0,
        StatusCode::FORBIDDEN
    );
    // A key of scope `*` issued to bob is still only a reader: scopes narrow, never widen.
    let (status, _, body) = send(
        &gw,
        "POST",
        "/api/v1/iam/keys",
        Some(serde_json::json!({"name": "wide", "scopes": ["*"]})),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let wide_key = json(&body)["api_key"].as_str().unwrap().to_string();
    assert_eq!(
        gw.get_with_key("/echo/x", Some(&wide_key)).await.0,
        StatusCode::OK
    );
    let (status, _, _) = send(
        &gw,
        "POST",
        "/api/v1/iam/users",
        Some(serde_json::json!({"workspace": "acme", "username": "mallory", "password": BOB_PASSWORD})),
        Some(&wide_key),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = send(&gw, "GET", "/api/v1/iam/keys", None, Some(&bob), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["keys"].as_array().unwrap().len(), 3);
    // Keys for someone else need iam.keys.write where that user is.
    let root_id = boot["user"]["id"].as_str().unwrap();
    let (status, _, _) = send(
        &gw,
        "POST",
        "/api/v1/iam/keys",
        Some(serde_json::json!({"name": "x", "scopes": ["*"], "user": root_id})),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(
        &gw,
        "POST",
        &format!("/api/v1/iam/keys/{reading_id}/revoke"),
        None,
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        gw.get_with_key("/echo/x", Some(&reading_key)).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Rotating one's own key: a new secret once, the previous one kept for the overlap (none
    // here: refused at once); someone else's needs iam.keys.write.
    let wide_id = wide_key
        .strip_prefix("pcs_")
        .and_then(|k| k.split('_').next())
        .unwrap()
        .to_string();
    for bad in [r#"{"overlap_s": 2592001}"#, r#"{"overlap": 1}"#, "[0]"] {
        let (status, _, _) = send(
            &gw,
            "POST",
            &format!("/api/v1/iam/keys/{wide_id}/rotate"),
            Some(serde_json::from_str(bad).unwrap_or(serde_json::Value::Null)),
            Some(&bob),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, _, body) = send(
        &gw,
        "POST",
        &format!("/api/v1/iam/keys/{wide_id}/rotate"),
        Some(serde_json::json!({"overlap_s": 0})),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let rotated = json(&body)["api_key"].as_str().unwrap().to_string();
    assert_ne!(rotated, wide_key);
    assert_eq!(
        gw.get_with_key("/echo/x", Some(&rotated)).await.0,
        StatusCode::OK
    );
    eventually("the previous secret is refused", || async {
        gw.get_with_key("/echo/x", Some(&wide_key)).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    let root_keys = gw.auth.store().list_user_keys(root_id).await.unwrap();
    if let Some(k) = root_keys.first() {
        let (status, _, _) = send(
            &gw,
            "POST",
            &format!("/api/v1/iam/keys/{}/rotate", k.key_id),
            None,
            Some(&bob),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    // An empty body takes the 24 h default; root may rotate bob's key.
    let (status, _, body) = send(
        &gw,
        "POST",
        &format!("/api/v1/iam/keys/{wide_id}/rotate"),
        None,
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(json(&body)["previous_valid_until"].is_string(), "{body:?}");
    assert_eq!(
        gw.get_with_key("/echo/x", Some(&rotated)).await.0,
        StatusCode::OK,
        "the previous secret holds for the overlap"
    );

    // Cross-workspace calls: root (admin in `*`) may act in acme by naming it; bob may not act
    // in default.
    let default_ws = gw
        .auth
        .store()
        .workspace_by_name("default")
        .await
        .unwrap()
        .unwrap()
        .id;
    let (status, _, _) = send(&gw, "GET", "/echo/x", None, Some(&root), Some(&acme)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = send(&gw, "GET", "/echo/x", None, Some(&bob), Some(&default_ws)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(&body[..], br#"{"error":"forbidden"}"#);

    // Listing bindings, then revoking: bob is refused again within the poll.
    let (status, _, body) = send(
        &gw,
        "GET",
        &format!("/api/v1/iam/role-bindings?subject=user:{bob_id}"),
        None,
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["bindings"][0]["role"], "reader");
    let (status, _, body) = send(
        &gw,
        "GET",
        "/api/v1/iam/users?workspace=acme",
        None,
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(json(&body)["users"][0]["username"], "bob");
    let (status, _, _) = send(
        &gw,
        "DELETE",
        &format!("/api/v1/iam/role-bindings/{binding}"),
        None,
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    eventually("the revoked binding stops granting", || async {
        gw.get_with_key("/echo/x", Some(&bob)).await.0 == StatusCode::FORBIDDEN
    })
    .await;

    // Disabling bob refuses his outstanding token with the fixed 401 within the poll; so does
    // disabling his workspace once he is enabled again.
    let (status, _, body) = send(
        &gw,
        "POST",
        &format!("/api/v1/iam/users/{bob_id}/disable"),
        None,
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(json(&body)["status"], "disabled");
    eventually("a disabled user's token is refused", || async {
        let (s, _, b) = gw.get_with_key("/echo/x", Some(&bob)).await;
        s == StatusCode::UNAUTHORIZED && &b[..] == br#"{"error":"unauthorized"}"#
    })
    .await;
    let (status, _, _) = send(
        &gw,
        "POST",
        &format!("/api/v1/iam/users/{bob_id}/enable"),
        None,
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(
        &gw,
        "POST",
        "/api/v1/iam/workspaces/acme/disable",
        None,
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(
        &gw,
        "POST",
        "/api/v1/auth/login",
        Some(serde_json::json!({"workspace": "acme", "username": "bob", "password": BOB_PASSWORD})),
        None,
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a disabled workspace refuses logins"
    );

    // The CLI sees what the API did, and renders it.
    let (code, out, err) = process::cli(&["users", "list", "--workspace", "acme", "--data-dir", d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("acme/bob"), "{out}");
    let (code, out, _) = process::cli(&["workspaces", "get", "acme", "--data-dir", d, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"],
        "disabled"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_users_and_roles_and_never_takes_a_password_from_argv() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = process::cli(&["init", "--data-dir", d]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli_with_stdin(
        &["users", "create", "carol", "--data-dir", d, "--json"],
        "a long enough password\n",
    );
    assert_eq!(code, 0, "{err}");
    let carol: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(carol["username"], "carol");
    // A short password is a usage error, and nothing is created.
    let (code, _, err) = cli_with_stdin(&["users", "create", "dave", "--data-dir", d], "short\n");
    assert_eq!(code, 2, "{err}");
    // No flag takes a password.
    let (code, _, _) = process::cli(&[
        "users",
        "create",
        "erin",
        "--password",
        "x",
        "--data-dir",
        d,
    ]);
    assert_eq!(code, 2);

    let (code, out, err) = process::cli(&[
        "roles",
        "grant",
        "user:default/carol",
        "writer",
        "--data-dir",
        d,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b["role"], "writer");
    let (code, _, err) = process::cli(&[
        "roles",
        "grant",
        "user:default/carol",
        "nosuch",
        "--data-dir",
        d,
    ]);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = process::cli(&[
        "roles",
        "list",
        "--subject",
        "user:default/carol",
        "--data-dir",
        d,
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("writer"), "{out}");
    let (code, out, _) = process::cli(&[
        "users",
        "disable",
        "default/carol",
        "--data-dir",
        d,
        "--json",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("\"disabled\""), "{out}");
    let (code, out, _) = process::cli(&["users", "delete", "default/carol", "--data-dir", d]);
    assert_eq!(code, 0);
    assert!(out.contains("removed 1 role binding"), "{out}");
    let (code, _, _) = process::cli(&["users", "get", "default/carol", "--data-dir", d]);
    assert_eq!(code, 1);
}

/// With `auth.bootstrap_token_file`, the first admin can be created over HTTP (here by the
/// real CLI, `bootstrap --gateway --token-file`), once; every refusal — a malformed body, a
/// wrong or spent token, a password the policy refuses, an admin that exists — is the same
/// fixed 401, the reason in the metrics. Without the setting the path is no operation at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bootstrap_needs_the_one_time_token_and_refuses_alike_whatever_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    const UNAUTHORIZED: &[u8] = br#"{"error":"unauthorized"}"#;
    const TOKEN: &str = "5f1c0a9e7b3d4e2f8a6c1b0d9e8f7a6b";
    let post = |gw: &TestGateway, body: String| {
        let req = http::Request::post(gw.url("/api/v1/auth/bootstrap"))
            .header("content-type", "application/json")
            .header("authorization", "Basic eA==")
            .body(
                http_body_util::Full::new(bytes::Bytes::from(body))
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .unwrap();
        let client = gw.client.inner.clone();
        async move { collect(client.request(req).await.unwrap()).await }
    };

    // Not configured: the same 401 as any path without a credential.
    let plain = TestGateway::with_services(&["echo"]).await;
    let (status, _, body) = post(&plain, "{}".into()).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::UNAUTHORIZED, UNAUTHORIZED)
    );
    plain.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("bootstrap-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg = config_with_services(&["echo"]);
    cfg.auth.bootstrap_token_file = Some(token_file.clone());
    let gw = TestGateway::start(cfg).await;
    // The harness's `*` key counts as an admin; without it no admin exists.
    gw.auth.revoke(gw.key_id(), "test").await.unwrap();

    let attempt = |token: &str, password: &str| {
        serde_json::json!({"token": token, "username": "root", "password": password}).to_string()
    };
    for (body, why) in [
        ("not json".to_string(), "bootstrap_malformed"),
        (r#"{"token": "x"}"#.to_string(), "bootstrap_malformed"),
        (
            attempt("wrong-token-wrong-token-wrong-token", ROOT_PASSWORD),
            "bootstrap_token",
        ),
        (attempt(TOKEN, "short"), "bootstrap_refused"),
    ] {
        let (status, _, answer) = post(&gw, body.clone()).await;
        assert_eq!(
            (status, &answer[..]),
            (StatusCode::UNAUTHORIZED, UNAUTHORIZED),
            "{body} ({why})"
        );
    }

    // The real CLI, the token from a file and the password on stdin.
    let (code, out, err) = cli_with_stdin(
        &[
            "bootstrap",
            "--admin-user",
            "root",
            "--gateway",
            &gw.url(""),
            "--token-file",
            token_file.to_str().unwrap(),
            "--json",
        ],
        &format!("{ROOT_PASSWORD}\n"),
    );
    assert_eq!(code, 0, "{out}{err}");
    let boot: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(boot["user"]["username"], "root");
    assert_eq!(boot["binding"]["workspace"], "*");
    for secret in [TOKEN, ROOT_PASSWORD] {
        assert!(!out.contains(secret) && !err.contains(secret));
    }
    let root = login(&gw, "default", "root", ROOT_PASSWORD).await;
    let (status, _, _) = send(
        &gw,
        "GET",
        "/api/v1/iam/workspaces",
        None,
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Spent: the same token, the same 401 — also through the CLI (exit 1).
    let (status, _, answer) = post(&gw, attempt(TOKEN, ROOT_PASSWORD)).await;
    assert_eq!(
        (status, &answer[..]),
        (StatusCode::UNAUTHORIZED, UNAUTHORIZED)
    );
    let (code, _, err) = cli_with_stdin(
        &[
            "bootstrap",
            "--admin-user",
            "second",
            "--gateway",
            &gw.url(""),
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &format!("{ROOT_PASSWORD}\n"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains(TOKEN), "{err}");

    let (_, _, m) = gw.get("/metrics").await;
    let m = String::from_utf8_lossy(&m);
    for (reason, n) in [
        ("bootstrap_malformed", 2),
        ("bootstrap_token", 3),
        ("bootstrap_refused", 1),
    ] {
        let line = format!("portcullis_auth_failures_total{{reason=\"{reason}\"}} {n}");
        assert!(m.contains(&line), "{line}\n{m}");
    }
    gw.shutdown().await;

    // A token file others can read stops the start.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = config_with_services(&["echo"]);
    cfg.auth.bootstrap_token_file = Some(token_file);
    let store = portcullis::store::testing::TestStore::sqlite();
    cfg.data_dir = store.data_dir();
    cfg.store.url = store.options.url.clone();
    portcullis::admin::init(&cfg).await.unwrap();
    let Err(e) = portcullis::Running::start(cfg).await else {
        panic!("a token file others can read must stop the start");
    };
    assert!(e.to_string().contains("chmod 600"), "{e}");
    store.cleanup().await;
}
