//! Nodes joining and leaving a region while it serves, and cleanup after: the steps of each
//! move, when a move may start, and which keys go where. The server (`region/moves.rs`) and
//! the simulator drive these steps; the membership view they read is `geokv_cluster`'s.
//!
//! **Join**: a node started to join is `joining`. Once every reachable peer sees it so (from
//! then on, coordinators send it every write for its future ranges as an incoming replica), it
//! streams in, from every current owner that is up, the states of the keys it will replicate
//! ([`hands_over`]), merges them, and turns `normal`: an owner that serves reads and counts
//! toward quorums. Then an anti-entropy round with every peer repairs what writes in flight
//! while the status spread missed.
//!
//! **Leave**: the node turns `leaving` (still an owner, while writes also go to the nodes that
//! will replace it), waits until its peers see it so, streams every key it holds to those nodes
//! ([`streams_to`]), then turns `left`.
//!
//! **Cleanup**: once no move is in progress, a node drops its copies of keys it no longer
//! replicates ([`foreign`]), and from then on writes as a new actor (should it own such a key
//! again, it holds less than it once wrote to it). A copy is dropped only once every home
//! replica of the key has taken it ([`hand_over_to`]): it may be the only one (a write at ONE
//! whose sends the replicas refused, stamped by a clock that ran ahead, found by the
//! simulator); a copy not taken stays for the next cleanup.

use geokv_cluster::{Membership, Status};
use geokv_core::NodeId;

use crate::{Failure, Kind};

/// One step of a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Gossip this status (a new version of the node's info).
    Announce(Status),
    /// Wait until every healthy peer reports this node's current info; the move fails (and
    /// can be retried) if they do not in time.
    WaitSeen,
    /// Stream in, from every owner that is up ([`join_sources`]), the states [`hands_over`]
    /// selects, and merge them.
    StreamIn,
    /// Send every state this node holds to the key's incoming replicas ([`streams_to`]).
    StreamOut,
    /// Wait a while for the peers to see the new status; not seeing it is only logged.
    Settle,
    /// Run an anti-entropy round with every peer now.
    CatchUp,
}

/// The kind of move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveKind {
    Join,
    Leave,
}

const JOIN: &[Step] =
    &[Step::WaitSeen, Step::StreamIn, Step::Announce(Status::Normal), Step::Settle, Step::CatchUp];
const LEAVE: &[Step] = &[
    Step::Announce(Status::Leaving),
    Step::WaitSeen,
    Step::StreamOut,
    Step::Announce(Status::Left),
    Step::Settle,
];

/// A join or leave under way: the steps left. A step that fails ends the attempt; the move
/// starts over from [`Move::join`] or [`Move::leave`] (every step is idempotent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub kind: MoveKind,
    steps: &'static [Step],
}

impl Move {
    /// The join of a node whose status is `status`; `None` if it is not joining.
    pub fn join(status: Status) -> Option<Move> {
        (status == Status::Joining).then_some(Move { kind: MoveKind::Join, steps: JOIN })
    }

    /// The leave of this node, if it may leave now: `Ok(None)` if it has left already, a
    /// refusal (FAILED_PRECONDITION, saying what to do first) if it may not.
    pub fn leave(view: &Membership) -> Result<Option<Move>, Failure> {
        let refuse = |why: String| Err(Failure::refused(Kind::FailedPrecondition, why));
        let steps = match view.me().status {
            Status::Left => return Ok(None),
            Status::Joining => {
                return refuse("this node is still joining; let the join finish before it leaves".into())
            }
            Status::Normal => LEAVE,
            // Announced already (an attempt that failed after it): go on from there.
            Status::Leaving => &LEAVE[1..],
        };
        let remaining = view.owners().nodes().len().saturating_sub(1);
        if remaining < view.n() {
            return refuse(format!(
                "the region would keep {remaining} nodes, fewer than its replication factor {}; add a node first",
                view.n()
            ));
        }
        let me = view.me().id;
        if view.members().any(|m| m.id != me && matches!(m.status, Status::Joining | Status::Leaving)) {
            return refuse("another node of the region is joining or leaving; one move at a time".into());
        }
        Ok(Some(Move { kind: MoveKind::Leave, steps }))
    }

    /// The step to run now; `None` when the move is over.
    pub fn step(&self) -> Option<Step> {
        self.steps.first().copied()
    }

    /// The current step succeeded: the next one.
    pub fn advance(&mut self) -> Option<Step> {
        if !self.steps.is_empty() {
            self.steps = &self.steps[1..];
        }
        self.step()
    }
}

/// Whether a cleanup may run now: not while a node of the region is joining or leaving (a
/// copy it would drop may be one a move still streams).
pub fn cleanup_allowed(view: &Membership) -> Result<(), Failure> {
    if view.in_transition() {
        return Err(Failure::refused(
            Kind::FailedPrecondition,
            "a node of the region is joining or leaving; clean up once it has finished",
        ));
    }
    Ok(())
}

/// The owners a joining node streams from: every owner but itself that is up; an owner that is
/// down is skipped (its keys come from the other replicas, and anti-entropy after the join).
pub fn join_sources(view: &Membership, healthy: impl Fn(NodeId) -> bool) -> Vec<NodeId> {
    let me = view.me().id;
    view.owners().nodes().iter().copied().filter(|&id| id != me && healthy(id)).collect()
}

