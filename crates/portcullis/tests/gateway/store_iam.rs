//! The IAM side of the store (schema v2) on SQLite and PostgreSQL alike
//! (`PORTCULLIS_TEST_POSTGRES_URL`; each test gets its own database): workspaces, users, role
//! bindings, signing keys, the login throttle, the migration from v1, and a key refused
//! through the real gateway once its workspace is disabled.

use crate::common::*;
use http::StatusCode;
use portcullis::auth::authenticator::{AuthSettings, CreateKey};
use portcullis::auth::{ApiKeyAuthenticator, AuthFailure, Pepper};
use portcullis::store::testing::TestStore;
use portcullis::store::{
    migrations, NewKeyRow, NewRoleBinding, NewSigningKey, NewUser, Redacted, Store, StoreError,
    SubjectKind, ThrottlePolicy, UserUpdate, WorkspaceUpdate, ADMIN_ROLE, ALL_WORKSPACES,
};
use sqlx::Row;
use std::time::Duration;

const UNAUTHORIZED: &[u8] = br#"{"error":"unauthorized"}"#;
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA";

fn pepper() -> Pepper {
    Pepper::new(b"test-pepper-0123456789abcdef-0123456789".to_vec(), 1).unwrap()
}

/// A connection of its own to the test's database, beside the store's pool.
async fn raw(ts: &TestStore) -> sqlx::AnyConnection {
    let url = match &ts.options.url {
        Some(u) => u.expose().to_string(),
        None => format!("sqlite://{}", ts.dir.path().join("portcullis.db").display()),
    };
    <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap()
}

fn new_user(workspace_id: &str, username: &str) -> NewUser {
    NewUser {
        workspace_id: workspace_id.into(),
        username: username.into(),
        display_name: Some(format!("{username} display")),
        password_hash: Redacted::new(HASH),
    }
}

/// A key row with a fresh secret: (row, raw key).
fn key_row(key_id: &str, workspace: &str, user_id: Option<&str>) -> (NewKeyRow, String) {
    let p = pepper();
    let k = portcullis::auth::key::generate(key_id);
    let row = NewKeyRow {
        secret_hmac: p.hash_secret(&k.key_id, &k.secret),
        pepper_version: p.version(),
        key_id: k.key_id.clone(),
        workspace: workspace.into(),
        user_id: user_id.map(String::from),
        name: "test".into(),
        scopes: vec!["*".into()],
        expires_at: None,
    };
    (row, k.raw)
}

fn binding(kind: SubjectKind, id: &str, role: &str, ws: &str) -> NewRoleBinding {
    NewRoleBinding {
        subject_kind: kind,
        subject_id: id.into(),
        role: role.into(),
        workspace_id: ws.into(),
    }
}

async fn events(store: &Store, n: i64) -> Vec<String> {
    let mut v: Vec<String> = store
        .audit_list(n)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    v.reverse();
    v
}

