//! Quorum bookkeeping for one write or read.

use std::collections::{BTreeMap, BTreeSet};

use geokv_core::{Crdt, NodeId, Record};
use geokv_topology::Target;

/// How many of a key's N replicas must answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    One,
    Quorum,
    All,
}

impl Level {
    /// Answers required out of `n` replicas: ONE = 1, QUORUM = ⌊n/2⌋ + 1, ALL = n. With
    /// W = R = QUORUM, R + W > N, so a read overlaps every acknowledged write.
    pub fn required(self, n: usize) -> usize {
        match self {
            Level::One => 1.min(n),
            Level::Quorum => n / 2 + 1,
            Level::All => n,
        }
    }
}

/// Where a round stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not enough answers yet, and enough replicas still outstanding.
    Pending,
    /// The required number of answers arrived.
    Reached,
    /// Too many replicas failed for the requirement to be met.
    Impossible,
}

fn outcome(ok: usize, failed: usize, total: usize, needed: usize) -> Outcome {
    if ok >= needed {
        Outcome::Reached
    } else if total - failed < needed {
        Outcome::Impossible
    } else {
        Outcome::Pending
    }
}

/// One quorum write: the targets it was sent to and their acknowledgements. Only home
/// replicas count toward W: a stand-in keeps a hint that reads do not see, so counting it
/// (Dynamo's sloppy quorum) would break R + W > N. Stand-ins still get the write, best effort.
#[derive(Clone, Debug)]
pub struct WriteRound {
    targets: Vec<Target>,
    needed: usize,
    acked: BTreeSet<NodeId>,
    failed: BTreeSet<NodeId>,
}

impl WriteRound {
    /// A write to `targets` that needs `needed` acknowledgements.
    pub fn new(targets: Vec<Target>, needed: usize) -> Self {
        WriteRound { targets, needed, acked: BTreeSet::new(), failed: BTreeSet::new() }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    fn known(&self, node: NodeId) -> bool {
        self.targets.iter().any(|t| t.node == node && t.hint_for.is_none())
            && !self.acked.contains(&node)
            && !self.failed.contains(&node)
    }

    /// Records an acknowledgement (repeated or unknown ones are ignored).
    pub fn ack(&mut self, node: NodeId) -> Outcome {
        if self.known(node) {
            self.acked.insert(node);
        }
        self.outcome()
    }

    /// Records a failure or timeout of one target.
    pub fn fail(&mut self, node: NodeId) -> Outcome {
        if self.known(node) {
            self.failed.insert(node);
        }
        self.outcome()
    }

    pub fn outcome(&self) -> Outcome {
        let homes = self.targets.iter().filter(|t| t.hint_for.is_none()).count();
        outcome(self.acked.len(), self.failed.len(), homes, self.needed)
    }

    pub fn acked(&self) -> &BTreeSet<NodeId> {
        &self.acked
    }
}

/// One quorum read: the states replicas returned, merged (never "pick the newest": counters
/// and sets need the merge), and the replicas that lag behind the merge (read repair).
#[derive(Clone, Debug)]
pub struct ReadRound {
    replicas: Vec<NodeId>,
    needed: usize,
    answers: BTreeMap<NodeId, Option<Record>>,
    failed: BTreeSet<NodeId>,
}

impl ReadRound {
    pub fn new(replicas: Vec<NodeId>, needed: usize) -> Self {
        ReadRound { replicas, needed, answers: BTreeMap::new(), failed: BTreeSet::new() }
    }

    fn known(&self, node: NodeId) -> bool {
        self.replicas.contains(&node) && !self.answers.contains_key(&node) && !self.failed.contains(&node)
    }

    /// Records a replica's state (`None`: it has nothing for the key).
    pub fn answer(&mut self, node: NodeId, state: Option<Record>) -> Outcome {
        if self.known(node) {
            self.answers.insert(node, state);
        }
        self.outcome()
    }

    pub fn fail(&mut self, node: NodeId) -> Outcome {
        if self.known(node) {
            self.failed.insert(node);
        }
        self.outcome()
    }

    pub fn outcome(&self) -> Outcome {
        outcome(self.answers.len(), self.failed.len(), self.replicas.len(), self.needed)
    }

    /// The merge of every state received so far (`None` if no replica had the key).
    pub fn merged(&self) -> Option<Record> {
        self.answers.values().flatten().fold(None, |acc: Option<Record>, r| match acc {
            None => Some(r.clone()),
            Some(mut m) => {
                m.merge(r);
                Some(m)
            }
        })
    }

