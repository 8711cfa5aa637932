//! The one response body type of the ingress: fixed bytes the gateway wrote itself, or a
//! service's HTTP/2 stream relayed frame by frame.
//!
//! Relayed bodies give HTTP/2 flow-control credit back to the service only as each chunk is
//! handed to the client connection, so a slow client slows the service instead of growing a
//! buffer in the gateway. Guards riding on the body (the instance's in-flight count, the client
//! connection's activity count) drop when the body is finished or abandoned.
//!
//! A client that stops reading must cost only its own stream. What one stream can hold in the
//! gateway is bounded by its HTTP/2 stream window, and the link's connection window is sized
//! for every stream to hold that much (`link`), so stalled streams never starve the others.
//! Each link's [`StallWatch`] cuts a relayed body that keeps data waiting while its client
//! takes none for `ingress.response_stall_timeout`: it drops the h2 stream —
//! RST_STREAM(CANCEL) to the service, its buffered data and window released at once — and the
//! client response ends with an error the next time its connection asks for data. The watch
//! must see bodies that were never polled at all (an HTTP/2 client with a zero window), so
//! every relayed body registers with it: one small allocation per call.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use crate::routing::InFlight;

/// Boxed error of a relayed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A value dropped together with the body, told first how much of it was sent.
pub trait Guard: Send + Sync + 'static {
    /// The body ended or is being dropped, after `sent` bytes of data were handed to the
    /// client connection. Called once, just before the guard is dropped.
    fn ended(&mut self, sent: u64) {
        let _ = sent;
    }
}

enum Inner {
    Full(Option<Bytes>),
    /// A body the gateway produces itself (a gateway operation's router).
    Boxed(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>),
    Upstream {
        shared: Arc<Watched>,
        data_done: bool,
        /// The body ended (as opposed to having been cut).
        finished: bool,
    },
}

/// A relayed body as its link's [`StallWatch`] sees it.
struct Watched {
    /// The service's stream and the call's in-flight guard; `None` once cut.
    stream: Mutex<Option<(h2::RecvStream, InFlight)>>,
    /// Frames handed to the client connection so far.
    progress: AtomicU64,
    /// The watch's own bookkeeping: progress at its last look, and looks without progress
    /// while data waited.
    seen: AtomicU64,
    stalled_looks: AtomicU32,
}

impl Watched {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(h2::RecvStream, InFlight)>> {
        // Every mutation under this lock is a single assignment: a poisoned lock still holds
        // a consistent value.
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The body was cut because its client stopped reading.
#[derive(Debug, thiserror::Error)]
#[error("response body stalled: the client took no data")]
pub struct Stalled;

/// Looks per stall timeout: a body is cut after this many looks in a row without progress.
const LOOKS: u32 = 4;

/// Every relayed body of one link, looked at a few times per stall timeout.
#[derive(Default)]
pub struct StallWatch {
    bodies: Mutex<Bodies>,
}

#[derive(Default)]
struct Bodies {
    list: Vec<Weak<Watched>>,
    /// Forget finished bodies when the list reaches this length, so it stays within twice
    /// the live bodies between looks (amortised O(1) per call).
    prune_at: usize,
}

impl std::fmt::Debug for StallWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StallWatch")
    }
}

impl StallWatch {
    fn bodies(&self) -> std::sync::MutexGuard<'_, Bodies> {
        self.bodies.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, w: &Arc<Watched>) {
        let mut b = self.bodies();
        if b.list.len() >= b.prune_at {
            b.list.retain(|w| w.strong_count() > 0);
            b.prune_at = (b.list.len() * 2).max(64);
        }
        b.list.push(Arc::downgrade(w));
    }

    /// Bodies registered and not known to be finished.
    pub fn len(&self) -> usize {
        self.bodies().list.len()
    }

    /// Whether no body is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Look at every body each `timeout / 4`, forever (the link's task runs it beside its
    /// heartbeat). Never returns; a zero `timeout` watches nothing.
    pub async fn run(&self, timeout: Duration) {
        if timeout.is_zero() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(timeout / LOOKS);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.look();
        }
    }

    /// One look: forget finished bodies, count stalls, cut the bodies stalled for `LOOKS`
    /// looks in a row.
    pub(crate) fn look(&self) {
        let mut cut = Vec::new();
        self.bodies().list.retain(|w| {
            let Some(w) = w.upgrade() else { return false };
            let mut slot = w.lock();
            let Some((recv, _)) = slot.as_mut() else {
                return false;
            };
            let progress = w.progress.load(Ordering::Relaxed);
            let before = w.seen.swap(progress, Ordering::Relaxed);
            // Data waiting and none taken: the client is not reading. Nothing waiting: the
            // service is slow, which is the route timeout's business, not this one's.
            if progress == before && recv.flow_control().used_capacity() > 0 {
                if w.stalled_looks.fetch_add(1, Ordering::Relaxed) + 1 >= LOOKS {
                    if let Some(s) = slot.take() {
                        cut.push(s);
                    }
                    return false;
                }
            } else {
                w.stalled_looks.store(0, Ordering::Relaxed);
            }
            true
        });
        for (recv, call) in cut {
            tracing::debug!(
                service = %call.instance().service, instance = %call.instance().instance_id,
                "response body stalled: stream cancelled"
            );
            // The last handle of the stream: h2 sends RST_STREAM(CANCEL) and gives the
            // buffered data's window back to the link.
            drop(recv);
        }
    }
}

