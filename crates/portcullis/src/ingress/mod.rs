//! Ingress: the client-facing listener. Accepts TCP (optionally TLS with ALPN h2/http1.1),
//! serves HTTP/1.1 and HTTP/2 (h2c prior knowledge without TLS) with bounded heads, bodies,
//! streams and idle time, and hands each request to the call pipeline in [`pipeline`].
//!
//! Each connection runs in its own task, tracked so shutdown can wait for it: on shutdown the
//! connection is told to finish (HTTP/2 GOAWAY, idle HTTP/1.1 closed) and left to complete
//! its in-flight calls up to the grace period.

mod pipeline;

pub use pipeline::Pipeline;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::IngressConfig;
use crate::telemetry::metrics::{Listener, Metrics};

/// Activity of one client connection, for the idle timeout: calls in progress and when the
/// last one finished.
#[derive(Debug)]
pub struct ConnActivity {
    started: Instant,
    active: AtomicUsize,
    last_done_ms: AtomicU64,
}

impl ConnActivity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            active: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
        })
    }

    /// Count a call until the guard drops (with the response body).
    pub fn begin(self: &Arc<Self>) -> ActiveCall {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveCall(self.clone())
    }

    /// Idle for how long, or `None` while a call is in progress.
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_done_ms.load(Ordering::Acquire));
        Some(self.started.elapsed().saturating_sub(last))
    }
}

/// Ends a call on its connection when dropped.
#[derive(Debug)]
pub struct ActiveCall(Arc<ConnActivity>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        let now = self.0.started.elapsed().as_millis() as u64;
        self.0.last_done_ms.fetch_max(now, Ordering::AcqRel);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The ingress listener.
pub struct Ingress {
    cfg: IngressConfig,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pipeline: Arc<Pipeline>,
    connections: TaskTracker,
    metrics: Arc<Metrics>,
}

impl Ingress {
    /// Build from configuration.
    pub fn new(
        cfg: &IngressConfig,
        pipeline: Arc<Pipeline>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout)
            .max_buf_size(cfg.max_header_bytes.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20));
        let tls = match &cfg.tls {
            Some(t) => Some(crate::tls::acceptor(t, &[b"h2", b"http/1.1"])?),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            builder,
            tls,
            pipeline,
            connections: TaskTracker::new(),
            metrics,
        })
    }

    /// Accept connections until `stop_accepting` fires; each connection is told to finish when
    /// `drain` fires. Returns once accepting has stopped; use [`Ingress::wait`] for the rest.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        stop_accepting: CancellationToken,
        drain: CancellationToken,
    ) {
        let limit = Arc::new(Semaphore::new(self.cfg.max_connections));
        loop {
            let permit = tokio::select! {
                _ = stop_accepting.cancelled() => break,
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (stream, peer) = tokio::select! {
                _ = stop_accepting.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "ingress accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let drain = drain.clone();
            self.connections.spawn(async move {
                match &this.tls {
                    None => this.serve_conn(stream, peer, drain).await,
                    Some(acc) => {
                        match tokio::time::timeout(this.cfg.header_read_timeout, acc.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => this.serve_conn(tls, peer, drain).await,
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %peer, error = %e, "tls handshake failed")
                            }
                            Err(_) => tracing::debug!(peer = %peer, "tls handshake timed out"),
                        }
                    }
                }
                drop(permit);
            });
        }
        self.connections.close();
    }

    /// Wait until every connection has finished.
    pub async fn wait(&self) {
        self.connections.wait().await;
    }

    /// Open client connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    async fn serve_conn<IO>(self: &Arc<Self>, io: IO, peer: SocketAddr, drain: CancellationToken)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _gauge = self.metrics.connection(Listener::ingress);
        let activity = ConnActivity::new();
        let pipeline = self.pipeline.clone();
        let act = activity.clone();
        let svc = service_fn(move |req| {
            let pipeline = pipeline.clone();
            let call = act.begin();
            async move { Ok::<_, std::convert::Infallible>(pipeline.handle(req, peer, call).await) }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let idle = self.cfg.idle_timeout;
        let mut finishing = false;
        loop {
            tokio::select! {
                // The connection first: when a drain begins, bytes that already arrived are
                // read before the connection is told to finish, so a request under way is
                // answered instead of the socket being dropped while its protocol is unknown.
                biased;
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %peer, error = %e, "client connection ended with error");
                    }
                    return;
                }
                _ = drain.cancelled(), if !finishing => {
                    conn.as_mut().graceful_shutdown();
                    finishing = true;
                }
                _ = idle_expired(&activity, idle), if !finishing => {
                    conn.as_mut().graceful_shutdown();
                    finishing = true;
                }
            }
        }
    }
}

async fn idle_expired(activity: &ConnActivity, limit: Duration) {
    loop {
        let wait = match activity.idle_for() {
            Some(d) if d >= limit => return,
            Some(d) => limit - d,
            None => limit,
        };
        tokio::time::sleep(wait).await;
    }
}
