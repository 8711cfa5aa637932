//! Ingress: the client-facing listener. Accepts TCP (optionally TLS with ALPN h2/http1.1),
//! serves HTTP/1.1 and HTTP/2 (h2c prior knowledge without TLS) with bounded heads, bodies,
//! streams and idle time, and hands each request — with its connection's facts in the
//! request extensions (`crate::transport::Conn`) — to the call pipeline (`crate::pipeline`).
//!
//! Each connection runs in its own task while it is served (an idle plain HTTP/1.1 connection
//! waits in its event loop's lot instead, see [`Ingress::serve_h1_from`]), tracked so shutdown
//! can wait for it: on shutdown the connection is told to finish (HTTP/2 GOAWAY, idle HTTP/1.1
//! closed) and left to complete its in-flight calls up to the grace period.

mod config;
pub use config::{IngressConfig, MonitoringConfig};

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// tokio's clock, not std's: idle and park timing follow a paused test clock.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pipeline::Pipeline;
use crate::telemetry::metrics::{Listener, Metrics};
use crate::transport::{accept_loop, Conn, ConnFacts, Stream, TlsFacts};
use std::ops::ControlFlow;

/// Activity of one client connection, for the idle timeout: calls in progress and when the
/// last one finished.
#[derive(Debug)]
pub struct ConnActivity {
    started: Instant,
    active: AtomicUsize,
    last_done_ms: AtomicU64,
    /// Calls finished on this connection.
    done: AtomicU64,
    /// Someone waits in [`ConnActivity::until_idle`]: only then does a finishing call notify,
    /// so a call pays one atomic load for it, not a lock.
    idle_waiter: AtomicBool,
    idle: tokio::sync::Notify,
}

