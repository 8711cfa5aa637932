//! The per-call context: what the phases learn about one call, in one place (pingora's `CTX`).
//!
//! Each phase reads what earlier phases wrote and adds its own finding; the finish phase reads
//! the whole context once for the access log, the metrics and the span. Nothing a phase learns
//! travels in a side structure.

use http::{HeaderValue, Method};
use std::sync::Arc;
use tokio::time::Instant;

use super::resolve::Target;
use crate::access::workspace::RequestedWorkspace;
use crate::access::{Decision, TargetWorkspace};
use crate::auth::Identity;
use crate::transport::Conn;

/// One call.
pub struct Call {
    /// The call's correlation id (the client's when safe, otherwise made up): on every log
    /// line, returned to the client, sent to the service.
    pub correlation_id: HeaderValue,
    /// The request method.
    pub method: Method,
    /// The caller speaks gRPC: refusals are answered as gRPC statuses.
    pub grpc: bool,
    /// The connection the call arrived on (absent when the pipeline is driven without one).
    pub conn: Option<Conn>,
    /// What the call is for (resolve).
    pub target: Option<Target>,
    /// Who is calling (authenticate); `None` for public targets or before authentication.
    pub identity: Option<Arc<Identity>>,
    /// What the request named in `x-portcullis-workspace`, read by the early phase before it
    /// strips the header (which is never forwarded); judged by the authorise phase.
    pub(super) requested_workspace: RequestedWorkspace,
    /// The workspace the call acts in (authorise): the caller's own or the one it named. What
    /// the service is told (the identity assertion). `None` for public targets.
    pub workspace: Option<TargetWorkspace>,
    /// What access control decided (authorise).
    pub decision: Option<Decision>,
    /// The instance that served the call (dispatch).
    pub served_by: Option<Arc<str>>,
    /// Phase timings.
    pub timings: Timings,
    /// The call's span: every phase runs inside it.
    pub span: tracing::Span,
    /// Held until the response body ends: the load-shedding slot and the connection's
    /// activity count.
    pub(super) holds: Holds,
}

/// When the call reached each phase.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Request head received.
    pub started: Instant,
    /// The caller was authenticated (or the target needed no credential).
    pub authenticated: Option<Instant>,
    /// The call was handed to its target.
    pub dispatched: Option<Instant>,
}

/// Guards that live as long as the response body.
#[derive(Default)]
pub(super) struct Holds {
    pub(super) active: Option<crate::ingress::ActiveCall>,
    pub(super) slot: Option<super::early::InFlightSlot>,
}

impl Call {
    /// A new call; `conn` is the connection's extension when there is one.
    pub fn new(
        method: Method,
        correlation_id: HeaderValue,
        grpc: bool,
        conn: Option<Conn>,
    ) -> Self {
        let span = tracing::info_span!(
            "call",
            correlation_id = correlation_id.to_str().unwrap_or("-"),
            method = %method,
            route = tracing::field::Empty,
            service = tracing::field::Empty,
            instance = tracing::field::Empty,
            key_id = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        let holds = Holds {
            active: conn.as_ref().map(|c| c.activity.begin()),
            slot: None,
        };
        Self {
            correlation_id,
            method,
            grpc,
            conn,
            target: None,
            identity: None,
            requested_workspace: None,
            workspace: None,
            decision: None,
            served_by: None,
            timings: Timings {
                started: Instant::now(),
                authenticated: None,
                dispatched: None,
            },
            span,
            holds,
        }
    }

    /// The client's IP address, when known.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.conn.as_ref().map(|c| c.facts.peer.ip())
    }
}
