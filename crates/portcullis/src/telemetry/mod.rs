//! Telemetry: metrics (defined in [`metrics`]), structured logs behind one redaction layer
//! ([`redact`]), and the scrape-time view of links.

pub mod log_queue;
pub mod metrics;
pub mod process;
pub mod redact;

pub use metrics::Metrics;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::routing::{LinkState, Registry};

/// `portcullis_links{service,state}` and `portcullis_link_rtt_seconds{service,instance}`,
/// computed from the registry at scrape time so the gauges can never drift from the truth.
#[derive(Debug)]
pub struct LinksCollector(pub Arc<Registry>);

impl prometheus_client::collector::Collector for LinksCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut counts: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        for inst in self.0.instances() {
            *counts
                .entry((inst.service.to_string(), inst.state().as_str()))
                .or_default() += 1;
        }
        // Every state of every linked service appears, zeros included, so a rate() over a
        // state that just emptied does not vanish.
        let services: Vec<String> = counts.keys().map(|(s, _)| s.clone()).collect();
        for s in services {
            for st in [LinkState::Online, LinkState::Unstable, LinkState::Draining] {
                counts.entry((s.clone(), st.as_str())).or_default();
            }
        }
        let mut metric = encoder.encode_descriptor(
            "portcullis_links",
            "Linked instances, by service and liveness state.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for ((service, state), n) in counts {
            let labels = [("service", service), ("state", state.to_string())];
            ConstGauge::new(n).encode(metric.encode_family(&labels)?)?;
        }
        // The round-trip time selection weighs each link by. Per link, computed from the live
        // registry at scrape time: a link that is gone leaves no series behind, so the label
        // set is bounded by the links up now (at most MAX_INSTANCES_PER_SERVICE per service).
        let mut rtts: Vec<(String, String, f64)> = self
            .0
            .instances()
            .iter()
            .map(|i| {
                (
                    i.service.to_string(),
                    i.instance_id.to_string(),
                    i.rtt_us() as f64 / 1e6,
                )
            })
            .collect();
        rtts.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut metric = encoder.encode_descriptor(
            "portcullis_link_rtt_seconds",
            "Smoothed HTTP/2 PING round-trip time of each link, as instance selection uses it.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (service, instance, rtt) in rtts {
            let labels = [("service", service), ("instance", instance)];
            ConstGauge::new(rtt).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The store's pool and the key lookups that reached it, read at scrape time:
/// `portcullis_store_connections{state="in_use"|"idle"}` and
/// `portcullis_key_verification_queries_total`, the API-key verifications the verification
/// cache could not answer (its misses, negative ones included).
#[derive(Debug)]
pub struct StoreCollector(pub crate::store::Store);

impl prometheus_client::collector::Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (open, idle) = self.0.pool_connections();
        let idle = i64::try_from(idle).unwrap_or(i64::MAX);
        let mut metric = encoder.encode_descriptor(
            "portcullis_store_connections",
            "Connections of the store's pool, by state.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, n) in [("in_use", (i64::from(open) - idle).max(0)), ("idle", idle)] {
            ConstGauge::new(n).encode(metric.encode_family(&[("state", state)])?)?;
        }
        let metric = encoder.encode_descriptor(
            "portcullis_key_verification_queries",
            "API-key verifications that reached the store (misses of the verification cache).",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        prometheus_client::metrics::counter::ConstCounter::new(self.0.verification_queries())
            .encode(metric)?;
        Ok(())
    }
}

/// Telemetry settings.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP (protobuf) traces endpoint, the full URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`, or `https://…` (rustls on the ring provider, the
    /// system's root certificates; `SSL_CERT_FILE` names another bundle). Absent: spans are
    /// not exported. Shown with its user information and query masked.
    #[serde(serialize_with = "redact::serialize_url")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource attribute of exported spans. Default `portcullis`.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "portcullis".into(),
        }
    }
}

impl TelemetryConfig {
    /// Check the section at key path `at` (`telemetry`): the endpoint must be an `http://` or
    /// `https://` URL with a host, so a typo is named by `check-config` rather than found
    /// when the first batch of spans fails to leave.
    pub fn validate(&self, at: &str, errs: &mut Vec<crate::config::ConfigError>) {
        use crate::config::ConfigError;
        if let Some(e) = &self.otlp_endpoint {
            let host = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
            match host.and_then(|h| h.parse::<http::uri::Authority>().ok()) {
                Some(a) if !a.host().is_empty() => {}
                _ => errs.push(ConfigError::new(
                    format!("{at}.otlp_endpoint"),
                    "must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:4318/v1/traces",
                )),
            }
        }
        if self.service_name.trim().is_empty() {
            errs.push(ConfigError::new(
                format!("{at}.service_name"),
                "must not be empty",
            ));
        }
    }
}

static OTEL_ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Is span export on? When off, the request path skips trace-context work entirely and a
/// client's `traceparent` passes to the service unchanged.
pub fn otel_enabled() -> bool {
    OTEL_ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Flushes and stops span export when dropped (at the end of `main`).
#[derive(Debug, Default)]
pub struct TelemetryGuard(
    Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    Option<log_queue::LogQueue>,
);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(q) = self.1.take() {
            q.flush(std::time::Duration::from_secs(2));
        }
        if let Some(p) = self.0.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("span export shutdown: {e}");
            }
        }
    }
}