impl ConnActivity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            active: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            done: AtomicU64::new(0),
            idle_waiter: AtomicBool::new(false),
            idle: tokio::sync::Notify::new(),
        })
    }

    /// Resolve once no call is in progress (at once if none is).
    async fn until_idle(&self) {
        let notified = self.idle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // SeqCst with the load in `ActiveCall::drop`: either the finishing call sees the flag
        // and notifies, or this load sees the call gone.
        self.idle_waiter.store(true, Ordering::SeqCst);
        if self.active.load(Ordering::SeqCst) > 0 {
            notified.await;
        }
        self.idle_waiter.store(false, Ordering::SeqCst);
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
        self.0.done.fetch_add(1, Ordering::AcqRel);
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.idle_waiter.load(Ordering::SeqCst)
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// The ingress listener.
pub struct Ingress {
    cfg: IngressConfig,
    builder: auto::Builder<TokioExecutor>,
    /// HTTP/1.1 on plain TCP, where idle connections are parked (see [`Ingress::serve_tcp`]).
    h1: hyper::server::conn::http1::Builder,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pipeline: Pipeline,
    connections: TaskTracker,
    metrics: Arc<Metrics>,
    /// Weak: connection tasks hold the `Ingress`; only the gateway's `run` owns the data plane.
    dataplane: std::sync::Weak<crate::dataplane::DataPlane>,
    /// Which listener this is, for the connection gauge and the accept loop's logs.
    listener: Listener,
    /// Parked HTTP/1.1 connections, one lot per event loop (index 0: any other runtime).
    lots: Box<[Lot]>,
}

impl Ingress {
    /// Build from configuration; TLS ticket keys rotate on `clock`.
    pub fn new(
        cfg: &IngressConfig,
        pipeline: Pipeline,
        metrics: Arc<Metrics>,
        dataplane: &Arc<crate::dataplane::DataPlane>,
        clock: crate::clock::Clock,
    ) -> anyhow::Result<Self> {
        // HTTP/1.1 is served by two builders, the auto one (TLS, h2c detection) and the plain
        // one that can park (`serve_h1`): the same settings for both.
        let h1_buf = cfg.max_header_bytes.max(8192);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout)
            .max_buf_size(h1_buf)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20));
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout)
            .max_buf_size(h1_buf)
            .keep_alive(true);
        let tls = match &cfg.tls {
            Some(t) => Some(crate::tls::acceptor(t, &[b"h2", b"http/1.1"], clock)?),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            builder,
            h1,
            tls,
            pipeline,
            connections: TaskTracker::new(),
            metrics,
            dataplane: Arc::downgrade(dataplane),
            listener: Listener::ingress,
            lots: (0..=dataplane.len()).map(|_| Lot::default()).collect(),
        })
    }

    /// Count this listener's connections as `listener` (the monitoring listener is an
    /// `Ingress` serving its own pipeline).
    pub fn labelled(mut self, listener: Listener) -> Self {
        self.listener = listener;
        self
    }

    /// Accept connections until `stop_accepting` fires; each connection is told to finish when
    /// `drain` fires. Returns once accepting has stopped; use [`Ingress::wait`] for the rest.
    ///
    /// A TCP listener accepts on every event loop (one `SO_REUSEPORT` socket each, see
    /// [`crate::transport::Listener::reuseport_siblings`]) and each connection is served on the
    /// event loop that accepted it; otherwise (a Unix socket, one event loop) the control runtime
    /// accepts and hands connections round-robin. Both share one connection limit.
    pub async fn serve(
        self: Arc<Self>,
        listener: crate::transport::Listener,
        stop_accepting: CancellationToken,
        drain: CancellationToken,
    ) {
        let limit = Arc::new(Semaphore::new(self.cfg.max_connections));
        let local = listener.local_addr();
        let Some(dataplane) = self.dataplane.upgrade() else {
            return; // the gateway is gone
        };
        let siblings = match dataplane.len() {
            1 => None,
            n => listener.reuseport_siblings(n - 1).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot open one ingress socket per data-plane thread; accepting on one");
                None
            }),
        };
        let listener = match (listener, siblings) {
            (crate::transport::Listener::Tcp(first), Some(siblings)) => {
                let accepting: Vec<_> = std::iter::once(first.into_std())
                    .chain(siblings.into_iter().map(Ok))
                    .enumerate()
                    .map(|(i, socket)| {
                        let this = self.clone();
                        let (stop, drain) = (stop_accepting.clone(), drain.clone());
                        let limit = limit.clone();
                        dataplane.spawn_on(i, async move {
                            let listener = match socket.and_then(tokio::net::TcpListener::from_std)
                            {
                                Ok(l) => crate::transport::Listener::Tcp(l),
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot accept on a data-plane thread");
                                    return;
                                }
                            };
                            let admission = crate::transport::Admission::AfterAccept(limit);
                            accept_loop(&listener, "ingress", &stop, admission, |stream, peer, permit| {
                                // On this event loop's runtime: the connection stays where it
                                // was accepted.
                                let conn = this.clone().connection(stream, peer, local, drain.clone(), permit);
                                this.connections.spawn(conn);
                                ControlFlow::Continue(())
                            })
                            .await;
                        })
                    })
                    .collect();
                drop(dataplane);
                for task in accepting {
                    let _ = task.await;
                }
                self.connections.close();
                return;
            }
            (listener, _) => listener,
        };
        drop(dataplane);
        accept_loop(
            &listener,
            self.listener.as_str(),
            &stop_accepting,
            Some(limit),
            |stream, peer, permit| {
                let Some(dataplane) = self.dataplane.upgrade() else {
                    return ControlFlow::Break(()); // the gateway is gone
                };
                let this = self.clone();
                let drain = drain.clone();
                let handed = dataplane.spawn_next(&self.connections, stream, move |stream| {
                    this.connection(stream, peer, local, drain, permit)
                });
                if let Err(e) = handed {
                    tracing::debug!(peer = %peer, error = %e, "cannot hand the connection to a data-plane thread");
                }
                ControlFlow::Continue(())
            },
        )
        .await;
        self.connections.close();
    }

    /// One client connection, from its first byte to its end; the admission permit is held
    /// until then.
    async fn connection(
        self: Arc<Self>,
        stream: Stream,
        peer: crate::transport::Peer,
        local: Option<std::net::SocketAddr>,
        drain: CancellationToken,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let facts = ConnFacts {
            peer,
            local,
            tls: None,
        };
        // Every connection's task is sized by its largest state; the protocol stacks are boxed
        // so a parked connection's task stays small (see `serve_tcp`).
        match (&self.tls, stream) {
            // The permit goes with the connection: it may outlive this task, parked.
            (None, Stream::Tcp(tcp)) => self.serve_tcp(tcp, facts, drain, permit).await,
            (None, unix) => Box::pin(self.serve_conn(unix, facts, drain)).await,
            // Boxed: the handshake state (1.3 KiB with its timeout) would otherwise size every
            // connection's task, plain TCP ones included.
            (Some(acc), stream) => Box::pin(self.serve_tls(acc, stream, facts, drain)).await,
        }
    }

    /// A TLS client connection: handshake within the header-read timeout, then HTTP/1.1 or
    /// HTTP/2 by ALPN, with the negotiated facts in every request.
    async fn serve_tls(
        self: &Arc<Self>,
        acc: &tokio_rustls::TlsAcceptor,
        stream: Stream,
        mut facts: ConnFacts,
        drain: CancellationToken,
    ) {
        match tokio::time::timeout(self.cfg.header_read_timeout, acc.accept(stream)).await {
            Ok(Ok(tls)) => {
                facts.tls = Some(TlsFacts::of(tls.get_ref().1));
                if tls.get_ref().1.alpn_protocol() == Some(b"http/1.1".as_slice()) {
                    self.serve_tls_h1(tls, facts, drain).await
                } else {
                    self.serve_conn(tls, facts, drain).await
                }
            }
            Ok(Err(e)) => tracing::debug!(peer = %facts.peer, error = %e, "tls handshake failed"),
            Err(_) => tracing::debug!(peer = %facts.peer, "tls handshake timed out"),
        }
    }

    /// Wait until every connection has finished.
    pub async fn wait(&self) {
        self.connections.wait().await;
    }

    /// Open client connections, parked ones included.
    pub fn connection_count(&self) -> usize {
        let (lots, parked) = self.lots.iter().fold((0, 0), |(l, p), lot| {
            // A lot's task runs from its first park until it closes its queue (a drain).
            let running = lot.tx.get().is_some_and(|tx| !tx.is_closed());
            (
                l + usize::from(running),
                p + lot.parked.load(Ordering::Relaxed),
            )
        });
        // The lots' own tasks are tracked too, so that `wait` covers their closing.
        self.connections.len().saturating_sub(lots) + parked
    }

    async fn serve_conn<IO>(self: &Arc<Self>, io: IO, facts: ConnFacts, drain: CancellationToken)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _gauge = self.metrics.connection(self.listener);
        let peer = facts.peer;
        let activity = ConnActivity::new();
        let pipeline = self.pipeline.clone();
        let conn = Conn {
            facts: Arc::new(facts),
            activity: activity.clone(),
        };
        let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let pipeline = pipeline.clone();
            req.extensions_mut().insert(conn.clone());
            // Boxed: hyper's HTTP/2 server spawns every stream as a task, moving the task's
            // future into its cell and its output over it; the call's state (3.4 KiB) goes
            // into a box once instead. HTTP/1.1 on this builder (TLS without ALPN, Unix
            // sockets) pays the one allocation; the parking HTTP/1.1 path does not box.
            async move { Ok::<_, std::convert::Infallible>(Box::pin(pipeline.handle(req)).await) }
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