/// Whether an owner hands `key` to `joiner` when it streams: the joiner is one of the key's
/// replicas once the moves in progress are done.
pub fn hands_over(view: &Membership, key: &[u8], joiner: NodeId) -> bool {
    view.future_owners().preference_list(key, view.n()).contains(&joiner)
}

/// Where a leaving node sends its state of `key`: the nodes taking the key over.
pub fn streams_to(view: &Membership, key: &[u8]) -> Vec<NodeId> {
    view.incoming(key)
}

/// Where a cleanup sends its copy of a foreign `key` before dropping it: every home replica of
/// the key; the copy is dropped only once all of them have acknowledged it.
pub fn hand_over_to(view: &Membership, key: &[u8]) -> Vec<NodeId> {
    view.home(key)
}

/// Whether this node's copy of `key` is one a cleanup drops: it is not a home replica.
pub fn foreign(view: &Membership, key: &[u8]) -> bool {
    !view.home(key).contains(&view.me().id)
}

#[cfg(test)]
mod tests {
    use geokv_cluster::MemberInfo;

    use super::*;

    fn info(id: NodeId, status: Status) -> MemberInfo {
        MemberInfo {
            id,
            version: 1,
            status,
            region: "r".into(),
            client_addr: String::new(),
            peer_addr: String::new(),
        }
    }

    fn view(me: (NodeId, Status), others: &[(NodeId, Status)]) -> Membership {
        let others = others.iter().map(|&(id, s)| info(id, s));
        Membership::new(info(me.0, me.1), others, 3, 64, 0, 1_000)
    }

    fn steps(mut m: Move) -> Vec<Step> {
        let mut out: Vec<Step> = m.step().into_iter().collect();
        while let Some(s) = m.advance() {
            out.push(s);
        }
        out
    }

    #[test]
    fn a_join_waits_to_be_seen_streams_in_turns_normal_and_catches_up() {
        assert_eq!(Move::join(Status::Normal), None);
        let m = Move::join(Status::Joining).expect("joining");
        assert_eq!(
            steps(m),
            vec![Step::WaitSeen, Step::StreamIn, Step::Announce(Status::Normal), Step::Settle, Step::CatchUp]
        );
    }

    #[test]
    fn a_leave_is_refused_below_the_replication_factor_or_beside_another_move() {
        let normal = [(2, Status::Normal), (3, Status::Normal), (4, Status::Normal)];
        let m = Move::leave(&view((1, Status::Normal), &normal)).unwrap().expect("may leave");
        assert_eq!(
            steps(m),
            vec![
                Step::Announce(Status::Leaving),
                Step::WaitSeen,
                Step::StreamOut,
                Step::Announce(Status::Left),
                Step::Settle
            ]
        );
        // Leaving already (an attempt failed after announcing): not announced again.
        let again = Move::leave(&view((1, Status::Leaving), &normal)).unwrap().unwrap();
        assert_eq!(again.step(), Some(Step::WaitSeen));
        assert_eq!(Move::leave(&view((1, Status::Left), &normal)).unwrap(), None);
        let three = Move::leave(&view((1, Status::Normal), &normal[..2])).unwrap_err();
        assert!(three.message.contains("fewer than its replication factor 3"), "{}", three.message);
        let busy = [(2, Status::Normal), (3, Status::Normal), (4, Status::Normal), (5, Status::Joining)];
        let other = Move::leave(&view((1, Status::Normal), &busy)).unwrap_err();
        assert!(other.message.contains("one move at a time"));
        assert!(Move::leave(&view((1, Status::Joining), &normal))
            .unwrap_err()
            .message
            .contains("still joining"));
        assert!(!three.maybe_applied && three.kind == Kind::FailedPrecondition);
    }

    #[test]
    fn keys_go_to_their_future_replicas_and_cleanup_waits_for_moves_to_end() {
        let joining =
            view((1, Status::Normal), &[(2, Status::Normal), (3, Status::Normal), (4, Status::Joining)]);
        assert!(cleanup_allowed(&joining).is_err());
        let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("k{i}").into_bytes()).collect();
        // N = 3 of four nodes: the joiner takes over about 3/4 of the keys.
        let handed = keys.iter().filter(|k| hands_over(&joining, k, 4)).count();
        assert!((100..200).contains(&handed), "{handed}");
        for k in &keys {
            assert_eq!(hands_over(&joining, k, 4), joining.incoming(k).contains(&4));
        }
        assert_eq!(join_sources(&joining, |id| id != 3), vec![2], "owners that are up, not itself");
        let leaving =
            view((1, Status::Leaving), &[(2, Status::Normal), (3, Status::Normal), (4, Status::Normal)]);
        for k in &keys {
            let to = streams_to(&leaving, k);
            assert_eq!(to.is_empty(), !leaving.home(k).contains(&1), "a key it holds goes to one new node");
        }
        let settled =
            view((1, Status::Normal), &[(2, Status::Normal), (3, Status::Normal), (4, Status::Normal)]);
        assert!(cleanup_allowed(&settled).is_ok());
        assert!(keys.iter().any(|k| foreign(&settled, k)) && keys.iter().any(|k| !foreign(&settled, k)));
    }
}
