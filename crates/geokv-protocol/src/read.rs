//! A quorum read, coordinated: ask the healthy home replicas, merge the first R states (never
//! "pick the newest": counters and sets need the merge), answer, and bring the replicas that
//! were behind (or whose state was corrupt) up to the merge (read repair).

use std::collections::BTreeSet;

use geokv_cluster::{Level, Outcome, ReadRound};
use geokv_core::{NodeId, Record};

use crate::{Command, Failure, Kind, PeerError, Replicas};

/// The commands of a read; it answers with the merged state (`None`: no replica has the key).
pub type ReadCommand = Command<Option<Record>>;

#[derive(Debug)]
pub struct ReadCoordinator {
    level: Level,
    n: usize,
    needed: usize,
    round: ReadRound,
    /// Replicas asked that have not answered.
    waiting: BTreeSet<NodeId>,
    /// A replica's own refusal: says more than "too few answered" if the read fails.
    refused: Option<Failure>,
    /// Replicas whose stored state failed its checksum: not counted toward the quorum (their
    /// state is unknown), repaired with the merged state once the others answered.
    corrupt: Vec<NodeId>,
    answered: bool,
}

impl ReadCoordinator {
    /// Starts a read at `level`. `writer`: this node's HLC time when the read comes before a
    /// write it coordinates (replicas refuse it when this node's clock runs too far ahead).
    pub fn start(
        replicas: &Replicas,
        level: Level,
        writer: Option<u64>,
    ) -> (ReadCoordinator, Vec<ReadCommand>) {
        let n = replicas.n;
        let needed = level.required(n);
        let candidates = replicas.healthy_home.clone();
        let mut read = ReadCoordinator {
            level,
            n,
            needed,
            round: ReadRound::new(candidates.clone(), needed),
            waiting: candidates.iter().copied().collect(),
            refused: None,
            corrupt: Vec::new(),
            answered: false,
        };
        if candidates.len() < needed {
            read.answered = true;
            read.waiting.clear();
            let failure = Failure::quorum(
                format!(
                    "a {} read needs {needed} of {n} replicas, {} are reachable",
                    level.name(),
                    candidates.len()
                ),
                false,
            );
            return (read, vec![Command::Respond(Err(failure))]);
        }
        let fetches = candidates.into_iter().map(|node| Command::Fetch { node, writer }).collect();
        (read, fetches)
    }

    /// One replica's answer (this node's own included).
    pub fn on_fetched(
        &mut self,
        node: NodeId,
        answer: Result<Option<Record>, PeerError>,
    ) -> Vec<ReadCommand> {
        if !self.waiting.remove(&node) {
            return Vec::new();
        }
        match answer {
            Ok(state) => {
                self.round.answer(node, state);
            }
            Err(e) => {
                if let PeerError::Answered(f) = e {
                    if f.kind == Kind::DataLoss {
                        self.corrupt.push(node);
                    }
                    self.refused = Some(f);
                }
                self.round.fail(node);
            }
        }
        self.settle()
    }

    /// The deadline passed: replicas that have not answered count as failed.
    pub fn on_timeout(&mut self) -> Vec<ReadCommand> {
        for node in std::mem::take(&mut self.waiting) {
            self.round.fail(node);
        }
        self.settle()
    }

    /// Whether the read answered and expects nothing more.
    pub fn done(&self) -> bool {
        self.answered && self.waiting.is_empty()
    }

