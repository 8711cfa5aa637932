//! Serving calls over an established link: the service is the HTTP/2 *server* on the
//! connection it dialled.
//!
//! The SDK answers three paths itself: `GET` [`HEALTH_PATH`] with a [`HealthReport`],
//! `PUT` [`KEYS_PATH`], the gateway's new assertion keys, with 204; `POST` [`DRAIN_PATH`],
//! the gateway shutting down, with 204 — then it drains the link (GOAWAY, open streams
//! finish) and the supervisor dials again: a graceful end, not a failure; and `POST`
//! [`SESSIONS_PATH`], a pinned session's stream, served by the service's
//! [`Worker`](crate::worker::Worker) (see [`crate::worker::serve_session`]). Every other request must
//! carry a valid identity assertion (`x-portcullis-identity`, checked by the link's
//! [`Verifier`]); one that does not is answered with a fixed 401 (a gRPC status for gRPC
//! calls) and never reaches the user's service. A verified call gets its [`Identity`] in its
//! extensions and goes to the user's tower service through an in-flight counter. The counter
//! holds a call from the request head until its response body is finished or dropped, so a
//! streaming response counts as in flight while it streams, and a call the gateway cancels
//! (RST_STREAM: hyper drops the handler future and the body) stops counting at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis_link::jws::{Jwks, MAX_JWKS_KEYS};
use portcullis_link::{
    HealthReport, HelloAck, DRAIN_PATH, HEALTH_PATH, KEYS_PATH, MAX_KEYS_BODY, SESSIONS_PATH,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use crate::error::{BoxError, Error, ErrorKind};
use crate::identity::{now_s, Identity, Verifier, UNAUTHORIZED_BODY};
use crate::inline::LinkExecutor;

/// Response body type the link serves: the user's body, boxed.
pub(crate) type LinkBody = UnsyncBoxBody<Bytes, BoxError>;

/// State every link of one running service shares.
#[derive(Debug)]
pub(crate) struct Shared {
    in_flight: AtomicU32,
    draining: AtomicBool,
    /// Concurrency hint: `load = in_flight / concurrency`, capped at 1.
    concurrency: u32,
    /// Woken whenever `in_flight` drops to zero.
    idle: Notify,
    /// Number of links that completed the handshake and are serving.
    pub(crate) links: watch::Sender<usize>,
    /// Link slots still dialling or serving: every slot, less those that gave up after a
    /// refusal retrying cannot fix. A wait for `n` links fails once this drops below `n`.
    pub(crate) dialling: watch::Sender<usize>,
    /// The refusals that made slots give up, in order. At most one per slot.
    failures: Mutex<Vec<Error>>,
    /// Links a gateway ended gracefully (`POST` [`DRAIN_PATH`]: it was shutting down).
    pub(crate) gateway_drains: AtomicU64,
    /// The pinned sessions' worker, when the service serves sessions.
    pub(crate) sessions: std::sync::OnceLock<Arc<crate::worker::SessionHost>>,
}

impl Shared {
    pub(crate) fn new(concurrency: u32, slots: usize) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            concurrency: concurrency.max(1),
            idle: Notify::new(),
            links: watch::Sender::new(0),
            dialling: watch::Sender::new(slots),
            failures: Mutex::new(Vec::new()),
            gateway_drains: AtomicU64::new(0),
            sessions: std::sync::OnceLock::new(),
        })
    }

    /// Serve pinned sessions with `worker`, at most `max` at once on each link.
    pub(crate) fn serve_sessions(&self, worker: crate::worker::Worker, max: u32) {
        let _ = self
            .sessions
            .set(crate::worker::SessionHost::new(worker, max));
    }

    /// A slot stopped dialling for good because of `error`.
    pub(crate) fn give_up(&self, error: Error) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(error);
        self.dialling.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// The refusals that made slots give up.
    pub(crate) fn failures(&self) -> Vec<Error> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn health(&self) -> HealthReport {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        HealthReport {
            in_flight,
            load: (in_flight as f32 / self.concurrency as f32).min(1.0),
            draining: self.draining.load(Ordering::Acquire),
        }
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Resolve once no call is in flight.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }
}

/// One call in flight; counts down when dropped.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Counts one link as up from the gateway's first request on it until the link ends.
///
/// A completed handshake is not enough: the gateway registers the instance after HELLO_ACK,
/// so a caller racing it could still be told 404. The gateway sends a health request as soon
/// as the instance is routable (link protocol §5), which is what flips this on.
///
/// It also carries the gateway's notice that it is shutting down (`POST` [`DRAIN_PATH`]),
/// from the request that brings it to the link's serving loop.
#[derive(Debug)]
pub(crate) struct LinkUp {
    shared: Arc<Shared>,
    counted: AtomicBool,
    /// Notified (one stored permit) when the gateway says it is shutting down.
    gateway_drain: Notify,
}

