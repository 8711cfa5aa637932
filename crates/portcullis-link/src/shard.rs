//! Pieces of the per-thread caches both ends of a link keep (the gateway's assertion signer,
//! the SDK's assertion verifier): a map keyed by values that are already keyed hashes, and a
//! stable small index per thread to pick a shard with, so a hit takes an uncontended lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A hasher for keys that are already keyed hashes (SipHash with a per-process key): it passes
/// the `u64` through instead of hashing it again.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in so the hasher stays correct.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map from pre-hashed `u64` keys.
pub type PreHashedMap<V> = HashMap<u64, V, BuildHasherDefault<PreHashed>>;

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// This thread's index, given the first time it asks: threads are numbered one after another,
/// so `thread_index() % shards` gives each of a runtime's threads a shard of its own.
pub fn thread_index() -> usize {
    THREAD_INDEX.with(|i| *i)
}
