//! Handing keys over before residency enforcement erases them.
//!
//! A policy change can take a key away from this region and give it to another (`p:` moves
//! from A to B). B never held the key, so erasing it here first would lose it everywhere.
//! Enforcement therefore first ships the state of every key it is about to erase (its own
//! copies and the hints it keeps) to every other region the new policy lets hold it, over the
//! same `Replicate` stream the cross-region replicator uses (the receiver merges each delta
//! into its home replicas at QUORUM before it acknowledges). Only keys that every such region
//! acknowledged, and whose state has not changed since it was shipped, are erased; the others
//! stay, are counted as kept, and the next enforcement (the residency sync retries it) tries
//! again. A region behind a cut link, or with no node answering, keeps the key here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use geokv_core::{Crdt, NodeId, Record, Stamp};
use geokv_proto::v1 as pb;
use geokv_protocol::residency::change;
use geokv_protocol::PeerError;
use geokv_replication::{Batch, Delta};
use geokv_storage::StorageError;

use super::apply::ResidencyError;
use crate::api::status::peer_error;
use crate::region::coordinator::encode;
use crate::region::Cluster;
use crate::residency::Installed;

/// Uncompressed bytes of deltas per handover batch.
const HANDOVER_BATCH_BYTES: usize = 1024 * 1024;
/// How long one destination node gets to acknowledge all the batches of a handover.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a region did not take the keys handed over to it: the keys stay here, and the reason is
/// part of the enforcement's report.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandoverError {
    #[error("the link to it is cut")]
    LinkCut,
    #[error("it has no nodes")]
    NoNodes,
    /// The call to a node of the region failed (the last node tried).
    #[error("node {node}: {error}")]
    Peer { node: NodeId, error: PeerError },
    #[error("node {node}: the destination closed the stream")]
    Closed { node: NodeId },
    #[error("node {node}: batch refused: {reason}")]
    Refused { node: NodeId, reason: String },
    /// Its policy (a newer version?) does not let it hold some of the keys, or it set them aside.
    #[error("node {node}: {count} of the states were not applied there")]
    NotApplied { node: NodeId, count: u64 },
}

/// What a handover did: the keys it may erase, each with the version of this node's own
/// copy when it was shipped (`None`: only hints), and why the others must stay.
#[derive(Default)]
pub(crate) struct Handover {
    pub handed: HashMap<Vec<u8>, Option<Stamp>>,
    pub errors: Vec<String>,
}

/// The states of the keys to hand over: each merged with the hints kept for it, and the
/// version of this node's own copy.
type Doomed = BTreeMap<Vec<u8>, (Record, Option<Stamp>)>;

