//! Merkle anti-entropy between the replicas of a region.
//!
//! A round with peer P: compare the Merkle summaries of the keys both replicate (root, then
//! buckets), fetch P's per-key digests of the differing buckets, and for every key whose digest
//! differs, pull P's state, merge it here, and push the merge back. Only differing keys travel.
//!
//! Summaries are computed by a scan of the node's data per round (not maintained
//! incrementally), which costs O(keys) of local reads per round; rounds are spaced by
//! `cluster.anti_entropy_interval_ms`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use geokv_cluster::merkle::{self, Summary};
use geokv_cluster::Membership;
use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use geokv_storage::codec;
use tonic::Status;

use super::coordinator::{decode, encode};
use super::Cluster;

/// Deadline of a peer's summary or digest scan.
const AE_SCAN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Buckets whose key digests one `Digests` call carries.
const DIGEST_BUCKETS_PER_CALL: usize = 512;

/// Awaits a node-to-node call for at most `deadline`.
pub(super) async fn with_deadline<T>(
    deadline: std::time::Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(deadline, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {deadline:?}"))),
    }
}

impl Cluster {
    /// Whether `key` is replicated by both this node and `peer` in `view`. A peer of another
    /// region replicates the keys its region's ring (from the topology) gives it.
    fn shared_with(&self, view: &Membership, key: &[u8], peer: NodeId) -> bool {
        let home = view.home(key);
        if !home.contains(&self.me) {
            return false;
        }
        match view.info(peer).map(|i| i.region.as_str()) {
            Some(region) if region == self.region => home.contains(&peer),
            Some(region) => {
                self.residency.allows(key, region)
                    && self
                        .remote_rings
                        .get(region)
                        .is_some_and(|(ring, n)| ring.preference_list(key, *n).contains(&peer))
            }
            None => false,
        }
    }

    /// Digests of the keys shared with `peer`, optionally only in some buckets.
    fn local_digests(
        &self,
        peer: NodeId,
        leaves: Option<&[u32]>,
    ) -> Result<BTreeMap<Vec<u8>, u64>, geokv_storage::StorageError> {
        let wanted: Option<std::collections::BTreeSet<u32>> = leaves.map(|l| l.iter().copied().collect());
        let mut out = BTreeMap::new();
        let view = self.view();
        self.node.engine().for_each(|key, rec| {
            if self.shared_with(&view, key, peer)
                && wanted.as_ref().is_none_or(|w| w.contains(&merkle::leaf_of(key)))
            {
                out.insert(key.to_vec(), merkle::digest(key, &codec::serialize(rec)));
            }
        })?;
        Ok(out)
    }

    /// The Merkle summary of the keys shared with `peer`, and how many keys it covers. Digests
    /// are folded in as the data is scanned, so memory does not grow with the key count.
    pub fn summary_for(&self, peer: NodeId) -> Result<(Summary, usize), geokv_storage::StorageError> {
        let mut s = Summary::default();
        let mut count = 0;
        let view = self.view();
        self.node.engine().for_each(|key, rec| {
            if self.shared_with(&view, key, peer) {
                s.add(key, merkle::digest(key, &codec::serialize(rec)));
                count += 1;
            }
        })?;
        Ok((s, count))
    }

    pub fn digests_for(
        &self,
        peer: NodeId,
        leaves: &[u32],
    ) -> Result<Vec<pb::KeyDigest>, geokv_storage::StorageError> {
        Ok(self
            .local_digests(peer, Some(leaves))?
            .into_iter()
            .map(|(key, digest)| pb::KeyDigest { key, digest })
            .collect())
    }

    /// One anti-entropy round with every healthy peer of the region, then with every node of
    /// the other regions whose (emulated) link is not cut: the cross-region backstop for
    /// anything the replication log missed. Rounds do not overlap: a round asked for while one
    /// runs (timer or `RunAntiEntropy`) waits for it.
    pub async fn anti_entropy_round(self: &Arc<Self>) {
        let _one_at_a_time = self.ae_lock.lock().await;
        for peer in self.view().peers() {
            if !self.healthy(peer) {
                continue;
            }
            if let Err(e) = self.anti_entropy_with(peer).await {
                tracing::warn!(peer, error = %e, "anti-entropy round failed; will retry");
            }
        }
        for (region, (ring, _)) in &self.remote_rings {
            if self.replicator().is_some_and(|r| r.is_cut(region)) {
                continue;
            }
            for &peer in ring.nodes() {
                if let Err(e) = self.anti_entropy_with(peer).await {
                    tracing::warn!(peer, region, error = %e, "cross-region anti-entropy failed; will retry");
                }
            }
        }
        self.stats.ae_rounds.fetch_add(1, Ordering::Relaxed);
    }