/// What ended one HTTP/1.1 service period of a plain TCP connection.
enum H1End<S> {
    /// The connection is finished (closed by the peer, an error, drain or idle timeout).
    Done,
    /// Idle: hyper handed back the stream and any bytes it had read but not parsed.
    Parked(Prefixed<S>),
}

impl Ingress {
    /// A plain TCP client connection. HTTP/2 (prior knowledge) goes to the auto builder as
    /// before; HTTP/1.1 is served by hyper's HTTP/1 connection and *parked* whenever it has been
    /// idle for `park_after` (see [`Ingress::serve_h1_from`]).
    async fn serve_tcp(
        self: &Arc<Self>,
        mut stream: tokio::net::TcpStream,
        facts: ConnFacts,
        drain: CancellationToken,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        // The first bytes decide: the HTTP/2 preface, or anything that might still become it,
        // goes to the auto builder; the rest is HTTP/1.1. They are read, not peeked, and handed
        // to hyper in front of the socket, so a request that arrived whole costs one `recvfrom`
        // rather than a peek and a read (the new-connection profile in BENCHMARKS.md).
        let mut first = bytes::BytesMut::with_capacity(FIRST_READ);
        tokio::select! {
            r = tokio::time::timeout(
                self.cfg.header_read_timeout,
                tokio::io::AsyncReadExt::read_buf(&mut stream, &mut first),
            ) => match r {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            },
            _ = drain.cancelled() => return,
        }
        let first = first.freeze();
        let h2 = first.starts_with(H2_PREFACE) || H2_PREFACE.starts_with(&first);
        let io = PrefixedTcp::new(first, stream);
        if h2 {
            return Box::pin(self.serve_conn(io, facts, drain)).await;
        }
        let parked = Parked {
            conn: Conn {
                facts: Arc::new(facts),
                activity: ConnActivity::new(),
            },
            _gauge: self.metrics.connection(self.listener),
            _permit: permit,
        };
        // Boxed: this task ends when the connection parks, and the next service period runs
        // in a task of its own; neither should be sized by the other's state.
        Box::pin(self.clone().serve_h1_from(io, parked, drain)).await
    }