    fn settle(&mut self) -> Vec<ReadCommand> {
        if self.answered {
            return Vec::new();
        }
        match self.round.outcome() {
            Outcome::Pending => Vec::new(),
            Outcome::Reached => {
                self.answered = true;
                let merged = self.round.merged();
                let mut out = Vec::new();
                if let Some(m) = &merged {
                    let mut stale = self.round.stale(m);
                    stale.extend(self.corrupt.iter().copied());
                    out.extend(stale.into_iter().map(|node| Command::Repair { node, state: m.clone() }));
                }
                out.push(Command::Respond(Ok(merged)));
                out
            }
            Outcome::Impossible => {
                self.answered = true;
                let failure = self.refused.take().unwrap_or_else(|| {
                    Failure::quorum(
                        format!(
                            "a {} read needs {} of {} replicas and too few answered",
                            self.level.name(),
                            self.needed,
                            self.n
                        ),
                        false,
                    )
                });
                vec![Command::Respond(Err(failure))]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{counter, key_and_home, replicas_at};

    #[test]
    fn a_quorum_read_asks_every_healthy_home_replica() {
        let (key, home) = key_and_home();
        let r = replicas_at(home[0], &key, |_| true);
        let (_, cmds) = ReadCoordinator::start(&r, Level::Quorum, Some(7));
        let asked: Vec<ReadCommand> =
            home.iter().map(|&node| Command::Fetch { node, writer: Some(7) }).collect();
        assert_eq!(cmds, asked);
    }

    #[test]
    fn a_read_that_cannot_reach_its_level_fails_at_once() {
        let (key, home) = key_and_home();
        let r = replicas_at(home[0], &key, |id| id == home[0]);
        let (read, cmds) = ReadCoordinator::start(&r, Level::Quorum, None);
        let [Command::Respond(Err(f))] = &cmds[..] else { panic!("{cmds:?}") };
        assert_eq!(f.kind, Kind::Unavailable);
        assert!(f.message.contains("needs 2 of 3 replicas, 1 are reachable"), "{f}");
        assert!(read.done());
    }

    #[test]
    fn the_answer_merges_the_quorum_and_repairs_the_stale_replica() {
        let (key, home) = key_and_home();
        let (mut read, _) =
            ReadCoordinator::start(&replicas_at(home[0], &key, |_| true), Level::Quorum, None);
        let (a, b) = (counter(home[0], 2), counter(home[1], 3));
        assert!(read.on_fetched(home[0], Ok(Some(a.clone()))).is_empty());
        let cmds = read.on_fetched(home[1], Ok(Some(b.clone())));
        let mut merged = a.clone();
        geokv_core::Crdt::merge(&mut merged, &b);
        // Both answered part of the merge; repairs go in node order.
        let (lo, hi) = (home[0].min(home[1]), home[0].max(home[1]));
        assert_eq!(
            cmds,
            vec![
                Command::Repair { node: lo, state: merged.clone() },
                Command::Repair { node: hi, state: merged.clone() },
                Command::Respond(Ok(Some(merged))),
            ]
        );
        // The third answer comes late: nothing more to do.
        assert!(read.on_fetched(home[2], Ok(None)).is_empty());
        assert!(read.done());
    }

    #[test]
    fn a_corrupt_replica_does_not_count_and_is_repaired() {
        let (key, home) = key_and_home();
        let (mut read, _) =
            ReadCoordinator::start(&replicas_at(home[0], &key, |_| true), Level::Quorum, None);
        let rec = counter(home[0], 1);
        read.on_fetched(home[0], Ok(Some(rec.clone())));
        let corrupt = PeerError::Answered(Failure::refused(Kind::DataLoss, "checksum"));
        assert!(read.on_fetched(home[1], Err(corrupt)).is_empty());
        let cmds = read.on_fetched(home[2], Ok(Some(rec.clone())));
        assert_eq!(
            cmds,
            vec![Command::Repair { node: home[1], state: rec.clone() }, Command::Respond(Ok(Some(rec)))]
        );
    }

    #[test]
    fn a_replicas_refusal_is_the_answer_when_the_read_fails() {
        let (key, home) = key_and_home();
        let (mut read, _) = ReadCoordinator::start(&replicas_at(home[0], &key, |_| true), Level::All, None);
        read.on_fetched(home[0], Ok(None));
        let drift = Failure::refused(Kind::FailedPrecondition, "clock ahead");
        let cmds = read.on_fetched(home[1], Err(PeerError::Answered(drift.clone())));
        assert_eq!(cmds, vec![Command::Respond(Err(drift))]);
    }

    #[test]
    fn replicas_silent_at_the_deadline_fail_the_read() {
        let (key, home) = key_and_home();
        let (mut read, _) =
            ReadCoordinator::start(&replicas_at(home[0], &key, |_| true), Level::Quorum, None);
        read.on_fetched(home[0], Ok(None));
        read.on_fetched(home[1], Err(PeerError::Transport("reset".into())));
        let cmds = read.on_timeout();
        let [Command::Respond(Err(f))] = &cmds[..] else { panic!("{cmds:?}") };
        assert!(f.message.starts_with("quorum not reached: a QUORUM read needs 2 of 3"), "{f}");
        assert!(read.done());
    }
}