impl LinkUp {
    pub(crate) fn new(shared: &Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::clone(shared),
            counted: AtomicBool::new(false),
            gateway_drain: Notify::new(),
        })
    }

    /// The gateway spoke on this link: it is routable. Idempotent.
    fn up(&self) {
        // Read first: after the first call this is a load of a shared line, not a write to it
        // from every thread on every call.
        if !self.counted.load(Ordering::Acquire) && !self.counted.swap(true, Ordering::AcqRel) {
            self.shared.links.send_modify(|n| *n += 1);
        }
    }

    /// The link ended. Idempotent.
    pub(crate) fn down(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.shared.links.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

impl Drop for LinkUp {
    fn drop(&mut self) {
        self.down();
    }
}

/// The hyper service of one link: health exchange, key updates, and the user's service
/// behind identity verification and the in-flight counter.
#[derive(Clone)]
pub(crate) struct LinkService<S> {
    inner: S,
    /// The link's up/down count; its `shared` is the service's state.
    up: Arc<LinkUp>,
    /// The link's gateway's assertion keys and issuer.
    trust: Arc<LinkTrust>,
}

/// What a link trusts: the verifier of its gateway's assertions, and when it last logged a
/// refusal (a misconfigured gateway would otherwise log one line per call).
#[derive(Debug)]
pub(crate) struct LinkTrust {
    pub(crate) verifier: Verifier,
    last_warned_s: AtomicI64,
}

impl LinkTrust {
    pub(crate) fn new(verifier: Verifier) -> Arc<Self> {
        Arc::new(Self {
            verifier,
            last_warned_s: AtomicI64::new(i64::MIN),
        })
    }

    /// Log a refusal, at most once a second per link; the rest at debug.
    fn refused(&self, reason: &'static str) {
        let now = now_s();
        let last = self.last_warned_s.load(Ordering::Relaxed);
        if now > last
            && self
                .last_warned_s
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(reason, "call refused: no valid identity assertion");
        } else {
            tracing::debug!(reason, "call refused: no valid identity assertion");
        }
    }
}

impl<S> LinkService<S> {
    pub(crate) fn new(inner: S, up: Arc<LinkUp>, trust: Arc<LinkTrust>) -> Self {
        Self { inner, up, trust }
    }
}

/// A response the SDK answers itself, when it has to wait for something (a key update's body).
type OwnFuture = Pin<Box<dyn Future<Output = Result<Response<LinkBody>, BoxError>> + Send>>;

