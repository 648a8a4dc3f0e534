//! A quorum write, coordinated by a home replica of the key.
//!
//! 1. **Read first.** Every operation depends on the key's current state: its type (a
//!    wrong-type write is refused), its value (Append, CAS), its members (SetRemove), its
//!    observed counter (Delete), and the outcome reported. This replica may have missed writes
//!    a quorum acknowledged (it was unreachable, or wiped), so it reads the key at the
//!    request's level (from R replicas, this one first, with spares asked when one fails or
//!    is slow: [`ReadCoordinator`]) and merges what it finds: with R + W > N every write
//!    acknowledged at QUORUM is seen by a write at QUORUM, and the new state carries it. If
//!    the read cannot reach its level, nothing is written.
//! 2. **Apply here**, so this node's HLC and its counter/set identity stamp the write.
//! 3. **Fan out** the resulting full state ([`ReplicateRound`]) to the other targets (healthy
//!    home replicas, stand-ins holding hints for the unhealthy ones, nodes taking the key
//!    over) and answer once W home replicas, this one included, have it durably. A target
//!    that cannot be reached gets a hint kept here; sends still under way after the answer go
//!    on, and their failures still leave hints.

use std::collections::BTreeMap;

use geokv_cluster::{Level, Outcome, WriteRound};
use geokv_core::{NodeId, Record};

use crate::read::{ReadCommand, ReadCoordinator};
use crate::{Applied, Command, Failure, PeerError, Replicas};

/// The commands of a write; it answers with what was applied.
pub type WriteCommand = Command<Applied>;

/// Sends one stored state to the key's other targets and counts the home replicas that have
/// it. Used by client writes and by states arriving from other regions.
#[derive(Debug)]
pub struct ReplicateRound {
    level: Level,
    n: usize,
    state: Record,
    round: WriteRound,
    /// Targets that have not answered, with the home replica each holds the state for.
    waiting: BTreeMap<NodeId, NodeId>,
    answered: bool,
}

impl ReplicateRound {
    /// Starts sending `state` (already stored on this node). `ship`: the state carries a
    /// client write of this region, which receivers log for the cross-region replicator.
    /// Returns the sends and hints, and whether the round is already over (`Some(result)`:
    /// W = 1 on a home replica, or too few targets).
    pub fn start(
        replicas: &Replicas,
        level: Level,
        state: Record,
        ship: bool,
    ) -> (ReplicateRound, Vec<Command<()>>) {
        let n = replicas.n;
        let mut round = WriteRound::new(replicas.placement.targets.clone(), level.required(n));
        if replicas.is_home() {
            round.ack(replicas.me);
        }
        let (sends, hints) = replicas.fan_out();
        let mut out: Vec<Command<()>> =
            hints.into_iter().map(|home| Command::KeepHint { home, state: state.clone() }).collect();
        let mut waiting = BTreeMap::new();
        for target in sends {
            waiting.insert(target.node, target.hint_for.unwrap_or(target.node));
            out.push(Command::Send { target, state: state.clone(), ship });
        }
        let mut r = ReplicateRound { level, n, state, round, waiting, answered: false };
        out.extend(r.settle());
        (r, out)
    }

    /// A target's answer to a send.
    pub fn on_sent(&mut self, node: NodeId, result: Result<(), PeerError>) -> Vec<Command<()>> {
        let Some(home) = self.waiting.remove(&node) else { return Vec::new() };
        let mut out = Vec::new();
        match result {
            Ok(()) => {
                self.round.ack(node);
            }
            Err(e) => {
                self.round.fail(node);
                // Unreachable: keep the state for it, to hand off when it answers again. A
                // replica that answered and refused (its limits, a corrupt copy) would refuse
                // a hint the same way.
                if e.unreachable() {
                    out.push(Command::KeepHint { home, state: self.state.clone() });
                }
            }
        }
        out.extend(self.settle());
        out
    }

    /// The deadline passed: targets that have not answered get a hint.
    pub fn on_timeout(&mut self) -> Vec<Command<()>> {
        let waiting: Vec<NodeId> = self.waiting.keys().copied().collect();
        let mut out = Vec::new();
        for node in waiting {
            out.extend(self.on_sent(node, Err(PeerError::TimedOut("no answer before the deadline".into()))));
        }
        out
    }

