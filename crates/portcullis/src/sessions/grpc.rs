//! The sessions API over gRPC: `portcullis.sessions.v1.Sessions`
//! (`proto/portcullis/sessions/v1/sessions.proto`) on the ingress port, a gateway operation
//! like the REST surface and authorised the same way.
//!
//! The messages are prost structs written by hand from the `.proto` (no protoc at build
//! time); the service is tonic's codec-level server (`tonic::server::Grpc`) behind a tower
//! service that routes by method path, which is what `tonic-build` would generate. The
//! integration test drives it with Python `grpcio` stubs generated from the same `.proto`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tonic::{Code, Status};

use super::api::{Denied, SessionsApi};
use super::events::{Event, SubscribeError};
use super::{CloseReason, InvokeError, OpenError, OpenRequest, Session, State, SubscribeOutcome};
use crate::api::own_workspace;
use crate::pipeline::Caller;

/// The service's path prefix.
pub const PREFIX: &str = "/portcullis.sessions.v1.Sessions/";

/// Hand-written equivalents of the `.proto` messages.
pub mod pb {
    /// `OpenSessionRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OpenSessionRequest {
        /// Empty: the default backend.
        #[prost(string, tag = "1")]
        pub backend: String,
        /// The client's name.
        #[prost(string, tag = "2")]
        pub name: String,
        /// The client's correlation id.
        #[prost(string, tag = "3")]
        pub correlation_id: String,
        /// 0: the default.
        #[prost(uint64, tag = "4")]
        pub command_timeout_ms: u64,
    }

    /// `OpenSessionResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OpenSessionResponse {
        /// The id.
        #[prost(string, tag = "1")]
        pub session_id: String,
        /// The backend.
        #[prost(string, tag = "2")]
        pub backend: String,
        /// The worker's pid.
        #[prost(uint32, tag = "3")]
        pub worker_pid: u32,
        /// The worker protocol version.
        #[prost(uint32, tag = "4")]
        pub protocol_version: u32,
        /// Default command timeout.
        #[prost(uint64, tag = "5")]
        pub command_timeout_ms: u64,
        /// Kind → capability.
        #[prost(map = "string, string", tag = "6")]
        pub capabilities: std::collections::HashMap<String, String>,
    }

    /// `CloseSessionRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CloseSessionRequest {
        /// The id.
        #[prost(string, tag = "1")]
        pub session_id: String,
    }

    /// `CloseSessionResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CloseSessionResponse {
        /// The final state.
        #[prost(string, tag = "1")]
        pub state: String,
        /// `closed` or `was already closed`.
        #[prost(string, tag = "2")]
        pub result: String,
        /// Why it closed.
        #[prost(string, tag = "3")]
        pub close_reason: String,
    }

    /// `Command`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Command {
        /// The kind.
        #[prost(string, tag = "1")]
        pub kind: String,
        /// JSON text; empty is null.
        #[prost(string, tag = "2")]
        pub payload_json: String,
    }

    /// `InvokeRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InvokeRequest {
        /// The id.
        #[prost(string, tag = "1")]
        pub session_id: String,
        /// The command.
        #[prost(message, optional, tag = "2")]
        pub command: Option<Command>,
        /// 0: the session's timeout.
        #[prost(uint64, tag = "3")]
        pub timeout_ms: u64,
    }

    /// `InvokeResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InvokeResponse {
        /// The backend's status.
        #[prost(int64, tag = "1")]
        pub status: i64,
        /// The backend's payload, JSON text.
        #[prost(string, tag = "2")]
        pub payload_json: String,
    }

    /// `StreamEventsRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamEventsRequest {
        /// The id.
        #[prost(string, tag = "1")]
        pub session_id: String,
        /// Resume after this sequence.
        #[prost(uint64, tag = "2")]
        pub after_sequence: u64,
    }

    /// `Event`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        /// The worker's sequence.
        #[prost(uint64, tag = "1")]
        pub sequence: u64,
        /// The kind.
        #[prost(string, tag = "2")]
        pub kind: String,
        /// JSON text.
        #[prost(string, tag = "3")]
        pub payload_json: String,
    }
}

/// The service; cheap to clone.
#[derive(Clone)]
pub struct SessionsService(Arc<SessionsApi>);

impl SessionsService {
    /// The service over the REST surface's shared parts.
    pub fn new(api: Arc<SessionsApi>) -> Self {
        Self(api)
    }
}

fn denied(d: Denied) -> Status {
    match d {
        Denied::Unauthenticated => Status::unauthenticated("unauthenticated"),
        Denied::Forbidden(_) => Status::permission_denied("permission denied"),
    }
}

fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("unauthenticated"))
}

/// The status a session's end maps to: its fault's, or CANCELLED for a gateway shutdown,
/// FAILED_PRECONDITION for another close.
fn ended(s: &Session) -> Status {
    let snap = s.snapshot();
    match (&snap.fault, snap.close_reason) {
        (Some(f), _) => {
            let code = match f.kind {
                "queue-overflow" => Code::ResourceExhausted,
                "protocol" => Code::Internal,
                _ => Code::Unavailable,
            };
            Status::new(code, format!("{}: {}", f.kind, f.message))
        }
        (None, Some(CloseReason::GatewayShutdown)) => {
            Status::cancelled("the gateway is shutting down")
        }
        _ => Status::failed_precondition(format!(
            "not ready, current state is {}",
            snap.state.as_str()
        )),
    }
}

