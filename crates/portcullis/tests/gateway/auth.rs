//! Authentication on ingress, end to end through the gateway, on SQLite and PostgreSQL:
//! every refusal is the same fixed 401, a missing capability the fixed 403, keys in query
//! strings are never accepted, rotation overlaps, revocation is immediate, the store failing
//! closes the door (503), and health stays open.

use crate::common::*;
use http::StatusCode;
use portcullis::auth::authenticator::CreateKey;
use portcullis::store::testing::TestStore;
use std::time::Duration;

const UNAUTHORIZED: &[u8] = br#"{"error":"unauthorized"}"#;
const FORBIDDEN: &[u8] = br#"{"error":"forbidden"}"#;

/// One gateway per store kind, with the echo service linked.
async fn gateways() -> Vec<(TestGateway, portcullis_sdk::Running)> {
    let mut out = Vec::new();
    for store in TestStore::all().await {
        let gw = TestGateway::start_on(config_with_services(&["echo"]), store).await;
        let (svc, _) = gw.echo("echo-1").await;
        out.push((gw, svc));
    }
    out
}

fn assert_401(kind: &str, case: &str, r: &(StatusCode, http::HeaderMap, bytes::Bytes)) {
    assert_eq!(r.0, StatusCode::UNAUTHORIZED, "{kind}/{case}");
    assert_eq!(&r.2[..], UNAUTHORIZED, "{kind}/{case}: body");
    assert_eq!(r.1["www-authenticate"], "Bearer", "{kind}/{case}");
    assert_eq!(r.1["content-type"], "application/json", "{kind}/{case}");
}