pin_project_lite::pin_project! {
    /// The response future of one call on a link. The user's service's future is held as it
    /// is, not boxed: one allocation fewer per call (hyper's stream future that holds this is
    /// boxed once already, by [`LinkExecutor`]).
    #[project = CallFutureProj]
    pub(crate) enum CallFuture<F> {
        /// Answered at once by the SDK (health, drain, sessions, refusals).
        Ready { resp: Option<Response<LinkBody>> },
        /// Answered by the SDK after a wait.
        Own { #[pin] fut: OwnFuture },
        /// The user's service; the guard moves into the response body.
        User { #[pin] fut: F, guard: Option<InFlight> },
    }
}

impl<F, B, E> Future for CallFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<CallBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let own = |r: Result<Response<LinkBody>, BoxError>| {
            r.map(|resp| resp.map(|body| CallBody::Own { body }))
        };
        match self.project() {
            CallFutureProj::Ready { resp } => match resp.take() {
                Some(resp) => Poll::Ready(own(Ok(resp))),
                None => Poll::Ready(Err("call future polled after completion".into())),
            },
            CallFutureProj::Own { fut } => fut.poll(cx).map(own),
            CallFutureProj::User { fut, guard } => {
                // An error from the user's service resets the stream; the gateway reports it
                // to its caller as an upstream failure.
                let resp = match fut.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r.map_err(Into::into)?,
                };
                let Some(guard) = guard.take() else {
                    return Poll::Ready(Err("call future polled after completion".into()));
                };
                Poll::Ready(Ok(resp.map(|body| CallBody::User { body, guard })))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body of one call on a link: the SDK's own, or the user's service's with
    /// the call's in-flight guard, which lives as long as the body (until it ends or is
    /// dropped). Not boxed, for the same reason as [`CallFuture`].
    #[project = CallBodyProj]
    pub(crate) enum CallBody<B> {
        Own { #[pin] body: LinkBody },
        User { #[pin] body: B, guard: InFlight },
    }
}

impl<B> http_body::Body for CallBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.project() {
            CallBodyProj::Own { body } => body.poll_frame(cx),
            CallBodyProj::User { body, .. } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CallBody::Own { body } => body.is_end_stream(),
            CallBody::User { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            CallBody::Own { body } => body.size_hint(),
            CallBody::User { body, .. } => body.size_hint(),
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for LinkService<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<CallBody<B>>;
    type Error = BoxError;
    type Future = CallFuture<tower::util::Oneshot<S, Request<Incoming>>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let ready = |resp| CallFuture::Ready { resp: Some(resp) };
        self.up.up();
        match req.uri().path() {
            HEALTH_PATH => return ready(health_response(req.method(), &self.up.shared.health())),
            KEYS_PATH => {
                return CallFuture::Own {
                    fut: Box::pin(take_keys(req, Arc::clone(&self.trust))),
                }
            }
            DRAIN_PATH => {
                // Only the gateway opens streams on a link: the link authenticates this, as
                // it does the health exchange.
                let resp = if req.method() == Method::POST {
                    self.up.gateway_drain.notify_one();
                    status(StatusCode::NO_CONTENT)
                } else {
                    status(StatusCode::METHOD_NOT_ALLOWED)
                };
                return ready(resp);
            }
            SESSIONS_PATH => {
                let host = self.up.shared.sessions.get().cloned();
                return ready(crate::worker::serve_session(req, host));
            }
            _ => {}
        }
        // Before anything of the user's runs: no valid assertion, no call.
        match self.trust.verifier.verify_headers(req.headers()) {
            Ok(identity) => {
                req.extensions_mut().insert::<Identity>(identity);
            }
            Err(e) => {
                self.trust.refused(e.as_str());
                return ready(unauthorized(is_grpc(req.headers())));
            }
        }
        let guard = self.up.shared.enter();
        CallFuture::User {
            fut: self.inner.clone().oneshot(req),
            guard: Some(guard),
        }
    }
}

/// The fixed refusal of a call without a valid assertion: the gateway's own 401 body, or
/// for gRPC a trailers-only `UNAUTHENTICATED` (16), which gRPC clients understand where a bare
/// 401 would be an opaque transport error.
fn unauthorized(grpc: bool) -> Response<LinkBody> {
    if grpc {
        let mut resp = Response::new(empty());
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", http::HeaderValue::from_static("16"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static("unauthenticated"),
        );
        return resp;
    }
    let mut resp = Response::new(
        Full::new(Bytes::from_static(UNAUTHORIZED_BODY.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Does the caller speak gRPC (`content-type: application/grpc…`)?
fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn empty() -> LinkBody {
    Full::new(Bytes::new())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub(crate) fn status(status: StatusCode) -> Response<LinkBody> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp
}

/// `PUT` [`KEYS_PATH`]: the gateway's assertion keys changed. The body (at most
/// [`MAX_KEYS_BODY`] bytes, at most [`MAX_JWKS_KEYS`] keys) replaces the link's keys; 204 once
/// it does. Anything else leaves the keys as they were. Only the gateway opens streams on a
/// link, and it never routes client calls under the reserved prefix: the link is the
/// authentication of this request, as of the health exchange.
async fn take_keys(
    req: Request<Incoming>,
    trust: Arc<LinkTrust>,
) -> Result<Response<LinkBody>, BoxError> {
    if req.method() != Method::PUT {
        return Ok(status(StatusCode::METHOD_NOT_ALLOWED));
    }
    let body = match Limited::new(req.into_body(), MAX_KEYS_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(status(StatusCode::PAYLOAD_TOO_LARGE)),
    };
    let keys: Jwks = match serde_json::from_slice(&body) {
        Ok(k) => k,
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    if keys.keys.len() > MAX_JWKS_KEYS {
        return Ok(status(StatusCode::BAD_REQUEST));
    }
    trust.verifier.set_keys(&keys);
    tracing::info!(keys = ?trust.verifier.key_ids(), "assertion keys updated");
    Ok(status(StatusCode::NO_CONTENT))
}

fn health_response(method: &Method, report: &HealthReport) -> Response<LinkBody> {
    let (status, body) = if method == Method::GET {
        let json = serde_json::to_vec(report).unwrap_or_default();
        (StatusCode::OK, Bytes::from(json))
    } else {
        (StatusCode::METHOD_NOT_ALLOWED, Bytes::new())
    };
    let mut resp = Response::new(Full::new(body).map_err(|e| match e {}).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// How the SDK's HTTP/2 server on a link is configured, beyond what HELLO_ACK says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkSettings {
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, see
    /// [`ServiceBuilder::max_header_list_size`](crate::ServiceBuilder::max_header_list_size).
    pub(crate) max_header_list_size: u32,
}

/// Streams the gateway may reset before the server has accepted them, at least. h2 answers
/// more than this many *at once* with GOAWAY `ENHANCE_YOUR_CALM` (its rapid-reset defence,
/// default 20). On a link each reset is a client of the gateway giving up on a call — a burst
/// of cancellations arriving in one read would otherwise close the link under every other
/// call on it. The bound used is the larger of this and the link's stream limit: the gateway
/// may have that many calls open, so it may cancel that many at once.
const MIN_PENDING_ACCEPT_RESETS: usize = 256;

/// The link's HTTP/2 connection receive window. A stream's window (hyper's default, 1 MiB)
/// bounds what one call's unread request body may hold; the connection window bounds them
/// all together. With both equal (hyper's default) one handler that does not read its upload
/// stops every other upload on the link; sixteen times the stream window keeps the link
/// moving until sixteen handlers at once sit on full windows, at a bound of 16 MiB of
/// buffered request bodies per link.
const CONNECTION_WINDOW: u32 = 16 << 20;

/// h2 counts the streams it resets itself because the peer sent something malformed for
/// them (a `content-length` it cannot parse, a head over the limit...) over the whole life of
/// the connection, and at 1024 (hyper's default) sends GOAWAY `ENHANCE_YOUR_CALM`. On a link
/// those frames are the gateway relaying what its clients sent: `Content-Length: 5, 5` is valid
/// HTTP/1.1 that the gateway forwards as it is and h2 refuses, so 1024 such calls from anyone
/// holding a key would close the link under every tenant's calls. The counter guards a
/// server against a hostile *peer*; the peer here is the gateway the service dialled and
/// authenticated, memory stays bounded without it (h2 keeps at most a fixed number of reset
/// streams), and the stream error alone answers each bad call. So: no limit.
const LOCAL_ERROR_RESETS: Option<usize> = None;

/// How a link that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkEnd {
    /// The gateway closed the connection without notice (a crash, or an older gateway).
    Closed,
    /// The gateway said it was shutting down (`POST` [`DRAIN_PATH`]); the link was drained.
    GatewayDrained,
    /// The service is shutting down; the link was drained.
    Drained,
}

/// Serve HTTP/2 on `io` (already past HELLO_ACK) until the gateway closes it, keep-alive
/// fails, `shutdown` turns true, or the gateway says it is shutting down — in the last two
/// cases GOAWAY and wait for in-flight streams to finish.
///
/// No setting here lets one stream's behaviour become a connection error: request heads up to
/// the header list size are taken, larger ones are one stream's 431; bursts of resets are
/// bounded by the stream limit (see [`MIN_PENDING_ACCEPT_RESETS`]); streams h2 refuses as
/// malformed are never counted against the link ([`LOCAL_ERROR_RESETS`]); an unread upload
/// holds its own window only ([`CONNECTION_WINDOW`]); an error or panic in the user's service
/// resets its own stream only.
pub(crate) async fn serve_link<IO, S, B>(
    io: IO,
    ack: &HelloAck,
    settings: &LinkSettings,
    service: LinkService<S>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<LinkEnd, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let heartbeat = Duration::from_millis(ack.heartbeat_interval_ms.max(1));
    // Calls run on the link's task first (see [`LinkExecutor`]).
    let exec = LinkExecutor::new();
    let mut builder = hyper::server::conn::http2::Builder::new(exec.clone());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(heartbeat)
        .keep_alive_timeout(heartbeat.saturating_mul(2))
        .max_header_list_size(settings.max_header_list_size)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_local_error_reset_streams(LOCAL_ERROR_RESETS);
    let streams = ack.limits.max_concurrent_streams;
    if streams > 0 {
        builder.max_concurrent_streams(streams);
    }
    let resets = usize::try_from(streams)
        .unwrap_or(usize::MAX)
        .max(MIN_PENDING_ACCEPT_RESETS);
    builder.max_pending_accept_reset_streams(resets);
    let up = Arc::clone(&service.up);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let link_err =
        |e: hyper::Error| Error::new(ErrorKind::Link, "HTTP/2 link failed").with_source(e);
    let end = tokio::select! {
        r = exec.drive(conn.as_mut()) => return r.map(|()| LinkEnd::Closed).map_err(link_err),
        _ = shutdown.wait_for(|stop| *stop) => LinkEnd::Drained,
        _ = up.gateway_drain.notified() => LinkEnd::GatewayDrained,
    };
    // Sends GOAWAY; the connection future completes once every open stream has.
    conn.as_mut().graceful_shutdown();
    if let Err(e) = exec.drive(conn.as_mut()).await {
        // A gateway may close its side as soon as it has seen GOAWAY and has no stream left:
        // an I/O error now ends a drain that has nothing left to wait for.
        tracing::debug!(error = %e, "link closed while draining");
    }
    Ok(end)
}
