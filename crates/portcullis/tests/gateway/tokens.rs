//! Users and their tokens, end to end through a real gateway: login → token → routed call;
//! every login and token refusal is the same fixed 401 as a bad key; lockout after repeated
//! failures; JWKS; signing-key rotation; a disabled user's token refused within the poll;
//! hostile login bodies and floods.
//!
//! Users are the store's; where a test moves the wall clock (expiry, rotation) it is a
//! `ManualClock`, with the signing keys in memory.

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::StatusCode;
use http_body_util::BodyExt;
use portcullis::auth::authenticator::AuthSettings;
use portcullis::auth::password::{HashSettings, Password, PasswordHasher};
use portcullis::auth::signing::MemorySigningKeys;
use portcullis::auth::ApiKeyAuthenticator;
use portcullis::clock::ManualClock;
use portcullis::config::Config;
use portcullis::store::testing::TestStore;
use portcullis::store::users::NewUser;
use portcullis::store::{Redacted, Store};
use portcullis_link::jws::{self, TokenClaims};
use std::time::Duration;

const UNAUTHORIZED: &[u8] = br#"{"error":"unauthorized"}"#;
const PASSWORD: &str = "correct horse battery staple";

struct Users {
    gw: TestGateway,
    _svc: portcullis_sdk::Running,
    store: Store,
    /// The gateway's wall clock, when the test moves it.
    clock: Option<ManualClock>,
    workspace_id: String,
    /// Alice's user id.
    alice: String,
}

impl Users {
    /// A gateway on the system clock, users and signing keys in its store.
    async fn start(f: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(f, None).await
    }

    /// A gateway whose wall clock the test moves; signing keys in memory (the store stamps
    /// key creation with its own clock).
    async fn start_manual(f: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(f, Some(ManualClock::starting_now())).await
    }

    async fn start_with(f: impl FnOnce(&mut Config), clock: Option<ManualClock>) -> Self {
        let mut cfg = config_with_services(&["echo", "open"]);
        // Users are authorised by their role bindings only: every user `add` makes holds this
        // role in the default workspace.
        cfg.access.roles.insert(
            "caller".into(),
            portcullis::access::RoleConfig {
                capabilities: vec!["open.*".into(), "echo.*".into()],
                description: None,
            },
        );
        f(&mut cfg);
        let c = clock.clone();
        let gw = TestGateway::start_on_parts(cfg, TestStore::sqlite(), move |cfg, mut parts| {
            if let Some(c) = c {
                let pepper = portcullis::admin::load_pepper(cfg).unwrap();
                let settings = AuthSettings {
                    clock: c.clock(),
                    ..AuthSettings::from_config(&cfg.auth)
                };
                parts.api_keys =
                    ApiKeyAuthenticator::new(parts.api_keys.store().clone(), pepper, settings);
                parts.signing_keys = MemorySigningKeys::new();
            }
            parts
        })
        .await;
        let (svc, _) = gw.echo("echo-1").await;
        // An endpoint that names no capability needs `open.call`, which `caller` grants.
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
        let store = gw.auth.store().clone();
        let workspace_id = store
            .workspace_by_name("default")
            .await
            .unwrap()
            .unwrap()
            .id;
        let mut me = Self {
            gw,
            _svc: svc,
            store,
            clock,
            workspace_id,
            alice: String::new(),
        };
        me.alice = me.add("alice", PASSWORD).await;
        if let Some(c) = &me.clock {
            // Not behind the store's stamp of alice's password.
            c.set_ms(portcullis::store::now_ms());
        }
        me
    }

    fn running(&self) -> &portcullis::Running {
        self.gw.running.as_ref().unwrap()
    }

    fn advance(&self, by: Duration) {
        self.clock.as_ref().expect("a manual clock").advance(by);
    }

    fn now_ms(&self) -> i64 {
        self.clock
            .as_ref()
            .map_or_else(portcullis::store::now_ms, |c| c.now_ms())
    }

