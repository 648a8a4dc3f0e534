//! Merkle anti-entropy: one exchange between this node and a peer that replicates some of the
//! same keys.
//!
//! 1. Both sides summarize the keys they share ([`shared`]) into Merkle buckets
//!    (`geokv_cluster::merkle`). Equal roots end the exchange.
//! 2. For the differing buckets, a few at a time ([`DIGEST_BUCKETS_PER_CALL`]), both sides'
//!    per-key digests are compared, so a replica that differs everywhere (a new or wiped node)
//!    is repaired in bounded messages.
//! 3. For each key whose digests differ: fetch the peer's state (a peer whose copy is corrupt
//!    answers DATA_LOSS, taken as no state, so the merge pushed back replaces it), merge it
//!    here, and push the merged state back. Only differing keys travel.
//!
//! A key whose fetch or push fails is counted and left for the next exchange; a failure to
//! get the peer's summary or digests ends the exchange. The store refuses states stamped
//! beyond the drift bound, so a replica never learns a state from the future this way.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use geokv_cluster::merkle::{self, Summary};
use geokv_core::{NodeId, Record};

use crate::{Kind, PeerError};

/// Per-key digests of the keys in some buckets.
pub type Digests = BTreeMap<Vec<u8>, u64>;

/// Buckets whose key digests one request carries.
pub const DIGEST_BUCKETS_PER_CALL: usize = 512;

/// Whether a key is exchanged between this node and `peer`: both replicate it (`home`: the
/// key's home replicas in this region, `peer_replicates`: whether the peer holds it, which
/// for a peer of another region comes from that region's ring and the key's residency).
pub fn shared(home: &[NodeId], me: NodeId, peer_replicates: bool) -> bool {
    home.contains(&me) && peer_replicates
}

/// Whether `peer` holds `key` (the `peer_replicates` of [`shared`]): a peer of this region if it
/// is one of the key's home replicas in this node's view (`home`: owners, joins and leaves
/// included, never the topology's ring, which a move leaves behind); a peer of another region
/// if `remote` says so (that region may hold the key and its ring gives it to the peer).
pub fn peer_replicates(
    home: &[NodeId],
    peer: NodeId,
    same_region: bool,
    remote: impl FnOnce() -> bool,
) -> bool {
    if same_region {
        home.contains(&peer)
    } else {
        remote()
    }
}

/// What an exchange asks its driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum AeCommand {
    /// Summarize this node's shared keys; report with [`Exchange::on_local_summary`].
    Summarize,
    /// Ask the peer for its summary; report with [`Exchange::on_peer_summary`].
    AskSummary,
    /// The digests of the keys in these buckets, this node's and the peer's; report with
    /// [`Exchange::on_digests`].
    Digests { leaves: Vec<u32> },
    /// Fetch the peer's state of `key`; report with [`Exchange::on_fetched`].
    Fetch { key: Vec<u8> },
    /// Merge the peer's state (if any) here and send this node's merged state (if any) to the
    /// peer; report with [`Exchange::on_pushed`].
    MergeAndPush { key: Vec<u8>, theirs: Option<Box<Record>> },
    /// The exchange is over: how many keys were repaired, or why it stopped.
    Done(Result<Outcome, String>),
}

/// What an exchange achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keys exchanged.
    pub repaired: u64,
    /// Keys that could not be exchanged (left for the next exchange).
    pub failed: u64,
}

/// One anti-entropy exchange with one peer, as a state machine.
#[derive(Debug, Default)]
pub struct Exchange {
    mine: Option<Summary>,
    theirs: Option<Summary>,
    /// Chunks of differing buckets not yet compared.
    chunks: VecDeque<Vec<u32>>,
    /// Keys of the current chunk still being exchanged.
    keys: BTreeSet<Vec<u8>>,
    outcome: Outcome,
    done: bool,
}

impl Exchange {
    /// Starts an exchange: both summaries are wanted (in either order, or at once).
    pub fn start() -> (Exchange, Vec<AeCommand>) {
        (Exchange::default(), vec![AeCommand::Summarize, AeCommand::AskSummary])
    }

    pub fn done(&self) -> bool {
        self.done
    }

    /// This node's summary of the keys it shares with the peer.
    pub fn on_local_summary(&mut self, summary: Summary) -> Vec<AeCommand> {
        self.mine = Some(summary);
        self.compare()
    }