/// Response body of every ingress response.
pub struct GatewayBody {
    inner: Inner,
    /// Data bytes handed on so far, for the guard (`portcullis_response_size_bytes`).
    sent: u64,
    _guard: Option<Box<dyn Guard>>,
}

impl Drop for GatewayBody {
    fn drop(&mut self) {
        if let Some(g) = &mut self._guard {
            g.ended(self.sent);
        }
    }
}

impl std::fmt::Debug for GatewayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayBody")
    }
}

impl GatewayBody {
    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Self {
            inner: Inner::Full((!b.is_empty()).then_some(b)),
            sent: 0,
            _guard: None,
        }
    }

    /// A body produced by the gateway itself, e.g. a gateway operation's axum response.
    pub fn boxed(b: http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>) -> Self {
        Self {
            inner: Inner::Boxed(b),
            sent: 0,
            _guard: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A service's response stream; `call` keeps the instance's in-flight count until the
    /// body ends, is dropped or is cut, and its instance's [`StallWatch`] watches it.
    pub fn upstream(recv: h2::RecvStream, call: InFlight) -> Self {
        let inst = call.instance().clone();
        let shared = Arc::new(Watched {
            stream: Mutex::new(Some((recv, call))),
            progress: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            stalled_looks: AtomicU32::new(0),
        });
        inst.stall_watch.register(&shared);
        Self {
            inner: Inner::Upstream {
                shared,
                data_done: false,
                finished: false,
            },
            sent: 0,
            _guard: None,
        }
    }

    /// Keep `g` alive until this body is dropped; it is told how many bytes were sent.
    pub fn with_guard(mut self, g: impl Guard) -> Self {
        self._guard = Some(Box::new(g));
        self
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Boxed(b) => Pin::new(b).poll_frame(cx),
            Inner::Upstream {
                shared,
                data_done,
                finished,
            } => {
                if *finished {
                    return Poll::Ready(None);
                }
                let mut slot = shared.lock();
                let Some((recv, _)) = slot.as_mut() else {
                    return Poll::Ready(Some(Err(Box::new(Stalled))));
                };
                let r = ready!(poll_recv(recv, data_done, cx));
                if r.is_none() {
                    // Finished: the in-flight count drops now, not when hyper drops the body.
                    *slot = None;
                    *finished = true;
                }
                drop(slot);
                shared.progress.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(r)
            }
        }
    }
}

fn poll_recv(
    recv: &mut h2::RecvStream,
    data_done: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if !*data_done {
        match ready!(recv.poll_data(cx)) {
            Some(Ok(data)) => {
                // Credit goes back as the chunk leaves us; hyper writes it before
                // polling again, so at most one window is buffered per stream.
                let _ = recv.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
            None => *data_done = true,
        }
    }
    match ready!(recv.poll_trailers(cx)) {
        Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
        Ok(None) => Poll::Ready(None),
        Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = this.poll_inner(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(d) = f.data_ref() {
                this.sent += d.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Boxed(b) => b.is_end_stream(),
            Inner::Upstream {
                shared, finished, ..
            } => {
                *finished
                    || shared
                        .lock()
                        .as_ref()
                        .is_some_and(|(r, _)| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Boxed(b) => b.size_hint(),
            Inner::Upstream { .. } => SizeHint::default(),
        }
    }
}

/// A client's request body as the pipeline hands it on: every data byte read from it is
/// counted, and the count goes into `portcullis_request_size_bytes` when the body is dropped
/// — after its end, or abandoned (a refused call, a service that answered early) — so the
/// size is what was read, measured without buffering anything.
///
/// `Unpin` bodies only (the ingress's `hyper::body::Incoming` is), so no pin projection and
/// no allocation is needed.
pub struct RequestBody<B> {
    inner: B,
    read: u64,
    /// `None`: not measured (probes and scrapes, like the other call metrics).
    size: Option<crate::telemetry::metrics::ByteHistogram>,
}

impl<B> RequestBody<B> {
    /// Count `inner` into `size`.
    pub fn new(inner: B, size: Option<crate::telemetry::metrics::ByteHistogram>) -> Self {
        Self {
            inner,
            read: 0,
            size,
        }
    }
}

impl<B> Drop for RequestBody<B> {
    fn drop(&mut self) {
        if let Some(h) = &self.size {
            h.observe(self.read);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(d) = f.data_ref() {
                this.read += d.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::ByteHistogram;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn bodies_report_the_bytes_that_crossed_them_when_dropped() {
        let size = ByteHistogram::default();
        let mut req = RequestBody::new(
            http_body_util::Full::new(Bytes::from_static(b"hello")),
            Some(size.clone()),
        );
        assert_eq!(
            req.size_hint().exact(),
            Some(5),
            "the framing stays visible"
        );
        while req.frame().await.is_some() {}
        drop(req);
        assert_eq!(size.snapshot(), (1, 5));

        struct Seen(Arc<AtomicU64>);
        impl Guard for Seen {
            fn ended(&mut self, sent: u64) {
                self.0.store(sent, Ordering::Relaxed);
            }
        }
        let seen = Arc::new(AtomicU64::new(u64::MAX));
        let mut resp = GatewayBody::full(Bytes::from_static(b"abc")).with_guard(Seen(seen.clone()));
        while resp.frame().await.is_some() {}
        drop(resp);
        assert_eq!(seen.load(Ordering::Relaxed), 3);
    }
}
