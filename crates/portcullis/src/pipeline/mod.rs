//! The path of one call, as phases in the order the code runs them (docs/design.md §2, drawn in
//! `docs/ARCHITECTURE.md`):
//!
//! ```text
//! early ─▶ resolve ─▶ authenticate ─▶ authorise ─▶ dispatch ─▶ finish
//! shed,     target +   credential →    capability   link or     log, metrics,
//! strip,    policy     identity        + resource   gateway     span, holds
//! head                                 → decision   operation
//! ```
//!
//! Each phase is a component behind a narrow interface, built once from typed settings; what a
//! phase learns goes into the per-call [`Call`] context, which the finish phase reads once. A new
//! concern is a new phase or component, not a condition inside another. Every refusal is a
//! [`GatewayError`] raised by a phase and turned into a response at one rescue point
//! ([`GatewayError::rescue`], in the caller's protocol: gRPC statuses for gRPC callers), so no
//! phase formats a status code.
//!
//! The pipeline is a tower [`Service`](tower::Service) over any request body, so component
//! tests drive it with `oneshot`, without sockets. The settings that may change at run time
//! (limits, the gateway operations and their policies) sit behind one [`ArcSwap`], so a reload
//! swaps them without touching the phases.

mod authenticate;
mod authorise;
mod call;
mod dispatch;
mod early;
mod finish;
mod resolve;

pub use call::{Call, Timings};
pub use early::{check_head, correlation_id, strip_gateway_headers, InFlight};
pub use resolve::{check_path, AuthPolicy, Operation, Operations, PathMatch, Target, Unrouted};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tracing::Instrument;

use crate::access::Access;
use crate::audit::AuditSink;
use crate::auth::assertion::AssertionSigner;
use crate::auth::Authenticators;
use crate::body::{BoxError, GatewayBody, RequestBody};
use crate::error::{Chain, GatewayError};
use crate::routing::{Registry, Tiers};
use crate::telemetry::Metrics;
use crate::transport::Conn;

/// What a gateway operation's handler may know about its caller: the pipeline puts it in the
/// request's extensions before dispatching to an operation's router (login needs the source
/// address for throttling, change-password the identity the authenticate phase proved).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who is calling; `None` for public operations.
    pub identity: Option<Arc<crate::auth::Identity>>,
    /// The client's address, when known.
    pub peer: Option<std::net::IpAddr>,
}

/// Limits applied to every call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Calls in progress on the whole gateway past which new ones get 503.
    pub max_in_flight: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: u64,
    /// A request body from which no byte arrives for this long is ended: the service's
    /// stream is cancelled and the client answered 408 (`ingress.request_body_stall_timeout`).
    pub body_stall_timeout: std::time::Duration,
}

/// What may change while the gateway runs, swapped as one value.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Limits.
    pub limits: Limits,
    /// The gateway's own operations and their auth policies.
    pub operations: Operations,
}

/// Everything the phases are built from.
pub struct Parts {
    /// Live routes.
    pub registry: Arc<Registry>,
    /// Region preference for instance selection.
    pub tiers: Tiers,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The authentication contract.
    pub authenticators: Authenticators,
    /// The authoriser.
    pub access: Access,
    /// Where refusals go.
    pub audit: AuditSink,
    /// Signs the identity assertion of every authenticated call forwarded to a service.
    pub assertions: Arc<AssertionSigner>,
    /// The run-time policy to start with.
    pub policy: Policy,
    /// The gateway's signing keys (one ring for the whole gateway: user tokens, identity
    /// assertions on forwarded calls).
    pub keys: Arc<crate::auth::keyring::KeyRing>,
}

struct Phases {
    policy: ArcSwap<Policy>,
    early: early::Early,
    resolve: resolve::Resolve,
    authenticate: authenticate::Authenticate,
    authorise: authorise::Authorise,
    dispatch: dispatch::Dispatch,
    finish: finish::Finish,
}

/// The call pipeline; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Pipeline(Arc<Phases>);

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipeline")
    }
}

impl Pipeline {
    /// Build every phase once.
    pub fn new(p: Parts) -> Self {
        Self(Arc::new(Phases {
            policy: ArcSwap::from_pointee(p.policy),
            early: early::Early::new(p.metrics.in_flight.clone()),
            resolve: resolve::Resolve::new(p.registry),
            authenticate: authenticate::Authenticate::new(p.authenticators, p.audit.clone()),
            authorise: authorise::Authorise::new(p.access, p.audit),
            dispatch: dispatch::Dispatch::new(p.tiers, p.metrics.clone(), p.assertions),
            finish: finish::Finish::new(p.metrics),
        }))
    }

    /// Replace the run-time policy; calls already past resolve keep the one they started with.
    pub fn reload(&self, policy: Policy) {
        self.0.policy.store(Arc::new(policy));
    }

    /// Calls in progress on the gateway.
    pub fn in_flight(&self) -> usize {
        self.0.early.in_flight().current()
    }

    /// Handle one request; never fails: errors become responses at the rescue point. The
    /// connection's [`Conn`] is read from the request's extensions when present.
    pub async fn handle<B>(&self, mut req: Request<B>) -> Response<GatewayBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let conn = req.extensions_mut().remove::<Conn>();
        let grpc = crate::error::is_grpc(req.headers());
        let mut call = Call::new(
            req.method().clone(),
            correlation_id(req.headers()),
            grpc,
            conn,
        );
        crate::telemetry::continue_trace(&call.span, req.headers());
        let span = call.span.clone();
        let resp = match self.phases(&mut call, req).instrument(span).await {
            Ok(r) => r,
            Err(e) => {
                let _g = call.span.enter();
                tracing::debug!(kind = e.kind(), error = %Chain(&e), "call refused");
                drop(_g);
                e.rescue(call.grpc)
            }
        };
        self.0.finish.run(call, resp)
    }

    /// The phases, in order; the first refusal ends the call.
    async fn phases<B>(
        &self,
        call: &mut Call,
        req: Request<B>,
    ) -> Result<Response<GatewayBody>, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let p = &self.0;
        // The policy guard is dropped before the first await: a reload never waits for calls.
        let (limits, mut req) = {
            let mut req = req;
            let policy = p.policy.load();
            p.early.run(call, &mut req, &policy.limits)?;
            let target = p
                .resolve
                .run(&policy.operations, req.method(), req.uri().path())?;
            // From here the body's size is measured, whatever answers the call; it is
            // recorded when the body is dropped.
            let size = p.finish.request_size(&target);
            call.target = Some(target);
            (policy.limits, req.map(|b| RequestBody::new(b, size)))
        };
        p.authenticate.run(call, req.headers_mut()).await?;
        p.authorise.run(call).await?;
        if let Some(Target::Gateway(_)) = &call.target {
            req.extensions_mut().insert(Caller {
                identity: call.identity.clone(),
                peer: call.peer_ip(),
            });
        }
        p.dispatch.run(call, req, &limits).await
    }
}

impl<B> tower::Service<Request<B>> for Pipeline
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { Ok(me.handle(req).await) })
    }
}
