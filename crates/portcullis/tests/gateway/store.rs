//! The store and the authenticator against SQLite and PostgreSQL alike
//! (`PORTCULLIS_TEST_POSTGRES_URL`; each test gets its own database).

use portcullis::auth::authenticator::{AuthSettings, CreateKey};
use portcullis::auth::{ApiKeyAuthenticator, AuthFailure, Pepper};
use portcullis::store::testing::TestStore;
use portcullis::store::{migrations, AuditEvent, Store, StoreError};
use std::time::Duration;

fn pepper() -> Pepper {
    Pepper::new(b"test-pepper-0123456789abcdef-0123456789".to_vec(), 1).unwrap()
}

fn create(scopes: &[&str]) -> CreateKey {
    CreateKey {
        workspace: "default".into(),
        name: "test".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_in: None,
        key_id: None,
    }
}

#[tokio::test]
async fn migrations_are_versioned_and_idempotent() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        // Not initialised: open refuses and says what to do.
        let e = Store::open(&ts.options).await.unwrap_err();
        assert!(e.to_string().contains("portcullis init"), "{k}: {e}");
        let store = ts.init().await;
        assert_eq!(
            store.schema_version().await.unwrap(),
            Some(migrations::LATEST),
            "{k}"
        );
        let again = store.migrate().await.unwrap();
        assert_eq!(again.from, Some(migrations::LATEST), "{k}");
        assert_eq!(again.to, migrations::LATEST, "{k}");
        let ws = store.list_workspaces().await.unwrap();
        assert_eq!(ws.len(), 1, "{k}");
        assert_eq!(ws[0].name, "default", "{k}");
        // Init twice is fine and creates nothing new.
        let store2 = Store::init(&ts.options).await.unwrap();
        assert_eq!(store2.list_workspaces().await.unwrap().len(), 1, "{k}");
        store.close().await;
        store2.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_untouched() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        store
            .audit_append(&AuditEvent {
                event: "key_created",
                actor: "test".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        // A future binary migrated this database further.
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&match &ts.options.url {
            Some(u) => u.expose().to_string(),
            None => format!("sqlite://{}", ts.dir.path().join("portcullis.db").display()),
        })
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (999, 'future', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let _ = sqlx::Connection::close(conn).await;
        store.close().await;

        for attempt in [
            Store::open(&ts.options).await,
            Store::init(&ts.options).await,
        ] {
            let e = attempt.unwrap_err();
            assert!(
                matches!(e, StoreError::SchemaTooNew { found: 999, supported } if supported == migrations::LATEST),
                "{k}: {e}"
            );
            assert!(e.to_string().contains("newer than this binary"), "{k}: {e}");
        }
        // Nothing was written: same version, same rows.
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&match &ts.options.url {
            Some(u) => u.expose().to_string(),
            None => format!("sqlite://{}", ts.dir.path().join("portcullis.db").display()),
        })
        .await
        .unwrap();
        use sqlx::Row;
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM audit_log")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{k}");
        let v: i64 = sqlx::query("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, 999, "{k}");
        let _ = sqlx::Connection::close(conn).await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn keys_verify_rotate_revoke_and_expire() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let auth = ApiKeyAuthenticator::new(store.clone(), pepper(), AuthSettings::default());
        let issued = auth
            .create_key(&create(&["echo.read"]), "test")
            .await
            .unwrap();
        let raw = issued.api_key.clone();
        let id = auth.authenticate(&raw).await.unwrap();
        assert_eq!(&*id.via.id, issued.record.key_id, "{k}");
        assert_eq!(&*id.workspace.name, "default", "{k}");
        // The identity carries no policy; the key's scopes are its grants, read by access.
        let access = portcullis::access::Access::new(auth.clone());
        let echo = portcullis::access::Resource::Service {
            service: "echo",
            workspace: &id.workspace.id,
        };
        assert_eq!(
            access.authorise(&id, "echo.read", echo).await,
            portcullis::access::Decision::Allow,
            "{k}"
        );
        assert_eq!(
            access.authorise(&id, "echo.write", echo).await,
            portcullis::access::Decision::Deny(portcullis::access::DenyReason::Capability),
            "{k}"
        );
        // Cached now; a wrong secret for the same id is still wrong.
        assert_eq!(auth.cached_keys(), 1, "{k}");
        let wrong = portcullis::auth::key::format_key(
            &issued.record.key_id,
            &portcullis::auth::key::random_base62(30),
        );
        assert_eq!(
            auth.authenticate(&wrong).await.unwrap_err(),
            AuthFailure::Wrong,
            "{k}"
        );
        // Unknown id, malformed.
        let unknown = portcullis::auth::key::generate("no-such-key").raw;
        assert_eq!(
            auth.authenticate(&unknown).await.unwrap_err(),
            AuthFailure::Unknown,
            "{k}"
        );
        assert_eq!(
            auth.authenticate("pcs_junk").await.unwrap_err(),
            AuthFailure::Malformed,
            "{k}"
        );
        // A different pepper cannot verify the key.
        let other = ApiKeyAuthenticator::new(
            store.clone(),
            Pepper::new(b"another-pepper-0123456789abcdef-012345".to_vec(), 1).unwrap(),
            AuthSettings::default(),
        );
        assert_eq!(
            other.authenticate(&raw).await.unwrap_err(),
            AuthFailure::Wrong,
            "{k}"
        );

        // Rotation with overlap: both work until the overlap ends.
        let (rotated, until) = auth
            .rotate(&issued.record.key_id, Duration::from_secs(3600), "test")
            .await
            .unwrap();
        assert!(until > portcullis::store::now_ms(), "{k}");
        assert!(auth.authenticate(&raw).await.is_ok(), "{k}");
        assert!(auth.authenticate(&rotated.api_key).await.is_ok(), "{k}");
        // Rotation without overlap: the previous secrets stop at once.
        let (third, _) = auth
            .rotate(&issued.record.key_id, Duration::ZERO, "test")
            .await
            .unwrap();
        assert_eq!(
            auth.authenticate(&raw).await.unwrap_err(),
            AuthFailure::Wrong,
            "{k}"
        );
        assert_eq!(
            auth.authenticate(&rotated.api_key).await.unwrap_err(),
            AuthFailure::Wrong,
            "{k}"
        );
        assert!(auth.authenticate(&third.api_key).await.is_ok(), "{k}");

        // Revocation: at once, despite the cache.
        auth.revoke(&issued.record.key_id, "test").await.unwrap();
        assert_eq!(
            auth.authenticate(&third.api_key).await.unwrap_err(),
            AuthFailure::Revoked,
            "{k}"
        );
        assert!(matches!(
            auth.revoke(&issued.record.key_id, "test").await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            auth.rotate(&issued.record.key_id, Duration::ZERO, "test")
                .await,
            Err(StoreError::Conflict(_))
        ));

        // Expiry.
        let mut short = create(&["*"]);
        short.expires_in = Some(Duration::from_millis(1));
        let short = auth.create_key(&short, "test").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            auth.authenticate(&short.api_key).await.unwrap_err(),
            AuthFailure::Expired,
            "{k}"
        );

        // Last used: recorded off the request path, on flush.
        let fresh = auth.create_key(&create(&["a"]), "test").await.unwrap();
        assert!(fresh.record.last_used_at.is_none());
        auth.authenticate(&fresh.api_key).await.unwrap();
        auth.flush_last_used().await.unwrap();
        let rec = store.key(&fresh.record.key_id).await.unwrap().unwrap();
        assert!(rec.last_used_at.is_some(), "{k}");

        // Bad input.
        assert!(matches!(
            auth.create_key(&create(&["Not A Scope"]), "test").await,
            Err(StoreError::Invalid(_))
        ));
        let mut nows = create(&["a"]);
        nows.workspace = "nope".into();
        assert!(matches!(
            auth.create_key(&nows, "test").await,
            Err(StoreError::NotFound(_))
        ));
        let mut dup = create(&["a"]);
        dup.key_id = Some(fresh.record.key_id.clone());
        assert!(matches!(
            auth.create_key(&dup, "test").await,
            Err(StoreError::Conflict(_))
        ));
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn changes_from_another_process_invalidate_the_cache() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let gateway = ApiKeyAuthenticator::new(store.clone(), pepper(), AuthSettings::default());
        gateway.poll_changes().await.unwrap();
        let issued = gateway.create_key(&create(&["a"]), "test").await.unwrap();
        gateway.authenticate(&issued.api_key).await.unwrap();
        assert_eq!(gateway.cached_keys(), 1);
        // The CLI revokes through its own connection to the store.
        let cli = Store::open(&ts.options).await.unwrap();
        cli.revoke_key(&issued.record.key_id, "cli").await.unwrap();
        assert!(gateway.poll_changes().await.unwrap(), "{k}");
        assert_eq!(gateway.cached_keys(), 0, "{k}");
        assert_eq!(
            gateway.authenticate(&issued.api_key).await.unwrap_err(),
            AuthFailure::Revoked,
            "{k}"
        );
        cli.close().await;
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn bootstrap_only_without_an_admin_key() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let p = pepper();
        let req = create(&["*"]);
        assert!(!store.has_admin_key().await.unwrap(), "{k}");
        let first = portcullis::auth::authenticator::create_key(&store, &p, &req, "cli", true)
            .await
            .unwrap();
        assert!(first.record.is_admin());
        let again =
            portcullis::auth::authenticator::create_key(&store, &p, &req, "cli", true).await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{k}");
        // Once the admin key is revoked, bootstrap works again.
        store.revoke_key(&first.record.key_id, "cli").await.unwrap();
        assert!(
            portcullis::auth::authenticator::create_key(&store, &p, &req, "cli", true)
                .await
                .is_ok(),
            "{k}"
        );
        let events: Vec<String> = store
            .audit_list(10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(events, ["bootstrap", "key_revoked", "bootstrap"], "{k}");
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn the_audit_log_is_bounded() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        for i in 0..250 {
            store
                .audit_append(&AuditEvent {
                    event: "auth_failure",
                    actor: "gateway".into(),
                    reason: Some(format!("r{i}")),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let deleted = store.audit_trim(100).await.unwrap();
        assert_eq!(deleted, 150, "{k}");
        assert_eq!(store.audit_count().await.unwrap(), 100, "{k}");
        let newest = store.audit_list(1).await.unwrap();
        assert_eq!(newest[0].reason.as_deref(), Some("r249"), "{k}");
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn failures_are_audited_coalesced_off_the_request_path() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let auth = ApiKeyAuthenticator::new(store.clone(), pepper(), AuthSettings::default());
        // Reporting only queues (a synchronous, non-blocking call): with the writer not yet
        // started, nothing has reached the store.
        for _ in 0..500 {
            assert!(auth.report_failure("malformed", None, None, None));
        }
        auth.report_failure("unknown", Some("abcd"), None, None);
        assert_eq!(
            store.audit_count().await.unwrap(),
            0,
            "{k}: written off the request path"
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let task = auth.start(stop.clone());
        stop.cancel();
        task.await.unwrap();
        let entries = store.audit_list(100).await.unwrap();
        let malformed: Vec<_> = entries
            .iter()
            .filter(|e| e.reason.as_deref() == Some("malformed"))
            .collect();
        assert!(
            !malformed.is_empty() && malformed.len() <= 2,
            "{k}: {malformed:?}"
        );
        let total: u64 = malformed
            .iter()
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(e.detail.as_deref().unwrap()).unwrap()
                    ["count"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        assert_eq!(total, 500, "{k}");
        assert!(
            entries
                .iter()
                .any(|e| e.reason.as_deref() == Some("unknown")
                    && e.key_id.as_deref() == Some("abcd"))
        );
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn the_verification_cache_is_bounded() {
    for ts in TestStore::all().await {
        let store = ts.init().await;
        let settings = AuthSettings {
            cache_capacity: 2,
            ..AuthSettings::default()
        };
        let auth = ApiKeyAuthenticator::new(store.clone(), pepper(), settings);
        let mut keys = Vec::new();
        for _ in 0..5 {
            keys.push(
                auth.create_key(&create(&["a"]), "test")
                    .await
                    .unwrap()
                    .api_key,
            );
        }
        for k in &keys {
            auth.authenticate(k).await.unwrap();
            assert!(auth.cached_keys() <= 2, "{}", ts.kind);
        }
        // Every key still verifies, cached or not.
        for k in &keys {
            auth.authenticate(k).await.unwrap();
        }
        store.close().await;
        ts.cleanup().await;
    }
}

/// Settings for the lookup tests: the defaults, with `f` applied.
fn settings(f: impl FnOnce(&mut AuthSettings)) -> AuthSettings {
    let mut s = AuthSettings::default();
    f(&mut s);
    s
}

#[tokio::test]
async fn an_unknown_key_id_costs_one_store_query_and_a_key_created_later_verifies() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let auth = ApiKeyAuthenticator::new(store.clone(), pepper(), AuthSettings::default());
        auth.poll_changes().await.unwrap();

        // One try after another: the first asks the store, the rest are answered by the
        // negative cache.
        let unknown = portcullis::auth::key::generate("made-here-later").raw;
        let before = store.verification_queries();
        for _ in 0..20 {
            assert_eq!(
                auth.authenticate(&unknown).await.unwrap_err(),
                AuthFailure::Unknown,
                "{k}"
            );
        }
        assert_eq!(store.verification_queries() - before, 1, "{k}: one query");
        assert_eq!(auth.cached_unknown_ids(), 1, "{k}");

        // Twenty at once: they share one lookup.
        let racing = portcullis::auth::key::generate("twenty-at-once").raw;
        let before = store.verification_queries();
        let tries = futures_util::future::join_all((0..20).map(|_| auth.authenticate(&racing)));
        for r in tries.await {
            assert_eq!(r.unwrap_err(), AuthFailure::Unknown, "{k}");
        }
        assert_eq!(store.verification_queries() - before, 1, "{k}: one query");

        // Created through this authenticator after the negative entry: verifies at once.
        let mut req = create(&["a"]);
        req.key_id = Some("made-here-later".into());
        let made = auth.create_key(&req, "test").await.unwrap();
        assert!(auth.authenticate(&made.api_key).await.is_ok(), "{k}");

        // Created by another process (the CLI) after the negative entry: verifies once the
        // change generation is polled.
        let elsewhere = portcullis::auth::key::generate("made-elsewhere").raw;
        assert_eq!(
            auth.authenticate(&elsewhere).await.unwrap_err(),
            AuthFailure::Unknown,
            "{k}"
        );
        let cli = Store::open(&ts.options).await.unwrap();
        let mut req = create(&["a"]);
        req.key_id = Some("made-elsewhere".into());
        let made = portcullis::auth::authenticator::create_key(&cli, &pepper(), &req, "cli", false)
            .await
            .unwrap();
        assert!(auth.poll_changes().await.unwrap(), "{k}");
        assert_eq!(auth.cached_unknown_ids(), 0, "{k}");
        assert!(auth.authenticate(&made.api_key).await.is_ok(), "{k}");
        cli.close().await;
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn a_key_is_refused_as_expired_once_the_wall_clock_passes_its_expiry() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let wall = portcullis::clock::ManualClock::starting_now();
        let auth = ApiKeyAuthenticator::new(
            store.clone(),
            pepper(),
            settings(|s| s.clock = wall.clock()),
        );
        let mut req = create(&["*"]);
        req.expires_in = Some(Duration::from_secs(3600));
        let issued = auth.create_key(&req, "test").await.unwrap();
        assert_eq!(
            issued.record.expires_at,
            Some(wall.now_ms() + 3_600_000),
            "{k}: the lifetime starts on the authenticator's clock"
        );
        assert!(auth.authenticate(&issued.api_key).await.is_ok(), "{k}");
        wall.advance(Duration::from_secs(3599));
        assert!(auth.authenticate(&issued.api_key).await.is_ok(), "{k}");
        // Cached or not, the expiry is checked on every call.
        wall.advance(Duration::from_secs(1));
        assert_eq!(
            auth.authenticate(&issued.api_key).await.unwrap_err(),
            AuthFailure::Expired,
            "{k}"
        );
        auth.invalidate_all();
        assert_eq!(
            auth.authenticate(&issued.api_key).await.unwrap_err(),
            AuthFailure::Expired,
            "{k}: and from the store"
        );
        store.close().await;
        ts.cleanup().await;
    }
}

/// Run `f` with tokio's clock running. The database drivers await other threads and
/// sockets while their own timers (pool acquire deadline, reaper) and the lookup deadline are
/// pending; a paused clock would jump to those timers and fire them, so store I/O runs
/// unpaused and only `tokio::time::advance` moves the clock by the amounts under test.
async fn unpaused<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::resume();
    let out = f.await;
    tokio::time::pause();
    out
}

#[tokio::test(start_paused = true)]
async fn cache_entries_live_their_ttl_on_tokios_clock() {
    let ttl = Duration::from_secs(30);
    let negative_ttl = Duration::from_secs(60);
    for ts in unpaused(TestStore::all()).await {
        let k = ts.kind;
        let store = unpaused(ts.init()).await;
        let auth = ApiKeyAuthenticator::new(
            store.clone(),
            pepper(),
            settings(|s| {
                s.cache_ttl = ttl;
                s.negative_cache_ttl = negative_ttl;
            }),
        );
        let issued = unpaused(auth.create_key(&create(&["a"]), "test"))
            .await
            .unwrap();
        let unknown = portcullis::auth::key::generate("never-made").raw;
        let q0 = store.verification_queries();
        unpaused(async {
            auth.authenticate(&issued.api_key).await.unwrap();
            auth.authenticate(&unknown).await.unwrap_err();
        })
        .await;
        assert_eq!(store.verification_queries() - q0, 2, "{k}");

        // Half the TTL (the unpaused store calls take far less than the other half).
        tokio::time::advance(ttl / 2).await;
        auth.authenticate(&issued.api_key).await.unwrap();
        auth.authenticate(&unknown).await.unwrap_err();
        assert_eq!(store.verification_queries() - q0, 2, "{k}: both cached");

        // Past the positive TTL, within the negative one.
        tokio::time::advance(ttl).await;
        unpaused(async {
            auth.authenticate(&issued.api_key).await.unwrap();
            auth.authenticate(&unknown).await.unwrap_err();
        })
        .await;
        assert_eq!(store.verification_queries() - q0, 3, "{k}: the key again");

        // Past the negative TTL.
        tokio::time::advance(negative_ttl).await;
        unpaused(async {
            auth.authenticate(&unknown).await.unwrap_err();
        })
        .await;
        assert_eq!(
            store.verification_queries() - q0,
            4,
            "{k}: the unknown id again"
        );
        unpaused(async {
            store.close().await;
            ts.cleanup().await;
        })
        .await;
    }
}

fn pairing_request(
    pk: u8,
    service: &str,
    instance: &str,
    now: i64,
) -> portcullis::store::PairingRequest {
    portcullis::store::PairingRequest {
        public_key: hex::encode([pk; 32]),
        fingerprint: format!("SHA256:test{pk}"),
        service: service.into(),
        instance_id: instance.into(),
        now,
        ttl_ms: 60_000,
        max_pending: 2,
    }
}

#[tokio::test]
async fn pairings_pend_lapse_and_are_decided_once_on_both_stores() {
    use portcullis::store::{LinkKeyState, PairingOutcome};
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let t0 = 1_000_000;
        let PairingOutcome::Pending(a) = store
            .request_pairing(&pairing_request(1, "echo", "echo-1", t0))
            .await
            .unwrap()
        else {
            panic!("{k}: not pending")
        };
        let code = a.code.clone().unwrap();
        assert!(portcullis_link::valid_pairing_code(&code), "{k}: {code}");
        assert_eq!(a.expires_at, Some(t0 + 60_000), "{k}");
        // Asking again while pending: the same pairing.
        let again = store
            .request_pairing(&pairing_request(1, "echo", "echo-1", t0 + 10))
            .await
            .unwrap();
        assert_eq!(again, PairingOutcome::Pending(a.clone()), "{k}");
        // The same key for another service is not pairable.
        assert!(
            matches!(
                store
                    .request_pairing(&pairing_request(1, "other", "o-1", t0))
                    .await
                    .unwrap(),
                PairingOutcome::Known(_)
            ),
            "{k}"
        );
        // Bounded: two pending, the third waits.
        assert!(matches!(
            store
                .request_pairing(&pairing_request(2, "echo", "echo-2", t0))
                .await
                .unwrap(),
            PairingOutcome::Pending(_)
        ));
        assert_eq!(
            store
                .request_pairing(&pairing_request(3, "echo", "echo-3", t0))
                .await
                .unwrap(),
            PairingOutcome::Full,
            "{k}"
        );
        assert_eq!(store.count_pending_pairings(t0).await.unwrap(), 2, "{k}");
        // Approve binds to the instance when asked; a code works once.
        let approved = store
            .decide_pairing(&code, true, true, t0 + 20, "cli")
            .await
            .unwrap();
        assert_eq!(approved.state, LinkKeyState::Approved, "{k}");
        assert_eq!(approved.bound_instance.as_deref(), Some("echo-1"), "{k}");
        assert!(approved.code.is_none(), "{k}");
        assert!(
            approved.admits("echo", "echo-1") && !approved.admits("echo", "echo-9"),
            "{k}"
        );
        assert!(matches!(
            store
                .decide_pairing(&code, true, false, t0 + 30, "cli")
                .await,
            Err(StoreError::NotFound(_))
        ));
        // An approved key is known, not re-paired.
        assert!(matches!(
            store
                .request_pairing(&pairing_request(1, "echo", "echo-1", t0))
                .await
                .unwrap(),
            PairingOutcome::Known(_)
        ));
        // Lapsed pairings cannot be approved and free their place.
        let later = t0 + 60_001;
        let pending2 = store
            .link_key(&hex::encode([2u8; 32]))
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            store
                .decide_pairing(pending2.code.as_deref().unwrap(), true, false, later, "cli")
                .await,
            Err(StoreError::Conflict(_))
        ));
        let PairingOutcome::Pending(third) = store
            .request_pairing(&pairing_request(3, "echo", "echo-3", later))
            .await
            .unwrap()
        else {
            panic!("{k}: the lapsed pairing still counts")
        };
        // Deny is final.
        let denied = store
            .decide_pairing(third.code.as_deref().unwrap(), false, false, later, "cli")
            .await
            .unwrap();
        assert_eq!(denied.state, LinkKeyState::Denied, "{k}");
        assert!(matches!(
            store.request_pairing(&pairing_request(3, "echo", "echo-3", later)).await.unwrap(),
            PairingOutcome::Known(d) if d.state == LinkKeyState::Denied
        ));
        // Revoking an instance ends its key's trust; its next request pairs again.
        let revoked = store
            .revoke_instance_keys("echo", "echo-1", "admin", later, "cli")
            .await
            .unwrap();
        assert_eq!(revoked.len(), 1, "{k}");
        assert_eq!(revoked[0].state, LinkKeyState::Revoked, "{k}");
        assert!(matches!(
            store.request_pairing(&pairing_request(1, "echo", "echo-1", later)).await.unwrap(),
            PairingOutcome::Pending(p) if p.code.is_some() && p.bound_instance.is_none()
        ));
        let events: Vec<String> = store
            .audit_list(20)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        for e in ["pairing_approved", "pairing_denied", "link_key_revoked"] {
            assert!(events.iter().any(|x| x == e), "{k}: {e} in {events:?}");
        }
        store
            .record_pairing_webhook(&hex::encode([1u8; 32]), later, "failed", Some("503"))
            .await
            .unwrap();
        let w = store
            .link_key(&hex::encode([1u8; 32]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                w.webhook_state.as_deref(),
                w.webhook_error.as_deref(),
                w.webhook_attempts
            ),
            (Some("failed"), Some("503"), 1),
            "{k}"
        );
        store.close().await;
        ts.cleanup().await;
    }
}