#[tokio::test]
async fn a_v1_database_migrates_to_v2_and_its_keys_keep_working() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let v1 = ts.init_at(1).await;
        assert_eq!(v1.schema_version().await.unwrap(), Some(1), "{k}");
        v1.close().await;
        // What a v1 binary wrote: a workspace and a key with its secret, in v1's columns.
        let p = pepper();
        let legacy = portcullis::auth::key::generate("legacy-key");
        let mut conn = raw(&ts).await;
        for (q, binds) in [
            (
                "INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, 1000)",
                vec!["ws_00000000000000aa", "default"],
            ),
            (
                "INSERT INTO api_keys (key_id, workspace_id, name, scopes, created_at)
                 VALUES ($1, $2, 'legacy', 'echo.read', 1000)",
                vec!["legacy-key", "ws_00000000000000aa"],
            ),
        ] {
            let mut query = sqlx::query(q);
            for b in binds {
                query = query.bind(b);
            }
            query.execute(&mut conn).await.unwrap();
        }
        sqlx::query(
            "INSERT INTO api_key_secrets (key_id, serial, secret_hmac, pepper_version, created_at)
             VALUES ($1, 1, $2, 1, 1000)",
        )
        .bind("legacy-key")
        .bind(hex::encode(p.hash_secret("legacy-key", &legacy.secret)))
        .execute(&mut conn)
        .await
        .unwrap();
        let _ = sqlx::Connection::close(conn).await;

        // The v2 binary opens it: migrated forward, nothing lost.
        let store = Store::open(&ts.options).await.unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            Some(migrations::LATEST),
            "{k}"
        );
        let auth = ApiKeyAuthenticator::new(store.clone(), pepper(), AuthSettings::default());
        let id = auth.authenticate(&legacy.raw).await.unwrap();
        assert_eq!(&*id.via.id, "legacy-key", "{k}");
        assert_eq!(&*id.workspace.name, "default", "{k}");
        let rec = store.key("legacy-key").await.unwrap().unwrap();
        assert_eq!(rec.user_id, None, "{k}: a key of its own");
        assert_eq!(rec.scopes, ["echo.read"], "{k}");
        let ws = store.workspace_by_name("default").await.unwrap().unwrap();
        assert_eq!(ws.id, "ws_00000000000000aa", "{k}");
        assert_eq!(ws.updated_at, 1000, "{k}: updated_at starts at created_at");
        assert_eq!((ws.display_name, ws.disabled_at), (None, None), "{k}");
        // The new tables are there and usable.
        let u = store
            .create_user(&new_user(&ws.id, "alice"), "test")
            .await
            .unwrap();
        assert!(store.list_signing_keys().await.unwrap().is_empty(), "{k}");
        assert!(!store.has_admin_binding().await.unwrap(), "{k}");
        assert_eq!(store.login_throttle_count().await.unwrap(), 0, "{k}");
        assert_eq!(store.user(&u.id).await.unwrap().unwrap().username, "alice");
        // Opening again migrates nothing.
        let again = store.migrate().await.unwrap();
        assert_eq!(
            (again.from, again.to),
            (Some(migrations::LATEST), migrations::LATEST),
            "{k}"
        );
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn a_schema_one_version_newer_is_refused_and_left_untouched() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let newer = migrations::LATEST + 1;
        let mut conn = raw(&ts).await;
        sqlx::query(
            "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, 'next', 0)",
        )
        .bind(newer)
        .execute(&mut conn)
        .await
        .unwrap();
        store.close().await;
        for attempt in [
            Store::open(&ts.options).await,
            Store::init(&ts.options).await,
        ] {
            let e = attempt.unwrap_err();
            assert!(
                matches!(e, StoreError::SchemaTooNew { found, supported }
                    if found == newer && supported == migrations::LATEST),
                "{k}: {e}"
            );
        }
        let v: i64 = sqlx::query("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, newer, "{k}");
        let _ = sqlx::Connection::close(conn).await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn workspaces_are_read_renamed_disabled_and_enabled_by_id() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let acme = store.create_workspace("acme", Some("test")).await.unwrap();
        assert_eq!(acme.updated_at, acme.created_at, "{k}");
        assert_eq!(store.workspace(&acme.id).await.unwrap(), Some(acme.clone()));
        assert_eq!(store.workspace("ws_nope").await.unwrap(), None, "{k}");

        let g0 = store.generation().await.unwrap();
        let renamed = store
            .update_workspace(
                &acme.id,
                &WorkspaceUpdate {
                    name: Some("acme-corp".into()),
                    display_name: Some(Some("  ACME Corp  ".into())),
                },
                "test",
            )
            .await
            .unwrap();
        assert_eq!(renamed.id, acme.id, "{k}: the id stays");
        assert_eq!(renamed.name, "acme-corp", "{k}");
        assert_eq!(renamed.display_name.as_deref(), Some("ACME Corp"), "{k}");
        assert!(store.generation().await.unwrap() > g0, "{k}: bumped");
        assert!(store.workspace_by_name("acme").await.unwrap().is_none());
        // Only the display name: the name stays; clearing it.
        let cleared = store
            .update_workspace(
                &acme.id,
                &WorkspaceUpdate {
                    display_name: Some(None),
                    ..Default::default()
                },
                "test",
            )
            .await
            .unwrap();
        assert_eq!(
            (cleared.name.as_str(), cleared.display_name),
            ("acme-corp", None)
        );

        let default = store.workspace_by_name("default").await.unwrap().unwrap();
        let rename = |name: &str| WorkspaceUpdate {
            name: Some(name.into()),
            ..Default::default()
        };
        assert!(matches!(
            store
                .update_workspace(&acme.id, &rename("default"), "test")
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store
                .update_workspace(&default.id, &rename("other"), "test")
                .await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store
                .update_workspace(&acme.id, &rename("Not Valid"), "test")
                .await,
            Err(StoreError::Invalid(_))
        ));
        let bad_display = WorkspaceUpdate {
            display_name: Some(Some("line\nbreak".into())),
            ..Default::default()
        };
        assert!(matches!(
            store.update_workspace(&acme.id, &bad_display, "test").await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store
                .update_workspace("ws_nope", &rename("x"), "test")
                .await,
            Err(StoreError::NotFound(_))
        ));

        let g1 = store.generation().await.unwrap();
        let off = store.disable_workspace(&acme.id, "test").await.unwrap();
        assert!(
            off.is_disabled() && off.updated_at >= renamed.updated_at,
            "{k}"
        );
        assert!(store.generation().await.unwrap() > g1, "{k}: bumped");
        assert!(matches!(
            store.disable_workspace(&acme.id, "test").await,
            Err(StoreError::Conflict(_))
        ));
        let listed = store.list_workspaces().await.unwrap();
        let flags: Vec<(&str, bool)> = listed
            .iter()
            .map(|w| (w.name.as_str(), w.is_disabled()))
            .collect();
        assert_eq!(flags, [("acme-corp", true), ("default", false)], "{k}");
        let on = store.enable_workspace(&acme.id, "test").await.unwrap();
        assert!(!on.is_disabled(), "{k}");
        assert!(matches!(
            store.enable_workspace(&acme.id, "test").await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.disable_workspace("ws_nope", "test").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            events(&store, 4).await,
            [
                "workspace_updated",
                "workspace_updated",
                "workspace_disabled",
                "workspace_enabled"
            ],
            "{k}"
        );
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn a_username_is_unique_in_its_workspace_and_free_in_another() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let default = store.workspace_by_name("default").await.unwrap().unwrap();
        let other = store.create_workspace("other", None).await.unwrap();
        let g0 = store.generation().await.unwrap();
        let alice = store
            .create_user(&new_user(&default.id, "alice"), "test")
            .await
            .unwrap();
        assert!(alice.id.starts_with("usr_") && alice.id.len() == 20, "{k}");
        assert_eq!(alice.workspace, "default", "{k}");
        assert_eq!(alice.password_changed_at, alice.created_at, "{k}");
        assert!(store.generation().await.unwrap() > g0, "{k}: bumped");
        assert!(matches!(
            store
                .create_user(&new_user(&default.id, "alice"), "test")
                .await,
            Err(StoreError::Conflict(_))
        ));
        let alice2 = store
            .create_user(&new_user(&other.id, "alice"), "test")
            .await
            .unwrap();
        assert_ne!(alice.id, alice2.id, "{k}");
        let found = store
            .user_by_username(&other.id, "alice")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.id, alice2.id, "{k}");
        assert!(store
            .user_by_username(&default.id, "bob")
            .await
            .unwrap()
            .is_none());
        store
            .create_user(&new_user(&default.id, "bob.b-1_x"), "test")
            .await
            .unwrap();
        let names: Vec<String> = store
            .list_users(&default.id)
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.username)
            .collect();
        assert_eq!(names, ["alice", "bob.b-1_x"], "{k}");
        assert_eq!(store.list_users(&other.id).await.unwrap().len(), 1, "{k}");
        // Racing creators of one username: one wins, the others are told it is taken.
        let dave = new_user(&other.id, "dave");
        let racing =
            futures_util::future::join_all((0..5).map(|_| store.create_user(&dave, "test"))).await;
        assert_eq!(racing.iter().filter(|r| r.is_ok()).count(), 1, "{k}");
        assert!(
            racing
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(StoreError::Conflict(_)))),
            "{k}: {racing:?}"
        );

        // Bad input.
        for bad in ["", "Alice", "-flag", ".hidden", "a b", &"x".repeat(65)] {
            assert!(
                matches!(
                    store.create_user(&new_user(&default.id, bad), "test").await,
                    Err(StoreError::Invalid(_))
                ),
                "{k}: {bad:?}"
            );
        }
        let mut plain = new_user(&default.id, "carol");
        plain.password_hash = Redacted::new("hunter2");
        assert!(matches!(
            store.create_user(&plain, "test").await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store
                .create_user(&new_user("ws_nope", "carol"), "test")
                .await,
            Err(StoreError::NotFound(_))
        ));
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn users_are_updated_disabled_enabled_and_change_password() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let ws = store.create_workspace("acme", None).await.unwrap();
        let u = store
            .create_user(&new_user(&ws.id, "alice"), "test")
            .await
            .unwrap();
        // The hash is neither printed nor serialised.
        assert!(!format!("{u:?}").contains("argon2"), "{k}");
        let json = serde_json::to_value(&u).unwrap();
        assert!(json.get("password_hash").is_none(), "{k}: {json}");
        assert_eq!(json["username"], "alice", "{k}");
        assert_eq!(u.password_hash.expose(), HASH, "{k}");

        let updated = store
            .update_user(
                &u.id,
                &UserUpdate {
                    display_name: Some(Some("Alice A.".into())),
                },
                "test",
            )
            .await
            .unwrap();
        assert_eq!(updated.display_name.as_deref(), Some("Alice A."), "{k}");
        let same = store
            .update_user(&u.id, &UserUpdate::default(), "test")
            .await
            .unwrap();
        assert_eq!(same.display_name.as_deref(), Some("Alice A."), "{k}");

        let q0 = store.verification_queries();
        let status = store.user_for_verification(&u.id).await.unwrap().unwrap();
        assert_eq!(store.verification_queries() - q0, 1, "{k}: counted");
        assert!(status.is_active(), "{k}");
        assert_eq!(
            (status.workspace.as_str(), status.username.as_str()),
            ("acme", "alice")
        );
        assert_eq!(status.password_changed_at, u.password_changed_at, "{k}");

        tokio::time::sleep(Duration::from_millis(5)).await;
        let new_hash = Redacted::new(HASH.replace("t=2", "t=3"));
        let changed = store
            .set_user_password_hash(&u.id, &new_hash, "alice")
            .await
            .unwrap();
        assert!(changed.password_changed_at > u.password_changed_at, "{k}");
        assert_eq!(changed.password_hash.expose(), new_hash.expose(), "{k}");
        let status = store.user_for_verification(&u.id).await.unwrap().unwrap();
        assert_eq!(status.password_changed_at, changed.password_changed_at);
        assert!(matches!(
            store
                .set_user_password_hash(&u.id, &Redacted::new("plain"), "alice")
                .await,
            Err(StoreError::Invalid(_))
        ));

        let off = store.disable_user(&u.id, "test").await.unwrap();
        assert!(off.is_disabled(), "{k}");
        assert!(matches!(
            store.disable_user(&u.id, "test").await,
            Err(StoreError::Conflict(_))
        ));
        let status = store.user_for_verification(&u.id).await.unwrap().unwrap();
        assert!(!status.is_active() && status.disabled_at.is_some(), "{k}");
        store.enable_user(&u.id, "test").await.unwrap();
        assert!(matches!(
            store.enable_user(&u.id, "test").await,
            Err(StoreError::Conflict(_))
        ));
        // The workspace's state reaches its users.
        store.disable_workspace(&ws.id, "test").await.unwrap();
        let status = store.user_for_verification(&u.id).await.unwrap().unwrap();
        assert!(
            !status.is_active() && status.disabled_at.is_none(),
            "{k}: the workspace, not the user"
        );
        assert!(status.workspace_disabled_at.is_some(), "{k}");
        assert_eq!(store.user_for_verification("usr_nope").await.unwrap(), None);
        assert!(matches!(
            store.disable_user("usr_nope", "test").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            events(&store, 6).await,
            [
                "user_updated",
                "user_updated",
                "user_password_changed",
                "user_disabled",
                "user_enabled",
                "workspace_disabled"
            ],
            "{k}"
        );
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn deleting_a_user_deletes_its_bindings_and_revokes_its_keys_at_once() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let ws = store.workspace_by_name("default").await.unwrap().unwrap();
        let other = store.create_workspace("other", None).await.unwrap();
        let u = store
            .create_user(&new_user(&ws.id, "alice"), "test")
            .await
            .unwrap();
        let (row, _) = key_row("alice-key", "default", Some(&u.id));
        let rec = store.insert_key(&row, "test").await.unwrap();
        assert_eq!(rec.user_id.as_deref(), Some(u.id.as_str()), "{k}");
        assert_eq!(store.list_user_keys(&u.id).await.unwrap().len(), 1, "{k}");
        // Keys of a user live in its workspace, exist only for users that exist and are
        // enabled.
        let (elsewhere, _) = key_row("alice-other", "other", Some(&u.id));
        assert!(matches!(
            store.insert_key(&elsewhere, "test").await,
            Err(StoreError::Invalid(_))
        ));
        let (nobody, _) = key_row("nobody-key", "default", Some("usr_nope"));
        assert!(matches!(
            store.insert_key(&nobody, "test").await,
            Err(StoreError::NotFound(_))
        ));
        // A key of its own with a binding: untouched by the deletion.
        let (own, _) = key_row("own-key", "default", None);
        store.insert_key(&own, "test").await.unwrap();
        store
            .grant_role(
                &binding(SubjectKind::Key, "own-key", "reader", &ws.id),
                "test",
            )
            .await
            .unwrap();
        store
            .grant_role(&binding(SubjectKind::User, &u.id, "writer", &ws.id), "test")
            .await
            .unwrap();
        store
            .grant_role(
                &binding(SubjectKind::User, &u.id, "reader", &other.id),
                "test",
            )
            .await
            .unwrap();

        let g0 = store.generation().await.unwrap();
        let deleted = store.delete_user(&u.id, "test").await.unwrap();
        assert!(store.generation().await.unwrap() > g0, "{k}: bumped");
        assert_eq!(deleted.user.id, u.id, "{k}");
        assert_eq!(deleted.revoked_keys, ["alice-key"], "{k}");
        assert_eq!(deleted.removed_bindings, 2, "{k}");
        assert!(store.user(&u.id).await.unwrap().is_none(), "{k}");
        assert!(store
            .list_role_bindings_for(SubjectKind::User, &u.id)
            .await
            .unwrap()
            .is_empty());
        let key = store.key("alice-key").await.unwrap().unwrap();
        assert!(key.revoked_at.is_some(), "{k}: revoked");
        assert_eq!(key.user_id, None, "{k}: detached from the deleted user");
        let own = store.key("own-key").await.unwrap().unwrap();
        assert!(own.revoked_at.is_none(), "{k}");
        assert_eq!(
            store
                .list_role_bindings_for(SubjectKind::Key, "own-key")
                .await
                .unwrap()
                .len(),
            1,
            "{k}"
        );
        let entries = store.audit_list(2).await.unwrap();
        assert_eq!(entries[0].event, "user_deleted", "{k}");
        assert_eq!(entries[1].event, "key_revoked", "{k}");
        assert_eq!(entries[1].key_id.as_deref(), Some("alice-key"), "{k}");
        assert!(matches!(
            store.delete_user(&u.id, "test").await,
            Err(StoreError::NotFound(_))
        ));
        // The username is free again.
        store
            .create_user(&new_user(&ws.id, "alice"), "test")
            .await
            .unwrap();
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn keys_are_refused_while_their_workspace_or_user_is_disabled() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let auth = ApiKeyAuthenticator::new(store.clone(), pepper(), AuthSettings::default());
        auth.poll_changes().await.unwrap();
        let ws = store.create_workspace("acme", None).await.unwrap();
        let u = store
            .create_user(&new_user(&ws.id, "alice"), "test")
            .await
            .unwrap();
        let (row, user_key) = key_row("alice-key", "acme", Some(&u.id));
        store.insert_key(&row, "test").await.unwrap();
        let (row, own_key) = key_row("acme-own", "acme", None);
        store.insert_key(&row, "test").await.unwrap();
        assert!(auth.authenticate(&user_key).await.is_ok(), "{k}");
        assert!(auth.authenticate(&own_key).await.is_ok(), "{k}");

        // The user disabled: its key is refused, the workspace's other key is not.
        store.disable_user(&u.id, "test").await.unwrap();
        let v = store
            .key_for_verification("alice-key", portcullis::store::now_ms())
            .await
            .unwrap()
            .unwrap();
        assert!(v.user_disabled_at.is_some() && v.is_disabled(), "{k}");
        assert!(v.workspace_disabled_at.is_none() && !v.user_missing, "{k}");
        auth.invalidate_all();
        assert_eq!(
            auth.authenticate(&user_key).await.unwrap_err(),
            AuthFailure::Disabled,
            "{k}"
        );
        assert!(auth.authenticate(&own_key).await.is_ok(), "{k}");
        // A wrong secret is still just wrong: the state is told only to the right secret.
        let wrong = portcullis::auth::key::format_key(
            "alice-key",
            &portcullis::auth::key::random_base62(30),
        );
        assert_eq!(
            auth.authenticate(&wrong).await.unwrap_err(),
            AuthFailure::Wrong,
            "{k}"
        );
        assert!(matches!(
            store
                .insert_key(&key_row("alice-2", "acme", Some(&u.id)).0, "test")
                .await,
            Err(StoreError::Conflict(_))
        ));
        store.enable_user(&u.id, "test").await.unwrap();
        auth.invalidate_all();
        assert!(auth.authenticate(&user_key).await.is_ok(), "{k}");

        // The workspace disabled: every key in it, and no other.
        store.disable_workspace(&ws.id, "test").await.unwrap();
        assert!(
            auth.poll_changes().await.unwrap(),
            "{k}: the change is seen"
        );
        for key in [&user_key, &own_key] {
            assert_eq!(
                auth.authenticate(key).await.unwrap_err(),
                AuthFailure::Disabled,
                "{k}"
            );
        }
        assert_eq!(AuthFailure::Disabled.as_str(), "disabled");
        let (row, default_key) = key_row("default-key", "default", None);
        store.insert_key(&row, "test").await.unwrap();
        assert!(auth.authenticate(&default_key).await.is_ok(), "{k}");
        store.enable_workspace(&ws.id, "test").await.unwrap();
        auth.poll_changes().await.unwrap();
        assert!(auth.authenticate(&own_key).await.is_ok(), "{k}");
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn role_bindings_are_granted_listed_and_revoked() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let ws = store.workspace_by_name("default").await.unwrap().unwrap();
        let other = store.create_workspace("other", None).await.unwrap();
        let u = store
            .create_user(&new_user(&ws.id, "alice"), "test")
            .await
            .unwrap();
        let bob = store
            .create_user(&new_user(&other.id, "bob"), "test")
            .await
            .unwrap();
        assert!(!store.has_admin_binding().await.unwrap(), "{k}");

        let g0 = store.generation().await.unwrap();
        let reader = store
            .grant_role(
                &binding(SubjectKind::User, &u.id, "reader", &ws.id),
                "admin-1",
            )
            .await
            .unwrap();
        assert!(store.generation().await.unwrap() > g0, "{k}: bumped");
        assert!(reader.id.starts_with("rb_"), "{k}");
        assert_eq!(reader.workspace.as_deref(), Some("default"), "{k}");
        assert_eq!(reader.created_by, "admin-1", "{k}");
        assert!(!reader.is_global() && reader.applies_in(&ws.id) && !reader.applies_in(&other.id));
        // Granting it again is a conflict, and writes nothing.
        let audit_rows = store.audit_count().await.unwrap();
        assert!(matches!(
            store
                .grant_role(&binding(SubjectKind::User, &u.id, "reader", &ws.id), "test")
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.audit_count().await.unwrap(), audit_rows, "{k}");
        let admin = store
            .grant_role(
                &binding(SubjectKind::User, &u.id, ADMIN_ROLE, ALL_WORKSPACES),
                "test",
            )
            .await
            .unwrap();
        assert!(admin.is_global() && admin.applies_in(&other.id), "{k}");
        assert_eq!(admin.workspace, None, "{k}");
        assert!(store.has_admin_binding().await.unwrap(), "{k}");
        store
            .grant_role(
                &binding(SubjectKind::User, &bob.id, "writer", &other.id),
                "test",
            )
            .await
            .unwrap();

        let mine = store
            .list_role_bindings_for(SubjectKind::User, &u.id)
            .await
            .unwrap();
        let mut roles: Vec<&str> = mine.iter().map(|b| b.role.as_str()).collect();
        roles.sort();
        assert_eq!(roles, ["admin", "reader"], "{k}");
        // In a workspace: its own bindings and those for every workspace.
        let mut in_default: Vec<(String, String)> = store
            .list_role_bindings_in(&ws.id)
            .await
            .unwrap()
            .into_iter()
            .map(|b| (b.role, b.workspace_id))
            .collect();
        in_default.sort();
        assert_eq!(
            in_default,
            [
                ("admin".to_string(), "*".to_string()),
                ("reader".to_string(), ws.id.clone())
            ],
            "{k}"
        );
        let mut in_other: Vec<String> = store
            .list_role_bindings_in(&other.id)
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.role)
            .collect();
        in_other.sort();
        assert_eq!(in_other, ["admin", "writer"], "{k}");
        let global = store.list_role_bindings_in(ALL_WORKSPACES).await.unwrap();
        assert_eq!(global.len(), 1, "{k}");
        assert_eq!(global[0].id, admin.id, "{k}");
        let found = store
            .find_role_binding(SubjectKind::User, &u.id, "reader", &ws.id)
            .await
            .unwrap();
        assert_eq!(found.as_ref().map(|b| &b.id), Some(&reader.id), "{k}");

        // Bad grants.
        for (new, what) in [
            (
                binding(SubjectKind::User, "usr_nope", "reader", &ws.id),
                "no such user",
            ),
            (
                binding(SubjectKind::Key, "no-such-key", "reader", &ws.id),
                "no such key",
            ),
            (
                binding(SubjectKind::User, &u.id, "reader", "ws_nope"),
                "no such workspace",
            ),
        ] {
            assert!(
                matches!(
                    store.grant_role(&new, "test").await,
                    Err(StoreError::NotFound(_))
                ),
                "{k}: {what}"
            );
        }
        for role in ["", "Reader", "9lives", "a b", &"r".repeat(65)] {
            assert!(
                matches!(
                    store
                        .grant_role(&binding(SubjectKind::User, &u.id, role, &ws.id), "test")
                        .await,
                    Err(StoreError::Invalid(_))
                ),
                "{k}: {role:?}"
            );
        }
        // A key issued to a user acts with the user's roles: none of its own.
        let (row, _) = key_row("alice-key", "default", Some(&u.id));
        store.insert_key(&row, "test").await.unwrap();
        assert!(matches!(
            store
                .grant_role(
                    &binding(SubjectKind::Key, "alice-key", "reader", &ws.id),
                    "test"
                )
                .await,
            Err(StoreError::Invalid(_))
        ));
        // A key of its own may hold roles.
        let (row, _) = key_row("ci-key", "default", None);
        store.insert_key(&row, "test").await.unwrap();
        let ci = store
            .grant_role(
                &binding(SubjectKind::Key, "ci-key", "writer", &ws.id),
                "test",
            )
            .await
            .unwrap();
        let entry = &store.audit_list(1).await.unwrap()[0];
        assert_eq!(
            (entry.event.as_str(), entry.key_id.as_deref()),
            ("role_granted", Some("ci-key")),
            "{k}"
        );
        assert_eq!(ci.subject_kind, SubjectKind::Key, "{k}");
        assert_eq!(
            serde_json::to_value(&ci).unwrap()["subject_kind"],
            "key",
            "{k}"
        );

        let g1 = store.generation().await.unwrap();
        let gone = store.revoke_role(&admin.id, "test").await.unwrap();
        assert_eq!(gone.id, admin.id, "{k}");
        assert!(store.generation().await.unwrap() > g1, "{k}: bumped");
        assert!(!store.has_admin_binding().await.unwrap(), "{k}");
        assert!(matches!(
            store.revoke_role(&admin.id, "test").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.audit_list(1).await.unwrap()[0].event, "role_revoked");
        assert_eq!(
            store.audit_list(1).await.unwrap()[0].workspace.as_deref(),
            Some("*"),
            "{k}"
        );
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn the_first_admin_user_is_made_only_while_no_admin_exists() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let ws = store.workspace_by_name("default").await.unwrap().unwrap();
        // Racing bootstraps: one wins.
        let roots = ["root", "root-a", "root-b"].map(|name| new_user(&ws.id, name));
        let racing = futures_util::future::join_all(
            roots.iter().map(|u| store.bootstrap_admin_user(u, "cli")),
        )
        .await;
        let mut won: Vec<_> = racing.into_iter().filter_map(Result::ok).collect();
        assert_eq!(won.len(), 1, "{k}");
        let (user, b) = won.remove(0);
        assert_eq!(store.list_users(&ws.id).await.unwrap().len(), 1, "{k}");
        assert_eq!(
            (b.role.as_str(), b.workspace_id.as_str()),
            (ADMIN_ROLE, "*")
        );
        assert_eq!(b.subject_id, user.id, "{k}");
        assert_eq!(
            events(&store, 2).await,
            ["bootstrap", "role_granted"],
            "{k}"
        );
        assert!(matches!(
            store
                .bootstrap_admin_user(&new_user(&ws.id, "root2"), "cli")
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert!(store
            .user_by_username(&ws.id, "root2")
            .await
            .unwrap()
            .is_none());
        // Once the admin is gone, bootstrap works again; an admin key counts as an admin.
        store.delete_user(&user.id, "cli").await.unwrap();
        let (row, _) = key_row("admin-key", "default", None);
        let admin_key = store.insert_key(&row, "cli").await.unwrap();
        assert!(matches!(
            store
                .bootstrap_admin_user(&new_user(&ws.id, "root"), "cli")
                .await,
            Err(StoreError::Conflict(_))
        ));
        store.revoke_key(&admin_key.key_id, "cli").await.unwrap();
        store
            .bootstrap_admin_user(&new_user(&ws.id, "root"), "cli")
            .await
            .unwrap();
        store.close().await;
        ts.cleanup().await;
    }
}

fn signing(kid: &str, byte: u8) -> NewSigningKey {
    NewSigningKey {
        kid: kid.into(),
        public_key: [byte; 32],
        private_key_sealed: Redacted::new(format!("sealed-v1.{kid}.opaque")),
        pepper_version: 1,
    }
}

#[tokio::test]
async fn signing_keys_are_inserted_listed_retired_rotated_and_purged() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let g0 = store.generation().await.unwrap();
        let first = store
            .insert_signing_key(&signing("k1", 1), "test")
            .await
            .unwrap();
        assert!(store.generation().await.unwrap() > g0, "{k}: bumped");
        assert_eq!(first.algorithm, "EdDSA", "{k}");
        assert_eq!(first.public_key, [1; 32], "{k}");
        assert!(!first.is_retired() && first.verifies_at(i64::MAX), "{k}");
        assert_eq!(first.private_key_sealed.expose(), "sealed-v1.k1.opaque");
        assert!(!format!("{first:?}").contains("sealed-v1"), "{k}");
        let json = serde_json::to_value(&first).unwrap();
        assert!(json.get("private_key_sealed").is_none(), "{k}: {json}");
        assert_eq!(json["public_key"], "01".repeat(32), "{k}");
        assert!(matches!(
            store.insert_signing_key(&signing("k1", 2), "test").await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store
                .insert_signing_key(&signing("bad kid", 2), "test")
                .await,
            Err(StoreError::Invalid(_))
        ));
        let mut empty = signing("k-empty", 2);
        empty.private_key_sealed = Redacted::new("");
        assert!(matches!(
            store.insert_signing_key(&empty, "test").await,
            Err(StoreError::Invalid(_))
        ));
        tokio::time::sleep(Duration::from_millis(5)).await;
        store
            .insert_signing_key(&signing("k2", 2), "test")
            .await
            .unwrap();
        let kids = |v: &[portcullis::store::SigningKey]| -> Vec<String> {
            v.iter().map(|s| s.kid.clone()).collect()
        };
        assert_eq!(
            kids(&store.list_signing_keys().await.unwrap()),
            ["k2", "k1"]
        );

        // Retire: it signs no more; tokens it signed verify until not_after.
        let now = portcullis::store::now_ms();
        let retired = store
            .retire_signing_key("k1", now + 60_000, "test")
            .await
            .unwrap();
        assert!(retired.is_retired(), "{k}");
        assert_eq!(retired.not_after, Some(now + 60_000), "{k}");
        assert!(
            retired.verifies_at(now) && !retired.verifies_at(now + 60_000),
            "{k}"
        );
        assert!(matches!(
            store.retire_signing_key("k1", now, "test").await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.retire_signing_key("nope", now, "test").await,
            Err(StoreError::NotFound(_))
        ));

        // Rotate: the unretired key retires, the new one signs.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (k3, was) = store
            .rotate_signing_key(&signing("k3", 3), now + 120_000, "test")
            .await
            .unwrap();
        assert_eq!(kids(&was), ["k2"], "{k}");
        assert_eq!(was[0].not_after, Some(now + 120_000), "{k}");
        assert!(!k3.is_retired(), "{k}");
        let all = store.list_signing_keys().await.unwrap();
        assert_eq!(kids(&all), ["k3", "k2", "k1"], "{k}");
        let signers: Vec<&str> = all
            .iter()
            .filter(|s| !s.is_retired())
            .map(|s| s.kid.as_str())
            .collect();
        assert_eq!(signers, ["k3"], "{k}: one key signs");

        // Purge: only keys past not_after; nothing to purge writes nothing.
        let g1 = store.generation().await.unwrap();
        assert!(store
            .delete_expired_signing_keys(now, "test")
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.generation().await.unwrap(), g1, "{k}: not bumped");
        let deleted = store
            .delete_expired_signing_keys(now + 60_001, "test")
            .await
            .unwrap();
        assert_eq!(deleted, ["k1"], "{k}");
        assert!(store.generation().await.unwrap() > g1, "{k}: bumped");
        assert!(store.signing_key("k1").await.unwrap().is_none(), "{k}");
        assert_eq!(
            kids(&store.list_signing_keys().await.unwrap()),
            ["k3", "k2"],
            "{k}"
        );
        assert_eq!(
            events(&store, 6).await,
            [
                "signing_key_created",
                "signing_key_created",
                "signing_key_retired",
                "signing_key_retired",
                "signing_key_created",
                "signing_key_deleted"
            ],
            "{k}"
        );
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test]
async fn the_login_throttle_counts_locks_clears_and_purges() {
    for ts in TestStore::all().await {
        let k = ts.kind;
        let store = ts.init().await;
        let policy = ThrottlePolicy {
            window: Duration::from_secs(60),
            max_failures: 3,
            lockout: Duration::from_secs(300),
        };
        let g0 = store.generation().await.unwrap();
        let t0 = 1_000_000_000;
        let key = "ws:alice-hash";
        assert_eq!(store.login_throttle(key).await.unwrap(), None, "{k}");
        let s1 = store.record_login_failure(key, t0, &policy).await.unwrap();
        assert_eq!(
            (s1.failures, s1.window_started_at, s1.locked_until),
            (1, t0, None),
            "{k}"
        );
        let s2 = store
            .record_login_failure(key, t0 + 1_000, &policy)
            .await
            .unwrap();
        assert_eq!((s2.failures, s2.locked_until), (2, None), "{k}");
        let s3 = store
            .record_login_failure(key, t0 + 2_000, &policy)
            .await
            .unwrap();
        assert_eq!(s3.failures, 3, "{k}");
        assert_eq!(s3.locked_until, Some(t0 + 2_000 + 300_000), "{k}: locked");
        assert!(
            s3.is_locked(t0 + 3_000) && !s3.is_locked(t0 + 302_000),
            "{k}"
        );
        assert_eq!(store.login_throttle(key).await.unwrap(), Some(s3.clone()));
        // Past the window but still locked: counted, and the lock extends.
        let s4 = store
            .record_login_failure(key, t0 + 70_000, &policy)
            .await
            .unwrap();
        assert_eq!(s4.failures, 4, "{k}");
        assert_eq!(s4.window_started_at, t0, "{k}");
        assert_eq!(s4.locked_until, Some(t0 + 70_000 + 300_000), "{k}");
        // Window over and lock passed: a new window.
        let later = t0 + 70_000 + 300_000;
        let s5 = store
            .record_login_failure(key, later, &policy)
            .await
            .unwrap();
        assert_eq!(
            (s5.failures, s5.window_started_at, s5.locked_until),
            (1, later, None),
            "{k}"
        );
        // Success clears.
        assert!(store.clear_login_throttle(key).await.unwrap(), "{k}");
        assert!(!store.clear_login_throttle(key).await.unwrap(), "{k}");
        assert_eq!(store.login_throttle(key).await.unwrap(), None, "{k}");
        // One failure may be enough.
        let strict = ThrottlePolicy {
            max_failures: 1,
            ..policy
        };
        let s = store
            .record_login_failure("strict", t0, &strict)
            .await
            .unwrap();
        assert_eq!(s.locked_until, Some(t0 + 300_000), "{k}");

        // Concurrent failures all count (one atomic statement each).
        let tries = futures_util::future::join_all(
            (0..20).map(|i| store.record_login_failure("flood", t0 + i, &policy)),
        )
        .await;
        for t in tries {
            t.unwrap();
        }
        let flood = store.login_throttle("flood").await.unwrap().unwrap();
        assert_eq!(flood.failures, 20, "{k}");
        assert!(flood.is_locked(t0 + 20), "{k}");

        // Throttle writes do not drop every node's caches.
        assert_eq!(store.generation().await.unwrap(), g0, "{k}: not bumped");

        // Purge: stale rows (window over, no lock in force) go; locked or fresh ones stay.
        store.clear_login_throttle("strict").await.unwrap();
        store.clear_login_throttle("flood").await.unwrap();
        store
            .record_login_failure("stale", t0, &policy)
            .await
            .unwrap();
        store
            .record_login_failure("locked", t0, &strict)
            .await
            .unwrap();
        store
            .record_login_failure("fresh", t0 + 100_000, &policy)
            .await
            .unwrap();
        let now = t0 + 120_000;
        assert_eq!(
            store
                .purge_login_throttle(now, policy.window, 1_000)
                .await
                .unwrap(),
            1,
            "{k}"
        );
        assert!(store.login_throttle("stale").await.unwrap().is_none());
        assert!(store.login_throttle("locked").await.unwrap().is_some());
        assert!(store.login_throttle("fresh").await.unwrap().is_some());
        // The cap: the oldest windows go first.
        for i in 0..10 {
            store
                .record_login_failure(&format!("many-{i}"), now + i, &policy)
                .await
                .unwrap();
        }
        assert_eq!(store.login_throttle_count().await.unwrap(), 12, "{k}");
        let gone = store
            .purge_login_throttle(now, policy.window, 4)
            .await
            .unwrap();
        assert_eq!(gone, 8, "{k}");
        assert_eq!(store.login_throttle_count().await.unwrap(), 4, "{k}");
        for i in 6..10 {
            assert!(
                store
                    .login_throttle(&format!("many-{i}"))
                    .await
                    .unwrap()
                    .is_some(),
                "{k}: the newest stay"
            );
        }

        // Bad input.
        for bad in [String::new(), "k".repeat(257)] {
            assert!(matches!(
                store.record_login_failure(&bad, t0, &policy).await,
                Err(StoreError::Invalid(_))
            ));
        }
        let never = ThrottlePolicy {
            max_failures: 0,
            ..policy
        };
        assert!(matches!(
            store.record_login_failure("x", t0, &never).await,
            Err(StoreError::Invalid(_))
        ));
        store.close().await;
        ts.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_a_disabled_workspace_gets_the_fixed_401() {
    for ts in TestStore::all().await {
        let gw = TestGateway::start_on(config_with_services(&["echo"]), ts).await;
        let kind = gw.store.as_ref().unwrap().kind;
        let (_svc, _) = gw.echo("echo-1").await;
        let store = gw.auth.store().clone();
        let acme = store.create_workspace("acme", Some("test")).await.unwrap();
        let acme_key = gw
            .auth
            .create_key(
                &CreateKey {
                    workspace: "acme".into(),
                    name: "acme".into(),
                    scopes: vec!["*".into()],
                    expires_in: None,
                    key_id: None,
                },
                "test",
            )
            .await
            .unwrap()
            .api_key;
        let (status, _, _) = gw.get_with_key("/echo/x", Some(&acme_key)).await;
        assert_eq!(status, StatusCode::OK, "{kind}");

        // This node sees the change at its next poll; poll here rather than wait for one.
        gw.auth.poll_changes().await.unwrap();
        store.disable_workspace(&acme.id, "test").await.unwrap();
        assert!(
            gw.auth.poll_changes().await.unwrap(),
            "{kind}: the change is seen"
        );
        let (status, headers, body) = gw.get_with_key("/echo/x", Some(&acme_key)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{kind}");
        assert_eq!(&body[..], UNAUTHORIZED, "{kind}: the fixed body");
        assert_eq!(headers["www-authenticate"], "Bearer", "{kind}");
        // Byte-identical to an unknown key's refusal.
        let unknown = portcullis::auth::key::generate("no-such-key").raw;
        let (_, _, unknown_body) = gw.get_with_key("/echo/x", Some(&unknown)).await;
        assert_eq!(body, unknown_body, "{kind}");
        // The reason reaches the metric, not the client.
        let (_, _, m) = gw.get("/metrics").await;
        let m = String::from_utf8_lossy(&m);
        assert!(
            m.lines()
                .any(|l| l.starts_with("portcullis_auth_failures_total{reason=\"disabled\"}")),
            "{kind}: {m}"
        );
        // Other workspaces are untouched.
        let (status, _, _) = gw.get("/echo/x").await;
        assert_eq!(status, StatusCode::OK, "{kind}");
        // Enabled again: accepted again.
        store.enable_workspace(&acme.id, "test").await.unwrap();
        gw.auth.poll_changes().await.unwrap();
        let (status, _, _) = gw.get_with_key("/echo/x", Some(&acme_key)).await;
        assert_eq!(status, StatusCode::OK, "{kind}");
        gw.shutdown().await;
    }
}
