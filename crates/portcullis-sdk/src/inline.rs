//! Where a link's calls run: first on the link's own task, and on the runtime only when they
//! must wait.
//!
//! hyper's HTTP/2 server hands every stream it accepts to an executor. With tokio's (the
//! default) each call is a task of its own: spawned from the link's task, often woken on the
//! other worker thread (a futex wake and a context switch), and every response it sends wakes
//! the link's task again, which then writes that one response — one `writev` per call, seven
//! per read in the profile of a busy echo service (BENCHMARKS.md, issue 14 §4).
//!
//! [`LinkExecutor`] queues the streams instead, and [`LinkExecutor::drive`] polls each one
//! once on the link's task as soon as the connection has accepted it. A call that answers in
//! that poll (a handler with nothing to wait for, the health exchange) costs no task, no
//! cross-thread wake, and its response leaves in the same write as the rest of the batch the
//! connection read. A call that is still pending after its first poll — it waits for its
//! request body, a database, a timer, or streams its response — is spawned on the runtime
//! and runs in parallel with the link as before.
//!
//! A first poll that runs long (a handler doing heavy work before its first `.await`) holds up
//! every other call on the link, so the executor watches the time of the last 32 first polls:
//! once [`SLOW_TRIP`] of them took [`SLOW_POLL`] or more, the link's calls go straight to the
//! runtime for [`SLOW_BACKOFF`], then inline polling is tried again. One slow poll is not
//! enough: the time is wall time, and a thread the kernel preempts mid-poll makes a fast
//! handler look slow (on a busy two-core machine about one first poll in 800 took over 100 µs
//! with a handler of a few µs); eight in thirty-two does not happen by preemption, and a
//! handler slow on a quarter of its calls or more is caught within a few dozen calls. A panic
//! in a first poll is caught: the call's stream is reset (dropping hyper's stream future does
//! that), the link and its other calls go on, as they do for a spawned call.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

/// A first poll at least this long counts as slow.
pub(crate) const SLOW_POLL: Duration = Duration::from_micros(200);

/// Slow first polls among the last 32 that turn inline polling off.
pub(crate) const SLOW_TRIP: u32 = 8;

/// How long the link's calls go straight to the runtime after a slow first poll.
pub(crate) const SLOW_BACKOFF: Duration = Duration::from_secs(1);

/// Rounds of "poll the connection, run what it accepted" in one poll of the link's task
/// before it yields to the runtime (and is polled again at once).
const ROUNDS: usize = 16;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one link (see the module docs). Cheap to clone: hyper keeps a copy in
/// every stream.
#[derive(Clone, Default)]
pub(crate) struct LinkExecutor {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Streams accepted and not yet polled. Bounded by what one poll of the connection
    /// accepts: the link's concurrent-stream limit.
    queue: Mutex<Vec<Task>>,
    /// The link's task, for work queued from elsewhere (an upgraded stream's task, which
    /// hyper starts from a call already running on the runtime).
    waker: AtomicWaker,
    /// The link's task is in [`LinkExecutor::drive`]'s poll and drains the queue before it
    /// returns: no wake needed.
    polling: AtomicBool,
}

/// Whether the next call is polled inline (see the module docs).
#[derive(Default)]
struct Policy {
    /// The last 32 first polls, newest in bit 0: 1 for a slow one.
    slow: u32,
    /// Calls go straight to the runtime until then.
    spawn_until: Option<Instant>,
}

impl Policy {
    fn inline_allowed(&mut self, now: impl FnOnce() -> Instant) -> bool {
        match self.spawn_until {
            None => true,
            Some(t) if now() >= t => {
                self.spawn_until = None;
                true
            }
            Some(_) => false,
        }
    }

    /// A first poll took `took`.
    fn record(&mut self, took: Duration, now: impl FnOnce() -> Instant) {
        self.slow = (self.slow << 1) | u32::from(took >= SLOW_POLL);
        if self.slow.count_ones() >= SLOW_TRIP {
            self.slow = 0;
            self.spawn_until = Some(now() + SLOW_BACKOFF);
        }
    }
}

impl<F> hyper::rt::Executor<F> for LinkExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let s = &self.shared;
        s.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(fut));
        // SeqCst with the store in `drive`: either the link's task still sees this task in the
        // queue after it stops polling, or this sees it stopped and wakes it.
        if !s.polling.load(Ordering::SeqCst) {
            s.waker.wake();
        }
    }
}