    /// Replicas that answered with a state older than the merge: they should be sent it.
    pub fn stale(&self, merged: &Record) -> Vec<NodeId> {
        self.answers
            .iter()
            .filter(|(_, state)| state.as_ref() != Some(merged))
            .map(|(&node, _)| node)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geokv_core::{apply, Limits, Op, Stamp, View};

    fn t(node: NodeId) -> Target {
        Target { node, hint_for: None }
    }

    #[test]
    fn levels_map_to_counts_with_overlapping_quorums() {
        for n in 1..=7 {
            assert_eq!(Level::One.required(n), 1);
            assert_eq!(Level::All.required(n), n);
            let q = Level::Quorum.required(n);
            assert!(q + q > n, "quorums intersect for n = {n}");
            assert!(q <= n);
        }
        assert_eq!(Level::Quorum.required(3), 2);
        assert_eq!(Level::Quorum.required(4), 3);
    }

    #[test]
    fn a_write_round_succeeds_at_w_and_fails_when_w_is_out_of_reach() {
        let mut w = WriteRound::new(vec![t(1), t(2), t(3)], 2);
        assert_eq!(w.ack(1), Outcome::Pending);
        assert_eq!(w.ack(1), Outcome::Pending, "a repeated ack counts once");
        assert_eq!(w.ack(9), Outcome::Pending, "an unknown node does not count");
        assert_eq!(w.ack(3), Outcome::Reached);

        let mut w = WriteRound::new(vec![t(1), t(2), t(3)], 2);
        assert_eq!(w.fail(1), Outcome::Pending);
        assert_eq!(w.fail(2), Outcome::Impossible);
        assert_eq!(w.ack(2), Outcome::Impossible, "a failed node cannot ack later");
    }

    #[test]
    fn hinted_stand_ins_do_not_count_toward_the_write_quorum() {
        let targets = vec![t(1), Target { node: 4, hint_for: Some(2) }, t(3)];
        let mut w = WriteRound::new(targets.clone(), 2);
        w.ack(1);
        assert_eq!(w.ack(4), Outcome::Pending, "a hint is not a replica a read will ask");
        assert_eq!(w.ack(3), Outcome::Reached);
        let all = WriteRound::new(targets, 3);
        assert_eq!(all.outcome(), Outcome::Impossible, "ALL cannot be met with a home replica down");
    }

    fn state(node: NodeId, time: u64, op: Op, base: Option<&Record>) -> Record {
        apply(base, &op, Stamp::new(time, node), 0, &Limits::default()).unwrap().record
    }

    #[test]
    fn a_read_merges_counters_from_every_answer_and_names_stale_replicas() {
        let a = state(1, 1, Op::Increment { delta: 2, ttl_ms: None }, None);
        let b = state(2, 2, Op::Increment { delta: 5, ttl_ms: None }, None);
        let mut r = ReadRound::new(vec![1, 2, 3], 2);
        assert_eq!(r.answer(1, Some(a)), Outcome::Pending);
        assert_eq!(r.answer(2, Some(b)), Outcome::Reached);
        let merged = r.merged().unwrap();
        assert_eq!(merged.view(0), Some(View::Counter(7)), "merge, not newest-wins");
        assert_eq!(r.stale(&merged), vec![1, 2]);
        r.answer(3, None);
        assert_eq!(r.stale(&merged), vec![1, 2, 3], "a replica without the key is repaired too");
    }

    #[test]
    fn a_read_with_every_replica_current_repairs_nothing() {
        let a = state(1, 1, Op::Put { value: b"x".to_vec(), ttl_ms: None }, None);
        let mut r = ReadRound::new(vec![1, 2], 2);
        r.answer(1, Some(a.clone()));
        r.answer(2, Some(a.clone()));
        assert_eq!(r.merged(), Some(a.clone()));
        assert!(r.stale(&a).is_empty());
        let mut none = ReadRound::new(vec![1, 2], 1);
        assert_eq!(none.answer(2, None), Outcome::Reached);
        assert_eq!(none.merged(), None);
    }

    #[test]
    fn a_read_fails_when_too_many_replicas_fail() {
        let mut r = ReadRound::new(vec![1, 2, 3], 2);
        r.fail(1);
        assert_eq!(r.fail(3), Outcome::Impossible);
    }
}
