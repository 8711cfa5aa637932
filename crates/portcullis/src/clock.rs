//! The wall clock, injected.
//!
//! Two clocks run in the gateway and they are kept apart on purpose:
//!
//! - **Durations** (cache lifetimes, idle and park timers, deadlines) use tokio's clock,
//!   `tokio::time::Instant`, so `#[tokio::test(start_paused = true)]` drives them without
//!   waiting.
//! - **Dates** stored in the database (a key's `expires_at`, a secret's `not_after`) are Unix
//!   milliseconds and are compared with [`Clock::now_ms`]. The gateway uses
//!   [`Clock::system`]; a test holds a [`ManualClock`] and moves it past an expiry instead of
//!   sleeping until it.
//!
//! A `Clock` is a small value (a branch on the hot path, no virtual call) and cheap to clone.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A wall clock in Unix milliseconds: the system's, or a [`ManualClock`]'s.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clock.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock ([`crate::store::now_ms`]).
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// Now, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            None => crate::store::now_ms(),
            Some(t) => t.load(Ordering::Acquire),
        }
    }

    /// Is this the system clock?
    pub fn is_system(&self) -> bool {
        self.manual.is_none()
    }
}

/// A clock that moves only when told to, for tests. Hand [`ManualClock::clock`] to what is
/// tested and keep this to move it.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `start_ms` (Unix milliseconds).
    pub fn new(start_ms: i64) -> Self {
        Self(Arc::new(AtomicI64::new(start_ms)))
    }

    /// A clock reading the system time now.
    pub fn starting_now() -> Self {
        Self::new(crate::store::now_ms())
    }

    /// The [`Clock`] that reads this one.
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.0.clone()),
        }
    }

    /// Now, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// Move forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(ms))
            });
    }

    /// Set to `ms` (Unix milliseconds).
    pub fn set_ms(&self, ms: i64) {
        self.0.store(ms, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let m = ManualClock::new(1_000);
        let c = m.clock();
        assert!(!c.is_system());
        assert_eq!(c.now_ms(), 1_000);
        m.advance(Duration::from_secs(2));
        assert_eq!(c.now_ms(), 3_000);
        m.set_ms(10);
        assert_eq!(c.clone().now_ms(), 10);
        assert!(Clock::system().is_system());
        assert!(Clock::default().now_ms() > 1_600_000_000_000);
    }
}