impl LinkExecutor {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Poll `conn` (the link's HTTP/2 connection) to completion, running every stream it
    /// accepts as the module docs say.
    pub(crate) async fn drive<C: Future>(&self, mut conn: Pin<&mut C>) -> C::Output {
        // What only the link's task touches, so without a lock: the policy, and the batch
        // being run (swapped with the queue, so neither allocates again once grown). A drive
        // after this one (the link's drain) starts with a fresh policy.
        let mut policy = Policy::default();
        let mut batch = Vec::new();
        std::future::poll_fn(|cx| self.poll_drive(conn.as_mut(), &mut policy, &mut batch, cx)).await
    }

    fn poll_drive<C: Future>(
        &self,
        mut conn: Pin<&mut C>,
        policy: &mut Policy,
        batch: &mut Vec<Task>,
        cx: &mut Context<'_>,
    ) -> Poll<C::Output> {
        let s = &self.shared;
        s.waker.register(cx.waker());
        s.polling.store(true, Ordering::SeqCst);
        let mut out = Poll::Pending;
        for _ in 0..ROUNDS {
            out = conn.as_mut().poll(cx);
            self.take(batch);
            if batch.is_empty() {
                break;
            }
            // Then poll the connection again: it writes what these calls answered, in one go,
            // and accepts what arrived meanwhile.
            for task in batch.drain(..) {
                run(task, policy, cx);
            }
            if out.is_ready() {
                break;
            }
        }
        s.polling.store(false, Ordering::SeqCst);
        if out.is_ready() {
            // The connection is done: whatever it still handed over finishes on the runtime.
            self.take(batch);
            for task in batch.drain(..) {
                tokio::spawn(task);
            }
        } else if !s
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
        {
            // Out of rounds, or queued just as polling stopped: come back at once.
            cx.waker().wake_by_ref();
        }
        out
    }

    /// Move the queued streams into `batch` (empty), leaving its capacity to the queue.
    fn take(&self, batch: &mut Vec<Task>) {
        std::mem::swap(
            &mut *self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            batch,
        );
    }
}

/// One accepted stream: its first poll here, the rest on the runtime if it needs one.
fn run(mut task: Task, policy: &mut Policy, cx: &mut Context<'_>) {
    if policy.inline_allowed(Instant::now) {
        // Wall time, std's clock: what the other calls on the link wait for, paused test
        // clock or not.
        let started = Instant::now();
        // The waker is the link's: a call that stays pending is spawned below and its next
        // poll registers its own task's, so at most one spurious wake of the link remains.
        let polled = catch_unwind(AssertUnwindSafe(|| task.as_mut().poll(cx)));
        let took = started.elapsed();
        policy.record(took, || started + took);
        match polled {
            Ok(Poll::Ready(())) => return,
            Ok(Poll::Pending) => {}
            // The panic hook has reported it; dropping the stream's future resets it.
            Err(_) => return,
        }
    }
    tokio::spawn(task);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow() -> Duration {
        SLOW_POLL
    }

    fn fast() -> Duration {
        Duration::from_micros(5)
    }

    #[test]
    fn seven_slow_polls_in_thirty_two_keep_calls_inline() {
        let t0 = Instant::now();
        let mut p = Policy::default();
        for i in 0..32 {
            p.record(if i % 5 == 0 { slow() } else { fast() }, || t0);
            assert!(p.inline_allowed(|| t0), "poll {i}");
        }
        // A slow poll one in five, for ever: never eight in any thirty-two.
        for i in 0..10_000 {
            p.record(if i % 5 == 0 { slow() } else { fast() }, || t0);
            assert!(p.inline_allowed(|| t0), "poll {i}");
        }
    }

    #[test]
    fn eight_slow_polls_in_thirty_two_send_calls_to_the_runtime_for_the_backoff() {
        let t0 = Instant::now();
        let mut p = Policy::default();
        for i in 0..7 {
            p.record(slow(), || t0);
            assert!(p.inline_allowed(|| t0), "poll {i}");
            for _ in 0..3 {
                p.record(fast(), || t0);
            }
        }
        p.record(slow(), || t0);
        assert!(!p.inline_allowed(|| t0));
        assert!(!p.inline_allowed(|| t0 + SLOW_BACKOFF - Duration::from_millis(1)));
        assert!(p.inline_allowed(|| t0 + SLOW_BACKOFF));
        // The history starts afresh: one slow poll does not trip it again.
        p.record(slow(), || t0 + SLOW_BACKOFF);
        assert!(p.inline_allowed(|| t0 + SLOW_BACKOFF));
    }

    #[tokio::test]
    async fn a_call_queued_from_another_task_wakes_the_link() {
        let exec = LinkExecutor::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let driver = {
            let exec = exec.clone();
            tokio::spawn(async move {
                // The "connection" never finishes: the executor alone must run the task.
                let conn = std::future::pending::<()>();
                tokio::pin!(conn);
                exec.drive(conn.as_mut()).await
            })
        };
        tokio::task::yield_now().await;
        let other = exec.clone();
        tokio::spawn(async move {
            hyper::rt::Executor::execute(&other, async move {
                let _ = done_tx.send(());
            });
        });
        tokio::time::timeout(Duration::from_secs(10), done_rx)
            .await
            .expect("the queued task ran")
            .unwrap();
        driver.abort();
    }
}
