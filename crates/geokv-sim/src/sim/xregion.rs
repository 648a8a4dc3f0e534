//! The cross-region replicator of a simulated node: ships the change log's entries for other
//! regions in batches from a durable cursor per destination, and applies batches from other
//! regions (the drift check, then each state through the protocol's replicate round at
//! QUORUM), acknowledging a batch once every state in it reached its quorum.

use std::collections::BTreeSet;

use geokv_core::{NodeId, Record, Stamp};
use geokv_storage::ReplicaStore;

use super::node::{Ctx, Key, Msg, Node, BATCH_ENTRIES, BATCH_TIMEOUT_MS, MAX_DRIFT_MS};
use super::{Addr, Bug, Layout};

/// A batch from another region being applied: acknowledged once every delta reached QUORUM.
pub(crate) struct BatchJob {
    from: NodeId,
    last_seq: u64,
    pending: usize,
    failed: bool,
}

pub(crate) struct InFlight {
    pub(crate) last_seq: u64,
    sent_at: u64,
}

impl Node {
    /// Change-log entries of this node not yet acknowledged by `region`.
    pub(crate) fn unshipped(&self, region: usize) -> Vec<geokv_storage::LogEntry> {
        let cursor = self.store.cursor(&Layout::region_name(region)).unwrap_or(0);
        let mut entries = self.store.log_since(cursor, usize::MAX).unwrap_or_default();
        entries.retain(|e| e.ship);
        entries
    }

    pub(crate) fn ship(&mut self, ctx: &mut Ctx) {
        for region in (0..ctx.layout.regions).filter(|&r| r != self.region) {
            if let Some(f) = self.inflight.get(&region) {
                if ctx.now.saturating_sub(f.sent_at) < BATCH_TIMEOUT_MS {
                    continue;
                }
                // Lost on the way: resend from the cursor, to another node.
                self.inflight.remove(&region);
                *self.ship_target.entry(region).or_default() += 1;
            }
            let name = Layout::region_name(region);
            let cursor = self.store.cursor(&name).unwrap_or(0);
            let page = self.store.log_since(cursor, BATCH_ENTRIES).unwrap_or_default();
            let Some(last) = page.last().map(|e| e.seq) else { continue };
            let keys: BTreeSet<&Key> = page.iter().filter(|e| e.ship).map(|e| &e.key).collect();
            if keys.is_empty() {
                // Nothing to ship in this page (repairs, states from other regions).
                let _ = self.store.set_cursor(&name, last);
                continue;
            }
            let deltas: Vec<(Key, Record)> =
                keys.into_iter().filter_map(|k| self.state(k).map(|r| (k.clone(), r))).collect();
            let target = ctx.layout.node(
                region,
                self.ship_target.get(&region).copied().unwrap_or(0) % ctx.layout.nodes_per_region,
            );
            let hlc_ms = Stamp::new(self.hlc, self.id).unix_millis().max(self.physical_ms(ctx.now));
            ctx.send(Addr::Node(target), Msg::Batch { last_seq: last, hlc_ms, deltas });
            self.inflight.insert(region, InFlight { last_seq: last, sent_at: ctx.now });
        }
    }

    pub(crate) fn receive_batch(
        &mut self,
        from: Addr,
        last_seq: u64,
        hlc_ms: u64,
        deltas: Vec<(Key, Record)>,
        ctx: &mut Ctx,
    ) {
        let Addr::Node(origin) = from else { return };
        if hlc_ms > self.physical_ms(ctx.now) + MAX_DRIFT_MS {
            return ctx.send(from, Msg::BatchAck { last_seq, ok: false });
        }
        let b = self.next();
        self.batches.insert(b, BatchJob { from: origin, last_seq, pending: deltas.len() + 1, failed: false });
        for (key, rec) in deltas {
            if ctx.bug == Some(Bug::SkipRemoteDeltas) {
                continue;
            }
            let state = if self.home(&key).contains(&self.id) {
                self.merge_local(&key, &rec, false);
                self.state(&key).unwrap_or(rec)
            } else {
                rec
            };
            self.start_replicate(b, key, state, ctx);
        }
        self.batch_delta_done(b, true, ctx);
    }

    pub(crate) fn batch_delta_done(&mut self, b: u64, ok: bool, ctx: &mut Ctx) {
        let Some(job) = self.batches.get_mut(&b) else { return };
        job.pending -= 1;
        job.failed |= !ok;
        if job.pending == 0 {
            let job = self.batches.remove(&b).expect("present");
            ctx.send(Addr::Node(job.from), Msg::BatchAck { last_seq: job.last_seq, ok: !job.failed });
        }
    }
}
