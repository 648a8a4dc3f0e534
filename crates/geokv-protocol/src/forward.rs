//! A client write this node is not a home replica of, handed to one that is, with the retry
//! rule: a call that failed after it may have reached its coordinator is tried on the next
//! home replica only if running the write twice is harmless ([`repeatable`]).

use geokv_core::NodeId;

use crate::{repeatable, Action, Applied, Command, Failure, PeerError};

pub type ForwardCommand = Command<Applied>;

#[derive(Debug)]
pub struct Forwarder {
    home: Vec<NodeId>,
    /// Healthy home replicas not tried yet, in ring order.
    left: std::collections::VecDeque<NodeId>,
    calling: Option<NodeId>,
    retry_safe: bool,
    /// Whether some call may have reached its coordinator (and run the write).
    maybe_applied: bool,
    last_error: Option<String>,
}

impl Forwarder {
    /// Starts forwarding `action` to `candidates` (the healthy home replicas, see
    /// [`crate::route`]); `home`: all of them, for messages.
    pub fn start(
        action: &Action,
        home: &[NodeId],
        candidates: Vec<NodeId>,
    ) -> (Forwarder, Vec<ForwardCommand>) {
        let mut f = Forwarder {
            home: home.to_vec(),
            left: candidates.into(),
            calling: None,
            retry_safe: repeatable(action),
            maybe_applied: false,
            last_error: None,
        };
        let cmds = f.next();
        (f, cmds)
    }

    /// The called coordinator's answer.
    pub fn on_called(&mut self, node: NodeId, answer: Result<Applied, PeerError>) -> Vec<ForwardCommand> {
        if self.calling != Some(node) {
            return Vec::new();
        }
        self.calling = None;
        let e = match answer {
            Ok(applied) => return vec![Command::Respond(Ok(applied))],
            // The coordinator ran the write and refused it, or could not reach a quorum: the
            // answer is final (retrying elsewhere could apply it twice). Its promise that
            // nothing was stored covers its own attempt only: an earlier call may have run.
            Err(PeerError::Answered(mut f)) => {
                if self.maybe_applied && !f.maybe_applied {
                    f.maybe_applied = true;
                    f.message = format!(
                        "{}; but an earlier attempt through another home replica lost its connection and may have applied the write",
                        f.message
                    );
                }
                return vec![Command::Respond(Err(f))];
            }
            Err(e) => e,
        };
        match e {
            PeerError::TimedOut(m) => vec![Command::Respond(Err(Failure::quorum(
                format!("node {node} did not answer in time ({m}); the write may or may not have been applied"),
                true,
            )))],
            // The call may have failed after the coordinator ran it (its answer lost): only a
            // write that may run twice moves on to the next home replica.
            PeerError::Transport(m) if !self.retry_safe => vec![Command::Respond(Err(Failure::quorum(
                format!("the call to node {node} failed ({m}); it may have applied the write, which is not retried elsewhere because running it twice would apply it twice; the write may or may not have been applied"),
                true,
            )))],
            PeerError::Transport(m) => {
                self.maybe_applied = true;
                self.last_error = Some(m);
                self.next()
            }
            PeerError::NeverSent(m) => {
                self.last_error = Some(m);
                self.next()
            }
            PeerError::Answered(_) => unreachable!("answered above"),
        }
    }

    /// The home replica called now, whose answer is awaited.
    pub fn calling(&self) -> Option<NodeId> {
        self.calling
    }

    /// Whether the forward answered.
    pub fn done(&self) -> bool {
        self.calling.is_none()
    }

