//! Appends that apply once however many times they are sent: the state side of idempotent
//! Append retries.
//!
//! An append is a read-modify-write of a register, so an append sent again after a lost
//! answer would add its bytes twice. An append that carries a request id leaves the id in the
//! key's state ([`AppendIds`]), next to the register; an attempt that finds its id there
//! changes nothing. Unlike an increment, an append needs no copy per actor: it never counts
//! anything, it only has to be recognised. Two attempts applied concurrently by two
//! coordinators each read the register without the other's bytes, so the register's
//! last-writer-wins order keeps one of them, with its bytes once.
//!
//! The ids are a lattice of their own: a set of ids with the HLC time of their first
//! newest application and a digest of the bytes, above a *floor* (an HLC time) below which ids are
//! forgotten. Merging takes the larger floor and the union of the ids at or above it, so an
//! id forgotten by one state is never brought back by merging an older one. A write that
//! records an id raises the floor past ids older than [`REMEMBER_MS`], and past the oldest
//! when the key holds more than [`MAX_REMEMBERED`]: a retry later than that, or after that
//! many newer idempotent appends to the key, is applied again. Ids outlive deletes and new
//! lifetimes of the key (a retry of an append the key has since lost is still not applied
//! again), but not the sweeper's purge of an expired key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::Hasher;

use crate::once::RequestId;
use crate::{Crdt, Stamp};

/// How long an append's id is remembered after its newest application.
pub const REMEMBER_MS: u64 = crate::once::REMEMBER_MS;
/// Most append ids a key remembers; beyond it the oldest are forgotten first.
pub const MAX_REMEMBERED: usize = 1024;

/// One remembered append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// HLC time of its newest application (the latest among attempts that met).
    pub at: u64,
    /// [`digest`] of the appended bytes: an id sent again with other bytes is refused.
    pub digest: u64,
}

impl Applied {
    /// Keeps the newest application (the later one whole, so that the merge stays associative
    /// with the floor's filter). Attempts of one request carry the same bytes; where digests
    /// differ (corrupt input) the tie goes the same way on every side.
    fn join(&mut self, other: &Applied) {
        if (other.at, other.digest) > (self.at, self.digest) {
            *self = *other;
        }
    }
}

/// The request ids of a key's idempotent appends (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendIds {
    /// HLC time below which ids are forgotten.
    pub floor: u64,
    pub ids: BTreeMap<RequestId, Applied>,
}

/// The digest an append's bytes are remembered by (64-bit FNV-1a, stable across releases).
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

impl AppendIds {
    pub fn is_empty(&self) -> bool {
        self.floor == 0 && self.ids.is_empty()
    }

    pub fn get(&self, id: RequestId) -> Option<&Applied> {
        self.ids.get(&id)
    }

    /// Remembers an append applied at HLC time `at`, and forgets what is older than
    /// [`REMEMBER_MS`] before `now_ms` or beyond the newest [`MAX_REMEMBERED`].
    pub fn insert(&mut self, id: RequestId, at: u64, digest: u64, now_ms: u64) {
        // Every id stays at or above the floor (a write is stamped after the record's
        // version, which no floor passes; this holds it whatever the input).
        let at = at.max(self.floor);
        let entry = self.ids.entry(id).or_insert(Applied { at, digest });
        entry.join(&Applied { at, digest });
        let old = Stamp::ntp_from_millis(now_ms.saturating_sub(REMEMBER_MS));
        // Never past the id just applied, whatever the clocks say.
        self.raise_floor(old.min(at));
        while self.ids.len() > MAX_REMEMBERED {
            let oldest = self.ids.values().map(|a| a.at).min().expect("not empty");
            self.raise_floor(oldest.saturating_add(1).min(at));
            if oldest >= at {
                break;
            }
        }
    }

    fn raise_floor(&mut self, floor: u64) {
        if floor > self.floor {
            self.floor = floor;
            self.ids.retain(|_, a| a.at >= floor);
        }
    }
}

