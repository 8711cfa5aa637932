//! The IAM REST API under `/api/v1/iam/`: the operations of [`crate::iam`] over JSON, for a
//! caller the pipeline has already authenticated.
//!
//! | method and path | capability, in the workspace acted on |
//! |---|---|
//! | `GET /api/v1/iam/workspaces`, `GET …/workspaces/{ws}` | `iam.workspaces.read` (`*` for the list) |
//! | `POST …/workspaces`, `PATCH …/workspaces/{ws}`, `POST …/workspaces/{ws}/disable`, `…/enable` | `iam.workspaces.write` (`*` to create) |
//! | `GET …/users?workspace=W`, `GET …/users/{id}` | `iam.users.read` |
//! | `POST …/users`, `PATCH …/users/{id}`, `DELETE …/users/{id}`, `POST …/users/{id}/disable`, `…/enable`, `…/reset-password` | `iam.users.write` |
//! | `GET …/role-bindings?subject=S` or `?workspace=W` | `iam.roles.read` |
//! | `POST …/role-bindings`, `DELETE …/role-bindings/{id}` | `iam.roles.write` |
//! | `GET …/keys` (the caller's own), `POST …/keys` (one for the caller), `POST …/keys/{id}/revoke`, `POST …/keys/{id}/rotate` (its own) | none beyond being a user |
//! | `GET …/keys?workspace=W`, `POST …/keys` with `user`, `POST …/keys/{id}/revoke` or `/rotate` of another's key | `iam.keys.read` / `iam.keys.write` |
//! | `GET …/pairings[?pending=true]` | `iam.pairings.read` in `*` |
//! | `GET …/services` (linked instances, their links, state, RTT, in flight, credential) | `iam.services.read` in `*` |
//! | `POST …/pairings/{code}/approve` (body `{"bind_instance": bool}`, optional), `POST …/pairings/{code}/deny`, `POST …/pairings/revoke` (body `{"service": S, "instance": I}`) | `iam.pairings.write` in `*` |
//!
//! **Workspaces are enforced here the same way as on routed calls**: the workspace an
//! operation acts on is read from its path or body (a user's workspace, a binding's workspace,
//! `*` for what spans every workspace) and the caller is authorised *in that workspace* with
//! [`Access::authorise`] — the one decision of the gateway, with its cache and fail-closed
//! rule. A denial is the fixed 403; its reason goes to the audit sink. Whether something
//! exists in a workspace the caller may not read is not revealed: the check comes first,
//! and a name that does not resolve answers 404 only to a caller who may read there.
//!
//! Bodies are JSON objects of at most 8 KiB with unknown fields refused; errors are
//! `{"error": message}` with 400, 404 or 409 (never a secret, never a hash).