    fn next(&mut self) -> Vec<ForwardCommand> {
        match self.left.pop_front() {
            Some(node) => {
                self.calling = Some(node);
                vec![Command::Call { node }]
            }
            None => vec![Command::Respond(Err(Failure::quorum(
                format!(
                    "no home replica of the key ({:?}) could coordinate the write{}",
                    self.home,
                    self.last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
                ),
                self.maybe_applied,
            )))],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;
    use geokv_core::{Op, OpOutcome};

    fn incr() -> Action {
        Action::Op(Op::Increment { delta: 1, ttl_ms: None })
    }

    fn put() -> Action {
        Action::Op(Op::Put { value: b"v".to_vec(), ttl_ms: None })
    }

    #[test]
    fn the_first_healthy_home_replica_is_called_and_its_answer_returned() {
        let (mut f, cmds) = Forwarder::start(&put(), &[1, 2, 3], vec![2, 3]);
        assert_eq!(cmds, vec![Command::Call { node: 2 }]);
        let cas_failed = Applied::CasFailed(None);
        assert_eq!(f.on_called(2, Ok(cas_failed.clone())), vec![Command::Respond(Ok(cas_failed))]);
        assert!(f.done());
    }

    #[test]
    fn a_call_never_sent_moves_on_whatever_the_write() {
        let (mut f, _) = Forwarder::start(&incr(), &[1, 2], vec![1, 2]);
        assert_eq!(
            f.on_called(1, Err(PeerError::NeverSent("refused".into()))),
            vec![Command::Call { node: 2 }]
        );
        let cmds = f.on_called(2, Err(PeerError::NeverSent("refused".into())));
        let [Command::Respond(Err(e))] = &cmds[..] else { panic!("{cmds:?}") };
        assert!(!e.maybe_applied, "no call reached a coordinator");
        assert!(e.message.contains("no home replica of the key ([1, 2]) could coordinate"), "{e}");
    }

    #[test]
    fn a_broken_call_is_retried_only_for_a_repeatable_write() {
        let (mut f, _) = Forwarder::start(&put(), &[1, 2], vec![1, 2]);
        assert_eq!(
            f.on_called(1, Err(PeerError::Transport("reset".into()))),
            vec![Command::Call { node: 2 }]
        );
        let (mut f, _) = Forwarder::start(&incr(), &[1, 2], vec![1, 2]);
        let cmds = f.on_called(1, Err(PeerError::Transport("reset".into())));
        let [Command::Respond(Err(e))] = &cmds[..] else { panic!("{cmds:?}") };
        assert!(e.maybe_applied);
        assert!(e.message.contains("may or may not have been applied"), "{e}");
    }

    /// Found by the simulation (seed 204): a set add whose first forward lost its answer was
    /// retried on the next home replica, whose read failed; the client was told nothing was
    /// written, but the first attempt had written it.
    #[test]
    fn a_retry_that_stores_nothing_does_not_promise_the_first_attempt_stored_nothing() {
        let add = Action::Op(Op::SetAdd { members: vec![b"m".to_vec()], ttl_ms: None });
        let (mut f, _) = Forwarder::start(&add, &[1, 2], vec![1, 2]);
        assert_eq!(
            f.on_called(1, Err(PeerError::Transport("reset".into()))),
            vec![Command::Call { node: 2 }]
        );
        let nothing = Failure::quorum("the read failed; nothing was written", false);
        let cmds = f.on_called(2, Err(PeerError::Answered(nothing)));
        let [Command::Respond(Err(e))] = &cmds[..] else { panic!("{cmds:?}") };
        assert!(e.maybe_applied, "{e}");
        assert!(e.message.contains("an earlier attempt"), "{e}");
    }

    #[test]
    fn a_coordinators_failure_and_a_timeout_are_final() {
        let (mut f, _) = Forwarder::start(&put(), &[1, 2], vec![1, 2]);
        let refusal = Failure::refused(Kind::FailedPrecondition, "wrong type");
        assert_eq!(
            f.on_called(1, Err(PeerError::Answered(refusal.clone()))),
            vec![Command::Respond(Err(refusal))]
        );
        let (mut f, _) = Forwarder::start(&put(), &[1, 2], vec![1, 2]);
        let cmds = f.on_called(1, Err(PeerError::TimedOut("3 s".into())));
        assert!(matches!(&cmds[..], [Command::Respond(Err(e))] if e.maybe_applied));
        let written = Applied::Written(OpOutcome::Put, geokv_core::Record::default());
        assert!(f.on_called(2, Ok(written)).is_empty(), "an answer from a node not called is ignored");
    }
}