impl SessionsService {
    async fn session(
        &self,
        caller: &Caller,
        capability: &str,
        id: &str,
    ) -> Result<Arc<Session>, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("session_id is required"));
        }
        let owner = self
            .0
            .authorise(caller, capability, &own_workspace(caller))
            .await
            .map_err(denied)?;
        self.0
            .sessions
            .get(id, &owner)
            .ok_or_else(|| Status::not_found("no such session"))
    }

    async fn open(
        &self,
        req: tonic::Request<pb::OpenSessionRequest>,
    ) -> Result<pb::OpenSessionResponse, Status> {
        let c = caller(&req)?;
        let owner = self
            .0
            .authorise(&c, super::api::SESSIONS_OPEN, &own_workspace(&c))
            .await
            .map_err(denied)?;
        let r = req.into_inner();
        let opt = |s: String| (!s.is_empty()).then_some(s);
        let open = self
            .0
            .sessions
            .open(
                owner,
                OpenRequest {
                    backend: opt(r.backend),
                    name: opt(r.name),
                    correlation_id: opt(r.correlation_id),
                    command_timeout: (r.command_timeout_ms > 0)
                        .then(|| Duration::from_millis(r.command_timeout_ms)),
                },
            )
            .await;
        match open {
            Ok(s) => {
                let snap = s.snapshot();
                Ok(pb::OpenSessionResponse {
                    session_id: snap.id.to_string(),
                    backend: snap.backend.to_string(),
                    worker_pid: snap.worker_pid,
                    protocol_version: snap.protocol_version,
                    command_timeout_ms: snap.command_timeout_ms,
                    capabilities: snap.commands.into_iter().collect::<HashMap<_, _>>(),
                })
            }
            Err(e) => Err(match &e {
                OpenError::NoBackend | OpenError::Invalid(_) => {
                    Status::invalid_argument(e.to_string())
                }
                OpenError::UnknownBackend(_) => Status::not_found(e.to_string()),
                OpenError::Limit(_) | OpenError::WorkspaceLimit(_) => {
                    Status::resource_exhausted(e.to_string())
                }
                OpenError::ShuttingDown => Status::cancelled(e.to_string()),
                OpenError::Failed { .. } => Status::unavailable(e.to_string()),
            }),
        }
    }

    async fn close(
        &self,
        req: tonic::Request<pb::CloseSessionRequest>,
    ) -> Result<pb::CloseSessionResponse, Status> {
        let c = caller(&req)?;
        let s = self
            .session(&c, super::api::SESSIONS_CLOSE, &req.get_ref().session_id)
            .await?;
        let out = s.close(CloseReason::ClientClose).await;
        Ok(pb::CloseSessionResponse {
            state: out.session.state.as_str().into(),
            result: out.result.into(),
            close_reason: out
                .session
                .close_reason
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
        })
    }

    async fn invoke(
        &self,
        req: tonic::Request<pb::InvokeRequest>,
    ) -> Result<pb::InvokeResponse, Status> {
        let c = caller(&req)?;
        let Some(identity) = c.identity.clone() else {
            return Err(Status::unauthenticated("unauthenticated"));
        };
        let r = req.into_inner();
        // The reference's order: a session id, a command, a kind, then its payload.
        if r.session_id.is_empty() {
            return Err(Status::invalid_argument("session_id is required"));
        }
        let Some(command) = r.command else {
            return Err(Status::invalid_argument("a command is required"));
        };
        if command.kind.is_empty() {
            return Err(Status::invalid_argument("a command kind is required"));
        }
        if !portcullis_link::worker::valid_name(&command.kind) {
            return Err(Status::invalid_argument(
                "a command kind is 1-128 of [A-Za-z0-9._:-]",
            ));
        }
        let payload: serde_json::Value = if command.payload_json.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&command.payload_json)
                .map_err(|e| Status::invalid_argument(format!("payload_json is not JSON: {e}")))?
        };
        let owner = super::Owner {
            subject: identity.subject.clone(),
            workspace_id: identity.workspace.id.clone(),
        };
        let s = self
            .0
            .sessions
            .get(&r.session_id, &owner)
            .ok_or_else(|| Status::not_found("no such session"))?;
        let capability = s
            .capability_for(&command.kind)
            .unwrap_or_else(|| super::api::UNKNOWN_KIND_CAPABILITY.to_string());
        self.0
            .authorise(&c, &capability, &s.owner.workspace_id)
            .await
            .map_err(denied)?;
        let timeout = (r.timeout_ms > 0).then(|| {
            Duration::from_millis(r.timeout_ms).min(self.0.sessions.config().max_command_timeout)
        });
        match s.invoke(&command.kind, payload, timeout).await {
            Ok(reply) => Ok(pb::InvokeResponse {
                status: reply.status,
                payload_json: reply.payload.to_string(),
            }),
            Err(e) => Err(match &e {
                InvokeError::NotReady(State::Faulted) | InvokeError::Ended(_) => ended(&s),
                InvokeError::NotReady(_) => Status::failed_precondition(e.to_string()),
                InvokeError::TooMany(_) => Status::resource_exhausted(e.to_string()),
                InvokeError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
                InvokeError::Unavailable(_) => Status::unavailable(e.to_string()),
            }),
        }
    }

    async fn stream(
        &self,
        req: tonic::Request<pb::StreamEventsRequest>,
    ) -> Result<EventStream, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let s = self
            .session(&c, super::api::SESSIONS_EVENTS_READ, &r.session_id)
            .await?;
        let sub = s.subscribe(r.after_sequence).map_err(|e| match &e {
            SubscribeOutcome::NotReady(State::Faulted) => ended(&s),
            SubscribeOutcome::NotReady(_) => Status::failed_precondition(e.to_string()),
            SubscribeOutcome::Refused(SubscribeError::Conflict) => {
                Status::resource_exhausted(e.to_string())
            }
            SubscribeOutcome::Refused(SubscribeError::Gone { .. }) => {
                Status::out_of_range(e.to_string())
            }
        })?;
        let state = Subscriber {
            session: s,
            id: sub.id,
            backlog: sub.backlog.into(),
            rx: sub.rx,
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |mut st| async move {
                let item = st.next().await?;
                Some((item, st))
            },
        )))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

