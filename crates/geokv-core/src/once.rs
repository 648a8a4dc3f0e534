//! Increments that count once however many times they are applied: the state side of
//! idempotent retries.
//!
//! A client that lost the answer to an increment cannot tell whether it was applied, so it
//! sends it again, possibly to another node, possibly while the first attempt is still on its
//! way to the replicas. An increment that carries a request id is therefore not added to the
//! coordinator's own counter entry (two coordinators would add it twice) but kept under its
//! id: every application of the same request makes the same entry, and merging keeps one.
//! Deduplication is part of the merge, so it holds whatever order copies arrive in (a
//! coordinator that applied it and died, a hint delivered later, a retry racing the first
//! attempt).
//!
//! Entries are not kept forever. Once its copy is [`FOLD_AFTER_MS`] old, the actor that
//! applied an increment (the smallest one, when a race made two) moves its delta into its own
//! counter entry and marks its copy folded (with that entry's epoch), in one state change: a
//! state whose counter entry includes the delta holds the folded copy, and an increment with a
//! folded copy counts nothing of its own. Each actor then keeps a watermark (`settled`,
//! merged by maximum): its copies up to it count nothing in any state, so copies behind it may
//! be dropped, and a stale copy arriving later (a replica that was down) is dead on arrival.
//! An actor moves its watermark past a copy only when that changes no count: the increment is
//! folded, or a delete observed it and it cancels out. Increments are forgotten once every
//! copy is behind its actor's watermark and the newest is [`REMEMBER_MS`] old (or beyond the
//! newest [`MAX_REMEMBERED`] of the key): a retry later than that counts again.
//!
//! Two attempts of one request applied by two nodes that never saw each other's copy may each
//! be folded by its own node (the retry came over a minute after the first attempt, to a node
//! the first had not reached): the counter entries then hold the delta twice, and the
//! increment, now with two folded copies, counts minus its delta once, for good (it is never
//! forgotten). What this assumes: a retry comes within [`REMEMBER_MS`] of its first attempt.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::{Crdt, NodeId};

/// A client-chosen id of one logical request, the same in every attempt of it.
pub type RequestId = u128;

/// How old a copy is before its actor folds it into its counter entry.
pub const FOLD_AFTER_MS: u64 = 60_000;
/// How long a request id is remembered after its newest copy was applied: a retry later than
/// this may count again.
pub const REMEMBER_MS: u64 = 600_000;
/// Most settled increments a key remembers; beyond it the oldest are forgotten first.
pub const MAX_REMEMBERED: usize = 4096;

/// One application of an idempotent increment, by one actor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// The increment. Every attempt of a request carries the same (coordinators refuse a
    /// reused id with another delta); where copies differ, the largest counts.
    pub delta: i64,
    /// HLC time of this application.
    pub at: u64,
    /// The epoch of the actor's counter entry the delta was folded into, once it was.
    pub folded_into: Option<u64>,
    /// HLC time of the fold.
    pub folded_at: Option<u64>,
}

/// One idempotent increment: its applications by actor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Once {
    pub copies: BTreeMap<NodeId, Copy>,
}

impl Once {
    /// The increment (the largest delta of its copies).
    pub fn delta(&self) -> i64 {
        self.copies.values().map(|c| c.delta).max().unwrap_or(0)
    }

    /// Whether an actor has folded it (its delta then counts in that actor's entry).
    pub fn folded(&self) -> bool {
        self.copies.values().any(|c| c.folded_into.is_some())
    }

    /// The actor that folds it: the smallest that applied it.
    pub fn folder(&self) -> Option<NodeId> {
        self.copies.keys().next().copied()
    }

    /// The time of its newest application or fold.
    fn newest(&self) -> u64 {
        self.copies.values().map(|c| c.at.max(c.folded_at.unwrap_or(0))).max().unwrap_or(0)
    }
}

/// Per actor, the HLC time up to which its copies count nothing (see the module docs).
pub type Settled = BTreeMap<NodeId, u64>;

