//! Who may hold one of the link port's handshake slots.
//!
//! A handshake in progress costs a task and a socket, so the link port admits a bounded number
//! at once. Anyone can open a TCP connection, so the bound must not let unauthenticated peers
//! lock services out of relinking. Three rules:
//!
//! - a connection has `link.hello_timeout` (a few seconds) to deliver a complete HELLO,
//!   separately from the whole handshake's `link.handshake_timeout`;
//! - one source address holds at most `link.max_pending_handshakes_per_ip` slots;
//! - at either cap the newcomer is admitted and the *oldest connection that has not yet
//!   delivered a complete HELLO* is closed instead (attackers and services can share an
//!   address, so refusing by address alone would lock the service out too). A connection
//!   that delivered its HELLO is never evicted; only when every slot holds one is a newcomer
//!   refused.
//!
//! A silent connection therefore holds a slot for at most `hello_timeout`, and only until
//! enough newer connections arrive, while a service's HELLO, sent the moment the CHALLENGE
//! arrives, makes its connection immune.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The handshake slots of one link listener.
#[derive(Debug)]
pub struct Admission {
    state: Mutex<State>,
    max_total: usize,
    max_per_ip: usize,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Admission order → entry: the first key is the oldest.
    pending: BTreeMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    evict: CancellationToken,
    hello: bool,
}

impl State {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.pending.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&e.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&e.ip);
            }
        }
        Some(e)
    }

    /// Evict the oldest entry without a HELLO (from `ip`, if given); false if there is none.
    fn evict_oldest(&mut self, ip: Option<IpAddr>) -> bool {
        let victim = self
            .pending
            .iter()
            .find(|(_, e)| !e.hello && ip.is_none_or(|ip| e.ip == ip))
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.remove(id)) {
            Some(e) => {
                e.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// One admitted connection's slot, released when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    id: u64,
    evict: CancellationToken,
}

impl Slot {
    /// The connection delivered a complete HELLO: it can no longer be evicted.
    pub fn hello_received(&self) {
        if let Some(e) = self.admission.lock().pending.get_mut(&self.id) {
            e.hello = true;
        }
    }

    /// Resolves when the slot was taken for a newer connection.
    pub async fn evicted(&self) {
        self.evict.cancelled().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.lock().remove(self.id);
    }
}

impl Admission {
    /// Slots for at most `max_total` handshakes, `max_per_ip` from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every mutation is a few inserts and removes that leave the maps consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `ip`, making room as the module docs say; `None` when
    /// every slot in the way holds a connection that already delivered its HELLO.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut st = self.lock();
        if st.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip && !st.evict_oldest(Some(ip))
        {
            return None;
        }
        if st.pending.len() >= self.max_total && !st.evict_oldest(None) {
            return None;
        }
        let id = st.next;
        st.next += 1;
        let evict = CancellationToken::new();
        st.pending.insert(
            id,
            Entry {
                ip,
                evict: evict.clone(),
                hello: false,
            },
        );
        *st.per_ip.entry(ip).or_insert(0) += 1;
        drop(st);
        Some(Slot {
            admission: self.clone(),
            id,
            evict,
        })
    }

    /// Handshakes in progress.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn at_the_cap_the_oldest_connection_without_hello_makes_room() {
        let adm = Admission::new(3, 10);
        let first = adm.admit(A).unwrap();
        let second = adm.admit(A).unwrap();
        let third = adm.admit(B).unwrap();
        first.hello_received();
        // Full: the oldest without HELLO (`second`) is evicted, `first` is immune.
        let fourth = adm.admit(B).unwrap();
        assert!(!first.evict.is_cancelled());
        assert!(second.evict.is_cancelled());
        assert!(!third.evict.is_cancelled());
        assert_eq!(adm.pending(), 3);
        drop(second); // its removal is already done; dropping it frees nothing twice
        assert_eq!(adm.pending(), 3);
        third.hello_received();
        fourth.hello_received();
        // Every slot holds a HELLO: a newcomer is refused.
        assert!(adm.admit(A).is_none());
        drop(fourth);
        assert!(adm.admit(A).is_some());
    }

    #[test]
    fn one_address_evicts_its_own_oldest_at_its_cap() {
        let adm = Admission::new(10, 2);
        let b = adm.admit(B).unwrap();
        let a1 = adm.admit(A).unwrap();
        let _a2 = adm.admit(A).unwrap();
        let _a3 = adm.admit(A).unwrap();
        assert!(a1.evict.is_cancelled());
        assert!(!b.evict.is_cancelled());
        assert_eq!(adm.pending(), 3);
    }
}
