//! An add-wins observed-remove set of byte strings with a causal context (a delta-state
//! ORSWOT, after Almeida, Shoker and Baquero, "Delta State Replicated Data Types").
//!
//! Why not `crdts::Orswot`: it keeps its state in `HashMap`s (the encoding is not canonical,
//! so two equal states could encode to different bytes and break Merkle comparison), and its
//! operations must arrive in order per actor. Here every add carries a dot `(node, counter)`;
//! the causal context records every dot the state has seen, compacted into a version vector
//! plus a cloud of dots beyond it. A remove simply drops the member's dots: the context still
//! remembers them, so a merge with a replica that has not seen the remove drops them too,
//! while an add the remover never saw (a dot outside its context) survives. Add wins.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::{Crdt, NodeId};

/// One add event: the `counter`-th add issued by `node` on this key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub node: NodeId,
    pub counter: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrSet {
    /// Live members, each with the dots of the adds that keep it alive.
    entries: BTreeMap<Vec<u8>, BTreeSet<Dot>>,
    /// Causal context, compact part: node -> every counter in 1..=n has been seen.
    clock: BTreeMap<NodeId, u64>,
    /// Causal context, dots seen beyond the compact part.
    cloud: BTreeSet<Dot>,
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
        dot.counter <= self.clock.get(&dot.node).copied().unwrap_or(0) || self.cloud.contains(dot)
    }

    fn next_dot(&self, node: NodeId) -> Dot {
        let compact = self.clock.get(&node).copied().unwrap_or(0);
        let cloud_max = self.cloud.iter().filter(|d| d.node == node).map(|d| d.counter).max().unwrap_or(0);
        Dot { node, counter: compact.max(cloud_max) + 1 }
    }

    /// Adds `member` as `node`. The new dot replaces the member's older dots (the add has
    /// observed them). Returns whether the member was absent before.
    pub fn add(&mut self, node: NodeId, member: Vec<u8>) -> bool {
        let dot = self.next_dot(node);
        self.insert_context(dot);
        self.compact();
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

    fn insert_context(&mut self, dot: Dot) {
        if !self.has_seen(&dot) {
            self.cloud.insert(dot);
        }
    }

    /// Folds cloud dots that extend the compact clock into it.
    fn compact(&mut self) {
        let cloud = std::mem::take(&mut self.cloud);
        for dot in cloud {
            let seen = self.clock.entry(dot.node).or_insert(0);
            if dot.counter == *seen + 1 {
                *seen = dot.counter;
            } else if dot.counter > *seen {
                self.cloud.insert(dot);
            }
        }
        // A dot can only extend the clock after its predecessors were folded, and the cloud is
        // iterated in (node, counter) order, so one pass is enough.
        self.clock.retain(|_, c| *c > 0);
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
        for (&node, &counter) in &other.clock {
            let mine = self.clock.entry(node).or_insert(0);
            *mine = (*mine).max(counter);
        }
        for dot in &other.cloud {
            self.insert_context(*dot);
        }
        // Drop cloud dots now covered by the merged clock, then fold what extends it.
        let clock = self.clock.clone();
        self.cloud.retain(|d| d.counter > clock.get(&d.node).copied().unwrap_or(0));
        self.compact();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn concurrent_add_wins_over_remove() {
        let mut a = OrSet::new();
        a.add(1, m("x"));
        let mut b = a.clone();
        b.remove(b"x");
        a.add(1, m("x")); // re-add, concurrent with b's remove
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
        a.add(1, m("x"));
        let mut b = a.clone();
        b.remove(b"x");
        a.merge(&b);
        assert!(!a.contains(b"x"));
    }

    #[test]
    fn state_after_a_gap_merges_without_causal_delivery() {
        // Replica c misses the first two states of a, then receives the latest one.
        let mut a = OrSet::new();
        a.add(1, m("x"));
        a.add(1, m("y"));
        a.remove(b"x");
        a.add(1, m("z"));
        let mut c = OrSet::new();
        c.add(2, m("w"));
        c.merge(&a);
        let members: Vec<_> = c.members().cloned().collect();
        assert_eq!(members, vec![m("w"), m("y"), m("z")]);
    }

    #[test]
    fn context_is_compacted_into_the_clock() {
        let mut a = OrSet::new();
        for i in 0..10 {
            a.add(7, vec![i]);
        }
        assert!(a.cloud.is_empty());
        assert_eq!(a.clock.get(&7), Some(&10));
    }
}