impl Crdt for AppendIds {
    fn merge(&mut self, other: &Self) {
        for (id, theirs) in &other.ids {
            self.ids.entry(*id).or_insert(*theirs).join(theirs);
        }
        self.floor = self.floor.max(other.floor);
        let floor = self.floor;
        self.ids.retain(|_, a| a.at >= floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000_000;

    fn at(ms: u64) -> u64 {
        Stamp::ntp_from_millis(ms)
    }

    #[test]
    fn an_id_is_remembered_for_ten_minutes() {
        let mut ids = AppendIds::default();
        ids.insert(1, at(NOW), digest(b"a"), NOW);
        ids.insert(2, at(NOW + REMEMBER_MS - 1), digest(b"b"), NOW + REMEMBER_MS - 1);
        assert!(ids.get(1).is_some());
        ids.insert(3, at(NOW + REMEMBER_MS + 1), digest(b"c"), NOW + REMEMBER_MS + 1);
        assert!(ids.get(1).is_none() && ids.get(2).is_some() && ids.get(3).is_some());
        // A state that still holds the forgotten id does not bring it back.
        let mut stale = AppendIds::default();
        stale.insert(1, at(NOW), digest(b"a"), NOW);
        let mut merged = stale.clone();
        merged.merge(&ids);
        assert_eq!(merged, ids);
        ids.merge(&stale);
        assert_eq!(merged, ids);
    }

    #[test]
    fn a_key_remembers_its_newest_ids_up_to_the_cap() {
        let mut ids = AppendIds::default();
        for i in 0..(MAX_REMEMBERED as u64 + 10) {
            ids.insert(i.into(), at(NOW) + i, 7, NOW);
        }
        assert_eq!(ids.ids.len(), MAX_REMEMBERED);
        assert!(ids.get(9).is_none() && ids.get(10).is_some());
        assert!(ids.get(MAX_REMEMBERED as u128 + 9).is_some());
    }

    #[test]
    fn the_newest_application_is_kept() {
        let mut a = AppendIds::default();
        a.insert(5, at(NOW) + 3, 1, NOW);
        let mut b = AppendIds::default();
        b.insert(5, at(NOW) + 10, 1, NOW);
        a.merge(&b);
        assert_eq!(a.get(5), Some(&Applied { at: at(NOW) + 10, digest: 1 }));
    }

    use crate::{apply, CoreError, Limits, Op, OpOutcome, Record, View};

    fn append(chunk: &str, id: RequestId) -> Op {
        Op::AppendOnce { value: chunk.as_bytes().to_vec(), ttl_ms: None, id }
    }

    /// Applies `op` to `rec` at HLC time `t` (past NOW) as `node`.
    fn run(rec: &mut Option<Record>, op: &Op, t: u64, node: u64) -> Result<OpOutcome, CoreError> {
        let applied = apply(rec.as_ref(), op, Stamp::new(at(NOW) + t, node), NOW, &Limits::default())?;
        *rec = Some(applied.record);
        Ok(applied.outcome)
    }

    fn view(rec: &Option<Record>) -> Option<View> {
        rec.as_ref().and_then(|r| r.view(NOW))
    }

    #[test]
    fn an_append_sent_again_changes_nothing_even_after_a_delete() {
        let mut rec = None;
        assert_eq!(run(&mut rec, &append("a;", 1), 1, 1), Ok(OpOutcome::Appended { len: 2 }));
        assert_eq!(run(&mut rec, &append("a;", 1), 2, 2), Ok(OpOutcome::Appended { len: 2 }));
        run(&mut rec, &Op::Append { value: b"b;".to_vec(), ttl_ms: None }, 3, 1).unwrap();
        assert_eq!(run(&mut rec, &append("a;", 1), 4, 3), Ok(OpOutcome::Appended { len: 4 }));
        assert_eq!(view(&rec), Some(View::Register(b"a;b;".to_vec())));
        // The same id with other bytes is refused, whatever the key holds now.
        assert_eq!(run(&mut rec, &append("c;", 1), 5, 1), Err(CoreError::AppendReused { id: 1 }));
        run(&mut rec, &Op::Delete, 6, 1).unwrap();
        assert_eq!(run(&mut rec, &append("a;", 1), 7, 1), Ok(OpOutcome::Appended { len: 0 }));
        assert_eq!(view(&rec), None, "a retry after the delete does not bring the bytes back");
        assert_eq!(run(&mut rec, &append("d;", 2), 8, 1), Ok(OpOutcome::Appended { len: 2 }));
    }

    #[test]
    fn attempts_applied_on_two_replicas_append_once() {
        let (mut a, mut b) = (None, None);
        run(&mut a, &Op::Put { value: b"v;".to_vec(), ttl_ms: None }, 1, 1).unwrap();
        b.clone_from(&a);
        run(&mut a, &append("x;", 9), 2, 1).unwrap();
        run(&mut b, &append("x;", 9), 3, 2).unwrap();
        let mut merged = a.clone().unwrap();
        merged.merge(b.as_ref().unwrap());
        assert_eq!(merged.view(NOW), Some(View::Register(b"v;x;".to_vec())));
        let mut merged = Some(merged);
        assert_eq!(run(&mut merged, &append("x;", 9), 4, 3), Ok(OpOutcome::Appended { len: 4 }));
    }

    /// One step over three replicas: apply attempt `attempt` of one of four requests (or a
    /// plain put) at a replica, or merge one replica into another.
    #[derive(Clone, Debug)]
    enum Step {
        Attempt { replica: usize, request: u8 },
        Put { replica: usize },
        Merge { from: usize, to: usize },
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            4 => (0usize..3, 0u8..4).prop_map(|(replica, request)| Step::Attempt { replica, request }),
            1 => (0usize..3).prop_map(|replica| Step::Put { replica }),
            3 => (0usize..3, 0usize..3).prop_map(|(from, to)| Step::Merge { from, to }),
        ];
        prop::collection::vec(step, 1..40)
    }

    proptest! {
        /// However attempts spread over replicas and merges, every request's bytes are in any
        /// state at most once, and every replica converges once all states met.
        #[test]
        fn every_request_appends_at_most_once(steps in steps()) {
            let mut replicas: Vec<Option<Record>> = vec![None, None, None];
            for (t, step) in steps.iter().enumerate() {
                let t = t as u64 + 1;
                match *step {
                    Step::Attempt { replica, request } => {
                        let op = append(&format!("<{request}>"), u128::from(request) + 100);
                        let _ = run(&mut replicas[replica], &op, t, replica as u64 + 1);
                    }
                    Step::Put { replica } => {
                        let op = Op::Put { value: b"p".to_vec(), ttl_ms: None };
                        run(&mut replicas[replica], &op, t, replica as u64 + 1).unwrap();
                    }
                    Step::Merge { from, to } => {
                        if let Some(theirs) = replicas[from].clone() {
                            match &mut replicas[to] {
                                Some(mine) => mine.merge(&theirs),
                                none => *none = Some(theirs),
                            }
                        }
                    }
                }
                for r in replicas.iter().flatten() {
                    let bytes = String::from_utf8(r.register.val.clone()).unwrap();
                    for request in 0..4 {
                        let chunk = format!("<{request}>");
                        prop_assert!(bytes.matches(&chunk).count() <= 1, "{} twice in {}", chunk, bytes);
                    }
                }
            }
            let mut all = Record::default();
            for r in replicas.iter().flatten() {
                all.merge(r);
            }
            for r in replicas.iter_mut().flatten() {
                r.merge(&all);
                prop_assert_eq!(&*r, &all);
            }
        }
    }

    fn state() -> impl Strategy<Value = AppendIds> {
        prop::collection::vec((0u128..6, 0u64..20, 0u64..3, 0u64..30), 0..8).prop_map(|writes| {
            let mut ids = AppendIds::default();
            for (id, t, d, now) in writes {
                // Times in milliseconds past NOW; the window is shrunk by starting `now` late.
                ids.insert(id, at(NOW + t * REMEMBER_MS / 10), d, NOW + now * REMEMBER_MS / 10);
            }
            ids
        })
    }

    proptest! {
        #[test]
        fn merge_is_a_join(a in state(), b in state(), c in state()) {
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone();
            ab_c.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone();
            aa.merge(&a);
            prop_assert_eq!(&aa, &a);
        }
    }
}
