//! A watch: the change feeds of a region's nodes merged into one stream of key changes
//! ([`WatchMerge`]).
//!
//! Every node keeps a change log: one entry per change of a key it holds, local writes,
//! replicas of them and states from other regions alike, numbered by a per-node sequence
//! number. A node's feed sends the entries under the watched prefix, each with the key's
//! state when the feed read it (an entry whose key has changed again since is left out: a
//! later entry carries the newer state). A key lives on several replicas, so one change
//! reaches the watch once per replica that logged it. The merge passes a key's state on the
//! first time it sees it and drops the copies: a state whose digest is the one delivered last
//! for the key, or whose version is older than it.
//!
//! A change is "pending" while some replica of its key whose feed the watch reads has not yet
//! shown it (or something newer). The watch's [`Revision`] is each node's log position plus
//! the pending changes, so a watch resumed from it drops the copies it would otherwise deliver
//! a second time. The positions are exact; the pending list is capped at
//! [`MAX_PENDING_IN_REVISION`] (beyond it, and for a replica whose feed the watch was not
//! reading, a resumed watch may deliver a state a second time, never skip one).
//!
//! What a watch promises (docs/api.md, "Watch"): every state a key reaches on a replica of
//! this region is delivered unless a newer state of the key was delivered first; a key's
//! versions never go backwards within one stream; nothing is delivered twice within one
//! stream, nor after a resume from a revision.

use std::collections::{BTreeMap, HashMap, VecDeque};

use geokv_core::{NodeId, Stamp};

/// Most pending changes a revision carries (the newest ones).
pub const MAX_PENDING_IN_REVISION: usize = 1_000;
/// Most keys a watch remembers the last delivered state of.
pub const MAX_REMEMBERED_KEYS: usize = 200_000;

/// Where a watch stands in one node's change log: the log's id and the last sequence number
/// it has read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPosition {
    pub log_id: u64,
    pub seq: u64,
}

/// A delivered change some replica's feed has not yet shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingChange {
    pub key_hash: u64,
    pub version: Stamp,
    pub digest: u64,
    pub waiting: Vec<NodeId>,
}

/// Where a watch can be resumed from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revision {
    pub positions: BTreeMap<NodeId, LogPosition>,
    pub pending: Vec<PendingChange>,
}

/// Where a node's feed starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedStart {
    /// After the node's newest entry (a watch that starts now).
    Now,
    /// After this position of the node's log (a resumed watch). The node refuses it when the
    /// entries after it were trimmed, and starts after its newest entry when the position
    /// belongs to a log it no longer has (its data directory was replaced).
    After(LogPosition),
}

/// One entry of a node's feed, as the merge needs it: a hash of the key, the version of the
/// key's state and a digest of that state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedEntry {
    pub key_hash: u64,
    pub version: Stamp,
    pub digest: u64,
}

#[derive(Debug)]
struct Delivered {
    version: Stamp,
    digest: u64,
    waiting: Vec<NodeId>,
    /// Insertion number, to tell a live entry from a stale one in `order`.
    gen: u64,
}

/// The merge of a region's feeds for one watch.
#[derive(Debug)]
pub struct WatchMerge {
    positions: BTreeMap<NodeId, LogPosition>,
    delivered: HashMap<u64, Delivered>,
    order: VecDeque<(u64, u64)>,
    gen: u64,
    remember: usize,
}

impl WatchMerge {
    /// A watch from now (`None`) or resumed from a revision.
    pub fn new(from: Option<Revision>) -> Self {
        let mut merge = WatchMerge {
            positions: BTreeMap::new(),
            delivered: HashMap::new(),
            order: VecDeque::new(),
            gen: 0,
            remember: MAX_REMEMBERED_KEYS,
        };
        if let Some(rev) = from {
            merge.positions = rev.positions;
            for p in rev.pending {
                merge.remember_delivered(p.key_hash, p.version, p.digest, p.waiting);
            }
        }
        merge
    }

