//! Serving calls over an established link: the service is the HTTP/2 *server* on the
//! connection it dialled.
//!
//! Every request goes to the user's tower service through an in-flight counter, except
//! `GET` [`HEALTH_PATH`], which the SDK answers itself with a [`HealthReport`]. The counter
//! holds a call from the request head until its response body is finished or dropped, so a
//! streaming response counts as in flight while it streams, and a call the gateway cancels
//! (RST_STREAM: hyper drops the handler future and the body) stops counting at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_link::{HealthReport, HelloAck, HEALTH_PATH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use crate::error::{BoxError, Error, ErrorKind};

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
}

impl Shared {
    pub(crate) fn new(concurrency: u32) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            concurrency: concurrency.max(1),
            idle: Notify::new(),
            links: watch::Sender::new(0),
        })
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
#[derive(Debug)]
pub(crate) struct LinkUp {
    shared: Arc<Shared>,
    counted: AtomicBool,
}

impl LinkUp {
    pub(crate) fn new(shared: &Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::clone(shared),
            counted: AtomicBool::new(false),
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

/// The hyper service of one link: health exchange plus the user's service behind the
/// in-flight counter.
#[derive(Clone)]
pub(crate) struct LinkService<S> {
    inner: S,
    /// The link's up/down count; its `shared` is the service's state.
    up: Arc<LinkUp>,
}

impl<S> LinkService<S> {
    pub(crate) fn new(inner: S, up: Arc<LinkUp>) -> Self {
        Self { inner, up }
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<LinkBody>, BoxError>> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for LinkService<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<LinkBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.up.up();
        if req.uri().path() == HEALTH_PATH {
            let resp = health_response(req.method(), &self.up.shared.health());
            return Box::pin(std::future::ready(Ok(resp)));
        }
        let guard = self.up.shared.enter();
        let svc = self.inner.clone();
        Box::pin(async move {
            // An error from the user's service resets the stream; the gateway reports it to
            // its caller as an upstream failure.
            let resp = svc.oneshot(req).await.map_err(Into::into)?;
            Ok(resp.map(|body| {
                body.map_err(Into::into)
                    .map_frame(move |frame| {
                        // The guard lives as long as the body: until it ends or is dropped.
                        let _ = &guard;
                        frame
                    })
                    .boxed_unsync()
            }))
        })
    }
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

/// Serve HTTP/2 on `io` (already past HELLO_ACK) until the gateway closes it, keep-alive
/// fails, or `shutdown` turns true — then GOAWAY and wait for in-flight streams to finish.
pub(crate) async fn serve_link<IO, S, B>(
    io: IO,
    ack: &HelloAck,
    service: LinkService<S>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let heartbeat = Duration::from_millis(ack.heartbeat_interval_ms.max(1));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(heartbeat)
        .keep_alive_timeout(heartbeat.saturating_mul(2));
    let streams = ack.limits.max_concurrent_streams;
    if streams > 0 {
        builder.max_concurrent_streams(streams);
    }
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let link_err =
        |e: hyper::Error| Error::new(ErrorKind::Link, "HTTP/2 link failed").with_source(e);
    tokio::select! {
        r = conn.as_mut() => return r.map_err(link_err),
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    // Sends GOAWAY; the connection future completes once every open stream has.
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        // A gateway may close its side as soon as it has seen GOAWAY and has no stream left:
        // an I/O error now ends a drain that has nothing left to wait for.
        tracing::debug!(error = %e, "link closed while draining");
    }
    Ok(())
}
