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

    /// The level's name as clients write it.
    pub fn name(self) -> &'static str {
        match self {
            Level::One => "ONE",
            Level::Quorum => "QUORUM",
            Level::All => "ALL",
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

/// Who of a set of eligible replicas answered or failed, against a required count.
#[derive(Clone, Debug)]
struct Tally {
    eligible: BTreeSet<NodeId>,
    needed: usize,
    ok: BTreeSet<NodeId>,
    failed: BTreeSet<NodeId>,
}

impl Tally {
    fn new(eligible: impl IntoIterator<Item = NodeId>, needed: usize) -> Self {
        Tally {
            eligible: eligible.into_iter().collect(),
            needed,
            ok: BTreeSet::new(),
            failed: BTreeSet::new(),
        }
    }

    /// Whether `node` may still answer (eligible, and neither answered nor failed yet).
    fn open(&self, node: NodeId) -> bool {
        self.eligible.contains(&node) && !self.ok.contains(&node) && !self.failed.contains(&node)
    }

    /// Records an answer; returns whether it counted (repeated or unknown ones do not).
    fn ok(&mut self, node: NodeId) -> bool {
        self.open(node) && self.ok.insert(node)
    }

    fn fail(&mut self, node: NodeId) {
        if self.open(node) {
            self.failed.insert(node);
        }
    }

    fn outcome(&self) -> Outcome {
        if self.ok.len() >= self.needed {
            Outcome::Reached
        } else if self.eligible.len() - self.failed.len() < self.needed {
            Outcome::Impossible
        } else {
            Outcome::Pending
        }
    }
}

/// One quorum write: the targets it was sent to and their acknowledgements. Only home
/// replicas count toward W: a stand-in keeps a hint that reads do not see, so counting it
/// (Dynamo's sloppy quorum) would break R + W > N. Stand-ins still get the write, best effort.
#[derive(Clone, Debug)]
pub struct WriteRound {
    targets: Vec<Target>,
    tally: Tally,
}

impl WriteRound {
    /// A write to `targets` that needs `needed` acknowledgements from home replicas.
    pub fn new(targets: Vec<Target>, needed: usize) -> Self {
        let homes = targets.iter().filter(|t| t.hint_for.is_none()).map(|t| t.node);
        WriteRound { tally: Tally::new(homes, needed), targets }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Records an acknowledgement (repeated, unknown or stand-in ones do not count).
    pub fn ack(&mut self, node: NodeId) -> Outcome {
        self.tally.ok(node);
        self.outcome()
    }

    /// Records a failure or timeout of one target.
    pub fn fail(&mut self, node: NodeId) -> Outcome {
        self.tally.fail(node);
        self.outcome()
    }

    pub fn outcome(&self) -> Outcome {
        self.tally.outcome()
    }

    pub fn acked(&self) -> &BTreeSet<NodeId> {
        &self.tally.ok
    }
}

/// One quorum read: the states replicas returned, merged (never "pick the newest": counters
/// and sets need the merge), and the replicas that lag behind the merge (read repair).
#[derive(Clone, Debug)]
pub struct ReadRound {
    tally: Tally,
    answers: BTreeMap<NodeId, Option<Record>>,
}

impl ReadRound {
    pub fn new(replicas: Vec<NodeId>, needed: usize) -> Self {
        ReadRound { tally: Tally::new(replicas, needed), answers: BTreeMap::new() }
    }

    /// Records a replica's state (`None`: it has nothing for the key).
    pub fn answer(&mut self, node: NodeId, state: Option<Record>) -> Outcome {
        if self.tally.ok(node) {
            self.answers.insert(node, state);
        }
        self.outcome()
    }

    pub fn fail(&mut self, node: NodeId) -> Outcome {
        self.tally.fail(node);
        self.outcome()
    }

    pub fn outcome(&self) -> Outcome {
        self.tally.outcome()
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