struct Subscriber {
    session: Arc<Session>,
    id: u64,
    backlog: VecDeque<Event>,
    rx: tokio::sync::mpsc::Receiver<Event>,
    done: bool,
}

fn to_pb(e: &Event) -> pb::Event {
    // The held JSON is `{"sequence":N,"kind":K,"payload":P}`, made by the sequencer.
    let v: serde_json::Value = serde_json::from_slice(&e.json).unwrap_or_default();
    pb::Event {
        sequence: e.sequence,
        kind: v["kind"].as_str().unwrap_or_default().to_string(),
        payload_json: v["payload"].to_string(),
    }
}

impl Subscriber {
    async fn next(&mut self) -> Option<Result<pb::Event, Status>> {
        if self.done {
            return None;
        }
        if let Some(e) = self.backlog.pop_front() {
            return Some(Ok(to_pb(&e)));
        }
        match self.rx.recv().await {
            Some(e) => Some(Ok(to_pb(&e))),
            None => {
                self.done = true;
                match self.session.state() {
                    State::Closed if self.session.snapshot().fault.is_none() => {
                        match self.session.snapshot().close_reason {
                            Some(CloseReason::GatewayShutdown) => Some(Err(ended(&self.session))),
                            _ => None,
                        }
                    }
                    _ => Some(Err(ended(&self.session))),
                }
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.session.detach(self.id);
    }
}

macro_rules! unary {
    ($name:ident, $req:ty, $resp:ty, $method:ident) => {
        struct $name(SessionsService);
        impl tonic::server::UnaryService<$req> for $name {
            type Response = $resp;
            type Future = Pin<
                Box<
                    dyn std::future::Future<Output = Result<tonic::Response<$resp>, Status>> + Send,
                >,
            >;
            fn call(&mut self, req: tonic::Request<$req>) -> Self::Future {
                let svc = self.0.clone();
                Box::pin(async move { svc.$method(req).await.map(tonic::Response::new) })
            }
        }
    };
}

unary!(Open, pb::OpenSessionRequest, pb::OpenSessionResponse, open);
unary!(
    Close,
    pb::CloseSessionRequest,
    pb::CloseSessionResponse,
    close
);
unary!(Invoke, pb::InvokeRequest, pb::InvokeResponse, invoke);

struct Events(SessionsService);

impl tonic::server::ServerStreamingService<pb::StreamEventsRequest> for Events {
    type Response = pb::Event;
    type ResponseStream = EventStream;
    type Future = Pin<
        Box<dyn std::future::Future<Output = Result<tonic::Response<EventStream>, Status>> + Send>,
    >;
    fn call(&mut self, req: tonic::Request<pb::StreamEventsRequest>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.stream(req).await.map(tonic::Response::new) })
    }
}

/// Largest message either way, bytes: a frame's worth.
const MAX_MESSAGE: usize = portcullis_link::worker::MAX_WORKER_FRAME_LEN + 1024;

fn grpc<T, U>() -> tonic::server::Grpc<tonic_prost::ProstCodec<T, U>>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

impl tower::Service<http::Request<axum::body::Body>> for SessionsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            let method = req
                .uri()
                .path()
                .strip_prefix(PREFIX)
                .unwrap_or_default()
                .to_string();
            Ok(match method.as_str() {
                "OpenSession" => grpc().unary(Open(svc), req).await,
                "CloseSession" => grpc().unary(Close(svc), req).await,
                "Invoke" => grpc().unary(Invoke(svc), req).await,
                "StreamEvents" => grpc().server_streaming(Events(svc), req).await,
                _ => Status::unimplemented("unimplemented").into_http(),
            })
        })
    }
}