    /// Serve a plain HTTP/1.1 connection until it ends or parks. Parking drops hyper's
    /// per-connection state (an 8 KiB read buffer, an 8 KiB write buffer, timers, the boxed
    /// connection future) *and this task*: the socket and a compact record of the connection
    /// go to the event loop's [`Lot`], which waits for readability of all its sockets in one
    /// task and starts a service period again, in a new task, when the client sends. The
    /// bytes hyper had read but not parsed are put back in front of the socket first. An idle
    /// keep-alive connection then costs its socket and about two hundred bytes, not a task
    /// and 20 KiB of buffers.
    async fn serve_h1_from(
        self: Arc<Self>,
        io: PrefixedTcp,
        parked: Parked,
        drain: CancellationToken,
    ) {
        let Some(io) = self.serve_until_idle(io, &parked.conn, &drain).await else {
            return;
        };
        let idle_for = parked.conn.activity.idle_for().unwrap_or_default();
        let deadline = Instant::now() + self.cfg.idle_timeout.saturating_sub(idle_for);
        self.park(io.inner, parked, deadline, &drain);
    }

    /// A TLS connection that negotiated HTTP/1.1: served like a plain one, and parked the
    /// same way after `park_after` without a call — hyper's buffers are dropped and the rustls
    /// session is kept — but in its own task, waiting on the socket (the lot holds bare TCP
    /// sockets only). Never parked while rustls holds bytes hyper has not read (decrypted
    /// records, or records still to be sent), so nothing waits on a socket that will not wake.
    async fn serve_tls_h1(
        self: &Arc<Self>,
        tls: tokio_rustls::server::TlsStream<crate::transport::Stream>,
        facts: ConnFacts,
        drain: CancellationToken,
    ) {
        let _gauge = self.metrics.connection(self.listener);
        let conn = Conn {
            facts: Arc::new(facts),
            activity: ConnActivity::new(),
        };
        let mut io = Prefixed::new(Bytes::new(), tls);
        loop {
            io = match self.serve_until_idle(io, &conn, &drain).await {
                Some(io) => io,
                None => return,
            };
            let session = io.inner.get_mut().1;
            if session.wants_write() {
                continue;
            }
            match session.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() > 0 => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(peer = %conn.facts.peer, error = %e, "tls error while idle");
                    return;
                }
            }
            let _parked = self.metrics.parked(self.listener);
            tokio::select! {
                // The socket first, as in `serve_conn`.
                biased;
                r = io.inner.get_ref().0.readable() => if r.is_err() { return },
                _ = drain.cancelled() => return,
                _ = idle_expired(&conn.activity, self.cfg.idle_timeout) => return,
            }
        }
    }

    /// Serve HTTP/1.1 periods on `io` until the connection ends (`None`) or is idle with no
    /// byte waiting in front of the stream (a pipelined request or half a head is served on).
    async fn serve_until_idle<S>(
        self: &Arc<Self>,
        mut io: Prefixed<S>,
        conn: &Conn,
        drain: &CancellationToken,
    ) -> Option<Prefixed<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        loop {
            io = match Box::pin(self.serve_h1(io, conn, drain)).await {
                H1End::Done => return None,
                H1End::Parked(io) => io,
            };
            if io.prefix.is_empty() {
                return Some(io);
            }
        }
    }

    /// Hand `stream` to this event loop's lot, starting the lot on first use. A connection
    /// parked while the lot is closing (a drain) is closed.
    fn park(
        self: &Arc<Self>,
        stream: tokio::net::TcpStream,
        parked: Parked,
        deadline: Instant,
        drain: &CancellationToken,
    ) {
        if drain.is_cancelled() {
            return;
        }
        let index = crate::dataplane::current().map_or(0, |i| i + 1);
        let Some(lot) = self.lots.get(index) else {
            return;
        };
        let tx = lot.tx.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            self.connections
                .spawn(self.clone().run_lot(index, rx, drain.clone()));
            tx
        });
        // A failed send drops the connection: the lot has closed for a drain.
        let _ = tx.send(ParkedSocket {
            stream,
            parked,
            deadline,
            expired: false,
            waker: None,
        });
    }

    /// One event loop's lot: waits for any of its sockets to turn readable (each has its own
    /// waker in `FuturesUnordered`, so a wake polls that socket alone) and resumes it in a new
    /// task on this event loop; closes sockets whose idle time has run out (one sweep over the
    /// lot at the earliest deadline, at most every [`SWEEP_EVERY`]); closes them all on drain.
    async fn run_lot(
        self: Arc<Self>,
        index: usize,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<ParkedSocket>,
        drain: CancellationToken,
    ) {
        use futures_util::StreamExt;
        let mut lot = futures_util::stream::FuturesUnordered::new();
        // The gauge is the listener's, shared by the lots of every event loop: each adds the
        // change in its own count.
        let gauge = self.metrics.parked_connections(self.listener);
        let Some(own) = self.lots.get(index) else {
            return;
        };
        let count = |n: usize| {
            let shown = own.parked.swap(n, Ordering::Relaxed);
            if n != shown {
                let delta =
                    i64::try_from(n).unwrap_or(i64::MAX) - i64::try_from(shown).unwrap_or(i64::MAX);
                gauge.inc_by(delta);
            }
        };
        let cancelled = drain.cancelled();
        tokio::pin!(cancelled);
        let sweep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sweep);
        let mut armed = false;
        loop {
            tokio::select! {
                // Sockets that turned readable first: a request that arrived before a drain
                // began is served (hyper then closes after it), not dropped.
                biased;
                Some((p, woke)) = lot.next(), if !lot.is_empty() => {
                    let ParkedSocket { stream, parked, .. } = p;
                    if let Wake::Readable = woke {
                        let io = PrefixedTcp::new(Bytes::new(), stream);
                        self.connections
                            .spawn(self.clone().serve_h1_from(io, parked, drain.clone()));
                    }
                }
                p = rx.recv() => match p {
                    Some(p) => {
                        if !armed || p.deadline < sweep.deadline() {
                            sweep.as_mut().reset(p.deadline);
                            armed = true;
                        }
                        lot.push(ParkedWait(Some(p)));
                    }
                    None => break,
                },
                _ = &mut cancelled => break,
                _ = &mut sweep, if armed => {
                    let now = Instant::now();
                    let mut next: Option<Instant> = None;
                    for w in lot.iter_mut() {
                        let Some(p) = w.0.as_mut() else { continue };
                        if p.deadline <= now {
                            p.expired = true;
                            if let Some(waker) = &p.waker {
                                waker.wake_by_ref();
                            }
                        } else {
                            next = Some(next.map_or(p.deadline, |n| n.min(p.deadline)));
                        }
                    }
                    match next {
                        Some(n) => sweep.as_mut().reset(n.max(now + SWEEP_EVERY)),
                        None => armed = false,
                    }
                }
            }
            count(lot.len());
        }
        // Closing: whatever is parked or on its way is closed.
        rx.close();
        while rx.try_recv().is_ok() {}
        drop(lot);
        count(0);
    }

    /// Serve HTTP/1.1 on `io` until the connection ends or has been idle for `park_after`.
    async fn serve_h1<S>(
        self: &Arc<Self>,
        mut io: Prefixed<S>,
        conn: &Conn,
        drain: &CancellationToken,
    ) -> H1End<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        io.new_period();
        let peer = conn.facts.peer;
        let activity = &conn.activity;
        // The pipeline is a tower service whose future is boxed, so the connection can be
        // taken apart (`poll_without_shutdown` wants an `Unpin` future); one allocation per call.
        let pipeline = self.pipeline.clone();
        let c = conn.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(c.clone());
                tower::Service::call(&mut pipeline.clone(), req)
            });
        let io_state = io.state.clone();
        let done_before = activity.done.load(Ordering::Acquire);
        let mut park_from = Instant::now();
        let mut conn = self.h1.serve_connection(TokioIo::new(io), svc);
        let idle = self.cfg.idle_timeout;
        let park_after = self.cfg.park_after;
        let mut finishing = false;
        let mut parking = false;
        loop {
            tokio::select! {
                // The connection first, as in `serve_conn`.
                biased;
                r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %peer, error = %e, "client connection ended with error");
                        return H1End::Done;
                    }
                    if !parking || finishing {
                        return H1End::Done;
                    }
                    let parts = conn.into_parts();
                    let mut io = parts.io.into_inner();
                    if !parts.read_buf.is_empty() {
                        io.unread(parts.read_buf);
                    }
                    return H1End::Parked(io);
                }
                _ = drain.cancelled(), if !finishing => {
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    finishing = true;
                }
                _ = idle_expired(activity, idle), if !finishing => {
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    finishing = true;
                }
                _ = park_due(activity, park_after, park_from), if !finishing && !parking => {
                    // Only where hyper is idle, so it closes at once instead of finishing a
                    // call with `connection: close`: after a call of this period has
                    // finished (the bytes of a next request come back in `read_buf`), or
                    // before any byte was read. Never with a response unflushed. A request
                    // head still arriving is left to hyper and its header-read timeout.
                    let call_done = activity.done.load(Ordering::Acquire) > done_before;
                    let untouched = io_state.read_bytes.load(Ordering::Acquire) == 0;
                    if io_state.write_blocked.load(Ordering::Acquire) || !(call_done || untouched) {
                        // Look again one period later; hyper keeps being polled meanwhile.
                        park_from = Instant::now();
                    } else {
                        std::pin::Pin::new(&mut conn).graceful_shutdown();
                        parking = true;
                    }
                }
            }
        }
    }
}

