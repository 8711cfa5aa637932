//! Access control end to end: the target workspace (`x-portcullis-workspace`: read, never
//! forwarded, malformed → 400 only once authenticated, another workspace without a binding →
//! the fixed 403), role bindings through the real gateway and their change seen within the
//! poll, role patterns checked at start-up with their key paths, the capability of endpoints
//! that declare none, and the capabilities a service may not declare. The last tests drive the
//! pipeline without sockets, for what the store cannot express yet (a key issued to a user)
//! and for the capability registry following links.

use crate::common::*;
use bytes::Bytes;
use http::StatusCode;
use portcullis::access::{MemoryPolicy, SubjectRef, WORKSPACE_HEADER};
use portcullis::auth::authenticator::CreateKey;
use portcullis::config::Config;
use portcullis::store::testing::TestStore;
use std::sync::Arc;
use std::time::Duration;

const UNAUTHORIZED: &[u8] = br#"{"error":"unauthorized"}"#;
const FORBIDDEN: &[u8] = br#"{"error":"forbidden"}"#;
const BAD_REQUEST: &[u8] = br#"{"error":"bad_request"}"#;

fn failures(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("portcullis_auth_failures_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `method path` on the gateway at `ingress` with `key` and `x-portcullis-workspace` values.
async fn call(
    ingress: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    workspaces: &[&str],
) -> (StatusCode, Bytes) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{ingress}{path}"));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    for w in workspaces {
        req = req.header(WORKSPACE_HEADER, *w);
    }
    let resp = client()
        .request(req.body(full(b"data")).unwrap())
        .await
        .expect("request reaches the gateway");
    let (status, _, body) = collect(resp).await;
    (status, body)
}

