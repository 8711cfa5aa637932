//! The sessions REST + SSE API, a gateway operation for callers the pipeline authenticated.
//!
//! | method and path | capability, in the session's workspace |
//! |---|---|
//! | `POST /api/v1/sessions` | `sessions.open` |
//! | `GET /api/v1/sessions`, `GET /api/v1/sessions/{id}` | `sessions.read` |
//! | `GET /api/v1/sessions?all=true` (every identity's, every workspace's) | `sessions.read` on `*` |
//! | `POST /api/v1/sessions/{id}/invoke` | the capability the worker declared for the kind; [`UNKNOWN_KIND_CAPABILITY`] for a kind it did not declare |
//! | `DELETE /api/v1/sessions/{id}` | `sessions.close` |
//! | `GET /api/v1/sessions/{id}/events` | `sessions.events.read` (server-sent events, `Last-Event-ID` or `?after=N` resume) |
//!
//! A session belongs to the identity and workspace that opened it: for anyone else it does
//! not exist (404, the same answer as for an id never issued). A refused capability is the
//! gateway's fixed 403, audited; everything else is `{"error": message, ...}` with a status
//! that names the class: 400 invalid, 404 unknown, 409 not ready or a second subscriber,
//! 410 a resume point no longer held, 429 a limit, 503 the worker did not start or cannot be
//! reached, 504 a command timed out. A reply from the worker is always 200 with the
//! backend's own `status` and `payload` untouched.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path, Query, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;

use super::events::{Event, SubscribeError};
use super::{InvokeError, OpenError, OpenRequest, Owner, Session, Sessions, SubscribeOutcome};
use crate::access::{Access, Decision, Resource};
use crate::api::{caller, own_workspace, tri};
use crate::audit::{AuditSink, Refusal};
use crate::auth::login::rescued;
use crate::error::GatewayError;
use crate::pipeline::Caller;

/// The API's path.
pub const SESSIONS_PATH: &str = "/api/v1/sessions";
/// Everything under it.
pub const SESSIONS_PREFIX: &str = "/api/v1/sessions/";

/// Open a session.
pub const SESSIONS_OPEN: &str = "sessions.open";
/// Close a session.
pub const SESSIONS_CLOSE: &str = "sessions.close";
/// Read sessions.
pub const SESSIONS_READ: &str = "sessions.read";
/// Subscribe to a session's events.
pub const SESSIONS_EVENTS_READ: &str = "sessions.events.read";
/// Invoke a command kind the worker did not declare: administrators only (the `admin`
/// namespace, which no built-in role but `admin` grants).
pub const UNKNOWN_KIND_CAPABILITY: &str = "admin.sessions.invoke";

/// Every capability the API asks for.
pub const CAPABILITIES: &[&str] = &[
    SESSIONS_OPEN,
    SESSIONS_CLOSE,
    SESSIONS_READ,
    SESSIONS_EVENTS_READ,
    UNKNOWN_KIND_CAPABILITY,
];

/// Idle SSE streams get a comment this often, so a dead client is noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Largest open body, bytes.
const MAX_OPEN_BODY: usize = 8 * 1024;

/// What the handlers share.
pub struct SessionsApi {
    /// The registry.
    pub sessions: Sessions,
    /// The one authoriser.
    pub access: Access,
    /// Where denials go.
    pub audit: AuditSink,
}

type Api = Arc<SessionsApi>;

/// The API's router.
pub fn router(api: Api) -> Router {
    Router::new()
        .route(SESSIONS_PATH, post(open).get(list))
        .route("/api/v1/sessions/{id}", get(read).delete(close))
        .route("/api/v1/sessions/{id}/invoke", post(invoke))
        .route("/api/v1/sessions/{id}/events", get(events))
        .with_state(api)
}

