//! Login throttling: failures are counted per account (workspace, username) and per source
//! address; past `auth.login_max_failures` (per address: `auth.login_max_failures_per_ip`)
//! within `auth.login_failure_window`, the account or address is locked for
//! `auth.login_lockout`. A locked login is refused with the same fixed 401 *before* any
//! password work or store query: guessing costs the attacker, not the gateway or the store.
//!
//! Accounts are tracked whether or not they exist, so a lockout tells nothing about which
//! usernames are real.
//!
//! **Bounded.** The table holds at most `auth.login_throttle_capacity` entries. When it is
//! full, expired entries go first; then, in one pass, the tenth of the unlocked entries with
//! the fewest failures (so one flood of new keys costs an amortised constant per insert). A
//! locked entry is never evicted, and an entry close to its lockout is the last to go, so an
//! attacker cannot reset its own counter by flooding the table with cheap new keys: each key
//! that outranks it needs as many failed logins of its own. When the table is full of locked
//! entries a new key cannot be tracked and its login is refused (fail closed).
//!
//! The per-account counter is also kept in the store ([`ThrottleStore`], table
//! `login_throttle`) so several gateway nodes share it; the per-address counter stays local.
//! Durations here use tokio's clock; the shared counter uses the injected wall clock.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use crate::store::StoreError;

/// What is throttled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// An account: workspace name and username (lowercased).
    Account(String, String),
    /// A source address.
    Ip(IpAddr),
}

impl ThrottleKey {
    /// The account key of `workspace`/`username`.
    pub fn account(workspace: &str, username: &str) -> Self {
        Self::Account(
            workspace.to_ascii_lowercase(),
            username.to_ascii_lowercase(),
        )
    }

    /// The store key of an account: `<workspace>/<username>`.
    pub fn store_key(&self) -> Option<String> {
        match self {
            Self::Account(w, u) => Some(format!("{w}/{u}")),
            Self::Ip(_) => None,
        }
    }
}

/// Throttle settings (from `[auth]`).
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Failures per account in a window before a lockout.
    pub max_failures: u32,
    /// Failures per source address in a window before a lockout.
    pub max_failures_per_ip: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// Most entries held.
    pub capacity: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            max_failures: 5,
            max_failures_per_ip: 50,
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(15 * 60),
            capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

impl Entry {
    fn locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|t| now < t)
    }

    /// Nothing left to remember at `now`: not locked and its window is over.
    fn expired(&self, now: Instant, window: Duration) -> bool {
        !self.locked(now) && now.saturating_duration_since(self.window_start) >= window
    }
}

/// Why a login may not be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The account or the address is locked.
    Locked,
    /// The table is full of locked entries: this key cannot be tracked (fail closed).
    Full,
}

/// The in-memory throttle table. See the module documentation.
#[derive(Debug)]
pub struct LoginThrottle {
    settings: ThrottleSettings,
    entries: Mutex<HashMap<ThrottleKey, Entry>>,
}

impl LoginThrottle {
    /// An empty table.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ThrottleSettings {
        &self.settings
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Is the table empty?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// May a login for these keys be tried now? Does not count anything.
    pub fn check(&self, keys: &[&ThrottleKey]) -> Result<(), Refused> {
        let now = Instant::now();
        let Ok(entries) = self.entries.lock() else {
            return Err(Refused::Full);
        };
        if keys
            .iter()
            .any(|k| entries.get(*k).is_some_and(|e| e.locked(now)))
        {
            return Err(Refused::Locked);
        }
        Ok(())
    }

    /// Lock `key` now, for the lockout (the shared counter said so).
    pub fn lock(&self, key: &ThrottleKey) {
        let now = Instant::now();
        if let Ok(mut entries) = self.entries.lock() {
            let lockout = self.settings.lockout;
            let max = self.limit(key);
            if let Some(e) = entries.get_mut(key) {
                e.locked_until = Some(now + lockout);
                e.failures = e.failures.max(max);
                return;
            }
            if self.make_room(&mut entries, now) {
                entries.insert(
                    key.clone(),
                    Entry {
                        failures: max,
                        window_start: now,
                        locked_until: Some(now + lockout),
                    },
                );
            }
        }
    }

    fn limit(&self, key: &ThrottleKey) -> u32 {
        match key {
            ThrottleKey::Account(..) => self.settings.max_failures,
            ThrottleKey::Ip(_) => self.settings.max_failures_per_ip,
        }
    }