    /// Create a user in the store, holding `caller` in the default workspace; returns its id.
    async fn add(&self, username: &str, password: &str) -> String {
        let hasher = self.running().handles.login.hasher();
        let phc = hasher.hash(&Password::new(password)).await.unwrap();
        let id = self
            .store
            .create_user(
                &NewUser {
                    workspace_id: self.workspace_id.clone(),
                    username: username.into(),
                    display_name: None,
                    password_hash: Redacted::new(phc),
                },
                "test",
            )
            .await
            .unwrap()
            .id;
        self.store
            .grant_role(
                &portcullis::store::NewRoleBinding {
                    subject_kind: portcullis::store::SubjectKind::User,
                    subject_id: id.clone(),
                    role: "caller".into(),
                    workspace_id: self.workspace_id.clone(),
                },
                "test",
            )
            .await
            .unwrap();
        id
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
    assert_eq!(c.sub, format!("user:{}", u.alice));
    assert_eq!(c.ws, u.workspace_id);
    assert_eq!(c.aud, "portcullis");
    // `iat` is never before the password's last change, rounded up to its second.
    assert!((899..=900).contains(&(c.exp - c.iat)), "{c:?}");
    assert_eq!(header_of(&token)["typ"], "at+jwt");
    let (status, _, body) = u.call(&token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        json(&body)["headers"].get("authorization").is_none(),
        "the service never sees the token"
    );
    // The role binding grants `echo.*` too; the service verified the gateway's assertion
    // and its handler sees the user, the token as the credential, and the workspace by name.
    let (status, _, _) = u.gw.get_with_key("/echo/x", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = u.gw.get_with_key("/whoami", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let who = json(&body);
    assert_eq!(who["subject"], format!("user:{}", u.alice));
    assert_eq!(who["credential"]["kind"], "token");
    assert_eq!(who["credential"]["id"], c.jti.as_str());
    assert_eq!(who["workspace"]["id"], u.workspace_id.as_str());
    assert_eq!(who["workspace"]["name"], "default");
    // Once the binding is revoked in the store, the same token is refused with the fixed 403
    // within the invalidation poll.
    let bindings = u
        .store
        .list_role_bindings_for(portcullis::store::SubjectKind::User, &u.alice)
        .await
        .unwrap();
    for b in bindings {
        u.store.revoke_role(&b.id, "test").await.unwrap();
    }
    eventually("the revoked role stops granting", || async {
        let (status, _, body) = u.gw.get_with_key("/echo/x", Some(&token)).await;
        status == StatusCode::FORBIDDEN && &body[..] == br#"{"error":"forbidden"}"#
    })
    .await;
    u.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_login_and_token_refusal_is_the_same_fixed_401() {
    let u = Users::start_manual(|_| {}).await;
    let bob = u.add("bob", PASSWORD).await;
    u.store.disable_user(&bob, "test").await.unwrap();
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
    let signer = u.running().keys().signer(u.now_ms()).unwrap();
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
    forged.sub = format!("user:{bob}");
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
    u.advance(Duration::from_secs(900 + 5));
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
    let u = Users::start_manual(|_| {}).await;
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
    u.advance(Duration::from_millis(delay));
    let r = u.running().handles.signing.rotate().await.unwrap();
    let (_, _, body) = u.gw.get_with_key("/.well-known/jwks.json", None).await;
    assert_eq!(
        json(&body)["keys"].as_array().unwrap().len(),
        2,
        "published at once"
    );
    // Until the publish delay has passed the old key still signs.
    assert_eq!(header_of(&u.login().await)["kid"], old_kid.as_str());
    u.advance(Duration::from_millis(delay));
    let new = u.login().await;
    assert_eq!(header_of(&new)["kid"], r.kid.as_str());
    assert_eq!(u.call(&new).await.0, StatusCode::OK);
    assert_eq!(
        u.call(&old).await.0,
        StatusCode::OK,
        "the old token still verifies"
    );
    u.advance(Duration::from_secs(910));
    assert_401("expired", &u.call(&old).await);
    u.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_refuses_their_token_within_the_poll() {
    let u = Users::start(|c| c.auth.invalidation_poll = Duration::from_millis(100)).await;
    let token = u.login().await;
    assert_eq!(u.call(&token).await.0, StatusCode::OK);
    // Disabled in the store, as the CLI or another node would: the store's generation moves.
    u.store.disable_user(&u.alice, "test").await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_live_in_the_store_and_rotate_from_the_cli() {
    let u = Users::start(|c| c.auth.invalidation_poll = Duration::from_millis(100)).await;
    let old = u.login().await;
    let old_kid = header_of(&old)["kid"].as_str().unwrap().to_string();
    let mut cfg = config_with_services(&[]);
    cfg.data_dir = u.gw.store.as_ref().unwrap().data_dir();
    let list = portcullis::admin::signing_keys_list(&cfg).await.unwrap();
    assert_eq!(list.keys.len(), 1, "the gateway stored its first key");
    assert_eq!(list.keys[0].kid, old_kid);
    assert_eq!(
        list.keys[0].status,
        portcullis::admin::SigningKeyStatus::Signing
    );

    let rotated = portcullis::admin::signing_keys_rotate(&cfg).await.unwrap();
    assert_eq!(rotated.replaced.len(), 1);
    assert_eq!(rotated.replaced[0].kid, old_kid);
    // The running gateway reloads on the store's change: both keys are published.
    eventually("the new key is published", || async {
        let (_, _, body) = u.gw.get_with_key("/.well-known/jwks.json", None).await;
        json(&body)["keys"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k["kid"] == rotated.kid.as_str()))
    })
    .await;
    assert_eq!(
        u.call(&old).await.0,
        StatusCode::OK,
        "the old key still verifies"
    );
    let list = portcullis::admin::signing_keys_list(&cfg).await.unwrap();
    assert_eq!(list.keys.len(), 2);
    assert_eq!(list.keys[0].kid, rotated.kid, "newest first");
    u.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_locked_on_one_node_is_locked_on_another_through_the_store() {
    use portcullis::auth::keyring::{KeyRing, KeySet, SigningKey};
    use portcullis::auth::login::{Login, LoginError, LoginRequest};
    use portcullis::auth::throttle::{LoginThrottle, ThrottleSettings};
    use portcullis::auth::token::{TokenAuthenticator, TokenSettings};
    use portcullis::auth::{AuthFailure, Changes};
    use std::sync::Arc;

    for ts in TestStore::all().await {
        let store = Store::init(&ts.options).await.unwrap();
        let ws = store
            .workspace_by_name("default")
            .await
            .unwrap()
            .unwrap()
            .id;
        // Small parameters: the shared counter is under test, not Argon2's cost.
        let hasher = Arc::new(
            PasswordHasher::new(HashSettings {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
                max_concurrent: 1,
                max_pending: 8,
            })
            .unwrap(),
        );
        for name in ["dave", "erin"] {
            let phc = hasher.hash(&Password::new(PASSWORD)).await.unwrap();
            store
                .create_user(
                    &NewUser {
                        workspace_id: ws.clone(),
                        username: name.into(),
                        display_name: None,
                        password_hash: Redacted::new(phc),
                    },
                    "test",
                )
                .await
                .unwrap();
        }
        let key = Arc::new(SigningKey::generate(0).unwrap().key);
        let node = || {
            let tokens = TokenAuthenticator::new(
                Arc::new(KeyRing::new(KeySet::new(vec![key.clone()]), 0)),
                Arc::new(store.clone()),
                TokenSettings::default(),
                Changes::default(),
                Arc::new(tokio::sync::Semaphore::new(2)),
            );
            Login::new(
                Arc::new(store.clone()),
                hasher.clone(),
                Arc::new(LoginThrottle::new(ThrottleSettings {
                    max_failures: 3,
                    ..ThrottleSettings::default()
                })),
                Some(Arc::new(store.clone())),
                tokens,
                portcullis::audit::AuditSink::metrics_only(Arc::new(
                    portcullis::telemetry::Metrics::new(Vec::new()),
                )),
            )
        };
        let (a, b) = (node(), node());
        let req = |user: &str, pw: &str| LoginRequest {
            workspace: "default".into(),
            username: user.into(),
            password: Password::new(pw),
        };
        for _ in 0..3 {
            assert_eq!(
                a.login(&req("dave", "guess guess guess"), None)
                    .await
                    .unwrap_err(),
                LoginError::Refused(AuthFailure::Wrong),
                "{}",
                ts.kind
            );
        }
        assert_eq!(
            b.login(&req("dave", PASSWORD), None).await.unwrap_err(),
            LoginError::Refused(AuthFailure::Throttled),
            "{}: the other node refuses without a password check",
            ts.kind
        );
        assert!(
            b.login(&req("erin", PASSWORD), None).await.is_ok(),
            "{}",
            ts.kind
        );
        store.close().await;
        ts.cleanup().await;
    }
}