fn is_settled(settled: &Settled, actor: NodeId, c: &Copy) -> bool {
    settled.get(&actor).is_some_and(|&w| c.at <= w)
}

/// The idempotent increments of a counter (or of its delete's base), by request id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Onces {
    entries: BTreeMap<RequestId, Once>,
}

impl Onces {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, id: RequestId) -> Option<&Once> {
        self.entries.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RequestId, &Once)> {
        self.entries.iter()
    }

    /// Whether `id` counts by its own delta here: held, and no copy folded or settled.
    pub fn live(&self, id: RequestId, settled: &Settled) -> bool {
        self.entries
            .get(&id)
            .is_some_and(|o| !o.folded() && !o.copies.iter().any(|(a, c)| is_settled(settled, *a, c)))
    }

    /// What `id` counts here besides the counter entries: its delta while it is live; once
    /// folded, nothing, less the delta for every further actor that folded it too (two
    /// attempts applied by two nodes that had not seen each other's before each folded its
    /// own: the counter entries then hold it twice).
    pub fn counts(&self, id: RequestId, settled: &Settled) -> i128 {
        let Some(o) = self.entries.get(&id) else { return 0 };
        let folded = o.copies.values().filter(|c| c.folded_into.is_some()).count() as i128;
        if folded > 0 {
            -(folded - 1) * i128::from(o.delta())
        } else if self.live(id, settled) {
            i128::from(o.delta())
        } else {
            0
        }
    }

    /// The sum of what every increment counts here.
    pub fn value(&self, settled: &Settled) -> i128 {
        self.entries.keys().map(|id| self.counts(*id, settled)).sum()
    }

    /// Records an application of request `id` by `actor` at HLC time `at`.
    pub fn insert(&mut self, id: RequestId, delta: i64, at: u64, actor: NodeId) {
        let copies = &mut self.entries.entry(id).or_default().copies;
        copies.entry(actor).or_insert(Copy { delta, at, folded_into: None, folded_at: None });
    }

    /// Marks `actor`'s copy of `id` folded into its entry of `epoch`, at HLC time `at`.
    pub fn mark_folded(&mut self, id: RequestId, actor: NodeId, epoch: u64, at: u64) {
        if let Some(c) = self.entries.get_mut(&id).and_then(|o| o.copies.get_mut(&actor)) {
            c.folded_into = Some(epoch);
            c.folded_at = Some(at);
        }
    }

    /// Forgets the increments in `ids`.
    pub fn forget(&mut self, ids: &BTreeSet<RequestId>) {
        self.entries.retain(|id, _| !ids.contains(id));
    }

    /// Whether every copy of `id` here is settled (or there is none).
    pub fn all_settled(&self, id: RequestId, settled: &Settled) -> bool {
        self.entries.get(&id).is_none_or(|o| o.copies.iter().all(|(a, c)| is_settled(settled, *a, c)))
    }

    /// Settled increments that may be forgotten: newest copy made, and fold done, before
    /// `before`, plus the oldest beyond [`MAX_REMEMBERED`] of them. (The caller checks the base's copies too.)
    pub fn forgettable(&self, settled: &Settled, before: u64) -> Vec<RequestId> {
        let mut done: Vec<(u64, RequestId)> = self
            .entries
            .iter()
            .filter(|(id, o)| {
                // An increment folded twice keeps its correction: never forgotten.
                self.all_settled(**id, settled)
                    && o.copies.values().filter(|c| c.folded_into.is_some()).count() <= 1
            })
            .map(|(id, o)| (o.newest(), *id))
            .collect();
        done.sort_unstable();
        let excess = done.len().saturating_sub(MAX_REMEMBERED);
        done.iter()
            .enumerate()
            .filter(|(i, (newest, _))| *i < excess || *newest < before)
            .map(|(_, (_, id))| *id)
            .collect()
    }

    /// Drops the copies made before `time` (a lifetime of the key that ended), and the
    /// increments left without any.
    pub fn retain_from(&mut self, time: u64) {
        self.entries.retain(|_, o| {
            o.copies.retain(|_, c| c.at >= time);
            !o.copies.is_empty()
        });
    }
}

