//! Hinted handoff: what a node does with the hints it keeps, target by target, and with the
//! answer to each delivery.
//!
//! A hint is a key's state kept for a node that could not take it (it was down, or cut off).
//! Each handoff round goes over the nodes hints are kept for: hints for a node that left the
//! region are dropped (its ranges have new owners, which got the key from its other replicas,
//! with anti-entropy as the backstop); hints for this node itself are merged here; hints for
//! a node that answers probes are sent to it, one state at a time. A delivered hint is removed
//! only if it still holds the state that was sent (a newer state kept meanwhile waits for the
//! next round). An unreachable target ends the round for that target; a refusal keeps the hint
//! for a later round without holding up the others.

use geokv_core::NodeId;

use crate::PeerError;

/// What to do with the hints kept for one node in this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintPlan {
    /// The node left the region: drop its hints.
    Drop,
    /// The hints are for this node: merge them into its own store, then remove them.
    MergeHere,
    /// The node answers probes: deliver its hints.
    Deliver,
    /// The node does not answer: keep the hints for a later round.
    Wait,
}

/// The plan for the hints kept for `target`.
pub fn hint_plan(me: NodeId, target: NodeId, left: bool, healthy: bool) -> HintPlan {
    if left {
        HintPlan::Drop
    } else if target == me {
        HintPlan::MergeHere
    } else if healthy {
        HintPlan::Deliver
    } else {
        HintPlan::Wait
    }
}

/// What to do after one delivery's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// The target has the state: remove the hint if it still holds that state.
    Remove,
    /// The target could not be reached: stop delivering to it this round (its hints wait).
    StopTarget,
    /// The target refused the state (e.g. a stamp beyond its drift bound): keep the hint for
    /// a later round and go on with the next one.
    KeepAndGoOn,
}

/// The rule for a delivery's answer.
pub fn delivered(result: &Result<(), PeerError>) -> Delivered {
    match result {
        Ok(()) => Delivered::Remove,
        Err(e) if e.unreachable() => Delivered::StopTarget,
        Err(_) => Delivered::KeepAndGoOn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Failure, Kind};

    #[test]
    fn plans_follow_membership_and_health() {
        assert_eq!(hint_plan(1, 2, true, true), HintPlan::Drop);
        assert_eq!(hint_plan(1, 2, true, false), HintPlan::Drop);
        assert_eq!(hint_plan(1, 1, false, true), HintPlan::MergeHere);
        assert_eq!(hint_plan(1, 2, false, true), HintPlan::Deliver);
        assert_eq!(hint_plan(1, 2, false, false), HintPlan::Wait);
    }

    #[test]
    fn only_an_acknowledgement_removes_a_hint() {
        assert_eq!(delivered(&Ok(())), Delivered::Remove);
        for e in [
            PeerError::NeverSent("refused".into()),
            PeerError::TimedOut("late".into()),
            PeerError::Transport("reset".into()),
        ] {
            assert_eq!(delivered(&Err(e)), Delivered::StopTarget);
        }
        let refused = PeerError::Answered(Failure::refused(Kind::FailedPrecondition, "ahead"));
        assert_eq!(delivered(&Err(refused)), Delivered::KeepAndGoOn);
    }
}