    #[cfg(test)]
    fn remembering(mut self, keys: usize) -> Self {
        self.remember = keys;
        self
    }

    /// Where `node`'s feed starts: where the watch stands in its log, or, for a node the
    /// watch has not read yet (it was down when the watch started, or joined the region since
    /// the revision was made), after its newest entry. The writes such a node took alone in
    /// between (at level ONE, while the others were unreachable) are not streamed.
    pub fn start(&self, node: NodeId) -> FeedStart {
        match self.positions.get(&node) {
            Some(p) => FeedStart::After(*p),
            None => FeedStart::Now,
        }
    }

    /// `node`'s feed opened at `position` (where it starts; for a feed that started over in
    /// a new log, that log's position before its first entry).
    pub fn opened(&mut self, node: NodeId, position: LogPosition) {
        self.positions.insert(node, position);
    }

    /// A batch of `node`'s feed, read up to sequence number `upto` of its log. `replicas(i)`
    /// names the nodes whose feeds the watch reads and that hold entry `i`'s key (its
    /// replicas); `node` may be among them. Returns the indexes of the entries to deliver.
    pub fn on_batch(
        &mut self,
        node: NodeId,
        upto: u64,
        entries: &[FeedEntry],
        mut replicas: impl FnMut(usize) -> Vec<NodeId>,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(d) = self.delivered.get_mut(&e.key_hash) {
                if e.digest == d.digest {
                    d.waiting.retain(|&n| n != node);
                    continue;
                }
                if e.version < d.version {
                    continue;
                }
            }
            let waiting = replicas(i).into_iter().filter(|&n| n != node).collect();
            self.remember_delivered(e.key_hash, e.version, e.digest, waiting);
            out.push(i);
        }
        if let Some(p) = self.positions.get_mut(&node) {
            p.seq = p.seq.max(upto);
        }
        out
    }

    /// Where the watch stands now.
    pub fn revision(&self) -> Revision {
        let mut pending: Vec<(u64, PendingChange)> = self
            .delivered
            .iter()
            .filter(|(_, d)| !d.waiting.is_empty())
            .map(|(&key_hash, d)| {
                let change = PendingChange {
                    key_hash,
                    version: d.version,
                    digest: d.digest,
                    waiting: d.waiting.clone(),
                };
                (d.gen, change)
            })
            .collect();
        pending.sort_by_key(|(gen, _)| std::cmp::Reverse(*gen));
        pending.truncate(MAX_PENDING_IN_REVISION);
        pending.sort_by_key(|(gen, _)| *gen);
        Revision { positions: self.positions.clone(), pending: pending.into_iter().map(|(_, p)| p).collect() }
    }

    fn remember_delivered(&mut self, key_hash: u64, version: Stamp, digest: u64, waiting: Vec<NodeId>) {
        self.gen += 1;
        let gen = self.gen;
        self.delivered.insert(key_hash, Delivered { version, digest, waiting, gen });
        self.order.push_back((key_hash, gen));
        while self.delivered.len() > self.remember || self.order.len() > 2 * self.remember + 1024 {
            let Some((k, g)) = self.order.pop_front() else { break };
            if self.delivered.get(&k).is_some_and(|d| d.gen == g) {
                self.delivered.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key_hash: u64, t: u64, digest: u64) -> FeedEntry {
        FeedEntry { key_hash, version: Stamp::new(t, 1), digest }
    }

    const REPLICAS: [NodeId; 3] = [1, 2, 3];

    fn all(_: usize) -> Vec<NodeId> {
        REPLICAS.to_vec()
    }

    fn opened(from: Option<Revision>) -> WatchMerge {
        let mut m = WatchMerge::new(from);
        for n in REPLICAS {
            if m.start(n) == FeedStart::Now {
                m.opened(n, LogPosition { log_id: 10 + n, seq: 0 });
            }
        }
        m
    }

    #[test]
    fn a_change_logged_by_every_replica_is_delivered_once() {
        let mut m = opened(None);
        assert_eq!(m.on_batch(1, 5, &[e(7, 100, 1)], all), vec![0]);
        assert_eq!(m.on_batch(2, 3, &[e(7, 100, 1)], all), Vec::<usize>::new());
        assert_eq!(m.revision().pending.len(), 1, "replica 3 has not shown it yet");
        assert_eq!(m.on_batch(3, 9, &[e(7, 100, 1)], all), Vec::<usize>::new());
        let rev = m.revision();
        assert!(rev.pending.is_empty(), "every replica showed it: {rev:?}");
        assert_eq!(rev.positions[&1].seq, 5);
        assert_eq!(rev.positions[&2].seq, 3);
        assert_eq!(rev.positions[&3].seq, 9);
    }

    #[test]
    fn a_key_never_goes_back_to_an_older_version_and_newer_states_get_through() {
        let mut m = opened(None);
        assert_eq!(m.on_batch(1, 2, &[e(7, 100, 1), e(7, 200, 2)], all), vec![0, 1]);
        assert_eq!(m.on_batch(2, 1, &[e(7, 100, 1)], all), Vec::<usize>::new(), "older than delivered");
        // A state with the same version but other contents (a counter merged from two
        // replicas) is new.
        assert_eq!(m.on_batch(2, 2, &[e(7, 200, 3)], all), vec![0]);
        assert_eq!(m.on_batch(3, 1, &[e(8, 50, 4)], all), vec![0], "another key");
    }

    #[test]
    fn a_resumed_watch_drops_the_copies_it_delivered_before() {
        let mut m = opened(None);
        assert_eq!(m.on_batch(1, 4, &[e(7, 100, 1), e(8, 100, 2)], all), vec![0, 1]);
        assert_eq!(m.on_batch(2, 1, &[e(7, 100, 1)], all), Vec::<usize>::new());
        let rev = m.revision();
        assert_eq!(rev.pending.len(), 2);
        let mut resumed = WatchMerge::new(Some(rev.clone()));
        assert_eq!(resumed.start(1), FeedStart::After(LogPosition { log_id: 11, seq: 4 }));
        assert_eq!(resumed.start(2), FeedStart::After(LogPosition { log_id: 12, seq: 1 }));
        assert_eq!(resumed.start(4), FeedStart::Now, "a node the revision does not name");
        assert_eq!(resumed.on_batch(2, 3, &[e(8, 100, 2)], all), Vec::<usize>::new());
        assert_eq!(resumed.on_batch(3, 3, &[e(7, 100, 1), e(8, 100, 2)], all), Vec::<usize>::new());
        assert_eq!(resumed.on_batch(3, 4, &[e(7, 300, 5)], all), vec![0]);
        assert_eq!(resumed.revision().positions[&2].seq, 3);
    }

    #[test]
    fn a_watch_from_now_starts_every_node_at_its_end() {
        let m = WatchMerge::new(None);
        assert_eq!(m.start(1), FeedStart::Now);
        assert_eq!(m.start(9), FeedStart::Now, "a node that joins later starts from then");
    }

    #[test]
    fn memory_and_the_revision_are_bounded() {
        let mut m = opened(None).remembering(10);
        for k in 0..50u64 {
            assert_eq!(m.on_batch(1, k + 1, &[e(k, 100, k)], all), vec![0]);
        }
        assert!(m.delivered.len() <= 10);
        assert!(m.order.len() <= 2 * 10 + 1024);
        let mut big = opened(None);
        for k in 0..(MAX_PENDING_IN_REVISION as u64 + 10) {
            big.on_batch(1, k + 1, &[e(k, 100, k)], all);
        }
        let rev = big.revision();
        assert_eq!(rev.pending.len(), MAX_PENDING_IN_REVISION);
        assert_eq!(
            rev.pending.last().unwrap().key_hash,
            MAX_PENDING_IN_REVISION as u64 + 9,
            "the newest kept"
        );
    }
}
