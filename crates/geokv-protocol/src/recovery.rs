//! A replica that lost its data: a node restarted on an empty data directory (a wiped disk, a
//! replaced machine) holds none of the states it held before, yet it is still a home replica
//! of its keys. If it answered quorum reads at once, a read could count its empty answer with
//! one other replica that missed a write and return nothing for a write a quorum
//! acknowledged (the write lives on the other replicas only). So such a node *recovers*
//! first: it takes writes and hints as any replica does (they are durable), serves the
//! states anti-entropy asks for (merging a partial state loses nothing), but refuses to vote
//! in a quorum read (a client read, or the first read of a write) until it has completed one
//! Merkle exchange, with no key failed, with every other node of its region's ring. A write
//! acknowledged by a quorum before the wipe is on at least one of those nodes, so after the
//! exchanges it is here too.
//!
//! A brand-new cluster recovers the same way: its nodes start empty and their first exchanges
//! (with empty peers) complete at once.
//!
//! A data directory restored from a backup is behind in the same way, and its whole region may
//! have been restored to the same point, so its peers may be behind too: such a node also waits
//! for an exchange with every node of the other regions' rings (the driver passes them in
//! `ring`), which hold what the region shipped them and what they wrote since.

use std::collections::BTreeSet;

use geokv_core::NodeId;

use crate::anti_entropy::Outcome;
use crate::{Failure, Kind};

/// The progress of a node's recovery: the peers it has completed an exchange with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recovery {
    synced: BTreeSet<NodeId>,
}

impl Recovery {
    pub fn new() -> Recovery {
        Recovery::default()
    }

    /// An exchange this node ran with `peer` ended. Only one that compared every shared key
    /// and failed none counts.
    pub fn on_exchange(&mut self, peer: NodeId, result: &Result<Outcome, String>) {
        if matches!(result, Ok(o) if o.failed == 0) {
            self.synced.insert(peer);
        }
    }

    /// The nodes of `ring` (this region's, this node included or not) it has yet to complete
    /// an exchange with; empty when it is recovered. A node that joins the ring while this one
    /// recovers is waited for too.
    pub fn waiting_for(&self, me: NodeId, ring: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
        let mut left: Vec<NodeId> =
            ring.into_iter().filter(|&n| n != me && !self.synced.contains(&n)).collect();
        left.sort_unstable();
        left.dedup();
        left
    }
}

/// What a replica answers to a request for its vote in a quorum read: `Ok` when it may vote,
/// else the refusal (`UNAVAILABLE`: the coordinator counts it as a replica that did not
/// answer and reads from the others). `waiting`: the peers it still has to exchange with,
/// `None` when it is not recovering.
pub fn vote(me: NodeId, waiting: Option<&[NodeId]>) -> Result<(), Failure> {
    match waiting {
        None => Ok(()),
        Some(peers) => Err(Failure::refused(
            Kind::Unavailable,
            format!(
                "node {me} started on a new or restored data directory and is recovering its keys from its peers (waiting for an anti-entropy exchange with nodes {peers:?}); it does not count toward read quorums until then"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(failed: u64) -> Result<Outcome, String> {
        Ok(Outcome { repaired: 3, failed })
    }

    #[test]
    fn recovered_once_every_ring_peer_completed_an_exchange() {
        let mut r = Recovery::new();
        assert_eq!(r.waiting_for(1, [1, 2, 3]), vec![2, 3]);
        r.on_exchange(2, &done(0));
        assert_eq!(r.waiting_for(1, [1, 2, 3]), vec![3]);
        r.on_exchange(3, &done(0));
        assert!(r.waiting_for(1, [1, 2, 3]).is_empty());
        // A node that joined the ring meanwhile is waited for.
        assert_eq!(r.waiting_for(1, [1, 2, 3, 4]), vec![4]);
    }

    #[test]
    fn an_exchange_that_failed_a_key_or_broke_does_not_count() {
        let mut r = Recovery::new();
        r.on_exchange(2, &done(1));
        r.on_exchange(3, &Err("peer unreachable".into()));
        assert_eq!(r.waiting_for(1, [1, 2, 3]), vec![2, 3]);
    }

    #[test]
    fn a_recovering_node_refuses_its_vote_and_says_why() {
        assert_eq!(vote(1, None), Ok(()));
        let e = vote(1, Some(&[2, 3])).unwrap_err();
        assert_eq!(e.kind, Kind::Unavailable);
        assert!(!e.maybe_applied);
        assert!(e.message.contains("recovering") && e.message.contains("[2, 3]"), "{e}");
    }

    #[test]
    fn a_single_node_region_is_recovered_at_once() {
        assert!(Recovery::new().waiting_for(1, [1]).is_empty());
    }
}
