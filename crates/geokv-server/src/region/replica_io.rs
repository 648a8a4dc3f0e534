//! A coordinator's I/O with one replica: the states of keys on it (`Fetch`) and new states sent
//! to it (`Merge`). One code path for a single write, a read and a batch's writes: a single
//! key is a batch of one. A peer's calls go through its coalescing queues (`peer::coalesce`),
//! so items handed over together go in the fewest calls; this node's own states come from
//! memory in place, and what memory cannot tell from the disk in one blocking task.

use geokv_core::{NodeId, Record};
use geokv_proto::v1 as pb;
use geokv_protocol::{Failure, Kind, PeerError};
use geokv_topology::Target;

use super::coordinator::{blocking, decode, encode, CoordinatorError};
use super::Cluster;
use crate::api::status::peer_error;

/// One replica's answer to a fetch of a key.
pub(super) type Fetched = Result<Option<Record>, PeerError>;

/// A state for one target of a key: the `MergeRequest` that carries it.
pub(super) fn merge_request(target: &Target, key: Vec<u8>, state: &Record, ship: bool) -> pb::MergeRequest {
    pb::MergeRequest { key, state: encode(state), hint_for: target.hint_for, ship }
}

impl Cluster {
    /// One replica's state of a key.
    pub(super) async fn fetch(&self, node: NodeId, key: Vec<u8>, writer: Option<u64>) -> Fetched {
        let mut one = self.fetch_many(node, vec![(key, writer)]).await;
        one.pop().expect("one answer per key")
    }

    /// The states of keys on one replica, in their order: this node's from memory or disk, a
    /// peer's in as few `FetchMany` calls as their sizes allow. `writer` is the HLC of the
    /// write a fetch is the first read of, if any.
    pub(super) async fn fetch_many(&self, node: NodeId, keys: Vec<(Vec<u8>, Option<u64>)>) -> Vec<Fetched> {
        if node == self.me {
            return self.fetch_here(keys).await;
        }
        let n = keys.len();
        let Some(queue) = self.fetch_queue(node) else {
            let e = PeerError::NeverSent(format!("node {node} has no known address"));
            return vec![Err(e); n];
        };
        let reqs = keys
            .into_iter()
            .map(|(key, writer)| pb::FetchRequest { key, writer_hlc: writer.unwrap_or(0), vote: true })
            .collect();
        // Together, so they go in the same calls (`peer::coalesce`).
        match tokio::time::timeout(self.peers.timeout(), queue.call_all(reqs)).await {
            Err(_) => vec![Err(PeerError::TimedOut("fetch timed out".into())); n],
            Ok(answers) => answers
                .into_iter()
                .map(|r| r.map_err(peer_error).and_then(|resp| self.fetched(node, resp)))
                .collect(),
        }
    }

    /// This node's own states of keys, as a replica's vote in a quorum read (the vote is taken
    /// once for the keys asked together): memory in place when it can tell, the rest from the
    /// disk in one task on the blocking pool.
    async fn fetch_here(&self, keys: Vec<(Vec<u8>, Option<u64>)>) -> Vec<Fetched> {
        if let Err(f) = self.vote() {
            return vec![Err(PeerError::Answered(f)); keys.len()];
        }
        let mut out: Vec<Option<Fetched>> = Vec::with_capacity(keys.len());
        let mut from_disk = Vec::new();
        for (i, (key, _)) in keys.into_iter().enumerate() {
            match self.node.engine().get_cached(&key).transpose() {
                Some(found) => out.push(Some(found.map_err(|e| CoordinatorError::from(e).into()))),
                None => {
                    out.push(None);
                    from_disk.push((i, key));
                }
            }
        }
        if !from_disk.is_empty() {
            let (slots, keys): (Vec<usize>, Vec<Vec<u8>>) = from_disk.into_iter().unzip();
            let n = self.node.clone();
            let read =
                blocking(move || keys.iter().map(|k| n.engine().get(k)).collect::<Result<Vec<_>, _>>());
            match read.await {
                Ok(states) => {
                    for (i, state) in slots.into_iter().zip(states) {
                        out[i] = Some(Ok(state));
                    }
                }
                Err(e) => {
                    let e = PeerError::from(e);
                    for i in slots {
                        out[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        out.into_iter().map(|r| r.expect("every key answered")).collect()
    }

    /// A replica's answer to a fetch: its state, if it may be used.
    fn fetched(&self, node: NodeId, resp: pb::FetchResponse) -> Fetched {
        if resp.state.is_empty() {
            return Ok(None);
        }
        let rec = decode(&resp.state).map_err(PeerError::from)?;
        // A replica whose clock ran ahead may hold stamps from the future: such a state is
        // neither served nor merged anywhere (it would win every LWW race).
        let v = rec.version();
        self.node.observe_remote_time(v.time, v.node).map_err(|e| {
            PeerError::Answered(Failure {
                reason: Some("CLOCK_DRIFT".into()),
                ..Failure::refused(
                    Kind::FailedPrecondition,
                    format!("node {node} holds a state of the key stamped beyond max_clock_drift_ms ahead of this node's clock ({e}); its answer is not used"),
                )
            })
        })?;
        Ok(Some(rec))
    }

    /// Sends a state to one target.
    pub(super) async fn send_state(
        &self,
        target: Target,
        key: &[u8],
        rec: &Record,
        ship: bool,
    ) -> Result<(), PeerError> {
        let req = merge_request(&target, key.to_vec(), rec, ship);
        let mut one = self.send_many(target.node, vec![req]).await;
        one.pop().expect("one answer per state")
    }

    /// New states of keys to one replica, answered in their order, in as few `MergeMany` calls
    /// as their sizes allow (coalesced with the other states going to it now).
    pub(super) async fn send_many(
        &self,
        node: NodeId,
        reqs: Vec<pb::MergeRequest>,
    ) -> Vec<Result<(), PeerError>> {
        let n = reqs.len();
        // Backpressure: a replica with too many sends in flight gets hints instead.
        let Some(_slots) = self.slots(node, n).await else {
            return vec![Err(PeerError::NeverSent("too many sends in flight to this replica".into())); n];
        };
        let Some(queue) = self.merge_queue(node) else {
            return vec![Err(PeerError::Answered(Failure::refused(Kind::Internal, "unknown peer"))); n];
        };
        match tokio::time::timeout(self.peers.timeout(), queue.call_all(reqs)).await {
            Err(_) => vec![Err(PeerError::TimedOut("merge timed out".into())); n],
            Ok(answers) => answers
                .into_iter()
                .map(|r| {
                    let r = r.map(|_| ()).map_err(peer_error);
                    if let Err(PeerError::Answered(f)) = &r {
                        tracing::warn!(node, error = %f, "replica refused a state");
                    }
                    r
                })
                .collect(),
        }
    }
}
