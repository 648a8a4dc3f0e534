//! The cross-region replicator of a simulated node, as a driver of `geokv_protocol::xregion`:
//! ships the change log's entries for other regions in batches from a durable cursor per
//! destination ([`next_batch`]), and takes in batches from other regions ([`check_batch`],
//! each state through the protocol's replicate round at QUORUM, [`BatchTally`] for the
//! acknowledgement). Batches travel on a stream per sender and destination that starts anew
//! after a resend, as on the server.

use geokv_core::{NodeId, Record, Stamp};
use geokv_protocol::residency::change;
use geokv_protocol::xregion::{check_batch, merges_here, next_batch, BatchTally, Entry, NextBatch};
use geokv_protocol::{Failure, Kind};
use geokv_storage::{codec, ReplicaStore};

use super::node::{Ctx, Key, Msg, Node, BATCH_ENTRIES, BATCH_TIMEOUT_MS, MAX_DRIFT_MS};
use super::{Addr, Bug, Layout};

/// Bytes of states after which a batch stops.
const BATCH_BYTES: usize = 64 * 1024;

/// A batch from another region being applied: acknowledged once every state in it settled.
pub(crate) struct BatchJob {
    from: NodeId,
    reply: Reply,
    pending: usize,
    tally: BatchTally,
}

pub(crate) struct InFlight {
    pub(crate) last_seq: u64,
    sent_at: u64,
}

/// What a batch being applied answers when it is done.
pub(crate) enum Reply {
    /// A batch of the replicator's stream: its last sequence number.
    Stream(u64),
    /// A residency handover: its id (acknowledged only if every state was applied).
    Handover(u64),
}

