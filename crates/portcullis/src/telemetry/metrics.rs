//! Every metric the gateway exports, defined here and nowhere else, with its labels.
//!
//! Labels are bounded by construction: route templates (never raw paths), service names the
//! configuration allows, a fixed set of methods (others are `OTHER`), numeric status codes,
//! and closed enums for states, frame types and failure reasons.

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder, LabelValueEncoder,
    MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// A shared string label value (service names and route templates are shared with the
/// route table, so labelling a call allocates nothing).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

/// Labels of a call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Service name, `-` when no route matched.
    pub service: Label,
    /// Route template, `-` when no route matched.
    pub route: Label,
    /// Normalised method.
    pub method: &'static str,
    /// Status code.
    pub status: u16,
}

/// Labels of a per-route latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Service name.
    pub service: Label,
    /// Route template.
    pub route: Label,
}

/// Which listener a connection belongs to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Listener {
    /// Client-facing.
    ingress,
    /// Service-facing.
    link,
    /// Health probes and metric scrapes (`monitoring.listen`).
    monitoring,
}

impl Listener {
    /// The label value, also the accept loop's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ingress => "ingress",
            Self::link => "link",
            Self::monitoring => "monitoring",
        }
    }
}

/// Labels of a connection gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener.
    pub listener: Listener,
}

/// Labels of link frames: `type` is challenge, hello, hello_ack, reject, ping, health, keys
/// or drain.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct FrameLabels {
    /// Frame type.
    pub kind: &'static str,
}

impl EncodeLabelSet for FrameLabels {
    fn encode(&self, encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        [("type", self.kind)].encode(encoder)
    }
}

/// Labels of a REJECT the gateway sent: `code` is a [`portcullis_link::RejectCode`] name, a
/// closed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// `bad_credential`, `route_conflict`, `malformed_frame`, … (`RejectCode::as_str`).
    pub code: &'static str,
}

/// Labels of an authentication failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Closed set of reasons; at the link handshake `link_*`
    /// (`crate::link::authenticator::LinkAuthFailure::as_str`).
    pub reason: &'static str,
}

/// Labels of a pairing event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PairingLabels {
    /// `requested`, `approved`, `denied` or `revoked`.
    pub event: &'static str,
}

/// Labels of the instance-key gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PairingStateLabels {
    /// `pending`, `approved`, `denied` or `revoked`.
    pub state: &'static str,
}

/// Labels of the build info.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: &'static str,
}

/// Latency buckets: 0.5 ms to 60 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ]
    .into_iter()
}

