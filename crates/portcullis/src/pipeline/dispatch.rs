//! Dispatch phase: hand the call to its target — over a link to an instance of the service
//! (`proxy::forward`: instance selection, one HTTP/2 stream per call, the client's body pumped
//! under flow control), or to the gateway operation's router.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::Instrument;

use super::call::Call;
use super::resolve::Target;
use super::Limits;
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
}

impl Dispatch {
    /// Forward with `tiers` (region preference), recording upstream latency in `metrics`.
    pub fn new(tiers: Tiers, metrics: std::sync::Arc<Metrics>) -> Self {
        Self { tiers, metrics }
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
                let ctx = CallContext {
                    route: &route,
                    correlation_id: &call.correlation_id,
                    max_body_bytes: limits.max_body_bytes,
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
