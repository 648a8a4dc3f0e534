//! A PN-counter with per-node totals, split into epochs.
//!
//! Each node counts its increments (`p`) and decrements (`n`) under an entry of its own;
//! merging takes the per-entry maximum, so concurrent updates all count. An entry is keyed by
//! `(node, epoch)`: a node starts a new epoch (the HLC time of the operation) when the state has
//! no entry of its own (a new key, or one it purged) or when a total would overflow `u64`.
//! Totals therefore never wrap, and a node that forgot a key never reuses numbers that another
//! replica still remembers.
//!
//! Why not `crdts::PNCounter`: its per-actor totals are private and `u64`, so an increment
//! past `u64::MAX` overflows (a panic in debug builds), and an actor restarting after a purge
//! counts from zero under a name whose old total other replicas still hold.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{Crdt, NodeId};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub p: u64,
    pub n: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    entries: BTreeMap<(NodeId, u64), Totals>,
}

impl PnCounter {
    /// Sum of increments minus sum of decrements.
    pub fn value(&self) -> i128 {
        self.entries.values().map(|t| i128::from(t.p) - i128::from(t.n)).sum()
    }

    /// Adds `delta` as `node`. `fresh_epoch` (the operation's HLC time, newer than anything in
    /// the state) names the node's new entry when it needs one: when the node has no entry of
    /// epoch `floor` or later (the key's current lifetime began at `floor`), or its total would
    /// overflow.
    pub fn add(&mut self, node: NodeId, delta: i64, fresh_epoch: u64, floor: u64) {
        let steps = delta.unsigned_abs();
        if steps == 0 {
            return;
        }
        let current = self.entries.range((node, floor)..=(node, u64::MAX)).next_back().map(|(&k, &t)| (k, t));
        let (key, mut totals) = match current {
            Some((k, t)) => {
                let fits = if delta > 0 { t.p.checked_add(steps) } else { t.n.checked_add(steps) };
                if fits.is_some() {
                    (k, t)
                } else {
                    ((node, fresh_epoch), Totals::default())
                }
            }
            None => ((node, fresh_epoch), Totals::default()),
        };
        if delta > 0 {
            totals.p += steps;
        } else {
            totals.n += steps;
        }
        self.entries.insert(key, totals);
    }
}

impl PnCounter {
    /// Drops the entries of epochs before `epoch` (lifetimes of the key that ended).
    pub fn retain_from(&mut self, epoch: u64) {
        self.entries.retain(|&(_, e), _| e >= epoch);
    }
}

impl Crdt for PnCounter {
    fn merge(&mut self, other: &Self) {
        for (k, t) in &other.entries {
            let mine = self.entries.entry(*k).or_default();
            mine.p = mine.p.max(t.p);
            mine.n = mine.n.max(t.n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_increments_all_count() {
        let mut a = PnCounter::default();
        let mut b = PnCounter::default();
        a.add(1, 5, 10, 0);
        b.add(2, -2, 11, 0);
        a.merge(&b);
        b.merge(&a);
        assert_eq!(a.value(), 3);
        assert_eq!(a, b);
    }

    #[test]
    fn totals_never_wrap() {
        let mut c = PnCounter::default();
        for (i, d) in [i64::MAX, i64::MIN, i64::MAX, i64::MIN, i64::MAX, i64::MIN, 1, 1].iter().enumerate() {
            c.add(1, *d, 100 + i as u64, 0);
        }
        assert_eq!(c.value(), 3 * i128::from(i64::MAX) + 3 * i128::from(i64::MIN) + 2);
        assert!(c.entries.len() > 1, "an overflowing total starts a new epoch");
    }

    #[test]
    fn a_node_that_forgot_the_key_counts_in_a_new_epoch() {
        let mut old = PnCounter::default();
        old.add(1, 5, 10, 0);
        let mut fresh = PnCounter::default();
        fresh.add(1, 1, 50, 0);
        let mut merged = old.clone();
        merged.merge(&fresh);
        assert_eq!(merged.value(), 6, "the new increment is not swallowed by the old total");
    }

    #[test]
    fn a_new_lifetime_counts_in_a_new_epoch_and_old_epochs_can_be_dropped() {
        let mut c = PnCounter::default();
        c.add(1, 5, 10, 0);
        c.add(1, 2, 60, 50);
        assert_eq!(c.entries.len(), 2, "an entry older than the lifetime is not continued");
        c.retain_from(50);
        assert_eq!(c.value(), 2);
    }
}
