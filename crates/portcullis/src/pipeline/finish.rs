//! Finish phase: the call's context is read once, when the response head is ready, for the
//! request counter and the span; the access log line, the duration and the response size are
//! recorded when the response body ends (or is dropped), so they cover the whole response,
//! together with the release of everything the call holds (its load-shedding slot, its count
//! on the connection). The request size is recorded by the request body itself
//! (`body::RequestBody`) when it is dropped. The histograms' handles are resolved once per
//! route (`Target::metrics`), so a call takes no metric family lock for them.
//!
//! Health probes and metric scrapes are the orchestrator's and the scraper's traffic, not
//! calls: they stay out of `portcullis_requests_total`, the duration and size histograms, and their
//! log line is at debug level, so a probe every second neither floods the access log nor
//! dilutes the call latency an operator alerts on.

use http::header::HeaderName;
use http::Response;
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;

use super::call::Call;
use super::resolve::Target;
use crate::body::GatewayBody;
use crate::telemetry::metrics::ByteHistogram;
use crate::telemetry::metrics::{method_label, CallLabels, Label, RouteLabels, RouteMetrics};
use crate::telemetry::Metrics;

const CORRELATION_ID: HeaderName =
    HeaderName::from_static(portcullis_link::headers::CORRELATION_ID);

/// The `-` label of calls that matched no route, shared so labelling them allocates nothing.
fn dash() -> Arc<str> {
    static DASH: OnceLock<Arc<str>> = OnceLock::new();
    DASH.get_or_init(|| Arc::from("-")).clone()
}

/// Records the call's duration and writes its access log line when the response body ends
/// or is dropped.
struct DurationRecord {
    /// The route's duration and response size histograms; `None` for a probe.
    handles: Option<RouteMetrics>,
    /// Response body bytes sent, set when the body ends.
    sent: u64,
    labels: RouteLabels,
    started: Instant,
    /// Probe or scrape: not a call (see the module's doc).
    probe: bool,
    log: AccessLog,
    /// The call's span: the log line is written inside it, as before the body.
    span: tracing::Span,
}

/// The fields of the access log line, taken from the call when its head is ready.
struct AccessLog {
    correlation_id: http::HeaderValue,
    method: http::Method,
    instance: Option<Arc<str>>,
    key_id: Option<Arc<str>>,
    status: u16,
}

impl Drop for DurationRecord {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let _entered = self.span.enter();
        if let Some(h) = &self.handles {
            h.duration.observe(elapsed.as_secs_f64());
            h.response_size.observe(self.sent);
        }
        let l = &self.log;
        let (correlation_id, route, service) = (
            l.correlation_id.to_str().unwrap_or("-"),
            &*self.labels.route.0,
            &*self.labels.service.0,
        );
        let (instance, key_id) = (
            l.instance.as_deref().unwrap_or("-"),
            l.key_id.as_deref().unwrap_or("-"),
        );
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        if self.probe {
            tracing::debug!(correlation_id, method = %l.method, route, service, instance,
                key_id, status = l.status, duration_ms, "call");
        } else {
            tracing::info!(correlation_id, method = %l.method, route, service, instance,
                key_id, status = l.status, duration_ms, "call");
        }
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
        let probe = call.target.as_ref().is_some_and(Target::is_probe);
        // Not resolved for probes: that would create `-` series they never record into.
        let handles = (!probe).then(|| {
            match &call.target {
                Some(t) => t.metrics(&self.metrics),
                None => self.metrics.unrouted(),
            }
            .clone()
        });
        if !probe {
            self.metrics
                .requests
                .get_or_create(&CallLabels {
                    service: labels.service.clone(),
                    route: labels.route.clone(),
                    method: method_label(&call.method),
                    status,
                })
                .inc();
        }
        let span = call.span.clone();
        span.record("status", status);
        if let Some(i) = &call.served_by {
            span.record("instance", &**i);
        }
        let record = DurationRecord {
            handles,
            sent: 0,
            labels,
            started: call.timings.started,
            probe,
            log: AccessLog {
                correlation_id: call.correlation_id.clone(),
                method: call.method.clone(),
                instance: call.served_by.clone(),
                key_id: call.identity.as_ref().map(|i| i.via.id.clone()),
                status,
            },
            span,
        };
        let holds = call.holds;
        let (parts, body) = resp.into_parts();
        let end = BodyEnd {
            _active: holds.active,
            _slot: holds.slot,
            record,
        };
        Response::from_parts(parts, body.with_guard(end))
    }

    /// Where the request body's size goes: the target's histogram, or none for a probe.
    pub fn request_size(&self, target: &Target) -> Option<ByteHistogram> {
        (!target.is_probe()).then(|| target.metrics(&self.metrics).request_size.clone())
    }
}

/// What the response body holds until it ends, dropped in this order: the connection's
/// activity count, the in-flight slot, then the record (duration, size, access log line).
struct BodyEnd<A, S> {
    _active: A,
    _slot: S,
    record: DurationRecord,
}

impl<A: Send + Sync + 'static, S: Send + Sync + 'static> crate::body::Guard for BodyEnd<A, S> {
    fn ended(&mut self, sent: u64) {
        self.record.sent = sent;
    }
}
