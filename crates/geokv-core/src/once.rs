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
//! applied an increment moves the delta into its own counter entry and marks its copy folded
//! (with the fold's time), in one state change, the next time it writes the key: a state whose
//! counter entry includes the delta holds the folded copy, and an increment with a folded copy
//! counts nothing of its own. Two actors that each applied an attempt and folded their copy
//! before seeing the other's hold the delta twice in their entries: the increment, with two
//! folded copies, then counts minus its delta once (and is never forgotten). Each actor also keeps a watermark
//! (`settled`, merged by maximum) that it moves only past copies whose settling changes no
//! count (folded, or a request another actor folded): its copies behind it count nothing in any
//! state, so a stale copy arriving later (from a replica that was down, or a hint) is dead on
//! arrival. An increment whose every copy is behind its actor's watermark is forgotten
//! [`REMEMBER_MS`] after its fold (or beyond the newest [`MAX_REMEMBERED`] of the key): a
//! retry later than that counts again.
//!
//! A delete copies the increments it observed into the base (as it copies the counter): there
//! they count by id, and so do the counter's copies of them, watermarks or not, so the pair
//! cancels out. An observed increment is never folded after the delete. The pair is dropped
//! from both sides once it and the delete are [`REMEMBER_MS`] old and it counts the same on
//! both: folded by the same one actor before the delete, or applied by one actor only, the one
//! dropping it, whose own state shows it never folded it. Property tests (`once_tests.rs`)
//! check that this upkeep never changes the value of a state, alone or merged with any other,
//! however stale.
//!
//! What this assumes: (1) a retry comes within [`REMEMBER_MS`] of its first attempt; (2) the
//! states carrying two attempts of one request meet, and a delete reaches the increment's
//! folder, within [`REMEMBER_MS`] of a fold (where a replica is cut off for longer, the
//! increment may count twice, as a delete's tombstone purged after `tombstone_grace_secs` may
//! let a value back); (3) an actor's own state holds every copy it made (states travel whole,
//! and a node that may have lost some of its state writes as a new actor: see
//! `crate::actor_id`).

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
    /// HLC time at which the actor moved the delta into its own counter entry, once it did.
    pub folded_at: Option<u64>,
}

/// One idempotent increment: its applications, by actor and HLC time (an actor may apply one
/// request again after the key's lifetime that held its first copy ended).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Once {
    pub copies: BTreeMap<(NodeId, u64), Copy>,
}

impl Once {
    /// The increment (the largest delta of its copies).
    pub fn delta(&self) -> i64 {
        self.copies.values().map(|c| c.delta).max().unwrap_or(0)
    }

    /// Whether an actor has folded it (its delta then counts in that actor's entry).
    pub fn folded(&self) -> bool {
        self.copies.values().any(|c| c.folded_at.is_some())
    }

    /// How many actors folded it (copies are keyed by actor first, so a run of one actor's
    /// copies is counted once; no allocation on the read path).
    pub fn folded_actors(&self) -> usize {
        let mut last = None;
        let mut n = 0;
        for ((actor, _), c) in &self.copies {
            if c.folded_at.is_some() && last != Some(*actor) {
                n += 1;
                last = Some(*actor);
            }
        }
        n
    }

    /// The actors whose copies are folded.
    pub fn folders(&self) -> BTreeSet<NodeId> {
        self.copies.iter().filter(|(_, c)| c.folded_at.is_some()).map(|((a, _), _)| *a).collect()
    }

    /// The time of its newest application or fold.
    fn newest(&self) -> u64 {
        self.copies.iter().map(|((_, at), c)| (*at).max(c.folded_at.unwrap_or(0))).max().unwrap_or(0)
    }
}

/// Per actor, the HLC time up to which its copies count nothing (see the module docs).
pub type Settled = BTreeMap<NodeId, u64>;

fn is_settled(settled: &Settled, (actor, at): &(NodeId, u64)) -> bool {
    settled.get(actor).is_some_and(|w| at <= w)
}

/// The idempotent increments of a counter (or of its delete's base), by request id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Onces {
    entries: BTreeMap<RequestId, Once>,
    /// For a base: HLC time of the newest delete that made it (merged by maximum). A pair is
    /// dropped only once that delete is old, so no older base still holds it otherwise.
    pub since: u64,
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
        self.entries.get(&id).is_some_and(|o| !o.folded() && !o.copies.keys().any(|k| is_settled(settled, k)))
    }

    /// What `id` counts here besides the counter entries: its delta while it is live; once
    /// folded, nothing, less the delta for every further actor that folded it too (two
    /// attempts applied by two nodes that had not seen each other's before each folded its
    /// own: the counter entries then hold it twice).
    pub fn counts(&self, id: RequestId, settled: &Settled) -> i128 {
        let Some(o) = self.entries.get(&id) else { return 0 };
        let folded = o.folded_actors() as i128;
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
        copies.entry((actor, at)).or_insert(Copy { delta, folded_at: None });
    }

    /// Marks `actor`'s copies of `id` folded at HLC time `at`.
    pub fn mark_folded(&mut self, id: RequestId, actor: NodeId, at: u64) {
        if let Some(o) = self.entries.get_mut(&id) {
            for (_, c) in o.copies.range_mut((actor, 0)..=(actor, u64::MAX)) {
                c.folded_at = Some(at);
            }
        }
    }

    /// Forgets the increments in `ids`.
    pub fn forget(&mut self, ids: &BTreeSet<RequestId>) {
        self.entries.retain(|id, _| !ids.contains(id));
    }

    /// Whether every copy of `id` here is settled (or there is none).
    pub fn all_settled(&self, id: RequestId, settled: &Settled) -> bool {
        self.entries.get(&id).is_none_or(|o| o.copies.keys().all(|k| is_settled(settled, k)))
    }

    /// Settled increments that may be forgotten: newest copy made, and fold done, before
    /// `before`, plus the oldest beyond [`MAX_REMEMBERED`] of them. (The caller checks the base's copies too.)
    pub fn forgettable(&self, settled: &Settled, before: u64) -> Vec<RequestId> {
        let mut done: Vec<(u64, RequestId)> = self
            .entries
            .iter()
            .filter(|(id, o)| {
                // An increment folded twice keeps its correction: never forgotten.
                self.all_settled(**id, settled) && o.folded_actors() <= 1
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
            o.copies.retain(|(_, at), _| *at >= time);
            !o.copies.is_empty()
        });
    }
}

impl Crdt for Onces {
    fn merge(&mut self, other: &Self) {
        self.since = self.since.max(other.since);
        for (id, o) in &other.entries {
            let mine = &mut self.entries.entry(*id).or_default().copies;
            for (actor, c) in &o.copies {
                match mine.get_mut(actor) {
                    Some(m) => {
                        m.delta = m.delta.max(c.delta);
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
        assert_eq!(ab.get(7).unwrap().copies.len(), 2);
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
        folded.mark_folded(1, 2, 30);
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
        assert_eq!(right.get(1).unwrap().copies.keys().copied().collect::<Vec<_>>(), vec![(3, 90)]);
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
