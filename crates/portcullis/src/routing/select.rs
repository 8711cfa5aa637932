//! Instance selection (docs/design.md §4): health filter, region tiers, then the power of two choices
//! on in-flight calls weighted by latency.
//!
//! Weighting by `(in_flight + 1) × rtt` rather than picking the lowest ping keeps a fast
//! instance from taking every call: as its queue grows its cost rises past a slower idle one.

use rand::Rng;
use std::sync::Arc;

use super::instance::{Instance, LinkState};

/// The gateway's own region and its neighbours, in preference order.
#[derive(Debug, Clone, Default)]
pub struct Tiers {
    /// Region of this gateway.
    pub own: Option<String>,
    /// Neighbour regions, preferred in order after the own region.
    pub neighbours: Vec<String>,
}

impl Tiers {
    fn tier(&self, region: Option<&str>) -> usize {
        let Some(r) = region else {
            return self.neighbours.len() + 1;
        };
        if self.own.as_deref() == Some(r) {
            return 0;
        }
        self.neighbours
            .iter()
            .position(|n| n == r)
            .map(|p| p + 1)
            .unwrap_or(self.neighbours.len() + 1)
    }
}

/// Round trips below this are treated as equal. On a LAN or loopback, PING times differ by
/// tens of microseconds from scheduling noise alone; weighting by that noise can starve an
/// instance (a 10× "slower" idle instance loses to one with 9 calls in flight). Above the
/// floor, real distance and queueing on the link still count.
pub const RTT_FLOOR_US: u64 = 1_000;

/// Among the links of the chosen instance, one on the caller's worker is taken instead of the
/// chosen link while its cost is at most this many times the chosen one's: the call then stays
/// on one thread (no cross-thread wake-ups, no contention for the link's stream table). Strong
/// enough that a service with a link on every worker is served locally under even load, weak
/// enough that a local link with twice the calls in flight spills over. Distinct instances are
/// balanced on load alone.
pub const REMOTE_WORKER_FACTOR: u128 = 2;

fn cost(i: &Instance) -> u128 {
    u128::from(i.in_flight() + 1) * u128::from(i.rtt_us().max(RTT_FLOOR_US))
}

/// Pick an instance from `candidates`, skipping any in `exclude` (instances that just refused a
/// stream). `None` when no instance is eligible. Links on the calling thread's worker are
/// preferred (see [`REMOTE_WORKER_FACTOR`]).
pub fn select(
    candidates: &[Arc<Instance>],
    tiers: &Tiers,
    exclude: &[Arc<Instance>],
) -> Option<Arc<Instance>> {
    select_from(candidates, tiers, exclude, crate::dataplane::current())
}

/// [`select`] for a caller on worker `here`.
fn select_from(
    candidates: &[Arc<Instance>],
    tiers: &Tiers,
    exclude: &[Arc<Instance>],
    here: Option<usize>,
) -> Option<Arc<Instance>> {
    let eligible = |want: LinkState| {
        candidates
            .iter()
            .filter(move |i| i.state() == want && !exclude.iter().any(|e| Arc::ptr_eq(e, i)))
    };
    let mut pool: Vec<&Arc<Instance>> = eligible(LinkState::Online).collect();
    if pool.is_empty() {
        pool = eligible(LinkState::Unstable).collect();
    }
    if pool.is_empty() {
        return None;
    }
    let best_tier = pool
        .iter()
        .map(|i| tiers.tier(i.region.as_deref()))
        .min()
        .unwrap_or(0);
    pool.retain(|i| tiers.tier(i.region.as_deref()) == best_tier);
    match pool.len() {
        0 => None,
        1 => Some(pool[0].clone()),
        n => {
            let mut rng = rand::thread_rng();
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (x, y) = (pool[a], pool[b]);
            let chosen = if cost(y) < cost(x) { y } else { x };
            Some(local_link(&pool, chosen, here).unwrap_or(chosen).clone())
        }
    }
}

