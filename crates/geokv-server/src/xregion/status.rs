//! What the replicator reports: per destination region, the lag and its history of the last
//! hour (sampled every second), backlog, batches and the link (`ReplicationStatus`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use geokv_proto::v1 as pb;

use super::{lock, Replicator};

impl Replicator {
    /// The task that samples each destination's lag every second for its history.
    pub(super) fn spawn_sampler(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = this.cluster.node().now_ms();
                for d in this.dests.values() {
                    lock(&d.primary.outbox).sample(now);
                }
            }
        })
    }

    pub fn status(&self) -> pb::ReplicationStatusResponse {
        let now = self.cluster.node().now_ms();
        let committed = self.cluster.node().engine().committed_seq();
        let destinations = self
            .dests
            .values()
            .map(|d| {
                let (r, history) = {
                    let mut o = lock(&d.primary.outbox);
                    o.committed(committed);
                    o.sample(now);
                    (o.report(now), o.history().points())
                };
                // The lag and backlog are the primary tail's (the takeover tail trails by its
                // grace on purpose); what was sent counts both tails.
                let t = lock(&d.takeover.outbox).report(now);
                let l = lock(&d.link).params;
                pb::RegionLag {
                    destination: d.region.clone(),
                    acked_seq: r.acked_seq,
                    committed_seq: r.committed_seq,
                    oldest_unacked_ms: r.oldest_unacked_ms,
                    backlog_entries: r.backlog_entries,
                    batches_sent: r.batches_sent + t.batches_sent,
                    deltas_sent: r.deltas_sent + t.deltas_sent,
                    deltas_acked: r.deltas_acked + t.deltas_acked,
                    raw_bytes: r.raw_bytes + t.raw_bytes,
                    wire_bytes: r.wire_bytes + t.wire_bytes,
                    resends: r.resends + t.resends,
                    backlog_bytes: self.backlog_bytes(r.acked_seq),
                    connected: d.primary.connected.load(Ordering::Relaxed) && !l.cut,
                    last_delivery_ms: d.primary.last_delivery_ms.load(Ordering::Relaxed),
                    takeover_acked_seq: t.acked_seq,
                    takeover_covered: d.takeover_covered.load(Ordering::Relaxed),
                    takeover_shipped: d.takeover_shipped.load(Ordering::Relaxed),
                    history: history
                        .into_iter()
                        .map(|(at_ms, lag_ms)| pb::LagPoint { at_ms, lag_ms })
                        .collect(),
                    link: Some(pb::LinkSettings {
                        delay_ms: l.delay_ms,
                        jitter_ms: l.jitter_ms,
                        loss: l.loss,
                        cut: l.cut,
                    }),
                }
            })
            .collect();
        pb::ReplicationStatusResponse {
            region: self.cluster.region().to_owned(),
            node_id: self.cluster.node().id(),
            destinations,
            batches_received: self.batches_received.load(Ordering::Relaxed),
            deltas_applied: self.deltas_applied.load(Ordering::Relaxed),
            drift_rejections: self.drift_rejections.load(Ordering::Relaxed),
            deltas_set_aside: self.deltas_set_aside.load(Ordering::Relaxed),
        }
    }

    /// Bytes of the shipped entries after `after` (the first 100,000 at most).
    fn backlog_bytes(&self, after: u64) -> u64 {
        match self.cluster.node().engine().log_since(after, 100_000) {
            Ok(entries) => entries.iter().filter(|e| e.ship).map(|e| e.bytes).sum(),
            Err(_) => 0,
        }
    }
}