/// What a connection carries from one HTTP/1.1 service period to the next, across a park.
struct Parked {
    conn: Conn,
    /// Held for their drop: a parked connection is still open, and still counts against the
    /// connection limit.
    _gauge: crate::telemetry::metrics::ConnectionGauge,
    _permit: Option<OwnedSemaphorePermit>,
}

/// A parked connection in its lot.
struct ParkedSocket {
    stream: tokio::net::TcpStream,
    parked: Parked,
    /// When the idle timeout closes it.
    deadline: Instant,
    /// Set by the lot's sweep once `deadline` has passed.
    expired: bool,
    /// The lot's waker for this socket, for the sweep to wake it when it expires.
    waker: Option<std::task::Waker>,
}

/// The lot of one event loop: started on the first park there.
#[derive(Default)]
struct Lot {
    tx: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<ParkedSocket>>,
    /// Connections parked in it, for [`Ingress::connection_count`].
    parked: AtomicUsize,
}

/// How often at most the lot sweeps for expired connections: the idle timeout may close a
/// parked connection this much late, and a lot of 10,000 with spread deadlines is walked at
/// most ten times a second.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Why a parked socket left its lot.
enum Wake {
    /// The client sent something (or closed): serve again.
    Readable,
    /// Idle for the idle timeout, or the socket failed: close.
    Closed,
}