    /// The peer's summary, or why it could not be had.
    pub fn on_peer_summary(&mut self, summary: Result<Summary, PeerError>) -> Vec<AeCommand> {
        match summary {
            Ok(s) => {
                self.theirs = Some(s);
                self.compare()
            }
            Err(e) => self.stop(format!("the peer's summary: {e}")),
        }
    }

    fn compare(&mut self) -> Vec<AeCommand> {
        let (Some(mine), Some(theirs)) = (&self.mine, &self.theirs) else { return Vec::new() };
        if self.done || !self.chunks.is_empty() {
            return Vec::new();
        }
        // Both summaries are here whole: equal buckets end the exchange (no root to hash).
        if mine == theirs {
            return self.finish();
        }
        self.chunks = mine.differing(theirs).chunks(DIGEST_BUCKETS_PER_CALL).map(<[u32]>::to_vec).collect();
        self.next_chunk()
    }

    fn next_chunk(&mut self) -> Vec<AeCommand> {
        match self.chunks.front() {
            Some(leaves) => vec![AeCommand::Digests { leaves: leaves.clone() }],
            None => self.finish(),
        }
    }

    /// This node's and the peer's digests of the current buckets.
    pub fn on_digests(&mut self, digests: Result<(Digests, Digests), PeerError>) -> Vec<AeCommand> {
        if self.done || self.chunks.pop_front().is_none() {
            return Vec::new();
        }
        let (mine, theirs) = match digests {
            Ok(d) => d,
            Err(e) => return self.stop(format!("the peer's digests: {e}")),
        };
        let keys = merkle::differing_keys(&mine, &theirs);
        if keys.is_empty() {
            return self.next_chunk();
        }
        self.keys = keys.iter().cloned().collect();
        keys.into_iter().map(|key| AeCommand::Fetch { key }).collect()
    }

    /// The peer's state of `key`.
    pub fn on_fetched(&mut self, key: Vec<u8>, state: Result<Option<Record>, PeerError>) -> Vec<AeCommand> {
        if !self.keys.contains(&key) {
            return Vec::new();
        }
        match state {
            Ok(theirs) => vec![AeCommand::MergeAndPush { key, theirs: theirs.map(Box::new) }],
            // The peer's copy is corrupt: exchange as if it had none.
            Err(PeerError::Answered(f)) if f.kind == Kind::DataLoss => {
                vec![AeCommand::MergeAndPush { key, theirs: None }]
            }
            Err(_) => self.settle(&key, false),
        }
    }

    /// Whether the merge here and the push to the peer of `key` succeeded.
    pub fn on_pushed(&mut self, key: Vec<u8>, result: Result<(), PeerError>) -> Vec<AeCommand> {
        if !self.keys.contains(&key) {
            return Vec::new();
        }
        self.settle(&key, result.is_ok())
    }

    fn settle(&mut self, key: &[u8], ok: bool) -> Vec<AeCommand> {
        self.keys.remove(key);
        if ok {
            self.outcome.repaired += 1;
        } else {
            self.outcome.failed += 1;
        }
        if self.keys.is_empty() {
            self.next_chunk()
        } else {
            Vec::new()
        }
    }

    fn stop(&mut self, why: String) -> Vec<AeCommand> {
        self.done = true;
        vec![AeCommand::Done(Err(why))]
    }

