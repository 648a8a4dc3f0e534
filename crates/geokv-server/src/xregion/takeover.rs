//! The takeover tail of one shipper per key (`geokv_protocol::shipping`): once a shipped
//! change is older than the grace, this node asks the key's shipper whether the destination
//! acknowledged the state this node holds (`Shipped` on the peer port, or its own record when
//! it is the shipper), and ships every key that is not covered.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use geokv_cluster::Health;
use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use geokv_protocol::shipping;
use geokv_replication::Batch;

use super::{build_batch, lock, Dest, Digests, Replicator, MAX_BATCH_ENTRIES};

impl Replicator {
    /// The takeover tail's next batch after `after`: the settled entries' keys that `allowed`
    /// takes and whose shipper did not deliver this node's state. `None` when no entry is
    /// settled yet.
    pub(super) async fn takeover_batch(
        &self,
        dest: &Arc<Dest>,
        after: u64,
        allowed: impl Fn(&[u8]) -> bool + Send + 'static,
    ) -> Result<Option<(Batch, Digests)>, String> {
        let node = self.cluster.node().clone();
        let this_region = self.cluster.region().to_owned();
        let last_delivery = dest.primary.last_delivery_ms.load(Ordering::Relaxed);
        let grace = shipping::grace_ms(self.cfg.takeover_grace_ms, last_delivery);
        if self.cluster.node().now_ms() < dest.takeover.not_before_ms.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let built = crate::blocking::run(move || {
            let mut entries = node.engine().log_since(after, MAX_BATCH_ENTRIES).map_err(|e| e.to_string())?;
            let now = node.now_ms();
            let n = shipping::settled(entries.iter().map(|e| e.version.unix_millis()), now, grace);
            // The first entry left waits until its grace is over (the poll then skips the log).
            let next = entries.get(n).map_or(0, |e| e.version.unix_millis().saturating_add(grace));
            entries.truncate(n);
            build_batch(&node, &this_region, after, &entries, allowed).map(|b| (b, next))
        })
        .await??;
        let (built, next) = built;
        dest.takeover.not_before_ms.store(next, Ordering::Relaxed);
        let Some((mut batch, digests)) = built else { return Ok(None) };
        if batch.deltas.is_empty() {
            return Ok(Some((batch, digests)));
        }
        // Ask each key's shipper now: this node's own record, or the peer's.
        let view = self.cluster.view();
        let (me, now) = (self.cluster.node().id(), self.cluster.node().now_ms());
        let up = |n: NodeId| n == me || view.health(n, now) == Health::Alive;
        let items = batch.deltas.drain(..).zip(digests);
        let groups = shipping::by_shipper(items.map(|(delta, d)| {
            let who = shipping::shipper(&view.home(&d.0), up);
            ((delta, d), who)
        }));
        let (mut deltas, mut digests) = (Vec::new(), Vec::new());
        for (who, items) in groups {
            let asked: Vec<(&[u8], &u128)> = items.iter().map(|(_, (k, d))| (k.as_slice(), d)).collect();
            let covered = match who {
                Some(n) if n == me => lock(&dest.acked).answer(asked),
                Some(n) => self.ask_shipper(n, &dest.region, &asked).await,
                None => vec![false; items.len()],
            };
            for (item, covered) in items.into_iter().zip(covered.into_iter().chain(std::iter::repeat(false)))
            {
                if covered {
                    dest.takeover_covered.fetch_add(1, Ordering::Relaxed);
                } else {
                    deltas.push(item.0);
                    digests.push(item.1);
                }
            }
        }
        dest.takeover_shipped.fetch_add(deltas.len() as u64, Ordering::Relaxed);
        batch.deltas = deltas;
        Ok(Some((batch, digests)))
    }

    /// Asks node `shipper` whether `region` acknowledged these states from it; any failure
    /// (unreachable, an older version without `Shipped`) answers "not covered" for all.
    async fn ask_shipper(&self, shipper: NodeId, region: &str, asked: &[(&[u8], &u128)]) -> Vec<bool> {
        let req = pb::ShippedRequest {
            destination: region.to_owned(),
            keys: asked.iter().map(|(k, _)| k.to_vec()).collect(),
            digests: asked.iter().map(|(_, d)| d.to_be_bytes().to_vec()).collect(),
        };
        let Some(mut client) = self.cluster.client(shipper) else { return vec![false; asked.len()] };
        let timeout = std::time::Duration::from_millis(self.cluster.cfg().request_timeout_ms);
        match tokio::time::timeout(timeout, client.shipped(req)).await {
            Ok(Ok(resp)) if resp.get_ref().covered.len() == asked.len() => resp.into_inner().covered,
            Ok(Ok(_)) => vec![false; asked.len()],
            Ok(Err(status)) => {
                tracing::debug!(shipper, code = ?status.code(), error = %status.message(), "Shipped failed; shipping from here");
                vec![false; asked.len()]
            }
            Err(_) => vec![false; asked.len()],
        }
    }

    /// Answers another replica's `Shipped`: for each key, whether `region` acknowledged from
    /// this node the state with that digest.
    pub fn shipped(&self, req: pb::ShippedRequest) -> Result<pb::ShippedResponse, tonic::Status> {
        let dest = self.dests.get(&req.destination).ok_or_else(|| {
            tonic::Status::not_found(format!(
                "this node does not replicate to region {:?}; it replicates to {:?}",
                req.destination,
                self.dests.keys().collect::<Vec<_>>()
            ))
        })?;
        if req.keys.len() != req.digests.len() {
            return Err(tonic::Status::invalid_argument(format!(
                "{} keys but {} digests: one digest per key",
                req.keys.len(),
                req.digests.len()
            )));
        }
        let digests = req
            .digests
            .iter()
            .map(|d| <[u8; 16]>::try_from(d.as_slice()).map(u128::from_be_bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                tonic::Status::invalid_argument("a digest is not 16 bytes (xxh3-128, big-endian)")
            })?;
        let acked = lock(&dest.acked);
        let covered = acked.answer(req.keys.iter().map(Vec::as_slice).zip(digests.iter()));
        Ok(pb::ShippedResponse { covered })
    }
}