fn new_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Upper bounds of the body size buckets, bytes: 64 B to 64 MiB by factors of 4 (a
/// health answer, a small JSON document, … a large upload), then `+Inf`.
pub const SIZE_BUCKETS: [u64; 11] = [
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];

/// A histogram of byte counts without a lock: an observation is two relaxed atomic adds.
/// prometheus-client's `Histogram` takes a write lock per observation, which every
/// data-plane thread would contend on for the same route; sizes are integers, so a sum in
/// an `AtomicU64` is exact. Clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct ByteHistogram(Arc<ByteCounts>);

#[derive(Debug, Default)]
struct ByteCounts {
    /// Per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; SIZE_BUCKETS.len() + 1],
    sum: AtomicU64,
}

impl ByteHistogram {
    /// Count one body of `bytes`.
    pub fn observe(&self, bytes: u64) {
        let i = SIZE_BUCKETS.partition_point(|b| *b < bytes);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Observations and their sum so far.
    pub fn snapshot(&self) -> (u64, u64) {
        let count = self
            .0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        (count, self.0.sum.load(Ordering::Relaxed))
    }
}

impl TypedMetric for ByteHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ByteHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0); SIZE_BUCKETS.len() + 1];
        let mut count = 0;
        for (i, slot) in buckets.iter_mut().enumerate() {
            let n = self.0.buckets[i].load(Ordering::Relaxed);
            count += n;
            // The encoder writes `+Inf` for `f64::MAX`, as for its own histograms.
            let bound = SIZE_BUCKETS.get(i).map_or(f64::MAX, |b| *b as f64);
            *slot = (bound, n);
        }
        let sum = self.0.sum.load(Ordering::Relaxed) as f64;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The per-route metrics a call records at its end, resolved once per route (the first call
/// of a route table entry, `routing::Route::metrics`) so a call takes no family lock and
/// allocates nothing for them.
#[derive(Debug, Clone)]
pub struct RouteMetrics(Arc<RouteHandles>);

/// What [`RouteMetrics`] holds.
#[derive(Debug)]
pub struct RouteHandles {
    /// `portcullis_request_duration_seconds` of the route.
    pub duration: Histogram,
    /// `portcullis_request_size_bytes` of the route.
    pub request_size: ByteHistogram,
    /// `portcullis_response_size_bytes` of the route.
    pub response_size: ByteHistogram,
}

impl std::ops::Deref for RouteMetrics {
    type Target = RouteHandles;
    fn deref(&self) -> &RouteHandles {
        &self.0
    }
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// `portcullis_requests_total{service,route,method,status}`.
    pub requests: Family<CallLabels, Counter>,
    /// `portcullis_request_duration_seconds{service,route}`: head received to response end.
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// `portcullis_request_size_bytes{service,route}`: bytes of request body read from the
    /// client, recorded when the body ends or is dropped.
    pub request_size: Family<RouteLabels, ByteHistogram>,
    /// `portcullis_response_size_bytes{service,route}`: bytes of response body handed to the
    /// client connection, recorded when the body ends or is dropped.
    pub response_size: Family<RouteLabels, ByteHistogram>,
    /// `portcullis_upstream_duration_seconds{service,route}`: stream opened to response head.
    pub upstream_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// `portcullis_active_connections{listener}`.
    pub active_connections: Family<ListenerLabels, Gauge>,
    /// `portcullis_parked_connections{listener}`: open HTTP/1.1 connections idle and parked
    /// (no task, no buffers; counted in `active_connections` too).
    pub parked_connections: Family<ListenerLabels, Gauge>,
    /// `portcullis_link_frames_total{type}`.
    pub link_frames: Family<FrameLabels, Counter>,
    /// `portcullis_link_rejects_total{code}`: REJECTs the gateway sent at the link handshake,
    /// by code (each is also a `portcullis_link_frames_total{type="reject"}`).
    pub link_rejects: Family<RejectLabels, Counter>,
    /// `portcullis_auth_failures_total{reason}`: missing, malformed, unknown, revoked,
    /// expired, wrong, disabled, unavailable (401/503); throttled (logins); token_malformed,
    /// token_header, token_unknown_key, token_signature, token_validity, token_audience,
    /// password_changed (tokens); forbidden (403). A closed set: `auth::AuthFailure::as_str`.
    pub auth_failures: Family<ReasonLabels, Counter>,
    /// `portcullis_audit_dropped_total`: failure audit events dropped because the audit
    /// queue was full (the failure itself is still counted above).
    pub audit_dropped: Counter,
    /// `portcullis_identity_assertions_signed_total`: identity assertions signed (each is then
    /// reused per data-plane thread until near its expiry, so this grows with distinct callers
    /// per minute, not with calls).
    pub assertions_signed: Counter,
    /// `portcullis_identity_assertion_failures_total`: calls refused with 503 because no
    /// assertion could be signed (no signing key yet).
    pub assertion_failures: Counter,
    /// Sessions and their workers (`crate::sessions`).
    pub sessions: Arc<SessionMetrics>,
    /// `portcullis_link_pairings_total{event}`: pairing events this gateway saw: `requested`
    /// (a new pending pairing), `approved`, `denied` (through its admin API), `revoked`.
    pub pairings: Family<PairingLabels, Counter>,
    /// `portcullis_link_keys{state}`: instance keys in the store by state (`pending` — not
    /// lapsed —, `approved`, `denied`, `revoked`), refreshed on every store change and every
    /// 10 s, whichever process (CLI, API, another node) made the change.
    pub link_keys: Family<PairingStateLabels, Gauge>,
    /// `portcullis_in_flight_calls`: calls in progress (head received, response body not yet
    /// ended), the figure `ingress.max_in_flight` sheds load at. The pipeline's admission
    /// counts on this gauge itself, so it cannot drift.
    pub in_flight: Gauge,
    /// The [`RouteMetrics`] of calls that matched no route (gateway operations, unrouted
    /// paths, refusals before resolve): `service="-",route="-"`.
    unrouted: OnceLock<RouteMetrics>,
    registry: Registry,
}

/// Normalise a method into a bounded label.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Create and register every metric. `extra` adds scrape-time collectors (link states).
    pub fn new(extra: Vec<Box<dyn prometheus_client::collector::Collector>>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<CallLabels, Counter>::default();
        let request_duration = Family::new_with_constructor(new_histogram as fn() -> Histogram);
        let upstream_duration = Family::new_with_constructor(new_histogram as fn() -> Histogram);
        let request_size = Family::<RouteLabels, ByteHistogram>::default();
        let response_size = Family::<RouteLabels, ByteHistogram>::default();
        let active_connections = Family::<ListenerLabels, Gauge>::default();
        let parked_connections = Family::<ListenerLabels, Gauge>::default();
        let link_frames = Family::<FrameLabels, Counter>::default();
        let link_rejects = Family::<RejectLabels, Counter>::default();
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        let audit_dropped = Counter::default();
        let assertions_signed = Counter::default();
        let assertion_failures = Counter::default();
        let pairings = Family::<PairingLabels, Counter>::default();
        let link_keys = Family::<PairingStateLabels, Gauge>::default();
        let in_flight = Gauge::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        registry.register(
            "portcullis_requests",
            "Calls answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "portcullis_request_duration_seconds",
            "Time from request head to response end",
            request_duration.clone(),
        );
        registry.register(
            "portcullis_request_size_bytes",
            "Request body bytes read from the client, by route",
            request_size.clone(),
        );
        registry.register(
            "portcullis_response_size_bytes",
            "Response body bytes sent to the client, by route",
            response_size.clone(),
        );
        registry.register(
            "portcullis_upstream_duration_seconds",
            "Time from opening the stream on the link to the service's response head",
            upstream_duration.clone(),
        );
        registry.register(
            "portcullis_active_connections",
            "Open connections, by listener",
            active_connections.clone(),
        );
        registry.register(
            "portcullis_parked_connections",
            "Open HTTP/1.1 connections parked while idle (no task, no buffers), by listener",
            parked_connections.clone(),
        );
        registry.register(
            "portcullis_link_frames",
            "Link control frames and heartbeats exchanged, by type",
            link_frames.clone(),
        );
        registry.register(
            "portcullis_link_rejects",
            "REJECTs sent to services at the link handshake, by code",
            link_rejects.clone(),
        );
        registry.register(
            "portcullis_auth_failures",
            "Refused credentials, by reason",
            auth_failures.clone(),
        );
        registry.register(
            "portcullis_audit_dropped",
            "Authentication-failure audit events dropped because the audit queue was full",
            audit_dropped.clone(),
        );
        registry.register(
            "portcullis_identity_assertions_signed",
            "Identity assertions signed (each reused per data-plane thread until near expiry)",
            assertions_signed.clone(),
        );
        registry.register(
            "portcullis_identity_assertion_failures",
            "Calls refused because no identity assertion could be signed",
            assertion_failures.clone(),
        );
        registry.register(
            "portcullis_in_flight_calls",
            "Calls in progress (probes and scrapes included), against ingress.max_in_flight",
            in_flight.clone(),
        );
        registry.register(
            "portcullis_tls_library_messages",
            "Warnings and errors of the TLS library (mostly about what peers sent), counted instead of logged",
            super::TLS_LIBRARY_MESSAGES.clone(),
        );
        registry.register(
            "portcullis_link_pairings",
            "Pairing events of instance keys, by event",
            pairings.clone(),
        );
        registry.register(
            "portcullis_link_keys",
            "Instance keys of links in the store, by state (pending: waiting for an admin)",
            link_keys.clone(),
        );
        registry.register("portcullis_build_info", "Build of this gateway", build_info);
        let sessions = Arc::new(SessionMetrics::register(&mut registry));
        registry.register_collector(Box::new(super::process::ProcessCollector));
        for c in extra {
            registry.register_collector(c);
        }
        Self {
            requests,
            request_duration,
            upstream_duration,
            request_size,
            response_size,
            active_connections,
            parked_connections,
            link_frames,
            link_rejects,
            auth_failures,
            audit_dropped,
            assertions_signed,
            assertion_failures,
            sessions,
            pairings,
            link_keys,
            in_flight,
            unrouted: OnceLock::new(),
            registry,
        }
    }

    /// The per-call handles of `labels`' route (one lookup in each family: resolve once per
    /// route and keep them, as `routing::Route::metrics` does).
    pub fn route(&self, labels: &RouteLabels) -> RouteMetrics {
        RouteMetrics(Arc::new(RouteHandles {
            duration: self.request_duration.get_or_create(labels).clone(),
            request_size: self.request_size.get_or_create(labels).clone(),
            response_size: self.response_size.get_or_create(labels).clone(),
        }))
    }

    /// The handles of calls with no route (`-`), resolved on first use.
    pub fn unrouted(&self) -> &RouteMetrics {
        self.unrouted.get_or_init(|| {
            let dash: Arc<str> = "-".into();
            self.route(&RouteLabels {
                service: Label(dash.clone()),
                route: Label(dash),
            })
        })
    }

    /// Count a link frame.
    pub fn frame(&self, kind: &'static str) {
        self.link_frames.get_or_create(&FrameLabels { kind }).inc();
    }

    /// Count a REJECT sent at the link handshake: a frame of type `reject`, by its code.
    pub fn reject(&self, code: portcullis_link::RejectCode) {
        self.frame("reject");
        self.link_rejects
            .get_or_create(&RejectLabels {
                code: code.as_str(),
            })
            .inc();
    }

    /// Count a pairing event (`requested`, `approved`, `denied`, `revoked`).
    pub fn pairing(&self, event: &'static str) {
        self.pairings.get_or_create(&PairingLabels { event }).inc();
    }

    /// Count one refused credential (client key or link token) by reason.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The exposition text (OpenMetrics 1.0).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The parked-connections gauge of `listener`.
    pub fn parked_connections(&self, listener: Listener) -> Gauge {
        self.parked_connections
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    /// A guard on the parked-connections gauge of `listener`, for a connection parked in its
    /// own task (TLS): +1 now, −1 on drop.
    pub fn parked(&self, listener: Listener) -> ConnectionGauge {
        let g = self.parked_connections(listener);
        g.inc();
        ConnectionGauge(g)
    }

    /// A gauge guard: +1 now, −1 on drop.
    pub fn connection(self: &Arc<Self>, listener: Listener) -> ConnectionGauge {
        let g = self
            .active_connections
            .get_or_create(&ListenerLabels { listener })
            .clone();
        g.inc();
        ConnectionGauge(g)
    }
}

/// Decrements a connection gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGauge(Gauge);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Does the scraper ask for the Prometheus text format (0.0.4) rather than OpenMetrics? Only
/// when its `Accept` names `text/plain` and not OpenMetrics: without an `Accept`, or with
/// `*/*`, the answer stays OpenMetrics, which Prometheus itself prefers.
fn wants_prometheus_text(headers: &http::HeaderMap) -> bool {
    let accept: Vec<&str> = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let names = |what: &str| accept.iter().any(|a| a.contains(what));
    names("text/plain") && !names("application/openmetrics-text")
}

/// OpenMetrics text as Prometheus text 0.0.4: counters are declared under their sample name
/// (`_total`), and the `# UNIT` and `# EOF` lines, which 0.0.4 does not have, are left out.
/// Histograms, gauges and samples are the same in both.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" counter"))
        {
            counters.push(name);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(l.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The `/metrics` operation: open unless `capability` is set (`auth.metrics_scope`), in which
/// case it needs an API key with that capability — decided by the pipeline's authenticate and
/// authorise phases like any other call.
pub fn operation(
    metrics: Arc<Metrics>,
    capability: Option<Arc<str>>,
) -> crate::pipeline::Operation {
    use crate::pipeline::AuthPolicy;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::any(move |headers: http::HeaderMap| {
            let m = metrics.clone();
            async move {
                let text = m.encode();
                if wants_prometheus_text(&headers) {
                    (
                        [(http::header::CONTENT_TYPE, PROMETHEUS_TEXT)],
                        to_prometheus_text(&text),
                    )
                } else {
                    ([(http::header::CONTENT_TYPE, OPENMETRICS)], text)
                }
            }
        }),
    );
    crate::pipeline::Operation {
        name: "metrics",
        path: crate::pipeline::PathMatch::Exact("/metrics"),
        auth: match capability {
            Some(_) => AuthPolicy::Credential(crate::auth::CredentialKinds::BEARER),
            None => AuthPolicy::Public,
        },
        requires: match capability {
            Some(c) => crate::access::Requirement::Capability(c),
            None => crate::access::Requirement::Public,
        },
        router,
    }
}

/// `/metrics` on the ingress when the monitoring listener serves it: public, and always the
/// fixed 404, so a scraper still pointed at the public port fails loudly instead of reading
/// someone else's `/metrics`; the path stays reserved, so no service can declare it either.
/// Named `metrics` like the real one, so such scrapes stay out of the call metrics too.
pub fn served_elsewhere() -> crate::pipeline::Operation {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::any(|| async {
            (
                http::StatusCode::NOT_FOUND,
                [(http::header::CONTENT_TYPE, "application/json")],
                crate::error::GatewayError::NotFound.body(),
            )
        }),
    );
    crate::pipeline::Operation {
        name: "metrics",
        path: crate::pipeline::PathMatch::Exact("/metrics"),
        auth: crate::pipeline::AuthPolicy::Public,
        requires: crate::access::Requirement::Public,
        router,
    }
}

/// One label `reason` / `kind` / `hop` / `outcome` value (all closed sets but command kinds,
/// which [`SessionMetrics`] caps).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct NameLabel {
    /// Label name.
    pub key: &'static str,
    /// Value.
    pub value: Label,
}