impl Crdt for Onces {
    fn merge(&mut self, other: &Self) {
        for (id, o) in &other.entries {
            let mine = &mut self.entries.entry(*id).or_default().copies;
            for (actor, c) in &o.copies {
                match mine.get_mut(actor) {
                    Some(m) => {
                        m.delta = m.delta.max(c.delta);
                        m.at = m.at.min(c.at);
                        m.folded_into = min_some(m.folded_into, c.folded_into);
                        m.folded_at = min_some(m.folded_at, c.folded_at);
                    }
                    None => {
                        mine.insert(*actor, c.clone());
                    }
                }
            }
        }
    }
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Merges watermarks (maximum per actor).
pub fn merge_settled(mine: &mut Settled, other: &Settled) {
    for (a, w) in other {
        let m = mine.entry(*a).or_insert(0);
        *m = (*m).max(*w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_request_applied_by_two_actors_counts_once() {
        let (mut a, mut b) = (Onces::default(), Onces::default());
        a.insert(7, 5, 100, 1);
        b.insert(7, 5, 90, 2);
        b.insert(8, -2, 95, 2);
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        let none = Settled::new();
        assert_eq!(ab.value(&none), 3);
        assert_eq!(ab.get(7).unwrap().folder(), Some(1));
        let again = ab.clone();
        ab.merge(&again);
        assert_eq!(ab, again);
    }

    #[test]
    fn a_folded_or_settled_copy_stops_an_increment_counting() {
        let mut o = Onces::default();
        o.insert(1, 3, 10, 2);
        o.insert(1, 3, 12, 5);
        o.insert(2, 4, 20, 5);
        let none = Settled::new();
        assert_eq!(o.value(&none), 7);
        let mut folded = o.clone();
        folded.mark_folded(1, 2, 99, 30);
        assert_eq!(folded.value(&none), 4);
        // A stale copy merged in changes nothing.
        let mut stale = Onces::default();
        stale.insert(1, 3, 12, 5);
        folded.merge(&stale);
        assert_eq!(folded.value(&none), 4);
        // Actor 5's watermark at 12 settles its copies up to 12: request 1 counts nothing.
        let settled = Settled::from([(5, 12)]);
        assert_eq!(o.value(&settled), 4);
        assert!(!o.all_settled(1, &settled) && o.all_settled(1, &Settled::from([(2, 10), (5, 12)])));
    }

    #[test]
    fn dropping_copies_before_a_horizon_commutes_with_merging() {
        let (mut a, mut c) = (Onces::default(), Onces::default());
        a.insert(1, 3, 10, 1);
        c.insert(1, 3, 90, 3);
        let mut left = a.clone();
        left.retain_from(50);
        left.merge(&c);
        let mut right = a.clone();
        right.merge(&c);
        right.retain_from(50);
        assert_eq!(left, right);
        assert_eq!(right.get(1).unwrap().folder(), Some(3));
    }

    #[test]
    fn settled_increments_are_forgotten_when_old_or_beyond_the_cap() {
        let mut o = Onces::default();
        for i in 0..(MAX_REMEMBERED as u128 + 3) {
            o.insert(i, 1, 10_000 - i as u64, 1);
        }
        o.insert(99_999, 1, 20_000, 2);
        let settled = Settled::from([(1, 10_000)]);
        let oldest: Vec<u128> = (MAX_REMEMBERED as u128..MAX_REMEMBERED as u128 + 3).rev().collect();
        assert_eq!(o.forgettable(&settled, 0), oldest, "the three oldest; never an unsettled one");
        assert_eq!(o.forgettable(&settled, 20_001).len(), MAX_REMEMBERED + 3);
    }
}
