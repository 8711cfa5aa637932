//! The data plane: one thread per core, each with its own single-threaded tokio runtime (an
//! event loop), the way NGINX runs one worker process per core. (Named apart from the session
//! worker *processes* the gateway spawns for stateful clients.)
//!
//! A client connection and a link each live on one event loop for their whole life. A call whose
//! client connection and chosen link share a event loop is served without crossing threads: the
//! HTTP/1.1 connection task, the link's HTTP/2 connection task and every wake-up between them
//! stay on one core, with no work stealing, no sibling wake-ups and no contention on the link's
//! stream table. Selection prefers such a link among the links of the instance it chose
//! (`routing::select`), so a service that keeps one link per event loop (`links_per_gateway` in
//! the SDK) has its calls served locally.
//!
//! Only the gateway's `run` owns the [`DataPlane`]; the listeners hold a `Weak` reference (tasks
//! on the event loops hold the listeners), so dropping the gateway future without a shutdown still
//! stops the threads and drops every connection and link on them.
//!
//! A TCP ingress listener accepts where its connections will live: one socket per event loop in
//! a `SO_REUSEPORT` group (the kernel spreads new connections over them), each accepting on its
//! own event loop, so a new connection never crosses threads or changes reactors
//! ([`crate::ingress::Ingress::serve`]). Links (and a Unix-socket ingress) are accepted on the
//! control runtime and handed to an event loop (client connections round-robin, links to the
//! event loop with the fewest links). The control runtime also runs what is not per call: the
//! store's connections, the authenticator's background tasks and the shutdown sequence.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::transport::Stream;

/// The `[runtime]` section: threads of the data plane.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Data-plane threads serving client connections and links, each with its own event loop
    /// (like NGINX's `worker_processes`). `0`, the default, means one per available CPU.
    /// (`workers`, its former name, is still read.)
    #[serde(alias = "workers")]
    pub threads: usize,
}

impl RuntimeConfig {
    /// Check the section at key path `at` (`runtime`).
    pub fn validate(&self, at: &str, errs: &mut Vec<crate::config::ConfigError>) {
        if self.threads > 1024 {
            errs.push(crate::config::ConfigError::new(
                format!("{at}.threads"),
                "must be at most 1024 (0: one per CPU)",
            ));
        }
    }
}

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The event loop the calling thread belongs to, `None` outside the event loops.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// Event loop count for a configured value: `0` means one per available CPU.
pub fn resolve_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

struct EventLoop {
    handle: Handle,
    /// Links running (or handshaking) on this event loop.
    links: AtomicUsize,
}

/// The running event loops. Dropping the last handle stops them (their tasks are dropped).
pub struct DataPlane {
    loops: Vec<EventLoop>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("count", &self.loops.len())
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    /// Start `n` (at least one) data-plane threads. Each builds its runtime and reports back
    /// before the next starts (a few microseconds each; the caller waits, once, at startup).
    /// On failure the threads already started are stopped.
    pub fn start(n: usize) -> std::io::Result<Arc<Self>> {
        let stop = CancellationToken::new();
        // Stops whatever started if this function returns early.
        let on_error = stop.clone().drop_guard();
        let mut loops = Vec::new();
        let mut threads = Vec::new();
        for index in 0..n.max(1) {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("portcullis-dp-{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(index)));
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(stop.cancelled());
                    // Dropping the runtime drops the tasks still on it.
                })?;
            let handle = rx
                .recv()
                .map_err(|_| std::io::Error::other("event loop thread exited at start"))??;
            loops.push(EventLoop {
                handle,
                links: AtomicUsize::new(0),
            });
            threads.push(thread);
        }
        on_error.disarm();
        Ok(Arc::new(Self {
            loops,
            next: AtomicUsize::new(0),
            stop,
            threads: Mutex::new(threads),
        }))
    }

    /// Number of event loops.
    pub fn len(&self) -> usize {
        self.loops.len()
    }

    /// Always false: there is at least one event loop.
    pub fn is_empty(&self) -> bool {
        self.loops.is_empty()
    }

    /// Serve `stream` with `serve` on the next event loop in turn (client connections).
    pub fn spawn_next<F, Fut>(
        &self,
        tracker: &TaskTracker,
        stream: Stream,
        serve: F,
    ) -> std::io::Result<()>
    where
        F: FnOnce(Stream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = hand_over(stream, serve)?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        tracker.spawn_on(fut, &self.loops[i].handle);
        Ok(())
    }

    /// Run `fut` on event loop `index` (modulo the count), e.g. one accept loop per event loop.
    pub fn spawn_on<Fut>(&self, index: usize, fut: Fut) -> tokio::task::JoinHandle<()>
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.loops[index % self.loops.len()].handle.spawn(fut)
    }

    /// Serve a link (from its handshake on) with `serve` on the event loop that holds the fewest
    /// links, so the links a service opens, one per event loop, land one on each.
    pub fn spawn_link<F, Fut>(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        stream: Stream,
        serve: F,
    ) -> std::io::Result<()>
    where
        F: FnOnce(Stream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = hand_over(stream, serve)?;
        let i = (0..self.loops.len())
            .min_by_key(|&i| self.loops[i].links.load(Ordering::Relaxed))
            .unwrap_or(0);
        self.loops[i].links.fetch_add(1, Ordering::Relaxed);
        let release = Release {
            plane: Arc::downgrade(self),
            index: i,
        };
        tracker.spawn_on(
            async move {
                let _release = release;
                fut.await;
            },
            &self.loops[i].handle,
        );
        Ok(())
    }

    /// Stop every event loop and wait for the threads to end. Tasks still running are dropped.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// The socket leaves the calling runtime's reactor here and joins the event loop's when the
/// returned future first runs (on the event loop), so its readiness events reach that event loop.
fn hand_over<F, Fut>(
    stream: Stream,
    serve: F,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static>
where
    F: FnOnce(Stream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stream = stream.into_std()?;
    Ok(async move {
        if let Ok(stream) = stream.into_tokio() {
            serve(stream).await;
        }
    })
}

/// Counts a link on its event loop until the link's task ends.
struct Release {
    /// Weak: a link task must not keep the event loops (and so itself) alive.
    plane: std::sync::Weak<DataPlane>,
    index: usize,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(plane) = self.plane.upgrade() {
            plane.loops[self.index]
                .links
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
