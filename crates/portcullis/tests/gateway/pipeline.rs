//! Component tests of the call pipeline without sockets: the pipeline is a tower `Service`
//! driven with `oneshot`, and the linked service sits behind an HTTP/2 connection over
//! `tokio::io::duplex` (axum's and linkerd's testing style). Every phase runs as in the gateway:
//! early, resolve, authenticate (a real key against a SQLite store), authorise, dispatch over the
//! link, finish.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use portcullis::access::Access;
use portcullis::audit::AuditSink;
use portcullis::auth::authenticator::{AuthSettings, CreateKey};
use portcullis::auth::{ApiKeyAuthenticator, Authenticators, Pepper};
use portcullis::body::GatewayBody;
use portcullis::pipeline::{Limits, Operations, Parts, Pipeline, Policy};
use portcullis::routing::{validate_endpoints, Instance, Registry, Tiers};
use portcullis::store::testing::TestStore;
use portcullis::telemetry::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

struct Harness {
    pipeline: Pipeline,
    admin_key: String,
    reader_key: String,
    metrics: Arc<Metrics>,
    _store: TestStore,
}

/// A pipeline over a fresh store with two keys (`*` and `echo.write` only) and the echo
/// service linked over an in-memory HTTP/2 connection.
async fn harness(metrics_capability: Option<&str>, max_in_flight: usize) -> Harness {
    let ts = TestStore::sqlite();
    let store = ts.init().await;
    let pepper = Pepper::new(b"test-pepper-0123456789abcdef-0123456789".to_vec(), 1).unwrap();
    let auth = ApiKeyAuthenticator::new(store, pepper, AuthSettings::default());
    let key = |name: &str, scopes: &[&str]| CreateKey {
        workspace: "default".into(),
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_in: None,
        key_id: None,
    };
    let admin_key = auth
        .create_key(&key("admin", &["*"]), "t")
        .await
        .unwrap()
        .api_key;
    let reader_key = auth
        .create_key(&key("writer", &["echo.write"]), "t")
        .await
        .unwrap()
        .api_key;

    // The service half: the echo router served as HTTP/2 over one end of a duplex pipe.
    let (gateway_io, service_io) = tokio::io::duplex(1 << 20);
    let router = echo_service::router(echo_service::Stats::default());
    tokio::spawn(async move {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(service_io), TowerToHyperService::new(router))
            .await;
    });
    let (sender, conn) = h2::client::handshake(gateway_io).await.unwrap();
    tokio::spawn(conn);
    let registry = Arc::new(Registry::new(Duration::from_secs(5)));
    let descriptors: Vec<_> = echo_service::endpoints()
        .into_iter()
        .map(|e| e.descriptor().clone())
        .collect();
    registry
        .register(
            Arc::new(Instance::new(
                "echo".into(),
                "echo-1".into(),
                "l-test".into(),
                None,
                "1".into(),
                sender,
            )),
            validate_endpoints(&descriptors).unwrap(),
        )
        .unwrap();

    let metrics = Arc::new(Metrics::new(Vec::new()));
    let health = Arc::new(portcullis::health::Health::default());
    health.set_started();
    let mut operations = Operations::default();
    operations.register(portcullis::health::operation(health));
    operations.register(portcullis::telemetry::metrics::operation(
        metrics.clone(),
        metrics_capability.map(Into::into),
    ));
    let pipeline = Pipeline::new(Parts {
        registry,
        tiers: Tiers::default(),
        metrics: metrics.clone(),
        authenticators: Authenticators::new(auth.clone()),
        access: Access::new(auth.clone()),
        audit: AuditSink::new(metrics.clone(), auth.clone()),
        assertions: Arc::new(signer()),
        policy: Policy {
            limits: Limits {
                max_in_flight,
                max_body_bytes: 1 << 20,
                body_stall_timeout: Duration::from_secs(30),
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
        admin_key,
        reader_key,
        metrics,
        _store: ts,
    }
}

/// An assertion signer over one fresh key.
pub(crate) fn signer() -> portcullis::auth::assertion::AssertionSigner {
    use portcullis::auth::keyring::{KeyRing, KeySet, SigningKey};
    let key = SigningKey::generate(portcullis::store::now_ms())
        .unwrap()
        .key;
    let ring = KeyRing::new(KeySet::new(vec![Arc::new(key)]), 0);
    portcullis::auth::assertion::AssertionSigner::new(
        Arc::new(ring),
        "portcullis",
        portcullis::clock::Clock::system(),
        64,
    )
}

async fn call(
    p: &Pipeline,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp: http::Response<GatewayBody> = p
        .clone()
        .oneshot(req.body(Full::new(Bytes::from_static(b"hi"))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

#[tokio::test]
async fn every_phase_runs_without_a_socket() {
    let h = harness(None, 100).await;
    let p = &h.pipeline;

    let (status, headers, body) = call(p, "GET", "/echo/x", Some(&h.admin_key)).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(headers.contains_key("x-correlation-id"));
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        echoed["headers"].get("authorization").is_none(),
        "the credential never reaches the service"
    );

    // Authenticate: every refusal is the fixed 401, routed or not (no route enumeration).
    let (s1, _, b1) = call(p, "GET", "/echo/x", None).await;
    let (s2, _, b2) = call(p, "GET", "/no/such/path", None).await;
    let (s3, _, b3) = call(p, "GET", "/echo/x", Some("pcs_junk")).await;
    assert_eq!([s1, s2, s3], [StatusCode::UNAUTHORIZED; 3]);
    assert!(b1 == b2 && b2 == b3);

    // Authorise: a key without the route's capability gets the fixed 403.
    let (status, _, body) = call(p, "GET", "/echo/x", Some(&h.reader_key)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(&body[..], br#"{"error":"forbidden"}"#);

    // Unrouted paths answer 404/405 only once authenticated.
    let (status, _, _) = call(p, "GET", "/no/such/path", Some(&h.admin_key)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, headers, _) = call(p, "DELETE", "/stats", Some(&h.admin_key)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET");

    // Gateway operations: health is public.
    let (status, _, body) = call(p, "GET", "/health/live", None).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");

    // Finish: every call above was counted, and the refusals reached the audit metric.
    let text = h.metrics.encode();
    assert!(text.contains(r#"portcullis_requests_total{service="echo",route="/echo/{*rest}",method="GET",status="200"}"#), "{text}");
    assert!(
        text.contains(r#"portcullis_auth_failures_total{reason="forbidden"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"portcullis_auth_failures_total{reason="missing"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_metrics_capability_puts_metrics_behind_authenticate_and_authorise() {
    let h = harness(Some("metrics.read"), 100).await;
    let p = &h.pipeline;
    assert_eq!(
        call(p, "GET", "/metrics", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(p, "GET", "/metrics", Some(&h.reader_key)).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, headers, body) = call(p, "GET", "/metrics", Some(&h.admin_key)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    // Scrapes are not calls (they stay out of portcullis_requests_total); the gauge they
    // count in is there.
    assert!(String::from_utf8_lossy(&body).contains("portcullis_in_flight_calls"));
}

#[tokio::test]
async fn a_reloaded_policy_applies_to_the_next_call() {
    let h = harness(None, 100).await;
    let p = &h.pipeline;
    assert_eq!(
        call(p, "GET", "/metrics", None).await.0,
        StatusCode::OK,
        "open by default"
    );
    let metrics = h.metrics.clone();
    let mut operations = Operations::default();
    operations.register(portcullis::telemetry::metrics::operation(
        metrics,
        Some("metrics.read".into()),
    ));
    p.reload(Policy {
        limits: Limits {
            max_in_flight: 100,
            max_body_bytes: 1 << 20,
            body_stall_timeout: Duration::from_secs(30),
        },
        operations,
    });
    assert_eq!(
        call(p, "GET", "/metrics", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The reloaded table has no health operation: /health/live is now an unrouted path.
    assert_eq!(
        call(p, "GET", "/health/live", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_in_flight_slot_is_held_until_the_response_body_ends() {
    let h = harness(None, 1).await;
    let p = &h.pipeline;
    let req = Request::get("/stream?bytes=67108864")
        .header("host", "gw")
        .header("authorization", format!("Bearer {}", h.admin_key))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let streaming = p.clone().oneshot(req).await.unwrap();
    assert_eq!(streaming.status(), StatusCode::OK);
    assert_eq!(p.in_flight(), 1, "the body has not ended");
    let (status, _, _) = call(p, "GET", "/echo/x", Some(&h.admin_key)).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "shed while the body streams"
    );
    drop(streaming);
    assert_eq!(p.in_flight(), 0);
    assert_eq!(
        call(p, "GET", "/echo/x", Some(&h.admin_key)).await.0,
        StatusCode::OK
    );
}
