//! One shipper per key: which replica of a region sends a key's changes to other regions, and
//! how the others make sure nothing they hold is left behind when it could not.
//!
//! Every home replica of a key logs the key's client writes (`Entry::ship`). A node tails its
//! log twice per destination region, each tail with its own durable cursor:
//!
//! - **The primary stream** ships, at once, only the keys whose [`shipper`] it is (the first
//!   of the key's home replicas that is up); it skips the others, and its cursor moves past
//!   them. One delta per write and destination instead of one per replica.
//! - **The takeover stream** looks at every shipped entry again once it is [`settled`] (older
//!   than a grace period, long enough for the shipper to have delivered it). For each key it
//!   asks the key's shipper now (itself included) whether the destination acknowledged this
//!   very state from it ([`Acked`], compared by digest, [`covered`]). Keys that are covered
//!   are done; every other key (the shipper was down, wiped, missed the write, moved on to a
//!   newer state, or did not answer) is shipped by this stream from this node.
//!
//! So a state a replica holds reaches the destination either from the shipper (which said so
//! after the destination's acknowledgement, that is once applied at QUORUM there) or from the
//! replica itself: an acknowledged write survives the death of any replica, its coordinator
//! and its shipper included. A wrong or missing answer can only cause a duplicate delta, which
//! the destination merges harmlessly.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use geokv_core::NodeId;

/// The two tails of a node's change log toward one destination region, each with its own
/// durable cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tail {
    /// Ships at once the keys this node is the shipper of.
    Primary,
    /// Checks every shipped change once settled, and ships what its shipper did not deliver.
    Takeover,
}

impl Tail {
    pub const BOTH: [Tail; 2] = [Tail::Primary, Tail::Takeover];

    /// The name of the tail's cursor toward `region` (the primary tail's is the name every
    /// replica's only tail had before, so an upgraded node goes on where it was).
    pub fn cursor_name(self, region: &str) -> String {
        match self {
            Tail::Primary => format!("replication/{region}"),
            Tail::Takeover => format!("replication-takeover/{region}"),
        }
    }
}

/// The node that ships a key's changes at once: the first of its home replicas (in ring order)
/// that is up, by this node's view of its region.
pub fn shipper(home: &[NodeId], up: impl Fn(NodeId) -> bool) -> Option<NodeId> {
    home.iter().copied().find(|&n| up(n))
}

/// How many of the takeover stream's next entries (their stamps' wall-clock times, in log
/// order) are old enough to look at now: the prefix up to the first entry younger than
/// `grace_ms`. The stream never skips ahead of an entry it may not settle yet.
pub fn settled(stamps_ms: impl IntoIterator<Item = u64>, now_ms: u64, grace_ms: u64) -> usize {
    stamps_ms.into_iter().take_while(|&t| t.saturating_add(grace_ms) <= now_ms).count()
}

/// How long the takeover tail waits before it looks at an entry: the configured grace, or
/// twice the round trip of the last batch to the destination (send to acknowledgement) if
/// that is longer, so a loaded or slow link does not turn every check into a duplicate; never
/// more than `max_ms` (unless configured so).
pub fn grace_ms(configured_ms: u64, round_trip_ms: u64, max_ms: u64) -> u64 {
    configured_ms.max(round_trip_ms.saturating_mul(2).min(max_ms))
}

/// Whether a replica's state of a key (`mine`) is known to be at the destination: the
/// shipper's latest acknowledged delta of the key carried exactly this state.
pub fn covered<D: Eq>(acked: Option<&D>, mine: &D) -> bool {
    acked == Some(mine)
}

/// The digest of the latest state of each key a destination acknowledged from this node,
/// bounded: past `capacity` keys the oldest are forgotten (a forgotten key is "not covered",
/// so a replica that asks ships it itself: a duplicate, never a loss).
#[derive(Debug)]
pub struct Acked<D> {
    capacity: usize,
    keys: HashMap<Vec<u8>, (u64, D)>,
    /// Keys in the order they were recorded, with the record's number (stale ones skipped).
    order: VecDeque<(Vec<u8>, u64)>,
    next: u64,
}

impl<D: Eq + Clone> Acked<D> {
    pub fn new(capacity: usize) -> Self {
        Acked { capacity: capacity.max(1), keys: HashMap::new(), order: VecDeque::new(), next: 0 }
    }

