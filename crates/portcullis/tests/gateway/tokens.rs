//! Users and their tokens, end to end through a real gateway: login → token → routed call;
//! every login and token refusal is the same fixed 401 as a bad key; lockout after repeated
//! failures; JWKS; signing-key rotation; a disabled user's token refused within the poll;
//! hostile login bodies and floods.
//!
//! Users live in a `MemoryUsers` directory handed to the gateway (the store's users table
//! implements the same `UserDirectory`); the wall clock is a `ManualClock`, so expiry is
//! tested by moving it.

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::StatusCode;
use http_body_util::BodyExt;
use portcullis::auth::authenticator::{AuthSettings, CreateKey};
use portcullis::auth::password::{HashSettings, Password, PasswordHasher};
use portcullis::auth::users::{LoginUser, MemoryUsers};
use portcullis::auth::ApiKeyAuthenticator;
use portcullis::clock::ManualClock;
use portcullis::config::Config;
use portcullis::store::testing::TestStore;
use portcullis_link::jws::{self, TokenClaims};
use std::sync::Arc;
use std::time::Duration;

const UNAUTHORIZED: &[u8] = br#"{"error":"unauthorized"}"#;
const PASSWORD: &str = "correct horse battery staple";

struct Users {
    gw: TestGateway,
    _svc: portcullis_sdk::Running,
    users: Arc<MemoryUsers>,
    clock: ManualClock,
    cfg: Config,
    workspace_id: String,
}

impl Users {
    async fn start(f: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = config_with_services(&["echo", "open"]);
        f(&mut cfg);
        let users = MemoryUsers::new();
        let clock = ManualClock::starting_now();
        let (u, c) = (users.clone(), clock.clone());
        let gw = TestGateway::start_on_parts(cfg, TestStore::sqlite(), move |cfg, mut parts| {
            let pepper = portcullis::admin::load_pepper(cfg).unwrap();
            let settings = AuthSettings {
                clock: c.clock(),
                ..AuthSettings::from_config(&cfg.auth)
            };
            parts.api_keys =
                ApiKeyAuthenticator::new(parts.api_keys.store().clone(), pepper, settings);
            parts.users = Some(u);
            parts
        })
        .await;
        let (svc, _) = gw.echo("echo-1").await;
        // Users hold no grants until roles arrive (crate::access): an endpoint that names no
        // capability needs only an authenticated caller.
        let open = axum::Router::new().route(
            "/open/{*rest}",
            axum::routing::get(|headers: http::HeaderMap| async move {
                let h: serde_json::Map<String, serde_json::Value> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                    .collect();
                axum::Json(serde_json::json!({ "headers": h }))
            }),
        );
        raw_h2_service(
            gw.link,
            "open",
            "open-1",
            vec![descriptor("GET", "/open/{*rest}")],
            64 * 1024,
            open,
        )
        .await;
        eventually("the open service is routed", || async {
            gw.get_with_key("/open/x", Some(gw.api_key())).await.0 == StatusCode::OK
        })
        .await;
        let workspace_id = gw
            .auth
            .store()
            .workspace_by_name("default")
            .await
            .unwrap()
            .unwrap()
            .id;
        let mut cfg = config_with_services(&["echo", "open"]);
        cfg.data_dir = gw.store.as_ref().unwrap().data_dir();
        let me = Self {
            gw,
            _svc: svc,
            users,
            clock,
            cfg,
            workspace_id,
        };
        me.add("alice", PASSWORD).await;
        me
    }

    fn running(&self) -> &portcullis::Running {
        self.gw.running.as_ref().unwrap()
    }

    async fn add(&self, username: &str, password: &str) {
        let hasher = self.running().handles.login.hasher();
        let phc = hasher.hash(&Password::new(password)).await.unwrap();
        self.users.put(LoginUser {
            id: format!("usr_{username}"),
            username: username.into(),
            workspace_id: self.workspace_id.clone(),
            workspace: "default".into(),
            password_hash: phc,
            disabled: false,
            workspace_disabled: false,
            password_changed_at: self.clock.now_ms() - 60_000,
        });
    }

    async fn post(&self, path: &str, body: Vec<u8>, bearer: Option<&str>) -> Reply {
        let mut req =
            http::Request::post(self.gw.url(path)).header("content-type", "application/json");
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = http_body_util::Full::new(bytes::Bytes::from(body))
            .map_err(|e| match e {})
            .boxed();
        let resp = self
            .gw
            .client
            .inner
            .request(req.body(body).unwrap())
            .await
            .expect("request reaches the gateway");
        collect(resp).await
    }

