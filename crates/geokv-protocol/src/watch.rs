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
//! for the key, or that the state delivered last already includes (while copies are pending,
//! the delivered state is kept and states are compared by merging them; a state concurrent
//! with it is delivered merged with it, so a counter or a set never shows less than it did).
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

use geokv_core::{Crdt, NodeId, Record, Stamp};

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
/// key's state, a digest of that state and the state itself (`None`: the node no longer holds
/// the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedEntry<'a> {
    pub key_hash: u64,
    pub version: Stamp,
    pub digest: u64,
    pub state: Option<&'a Record>,
}

/// What to deliver of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deliver {
    /// Entry `i` as it came.
    Entry(usize),
    /// Entry `i`'s key with this state: the entry's state merged with the one delivered before,
    /// which it did not include (concurrent writes on different replicas).
    Merged(usize, Box<Record>),
}

#[derive(Debug)]
struct Delivered {
    version: Stamp,
    digest: u64,
    waiting: Vec<NodeId>,
    /// The state delivered, kept while copies are pending (states are compared by merging).
    state: Option<Record>,
    /// Insertion number, to tell a live entry from a stale one in `order`.
    gen: u64,
}

/// The merge of a region's feeds for one watch.
#[derive(Debug)]
pub struct WatchMerge {
    positions: BTreeMap<NodeId, LogPosition>,
    delivered: HashMap<u64, Delivered>,
    order: VecDeque<(u64, u64)>,
    /// The delivered changes some replica has not shown yet: insertion number to key hash.
    pending: BTreeMap<u64, u64>,
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
            pending: BTreeMap::new(),
            gen: 0,
            remember: MAX_REMEMBERED_KEYS,
        };
        if let Some(rev) = from {
            merge.positions = rev.positions;
            for p in rev.pending {
                merge.remember_delivered(p.key_hash, p.version, p.digest, p.waiting, None);
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
    /// replicas); `node` may be among them. `digest` is the digest the feeds compute of a
    /// state. Returns what to deliver.
    pub fn on_batch(
        &mut self,
        node: NodeId,
        upto: u64,
        entries: &[FeedEntry<'_>],
        mut replicas: impl FnMut(usize) -> Vec<NodeId>,
        digest: impl Fn(&Record) -> u64,
    ) -> Vec<Deliver> {
        let mut out = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let mut merged = None;
            if let Some(d) = self.delivered.get_mut(&e.key_hash) {
                if e.digest == d.digest {
                    d.waiting.retain(|&n| n != node);
                    if d.waiting.is_empty() {
                        d.state = None;
                        self.pending.remove(&d.gen);
                    }
                    continue;
                }
                match (&d.state, e.state) {
                    (Some(before), Some(now)) => {
                        let mut m = before.clone();
                        m.merge(now);
                        if m == *before {
                            continue; // an older copy: what was delivered includes it
                        }
                        if m != *now {
                            merged = Some(m);
                        }
                    }
                    _ if e.version < d.version => continue,
                    _ => {}
                }
            }
            match merged {
                Some(m) => {
                    // No replica holds the merge yet: every one of them will show it.
                    let (version, d) = (m.version(), digest(&m));
                    self.remember_delivered(e.key_hash, version, d, replicas(i), Some(m.clone()));
                    out.push(Deliver::Merged(i, Box::new(m)));
                }
                None => {
                    let waiting: Vec<NodeId> = replicas(i).into_iter().filter(|&n| n != node).collect();
                    let state = e.state.filter(|_| !waiting.is_empty()).cloned();
                    self.remember_delivered(e.key_hash, e.version, e.digest, waiting, state);
                    out.push(Deliver::Entry(i));
                }
            }
        }
        if let Some(p) = self.positions.get_mut(&node) {
            p.seq = p.seq.max(upto);
        }
        out
    }

    /// `node`'s feed ended: the copies it has not shown are no longer waited for in this
    /// stream (a revision made from now on does not list it as waiting).
    pub fn closed(&mut self, node: NodeId) {
        let mut settled = Vec::new();
        for d in self.delivered.values_mut() {
            if d.waiting.contains(&node) {
                d.waiting.retain(|&n| n != node);
                if d.waiting.is_empty() {
                    d.state = None;
                    settled.push(d.gen);
                }
            }
        }
        for gen in settled {
            self.pending.remove(&gen);
        }
    }

    /// Where the watch stands now.
    pub fn revision(&self) -> Revision {
        let mut pending: Vec<PendingChange> = self
            .pending
            .iter()
            .rev()
            .take(MAX_PENDING_IN_REVISION)
            .filter_map(|(_, key_hash)| {
                let d = self.delivered.get(key_hash)?;
                Some(PendingChange {
                    key_hash: *key_hash,
                    version: d.version,
                    digest: d.digest,
                    waiting: d.waiting.clone(),
                })
            })
            .collect();
        pending.reverse();
        Revision { positions: self.positions.clone(), pending }
    }

    fn remember_delivered(
        &mut self,
        key_hash: u64,
        version: Stamp,
        digest: u64,
        waiting: Vec<NodeId>,
        state: Option<Record>,
    ) {
        self.gen += 1;
        let gen = self.gen;
        if !waiting.is_empty() {
            self.pending.insert(gen, key_hash);
        }
        if let Some(old) = self.delivered.insert(key_hash, Delivered { version, digest, waiting, state, gen })
        {
            self.pending.remove(&old.gen);
        }
        self.order.push_back((key_hash, gen));
        while self.delivered.len() > self.remember || self.order.len() > 2 * self.remember + 1024 {
            let Some((k, g)) = self.order.pop_front() else { break };
            if self.delivered.get(&k).is_some_and(|d| d.gen == g) {
                self.delivered.remove(&k);
                self.pending.remove(&g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geokv_core::{apply, Limits, Op, View};

    fn e(key_hash: u64, t: u64, digest: u64) -> FeedEntry<'static> {
        FeedEntry { key_hash, version: Stamp::new(t, 1), digest, state: None }
    }

    const REPLICAS: [NodeId; 3] = [1, 2, 3];

    fn all(_: usize) -> Vec<NodeId> {
        REPLICAS.to_vec()
    }

    /// Digests of states in these tests: their debug text, hashed by std.
    fn digest(r: &Record) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{r:?}").hash(&mut h);
        h.finish()
    }

    fn batch(m: &mut WatchMerge, node: NodeId, upto: u64, entries: &[FeedEntry<'_>]) -> Vec<usize> {
        m.on_batch(node, upto, entries, all, digest)
            .into_iter()
            .map(|d| match d {
                Deliver::Entry(i) => i,
                Deliver::Merged(i, _) => panic!("entry {i} merged"),
            })
            .collect()
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
        assert_eq!(batch(&mut m, 1, 5, &[e(7, 100, 1)]), vec![0]);
        assert_eq!(batch(&mut m, 2, 3, &[e(7, 100, 1)]), Vec::<usize>::new());
        assert_eq!(m.revision().pending.len(), 1, "replica 3 has not shown it yet");
        assert_eq!(batch(&mut m, 3, 9, &[e(7, 100, 1)]), Vec::<usize>::new());
        let rev = m.revision();
        assert!(rev.pending.is_empty(), "every replica showed it: {rev:?}");
        assert_eq!(rev.positions[&1].seq, 5);
        assert_eq!(rev.positions[&2].seq, 3);
        assert_eq!(rev.positions[&3].seq, 9);
    }

    #[test]
    fn a_key_never_goes_back_to_an_older_version_and_newer_states_get_through() {
        let mut m = opened(None);
        assert_eq!(batch(&mut m, 1, 2, &[e(7, 100, 1), e(7, 200, 2)]), vec![0, 1]);
        assert_eq!(batch(&mut m, 2, 1, &[e(7, 100, 1)]), Vec::<usize>::new(), "older than delivered");
        assert_eq!(batch(&mut m, 2, 2, &[e(7, 200, 3)]), vec![0], "same version, other contents");
        assert_eq!(batch(&mut m, 3, 1, &[e(8, 50, 4)]), vec![0], "another key");
    }

    fn incr(cur: Option<&Record>, delta: i64, t: u64, node: NodeId) -> Record {
        let op = Op::Increment { delta, ttl_ms: None };
        apply(cur, &op, Stamp::new(t, node), 0, &Limits::default()).unwrap().record
    }

    fn count(r: &Record) -> Option<View> {
        r.view(0)
    }

    #[test]
    fn concurrent_counter_states_never_show_less_than_before() {
        // Two increments coordinated by two nodes; replicas see them in different orders.
        let c1 = incr(None, 1, 190, 1);
        let c2 = incr(None, 1, 200, 2);
        let mut both = c1.clone();
        both.merge(&c2);
        let entry =
            |r: &Record| FeedEntry { key_hash: 7, version: r.version(), digest: digest(r), state: None };
        let with = |r: &'static Record| FeedEntry { state: Some(r), ..entry(r) };
        let (c1, c2, both): (&'static Record, &'static Record, &'static Record) =
            (Box::leak(Box::new(c1)), Box::leak(Box::new(c2)), Box::leak(Box::new(both)));
        let mut m = opened(None);
        assert_eq!(batch(&mut m, 1, 1, &[with(c1)]), vec![0]);
        assert_eq!(batch(&mut m, 2, 1, &[with(both)]), vec![0], "the counter grew");
        // Replica 3 has only the second increment: the same version as `both`, less in it.
        assert_eq!(batch(&mut m, 3, 1, &[with(c2)]), Vec::<usize>::new(), "never back to 1");
        assert_eq!(batch(&mut m, 1, 2, &[with(c1)]), Vec::<usize>::new(), "an old copy again");
        // Concurrent states: the merge of both is delivered.
        let mut n = opened(None);
        assert_eq!(batch(&mut n, 1, 1, &[with(c1)]), vec![0]);
        let out = n.on_batch(2, 1, &[with(c2)], all, digest);
        match &out[..] {
            [Deliver::Merged(0, merged)] => assert_eq!(count(merged), count(both)),
            other => panic!("the merge of two concurrent states, not {other:?}"),
        }
        assert_eq!(batch(&mut n, 3, 1, &[with(both)]), Vec::<usize>::new(), "the merge itself is a copy");
        assert_eq!(n.revision().pending.len(), 1, "replicas 1 and 2 have not shown the merge yet");
    }

    #[test]
    fn a_resumed_watch_drops_the_copies_it_delivered_before() {
        let mut m = opened(None);
        assert_eq!(batch(&mut m, 1, 4, &[e(7, 100, 1), e(8, 100, 2)]), vec![0, 1]);
        assert_eq!(batch(&mut m, 2, 1, &[e(7, 100, 1)]), Vec::<usize>::new());
        let rev = m.revision();
        assert_eq!(rev.pending.len(), 2);
        let mut resumed = WatchMerge::new(Some(rev.clone()));
        assert_eq!(resumed.start(1), FeedStart::After(LogPosition { log_id: 11, seq: 4 }));
        assert_eq!(resumed.start(2), FeedStart::After(LogPosition { log_id: 12, seq: 1 }));
        assert_eq!(resumed.start(4), FeedStart::Now, "a node the revision does not name");
        assert_eq!(batch(&mut resumed, 2, 3, &[e(8, 100, 2)]), Vec::<usize>::new());
        assert_eq!(batch(&mut resumed, 3, 3, &[e(7, 100, 1), e(8, 100, 2)]), Vec::<usize>::new());
        assert_eq!(batch(&mut resumed, 3, 4, &[e(7, 300, 5)]), vec![0]);
        assert_eq!(resumed.revision().positions[&2].seq, 3);
    }

    #[test]
    fn a_closed_feed_is_no_longer_waited_for() {
        let mut m = opened(None);
        assert_eq!(batch(&mut m, 1, 1, &[e(7, 100, 1)]), vec![0]);
        assert_eq!(batch(&mut m, 2, 1, &[e(7, 100, 1)]), Vec::<usize>::new());
        m.closed(3);
        assert!(m.revision().pending.is_empty());
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
            assert_eq!(batch(&mut m, 1, k + 1, &[e(k, 100, k)]), vec![0]);
        }
        assert!(m.delivered.len() <= 10);
        assert!(m.pending.len() <= 10);
        assert!(m.order.len() <= 2 * 10 + 1024);
        let mut big = opened(None);
        for k in 0..(MAX_PENDING_IN_REVISION as u64 + 10) {
            batch(&mut big, 1, k + 1, &[e(k, 100, k)]);
        }
        let rev = big.revision();
        assert_eq!(rev.pending.len(), MAX_PENDING_IN_REVISION);
        assert_eq!(
            rev.pending.last().unwrap().key_hash,
            MAX_PENDING_IN_REVISION as u64 + 9,
            "the newest kept"
        );
        assert_eq!(rev.pending[0].key_hash, 10, "in delivery order");
    }
}