    /// Count a failed login for `key`; returns whether it is now locked. A key that cannot be
    /// tracked (table full of locked entries) counts as locked.
    pub fn failed(&self, key: &ThrottleKey) -> bool {
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            return true;
        };
        let s = self.settings;
        let max = self.limit(key);
        if !entries.contains_key(key) && !self.make_room(&mut entries, now) {
            return true;
        }
        let e = entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            window_start: now,
            locked_until: None,
        });
        if e.locked_until.is_some_and(|t| now >= t) {
            // A lockout ended: start afresh.
            *e = Entry {
                failures: 0,
                window_start: now,
                locked_until: None,
            };
        } else if !e.locked(now) && now.saturating_duration_since(e.window_start) >= s.window {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures >= max && !e.locked(now) {
            e.locked_until = Some(now + s.lockout);
        }
        e.locked(now)
    }

    /// A successful login: forget the account's failures (the address keeps its count, so
    /// one good password does not reset a spray across accounts).
    pub fn succeeded(&self, account: &ThrottleKey) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries
                .get(account)
                .is_some_and(|e| !e.locked(Instant::now()))
            {
                entries.remove(account);
            }
        }
    }

    /// Make room for one entry; false when every entry is locked.
    fn make_room(&self, entries: &mut HashMap<ThrottleKey, Entry>, now: Instant) -> bool {
        let cap = self.settings.capacity.max(1);
        if entries.len() < cap {
            return true;
        }
        let window = self.settings.window;
        entries.retain(|_, e| !e.expired(now, window));
        if entries.len() < cap {
            return true;
        }
        // The tenth of the unlocked entries with the fewest failures.
        let mut unlocked: Vec<(u32, ThrottleKey)> = entries
            .iter()
            .filter(|(_, e)| !e.locked(now))
            .map(|(k, e)| (e.failures, k.clone()))
            .collect();
        if unlocked.is_empty() {
            tracing::warn!(
                capacity = cap,
                "login throttle table full of locked entries: refusing untracked logins"
            );
            return false;
        }
        let n = (cap / 10).clamp(1, unlocked.len());
        unlocked.select_nth_unstable_by_key(n - 1, |(f, _)| *f);
        for (_, k) in unlocked.into_iter().take(n) {
            entries.remove(&k);
        }
        true
    }
}

/// The shared per-account counter, as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedThrottle {
    /// Failures in the current window.
    pub failures: u32,
    /// Locked until (Unix ms), if locked.
    pub locked_until: Option<i64>,
}

/// A boxed future of the store.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where the per-account counter is shared between gateway nodes (the store's
/// `login_throttle` table). Keys are [`ThrottleKey::store_key`]; times are Unix ms.
pub trait ThrottleStore: Send + Sync + 'static {
    /// The state of `key` at `now`, `None` when nothing is recorded.
    fn throttle_state<'a>(
        &'a self,
        key: &'a str,
        now: i64,
    ) -> StoreFuture<'a, Option<SharedThrottle>>;

    /// Count one failure of `key` at `now` in a window of `window_ms`, locking it for
    /// `lockout_ms` when the count reaches `max_failures`; returns the new state.
    fn throttle_failure<'a>(
        &'a self,
        key: &'a str,
        now: i64,
        window_ms: i64,
        max_failures: u32,
        lockout_ms: i64,
    ) -> StoreFuture<'a, SharedThrottle>;

    /// Forget `key` (a successful login).
    fn throttle_clear<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(capacity: usize) -> ThrottleSettings {
        ThrottleSettings {
            max_failures: 3,
            max_failures_per_ip: 10,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            capacity,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_locks_after_n_failures_and_unlocks_after_the_lockout() {
        let t = LoginThrottle::new(settings(100));
        let a = ThrottleKey::account("default", "Alice");
        assert_eq!(a, ThrottleKey::account("DEFAULT", "alice"));
        assert!(!t.failed(&a) && !t.failed(&a));
        assert!(t.check(&[&a]).is_ok());
        assert!(t.failed(&a), "third failure locks");
        assert_eq!(t.check(&[&a]), Err(Refused::Locked));
        // A success during the lockout does not unlock.
        t.succeeded(&a);
        assert_eq!(t.check(&[&a]), Err(Refused::Locked));
        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(t.check(&[&a]).is_ok());
        assert!(!t.failed(&a), "the count starts again after a lockout");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_add_up() {
        let t = LoginThrottle::new(settings(100));
        let a = ThrottleKey::account("w", "u");
        t.failed(&a);
        t.failed(&a);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!t.failed(&a));
        assert!(!t.failed(&a));
        assert!(t.failed(&a));
    }

    #[tokio::test(start_paused = true)]
    async fn flooding_the_table_evicts_fresh_keys_not_locked_or_nearly_locked_ones() {
        let t = LoginThrottle::new(settings(20));
        let victim = ThrottleKey::account("w", "victim");
        let near = ThrottleKey::account("w", "near");
        for _ in 0..3 {
            t.failed(&victim);
        }
        t.failed(&near);
        t.failed(&near);
        for i in 0..1000 {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            t.failed(&ThrottleKey::Ip(ip));
        }
        assert!(t.len() <= 20);
        assert_eq!(t.check(&[&victim]), Err(Refused::Locked), "still locked");
        assert!(
            t.failed(&near),
            "its two failures were kept: the third locks"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_full_of_locked_entries_refuses_new_keys() {
        let t = LoginThrottle::new(settings(2));
        for u in ["a", "b"] {
            let k = ThrottleKey::account("w", u);
            for _ in 0..3 {
                t.failed(&k);
            }
        }
        let c = ThrottleKey::account("w", "c");
        assert!(t.failed(&c), "cannot be tracked: counts as locked");
        assert_eq!(t.len(), 2);
    }
}