impl EncodeLabelSet for NameLabel {
    fn encode(&self, encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        [(self.key, &*self.value.0)].encode(encoder)
    }
}

/// Labels of a session command: its kind and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// The command kind (a kind the worker declared, `undeclared`, or `other` past
    /// [`MAX_COMMAND_KIND_LABELS`]).
    pub kind: Label,
    /// `started`, `succeeded` (any reply, even one carrying a backend error), `failed`,
    /// `timed_out`.
    pub outcome: &'static str,
}

/// Distinct command kinds labelled before the rest count as `other`: workers declare kinds,
/// and a label set must stay bounded whatever they declare.
pub const MAX_COMMAND_KIND_LABELS: usize = 256;

/// Session metrics: `portcullis_sessions_*`.
#[derive(Debug)]
pub struct SessionMetrics {
    /// `portcullis_sessions_open`: sessions not closed or faulted (sampled by the monitor).
    pub open: Gauge,
    /// `portcullis_sessions_opened_total`: sessions that reached Ready.
    pub opened: Counter,
    /// `portcullis_sessions_refused_total{reason}`: limit, workspace-limit, start-failed.
    pub refused: Family<NameLabel, Counter>,
    /// `portcullis_sessions_closed_total{reason}`: client-close, lease-expired, idle,
    /// gateway-shutdown, worker-exited.
    pub closed: Family<NameLabel, Counter>,
    /// `portcullis_sessions_faults_total{kind}`.
    pub faults: Family<NameLabel, Counter>,
    /// `portcullis_sessions_workers_running`: workers started and not yet killed or closed.
    pub workers_running: Gauge,
    /// `portcullis_sessions_worker_start_seconds`: spawn to ready.
    pub spawn_time: Histogram,
    /// `portcullis_sessions_open_seconds`: open request to Ready.
    pub open_time: Histogram,
    /// `portcullis_sessions_commands_total{kind,outcome}`.
    pub commands: Family<CommandLabels, Counter>,
    /// `portcullis_sessions_command_duration_seconds`.
    pub command_duration: Histogram,
    /// `portcullis_sessions_events_total`: events received from workers.
    pub events: Counter,
    /// `portcullis_sessions_queue_depth{hop}`: events waiting per hop (sampled).
    pub queue_depth: Family<NameLabel, Gauge>,
    /// `portcullis_sessions_queue_overflows_total{hop}`.
    pub overflows: Family<NameLabel, Counter>,
    /// `portcullis_sessions_heartbeats_missed_total`.
    pub heartbeats_missed: Counter,
    /// `portcullis_sessions_workers_killed_total{reason}`: fault, shutdown-timeout,
    /// gateway-shutdown.
    pub killed: Family<NameLabel, Counter>,
    kinds: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
}