use axum::extract::{Extension, Path, Query, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::StatusCode;
use serde::Deserialize;
use std::sync::Arc;

use crate::access::registry::{
    IAM_KEYS_READ, IAM_KEYS_WRITE, IAM_PAIRINGS_READ, IAM_PAIRINGS_WRITE, IAM_ROLES_READ,
    IAM_ROLES_WRITE, IAM_SERVICES_READ, IAM_USERS_READ, IAM_USERS_WRITE, IAM_WORKSPACES_READ,
    IAM_WORKSPACES_WRITE,
};
use crate::access::{Access, Decision, Resource};
use crate::admin::{AdminError, ErrorKind};
use crate::admin::{Issuance, IssuedKeyView, KeyList, KeyView};
use crate::audit::{AuditSink, Refusal};
use crate::auth::authenticator::CreateKey;
use crate::auth::login::{json_body, json_body_or_empty, rescued};
use crate::auth::password::{Password, PasswordHasher};
use crate::auth::ApiKeyAuthenticator;
use crate::error::GatewayError;
use crate::iam;
use crate::pipeline::Caller;
use crate::store::{Store, WorkspaceUpdate, ALL_WORKSPACES};

/// Prefix of the IAM API.
pub const IAM_PREFIX: &str = "/api/v1/iam/";

/// What the IAM handlers share.
pub struct IamApi {
    /// The store.
    pub store: Store,
    /// Hashes new passwords.
    pub hasher: Arc<PasswordHasher>,
    /// The one authoriser.
    pub access: Access,
    /// Where denials go.
    pub audit: AuditSink,
    /// Does a role exist (built-in or configured)?
    pub known_role: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// API keys: created and revoked through it, so this node's cache follows at once.
    pub keys: Arc<ApiKeyAuthenticator>,
    /// The linked instances (`GET …/services`).
    pub registry: Option<Arc<crate::routing::Registry>>,
}

type Api = Arc<IamApi>;

impl IamApi {
    /// Is the caller allowed `capability` in `workspace_id` (`*` for what spans every
    /// workspace)? A denial is audited and answered with the fixed 403.
    async fn check(
        &self,
        caller: &Caller,
        capability: &'static str,
        workspace_id: &str,
    ) -> Result<(), Response> {
        let Some(identity) = &caller.identity else {
            return Err(rescued(GatewayError::Unauthorized("missing")));
        };
        match self
            .access
            .authorise(identity, capability, Resource::InWorkspace { workspace_id })
            .await
        {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => {
                self.audit.refused(Refusal {
                    reason: reason.as_str(),
                    credential_id: Some(&identity.via.id),
                    peer: caller.peer,
                    capability: Some(capability),
                });
                Err(rescued(GatewayError::Forbidden(reason.as_str())))
            }
        }
    }

    fn actor(caller: &Caller) -> String {
        caller
            .identity
            .as_ref()
            .map_or_else(|| "api".to_string(), |i| i.subject.to_string())
    }
}

/// The caller's own workspace id: what a check runs against when the thing named does not
/// exist, so a caller who may not read there learns nothing from a 404.
/// The caller's own workspace id (empty for a caller without an identity).
pub(crate) fn own_workspace(c: &Caller) -> String {
    c.identity
        .as_ref()
        .map_or_else(String::new, |i| i.workspace.id.to_string())
}

fn error(e: AdminError) -> Response {
    let status = match e.kind {
        ErrorKind::Usage => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Failure => return rescued(GatewayError::Unavailable("identity store")),
    };
    (status, axum::Json(e)).into_response()
}

fn done<T: serde::Serialize>(status: StatusCode, r: Result<T, AdminError>) -> Response {
    match r {
        Ok(v) => (status, axum::Json(v)).into_response(),
        Err(e) => error(e),
    }
}

/// The workspace id `name` resolves to, for the authorisation check: `*` stays `*`; a name
/// that does not exist resolves to itself, so the check runs (and denies a caller without a
/// binding in `*`) before anyone learns whether it exists.
async fn workspace_id(store: &Store, name: &str) -> Result<String, Response> {
    if name == ALL_WORKSPACES {
        return Ok(name.to_string());
    }
    match iam::workspace(store, name).await {
        Ok(w) => Ok(w.id),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(format!("unknown:{name}")),
        Err(e) => Err(error(e)),
    }
}

macro_rules! caller {
    ($c:expr) => {
        match $c {
            Some(Extension(c)) => c,
            None => return rescued(GatewayError::Unauthorized("missing")),
        }
    };
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

// The gateway's other JSON APIs (sessions) answer the same way.
pub(crate) use {caller, tri};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWorkspace {
    name: String,
    #[serde(default)]
    display_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchWorkspace {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    display_name: Option<Option<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    workspace: String,
    username: String,
    #[serde(default)]
    display_name: Option<String>,
    password: Password,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchUser {
    #[serde(default, deserialize_with = "double_option")]
    display_name: Option<Option<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetPassword {
    password: Password,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    subject: String,
    role: String,
    workspace: String,
}

#[derive(Deserialize)]
struct UsersQuery {
    workspace: String,
}

#[derive(Deserialize)]
struct BindingsQuery {
    subject: Option<String>,
    workspace: Option<String>,
}

/// `null` → `Some(None)` (clear), absent → `None` (leave), a value → `Some(Some(v))`.
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The IAM router, to register as a gateway operation under [`IAM_PREFIX`].
pub fn router(api: Arc<IamApi>) -> Router {
    Router::new()
        .route(
            "/api/v1/iam/workspaces",
            get(workspaces_list).post(workspaces_create),
        )
        .route(
            "/api/v1/iam/workspaces/{ws}",
            get(workspaces_get).patch(workspaces_update),
        )
        .route(
            "/api/v1/iam/workspaces/{ws}/{action}",
            post(workspaces_action),
        )
        .route("/api/v1/iam/users", get(users_list).post(users_create))
        .route(
            "/api/v1/iam/users/{id}",
            get(users_get).patch(users_update).delete(users_delete),
        )
        .route("/api/v1/iam/users/{id}/{action}", post(users_action))
        .route(
            "/api/v1/iam/role-bindings",
            get(bindings_list).post(bindings_grant),
        )
        .route(
            "/api/v1/iam/role-bindings/{id}",
            axum::routing::delete(bindings_revoke),
        )
        .route("/api/v1/iam/keys", get(keys_list).post(keys_create))
        .route("/api/v1/iam/keys/{id}/revoke", post(keys_revoke))
        .route("/api/v1/iam/keys/{id}/rotate", post(keys_rotate))
        .route("/api/v1/iam/pairings", get(pairings_list))
        .route("/api/v1/iam/services", get(services_list))
        .route("/api/v1/iam/pairings/revoke", post(pairings_revoke))
        .route(
            "/api/v1/iam/pairings/{code}/{action}",
            post(pairings_decide),
        )
        .with_state(api)
}

type St = axum::extract::State<Api>;

async fn workspaces_list(axum::extract::State(api): St, c: Option<Extension<Caller>>) -> Response {
    let c = caller!(c);
    tri!(api.check(&c, IAM_WORKSPACES_READ, ALL_WORKSPACES).await);
    done(StatusCode::OK, iam::workspaces_list(&api.store).await)
}

async fn workspaces_get(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Path(ws): Path<String>,
) -> Response {
    let c = caller!(c);
    let id = tri!(workspace_id(&api.store, &ws).await);
    tri!(api.check(&c, IAM_WORKSPACES_READ, &id).await);
    done(StatusCode::OK, iam::workspaces_get(&api.store, &ws).await)
}

async fn workspaces_create(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    req: Request,
) -> Response {
    let c = caller!(c);
    tri!(api.check(&c, IAM_WORKSPACES_WRITE, ALL_WORKSPACES).await);
    let body: NewWorkspace = tri!(json_body(req).await);
    let actor = IamApi::actor(&c);
    done(
        StatusCode::CREATED,
        iam::workspaces_create(&api.store, &body.name, body.display_name, &actor).await,
    )
}

async fn workspaces_update(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Path(ws): Path<String>,
    req: Request,
) -> Response {
    let c = caller!(c);
    let id = tri!(workspace_id(&api.store, &ws).await);
    tri!(api.check(&c, IAM_WORKSPACES_WRITE, &id).await);
    let body: PatchWorkspace = tri!(json_body(req).await);
    let actor = IamApi::actor(&c);
    let update = WorkspaceUpdate {
        name: body.name,
        display_name: body.display_name,
    };
    done(
        StatusCode::OK,
        iam::workspaces_update(&api.store, &ws, &update, &actor).await,
    )
}

async fn workspaces_action(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Path((ws, action)): Path<(String, String)>,
) -> Response {
    let c = caller!(c);
    let disabled = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => return rescued(GatewayError::NotFound),
    };
    let id = tri!(workspace_id(&api.store, &ws).await);
    tri!(api.check(&c, IAM_WORKSPACES_WRITE, &id).await);
    let actor = IamApi::actor(&c);
    done(
        StatusCode::OK,
        iam::workspaces_set_disabled(&api.store, &ws, disabled, &actor).await,
    )
}

/// The workspace id of the user named `name`, for the check; an unknown user checks against
/// the caller's own workspace (so a caller who may not read users learns nothing).
async fn user_workspace(api: &IamApi, c: &Caller, name: &str) -> Result<String, Response> {
    match iam::user(&api.store, name).await {
        Ok(u) => Ok(u.workspace_id),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(own_workspace(c)),
        Err(e) => Err(error(e)),
    }
}

async fn users_list(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Query(q): Query<UsersQuery>,
) -> Response {
    let c = caller!(c);
    let id = tri!(workspace_id(&api.store, &q.workspace).await);
    tri!(api.check(&c, IAM_USERS_READ, &id).await);
    done(
        StatusCode::OK,
        iam::users_list(&api.store, &q.workspace).await,
    )
}

async fn users_get(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Response {
    let c = caller!(c);
    let ws = tri!(user_workspace(&api, &c, &id).await);
    tri!(api.check(&c, IAM_USERS_READ, &ws).await);
    done(StatusCode::OK, iam::users_get(&api.store, &id).await)
}

async fn users_create(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    req: Request,
) -> Response {
    let c = caller!(c);
    let body: NewUserBody = tri!(json_body(req).await);
    let id = tri!(workspace_id(&api.store, &body.workspace).await);
    tri!(api.check(&c, IAM_USERS_WRITE, &id).await);
    let actor = IamApi::actor(&c);
    let req = iam::CreateUser {
        workspace: body.workspace,
        username: body.username,
        display_name: body.display_name,
    };
    done(
        StatusCode::CREATED,
        iam::users_create(&api.store, &api.hasher, &req, &body.password, &actor).await,
    )
}

async fn users_update(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let c = caller!(c);
    let ws = tri!(user_workspace(&api, &c, &id).await);
    tri!(api.check(&c, IAM_USERS_WRITE, &ws).await);
    let body: PatchUser = tri!(json_body(req).await);
    let actor = IamApi::actor(&c);
    done(
        StatusCode::OK,
        iam::users_update(&api.store, &id, body.display_name, &actor).await,
    )
}

async fn users_delete(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Response {
    let c = caller!(c);
    let ws = tri!(user_workspace(&api, &c, &id).await);
    tri!(api.check(&c, IAM_USERS_WRITE, &ws).await);
    let actor = IamApi::actor(&c);
    done(
        StatusCode::OK,
        iam::users_delete(&api.store, &id, &actor).await,
    )
}

async fn users_action(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Path((id, action)): Path<(String, String)>,
    req: Request,
) -> Response {
    let c = caller!(c);
    if !matches!(action.as_str(), "disable" | "enable" | "reset-password") {
        return rescued(GatewayError::NotFound);
    }
    let ws = tri!(user_workspace(&api, &c, &id).await);
    tri!(api.check(&c, IAM_USERS_WRITE, &ws).await);
    let actor = IamApi::actor(&c);
    match action.as_str() {
        "reset-password" => {
            let body: ResetPassword = tri!(json_body(req).await);
            done(
                StatusCode::OK,
                iam::users_reset_password(&api.store, &api.hasher, &id, &body.password, &actor)
                    .await,
            )
        }
        a => done(
            StatusCode::OK,
            iam::users_set_disabled(&api.store, &id, a == "disable", &actor).await,
        ),
    }
}

async fn bindings_list(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Query(q): Query<BindingsQuery>,
) -> Response {
    let c = caller!(c);
    let ws = match (&q.subject, &q.workspace) {
        (Some(s), _) => match iam::subject(&api.store, s).await {
            Ok((_, _, home)) => home,
            Err(e) if e.kind == ErrorKind::NotFound => own_workspace(&c),
            Err(e) => return error(e),
        },
        (None, Some(w)) => tri!(workspace_id(&api.store, w).await),
        (None, None) => {
            return error(AdminError::usage("name a subject or a workspace"));
        }
    };
    tri!(api.check(&c, IAM_ROLES_READ, &ws).await);
    done(
        StatusCode::OK,
        iam::roles_list(&api.store, q.subject.as_deref(), q.workspace.as_deref()).await,
    )
}

async fn bindings_grant(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    req: Request,
) -> Response {
    let c = caller!(c);
    let body: Grant = tri!(json_body(req).await);
    // Granting in a workspace needs the capability there; in `*`, a binding in `*`.
    let ws = tri!(workspace_id(&api.store, &body.workspace).await);
    tri!(api.check(&c, IAM_ROLES_WRITE, &ws).await);
    let actor = IamApi::actor(&c);
    let known = api.known_role.clone();
    done(
        StatusCode::CREATED,
        iam::roles_grant(
            &api.store,
            &body.subject,
            &body.role,
            &body.workspace,
            &*known,
            &actor,
        )
        .await,
    )
}

async fn bindings_revoke(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Response {
    let c = caller!(c);
    let ws = match api.store.role_binding(&id).await {
        Ok(Some(b)) => b.workspace_id,
        Ok(None) => own_workspace(&c),
        Err(e) => return error(e.into()),
    };
    tri!(api.check(&c, IAM_ROLES_WRITE, &ws).await);
    let actor = IamApi::actor(&c);
    done(
        StatusCode::OK,
        iam::roles_revoke(&api.store, &id, &actor).await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    name: String,
    scopes: Vec<String>,
    /// Lifetime in seconds; absent: no expiry.
    #[serde(default)]
    expires_in_s: Option<u64>,
    /// Issue it to this user (id) instead of the caller: `iam.keys.write` in their workspace.
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct KeysQuery {
    workspace: Option<String>,
}

/// The caller's user id, when the caller is a user.
fn caller_user(c: &Caller) -> Option<&str> {
    c.identity
        .as_ref()
        .and_then(|i| i.subject.strip_prefix("user:"))
}

async fn keys_list(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Query(q): Query<KeysQuery>,
) -> Response {
    let c = caller!(c);
    let now = crate::store::now_ms();
    let keys = match (&q.workspace, caller_user(&c)) {
        (Some(w), _) => {
            let id = tri!(workspace_id(&api.store, w).await);
            tri!(api.check(&c, IAM_KEYS_READ, &id).await);
            api.store.list_keys(Some(w)).await
        }
        (None, Some(user)) => api.store.list_user_keys(user).await,
        (None, None) => return error(AdminError::usage("name a workspace")),
    };
    done(
        StatusCode::OK,
        keys.map(|ks| KeyList {
            keys: ks.iter().map(|k| KeyView::new(k, now)).collect(),
        })
        .map_err(AdminError::from),
    )
}

async fn keys_create(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    req: Request,
) -> Response {
    let c = caller!(c);
    let body: NewKeyBody = tri!(json_body(req).await);
    let user = match (&body.user, caller_user(&c)) {
        (Some(other), me) if Some(other.as_str()) != me => {
            let ws = tri!(user_workspace(&api, &c, other).await);
            tri!(api.check(&c, IAM_KEYS_WRITE, &ws).await);
            other.clone()
        }
        (_, Some(me)) => me.to_string(),
        // A key makes keys of its own only with the capability, through the CLI's path.
        (None, None) => return error(AdminError::usage("name the user the key is for")),
        (Some(other), None) => other.clone(),
    };
    let owner = match iam::user(&api.store, &user).await {
        Ok(u) => u,
        Err(e) => return error(e),
    };
    let actor = IamApi::actor(&c);
    let create = CreateKey {
        workspace: owner.workspace.clone(),
        name: body.name,
        scopes: body.scopes,
        expires_in: body.expires_in_s.map(std::time::Duration::from_secs),
        key_id: None,
    };
    done(
        StatusCode::CREATED,
        api.keys
            .create_user_key(&create, &owner.id, &actor)
            .await
            .map(|i| IssuedKeyView::new(i, Issuance::Created, None))
            .map_err(AdminError::from),
    )
}

/// May the caller change key `id`: its own (a key issued to the calling user), or any with
/// `iam.keys.write` in the key's workspace? An unknown id is checked in the caller's own
/// workspace, so it answers 404 only to a caller who could have changed it.
async fn check_key_change(api: &IamApi, c: &Caller, id: &str) -> Result<(), Response> {
    let key = api.store.key(id).await.map_err(|e| error(e.into()))?;
    let own = key
        .as_ref()
        .is_some_and(|k| k.user_id.is_some() && k.user_id.as_deref() == caller_user(c));
    if !own {
        let ws = key
            .as_ref()
            .map_or_else(|| own_workspace(c), |k| k.workspace_id.clone());
        api.check(c, IAM_KEYS_WRITE, &ws).await?;
    }
    Ok(())
}

async fn keys_revoke(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Response {
    let c = caller!(c);
    tri!(check_key_change(&api, &c, &id).await);
    let actor = IamApi::actor(&c);
    let now = crate::store::now_ms();
    done(
        StatusCode::OK,
        api.keys
            .revoke(&id, &actor)
            .await
            .map(|k| KeyView::new(&k, now))
            .map_err(AdminError::from),
    )
}

/// Longest overlap a rotation may give the previous secret through the API.
const MAX_ROTATION_OVERLAP: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the previous secret stays valid, in seconds; absent: 24 h, as in the CLI.
    #[serde(default)]
    overlap_s: Option<u64>,
}

async fn keys_rotate(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let c = caller!(c);
    // An empty body takes the defaults.
    let body = tri!(json_body_or_empty(req).await).unwrap_or(RotateBody { overlap_s: None });
    let overlap = body.overlap_s.map_or(
        std::time::Duration::from_secs(86_400),
        std::time::Duration::from_secs,
    );
    if overlap > MAX_ROTATION_OVERLAP {
        return error(AdminError::usage("overlap_s is at most 30 days (2592000)"));
    }
    tri!(check_key_change(&api, &c, &id).await);
    let actor = IamApi::actor(&c);
    done(
        StatusCode::OK,
        api.keys
            .rotate(&id, overlap, &actor)
            .await
            .map(|(i, until)| IssuedKeyView::new(i, Issuance::Rotated, Some(until)))
            .map_err(AdminError::from),
    )
}

#[derive(Deserialize)]
struct PairingsQuery {
    #[serde(default)]
    pending: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    #[serde(default)]
    bind_instance: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeInstance {
    service: String,
    instance: String,
}

async fn pairings_list(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Query(q): Query<PairingsQuery>,
) -> Response {
    let c = caller!(c);
    tri!(api.check(&c, IAM_PAIRINGS_READ, ALL_WORKSPACES).await);
    let now = crate::store::now_ms();
    done(
        StatusCode::OK,
        crate::pairings::list_on(&api.store, q.pending, now).await,
    )
}

async fn pairings_decide(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    Path((code, action)): Path<(String, String)>,
    req: Request,
) -> Response {
    let c = caller!(c);
    tri!(api.check(&c, IAM_PAIRINGS_WRITE, ALL_WORKSPACES).await);
    let approve = match action.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    // An empty body takes the defaults.
    let body: ApproveBody = tri!(json_body_or_empty(req).await).unwrap_or_default();
    let actor = IamApi::actor(&c);
    done(
        StatusCode::OK,
        crate::pairings::decide_on(
            &api.store,
            &code,
            approve,
            body.bind_instance,
            crate::store::now_ms(),
            &actor,
        )
        .await,
    )
}

async fn pairings_revoke(
    axum::extract::State(api): St,
    c: Option<Extension<Caller>>,
    req: Request,
) -> Response {
    let c = caller!(c);
    tri!(api.check(&c, IAM_PAIRINGS_WRITE, ALL_WORKSPACES).await);
    let body: RevokeInstance = tri!(json_body(req).await);
    let actor = IamApi::actor(&c);
    done(
        StatusCode::OK,
        crate::pairings::revoke_on(
            &api.store,
            &format!("{}/{}", body.service, body.instance),
            crate::store::now_ms(),
            &actor,
        )
        .await,
    )
}

async fn services_list(axum::extract::State(api): St, c: Option<Extension<Caller>>) -> Response {
    let c = caller!(c);
    tri!(api.check(&c, IAM_SERVICES_READ, ALL_WORKSPACES).await);
    let list = api
        .registry
        .as_deref()
        .map(crate::services::list_on)
        .unwrap_or(crate::services::ServiceList {
            services: Vec::new(),
        });
    (StatusCode::OK, axum::Json(list)).into_response()
}
