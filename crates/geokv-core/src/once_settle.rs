//! The upkeep of a record's idempotent increments, done by an actor as it writes the counter:
//! folding its old copies into its own counter entry, moving its watermark, forgetting what
//! no longer counts (see [`crate::once`]). Every step keeps the counter's value.

use std::collections::BTreeSet;

use crate::once::{self, RequestId, Settled};
use crate::{Record, Stamp};

/// No watermark: the base's increments, and the counter's that a delete observed, count by
/// id until folded, whatever their actors' watermarks say.
static NO_MARKS: Settled = Settled::new();

impl Record {
    /// The watermarks `id` counts under: none while a delete's base holds it (the pair cancels
    /// out, and only its folder drops the pair), else the actors'.
    fn marks(&self, id: RequestId) -> &Settled {
        if self.onces_base.get(id).is_some() {
            &NO_MARKS
        } else {
            &self.settled
        }
    }

    /// What the idempotent increments add to the counter's value: the counter's, less the
    /// base's.
    pub(crate) fn onces_value(&self) -> i128 {
        let counted: i128 = self.onces.iter().map(|(id, _)| self.onces.counts(*id, self.marks(*id))).sum();
        counted - self.onces_base.value(&NO_MARKS)
    }

    /// Whether the counter holds an idempotent increment a delete did not observe (one that
    /// counts by id and is not in the base).
    pub(crate) fn unobserved_onces(&self) -> bool {
        self.onces
            .iter()
            .any(|(id, _)| self.onces_base.get(*id).is_none() && self.onces.live(*id, &self.settled))
    }

    /// Upkeep by `actor` writing the counter at `stamp` (wall clock `now_ms`).
    pub(crate) fn settle_onces(&mut self, actor: u64, stamp: Stamp, now_ms: u64) {
        if self.onces.is_empty() && self.onces_base.is_empty() {
            return;
        }
        let fold_before = Stamp::ntp_from_millis(now_ms.saturating_sub(once::FOLD_AFTER_MS));
        self.fold(actor, stamp, fold_before);
        self.advance(actor, fold_before);
        self.forget(actor, Stamp::ntp_from_millis(now_ms.saturating_sub(once::REMEMBER_MS)));
    }

    /// Folds into `actor`'s counter entry the increments it applied before `before` that still
    /// count by id and that no delete observed (those cancel out with the base's copy instead).
    fn fold(&mut self, actor: u64, stamp: Stamp, before: u64) {
        let due: Vec<(RequestId, i64)> = self
            .onces
            .iter()
            .filter(|(id, o)| {
                o.copies.keys().any(|(a, at)| *a == actor && *at < before)
                    && self.onces_base.get(**id).is_none()
                    && self.onces.live(**id, &self.settled)
            })
            .map(|(id, o)| (*id, o.delta()))
            .collect();
        for (id, delta) in due {
            self.counter.add(actor, delta, stamp.time, self.kind.marker.time);
            self.onces.mark_folded(id, actor, stamp.time);
        }
    }

    /// Moves `actor`'s watermark up to `before`, but not past a copy of its whose settling
    /// would change the value: one of an increment that still counts by id.
    fn advance(&mut self, actor: u64, before: u64) {
        let current = self.settled.get(&actor).copied().unwrap_or(0);
        if before <= current {
            return;
        }
        let mut next: Settled = self.settled.clone();
        next.insert(actor, before);
        let mut upto = before;
        for (id, o) in self.onces.iter() {
            let mine = o.copies.keys().filter(|(a, at)| *a == actor && *at > current && *at <= before);
            let Some(at) = mine.map(|(_, at)| *at).min() else { continue };
            let marks = self.marks(*id);
            let after = if std::ptr::eq(marks, &NO_MARKS) { marks } else { &next };
            if self.onces.counts(*id, marks) != self.onces.counts(*id, after) {
                upto = upto.min(at - 1);
            }
        }
        if upto > current {
            self.settled.insert(actor, upto);
        }
    }

    /// Forgets the counter's increments whose every copy counts no more, once the newest copy
    /// or fold is older than `before` (or beyond the newest `MAX_REMEMBERED`); and the pairs a
    /// delete observed that count the same on both sides, from the counter and the base
    /// together: folded by the same actors, or applied by `actor` alone, whose own state shows
    /// it never folded them.
    fn forget(&mut self, actor: u64, before: u64) {
        let done: BTreeSet<RequestId> = self.onces.forgettable(&self.settled, before).into_iter().collect();
        let base_done: BTreeSet<RequestId> =
            self.onces_base.forgettable(&self.settled, before).into_iter().collect();
        let mut gone: BTreeSet<RequestId> =
            done.iter().copied().filter(|id| self.onces_base.get(*id).is_none()).collect();
        let pairs: BTreeSet<RequestId> = self
            .onces
            .iter()
            .filter(|(id, o)| {
                let Some(base) = self.onces_base.get(**id) else { return false };
                let same = if o.folded() || base.folded() {
                    o.folders() == base.folders() && o.folders().len() == 1
                } else {
                    o.copies.keys().chain(base.copies.keys()).all(|(a, _)| *a == actor)
                };
                same && done.contains(id) && base_done.contains(id) && self.onces_base.since < before
            })
            .map(|(id, _)| *id)
            .collect();
        if !pairs.is_empty() {
            self.onces_base.forget(&pairs);
            gone.extend(pairs);
        }
        if !gone.is_empty() {
            self.onces.forget(&gone);
        }
    }
}