    fn finish(&mut self) -> Vec<AeCommand> {
        self.done = true;
        vec![AeCommand::Done(Ok(self.outcome))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::counter;
    use crate::Failure;

    fn summary(keys: &[(&[u8], u64)]) -> Summary {
        let mut s = Summary::default();
        for (k, d) in keys {
            s.add(k, *d);
        }
        s
    }

    fn digests(keys: &[(&[u8], u64)]) -> BTreeMap<Vec<u8>, u64> {
        keys.iter().map(|(k, d)| (k.to_vec(), *d)).collect()
    }

    #[test]
    fn shared_keys_need_both_replicas() {
        assert!(shared(&[1, 2, 3], 1, true));
        assert!(!shared(&[2, 3, 4], 1, true));
        assert!(!shared(&[1, 2, 3], 1, false));
    }

    #[test]
    fn a_peer_of_this_region_replicates_what_the_view_gives_it_whatever_the_ring() {
        // After node 1 left, the view gives the key to 2, 3 and 4: 4 holds it, though the
        // topology's ring (1, 2, 3) would not say so (seed 2977).
        let home = [3, 2, 4];
        assert!(peer_replicates(&home, 4, true, || false));
        assert!(!peer_replicates(&home, 1, true, || true));
        assert!(peer_replicates(&home, 21, false, || true));
        assert!(!peer_replicates(&home, 21, false, || false));
    }

    #[test]
    fn equal_roots_end_the_exchange_without_digests() {
        let (mut ex, cmds) = Exchange::start();
        assert_eq!(cmds, vec![AeCommand::Summarize, AeCommand::AskSummary]);
        assert!(ex.on_peer_summary(Ok(summary(&[(b"a", 1)]))).is_empty());
        let cmds = ex.on_local_summary(summary(&[(b"a", 1)]));
        assert_eq!(cmds, vec![AeCommand::Done(Ok(Outcome::default()))]);
        assert!(ex.done());
    }

    #[test]
    fn differing_keys_are_fetched_merged_and_pushed_back() {
        let (mut ex, _) = Exchange::start();
        ex.on_local_summary(summary(&[(b"a", 1), (b"b", 2)]));
        let cmds = ex.on_peer_summary(Ok(summary(&[(b"a", 1), (b"b", 3)])));
        let leaf = merkle::leaf_of(b"b");
        assert_eq!(cmds, vec![AeCommand::Digests { leaves: vec![leaf] }]);
        let cmds = ex.on_digests(Ok((digests(&[(b"b", 2)]), digests(&[(b"b", 3)]))));
        assert_eq!(cmds, vec![AeCommand::Fetch { key: b"b".to_vec() }]);
        let theirs = counter(2, 5);
        let cmds = ex.on_fetched(b"b".to_vec(), Ok(Some(theirs.clone())));
        assert_eq!(
            cmds,
            vec![AeCommand::MergeAndPush { key: b"b".to_vec(), theirs: Some(Box::new(theirs)) }]
        );
        let cmds = ex.on_pushed(b"b".to_vec(), Ok(()));
        assert_eq!(cmds, vec![AeCommand::Done(Ok(Outcome { repaired: 1, failed: 0 }))]);
    }

    #[test]
    fn a_corrupt_copy_is_replaced_and_a_failed_key_is_counted() {
        let (mut ex, _) = Exchange::start();
        ex.on_local_summary(summary(&[(b"a", 1), (b"b", 2)]));
        // Two differing buckets (or one): a single chunk of digests.
        let cmds = ex.on_peer_summary(Ok(summary(&[])));
        assert!(matches!(cmds.as_slice(), [AeCommand::Digests { .. }]), "{cmds:?}");
        let cmds = ex.on_digests(Ok((digests(&[(b"a", 1), (b"b", 2)]), BTreeMap::new())));
        assert_eq!(
            cmds,
            vec![AeCommand::Fetch { key: b"a".to_vec() }, AeCommand::Fetch { key: b"b".to_vec() }]
        );
        let corrupt = PeerError::Answered(Failure::refused(Kind::DataLoss, "checksum"));
        let cmds = ex.on_fetched(b"a".to_vec(), Err(corrupt));
        assert_eq!(cmds, vec![AeCommand::MergeAndPush { key: b"a".to_vec(), theirs: None }]);
        assert!(ex.on_fetched(b"b".to_vec(), Err(PeerError::TimedOut("late".into()))).is_empty());
        let cmds = ex.on_pushed(b"a".to_vec(), Ok(()));
        assert_eq!(cmds, vec![AeCommand::Done(Ok(Outcome { repaired: 1, failed: 1 }))]);
    }

    #[test]
    fn an_unreachable_peer_ends_the_exchange() {
        let (mut ex, _) = Exchange::start();
        ex.on_local_summary(summary(&[(b"a", 1)]));
        let cmds = ex.on_peer_summary(Err(PeerError::NeverSent("refused".into())));
        assert!(matches!(cmds.as_slice(), [AeCommand::Done(Err(_))]));
        assert!(ex.done());
        // Late answers change nothing.
        assert!(ex.on_digests(Ok((BTreeMap::new(), BTreeMap::new()))).is_empty());
    }
}