async fn own_workspace(gw: &TestGateway) -> String {
    gw.auth
        .authenticate(gw.api_key())
        .await
        .unwrap()
        .workspace
        .id
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_header_is_never_forwarded_and_naming_ones_own_changes_nothing() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = gw.echo("echo-1").await;
    let own = own_workspace(&gw).await;
    let (status, body) = call(gw.ingress, "GET", "/echo/x", Some(gw.api_key()), &[&own]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let headers = &json(&body)["headers"];
    assert!(
        headers.get(WORKSPACE_HEADER.as_str()).is_none(),
        "{headers}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workspace_without_a_binding_there_is_the_fixed_403_forbidden_workspace() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = gw.echo("echo-1").await;
    let theirs = gw
        .auth
        .store()
        .create_workspace("team-b", None)
        .await
        .unwrap()
        .id;
    // Even the `*` key: its scopes hold in its own workspace only.
    let (status, body) = call(gw.ingress, "GET", "/echo/x", Some(gw.api_key()), &[&theirs]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(&body[..], FORBIDDEN);
    // The same bytes as a missing capability.
    let (_, writer) = gw.create_key("writer", &["echo.write"]).await;
    let (status, body) = call(gw.ingress, "GET", "/echo/x", Some(&writer), &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::FORBIDDEN, FORBIDDEN));
    let (_, _, m) = gw.get("/metrics").await;
    let m = String::from_utf8_lossy(&m);
    assert_eq!(failures(&m, "forbidden_workspace"), 1, "{m}");
    assert_eq!(failures(&m, "forbidden"), 1, "{m}");
    gw.shutdown().await;
}

/// A caller bound in `*` (an admin) may point a workspace-scoped call at any workspace that
/// exists and is active, and the service learns its id and current name from the assertion;
/// a disabled or unknown one is the fixed 403 (`forbidden_workspace`), and a route not
/// declared workspace-scoped refuses another workspace with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_bound_everywhere_enters_only_active_workspaces_and_scoped_routes() {
    use portcullis::store::{NewRoleBinding, SubjectKind, WorkspaceUpdate};
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = gw.echo("echo-1").await;
    let db = gw.auth.store().clone();
    let team_b = db.create_workspace("team-b", None).await.unwrap().id;
    let (key_id, admin) = gw.create_key("everywhere", &["*"]).await;
    db.grant_role(
        &NewRoleBinding {
            subject_kind: SubjectKind::Key,
            subject_id: key_id,
            role: "admin".into(),
            workspace_id: "*".into(),
        },
        "test",
    )
    .await
    .unwrap();
    gw.auth.poll_changes().await.unwrap();
    let at = gw.ingress;

    let (status, body) = call(at, "GET", "/whoami", Some(&admin), &[&team_b]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let v = json(&body);
    assert_eq!(v["workspace"]["id"], team_b.as_str());
    assert_eq!(v["workspace"]["name"], "team-b");

    // /stats serves no workspace's data: another workspace is a mistake, said plainly.
    let (status, body) = call(at, "GET", "/stats", Some(&admin), &[&team_b]).await;
    assert_eq!((status, &body[..]), (StatusCode::BAD_REQUEST, BAD_REQUEST));
    let own = own_workspace(&gw).await;
    let (status, _) = call(at, "GET", "/stats", Some(&admin), &[&own]).await;
    assert_eq!(status, StatusCode::OK);

    // A rename reaches the assertion once the change is seen.
    db.update_workspace(
        &team_b,
        &WorkspaceUpdate {
            name: Some("team-bee".into()),
            display_name: None,
        },
        "test",
    )
    .await
    .unwrap();
    gw.auth.poll_changes().await.unwrap();
    let (_, body) = call(at, "GET", "/whoami", Some(&admin), &[&team_b]).await;
    assert_eq!(json(&body)["workspace"]["name"], "team-bee");

    // Disabled: entered by nobody, `*` or not; the caller's own still works.
    db.disable_workspace(&team_b, "test").await.unwrap();
    gw.auth.poll_changes().await.unwrap();
    for ws in [team_b.as_str(), "ws_0000000000000000"] {
        let (status, body) = call(at, "GET", "/whoami", Some(&admin), &[ws]).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::FORBIDDEN, FORBIDDEN),
            "{ws}"
        );
    }
    let (status, _) = call(at, "GET", "/whoami", Some(&admin), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, m) = gw.get("/metrics").await;
    let m = String::from_utf8_lossy(&m);
    assert_eq!(failures(&m, "forbidden_workspace"), 2, "{m}");

    db.enable_workspace(&team_b, "test").await.unwrap();
    gw.auth.poll_changes().await.unwrap();
    let (status, _) = call(at, "GET", "/whoami", Some(&admin), &[&team_b]).await;
    assert_eq!(status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_workspace_header_is_400_once_authenticated_and_nothing_before() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = gw.echo("echo-1").await;
    let long = "w".repeat(65);
    for bad in [&["a/b"][..], &["ws_1,ws_2"], &[&long], &["ws_1", "ws_2"]] {
        let (status, body) = call(gw.ingress, "GET", "/echo/x", Some(gw.api_key()), bad).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::BAD_REQUEST, BAD_REQUEST),
            "{bad:?}"
        );
        // Without a credential: the same 401 as any non-public path, routed or not.
        for path in ["/echo/x", "/no/such/path"] {
            let (status, body) = call(gw.ingress, "GET", path, None, bad).await;
            assert_eq!(
                (status, &body[..]),
                (StatusCode::UNAUTHORIZED, UNAUTHORIZED)
            );
        }
        // Public operations do not look at it.
        let (status, _) = call(gw.ingress, "GET", "/health/live", None, bad).await;
        assert_eq!(status, StatusCode::OK);
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_declares_no_capability_needs_service_call() {
    let gw = TestGateway::with_services(&["raw"]).await;
    let router = axum::Router::new().route("/plain", axum::routing::get(|| async { "plain" }));
    let _raw = raw_h2_service(
        gw.link,
        "raw",
        "raw-1",
        vec![descriptor("GET", "/plain")],
        64 * 1024,
        router,
    )
    .await;
    let (_, caller) = gw.create_key("caller", &["raw.call"]).await;
    let (_, other) = gw.create_key("other", &["echo.read"]).await;
    for (key, expected) in [
        (&caller, StatusCode::OK),
        (&other, StatusCode::FORBIDDEN),
        (&gw.api_key().to_string(), StatusCode::OK),
    ] {
        let (status, body) = call(gw.ingress, "GET", "/plain", Some(key), &[]).await;
        assert_eq!(status, expected, "{body:?}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_cannot_declare_a_capability_of_the_gateway() {
    use portcullis_link::{Credential, Frame, Hello, RejectCode, MAX_FRAME_LEN};
    let gw = TestGateway::with_services(&["raw"]).await;
    for capability in ["iam.users.read", "metrics.read", "not..a.name"] {
        let mut s = tokio::net::TcpStream::connect(gw.link).await.unwrap();
        let challenge = portcullis::link::read_frame(&mut s, MAX_FRAME_LEN)
            .await
            .unwrap();
        assert!(matches!(challenge, Frame::Challenge(_)));
        let mut d = descriptor("GET", "/x");
        d.capability = Some(capability.into());
        let hello = Hello {
            service: "raw".into(),
            instance_id: "raw-1".into(),
            version: "0".into(),
            region: None,
            endpoints: vec![d],
            openapi: None,
            sessions: None,
            credential: Credential::Token {
                token: token_for("raw"),
            },
        };
        portcullis::link::write_frame(&mut s, &Frame::Hello(Box::new(hello)))
            .await
            .unwrap();
        match portcullis::link::read_frame(&mut s, MAX_FRAME_LEN).await {
            Ok(Frame::Reject(r)) => {
                assert_eq!(r.code, RejectCode::InvalidDescriptor, "{capability}")
            }
            other => panic!("{capability}: expected REJECT, got {other:?}"),
        }
    }
    gw.shutdown().await;
}

/// Start a gateway on `store` reading role bindings from `policy`.
async fn start_with_policy(
    mut cfg: Config,
    store: &TestStore,
    policy: Arc<MemoryPolicy>,
) -> anyhow::Result<portcullis::Running> {
    cfg.data_dir = store.data_dir();
    cfg.store.url = store.options.url.clone();
    portcullis::admin::init(&cfg).await?;
    portcullis::Running::start_with_policy(cfg, policy).await
}

async fn key(running: &portcullis::Running, scopes: &[&str]) -> (String, String) {
    let issued = running
        .auth
        .create_key(
            &CreateKey {
                workspace: "default".into(),
                name: "test".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                expires_in: None,
                key_id: None,
            },
            "test",
        )
        .await
        .unwrap();
    (issued.record.key_id, issued.api_key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_opens_another_workspace_and_its_removal_is_seen_within_the_poll() {
    let store = TestStore::sqlite();
    let policy = MemoryPolicy::new();
    let mut cfg = config_with_services(&["echo"]);
    cfg.auth.invalidation_poll = Duration::from_millis(50);
    let running = start_with_policy(cfg, &store, policy.clone())
        .await
        .unwrap();
    let (_svc, _) = serve_echo(
        portcullis_sdk::Service::builder("echo")
            .gateway(format!("tcp://{}", running.link_addr))
            .token(token_for("echo"))
            .instance_id("echo-1"),
    )
    .await;
    let db = running.auth.store().clone();
    let team_b = db.create_workspace("team-b", None).await.unwrap().id;
    let team_c = db.create_workspace("team-c", None).await.unwrap().id;
    let (id, admin) = key(&running, &["*"]).await;
    policy.bind(SubjectRef::Key(&id), "reader", &team_b);
    let at = running.ingress_addr;

    assert_eq!(
        call(at, "GET", "/echo/x", Some(&admin), &[&team_b]).await.0,
        StatusCode::OK
    );
    // Bound in team-b, but as a reader: forbidden, not forbidden_workspace.
    assert_eq!(
        call(at, "POST", "/upload", Some(&admin), &[&team_b])
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(at, "GET", "/echo/x", Some(&admin), &[&team_c]).await.0,
        StatusCode::FORBIDDEN
    );
    // At home the key's scopes still decide.
    assert_eq!(
        call(at, "POST", "/upload", Some(&admin), &[]).await.0,
        StatusCode::OK
    );

    // A key's scopes narrow its bindings.
    let (narrow_id, narrow) = key(&running, &["echo.write"]).await;
    policy.bind(SubjectRef::Key(&narrow_id), "writer", &team_b);
    assert_eq!(
        call(at, "GET", "/echo/x", Some(&narrow), &[&team_b])
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(at, "POST", "/upload", Some(&narrow), &[&team_b])
            .await
            .0,
        StatusCode::OK
    );

    // The binding goes; the decision is cached until the store's generation moves, which a
    // change made elsewhere (here: a key created as the CLI does) makes it do. Every key
    // change so far moved it too: let the poll see them first, then cache the decision.
    running.auth.poll_changes().await.unwrap();
    assert_eq!(
        call(at, "GET", "/echo/x", Some(&admin), &[&team_b]).await.0,
        StatusCode::OK
    );
    policy.unbind(SubjectRef::Key(&id), "reader", &team_b);
    assert_eq!(
        call(at, "GET", "/echo/x", Some(&admin), &[&team_b]).await.0,
        StatusCode::OK
    );
    let pepper =
        portcullis::auth::Pepper::new(b"another-pepper-0123456789abcdef-01234".to_vec(), 1)
            .unwrap();
    let req = CreateKey {
        workspace: "default".into(),
        name: "elsewhere".into(),
        scopes: vec!["x".into()],
        expires_in: None,
        key_id: None,
    };
    portcullis::auth::authenticator::create_key(&db, &pepper, &req, "cli", false)
        .await
        .unwrap();
    eventually("the removed binding refuses", || async {
        call(at, "GET", "/echo/x", Some(&admin), &[&team_b]).await.0 == StatusCode::FORBIDDEN
    })
    .await;

    let (_, _, m) = collect(
        client()
            .request(
                http::Request::get(format!("http://{at}/metrics"))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap(),
    )
    .await;
    let m = String::from_utf8_lossy(&m);
    assert!(failures(&m, "forbidden_workspace") >= 2, "{m}");
    running.shutdown().await.unwrap();
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_patterns_are_checked_at_start_up_with_their_key_paths() {
    // The section as an operator writes it.
    let toml_text = format!(
        "{}[access]\ncache_ttl = \"5s\"\n[access.roles.clerk]\ncapabilities = [\"echo.*\", \"*.read\", \"ordrs.read\"]\n",
        echo_toml()
    );
    let mut cfg = Config::from_toml(&toml_text).unwrap();
    cfg.ingress.listen = "127.0.0.1:0".parse().unwrap();
    cfg.link.listen = "127.0.0.1:0".parse().unwrap();
    let store = TestStore::sqlite();
    let e = start_with_policy(cfg.clone(), &store, MemoryPolicy::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("access.roles.clerk.capabilities.2"), "{e}");
    assert!(e.contains("ordrs"), "{e}");

    // `metrics` is a gateway namespace only while /metrics asks for a capability.
    cfg.access.roles.get_mut("clerk").unwrap().capabilities =
        vec!["echo.*".into(), "metrics.read".into()];
    let e = start_with_policy(cfg.clone(), &store, MemoryPolicy::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("access.roles.clerk.capabilities.1"), "{e}");
    cfg.auth.metrics_scope = Some("metrics.read".into());
    let running = start_with_policy(cfg, &store, MemoryPolicy::new())
        .await
        .unwrap();
    running.shutdown().await.unwrap();

    // What the file alone tells is refused when it is read.
    for (bad, path) in [
        (
            "[access.roles.admin]\ncapabilities = [\"*\"]\n",
            "access.roles.admin",
        ),
        (
            "[access.roles.x]\ncapabilities = [\"echo.*.read\"]\n",
            "access.roles.x.capabilities.0",
        ),
        (
            "[access.roles.x]\ncapabilities = []\n",
            "access.roles.x.capabilities",
        ),
        ("[access]\ncache_ttl = \"0s\"\n", "access.cache_ttl"),
    ] {
        let e = Config::from_toml(bad).unwrap_err();
        assert_eq!(e[0].path, path, "{bad}: {e:?}");
    }
    store.cleanup().await;
}

fn echo_toml() -> String {
    format!(
        "[services.echo]\ntoken_sha256 = \"{}\"\n",
        hex::encode(portcullis::link::hash_token(&token_for("echo")))
    )
}

/// Pipeline component tests: a key issued to a user (the store cannot issue one yet, so a
/// grant source sets the owner), and the capability registry following links.
mod pipeline {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    use portcullis::access::{
        Access, AccessParts, AccessSettings, CapabilityRegistry, GrantSource, Grants, Roles, Source,
    };
    use portcullis::audit::AuditSink;
    use portcullis::auth::authenticator::AuthSettings;
    use portcullis::auth::{ApiKeyAuthenticator, Authenticators, Identity, Pepper};
    use portcullis::body::GatewayBody;
    use portcullis::pipeline::{Limits, Operations, Parts, Pipeline, Policy};
    use portcullis::routing::{validate_endpoints, Instance, Registry, Tiers};
    use portcullis::telemetry::Metrics;
    use std::future::Future;
    use std::pin::Pin;
    use tower::ServiceExt;

    /// The authenticator's grants, with the key `key_id` issued to `user`.
    struct IssuedTo {
        auth: Arc<ApiKeyAuthenticator>,
        key_id: String,
        user: &'static str,
    }

    impl IssuedTo {
        fn own(&self, identity: &Identity, g: Arc<Grants>) -> Arc<Grants> {
            if *identity.via.id == *self.key_id {
                Arc::new((*g).clone().issued_to(Some(self.user)))
            } else {
                g
            }
        }
    }

    impl GrantSource for IssuedTo {
        fn grants<'a>(
            &'a self,
            identity: &'a Identity,
        ) -> Pin<Box<dyn Future<Output = Option<Arc<Grants>>> + Send + 'a>> {
            Box::pin(async move {
                let g = self.auth.grants(identity).await?;
                Some(self.own(identity, g))
            })
        }
        fn grants_now(&self, identity: &Identity) -> Option<Arc<Grants>> {
            let g = self.auth.grants_now(identity)?;
            Some(self.own(identity, g))
        }
        fn epoch(&self) -> u64 {
            self.auth.epoch()
        }
    }

    struct Harness {
        pipeline: Pipeline,
        access: Access,
        registry: Arc<Registry>,
        instance: Arc<Instance>,
        policy: Arc<MemoryPolicy>,
        users_key: String,
        _store: TestStore,
    }

    async fn harness() -> Harness {
        let ts = TestStore::sqlite();
        let store = ts.init().await;
        let pepper = Pepper::new(b"test-pepper-0123456789abcdef-0123456789".to_vec(), 1).unwrap();
        let auth = ApiKeyAuthenticator::new(store, pepper, AuthSettings::default());
        let issued = auth
            .create_key(
                &CreateKey {
                    workspace: "default".into(),
                    name: "bob's".into(),
                    scopes: vec!["echo.read".into()],
                    expires_in: None,
                    key_id: None,
                },
                "t",
            )
            .await
            .unwrap();

        let (gateway_io, service_io) = tokio::io::duplex(1 << 20);
        let router = echo_service::router(echo_service::Stats::default());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(service_io), TowerToHyperService::new(router))
                .await;
        });
        let (sender, conn) = h2::client::handshake(gateway_io).await.unwrap();
        tokio::spawn(conn);
        let capabilities = Arc::new(CapabilityRegistry::new());
        let registry = Arc::new(Registry::with_capabilities(
            Duration::from_secs(5),
            capabilities.clone(),
        ));
        let descriptors: Vec<_> = echo_service::endpoints()
            .into_iter()
            .map(|e| e.descriptor().clone())
            .collect();
        let instance = Arc::new(Instance::new(
            "echo".into(),
            "echo-1".into(),
            "l-test".into(),
            None,
            "1".into(),
            sender,
        ));
        registry
            .register(instance.clone(), validate_endpoints(&descriptors).unwrap())
            .unwrap();

        let metrics = Arc::new(Metrics::new(Vec::new()));
        let mut operations = Operations::default();
        operations.register(portcullis::health::operation(Arc::new(
            portcullis::health::Health::default(),
        )));
        operations.register_capabilities(&capabilities).unwrap();
        let policy = MemoryPolicy::new();
        let access = Access::with_parts(AccessParts {
            keys: Arc::new(IssuedTo {
                auth: auth.clone(),
                key_id: issued.record.key_id.clone(),
                user: "bob",
            }),
            policy: policy.clone(),
            roles: Roles::built_in(),
            capabilities,
            settings: AccessSettings::default(),
        });
        let pipeline = Pipeline::new(Parts {
            registry: registry.clone(),
            tiers: Tiers::default(),
            metrics: metrics.clone(),
            authenticators: Authenticators::new(auth.clone()),
            access: access.clone(),
            audit: AuditSink::new(metrics, auth),
            assertions: Arc::new(crate::pipeline::signer()),
            policy: Policy {
                limits: Limits {
                    max_in_flight: 100,
                    max_body_bytes: 1 << 20,
                    body_stall_timeout: std::time::Duration::from_secs(30),
                },
                operations,
            },
            keys: Arc::new(portcullis::auth::keyring::KeyRing::new(
                portcullis::auth::keyring::KeySet::default(),
                0,
            )),
        });
        Harness {
            pipeline,
            access,
            registry,
            instance,
            policy,
            users_key: issued.api_key,
            _store: ts,
        }
    }

    async fn call(p: &Pipeline, method: &str, path: &str, key: &str) -> StatusCode {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gateway.test")
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::from_static(b"hi")))
            .unwrap();
        let resp: http::Response<GatewayBody> = p.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let _ = body.collect().await;
        parts.status
    }

    #[tokio::test]
    async fn a_key_issued_to_a_user_has_the_users_roles_narrowed_by_its_scopes() {
        let h = harness().await;
        let p = &h.pipeline;
        let bob = SubjectRef::User("bob");
        // Not its scopes at home: the user's roles, and bob has none yet.
        assert_eq!(
            call(p, "GET", "/echo/x", &h.users_key).await,
            StatusCode::FORBIDDEN
        );
        h.policy.bind(bob, "writer", "*");
        h.access.invalidate();
        assert_eq!(
            call(p, "GET", "/echo/x", &h.users_key).await,
            StatusCode::OK
        );
        // The user may write; the key's scopes do not say so.
        assert_eq!(
            call(p, "POST", "/upload", &h.users_key).await,
            StatusCode::FORBIDDEN
        );
        h.policy.unbind(bob, "writer", "*");
        h.policy.bind(bob, "reader", "*");
        assert_eq!(
            call(p, "GET", "/echo/x", &h.users_key).await,
            StatusCode::OK,
            "cached"
        );
        h.access.invalidate();
        assert_eq!(
            call(p, "GET", "/echo/x", &h.users_key).await,
            StatusCode::OK
        );
        h.policy.set_unavailable(true);
        h.access.invalidate();
        assert_eq!(
            call(p, "GET", "/echo/x", &h.users_key).await,
            StatusCode::FORBIDDEN
        );
        h.policy.set_unavailable(false);
        assert_eq!(
            call(p, "GET", "/echo/x", &h.users_key).await,
            StatusCode::OK,
            "an error is never cached"
        );
    }

    #[tokio::test]
    async fn the_capability_registry_follows_linked_endpoints() {
        let h = harness().await;
        let caps = h.access.capabilities();
        let list = caps.list();
        let names: Vec<&str> = list.iter().map(|c| &*c.name).collect();
        assert_eq!(names, ["echo.read", "echo.write"]);
        assert_eq!(
            list[0].sources,
            [Source::Service {
                service: "echo".into(),
                instances: 1
            }]
        );
        assert_eq!(caps.public_operations(), ["health"]);
        h.registry.unregister(&h.instance);
        assert!(caps.list().is_empty());
    }
}
