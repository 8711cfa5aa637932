//! The path of one call, in the order of DESIGN §2 and `docs/ARCHITECTURE.md`:
//!
//! correlation id → strip spoofable headers → gateway-owned paths → path hygiene →
//! authenticate → resolve route → authorise → forward over the link → rescue.
//!
//! Each stage is a function; a new concern is a new stage here, not a branch inside another.
//! Every refusal is a [`GatewayError`] turned into a response in one place, [`Pipeline::handle`].

use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use rand::RngCore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

use super::ActiveCall;
use crate::auth::{ApiKeyAuthenticator, AuthFailure, Identity};
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::proxy::{self, CallContext};
use crate::routing::{Match, Registry, Tiers};
use crate::telemetry::metrics::{method_label, CallLabels, Label, RouteLabels};
use crate::telemetry::Metrics;

const CORRELATION_ID: HeaderName =
    HeaderName::from_static(portcullis_link::headers::CORRELATION_ID);

/// State shared by every call.
pub struct Pipeline {
    registry: Arc<Registry>,
    tiers: Tiers,
    max_body_bytes: u64,
    health: Arc<crate::health::Health>,
    metrics: Arc<Metrics>,
    auth: Arc<ApiKeyAuthenticator>,
    metrics_scope: Option<Arc<str>>,
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

impl Pipeline {
    /// A pipeline over `registry`, authenticating with `auth`. `metrics_scope`: the scope
    /// `/metrics` requires, if any.
    pub fn new(
        registry: Arc<Registry>,
        tiers: Tiers,
        max_body_bytes: u64,
        health: Arc<crate::health::Health>,
        metrics: Arc<Metrics>,
        auth: Arc<ApiKeyAuthenticator>,
        metrics_scope: Option<String>,
    ) -> Self {
        Self {
            registry,
            tiers,
            max_body_bytes,
            health,
            metrics,
            auth,
            metrics_scope: metrics_scope.map(Into::into),
        }
    }

