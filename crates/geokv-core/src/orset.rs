//! An add-wins observed-remove set of byte strings (an ORSWOT: observed-remove set without
//! tombstones, after Bieniusa et al. and Almeida, Shoker and Baquero).
//!
//! Every add is an event with a dot `(actor, counter)`, where the counter is the HLC time of
//! the operation: unique, and growing per actor even after the node forgot the key (a purged
//! tombstone), so a dot is never reused. The causal context records, per actor, the newest dot
//! the state has seen. That is enough because states travel whole and an actor's own state
//! always holds every dot it issued for the key, so any state carrying `(a, c)` also carries
//! (the effects of) every earlier dot of `a`. A node that may have lost some of its own dots
//! (its data was wiped, or it dropped its copies of keys) therefore writes as a new actor: the
//! actor is derived from the node id and an incarnation the node renews on such events.
//!
//! A remove drops the member's dots; the context still remembers them, so a merge with a
//! replica that has not seen the remove drops them there too, while an add the remover never
//! saw (a dot beyond its context) survives. Add wins.
//!
//! Why not `crdts::Orswot`: it keeps `HashMap`s (no canonical encoding, which Merkle
//! comparison of encoded states needs), numbers dots 1, 2, 3... (reused after a purge), and
//! rejects operations that arrive out of order.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::{Crdt, NodeId};

/// One add event: made by `node` at HLC time `counter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub node: NodeId,
    pub counter: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrSet {
    /// Live members, each with the dots of the adds that keep it alive.
    entries: BTreeMap<Vec<u8>, BTreeSet<Dot>>,
    /// Causal context: node -> newest dot counter seen from it.
    seen: BTreeMap<NodeId, u64>,
}

impl OrSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, member: &[u8]) -> bool {
        self.entries.contains_key(member)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Members in byte order.
    pub fn members(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.entries.keys()
    }

    /// Whether the causal context has seen `dot`.
    pub fn has_seen(&self, dot: &Dot) -> bool {
        dot.counter <= self.seen.get(&dot.node).copied().unwrap_or(0)
    }

    /// Adds `member` with the add event `dot`, which must be newer than every dot of its node
    /// this state has seen. The new dot replaces the member's older dots (the add observed
    /// them). Returns whether the member was absent before.
    pub fn add(&mut self, dot: Dot, member: Vec<u8>) -> bool {
        let seen = self.seen.entry(dot.node).or_insert(0);
        *seen = (*seen).max(dot.counter);
        self.entries.insert(member, BTreeSet::from([dot])).is_none()
    }

    /// Removes `member` (the adds this state has observed). Returns whether it was present.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        self.entries.remove(member).is_some()
    }

    /// Removes every member this state has observed.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Drops the dots of adds made before HLC time `time` (lifetimes of the key that ended),
    /// and the members left without a dot.
    pub fn retain_from(&mut self, time: u64) {
        self.entries.retain(|_, dots| {
            dots.retain(|d| d.counter >= time);
            !dots.is_empty()
        });
    }
}

impl Crdt for OrSet {
    fn merge(&mut self, other: &Self) {
        let mut merged = BTreeMap::new();
        let members: BTreeSet<&Vec<u8>> = self.entries.keys().chain(other.entries.keys()).collect();
        for member in members {
            let empty = BTreeSet::new();
            let mine = self.entries.get(member).unwrap_or(&empty);
            let theirs = other.entries.get(member).unwrap_or(&empty);
            // Keep a dot both sides hold, or one side holds and the other has never seen.
            let keep: BTreeSet<Dot> = mine
                .iter()
                .filter(|d| theirs.contains(d) || !other.has_seen(d))
                .chain(theirs.iter().filter(|d| !self.has_seen(d)))
                .copied()
                .collect();
            if !keep.is_empty() {
                merged.insert(member.clone(), keep);
            }
        }
        self.entries = merged;
        for (&node, &counter) in &other.seen {
            let mine = self.seen.entry(node).or_insert(0);
            *mine = (*mine).max(counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn d(node: NodeId, counter: u64) -> Dot {
        Dot { node, counter }
    }

    #[test]
    fn concurrent_add_wins_over_remove() {
        let mut a = OrSet::new();
        a.add(d(1, 10), m("x"));
        let mut b = a.clone();
        b.remove(b"x");
        a.add(d(1, 20), m("x")); // re-add, concurrent with b's remove
        let mut ab = a.clone();
        ab.merge(&b);
        assert!(ab.contains(b"x"));
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
    }

    #[test]
    fn observed_remove_removes_on_every_replica() {
        let mut a = OrSet::new();
        a.add(d(1, 10), m("x"));
        let mut b = a.clone();
        b.remove(b"x");
        a.merge(&b);
        assert!(!a.contains(b"x"));
    }

    #[test]
    fn state_after_a_gap_merges_without_causal_delivery() {
        // Replica c misses a's first states, then receives the latest one.
        let mut a = OrSet::new();
        a.add(d(1, 1), m("x"));
        a.add(d(1, 2), m("y"));
        a.remove(b"x");
        a.add(d(1, 3), m("z"));
        let mut c = OrSet::new();
        c.add(d(2, 5), m("w"));
        c.merge(&a);
        let members: Vec<_> = c.members().cloned().collect();
        assert_eq!(members, vec![m("w"), m("y"), m("z")]);
    }

    #[test]
    fn an_add_after_the_adder_forgot_the_key_survives_an_old_tombstone() {
        // b keeps an old tombstone that saw a's dot at time 10; a purged the key and adds
        // again at time 50: the new dot is beyond b's context, so the add survives.
        let mut a = OrSet::new();
        a.add(d(1, 10), m("x"));
        let mut b = a.clone();
        b.clear();
        let mut fresh = OrSet::new();
        fresh.add(d(1, 50), m("x"));
        b.merge(&fresh);
        assert!(b.contains(b"x"));
    }
}