/// Install the process-wide subscriber: logs as JSON lines when stderr is not a terminal,
/// human format otherwise, level from `PORTCULLIS_LOG` (default `info`), every line through
/// the redaction layer on a background writer ([`log_queue`]: a call never waits for the
/// log output, a full queue drops and counts lines); and, when `cfg.otlp_endpoint` is set, span export over OTLP/HTTP
/// with W3C trace-context propagation.
pub fn init(cfg: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    use opentelemetry::trace::TracerProvider as _;
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    let asked = std::env::var("PORTCULLIS_LOG").unwrap_or_default();
    let mut filter =
        EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // What the TLS library says is almost always about what a peer sent (an IP address as
    // SNI, a bad record, an alert): a line per connection, which any client can cause at
    // will. It is counted (`TlsLibraryMessages`), not logged, unless the operator asks for
    // it by name (`PORTCULLIS_LOG=info,rustls=warn`).
    if !asked.contains(TLS_LIBRARY) {
        if let Ok(d) = format!("{TLS_LIBRARY}=off").parse() {
            filter = filter.add_directive(d);
        }
    }
    let mut guard = TelemetryGuard::default();
    let writer = match log_queue::LogQueue::spawn(std::io::stderr()) {
        Ok(q) => {
            guard.1 = Some(q.clone());
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(q)
        }
        Err(_) => {
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(redact::Redacting(std::io::stderr))
        }
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    // The span list puts the correlation id of the enclosing `call` span on every line
    // written during the call, not only on the access line (see `CorrelationOnly`).
    let fmt = if std::io::stderr().is_terminal() {
        fmt.with_filter(filter).boxed()
    } else {
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .fmt_fields(CorrelationOnly)
            .with_filter(filter)
            .boxed()
    };
    let otel = match &cfg.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            // The exporter's HTTP client is reqwest on rustls without a built-in crypto
            // provider (one TLS stack, no aws-lc): it takes the process default, which must
            // be ring before the client is built. Already installed (by an embedder): keep it.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: {e}"))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(cfg.service_name.clone())
                        .build(),
                )
                .build();
            let tracer = provider.tracer("portcullis");
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            guard.0 = Some(provider);
            OTEL_ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
            // Export the gateway's own spans (call, route, link, …) whatever the log level,
            // and only spans: events are log lines, and log lines leave the process only
            // through the redacting writer.
            let spans_only = tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.target().starts_with("portcullis")
            });
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(spans_only),
            )
        }
    };
    let tls_messages =
        TlsLibraryMessages.with_filter(EnvFilter::new(format!("{TLS_LIBRARY}=warn")));
    // Already installed (tests, embedding): keep the existing subscriber.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(tls_messages)
        .with(otel)
        .try_init();
    Ok(guard)
}

/// The log target of the TLS library.
const TLS_LIBRARY: &str = "rustls";

/// `portcullis_tls_library_messages_total`: warnings and errors the TLS library logged, which
/// the log leaves out (see [`init`]).
pub static TLS_LIBRARY_MESSAGES: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

/// Counts the TLS library's warnings and errors (its events reach it through a `rustls=warn`
/// filter of its own) into [`TLS_LIBRARY_MESSAGES`].
struct TlsLibraryMessages;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for TlsLibraryMessages {
    fn on_event(
        &self,
        _event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        TLS_LIBRARY_MESSAGES.inc();
    }
}

/// Span fields in JSON lines: only the correlation id, written once when the span opens.
///
/// The JSON default serialises each span's fields when it opens and, on every
/// `Span::record`, parses them back into a map and serialises them again: at `info` that was
/// about half the gateway's CPU per call (profile: serde_json deserialize_map, BTreeMap
/// inserts, from_utf8 under `JsonFields::add_fields`). The access line carries the call's
/// fields as event fields; what every other line of the call needs from its spans is the
/// correlation id, so that is all this formats, and records after creation cost nothing.
/// Event fields are written by the JSON event formatter itself and are unaffected.
struct CorrelationOnly;

#[derive(Default)]
struct CorrelationVisitor(Option<String>);

impl tracing::field::Visit for CorrelationVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "correlation_id" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "correlation_id" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for CorrelationOnly {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut v = CorrelationVisitor::default();
        fields.record(&mut v);
        // The JSON span list parses this back: it must always be a JSON object.
        match v.0 {
            Some(id) => {
                let id = serde_json::to_string(&id).map_err(|_| std::fmt::Error)?;
                write!(writer, "{{\"correlation_id\":{id}}}")
            }
            None => writer.write_str("{}"),
        }
    }

    fn add_fields(
        &self,
        _current: &'writer mut tracing_subscriber::fmt::FormattedFields<Self>,
        _fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        // The correlation id is set when the span opens; later records add nothing here.
        Ok(())
    }
}

/// Make `span` a child of the trace context the client sent (`traceparent`), when exporting.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !otel_enabled() {
        return;
    }
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
}

/// Write the current span's trace context into a forwarded request, when exporting.
pub fn inject_trace(headers: &mut http::HeaderMap) {
    if !otel_enabled() {
        return;
    }
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers))
    });
}
