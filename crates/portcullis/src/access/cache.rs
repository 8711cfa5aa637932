//! The decision cache: bounded, time-limited, dropped wholesale on change.
//!
//! A map from a key of `N` strings — (subject, workspace, capability) for decisions, (subject)
//! for role bindings — to a value, with these properties:
//!
//! - **A hit allocates nothing and blocks no one.** The key is hashed in place (SipHash with
//!   a per-process random key, so which entries share a slot cannot be chosen by a caller) and
//!   looked up in one of 16 shards under a read lock; the stored key is compared part by part.
//!   Readers of a shard never wait for each other, and a writer holds one shard only for an
//!   insert.
//! - **Bounded.** Each shard holds at most its share of the capacity; a full shard first drops
//!   what is expired or stale, then an arbitrary entry (the map's order is randomised per
//!   process, so a caller cannot choose which).
//! - **Time-limited.** An entry older than the TTL is a miss (tokio's clock, so paused-time
//!   tests drive it).
//! - **Invalidated wholesale by an epoch.** Each entry records the epoch it was computed
//!   under, read *before* the lookup that produced it; it is served only while the epoch has
//!   not moved. Moving the epoch (`super::Access::invalidate`, a store change seen by the
//!   generation poll) therefore drops every entry at once — including one whose computation
//!   was in flight during the change — without touching the map.
//!
//! Callers never insert an answer caused by an error (`super::Access`).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

const SHARDS: usize = 16;

/// A hasher for keys that are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in rather than lose it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Entry<const N: usize, V> {
    key: [Arc<str>; N],
    value: V,
    at: Instant,
    epoch: u64,
}

type Shard<const N: usize, V> = HashMap<u64, Entry<N, V>, BuildHasherDefault<Prehashed>>;

/// A bounded, time-limited cache keyed by `N` strings (see the module documentation).
pub struct Cache<const N: usize, V> {
    shards: Box<[RwLock<Shard<N, V>>]>,
    per_shard: usize,
    ttl: Duration,
    hasher: RandomState,
}

impl<const N: usize, V> std::fmt::Debug for Cache<N, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("capacity", &(self.per_shard * self.shards.len()))
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<const N: usize, V: Clone> Cache<N, V> {
    /// A cache of at most `capacity` entries (at least one), each living at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = capacity.max(1);
        let shards = SHARDS.min(capacity);
        Self {
            shards: (0..shards).map(|_| RwLock::new(Shard::default())).collect(),
            per_shard: capacity / shards,
            ttl,
            hasher: RandomState::new(),
        }
    }

    fn hash(&self, key: &[&str; N]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for part in key {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            h.write_usize(part.len());
            h.write(part.as_bytes());
        }
        h.finish()
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard<N, V>> {
        // The map inside a shard uses the low bits (slot) and the top seven (tag): pick the
        // shard from bits in between.
        &self.shards[(hash >> 40) as usize % self.shards.len()]
    }

    /// The value cached for `key` under `epoch`, if it is still fresh.
    pub fn get(&self, key: [&str; N], epoch: u64) -> Option<V> {
        let hash = self.hash(&key);
        let shard = self.shard(hash).read().ok()?;
        let e = shard.get(&hash)?;
        let fresh = e.epoch == epoch
            && Instant::now().saturating_duration_since(e.at) < self.ttl
            && e.key.iter().zip(key).all(|(a, b)| **a == *b);
        fresh.then(|| e.value.clone())
    }

    /// Cache `value` for `key`, computed under `epoch` (read before the lookup that produced
    /// it).
    pub fn insert(&self, key: [&str; N], value: V, epoch: u64) {
        let hash = self.hash(&key);
        let Ok(mut shard) = self.shard(hash).write() else {
            return;
        };
        let now = Instant::now();
        if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
            let ttl = self.ttl;
            shard.retain(|_, e| e.epoch == epoch && now.saturating_duration_since(e.at) < ttl);
            if shard.len() >= self.per_shard {
                if let Some(&victim) = shard.keys().next() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(
            hash,
            Entry {
                key: key.map(Arc::from),
                value,
                at: now,
                epoch,
            },
        );
    }

    /// Entries held, fresh or not.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|s| s.len()).unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn hits_until_the_ttl_or_the_epoch_moves() {
        let c: Cache<3, u8> = Cache::new(100, Duration::from_secs(10));
        c.insert(["user:u", "ws_1", "orders.read"], 1, 7);
        assert_eq!(c.get(["user:u", "ws_1", "orders.read"], 7), Some(1));
        assert_eq!(c.get(["user:u", "ws_1", "orders.write"], 7), None);
        assert_eq!(c.get(["user:u", "ws_2", "orders.read"], 7), None);
        assert_eq!(
            c.get(["user:u", "ws_1", "orders.read"], 8),
            None,
            "epoch moved"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(c.get(["user:u", "ws_1", "orders.read"], 7), None, "expired");
    }

    #[test]
    fn parts_do_not_run_into_each_other() {
        let c: Cache<2, u8> = Cache::new(100, Duration::from_secs(10));
        c.insert(["ab", "c"], 1, 0);
        assert_eq!(c.get(["a", "bc"], 0), None);
    }

    #[test]
    fn stays_within_its_capacity() {
        for capacity in [1, 2, 15, 16, 100] {
            let c: Cache<1, usize> = Cache::new(capacity, Duration::from_secs(10));
            for i in 0..1000 {
                c.insert([&i.to_string()], i, 0);
            }
            assert!(c.len() <= capacity, "{capacity}: {}", c.len());
            // The last insert is always there.
            assert_eq!(c.get(["999"], 0), Some(999));
        }
    }

    #[test]
    fn a_full_shard_drops_stale_entries_first() {
        let c: Cache<1, u8> = Cache::new(1, Duration::from_secs(10));
        c.insert(["a"], 1, 0);
        c.insert(["b"], 2, 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(["b"], 1), Some(2));
    }
}
