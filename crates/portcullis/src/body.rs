//! The one response body type of the ingress: fixed bytes the gateway wrote itself, or a
//! service's HTTP/2 stream relayed frame by frame.
//!
//! Relayed bodies give HTTP/2 flow-control credit back to the service only as each chunk is
//! handed to the client connection, so a slow client slows the service instead of growing a
//! buffer in the gateway. Guards riding on the body (the instance's in-flight count, the client
//! connection's activity count) drop when the body is finished or abandoned.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use crate::routing::InFlight;

/// Boxed error of a relayed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A value dropped together with the body.
pub trait Guard: Send + Sync + 'static {}
impl<T: Send + Sync + 'static> Guard for T {}

enum Inner {
    Full(Option<Bytes>),
    /// A body the gateway produces itself (a gateway operation's router).
    Boxed(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>),
    Upstream {
        recv: h2::RecvStream,
        data_done: bool,
        _call: InFlight,
    },
}

/// Response body of every ingress response.
pub struct GatewayBody {
    inner: Inner,
    _guard: Option<Box<dyn Guard>>,
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
            _guard: None,
        }
    }

    /// A body produced by the gateway itself, e.g. a gateway operation's axum response.
    pub fn boxed(b: http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>) -> Self {
        Self {
            inner: Inner::Boxed(b),
            _guard: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A service's response stream; `call` keeps the instance's in-flight count until the
    /// body ends or is dropped.
    pub fn upstream(recv: h2::RecvStream, call: InFlight) -> Self {
        Self {
            inner: Inner::Upstream {
                recv,
                data_done: false,
                _call: call,
            },
            _guard: None,
        }
    }

    /// Keep `g` alive until this body is dropped.
    pub fn with_guard(mut self, g: impl Guard) -> Self {
        self._guard = Some(Box::new(g));
        self
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Boxed(b) => Pin::new(b).poll_frame(cx),
            Inner::Upstream {
                recv, data_done, ..
            } => {
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Boxed(b) => b.is_end_stream(),
            Inner::Upstream { recv, .. } => recv.is_end_stream(),
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
