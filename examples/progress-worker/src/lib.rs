//! The session-worker example: a worker whose backend is a long computation (counting primes
//! below a limit) that streams progress events while it runs and stops when the command is
//! cancelled. Each session has its own process, so one client's computation never shares
//! state, memory or a crash with another's.
//!
//! Commands:
//!
//! | kind | capability | payload | reply |
//! |---|---|---|---|
//! | `primes` | `compute.run` | `{"below": N, "steps": S}` (N ≤ 100,000,000, S ≤ 1,000) | `{"below": N, "primes": count}`; one `progress` event per step |
//! | `status` | `compute.read` | none | `{"runs": finished runs, "last": last count}` |
//!
//! A payload that is not what the kind requires gets status 400; a cancelled run, status 499.

use portcullis_sdk::worker::{Command, Reply, Worker};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Largest `below` a run accepts.
pub const MAX_BELOW: u64 = 100_000_000;
/// Most progress steps of a run.
pub const MAX_STEPS: u64 = 1_000;

#[derive(Default)]
struct State {
    runs: AtomicU64,
    last: AtomicU64,
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

async fn primes(mut c: Command, state: Arc<State>) -> Reply {
    let below = c.payload.get("below").and_then(|v| v.as_u64());
    let steps = c
        .payload
        .get("steps")
        .and_then(|v| v.as_u64())
        .unwrap_or(10);
    let Some(below) = below.filter(|b| *b <= MAX_BELOW) else {
        return Reply::error(
            400,
            format!("kind primes requires payload {{\"below\": 0..={MAX_BELOW}, \"steps\": 1..={MAX_STEPS}}}"),
        );
    };
    if steps == 0 || steps > MAX_STEPS {
        return Reply::error(400, format!("steps must be 1..={MAX_STEPS}"));
    }
    let chunk = below.div_ceil(steps).max(1);
    let mut count = 0u64;
    let mut start = 0u64;
    for step in 1..=steps {
        let end = (start + chunk).min(below);
        let (lo, hi) = (start, end);
        // The arithmetic runs off the runtime's thread so heartbeats keep flowing.
        let found = tokio::task::spawn_blocking(move || (lo..hi).filter(|n| is_prime(*n)).count())
            .await
            .unwrap_or(0) as u64;
        count += found;
        start = end;
        if c.is_cancelled() {
            return Reply::error(499, "cancelled");
        }
        let sent = c
            .events
            .send(
                "progress",
                json!({ "step": step, "of": steps, "checked": end, "primes": count }),
            )
            .await;
        if sent.is_err() {
            return Reply::error(499, "session ended");
        }
        if end >= below {
            break;
        }
    }
    tokio::select! {
        biased;
        _ = c.cancelled() => return Reply::error(499, "cancelled"),
        _ = std::future::ready(()) => {}
    }
    state.runs.fetch_add(1, Ordering::Relaxed);
    state.last.store(count, Ordering::Relaxed);
    Reply::ok(json!({ "below": below, "primes": count }))
}

/// The worker: its commands, ready for `main()` or `main_with(args)`.
pub fn worker() -> Worker {
    let state = Arc::new(State::default());
    let s = state.clone();
    Worker::new()
        .command("primes", "compute.run", move |c| primes(c, s.clone()))
        .command("status", "compute.read", move |_c| {
            let state = state.clone();
            async move {
                Reply::ok(json!({
                    "runs": state.runs.load(Ordering::Relaxed),
                    "last": state.last.load(Ordering::Relaxed),
                }))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes_are_counted() {
        assert_eq!((0..100).filter(|n| is_prime(*n)).count(), 25);
    }
}