    async fn login_as(&self, workspace: &str, username: &str, password: &str) -> Reply {
        let body = serde_json::json!({
            "workspace": workspace, "username": username, "password": password,
        });
        self.post("/api/v1/auth/login", body.to_string().into_bytes(), None)
            .await
    }

    async fn login(&self) -> String {
        let (status, headers, body) = self.login_as("default", "alice", PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(headers["cache-control"], "no-store");
        let v = json(&body);
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["expires_in"], 900);
        v["access_token"].as_str().unwrap().to_string()
    }

    async fn call(&self, token: &str) -> Reply {
        self.gw.get_with_key("/open/x", Some(token)).await
    }

    async fn metrics(&self) -> String {
        let (_, _, m) = self.gw.get("/metrics").await;
        String::from_utf8_lossy(&m).into_owned()
    }

    async fn shutdown(self) {
        self.gw.shutdown().await;
    }
}

type Reply = (StatusCode, http::HeaderMap, bytes::Bytes);

fn assert_401(case: &str, r: &Reply) {
    assert_eq!(
        r.0,
        StatusCode::UNAUTHORIZED,
        "{case}: {}",
        String::from_utf8_lossy(&r.2)
    );
    assert_eq!(&r.2[..], UNAUTHORIZED, "{case}: body");
    assert_eq!(r.1["www-authenticate"], "Bearer", "{case}");
}