    async fn anti_entropy_with(self: &Arc<Self>, peer: NodeId) -> Result<(), Status> {
        let mut client = self.client(peer).ok_or_else(|| Status::internal("unknown peer"))?;
        let this = self.clone();
        let (mine, compared) = tokio::task::spawn_blocking(move || this.summary_for(peer))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(crate::status::to_status)?;
        self.stats.ae_keys_compared.fetch_add(compared as u64, Ordering::Relaxed);
        let theirs =
            with_deadline(AE_SCAN_TIMEOUT, client.summary(pb::SummaryRequest { peer: self.me })).await?;
        self.stats.ae_summary_bytes.fetch_add(theirs.leaves.len() as u64 * 8, Ordering::Relaxed);
        let theirs = Summary { leaves: theirs.leaves };
        if mine.root() == theirs.root() {
            return Ok(());
        }
        // Digests travel a few buckets at a time, so a replica that differs everywhere (a new or
        // wiped node) is repaired in bounded messages rather than one huge one.
        let mut failed = 0u64;
        for leaves in mine.differing(&theirs).chunks(DIGEST_BUCKETS_PER_CALL) {
            failed += self.repair_buckets(&mut client, peer, leaves).await?;
        }
        if failed > 0 {
            return Err(Status::unavailable(format!(
                "{failed} keys could not be exchanged; the next round retries them"
            )));
        }
        Ok(())
    }

    /// Compares and repairs the keys of some buckets. Returns how many keys failed.
    async fn repair_buckets(
        self: &Arc<Self>,
        client: &mut super::peers::PeerClient,
        peer: NodeId,
        leaves: &[u32],
    ) -> Result<u64, Status> {
        let leaves = leaves.to_vec();
        let request = pb::DigestsRequest { peer: self.me, leaves: leaves.clone() };
        let their_digests: BTreeMap<Vec<u8>, u64> = with_deadline(AE_SCAN_TIMEOUT, client.digests(request))
            .await?
            .digests
            .into_iter()
            .map(|d| (d.key, d.digest))
            .collect();
        let this = self.clone();
        let my_digests: BTreeMap<Vec<u8>, u64> =
            tokio::task::spawn_blocking(move || this.local_digests(peer, Some(&leaves)))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(crate::status::to_status)?;
        self.stats
            .ae_summary_bytes
            .fetch_add(their_digests.keys().map(|k| k.len() as u64 + 8).sum::<u64>(), Ordering::Relaxed);
        let mut failed = 0u64;
        for key in merkle::differing_keys(&my_digests, &their_digests) {
            if let Err(e) = self.exchange(client, key).await {
                failed += 1;
                tracing::debug!(peer, error = %e, "anti-entropy exchange failed");
            }
        }
        Ok(failed)
    }

    /// Pulls the peer's state of `key`, merges it here, and pushes the merge back.
    async fn exchange(&self, client: &mut super::peers::PeerClient, key: Vec<u8>) -> Result<(), Status> {
        let timeout = self.peers.timeout();
        // A peer whose copy is corrupt answers DATA_LOSS: exchange as if it had none, so the
        // merge pushed back below replaces its corrupt state.
        let theirs =
            match with_deadline(timeout, client.fetch(pb::FetchRequest { key: key.clone(), writer_hlc: 0 }))
                .await
            {
                Ok(r) => r.state,
                Err(s) if s.code() == tonic::Code::DataLoss => Vec::new(),
                Err(s) => return Err(s),
            };
        self.stats.ae_state_bytes_received.fetch_add(theirs.len() as u64, Ordering::Relaxed);
        let node = self.node.clone();
        let k = key.clone();
        let incoming = if theirs.is_empty() { None } else { Some(decode(&theirs)?) };
        let merged = tokio::task::spawn_blocking(move || {
            if let Some(rec) = &incoming {
                node.engine().merge(&k, rec)?;
            }
            node.engine().get(&k)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(crate::status::to_status)?;
        if let Some(rec) = merged {
            let state = encode(&rec);
            self.stats.ae_state_bytes_sent.fetch_add(state.len() as u64, Ordering::Relaxed);
            let req = pb::MergeRequest { key, state, hint_for: None, ship: false };
            with_deadline(timeout, self.send_merge(client, req)).await?;
        }
        self.stats.ae_keys_repaired.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