fn err(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn not_found() -> Response {
    err(StatusCode::NOT_FOUND, "no such session")
}

/// Why a caller was refused (the rescue point's fixed 401 or 403 follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No verified identity.
    Unauthenticated,
    /// The capability is not granted (the audit reason).
    Forbidden(&'static str),
}

impl SessionsApi {
    /// May the caller use `capability` in `workspace_id`? A denial is audited.
    pub async fn authorise(
        &self,
        caller: &Caller,
        capability: &str,
        workspace_id: &str,
    ) -> Result<Owner, Denied> {
        let Some(identity) = &caller.identity else {
            return Err(Denied::Unauthenticated);
        };
        match self
            .access
            .authorise(identity, capability, Resource::InWorkspace { workspace_id })
            .await
        {
            Decision::Allow => Ok(Owner {
                subject: identity.subject.clone(),
                workspace_id: identity.workspace.id.clone(),
            }),
            Decision::Deny(reason) => {
                self.audit.refused(Refusal {
                    reason: reason.as_str(),
                    credential_id: Some(&identity.via.id),
                    peer: caller.peer,
                    capability: Some(capability),
                });
                Err(Denied::Forbidden(reason.as_str()))
            }
        }
    }

    async fn check(
        &self,
        caller: &Caller,
        capability: &str,
        workspace_id: &str,
    ) -> Result<Owner, Response> {
        self.authorise(caller, capability, workspace_id)
            .await
            .map_err(|d| match d {
                Denied::Unauthenticated => rescued(GatewayError::Unauthorized("missing")),
                Denied::Forbidden(reason) => rescued(GatewayError::Forbidden(reason)),
            })
    }

    /// Authorise `capability` in the caller's workspace, then find the caller's session.
    async fn session(
        &self,
        caller: &Caller,
        capability: &str,
        id: &str,
    ) -> Result<Arc<Session>, Response> {
        let owner = self
            .check(caller, capability, &own_workspace(caller))
            .await?;
        self.sessions.get(id, &owner).ok_or_else(not_found)
    }
}

/// Read a JSON object body of at most `max` bytes.
async fn body<T: serde::de::DeserializeOwned>(req: Request, max: usize) -> Result<T, Response> {
    let limited = http_body_util::Limited::new(req.into_body(), max);
    let bytes: Bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(rescued(GatewayError::PayloadTooLarge))
        }
        Err(_) => return Err(rescued(GatewayError::BadRequest("body"))),
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    command_timeout_ms: Option<u64>,
}