fn failures(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("portcullis_auth_failures_total{{reason=\"{reason}\"}}");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn claims_of(token: &str) -> TokenClaims {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

fn header_of(token: &str) -> serde_json::Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_logs_in_and_calls_a_service_with_the_token() {
    let u = Users::start(|_| {}).await;
    let token = u.login().await;
    let c = claims_of(&token);
    assert_eq!(c.sub, "user:usr_alice");
    assert_eq!(c.ws, u.workspace_id);
    assert_eq!(c.aud, "portcullis");
    assert_eq!(c.exp - c.iat, 900);
    assert_eq!(header_of(&token)["typ"], "at+jwt");
    let (status, _, body) = u.call(&token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        json(&body)["headers"].get("authorization").is_none(),
        "the service never sees the token"
    );
    // Authenticated, but a capability needs a grant, and users have none before roles.
    let (status, _, body) = u.gw.get_with_key("/echo/x", Some(&token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(&body[..], br#"{"error":"forbidden"}"#);
    u.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_login_and_token_refusal_is_the_same_fixed_401() {
    let u = Users::start(|_| {}).await;
    u.add("bob", PASSWORD).await;
    u.users.update("usr_bob", |b| b.disabled = true);
    let token = u.login().await;

    // Logins.
    for (case, ws, user, pw) in [
        (
            "wrong password",
            "default",
            "alice",
            "not the password at all",
        ),
        ("unknown user", "default", "nobody", PASSWORD),
        ("unknown workspace", "elsewhere", "alice", PASSWORD),
        ("disabled user", "default", "bob", PASSWORD),
    ] {
        assert_401(case, &u.login_as(ws, user, pw).await);
    }

    // Tokens.
    let mut claims = claims_of(&token);
    let signer = u.running().keys().signer(u.clock.now_ms()).unwrap();
    let stranger = portcullis::auth::keyring::SigningKey::generate(0)
        .unwrap()
        .key;
    let by_stranger =
        jws::sign(&claims, &signer.kid, jws::TYP_ACCESS_TOKEN, stranger.pair()).unwrap();
    let unknown_kid = jws::sign(
        &claims,
        "no-such-kid",
        jws::TYP_ACCESS_TOKEN,
        stranger.pair(),
    )
    .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"none","kid":"{}","typ":"at+jwt"}}"#,
            signer.kid
        )),
        parts[1]
    );
    let mut forged = claims.clone();
    forged.sub = "user:usr_bob".into();
    let resigned = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()),
        parts[2]
    );
    claims.aud = "another-gateway".into();
    let wrong_aud = jws::sign(&claims, &signer.kid, jws::TYP_ACCESS_TOKEN, signer.pair()).unwrap();
    for (case, t) in [
        ("signed by another key under our kid", by_stranger.as_str()),
        ("unknown kid", &unknown_kid),
        ("alg none", &alg_none),
        ("re-signed claims", &resigned),
        ("wrong aud", &wrong_aud),
        ("not a token", "eyJhbGciOi.x.y"),
    ] {
        assert_401(case, &u.call(t).await);
    }
    // Still good, then expired on the injected clock.
    assert_eq!(u.call(&token).await.0, StatusCode::OK);
    u.clock.advance(Duration::from_secs(900 + 5));
    assert_401("expired", &u.call(&token).await);

    let m = u.metrics().await;
    for reason in [
        "wrong",
        "unknown",
        "disabled",
        "token_signature",
        "token_unknown_key",
        "token_header",
        "token_audience",
        "expired",
    ] {
        assert!(failures(&m, reason) >= 1, "{reason} counted\n{m}");
    }
    u.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_refuses_the_tokens_issued_before_it() {
    let u = Users::start(|_| {}).await;
    let first = u.login().await;
    let second = u.login().await;
    let new = "an entirely new passphrase";
    let body = serde_json::json!({"current_password": "wrong guess here", "new_password": new});
    assert_401(
        "wrong current password",
        &u.post(
            "/api/v1/auth/change-password",
            body.to_string().into_bytes(),
            Some(&first),
        )
        .await,
    );
    let short = serde_json::json!({"current_password": PASSWORD, "new_password": "short"});
    let (status, _, _) = u
        .post(
            "/api/v1/auth/change-password",
            short.to_string().into_bytes(),
            Some(&first),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // An API key is not a user: refused like any credential the operation does not take.
    let body = serde_json::json!({"current_password": PASSWORD, "new_password": new});
    assert_401(
        "api key",
        &u.post(
            "/api/v1/auth/change-password",
            body.to_string().into_bytes(),
            Some(u.gw.api_key()),
        )
        .await,
    );
    let (status, _, _) = u
        .post(
            "/api/v1/auth/change-password",
            body.to_string().into_bytes(),
            Some(&first),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_401("the token that changed it", &u.call(&first).await);
    assert_401("another token from before", &u.call(&second).await);
    assert_401(
        "the old password",
        &u.login_as("default", "alice", PASSWORD).await,
    );
    let (status, _, body) = u.login_as("default", "alice", new).await;
    assert_eq!(status, StatusCode::OK);
    let fresh = json(&body)["access_token"].as_str().unwrap().to_string();
    assert_eq!(u.call(&fresh).await.0, StatusCode::OK);
    assert!(failures(&u.metrics().await, "password_changed") >= 2);
    u.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_the_account_even_for_the_right_password() {
    let u = Users::start(|c| c.auth.login_max_failures = 3).await;
    for _ in 0..3 {
        assert_401(
            "wrong",
            &u.login_as("default", "alice", "guess guess guess").await,
        );
    }
    assert_401("locked", &u.login_as("default", "alice", PASSWORD).await);
    // Unknown accounts lock the same way: a lockout says nothing about which exist.
    for _ in 0..4 {
        u.login_as("default", "ghost", "guess guess guess").await;
    }
    assert!(failures(&u.metrics().await, "throttled") >= 2);
    // Other accounts are not affected.
    u.add("carol", PASSWORD).await;
    assert_eq!(
        u.login_as("default", "carol", PASSWORD).await.0,
        StatusCode::OK
    );
    u.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_is_public_and_rotation_keeps_old_tokens_valid_until_they_expire() {
    let u = Users::start(|_| {}).await;
    let old = u.login().await;
    let old_kid = header_of(&old)["kid"].as_str().unwrap().to_string();
    let (status, headers, body) = u.gw.get_with_key("/.well-known/jwks.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let keys = json(&body)["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], old_kid.as_str());
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");

    let delay = u.running().keys().publish_delay_ms() as u64;
    u.clock.advance(Duration::from_millis(delay));
    let r = u.running().handles.signing.rotate().await.unwrap();
    let (_, _, body) = u.gw.get_with_key("/.well-known/jwks.json", None).await;
    assert_eq!(
        json(&body)["keys"].as_array().unwrap().len(),
        2,
        "published at once"
    );
    // Until the publish delay has passed the old key still signs.
    assert_eq!(header_of(&u.login().await)["kid"], old_kid.as_str());
    u.clock.advance(Duration::from_millis(delay));
    let new = u.login().await;
    assert_eq!(header_of(&new)["kid"], r.kid.as_str());
    assert_eq!(u.call(&new).await.0, StatusCode::OK);
    assert_eq!(
        u.call(&old).await.0,
        StatusCode::OK,
        "the old token still verifies"
    );
    u.clock.advance(Duration::from_secs(910));
    assert_401("expired", &u.call(&old).await);
    u.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_refuses_their_token_within_the_poll() {
    let u = Users::start(|c| c.auth.invalidation_poll = Duration::from_millis(100)).await;
    let token = u.login().await;
    assert_eq!(u.call(&token).await.0, StatusCode::OK);
    u.users.update("usr_alice", |a| a.disabled = true);
    // A change made elsewhere (another node, the CLI) bumps the store's generation.
    portcullis::admin::keys_create(
        &u.cfg,
        &CreateKey {
            workspace: "default".into(),
            name: "elsewhere".into(),
            scopes: vec!["x".into()],
            expires_in: None,
            key_id: None,
        },
    )
    .await
    .unwrap();
    eventually("the token is refused", || async {
        u.call(&token).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    assert_401("disabled", &u.call(&token).await);
    u.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_login_bodies_are_refused_before_any_password_check() {
    let u = Users::start(|_| {}).await;
    let (status, _, _) = u
        .post("/api/v1/auth/login", vec![b' '; 9 * 1024], None)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    for bad in [
        &b"{not json"[..],
        br#"{"workspace":"default","username":"alice"}"#,
        br#"{"workspace":"default","username":"alice","password":"x","admin":true}"#,
        br#"{"workspace":"default","username":"alice","password":1}"#,
        br#"["default","alice","x"]"#,
    ] {
        let (status, _, body) = u.post("/api/v1/auth/login", bad.to_vec(), None).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(&body[..], br#"{"error":"bad_request"}"#);
    }
    // A password over the limit is refused without hashing.
    let huge = "p".repeat(2000);
    assert_401(
        "oversized password",
        &u.login_as("default", "alice", &huge).await,
    );
    assert_eq!(u.running().handles.login.hasher().in_progress(), 0);
    u.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_bounded_and_does_not_block_other_calls() {
    let u = Users::start(|c| {
        c.auth.max_concurrent_hashes = Some(1);
        c.auth.max_pending_hashes = 2;
    })
    .await;
    let hasher = u.running().handles.login.hasher().clone();
    // Every place in the hashing queue taken: a login is refused at once, other calls go on.
    let held: Vec<_> = (0..3).map(|_| hasher.reserve().unwrap()).collect();
    let (status, headers, _) = u.login_as("default", "alice", PASSWORD).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(u.gw.get("/echo/x").await.0, StatusCode::OK);
    drop(held);

    // A real flood: every answer is a refusal or 503, never a queue past the bound, and a
    // keyed call made meanwhile is served.
    let flood: Vec<_> = (0..24)
        .map(|i| {
            let user = format!("flood-{i}");
            let u = &u;
            async move { u.login_as("default", &user, "guess guess guess").await.0 }
        })
        .collect();
    let (answers, keyed) = tokio::join!(futures_util::future::join_all(flood), async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        u.gw.get("/echo/x").await.0
    });
    assert_eq!(keyed, StatusCode::OK);
    for a in &answers {
        assert!(
            *a == StatusCode::UNAUTHORIZED || *a == StatusCode::SERVICE_UNAVAILABLE,
            "{a}"
        );
    }
    assert!(hasher.in_progress() <= 3);
    u.shutdown().await;
}

/// The settings the gateway builds from `[auth]` by default are OWASP's.
#[test]
fn default_hash_settings_are_owasp() {
    let s = Config::default().auth.hash_settings();
    let o = HashSettings::owasp(s.max_concurrent);
    assert_eq!(s, o);
    let _ = PasswordHasher::new;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_login_reads_the_password_from_stdin_and_prints_a_token() {
    use std::io::Write as _;
    let u = Users::start(|_| {}).await;
    let gateway = format!("http://{}", u.gw.ingress);
    let run = |password: &'static str, json: bool| {
        let gateway = gateway.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = crate::common::process::command();
            cmd.args(["login", "--workspace", "default", "--username", "alice"])
                .args(["--gateway", &gateway])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            if json {
                cmd.arg("--json");
            }
            let mut child = cmd.spawn().unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{password}\n").as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        })
    };
    let out = run(PASSWORD, false).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(u.call(&token).await.0, StatusCode::OK);
    let out = run(PASSWORD, true).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_type"], "Bearer");
    let out = run("not the password", false).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("login refused") && !err.contains("not the password"),
        "{err}"
    );
    u.shutdown().await;
}
