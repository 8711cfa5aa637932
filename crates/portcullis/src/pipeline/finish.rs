//! Finish phase: the call's context is read once, when the response head is ready, for the
//! access log line, the request counter and the span; the duration is recorded when the
//! response body ends (or is dropped), together with the release of everything the call holds
//! (its load-shedding slot, its count on the connection).

use http::header::HeaderName;
use http::Response;
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;

use super::call::Call;
use crate::body::GatewayBody;
use crate::telemetry::metrics::{method_label, CallLabels, Label, RouteLabels};
use crate::telemetry::Metrics;

const CORRELATION_ID: HeaderName =
    HeaderName::from_static(portcullis_link::headers::CORRELATION_ID);

/// The `-` label of calls that matched no route, shared so labelling them allocates nothing.
fn dash() -> Arc<str> {
    static DASH: OnceLock<Arc<str>> = OnceLock::new();
    DASH.get_or_init(|| Arc::from("-")).clone()
}

/// Records the call's duration when the response body ends or is dropped.
struct DurationRecord {
    metrics: Arc<Metrics>,
    labels: RouteLabels,
    started: Instant,
}

impl Drop for DurationRecord {
    fn drop(&mut self) {
        self.metrics
            .request_duration
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// The finish phase, built once.
#[derive(Debug)]
pub struct Finish {
    metrics: Arc<Metrics>,
}

impl Finish {
    /// Count and log into `metrics` and the log.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }

    /// Log, count and label the response of `call`.
    pub fn run(&self, mut call: Call, mut resp: Response<GatewayBody>) -> Response<GatewayBody> {
        if let Some(by) = resp.extensions_mut().remove::<crate::proxy::ServedBy>() {
            call.served_by = Some(by.0);
        }
        resp.headers_mut()
            .insert(CORRELATION_ID, call.correlation_id.clone());
        let status = resp.status().as_u16();
        let (service, route) = match call.target.as_ref().and_then(|t| t.labels()) {
            Some((s, r)) => (s.clone(), r.clone()),
            None => (dash(), dash()),
        };
        let labels = RouteLabels {
            service: Label(service),
            route: Label(route),
        };
        self.metrics
            .requests
            .get_or_create(&CallLabels {
                service: labels.service.clone(),
                route: labels.route.clone(),
                method: method_label(&call.method),
                status,
            })
            .inc();
        let span = call.span.clone();
        span.record("status", status);
        if let Some(i) = &call.served_by {
            span.record("instance", &**i);
        }
        {
            let _g = span.enter();
            tracing::info!(
                correlation_id = call.correlation_id.to_str().unwrap_or("-"),
                method = %call.method,
                route = &*labels.route.0,
                service = &*labels.service.0,
                instance = call.served_by.as_deref().unwrap_or("-"),
                key_id = call.identity.as_ref().map_or("-", |i| &*i.via.id),
                status,
                duration_ms = call.timings.started.elapsed().as_secs_f64() * 1000.0,
                "call"
            );
        }
        let record = DurationRecord {
            metrics: self.metrics.clone(),
            labels,
            started: call.timings.started,
        };
        let holds = call.holds;
        let (parts, body) = resp.into_parts();
        Response::from_parts(
            parts,
            body.with_guard((holds.active, holds.slot, record, span)),
        )
    }
}