    /// The destination acknowledged a delta of `key` carrying the state with this digest.
    pub fn record(&mut self, key: &[u8], digest: D) {
        self.next += 1;
        self.keys.insert(key.to_vec(), (self.next, digest));
        self.order.push_back((key.to_vec(), self.next));
        while self.keys.len() > self.capacity {
            let Some((old, n)) = self.order.pop_front() else { break };
            if self.keys.get(&old).is_some_and(|(m, _)| *m == n) {
                self.keys.remove(&old);
            }
        }
        if self.order.len() > 2 * self.capacity {
            // Drop the stale records of keys recorded again since (amortised: at most once per
            // `capacity` records).
            let keys = &self.keys;
            self.order.retain(|(k, n)| keys.get(k).is_some_and(|(m, _)| m == n));
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&D> {
        self.keys.get(key).map(|(_, d)| d)
    }

    /// For each (key, digest) asked about: whether it is covered.
    pub fn answer<'a>(&self, asked: impl IntoIterator<Item = (&'a [u8], &'a D)>) -> Vec<bool>
    where
        D: 'a,
    {
        asked.into_iter().map(|(k, d)| covered(self.get(k), d)).collect()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The keys of a takeover page grouped by the node to ask (their shipper now), in the order
/// they came; keys without a shipper that is up (`None`) have no one to ask and are shipped.
pub fn by_shipper<K, N: Hash + Eq + Copy>(
    keys: impl IntoIterator<Item = (K, Option<N>)>,
) -> Vec<(Option<N>, Vec<K>)> {
    let mut groups: Vec<(Option<N>, Vec<K>)> = Vec::new();
    let mut index: HashMap<Option<N>, usize> = HashMap::new();
    for (k, n) in keys {
        let i = *index.entry(n).or_insert_with(|| {
            groups.push((n, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(k);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipper_is_the_first_home_replica_that_is_up() {
        assert_eq!(shipper(&[3, 1, 2], |_| true), Some(3));
        assert_eq!(shipper(&[3, 1, 2], |n| n != 3), Some(1));
        assert_eq!(shipper(&[3, 1, 2], |_| false), None);
        assert_eq!(shipper(&[], |_| true), None);
    }

    #[test]
    fn only_entries_past_the_grace_are_settled_and_never_beyond_a_younger_one() {
        assert_eq!(settled([100, 200, 900, 150], 1000, 500), 2);
        assert_eq!(settled([100, 200], 1000, 500), 2);
        assert_eq!(settled([600], 1000, 500), 0);
        assert_eq!(settled(Vec::<u64>::new(), 1000, 500), 0);
        assert_eq!(grace_ms(2000, 300, 30_000), 2000);
        assert_eq!(grace_ms(2000, 1500, 30_000), 3000);
        assert_eq!(grace_ms(2000, 3_600_000, 30_000), 30_000, "bounded");
        assert_eq!(grace_ms(60_000, 0, 30_000), 60_000, "as configured");
    }

    #[test]
    fn covered_only_by_the_same_state_acknowledged() {
        let mut acked = Acked::new(10);
        assert!(!covered(acked.get(b"k"), &1u64));
        acked.record(b"k", 1u64);
        assert!(covered(acked.get(b"k"), &1));
        assert!(!covered(acked.get(b"k"), &2), "a replica with another state ships it");
        acked.record(b"k", 2);
        assert_eq!(
            acked.answer([(&b"k"[..], &2u64), (&b"k"[..], &1), (&b"x"[..], &2)]),
            vec![true, false, false]
        );
    }

    #[test]
    fn past_its_capacity_the_oldest_keys_are_forgotten() {
        let mut acked = Acked::new(3);
        for (i, k) in [b"a", b"b", b"c"].iter().enumerate() {
            acked.record(&k[..], i);
        }
        // Recording "a" again makes it the newest; "b" is the oldest now.
        acked.record(b"a", 9);
        acked.record(b"d", 4);
        assert_eq!(acked.len(), 3);
        assert_eq!(acked.get(b"b"), None);
        assert_eq!((acked.get(b"a"), acked.get(b"c"), acked.get(b"d")), (Some(&9), Some(&2), Some(&4)));
        // Re-recording one key over and over keeps the bookkeeping bounded.
        for i in 0..100 {
            acked.record(b"a", i);
        }
        assert!(acked.order.len() <= 6 && acked.len() == 3);
    }

    #[test]
    fn keys_go_to_their_shipper_in_order() {
        let groups = by_shipper([("a", Some(1)), ("b", Some(2)), ("c", Some(1)), ("d", None)]);
        assert_eq!(groups, vec![(Some(1), vec!["a", "c"]), (Some(2), vec!["b"]), (None, vec!["d"])]);
    }
}