/// A link of `chosen`'s instance on worker `here`, if `chosen` is elsewhere and the local
/// link is not more than [`REMOTE_WORKER_FACTOR`] times as busy.
fn local_link<'a>(
    pool: &[&'a Arc<Instance>],
    chosen: &'a Arc<Instance>,
    here: Option<usize>,
) -> Option<&'a Arc<Instance>> {
    let here = here?;
    if chosen.worker == Some(here) {
        return None;
    }
    pool.iter()
        .copied()
        .filter(|i| i.worker == Some(here) && i.group == chosen.group)
        .min_by_key(|i| cost(i))
        .filter(|i| cost(i) <= cost(chosen) * REMOTE_WORKER_FACTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn instance(id: &str) -> Arc<Instance> {
        on_worker(id, None).await
    }

    async fn on_worker(id: &str, worker: Option<usize>) -> Arc<Instance> {
        let (io, _peer) = tokio::io::duplex(64 * 1024);
        let (sender, _conn) = h2::client::handshake(io).await.expect("h2 handshake");
        let mut i = Instance::new("svc".into(), id.into(), id.into(), None, "1".into(), sender);
        i.worker = worker;
        Arc::new(i)
    }

    #[test]
    fn extra_links_share_their_instance_group() {
        assert_eq!(super::super::instance::link_group("echo-1"), "echo-1");
        assert_eq!(super::super::instance::link_group("echo-1.3"), "echo-1");
        assert_eq!(super::super::instance::link_group("v1.2.10"), "v1.2");
        assert_eq!(super::super::instance::link_group("echo.x"), "echo.x");
        assert_eq!(super::super::instance::link_group(".1"), ".1");
    }

    #[tokio::test]
    async fn an_instances_link_on_the_callers_worker_wins_until_it_is_twice_as_busy() {
        // One service process with a link on each worker.
        let (w0, w1) = (
            on_worker("p", Some(0)).await,
            on_worker("p.1", Some(1)).await,
        );
        let pool = [w0.clone(), w1.clone()];
        let pick = |here| select_from(&pool, &Tiers::default(), &[], Some(here)).expect("one");
        // Equal load: each worker's calls stay on its own link.
        for _ in 0..16 {
            assert!(Arc::ptr_eq(&pick(0), &w0));
            assert!(Arc::ptr_eq(&pick(1), &w1));
        }
        // The local link holds 2 calls, the remote none: 3 against 2 × 1, spill over.
        let _calls: Vec<_> = (0..2).map(|_| w0.begin_call()).collect();
        assert!(Arc::ptr_eq(&pick(0), &w1), "a busy local link spills over");
        // Outside the data plane (tests, tools) load alone decides.
        let none = select_from(&pool, &Tiers::default(), &[], None).expect("one");
        assert!(Arc::ptr_eq(&none, &w1), "the idle link wins on load alone");
    }

    #[tokio::test]
    async fn distinct_instances_are_balanced_wherever_their_links_are() {
        let (a, b) = (on_worker("a", Some(0)).await, on_worker("b", Some(1)).await);
        let pool = [a.clone(), b.clone()];
        let mut on_a = 0;
        for _ in 0..200 {
            let chosen = select_from(&pool, &Tiers::default(), &[], Some(0)).expect("one");
            on_a += usize::from(Arc::ptr_eq(&chosen, &a));
        }
        assert!(
            (40..=160).contains(&on_a),
            "no locality between instances: a={on_a}/200"
        );
    }

    #[tokio::test]
    async fn with_more_instances_the_chosen_one_is_served_by_its_local_link() {
        let mut pool = Vec::new();
        for id in ["a", "b", "c"] {
            pool.push(on_worker(id, Some(0)).await);
            pool.push(on_worker(&format!("{id}.1"), Some(1)).await);
        }
        let mut groups = std::collections::HashSet::new();
        for _ in 0..100 {
            let chosen = select_from(&pool, &Tiers::default(), &[], Some(1)).expect("one");
            assert_eq!(chosen.worker, Some(1), "{}", chosen.instance_id);
            groups.insert(chosen.group.clone());
        }
        assert_eq!(groups.len(), 3, "every instance still gets calls");
    }

    #[tokio::test]
    async fn loopback_rtt_noise_does_not_outweigh_calls_in_flight() {
        let (fast, slow) = (instance("fast").await, instance("slow").await);
        for _ in 0..32 {
            fast.observe_rtt(40);
            slow.observe_rtt(900);
        }
        let _calls: Vec<_> = (0..3).map(|_| fast.begin_call()).collect();
        let pool = [fast.clone(), slow.clone()];
        for _ in 0..16 {
            let chosen = select(&pool, &Tiers::default(), &[]).expect("an instance");
            assert!(Arc::ptr_eq(&chosen, &slow), "the idle instance must win");
        }
    }

    #[tokio::test]
    async fn distance_above_the_floor_still_counts() {
        let (near, far) = (instance("near").await, instance("far").await);
        for _ in 0..32 {
            near.observe_rtt(2_000);
            far.observe_rtt(40_000);
        }
        let _calls: Vec<_> = (0..3).map(|_| near.begin_call()).collect();
        let pool = [near.clone(), far.clone()];
        let chosen = select(&pool, &Tiers::default(), &[]).expect("an instance");
        assert!(Arc::ptr_eq(&chosen, &near));
    }
}