    /// Whether the round answered and expects nothing more.
    pub fn done(&self) -> bool {
        self.answered && self.waiting.is_empty()
    }

    /// Targets that have not answered yet.
    pub fn waiting(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.waiting.keys().copied()
    }

    fn settle(&mut self) -> Vec<Command<()>> {
        if self.answered {
            return Vec::new();
        }
        let result = match self.round.outcome() {
            Outcome::Pending => return Vec::new(),
            Outcome::Reached => Ok(()),
            Outcome::Impossible => Err(Failure::quorum(
                format!(
                    "a {} write needs {} of {} replicas, {} acknowledged ({:?}); the write is stored on those and not rolled back; unreachable replicas get it by hinted handoff",
                    self.level.name(),
                    self.level.required(self.n),
                    self.n,
                    self.round.acked().len(),
                    self.round.acked()
                ),
                true,
            )),
        };
        self.answered = true;
        vec![Command::Respond(result)]
    }
}

#[derive(Debug)]
enum Phase {
    Reading(Box<ReadCoordinator>),
    Applying,
    Replicating(Box<(Applied, ReplicateRound)>),
    Done,
}

/// One client write on a home replica of its key.
#[derive(Debug)]
pub struct WriteCoordinator {
    replicas: Replicas,
    level: Level,
    phase: Phase,
}

impl WriteCoordinator {
    /// Starts the write. `writer`: this node's HLC time (see [`ReadCoordinator::start`]).
    pub fn start(replicas: Replicas, level: Level, writer: u64) -> (WriteCoordinator, Vec<WriteCommand>) {
        let (read, cmds) = ReadCoordinator::start(&replicas, level, Some(writer));
        let mut w = WriteCoordinator { replicas, level, phase: Phase::Reading(Box::new(read)) };
        let out = w.after_read(cmds);
        (w, out)
    }

    /// A replica's answer to the first read.
    pub fn on_fetched(
        &mut self,
        node: NodeId,
        answer: Result<Option<Record>, PeerError>,
    ) -> Vec<WriteCommand> {
        let Phase::Reading(read) = &mut self.phase else { return Vec::new() };
        let cmds = read.on_fetched(node, answer);
        self.after_read(cmds)
    }

    /// The first read's replicas are slow to answer: ask the spare ones too (see
    /// [`ReadCoordinator::on_slow`]).
    pub fn on_slow(&mut self) -> Vec<WriteCommand> {
        let Phase::Reading(read) = &mut self.phase else { return Vec::new() };
        let cmds = read.on_slow();
        self.after_read(cmds)
    }

    /// Whether the write still waits for its first read with replicas left to ask: the driver
    /// calls [`WriteCoordinator::on_slow`] when that read is slow.
    pub fn may_speculate(&self) -> bool {
        matches!(&self.phase, Phase::Reading(read) if read.has_spare())
    }

    /// The result of [`Command::Apply`]. (A write the store refused is answered by the
    /// driver with the store's error: nothing was stored.)
    pub fn on_applied(&mut self, applied: Applied) -> Vec<WriteCommand> {
        if !matches!(self.phase, Phase::Applying) {
            return Vec::new();
        }
        // A refused swap, or an operation that changed nothing (stored nowhere): answered as is.
        let Applied::Written(outcome, rec) = &applied else {
            self.phase = Phase::Done;
            return vec![Command::Respond(Ok(applied))];
        };
        if outcome.changes_nothing() {
            self.phase = Phase::Done;
            return vec![Command::Respond(Ok(applied))];
        }
        let (round, cmds) = ReplicateRound::start(&self.replicas, self.level, rec.clone(), true);
        self.phase = Phase::Replicating(Box::new((applied, round)));
        self.after_replicate(cmds)
    }

    /// A target's answer to the new state.
    pub fn on_sent(&mut self, node: NodeId, result: Result<(), PeerError>) -> Vec<WriteCommand> {
        let Phase::Replicating(r) = &mut self.phase else { return Vec::new() };
        let round = &mut r.1;
        let cmds = round.on_sent(node, result);
        self.after_replicate(cmds)
    }

