//! The receiving side of cross-region replication: a batch another region shipped, checked
//! by the protocol's rules (`geokv_protocol::xregion`: it follows the previous batch of its
//! stream, its sender's policy is not newer, its clock is within the drift bound) and each of
//! its deltas merged into the key's home replicas here at QUORUM before it is acknowledged.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use geokv_cluster::Level;
use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use geokv_protocol::residency::change;
use geokv_protocol::{xregion, Failure, Kind};
use geokv_replication::Batch;

use super::{decode, Replicator, APPLY_PARALLELISM};
use crate::Cluster;

impl Replicator {
    /// Applies one received batch; returns its acknowledgement.
    pub async fn receive(
        &self,
        msg: pb::ReplicationBatch,
        expected_after: &mut Option<u64>,
        sender: Option<&(NodeId, String)>,
    ) -> pb::ReplicationAck {
        let refuse =
            |error: String| pb::ReplicationAck { last_seq: msg.last_seq, ok: false, error, not_applied: 0 };
        if !geokv_replication::reads_format(msg.format) {
            return refuse(format!(
                "the batch is in format {}, newer than this node reads (up to {}); it is kept and sent again once this region is upgraded",
                msg.format,
                geokv_replication::BATCH_FORMAT
            ));
        }
        let batch = match Batch::decode(&msg.payload) {
            Ok(b) => b,
            Err(e) => return refuse(e.to_string()),
        };
        // A batch names its origin; over TLS that must be the node whose certificate sent it.
        if let Some((id, region)) = sender {
            if (batch.origin_node, batch.origin_region.as_str()) != (*id, region.as_str()) {
                if let Some(tls) = self.cluster.node().tls() {
                    tls.count_rejection_on("peer", "wrong_origin");
                }
                tracing::warn!(node = id, %region, origin = batch.origin_node, origin_region = %batch.origin_region, "replication batch refused: it names another origin than its sender");
                return refuse(format!(
                    "the batch claims to come from node {} of region {}, but node {id} of region {region} sent it",
                    batch.origin_node, batch.origin_region
                ));
            }
        }
        // The protocol's rules for a received batch (`geokv_protocol::xregion`): it follows
        // the previous one of its stream (checked first, before the clock moves) ...
        if let Err(f) = xregion::check_batch(*expected_after, batch.after_seq, Ok(())) {
            return refuse(f.message);
        }
        let residency = self.cluster.residency();
        if let Err(f) = change::on_sender_version(msg.residency_version, residency.version()) {
            // The sender holds a newer policy (which may allow this region keys ours does
            // not): fetch it before taking its deltas.
            self.cluster.sync_residency_soon(batch.origin_node);
            return refuse(f.message);
        }
        self.batches_received.fetch_add(1, Ordering::Relaxed);
        // ... and its clock is within the drift bound.
        let clock = self.cluster.node().observe_remote_time(batch.hlc, batch.origin_node);
        if let Err(f) = xregion::check_batch(None, batch.after_seq, clock) {
            self.drift_rejections.fetch_add(1, Ordering::Relaxed);
            tracing::error!(origin = %batch.origin_region, node = batch.origin_node, error = %f.message, "replication batch refused: its clock is beyond the maximum drift");
            return refuse(f.message);
        }
        let mut tasks = tokio::task::JoinSet::new();
        let mut tally = xregion::BatchTally::default();
        let settle = |tally: &mut xregion::BatchTally,
                      done: Result<Result<(), tonic::Status>, tokio::task::JoinError>| {
            let result = match done {
                Ok(r) => r.map_err(|s| Failure::refused(crate::api::status::kind_of(s.code()), s.message())),
                Err(e) => Err(Failure::refused(Kind::Internal, e.to_string())),
            };
            let message = result.as_ref().err().map(|f| f.message.clone());
            if tally.on_applied(result) {
                // Refused for good (its merge would be over the codec's bound, a stamp from
                // the future): set aside and counted, so one delta can never stall the stream
                // (and the purges waiting on it).
                self.deltas_set_aside.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = ?message, "a replicated state was refused here and set aside");
            } else if message.is_none() {
                self.deltas_applied.fetch_add(1, Ordering::Relaxed);
            }
        };
        for delta in batch.deltas {
            if !residency.allows_here(&delta.key) {
                // The sender's policy is older than ours: this region may not hold the key.
                residency.stats.dropped_deltas.fetch_add(1, Ordering::Relaxed);
                tally.on_dropped();
                continue;
            }
            if tasks.len() >= APPLY_PARALLELISM {
                if let Some(done) = tasks.join_next().await {
                    settle(&mut tally, done);
                }
            }
            let cluster = self.cluster.clone();
            tasks.spawn(async move {
                let rec = decode(&delta.state)?;
                // The batch's clock may be fine while this state carries a stamp from the future
                // (its writer's clock ran ahead): refused for good, so set aside.
                let v = rec.version();
                cluster.node().observe_remote_time(v.time, v.node).map_err(|e| {
                    tonic::Status::failed_precondition(format!(
                        "key {:?}: its stamp is beyond max_clock_drift_ms ahead of this node's clock ({e})",
                        crate::residency::shown_key(&delta.key)
                    ))
                })?;
                cluster.apply_remote(delta.key, rec).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            settle(&mut tally, done);
        }
        let not_applied = match tally.ack() {
            Ok(n) => n,
            Err(e) => return refuse(e),
        };
        *expected_after = Some(batch.last_seq);
        pb::ReplicationAck { last_seq: batch.last_seq, ok: true, error: String::new(), not_applied }
    }
}

impl Cluster {
    /// Merges a state that came from another region into the key's home replicas here, at
    /// QUORUM. Not shipped again.
    pub async fn apply_remote(
        self: &Arc<Self>,
        key: Vec<u8>,
        rec: geokv_core::Record,
    ) -> Result<(), tonic::Status> {
        let home = self.view().home(&key);
        let state = if xregion::merges_here(home.contains(&self.node().id())) {
            let node = self.node().clone();
            // Through the writer thread (committed with whatever else is queued), then the
            // merged state, from memory when it is there.
            node.merge_async(key.clone(), rec.clone(), false).await.map_err(crate::api::status::to_status)?;
            let merged = match node.engine().get_cached(&key) {
                Ok(Some(found)) => Ok(found),
                Ok(None) => {
                    let k = key.clone();
                    crate::blocking::run(move || node.engine().get(&k)).await?
                }
                Err(e) => Err(e),
            };
            merged.map_err(crate::api::status::to_status)?.unwrap_or(rec)
        } else {
            rec
        };
        Ok(self.replicate(&key, &state, Level::Quorum, false).await?)
    }
}