    /// Handle one request; never fails: errors become responses here, the one rescue point.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        call: ActiveCall,
    ) -> Response<GatewayBody> {
        let started = Instant::now();
        let cid = correlation_id(req.headers());
        strip_gateway_headers(&mut req);
        let method = req.method().clone();
        let span = tracing::info_span!(
            "call",
            correlation_id = cid.to_str().unwrap_or("-"),
            method = %method,
            route = tracing::field::Empty,
            service = tracing::field::Empty,
            instance = tracing::field::Empty,
            key_id = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        crate::telemetry::continue_trace(&span, req.headers());
        let mut info = CallInfo::default();

        let result = match self.owned(&req, peer).instrument(span.clone()).await {
            Some(resp) => resp,
            None => {
                self.route_and_forward(req, &cid, peer, &mut info)
                    .instrument(span.clone())
                    .await
            }
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                let _g = span.enter();
                tracing::debug!(kind = e.kind(), error = %e, "call refused");
                e.into_response()
            }
        };
        if let Some(inst) = resp.extensions().get::<crate::proxy::ServedBy>() {
            info.instance = Some(inst.0.clone());
        }
        resp.headers_mut().insert(CORRELATION_ID, cid.clone());
        let status = resp.status().as_u16();
        let dash = dash();
        let labels = RouteLabels {
            service: Label(info.service.clone().unwrap_or_else(|| dash.clone())),
            route: Label(info.route.clone().unwrap_or(dash)),
        };
        self.metrics
            .requests
            .get_or_create(&CallLabels {
                service: labels.service.clone(),
                route: labels.route.clone(),
                method: method_label(&method),
                status,
            })
            .inc();
        span.record("status", status);
        if let Some(i) = &info.instance {
            span.record("instance", &**i);
        }
        {
            let _g = span.enter();
            tracing::info!(
                correlation_id = cid.to_str().unwrap_or("-"),
                method = %method,
                route = &*labels.route.0,
                service = &*labels.service.0,
                instance = info.instance.as_deref().unwrap_or("-"),
                key_id = info.identity.as_ref().map_or("-", |i| i.key_id.as_str()),
                status,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "call"
            );
        }
        let record = DurationRecord {
            metrics: self.metrics.clone(),
            labels,
            started,
        };
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, body.with_guard((call, record, span)))
    }

    /// Paths the gateway answers itself: health (always open) and metrics (open unless
    /// `auth.metrics_scope` is set).
    async fn owned(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Option<Result<Response<GatewayBody>, GatewayError>> {
        let path = req.uri().path();
        if path == "/metrics" {
            if let Some(scope) = &self.metrics_scope {
                let checked = match self.authenticate(req.headers(), peer).await {
                    Ok(id) => self.authorise(&id, Some(scope), peer),
                    Err(e) => Err(e),
                };
                if let Err(e) = checked {
                    return Some(Err(e));
                }
            }
            let mut resp = Response::new(GatewayBody::full(self.metrics.encode()));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return Some(Ok(resp));
        }
        let (status, body) = self.health.respond(path).await?;
        let mut resp = Response::new(GatewayBody::full(body));
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Some(Ok(resp))
    }

    /// Stage: who is calling. Only `Authorization: Bearer` is read (HTTP headers and gRPC
    /// metadata alike); a key in the query string is never looked at. Every refusal gets the
    /// same fixed 401 (503 when the store cannot answer: fail closed); the reason goes to the
    /// metric and the audit log.
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer: SocketAddr,
    ) -> Result<Arc<Identity>, GatewayError> {
        let span = tracing::debug_span!("authenticate");
        let result = async {
            match crate::auth::bearer_token(headers) {
                Ok(token) => self.auth.authenticate(token).await.map_err(|f| {
                    let claimed = crate::auth::key::parse(token)
                        .ok()
                        .map(|p| p.key_id.to_string());
                    (f, claimed)
                }),
                Err(f) => Err((f, None)),
            }
        }
        .instrument(span)
        .await;
        result.map_err(|(failure, claimed)| {
            self.refuse(failure.as_str(), claimed.as_deref(), peer, None);
            match failure {
                AuthFailure::Unavailable => GatewayError::Unavailable("identity store"),
                f => GatewayError::Unauthorized(f.as_str()),
            }
        })
    }

    /// Stage: may this identity use the operation? A route that declares no capability needs
    /// only a valid key.
    fn authorise(
        &self,
        identity: &Identity,
        capability: Option<&str>,
        peer: SocketAddr,
    ) -> Result<(), GatewayError> {
        match capability {
            Some(cap) if !identity.has_capability(cap) => {
                self.refuse("forbidden", Some(&identity.key_id), peer, Some(cap));
                Err(GatewayError::Forbidden("capability"))
            }
            _ => Ok(()),
        }
    }

    /// Count a refusal and queue it for the audit log.
    fn refuse(
        &self,
        reason: &'static str,
        key_id: Option<&str>,
        peer: SocketAddr,
        capability: Option<&str>,
    ) {
        self.metrics.auth_failure(reason);
        if !self
            .auth
            .report_failure(reason, key_id, Some(peer.ip()), capability)
        {
            self.metrics.audit_dropped.inc();
        }
    }

    async fn route_and_forward(
        &self,
        mut req: Request<Incoming>,
        cid: &HeaderValue,
        peer: SocketAddr,
        info: &mut CallInfo,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        check_path(req.uri().path())?;
        let identity = self.authenticate(req.headers(), peer).await?;
        // The credential is the gateway's business: services never see it.
        req.headers_mut().remove(http::header::AUTHORIZATION);
        info.identity = Some(identity.clone());
        tracing::Span::current().record("key_id", identity.key_id.as_str());
        let route = {
            let _s = tracing::debug_span!("route").entered();
            match self
                .registry
                .table()
                .lookup(req.method().as_str(), req.uri().path())
            {
                Match::Found(r) => r,
                Match::MethodNotAllowed(allow) => {
                    return Err(GatewayError::MethodNotAllowed(allow))
                }
                Match::NotFound => return Err(GatewayError::NotFound),
            }
        };
        info.route = Some(route.template.clone());
        info.service = Some(route.service.clone());
        self.authorise(&identity, route.capability.as_deref(), peer)?;
        let current = tracing::Span::current();
        current.record("route", &*route.template);
        current.record("service", &*route.service);
        let ctx = CallContext {
            route: &route,
            correlation_id: cid,
            max_body_bytes: self.max_body_bytes,
            client_ip: Some(peer.ip()),
            metrics: &self.metrics,
        };
        proxy::forward(req, ctx, &self.tiers)
            .instrument(tracing::info_span!("link"))
            .await
    }
}