    /// The deadline passed.
    pub fn on_timeout(&mut self) -> Vec<WriteCommand> {
        match &mut self.phase {
            Phase::Reading(read) => {
                let cmds = read.on_timeout();
                self.after_read(cmds)
            }
            Phase::Replicating(r) => {
                let cmds = r.1.on_timeout();
                self.after_replicate(cmds)
            }
            Phase::Applying | Phase::Done => Vec::new(),
        }
    }

    /// Whether the write answered and expects nothing more (no send under way).
    pub fn done(&self) -> bool {
        match &self.phase {
            Phase::Done => true,
            Phase::Replicating(r) => r.1.done(),
            _ => false,
        }
    }

    fn after_read(&mut self, cmds: Vec<ReadCommand>) -> Vec<WriteCommand> {
        let mut out = Vec::new();
        for cmd in cmds {
            match cmd {
                Command::Respond(Ok(current)) => {
                    self.phase = Phase::Applying;
                    out.extend(current.map(|state| Command::MergeLocal { state }));
                    out.push(Command::Apply);
                }
                Command::Respond(Err(f)) => {
                    self.phase = Phase::Done;
                    out.push(Command::Respond(Err(self.nothing_written(f))));
                }
                other => out.push(other.map_answer(|_| unreachable!("handled above"))),
            }
        }
        out
    }

    /// The read before the write failed: nothing was stored, and the answer says so.
    fn nothing_written(&self, f: Failure) -> Failure {
        if f.kind != crate::Kind::Unavailable {
            return f;
        }
        let level = self.level.name();
        Failure::quorum(
            format!(
                "a {level} write first reads the key from the replicas a {level} read needs, and that failed ({}); nothing was written",
                f.detail()
            ),
            false,
        )
    }