/// Resolves when the parked socket turns readable, fails, or the sweep marks it expired.
struct ParkedWait(Option<ParkedSocket>);

impl std::future::Future for ParkedWait {
    type Output = (ParkedSocket, Wake);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(p) = self.0.as_mut() else {
            return Poll::Pending; // already resolved; `FuturesUnordered` does not poll again
        };
        let woke = if p.expired {
            Wake::Closed
        } else {
            match p.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => Wake::Readable,
                Poll::Ready(Err(_)) => Wake::Closed,
                Poll::Pending => {
                    if !p.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        p.waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        };
        match self.0.take() {
            Some(p) => Poll::Ready((p, woke)),
            None => Poll::Pending,
        }
    }
}

/// The HTTP/2 connection preface a prior-knowledge client opens with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much a plain connection's first read takes: a whole request head of the usual size
/// (an API key or a token included), so hyper parses it without reading again. Freed once
/// hyper has consumed it.
const FIRST_READ: usize = 2048;

/// Resolves once no call has run for `after` and the current service period is at least
/// `after` old (a connection just unparked is not parked again before it reads).
async fn park_due(activity: &ConnActivity, after: Duration, since: Instant) {
    loop {
        let wait = match activity.idle_for() {
            Some(d) => after.saturating_sub(d.min(since.elapsed())),
            // A call is running (a long download, say): wait for its end, not in 50 ms steps.
            None => {
                activity.until_idle().await;
                continue;
            }
        };
        if wait.is_zero() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// A plain TCP client connection with bytes to replay before the socket (what hyper had read
/// but not parsed when the connection was parked). Records whether the last write stopped
/// short, so a connection is never parked with a response still in hyper's buffer.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
    state: Arc<IoState>,
}

/// A plain TCP client connection with its replay bytes.
type PrefixedTcp = Prefixed<tokio::net::TcpStream>;

/// What the connection loop needs to know about hyper's use of the socket.
#[derive(Default)]
struct IoState {
    /// The last write stopped short: hyper may hold unflushed bytes.
    write_blocked: AtomicBool,
    /// Bytes handed to hyper in this service period (prefix included).
    read_bytes: AtomicU64,
}

impl<S> Prefixed<S> {
    fn new(prefix: Bytes, inner: S) -> Self {
        Self {
            prefix,
            inner,
            state: Arc::default(),
        }
    }

    /// Put `bytes` back in front of whatever is still to be read.
    fn unread(&mut self, bytes: Bytes) {
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else {
            let mut b = bytes::BytesMut::from(&bytes[..]);
            b.extend_from_slice(&self.prefix);
            self.prefix = b.freeze();
        }
    }

    fn blocked<T>(&self, p: Poll<T>) -> Poll<T> {
        self.state
            .write_blocked
            .store(p.is_pending(), Ordering::Release);
        p
    }

    /// A new service period: count reads from zero.
    fn new_period(&mut self) {
        self.state = Arc::default();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            if self.prefix.is_empty() {
                // An empty remainder still shares (and would keep) the whole first read's
                // allocation: a parked connection must hold nothing but the socket.
                self.prefix = Bytes::new();
            }
            self.state.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let p = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.state.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        p
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.blocked(p)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.blocked(p)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
    //! The connection timing on a paused clock: these would spin for ever on `std::time`,
    //! whose clock a paused test does not move.
    use super::*;

    /// Run `f` under a generous deadline on the paused clock, so a timer that never fires
    /// fails the test instead of hanging it.
    async fn within<F: std::future::Future>(limit: Duration, f: F) -> F::Output {
        tokio::time::timeout(limit, f)
            .await
            .unwrap_or_else(|_| panic!("did not resolve within {limit:?} of paused time"))
    }

    #[tokio::test(start_paused = true)]
    async fn idle_expired_fires_once_the_connection_has_been_idle_for_the_limit() {
        let activity = ConnActivity::new();
        let limit = Duration::from_secs(60);
        let t0 = Instant::now();
        within(Duration::from_secs(600), idle_expired(&activity, limit)).await;
        assert_eq!(
            t0.elapsed(),
            limit,
            "idle from the start: expires after the limit"
        );

        // A call in progress holds the connection open however long it runs; the idle time
        // counts from its end.
        let call = activity.begin();
        let watcher = tokio::spawn({
            let activity = activity.clone();
            async move {
                idle_expired(&activity, limit).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!watcher.is_finished(), "a running call is never idle");
        let ended = Instant::now();
        drop(call);
        let fired = within(Duration::from_secs(600), watcher).await.unwrap();
        assert_eq!(
            fired - ended,
            limit,
            "idle counts from the end of the last call"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn park_due_waits_for_the_period_and_for_running_calls() {
        let activity = ConnActivity::new();
        let after = Duration::from_millis(50);
        let t0 = Instant::now();
        within(
            Duration::from_secs(60),
            park_due(&activity, after, Instant::now()),
        )
        .await;
        assert_eq!(t0.elapsed(), after);

        let call = activity.begin();
        let since = Instant::now();
        let parker = tokio::spawn({
            let activity = activity.clone();
            async move {
                park_due(&activity, after, since).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!parker.is_finished(), "never parks under a running call");
        let ended = Instant::now();
        drop(call);
        let parked = within(Duration::from_secs(60), parker).await.unwrap();
        assert_eq!(
            parked - ended,
            after,
            "parks `after` past the end of the call"
        );
    }
}