fn name(key: &'static str, value: &str) -> NameLabel {
    NameLabel {
        key,
        value: Label(value.into()),
    }
}

impl SessionMetrics {
    /// Create and register in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            open: Gauge::default(),
            opened: Counter::default(),
            refused: Family::default(),
            closed: Family::default(),
            faults: Family::default(),
            workers_running: Gauge::default(),
            spawn_time: new_histogram(),
            open_time: new_histogram(),
            commands: Family::default(),
            command_duration: new_histogram(),
            events: Counter::default(),
            queue_depth: Family::default(),
            overflows: Family::default(),
            heartbeats_missed: Counter::default(),
            killed: Family::default(),
            kinds: Default::default(),
        };
        r.register("portcullis_sessions_open", "Sessions open", m.open.clone());
        r.register(
            "portcullis_sessions_opened",
            "Sessions that reached Ready",
            m.opened.clone(),
        );
        r.register(
            "portcullis_sessions_refused",
            "Opens refused, by reason",
            m.refused.clone(),
        );
        r.register(
            "portcullis_sessions_closed",
            "Sessions closed, by reason",
            m.closed.clone(),
        );
        r.register(
            "portcullis_sessions_faults",
            "Session faults, by kind",
            m.faults.clone(),
        );
        r.register(
            "portcullis_sessions_workers_running",
            "Worker processes running",
            m.workers_running.clone(),
        );
        r.register(
            "portcullis_sessions_worker_start_seconds",
            "From spawning a worker to its ready frame",
            m.spawn_time.clone(),
        );
        r.register(
            "portcullis_sessions_open_seconds",
            "From an open request to a Ready session",
            m.open_time.clone(),
        );
        r.register(
            "portcullis_sessions_commands",
            "Session commands, by kind and outcome",
            m.commands.clone(),
        );
        r.register(
            "portcullis_sessions_command_duration_seconds",
            "From invoke to reply",
            m.command_duration.clone(),
        );
        r.register(
            "portcullis_sessions_events",
            "Events received from workers",
            m.events.clone(),
        );
        r.register(
            "portcullis_sessions_queue_depth",
            "Events waiting, by hop",
            m.queue_depth.clone(),
        );
        r.register(
            "portcullis_sessions_queue_overflows",
            "Event queue overflows, by hop",
            m.overflows.clone(),
        );
        r.register(
            "portcullis_sessions_heartbeats_missed",
            "Workers that missed their heartbeat grace",
            m.heartbeats_missed.clone(),
        );
        r.register(
            "portcullis_sessions_workers_killed",
            "Worker process groups killed, by reason",
            m.killed.clone(),
        );
        m
    }

    /// An unregistered set (component tests).
    pub fn detached() -> Arc<Self> {
        Arc::new(Self::register(&mut Registry::default()))
    }

    /// A session reached Ready `took` after its open began.
    pub fn opened(&self, took: std::time::Duration) {
        self.opened.inc();
        self.open_time.observe(took.as_secs_f64());
    }

    /// A worker reached ready `took` after it was spawned.
    pub fn spawn_time(&self, took: std::time::Duration) {
        self.workers_running.inc();
        self.spawn_time.observe(took.as_secs_f64());
    }

    /// An open was refused.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&name("reason", reason)).inc();
    }

    /// A session closed.
    pub fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&name("reason", reason)).inc();
    }

    /// A Ready worker stopped (closed or faulted).
    pub fn worker_gone(&self) {
        self.workers_running.dec();
    }

    /// A session faulted.
    pub fn faulted(&self, kind: &'static str) {
        self.faults.get_or_create(&name("kind", kind)).inc();
    }

    /// A worker's process group was killed.
    pub fn killed(&self, reason: &'static str) {
        self.killed.get_or_create(&name("reason", reason)).inc();
    }

    /// A command of `kind` reached `outcome`.
    pub fn command(&self, kind: &str, outcome: &'static str) {
        let kind: Arc<str> = {
            let mut k = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
            match k.get(kind) {
                Some(v) => v.clone(),
                None if k.len() < MAX_COMMAND_KIND_LABELS => {
                    let v: Arc<str> = kind.into();
                    k.insert(v.clone());
                    v
                }
                None => "other".into(),
            }
        };
        self.commands
            .get_or_create(&CommandLabels {
                kind: Label(kind),
                outcome,
            })
            .inc();
    }

    /// A command took `took`.
    pub fn command_duration(&self, took: std::time::Duration) {
        self.command_duration.observe(took.as_secs_f64());
    }

    /// An event arrived.
    pub fn event(&self) {
        self.events.inc();
    }

    /// A hop overflowed.
    pub fn overflow(&self, hop: &'static str) {
        self.overflows.get_or_create(&name("hop", hop)).inc();
    }

    /// A worker missed its heartbeat grace.
    pub fn heartbeat_missed(&self) {
        self.heartbeats_missed.inc();
    }

    /// The monitor's sample: open sessions, and depth of hops worker-queue, session-buffer,
    /// subscriber-queue.
    pub fn gauges(&self, open: i64, depth: [i64; 3]) {
        self.open.set(open);
        for (hop, d) in ["worker-queue", "session-buffer", "subscriber-queue"]
            .into_iter()
            .zip(depth)
        {
            self.queue_depth.get_or_create(&name("hop", hop)).set(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_declares_counters_by_their_sample_names() {
        let om = "# HELP portcullis_requests Calls answered.\n# TYPE portcullis_requests counter\nportcullis_requests_total{status=\"200\"} 3\n# TYPE portcullis_links gauge\nportcullis_links 1\n# UNIT x seconds\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP portcullis_requests_total Calls answered.\n# TYPE portcullis_requests_total counter\nportcullis_requests_total{status=\"200\"} 3\n# TYPE portcullis_links gauge\nportcullis_links 1\n"
        );
    }

    #[test]
    fn byte_histograms_count_each_size_in_the_first_bucket_that_holds_it() {
        let mut r = Registry::default();
        let h = ByteHistogram::default();
        r.register("size_bytes", "Sizes", h.clone());
        for n in [0, 64, 65, 1 << 20, u64::from(u32::MAX)] {
            h.observe(n);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for line in [
            "size_bytes_count 5",
            "size_bytes_bucket{le=\"64.0\"} 2",
            "size_bytes_bucket{le=\"256.0\"} 3",
            "size_bytes_bucket{le=\"262144.0\"} 3",
            "size_bytes_bucket{le=\"1048576.0\"} 4",
            "size_bytes_bucket{le=\"67108864.0\"} 4",
            "size_bytes_bucket{le=\"+Inf\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(h.snapshot(), (5, 65 + 64 + (1 << 20) + u64::from(u32::MAX)));
    }

    #[test]
    fn the_text_format_is_served_only_when_asked_for() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::ACCEPT, v.parse().unwrap());
            m
        };
        assert!(!wants_prometheus_text(&http::HeaderMap::new()));
        assert!(!wants_prometheus_text(&h("*/*")));
        assert!(wants_prometheus_text(&h("text/plain;version=0.0.4")));
        assert!(!wants_prometheus_text(&h(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
    }
}
