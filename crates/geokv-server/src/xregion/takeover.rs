//! The takeover tail of one shipper per key (`geokv_protocol::shipping`): once a shipped
//! change is older than the grace, this node asks the key's shipper whether the destination
//! acknowledged the state this node holds (`Shipped` on the peer port, or its own record when
//! it is the shipper), and ships every key that is not covered.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use geokv_protocol::shipping;
use geokv_replication::Batch;

use super::{build_batch, lock, Dest, Digests, Replicator, MAX_GRACE_MS, TAKEOVER_PAGE, TAKEOVER_POLL_MS};

impl Replicator {
    /// The takeover tail's next batch after `after`: the settled entries' keys that `allowed`
    /// takes and whose shipper did not deliver this node's state. `None` when no entry is
    /// settled yet.
    pub(super) async fn takeover_batch(
        &self,
        dest: &Arc<Dest>,
        after: u64,
        allowed: impl Fn(&[u8]) -> bool + Send + 'static,
    ) -> Result<Option<(Batch, Digests, u64)>, String> {
        let now = self.cluster.node().now_ms();
        if now < dest.takeover.not_before_ms.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let node = self.cluster.node().clone();
        let this_region = self.cluster.region().to_owned();
        let round_trip = dest.primary.round_trip_ms.load(Ordering::Relaxed);
        let grace = shipping::grace_ms(self.cfg.takeover_grace_ms, round_trip, MAX_GRACE_MS);
        let (built, wait) = crate::blocking::run(move || {
            let mut entries = node.engine().log_since(after, TAKEOVER_PAGE).map_err(|e| e.to_string())?;
            let full = entries.len() == TAKEOVER_PAGE;
            let n = shipping::settled(entries.iter().map(|e| e.version.unix_millis()), now, grace);
            let young = entries.get(n).map(|e| e.version.unix_millis());
            let last_settled = n.checked_sub(1).map(|i| entries[i].seq);
            entries.truncate(n);
            let built = build_batch(&node, &this_region, after, &entries, allowed)?;
            // Read on at once while there is more settled: a full page, or a batch that
            // stopped at its size bound; else wait for the next entry to settle, and at least
            // the poll interval (so settled entries go in pages, not one by one).
            let more = built.as_ref().is_some_and(|(b, _)| Some(b.last_seq) != last_settled);
            let wait = match young {
                _ if more => 0,
                Some(t) => t.saturating_add(grace).max(now + TAKEOVER_POLL_MS),
                None if full => 0,
                None => now + TAKEOVER_POLL_MS,
            };
            Ok::<_, String>((built, wait))
        })
        .await??;
        dest.takeover.not_before_ms.store(wait, Ordering::Relaxed);
        let Some((mut batch, digests)) = built else { return Ok(None) };
        if batch.deltas.is_empty() {
            return Ok(Some((batch, digests, 0)));
        }
        // Ask each key's shipper now: this node's own record, or the peer's.
        let (shipper_of, me) = (self.shipper_of(), self.cluster.node().id());
        let items = batch.deltas.drain(..).zip(digests);
        let groups = shipping::by_shipper(items.map(|(delta, d)| {
            let who = shipper_of(&d.0);
            ((delta, d), who)
        }));
        // The shippers are asked at once (one of them may be down without gossip knowing yet).
        let answers = futures::future::join_all(groups.iter().map(|(who, items)| async move {
            let asked: Vec<(&[u8], &u128)> = items.iter().map(|(_, (k, d))| (k.as_slice(), d)).collect();
            match *who {
                Some(n) if n == me => lock(&dest.acked).answer(asked),
                Some(n) => self.ask_shipper(n, &dest.region, &asked).await,
                None => vec![false; items.len()],
            }
        }))
        .await;
        let (mut deltas, mut digests, mut covered_keys) = (Vec::new(), Vec::new(), 0);
        for ((_, items), covered) in groups.into_iter().zip(answers) {
            for (item, covered) in items.into_iter().zip(covered.into_iter().chain(std::iter::repeat(false)))
            {
                if covered {
                    covered_keys += 1;
                } else {
                    deltas.push(item.0);
                    digests.push(item.1);
                }
            }
        }
        batch.deltas = deltas;
        Ok(Some((batch, digests, covered_keys)))
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