/// A batch as it travels.
#[derive(Clone, Debug)]
pub struct BatchMsg {
    /// The sender's stream to this region: a new one after every resend.
    pub stream: u64,
    pub after_seq: u64,
    pub last_seq: u64,
    pub hlc_ms: u64,
    /// The sender's residency policy version.
    pub residency_version: u64,
    pub deltas: Vec<(Key, Record)>,
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
                // Lost on the way: resend from the cursor, to another node, on a new stream.
                self.inflight.remove(&region);
                *self.ship_target.entry(region).or_default() += 1;
            }
            let name = Layout::region_name(region);
            let cursor = self.store.cursor(&name).unwrap_or(0);
            let page = self.store.log_since(cursor, BATCH_ENTRIES).unwrap_or_default();
            let entries = page.iter().map(|e| Entry { seq: e.seq, key: &e.key, ship: e.ship });
            let state_of = |key: &[u8]| {
                Ok::<_, ()>(self.state(key).map(|r| {
                    let size = codec::serialize(&r).len();
                    (r, size)
                }))
            };
            let Ok(Some(NextBatch { last_seq, states: deltas })) = next_batch(
                entries,
                |key| self.allows(key, region) || ctx.bug == Some(Bug::ShipEverywhere),
                state_of,
                BATCH_BYTES,
            ) else {
                continue;
            };
            let stream = self.ship_target.get(&region).copied().unwrap_or(0);
            let target = ctx.layout.node(region, stream % ctx.layout.nodes_per_region);
            let hlc_ms = Stamp::new(self.hlc, self.id).unix_millis().max(self.physical_ms(ctx.now));
            let residency_version = self.held().version;
            let msg = BatchMsg {
                stream: stream as u64,
                after_seq: cursor,
                last_seq,
                hlc_ms,
                residency_version,
                deltas,
            };
            ctx.send(Addr::Node(target), Msg::Batch(msg));
            self.inflight.insert(region, InFlight { last_seq, sent_at: ctx.now });
        }
    }

    pub(crate) fn receive_batch(&mut self, from: Addr, batch: BatchMsg, ctx: &mut Ctx) {
        let Addr::Node(origin) = from else { return };
        let last_seq = batch.last_seq;
        let expected = self.streams.get(&origin).filter(|(s, _)| *s == batch.stream).map(|&(_, after)| after);
        let clock_ok = if batch.hlc_ms > self.physical_ms(ctx.now) + MAX_DRIFT_MS {
            Err(format!("batch clock {} ms is ahead", batch.hlc_ms))
        } else {
            Ok(())
        };
        if check_batch(expected, batch.after_seq, clock_ok).is_err() {
            return ctx.send(from, Msg::BatchAck { last_seq, ok: false });
        }
        if change::on_sender_version(batch.residency_version, self.held().version).is_err() {
            // The sender holds a newer policy: fetch it before taking its deltas.
            ctx.send(from, Msg::PolicyAsk);
            return ctx.send(from, Msg::BatchAck { last_seq, ok: false });
        }
        self.streams.insert(origin, (batch.stream, last_seq));
        self.take_deltas(origin, Reply::Stream(last_seq), batch.deltas, ctx);
    }

    /// Applies the deltas of a batch or a handover from `origin`: each through the protocol's
    /// replicate round at QUORUM; the answer leaves once every one settled.
    pub(crate) fn take_deltas(
        &mut self,
        origin: NodeId,
        reply: Reply,
        deltas: Vec<(Key, Record)>,
        ctx: &mut Ctx,
    ) {
        let b = self.next();
        let job = BatchJob {
            from: origin,
            reply,
            // One step per delta, and one for the receipt.
            pending: deltas.len() + 1,
            tally: BatchTally::default(),
        };
        self.batches.insert(b, job);
        for (key, rec) in deltas {
            if ctx.bug == Some(Bug::SkipRemoteDeltas) {
                continue;
            }
            // A key this region may not hold is dropped (a sender on an older policy).
            if !self.allows(&key, self.region) && ctx.bug != Some(Bug::ShipEverywhere) {
                if let Some(job) = self.batches.get_mut(&b) {
                    job.tally.on_dropped();
                }
                self.batch_step(b, ctx);
                continue;
            }
            if self.ahead(rec.version().time, ctx.now) {
                // Its writer's clock ran ahead: refused for good, set aside.
                let refused = Failure::refused(Kind::FailedPrecondition, "stamped beyond the drift bound");
                self.batch_delta_done(b, Err(refused), ctx);
                continue;
            }
            let state = if merges_here(self.home(&key).contains(&self.id)) {
                if let Err(f) = self.merge_local(&key, &rec, false) {
                    self.batch_delta_done(b, Err(f), ctx);
                    continue;
                }
                self.state(&key).unwrap_or(rec)
            } else {
                rec
            };
            self.start_replicate(b, key, state, ctx);
        }
        // The receipt itself is done (its own pending step, so the batch cannot be
        // acknowledged while its deltas are still being started).
        self.batch_step(b, ctx);
    }

    pub(crate) fn batch_delta_done(&mut self, b: u64, result: Result<(), Failure>, ctx: &mut Ctx) {
        let Some(job) = self.batches.get_mut(&b) else { return };
        job.tally.on_applied(result);
        self.batch_step(b, ctx);
    }

    /// One of a batch's pending steps ended; the last one acknowledges the batch.
    fn batch_step(&mut self, b: u64, ctx: &mut Ctx) {
        let Some(job) = self.batches.get_mut(&b) else { return };
        job.pending -= 1;
        if job.pending == 0 {
            let job = self.batches.remove(&b).expect("present");
            match job.reply {
                Reply::Stream(last_seq) => {
                    let ok = job.tally.ack().is_ok();
                    if !ok {
                        // The stream's order no longer holds: the sender resends from its cursor.
                        self.streams.remove(&job.from);
                    }
                    ctx.send(Addr::Node(job.from), Msg::BatchAck { last_seq, ok });
                }
                Reply::Handover(id) => {
                    // Handed over only if every state was applied here.
                    let ok = job.tally.ack() == Ok(0);
                    ctx.send(Addr::Node(job.from), Msg::HandoverAck { id, ok });
                }
            }
        }
    }
}