/// What the pipeline learned about a call, for its log line and metrics.
#[derive(Debug, Default)]
struct CallInfo {
    route: Option<Arc<str>>,
    service: Option<Arc<str>>,
    instance: Option<Arc<str>>,
    /// Who called (the access log's `key_id`): the cached identity, shared, not copied.
    identity: Option<Arc<crate::auth::Identity>>,
}

/// Accept the client's correlation id when it is a safe token, otherwise make one.
pub fn correlation_id(h: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(CORRELATION_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return v.clone();
        }
    }
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(hex::encode(id)))
        .unwrap_or(HeaderValue::from_static("0"))
}

/// The `-` label of calls that matched no route, shared so labelling them allocates nothing.
fn dash() -> Arc<str> {
    static DASH: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    DASH.get_or_init(|| Arc::from("-")).clone()
}

/// Remove every header a client could use to impersonate the gateway.
fn strip_gateway_headers(req: &mut Request<Incoming>) {
    let spoofed: Vec<HeaderName> = req
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with(portcullis_link::headers::PREFIX))
        .cloned()
        .collect();
    for k in spoofed {
        req.headers_mut().remove(&k);
    }
}

/// Refuse paths a service might normalise differently from the gateway: dot segments (also
/// percent-encoded) could walk out of the matched template; the link's reserved prefix is
/// never routable.
fn check_path(path: &str) -> Result<(), GatewayError> {
    if !path.starts_with('/') {
        return Err(GatewayError::BadRequest("path"));
    }
    if path.starts_with(portcullis_link::RESERVED_PREFIX) {
        return Err(GatewayError::NotFound);
    }
    // Byte checks, no allocation: this runs on every call.
    for seg in path.split('/') {
        if is_dot_segment(seg.as_bytes()) {
            return Err(GatewayError::BadRequest("path"));
        }
    }
    let encoded_slash = path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
                || (w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c')))
    });
    if encoded_slash {
        return Err(GatewayError::BadRequest("path"));
    }
    Ok(())
}

/// `.` or `..`, each dot possibly percent-encoded (`%2e`, `%2E`).
fn is_dot_segment(mut seg: &[u8]) -> bool {
    let mut dots = 0;
    while !seg.is_empty() {
        if seg[0] == b'.' {
            seg = &seg[1..];
        } else if seg.len() >= 3 && seg[0] == b'%' && seg[1] == b'2' && seg[2] | 0x20 == b'e' {
            seg = &seg[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids() {
        let mut h = http::HeaderMap::new();
        h.insert(CORRELATION_ID, HeaderValue::from_static("abc-123_x.y"));
        assert_eq!(correlation_id(&h), "abc-123_x.y");
        h.insert(
            CORRELATION_ID,
            HeaderValue::from_str(&"a".repeat(129)).unwrap(),
        );
        assert_eq!(correlation_id(&h).len(), 32);
        h.insert(CORRELATION_ID, HeaderValue::from_static("a b"));
        assert_ne!(correlation_id(&h), "a b");
    }

    #[test]
    fn path_hygiene() {
        assert!(check_path("/a/b").is_ok());
        for bad in [
            "/a/../b",
            "/a/./b",
            "/a/%2E%2e/b",
            "/a%2fb",
            "/a%5Cb",
            "/a/%2e/b",
            "/a/.%2E/b",
            "/.well-known/portcullis/health",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