async fn open(
    axum::extract::State(api): axum::extract::State<Api>,
    c: Option<Extension<Caller>>,
    req: Request,
) -> Response {
    let caller = caller!(c);
    let owner = tri!(
        api.check(&caller, SESSIONS_OPEN, &own_workspace(&caller))
            .await
    );
    let b: OpenBody = tri!(body(req, MAX_OPEN_BODY).await);
    for (field, v) in [("name", &b.name), ("correlation_id", &b.correlation_id)] {
        if v.as_ref().is_some_and(|v| v.len() > 256) {
            return err(
                StatusCode::BAD_REQUEST,
                format!("{field} is longer than 256 bytes"),
            );
        }
    }
    let r = api
        .sessions
        .open(
            owner,
            OpenRequest {
                backend: b.backend,
                name: b.name,
                correlation_id: b.correlation_id,
                command_timeout: b.command_timeout_ms.map(Duration::from_millis),
            },
        )
        .await;
    match r {
        Ok(s) => (StatusCode::CREATED, axum::Json(s.snapshot())).into_response(),
        Err(e) => {
            let status = match &e {
                OpenError::NoBackend | OpenError::Invalid(_) => StatusCode::BAD_REQUEST,
                OpenError::UnknownBackend(_) => StatusCode::NOT_FOUND,
                OpenError::Limit(_) | OpenError::WorkspaceLimit(_) => StatusCode::TOO_MANY_REQUESTS,
                OpenError::ShuttingDown | OpenError::Failed { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            let mut body = json!({ "error": e.to_string() });
            if let OpenError::Failed { fault, worker_pid } = &e {
                body["fault"] = json!(fault);
                body["worker_pid"] = json!(worker_pid);
            }
            (status, axum::Json(body)).into_response()
        }
    }
}

/// Filters of a listing. Without `all`: the caller's own sessions. With `all=true`: every
/// session on this gateway, whoever opened it, for a caller holding `sessions.read` on every
/// workspace (`*`) — an operator's view — optionally narrowed to one workspace (its id).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: bool,
    workspace: Option<String>,
    backend: Option<String>,
    state: Option<String>,
}

/// The state names a listing may filter by.
const STATES: [super::State; 7] = [
    super::State::Creating,
    super::State::StartingWorker,
    super::State::Handshaking,
    super::State::Ready,
    super::State::Closing,
    super::State::Closed,
    super::State::Faulted,
];

async fn list(
    axum::extract::State(api): axum::extract::State<Api>,
    c: Option<Extension<Caller>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let caller = caller!(c);
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return err(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Some(st) = &q.state {
        if !STATES.iter().any(|s| s.as_str() == st) {
            let names: Vec<&str> = STATES.iter().map(|s| s.as_str()).collect();
            return err(
                StatusCode::BAD_REQUEST,
                format!("unknown state {st:?}: one of {}", names.join(", ")),
            );
        }
    }
    let owner = if q.all {
        tri!(
            api.check(&caller, SESSIONS_READ, crate::store::ALL_WORKSPACES)
                .await
        );
        None
    } else {
        if q.workspace.is_some() {
            return err(
                StatusCode::BAD_REQUEST,
                "workspace filters a listing of all sessions: add all=true",
            );
        }
        Some(tri!(
            api.check(&caller, SESSIONS_READ, &own_workspace(&caller))
                .await
        ))
    };
    let shown: Vec<_> = api
        .sessions
        .list()
        .into_iter()
        .filter(|s| {
            owner
                .as_ref()
                .is_none_or(|o| s.subject == o.subject && s.workspace == o.workspace_id)
        })
        .filter(|s| q.workspace.as_deref().is_none_or(|w| &*s.workspace == w))
        .filter(|s| q.backend.as_deref().is_none_or(|b| &*s.backend == b))
        .filter(|s| q.state.as_deref().is_none_or(|st| s.state.as_str() == st))
        .collect();
    axum::Json(json!({ "sessions": shown })).into_response()
}

async fn read(
    axum::extract::State(api): axum::extract::State<Api>,
    c: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Response {
    let caller = caller!(c);
    let s = tri!(api.session(&caller, SESSIONS_READ, &id).await);
    s.touch();
    axum::Json(s.snapshot()).into_response()
}

async fn close(
    axum::extract::State(api): axum::extract::State<Api>,
    c: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Response {
    let caller = caller!(c);
    let s = tri!(api.session(&caller, SESSIONS_CLOSE, &id).await);
    let outcome = api
        .sessions
        .close(&s, super::CloseReason::ClientClose)
        .await;
    axum::Json(outcome).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeBody {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

async fn invoke(
    axum::extract::State(api): axum::extract::State<Api>,
    c: Option<Extension<Caller>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let caller = caller!(c);
    let Some(identity) = caller.identity.clone() else {
        return rescued(GatewayError::Unauthorized("missing"));
    };
    let owner = Owner {
        subject: identity.subject.clone(),
        workspace_id: identity.workspace.id.clone(),
    };
    let Some(s) = api.sessions.get(&id, &owner) else {
        return not_found();
    };
    let max = api.sessions.config().max_frame_bytes;
    let b: InvokeBody = tri!(body(req, max).await);
    let Some(kind) = b.kind.filter(|k| !k.is_empty()) else {
        return err(StatusCode::BAD_REQUEST, "a command kind is required");
    };
    if !portcullis_link::worker::valid_name(&kind) {
        return err(
            StatusCode::BAD_REQUEST,
            "a command kind is 1-128 of [A-Za-z0-9._:-]",
        );
    }
    let capability = s
        .capability_for(&kind)
        .unwrap_or_else(|| UNKNOWN_KIND_CAPABILITY.to_string());
    tri!(api.check(&caller, &capability, &s.owner.workspace_id).await);
    let timeout = match b.timeout_ms {
        Some(0) => {
            return err(
                StatusCode::BAD_REQUEST,
                "timeout_ms must be greater than zero",
            )
        }
        Some(ms) => Some(Duration::from_millis(ms).min(api.sessions.config().max_command_timeout)),
        None => None,
    };
    let payload = b.payload.unwrap_or(serde_json::Value::Null);
    match s.invoke(&kind, payload, timeout).await {
        Ok(reply) => axum::Json(reply).into_response(),
        Err(e) => {
            let status = match &e {
                InvokeError::NotReady(_) | InvokeError::Ended(_) => StatusCode::CONFLICT,
                InvokeError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
                InvokeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                InvokeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            let snap = s.snapshot();
            (
                status,
                axum::Json(json!({
                    "error": e.to_string(),
                    "state": snap.state,
                    "fault": snap.fault,
                })),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    after: Option<u64>,
}

/// The `Last-Event-ID` header: `Err(())` when it is not a sequence number.
fn last_event_id(h: &HeaderMap) -> Result<Option<u64>, ()> {
    match h.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or(()),
    }
}

async fn events(
    axum::extract::State(api): axum::extract::State<Api>,
    c: Option<Extension<Caller>>,
    Path(id): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let caller = caller!(c);
    let s = tri!(api.session(&caller, SESSIONS_EVENTS_READ, &id).await);
    let Ok(Query(q)) = q else {
        return err(StatusCode::BAD_REQUEST, "after must be a sequence number");
    };
    let Ok(header) = last_event_id(&headers) else {
        return err(
            StatusCode::BAD_REQUEST,
            "Last-Event-ID must be a sequence number",
        );
    };
    let after = match (header, q.after) {
        (Some(h), _) => h,
        (None, Some(a)) => a,
        (None, None) => 0,
    };
    let sub = match s.subscribe(after) {
        Ok(sub) => sub,
        Err(e) => {
            let status = match &e {
                SubscribeOutcome::NotReady(_)
                | SubscribeOutcome::Refused(SubscribeError::Conflict) => StatusCode::CONFLICT,
                SubscribeOutcome::Refused(SubscribeError::Gone { .. }) => StatusCode::GONE,
            };
            return err(status, e.to_string());
        }
    };
    let stream = Stream {
        session: s.clone(),
        id: sub.id,
        backlog: sub.backlog.into(),
        rx: sub.rx,
        done: false,
    };
    let body = futures_util::stream::unfold(stream, |mut st| async move {
        let chunk = st.next().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), st))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-accel-buffering", "no")
        .body(axum::body::Body::from_stream(body))
        .unwrap_or_else(|_| err(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// One subscriber's SSE stream; dropping it (the client went away) frees the slot.
struct Stream {
    session: Arc<Session>,
    id: u64,
    backlog: VecDeque<Event>,
    rx: tokio::sync::mpsc::Receiver<Event>,
    done: bool,
}

fn sse(e: &Event) -> Bytes {
    let mut out = Vec::with_capacity(e.json.len() + 32);
    out.extend_from_slice(format!("id: {}\nevent: event\ndata: ", e.sequence).as_bytes());
    out.extend_from_slice(&e.json);
    out.extend_from_slice(b"\n\n");
    out.into()
}

impl Stream {
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(e) = self.backlog.pop_front() {
            return Some(sse(&e));
        }
        tokio::select! {
            e = self.rx.recv() => match e {
                Some(e) => Some(sse(&e)),
                None => {
                    // The session ended (or this subscriber was replaced): say how, once.
                    self.done = true;
                    let s = self.session.snapshot();
                    let data = json!({
                        "state": s.state,
                        "close_reason": s.close_reason,
                        "fault": s.fault,
                        "last_event_sequence": s.last_event_sequence,
                    });
                    Some(Bytes::from(format!("event: end\ndata: {data}\n\n")))
                }
            },
            _ = tokio::time::sleep(KEEPALIVE) => Some(Bytes::from_static(b": keepalive\n\n")),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.session.detach(self.id);
    }
}