impl Cluster {
    /// The states this node holds of the keys `doomed` picks: its own copy merged with the
    /// hints it keeps for other nodes.
    pub(crate) fn doomed_states(&self, doomed: &dyn Fn(&[u8]) -> bool) -> Result<Doomed, StorageError> {
        let engine = self.node.engine();
        let mut states: Doomed = BTreeMap::new();
        engine.for_each(|key, rec| {
            if doomed(key) {
                states.insert(key.to_vec(), (rec.clone(), Some(rec.version())));
            }
        })?;
        for target in engine.hint_targets()? {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = engine.hints_for(target, after.as_deref(), 1024)?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                for (key, rec) in page.into_iter().filter(|(k, _)| doomed(k)) {
                    states.entry(key).and_modify(|(s, _)| s.merge(&rec)).or_insert((rec, None));
                }
            }
        }
        Ok(states)
    }

    /// Ships the states of the keys `doomed` picks to every other region the installed policy
    /// lets hold them; see the module comment.
    pub(crate) async fn hand_over(
        self: &Arc<Self>,
        installed: &Installed,
        doomed: impl Fn(&[u8]) -> bool + Send + 'static,
    ) -> Result<Handover, ResidencyError> {
        let this = self.clone();
        let states = crate::blocking::run(move || this.doomed_states(&doomed))
            .await?
            .map_err(ResidencyError::Enforce)?;
        let mut out = Handover::default();
        // Per destination region, the keys it must acknowledge.
        let mut by_region: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut needs: HashMap<Vec<u8>, BTreeSet<String>> = HashMap::new();
        for key in states.keys() {
            let regions: BTreeSet<String> = change::hand_over_regions(&installed.policy, &self.region, key);
            for r in &regions {
                by_region.entry(r.clone()).or_default().push(key.clone());
            }
            needs.insert(key.clone(), regions);
        }
        for (region, keys) in by_region {
            match self.ship_to_region(&region, &keys, &states, installed.version).await {
                Ok(()) => {
                    for k in &keys {
                        if let Some(n) = needs.get_mut(k) {
                            n.remove(&region);
                        }
                    }
                }
                Err(e) => out.errors.push(format!("region {region}: {e}")),
            }
        }
        for (key, left) in needs {
            if left.is_empty() {
                let own = states[&key].1;
                out.handed.insert(key, own);
            }
        }
        Ok(out)
    }

    /// Sends `keys` (states from `states`) to one node of `region` after another until one
    /// acknowledges every batch.
    async fn ship_to_region(
        &self,
        region: &str,
        keys: &[Vec<u8>],
        states: &Doomed,
        residency_version: u64,
    ) -> Result<(), HandoverError> {
        if self.replicator().is_some_and(|r| r.is_cut(region)) {
            return Err(HandoverError::LinkCut);
        }
        let mut batches = Vec::new();
        let mut batch = self.handover_batch(0);
        let mut bytes = 0;
        for key in keys {
            let rec = &states[key].0;
            let state = encode(rec);
            bytes += key.len() + state.len();
            batch.deltas.push(Delta { stamp: rec.version().time, key: key.clone(), state });
            if bytes >= HANDOVER_BATCH_BYTES {
                let next = self.handover_batch(batch.last_seq);
                batches.push(std::mem::replace(&mut batch, next));
                bytes = 0;
            }
        }
        if !batch.deltas.is_empty() {
            batches.push(batch);
        }
        let messages: Vec<pb::ReplicationBatch> = batches
            .iter()
            .map(|b| pb::ReplicationBatch {
                payload: b.encode(3).0,
                last_seq: b.last_seq,
                residency_version,
                format: geokv_replication::BATCH_FORMAT,
            })
            .collect();
        let nodes: Vec<(u64, String)> =
            self.all_nodes().into_iter().filter(|(_, r, _)| r == region).map(|(id, _, a)| (id, a)).collect();
        let mut last = HandoverError::NoNodes;
        if nodes.is_empty() {
            return Err(last);
        }
        // A receiver with an older policy refuses at first and fetches ours: try a few rounds.
        for round in 0..3 {
            for (id, addr) in &nodes {
                match tokio::time::timeout(HANDOVER_TIMEOUT, self.ship_batches(*id, addr, &messages)).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => last = e,
                    Err(_) => {
                        let error =
                            PeerError::TimedOut(format!("no acknowledgement within {HANDOVER_TIMEOUT:?}"));
                        last = HandoverError::Peer { node: *id, error };
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500 * (round + 1))).await;
        }
        Err(last)
    }

    fn handover_batch(&self, after: u64) -> Batch {
        Batch {
            origin_region: self.region.clone(),
            origin_node: self.me,
            after_seq: after,
            last_seq: after + 1,
            hlc: self.node.hlc_now(),
            deltas: Vec::new(),
        }
    }

    /// Streams `messages` to one node and waits for an acknowledgement of each.
    async fn ship_batches(
        &self,
        id: u64,
        addr: &str,
        messages: &[pb::ReplicationBatch],
    ) -> Result<(), HandoverError> {
        let failed = |error| HandoverError::Peer { node: id, error };
        let mut client = self
            .peers
            .client(id, addr)
            .ok_or_else(|| failed(PeerError::NeverSent("unusable peer address".into())))?;
        let stream = futures::stream::iter(messages.to_vec());
        let mut acks = client.replicate(stream).await.map_err(|s| failed(peer_error(s)))?.into_inner();
        for m in messages {
            let ack = acks
                .message()
                .await
                .map_err(|s| failed(peer_error(s)))?
                .ok_or(HandoverError::Closed { node: id })?;
            if !ack.ok || ack.last_seq != m.last_seq {
                return Err(HandoverError::Refused { node: id, reason: ack.error });
            }
            if ack.not_applied > 0 {
                // Its policy (a newer version?) does not let it hold some of them, or it set
                // them aside: they are not handed over.
                return Err(HandoverError::NotApplied { node: id, count: ack.not_applied });
            }
        }
        Ok(())
    }
}