fn failures(metrics: &str, reason: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "portcullis_auth_failures_total{{reason=\"{reason}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_the_same_fixed_401() {
    for (gw, _svc) in gateways().await {
        let kind = gw.store.as_ref().unwrap().kind;
        let (ok, _, _) = gw.get("/echo/x").await;
        assert_eq!(ok, StatusCode::OK, "{kind}");

        let (revoked_id, revoked) = gw.create_key("to revoke", &["*"]).await;
        gw.auth.revoke(&revoked_id, "test").await.unwrap();
        let expired = gw
            .auth
            .create_key(
                &CreateKey {
                    workspace: "default".into(),
                    name: "short".into(),
                    scopes: vec!["*".into()],
                    expires_in: Some(Duration::from_millis(1)),
                    key_id: None,
                },
                "test",
            )
            .await
            .unwrap()
            .api_key;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let wrong = portcullis::auth::key::format_key(
            gw.key_id(),
            &portcullis::auth::key::random_base62(30),
        );
        let unknown = portcullis::auth::key::generate("no-such-key").raw;
        let mut bad_checksum = gw.api_key().to_string();
        let last = bad_checksum.pop().unwrap();
        bad_checksum.push(if last == 'a' { 'b' } else { 'a' });

        let mut bodies = Vec::new();
        for (case, header) in [
            ("missing", None),
            ("not bearer", Some(format!("Basic {}", gw.api_key()))),
            ("malformed", Some("Bearer not-a-key".to_string())),
            ("bad checksum", Some(format!("Bearer {bad_checksum}"))),
            ("unknown", Some(format!("Bearer {unknown}"))),
            ("revoked", Some(format!("Bearer {revoked}"))),
            ("expired", Some(format!("Bearer {expired}"))),
            ("wrong secret", Some(format!("Bearer {wrong}"))),
        ] {
            let mut req = http::Request::get(gw.url("/echo/x"));
            if let Some(h) = header {
                req = req.header("authorization", h);
            }
            let resp = gw
                .client
                .inner
                .request(req.body(empty()).unwrap())
                .await
                .unwrap();
            let r = collect(resp).await;
            assert_401(kind, case, &r);
            bodies.push(r.2);
        }
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "{kind}: byte-identical"
        );

        // Unrouted paths are refused before routing: no route enumeration without a key.
        let r = gw.get_with_key("/nope", None).await;
        assert_401(kind, "unrouted", &r);

        // The reasons reach the metric (and the audit log, tested in store.rs).
        let (_, _, m) = gw.get("/metrics").await;
        let m = String::from_utf8_lossy(&m);
        for reason in [
            "missing",
            "malformed",
            "unknown",
            "revoked",
            "expired",
            "wrong",
        ] {
            assert!(failures(&m, reason) >= 1, "{kind}: {reason} counted\n{m}");
        }
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_the_capability_gets_the_fixed_403() {
    for (gw, _svc) in gateways().await {
        let kind = gw.store.as_ref().unwrap().kind;
        let (_, reader) = gw.create_key("reader", &["echo.read"]).await;
        let (status, _, _) = gw.get_with_key("/echo/x", Some(&reader)).await;
        assert_eq!(status, StatusCode::OK, "{kind}");
        let req = http::Request::post(gw.url("/upload"))
            .header("authorization", format!("Bearer {reader}"))
            .body(full(b"data"))
            .unwrap();
        let (status, headers, body) = collect(gw.client.inner.request(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind}");
        assert_eq!(&body[..], FORBIDDEN, "{kind}");
        assert!(headers.get("www-authenticate").is_none());
        // The test key has `*`.
        let (status, _, _) = gw.send("POST", "/upload", b"data").await;
        assert_eq!(status, StatusCode::OK, "{kind}");
        let (_, _, m) = gw.get("/metrics").await;
        assert!(
            failures(&String::from_utf8_lossy(&m), "forbidden") >= 1,
            "{kind}"
        );
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_the_query_string_is_never_accepted() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = gw.echo("echo-1").await;
    for q in ["api_key", "key", "access_token", "token"] {
        let r = gw
            .get_with_key(&format!("/echo/x?{q}={}", gw.api_key()), None)
            .await;
        assert_401("sqlite", q, &r);
    }
    // And the service never sees the credential when it was accepted from the header.
    let (_, _, body) = gw.get("/echo/x").await;
    assert!(json(&body)["headers"].get("authorization").is_none());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metadata_carries_the_key_and_refusals_are_grpc_statuses() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = gw.echo("echo-1").await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let (_, reader) = gw.create_key("reader", &["nothing.useful"]).await;
    // Refusals are trailers-only gRPC responses: HTTP 200, `grpc-status` in the head, no body.
    for (key, grpc_status, message) in [
        (None, Some("16"), "unauthenticated"),
        (Some(reader), Some("7"), "permission denied"),
        (Some(gw.api_key().to_string()), None, ""),
    ] {
        let mut req = http::Request::post(gw.url("/echo/pkg.Svc/Method"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let resp = h2
            .request(req.body(full(b"\0\0\0\0\x00")).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap()),
            grpc_status
        );
        if grpc_status.is_some() {
            assert_eq!(resp.headers()["content-type"], "application/grpc");
            assert_eq!(resp.headers()["grpc-message"], message);
            let (_, _, body) = collect(resp).await;
            assert!(body.is_empty());
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_secret_until_the_overlap_ends() {
    for (gw, _svc) in gateways().await {
        let kind = gw.store.as_ref().unwrap().kind;
        let (id, old) = gw.create_key("rotating", &["*"]).await;
        assert_eq!(
            gw.get_with_key("/echo/x", Some(&old)).await.0,
            StatusCode::OK
        );
        // An overlap far longer than the test: no deadline to race on a slow machine.
        let (new, _) = gw
            .auth
            .rotate(&id, Duration::from_secs(3600), "test")
            .await
            .unwrap();
        // During the overlap both work.
        assert_eq!(
            gw.get_with_key("/echo/x", Some(&old)).await.0,
            StatusCode::OK,
            "{kind}"
        );
        assert_eq!(
            gw.get_with_key("/echo/x", Some(&new.api_key)).await.0,
            StatusCode::OK,
            "{kind}"
        );
        // A short overlap: after it, only the secret that rotation issued.
        let (newer, _) = gw
            .auth
            .rotate(&id, Duration::from_millis(1), "test")
            .await
            .unwrap();
        for earlier in [old.clone(), new.api_key.clone()] {
            eventually("earlier secrets expire with the overlap", || {
                let gw = &gw;
                let earlier = earlier.clone();
                async move {
                    gw.get_with_key("/echo/x", Some(&earlier)).await.0 == StatusCode::UNAUTHORIZED
                }
            })
            .await;
        }
        assert_eq!(
            gw.get_with_key("/echo/x", Some(&newer.api_key)).await.0,
            StatusCode::OK,
            "{kind}"
        );
        // `--overlap 0`: the previous secret is refused on the very next call.
        let (newest, _) = gw.auth.rotate(&id, Duration::ZERO, "test").await.unwrap();
        assert_401(
            kind,
            "overlap 0",
            &gw.get_with_key("/echo/x", Some(&newer.api_key)).await,
        );
        assert_eq!(
            gw.get_with_key("/echo/x", Some(&newest.api_key)).await.0,
            StatusCode::OK,
            "{kind}"
        );
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_takes_effect_at_once() {
    for (gw, _svc) in gateways().await {
        let kind = gw.store.as_ref().unwrap().kind;
        let (id, key) = gw.create_key("revoked soon", &["*"]).await;
        // Verified and cached.
        for _ in 0..3 {
            assert_eq!(
                gw.get_with_key("/echo/x", Some(&key)).await.0,
                StatusCode::OK
            );
        }
        gw.auth.revoke(&id, "test").await.unwrap();
        assert_401(
            kind,
            "revoked",
            &gw.get_with_key("/echo/x", Some(&key)).await,
        );

        // Revoked by another process (the CLI): refused within the poll interval.
        let (id2, key2) = gw.create_key("revoked elsewhere", &["*"]).await;
        assert_eq!(
            gw.get_with_key("/echo/x", Some(&key2)).await.0,
            StatusCode::OK
        );
        let opts = gw.store.as_ref().unwrap().options.clone();
        let cli = portcullis::store::Store::open(&opts).await.unwrap();
        cli.revoke_key(&id2, "cli").await.unwrap();
        cli.close().await;
        eventually("a revocation by another process is seen", || {
            let gw = &gw;
            let key2 = key2.clone();
            async move { gw.get_with_key("/echo/x", Some(&key2)).await.0 == StatusCode::UNAUTHORIZED }
        })
        .await;
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_open_metrics_can_require_a_scope() {
    let mut cfg = config_with_services(&["echo"]);
    cfg.auth.metrics_scope = Some("metrics.read".into());
    let gw = TestGateway::start(cfg).await;
    let (status, _, body) = gw.get_with_key("/health/ready", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["checks"]["store"], "ok");
    assert_eq!(
        gw.get_with_key("/health/live", None).await.0,
        StatusCode::OK
    );
    assert_401(
        "sqlite",
        "metrics",
        &gw.get_with_key("/metrics", None).await,
    );
    let (_, plain) = gw.create_key("no metrics", &["echo.read"]).await;
    let (status, _, body) = gw.get_with_key("/metrics", Some(&plain)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(&body[..], FORBIDDEN);
    let (_, scraper) = gw.create_key("scraper", &["metrics.read"]).await;
    let (status, _, body) = gw.get_with_key("/metrics", Some(&scraper)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("portcullis_auth_failures_total"));
    gw.shutdown().await;

    // Default: /metrics open.
    let gw = TestGateway::with_services(&[]).await;
    assert_eq!(gw.get_with_key("/metrics", None).await.0, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_closed_with_503() {
    let gw = TestGateway::with_services(&["echo"]).await;
    let (_svc, _) = gw.echo("echo-1").await;
    let (_, key) = gw.create_key("never cached", &["*"]).await;
    gw.auth.store().close().await;
    let (status, headers, body) = gw.get_with_key("/echo/x", Some(&key)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&body[..], br#"{"error":"unavailable"}"#);
    assert!(headers.get("retry-after").is_some());
    let (status, _, body) = gw.get_with_key("/health/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["checks"]["store"], "unavailable");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_a_newer_schema() {
    for store in TestStore::all().await {
        let kind = store.kind;
        let mut cfg = config_with_services(&[]);
        cfg.data_dir = store.data_dir();
        cfg.store.url = store.options.url.clone();
        portcullis::admin::init(&cfg).await.unwrap();
        let s = portcullis::store::Store::open(&store.options)
            .await
            .unwrap();
        // Simulate a database a newer binary migrated.
        let url = match &store.options.url {
            Some(u) => u.expose().to_string(),
            None => format!(
                "sqlite://{}",
                store.dir.path().join("portcullis.db").display()
            ),
        };
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (42, 'future', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let _ = sqlx::Connection::close(conn).await;
        s.close().await;
        let e = portcullis::Running::start(cfg)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("newer than this binary"), "{kind}: {e}");
        assert!(e.contains("42"), "{kind}: {e}");
        store.cleanup().await;
    }
}
