//! Dispatch phase: hand the call to its target — over a link to an instance of the service
//! (`proxy::forward`: instance selection, one HTTP/2 stream per call, the client's body pumped
//! under flow control), or to the gateway operation's router.
//!
//! A call to a service carries the gateway's identity assertion of its caller
//! (`x-portcullis-identity`, [`AssertionSigner`]): the only identity a service sees, since the
//! early phase stripped every `x-portcullis-*` header the client sent (trailers too, in the
//! body pump) and the authenticate phase removed the credential. A public target has no
//! identity and gets no assertion; an authenticated call whose assertion cannot be signed
//! fails closed with 503 rather than reach a service that would refuse it.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::Instrument;

use super::call::Call;
use super::resolve::Target;
use super::Limits;
use crate::access::TargetWorkspace;
use crate::auth::assertion::AssertionSigner;
use crate::auth::{Identity, WorkspaceRef};
use crate::body::{BoxError, GatewayBody};
use crate::error::GatewayError;
use crate::proxy::{self, CallContext};
use crate::routing::Tiers;
use crate::telemetry::Metrics;

/// The dispatch phase, built once.
#[derive(Debug)]
pub struct Dispatch {
    tiers: Tiers,
    metrics: std::sync::Arc<Metrics>,
    assertions: std::sync::Arc<AssertionSigner>,
}

/// The workspace a call acts in, which its assertion names: the one the authorise phase
/// decided on (`Call::workspace`) — the identity's own, or the one an identity bound across
/// workspaces named in `x-portcullis-workspace`, with its name as the authorise phase found it
/// — never one the caller merely belongs to.
fn acting_workspace<'a>(call: &'a Call, identity: &'a Identity) -> &'a WorkspaceRef {
    match &call.workspace {
        Some(TargetWorkspace::Named(w)) => w,
        _ => &identity.workspace,
    }
}

impl Dispatch {
    /// Forward with `tiers` (region preference), recording upstream latency in `metrics`,
    /// asserting callers' identities with `assertions`.
    pub fn new(
        tiers: Tiers,
        metrics: std::sync::Arc<Metrics>,
        assertions: std::sync::Arc<AssertionSigner>,
    ) -> Self {
        Self {
            tiers,
            metrics,
            assertions,
        }
    }

    /// Run `call`'s target on `req`.
    pub async fn run<B>(
        &self,
        call: &mut Call,
        req: Request<B>,
        limits: &Limits,
    ) -> Result<Response<GatewayBody>, GatewayError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        call.timings.dispatched = Some(Instant::now());
        match call.target.clone() {
            Some(Target::Service(route)) => {
                call.span.record("route", &*route.template);
                call.span.record("service", &*route.service);
                let identity = match &call.identity {
                    Some(id) => Some(
                        self.assertions
                            .assertion(id, acting_workspace(call, id), &route.service)
                            .map_err(|e| {
                                self.metrics.assertion_failures.inc();
                                tracing::error!(error = %e, "cannot sign the identity assertion");
                                GatewayError::Unavailable("identity assertion")
                            })?,
                    ),
                    None => None,
                };
                let ctx = CallContext {
                    route: &route,
                    identity,
                    correlation_id: &call.correlation_id,
                    max_body_bytes: limits.max_body_bytes,
                    body_stall_timeout: limits.body_stall_timeout,
                    client_ip: call.peer_ip(),
                    metrics: &self.metrics,
                };
                proxy::forward(req, ctx, &self.tiers)
                    .instrument(tracing::info_span!("link"))
                    .await
            }
            Some(Target::Gateway(op)) => {
                let resp = match op.router.clone().oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok(resp.map(|b| GatewayBody::boxed(b.map_err(Into::into).boxed_unsync())))
            }
            Some(Target::Unrouted(u)) => Err(u.into()),
            None => Err(GatewayError::NotFound),
        }
    }
}