    fn after_replicate(&mut self, cmds: Vec<Command<()>>) -> Vec<WriteCommand> {
        let Phase::Replicating(r) = &self.phase else { return Vec::new() };
        let applied = r.0.clone();
        cmds.into_iter()
            .map(|cmd| match cmd {
                Command::Respond(r) => Command::Respond(r.map(|()| applied.clone())),
                other => other.map_answer(|_| unreachable!("handled above")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{counter, key_and_home, replicas_at};
    use crate::Kind;
    use geokv_core::OpOutcome;
    use geokv_topology::Target;

    fn send(node: NodeId, state: &Record) -> WriteCommand {
        Command::Send { target: Target { node, hint_for: None }, state: state.clone(), ship: true }
    }

    #[test]
    fn a_write_reads_merges_applies_then_sends_and_answers_at_w() {
        let (key, home) = key_and_home();
        let r = replicas_at(home[0], &key, |_| true);
        let (mut w, cmds) = WriteCoordinator::start(r, Level::Quorum, 42);
        // R = 2: this replica and the next; the third is a spare.
        assert_eq!(cmds.len(), 2, "{cmds:?}");
        assert!(cmds.iter().all(|c| matches!(c, Command::Fetch { writer: Some(42), .. })));
        assert!(w.may_speculate());
        let old = counter(home[1], 5);
        assert!(w.on_fetched(home[0], Ok(None)).is_empty());
        let cmds = w.on_fetched(home[1], Ok(Some(old.clone())));
        assert_eq!(
            cmds,
            vec![
                Command::Repair { node: home[0], state: old.clone() },
                Command::MergeLocal { state: old.clone() },
                Command::Apply
            ]
        );
        let new = counter(home[0], 6);
        let applied = Applied::Written(OpOutcome::Counter { value: 6 }, new.clone());
        assert_eq!(w.on_applied(applied.clone()), vec![send(home[1], &new), send(home[2], &new)]);
        assert_eq!(w.on_sent(home[2], Ok(())), vec![Command::Respond(Ok(applied))]);
        assert!(!w.done(), "a send is still under way");
        // The late send fails: its replica gets a hint, nothing is answered again.
        let late = w.on_sent(home[1], Err(PeerError::Transport("reset".into())));
        assert_eq!(late, vec![Command::KeepHint { home: home[1], state: new }]);
        assert!(w.done());
    }

    #[test]
    fn a_write_whose_read_fails_stores_nothing_and_says_so() {
        let (key, home) = key_and_home();
        let r = replicas_at(home[0], &key, |_| true);
        let (mut w, _) = WriteCoordinator::start(r, Level::Quorum, 1);
        w.on_fetched(home[0], Ok(None));
        let spare = w.on_fetched(home[1], Err(PeerError::TimedOut("slow".into())));
        assert_eq!(spare, vec![Command::Fetch { node: home[2], writer: Some(1) }]);
        assert!(!w.may_speculate(), "every replica was asked");
        let cmds = w.on_fetched(home[2], Err(PeerError::Transport("reset".into())));
        let [Command::Respond(Err(f))] = &cmds[..] else { panic!("{cmds:?}") };
        assert!(!f.maybe_applied);
        assert!(f.message.starts_with("quorum not reached: a QUORUM write first reads"), "{f}");
        assert!(f.message.ends_with("nothing was written"), "{f}");
        assert!(w.done());
    }

    #[test]
    fn a_refused_send_is_not_hinted_and_a_lost_quorum_may_have_applied() {
        let (key, home) = key_and_home();
        let r = replicas_at(home[0], &key, |_| true);
        let (mut w, _) = WriteCoordinator::start(r, Level::All, 1);
        for &h in &home {
            w.on_fetched(h, Ok(None));
        }
        let new = counter(home[0], 1);
        w.on_applied(Applied::Written(OpOutcome::Counter { value: 1 }, new.clone()));
        let refusal = PeerError::Answered(Failure::refused(Kind::ResourceExhausted, "too big"));
        let cmds = w.on_sent(home[1], Err(refusal));
        let [Command::Respond(Err(f))] = &cmds[..] else { panic!("{cmds:?}") };
        assert!(f.maybe_applied, "stored here and not rolled back");
        assert!(f.message.contains("a ALL write needs 3 of 3 replicas, 1 acknowledged"), "{f}");
        assert_eq!(w.on_timeout(), vec![Command::KeepHint { home: home[2], state: new }]);
        assert!(w.done());
    }

    #[test]
    fn a_down_home_replica_is_covered_by_a_stand_in_and_w_one_answers_at_once() {
        let (key, home) = key_and_home();
        let r = replicas_at(home[0], &key, |id| id != home[1]);
        let spare = r.placement.targets.iter().find(|t| t.hint_for.is_some()).copied().expect("a stand-in");
        assert_eq!(spare.hint_for, Some(home[1]));
        let (mut w, _) = WriteCoordinator::start(r, Level::One, 1);
        let cmds = w.on_fetched(home[0], Ok(None));
        assert_eq!(cmds, vec![Command::Apply]);
        let new = counter(home[0], 1);
        let applied = Applied::Written(OpOutcome::Counter { value: 1 }, new.clone());
        let cmds = w.on_applied(applied.clone());
        assert_eq!(
            cmds,
            vec![
                send(home[2], &new),
                Command::Send { target: spare, state: new.clone(), ship: true },
                Command::Respond(Ok(applied)),
            ]
        );
        // The stand-in cannot be reached: the coordinator keeps the hint for the home replica.
        let cmds = w.on_sent(spare.node, Err(PeerError::NeverSent("refused".into())));
        assert_eq!(cmds, vec![Command::KeepHint { home: home[1], state: new }]);
    }

    #[test]
    fn a_failed_swap_answers_without_sending() {
        let (key, home) = key_and_home();
        let (mut w, _) = WriteCoordinator::start(replicas_at(home[0], &key, |_| true), Level::One, 1);
        w.on_fetched(home[0], Ok(None));
        let cmds = w.on_applied(Applied::CasFailed(None));
        assert_eq!(cmds, vec![Command::Respond(Ok(Applied::CasFailed(None)))]);
        assert!(w.done());
    }

    #[test]
    fn an_expire_of_an_absent_key_answers_without_sending() {
        let (key, home) = key_and_home();
        let (mut w, _) = WriteCoordinator::start(replicas_at(home[0], &key, |_| true), Level::All, 1);
        for n in home {
            w.on_fetched(n, Ok(None));
        }
        let nothing = Applied::Written(OpOutcome::Expired { existed: false }, Record::default());
        assert_eq!(w.on_applied(nothing.clone()), vec![Command::Respond(Ok(nothing))]);
        assert!(w.done());
    }
}
