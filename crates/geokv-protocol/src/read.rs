//! A quorum read, coordinated: ask R of the healthy home replicas (this node first, then ring
//! order), merge their states (never "pick the newest": counters and sets need the merge),
//! answer, and bring the replicas that were behind (or whose state was corrupt) up to the
//! merge (read repair).
//!
//! The other healthy home replicas are spares: one is asked as soon as an asked replica fails
//! (an error, a refusal, a corrupt state), and all of them when the driver reports the asked
//! ones slow ([`ReadCoordinator::on_slow`], a speculative retry as Cassandra's). Asking every
//! healthy replica and keeping the first R answers would cost N - R fetches per read that are
//! thrown away: a third of a QUORUM write's messages between replicas.

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
    /// Healthy home replicas not asked yet, in the order they would be.
    spare: Vec<NodeId>,
    /// The coordinating writer's HLC time sent with every fetch (see [`ReadCoordinator::start`]).
    writer: Option<u64>,
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
        // This node first (its own state costs no message), then ring order.
        let mut candidates = replicas.healthy_home.clone();
        if let Some(i) = candidates.iter().position(|&c| c == replicas.me) {
            candidates[..=i].rotate_right(1);
        }
        let mut read = ReadCoordinator {
            level,
            n,
            needed,
            round: ReadRound::new(candidates.clone(), needed),
            waiting: BTreeSet::new(),
            spare: Vec::new(),
            writer,
            refused: None,
            corrupt: Vec::new(),
            answered: false,
        };
        if candidates.len() < needed {
            read.answered = true;
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
        read.spare = candidates.split_off(needed);
        read.waiting = candidates.iter().copied().collect();
        let fetches = candidates.into_iter().map(|node| Command::Fetch { node, writer }).collect();
        (read, fetches)
    }

    /// The replicas asked have not all answered within the driver's patience (well short of
    /// the deadline): every spare is asked too, and the first R answers still make the read.
    pub fn on_slow(&mut self) -> Vec<ReadCommand> {
        if self.answered {
            return Vec::new();
        }
        let spare = std::mem::take(&mut self.spare);
        self.waiting.extend(spare.iter().copied());
        let writer = self.writer;
        spare.into_iter().map(|node| Command::Fetch { node, writer }).collect()
    }

    /// Whether some healthy home replica has not been asked yet.
    pub fn has_spare(&self) -> bool {
        !self.spare.is_empty()
    }

    /// One replica's answer (this node's own included); a failure asks a spare in its place.
    pub fn on_fetched(
        &mut self,
        node: NodeId,
        answer: Result<Option<Record>, PeerError>,
    ) -> Vec<ReadCommand> {
        if !self.waiting.remove(&node) {
            return Vec::new();
        }
        let mut out = Vec::new();
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
                if !self.answered && !self.spare.is_empty() {
                    let next = self.spare.remove(0);
                    self.waiting.insert(next);
                    out.push(Command::Fetch { node: next, writer: self.writer });
                }
            }
        }
        out.extend(self.settle());
        out
    }

    /// The deadline passed: replicas that have not answered, and those never asked, count as
    /// failed.
    pub fn on_timeout(&mut self) -> Vec<ReadCommand> {
        for node in std::mem::take(&mut self.waiting).into_iter().chain(std::mem::take(&mut self.spare)) {
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
    fn a_quorum_read_asks_itself_and_the_next_replica_and_keeps_the_third_spare() {
        let (key, home) = key_and_home();
        let r = replicas_at(home[1], &key, |_| true);
        let (mut read, cmds) = ReadCoordinator::start(&r, Level::Quorum, Some(7));
        let fetch = |node| Command::Fetch { node, writer: Some(7) };
        assert_eq!(cmds, vec![fetch(home[1]), fetch(home[0])]);
        assert!(read.has_spare());
        // Slow: the spare is asked too, once; the first two answers make the read.
        assert_eq!(read.on_slow(), vec![fetch(home[2])]);
        assert!(read.on_slow().is_empty());
        assert!(!read.has_spare());
        assert!(read.on_fetched(home[2], Ok(None)).is_empty());
        assert_eq!(read.on_fetched(home[0], Ok(None)), vec![Command::Respond(Ok(None))]);
        assert!(!read.done(), "home[1] has not answered");
        assert!(read.on_fetched(home[1], Ok(None)).is_empty());
        assert!(read.done());
    }

    #[test]
    fn a_failed_replica_is_replaced_by_the_spare_at_once() {
        let (key, home) = key_and_home();
        let (mut read, _) =
            ReadCoordinator::start(&replicas_at(home[0], &key, |_| true), Level::Quorum, None);
        let cmds = read.on_fetched(home[1], Err(PeerError::NeverSent("refused".into())));
        assert_eq!(cmds, vec![Command::Fetch { node: home[2], writer: None }]);
        read.on_fetched(home[0], Ok(None));
        assert_eq!(read.on_fetched(home[2], Ok(None)), vec![Command::Respond(Ok(None))]);
        assert!(read.done());
    }

    #[test]
    fn one_and_all_ask_one_and_every_replica() {
        let (key, home) = key_and_home();
        let r = replicas_at(home[2], &key, |_| true);
        let (_, one) = ReadCoordinator::start(&r, Level::One, None);
        assert_eq!(one, vec![Command::Fetch { node: home[2], writer: None }]);
        let (read, all) = ReadCoordinator::start(&r, Level::All, None);
        assert_eq!(all.len(), 3);
        assert!(!read.has_spare());
        // A coordinator that is not a home replica asks in ring order.
        let outsider = (1..=4).find(|id| !home.contains(id)).expect("a node that is not a home replica");
        let r = replicas_at(outsider, &key, |_| true);
        let (_, cmds) = ReadCoordinator::start(&r, Level::Quorum, None);
        let asked: Vec<ReadCommand> =
            r.healthy_home[..2].iter().map(|&node| Command::Fetch { node, writer: None }).collect();
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
        // The third replica was never asked: an answer from it changes nothing.
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
        assert_eq!(
            read.on_fetched(home[1], Err(corrupt)),
            vec![Command::Fetch { node: home[2], writer: None }]
        );
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
        let cmds = read.on_fetched(home[1], Err(PeerError::Transport("reset".into())));
        assert_eq!(cmds, vec![Command::Fetch { node: home[2], writer: None }]);
        let cmds = read.on_timeout();
        let [Command::Respond(Err(f))] = &cmds[..] else { panic!("{cmds:?}") };
        assert!(f.message.starts_with("quorum not reached: a QUORUM read needs 2 of 3"), "{f}");
        assert!(read.done());
    }
}
