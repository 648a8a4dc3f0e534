//! The cross-region replicator of a simulated node, as a driver of `geokv_protocol::xregion`:
//! ships the change log's entries for other regions in batches from a durable cursor per
//! destination ([`next_batch`]), and takes in batches from other regions ([`check_batch`],
//! each state through the protocol's replicate round at QUORUM, [`BatchTally`] for the
//! acknowledgement). Batches travel on a stream per sender and destination that starts anew
//! after a resend, as on the server.

use geokv_core::{NodeId, Record, Stamp};
use geokv_protocol::residency::change;
use geokv_protocol::shipping::{self, Tail};
use geokv_protocol::xregion::{check_batch, merges_here, next_batch, BatchTally, Entry, NextBatch};
use geokv_protocol::{Failure, Kind};
use geokv_storage::{codec, ReplicaStore};

use super::node::{
    Ctx, Key, Msg, Node, ACKED_KEYS, BATCH_ENTRIES, BATCH_TIMEOUT_MS, MAX_DRIFT_MS, TAKEOVER_GRACE_MS,
};
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
    /// The stream it went on: an acknowledgement from an earlier stream is not for it.
    stream: u64,
    sent_at: u64,
    /// The digests of the states it carries, recorded once acknowledged.
    digests: Vec<(Key, Vec<u8>)>,
}

/// What a batch being applied answers when it is done.
pub(crate) enum Reply {
    /// A batch of the replicator's stream: its tail, stream and last sequence number.
    Stream(Tail, u64, u64),
    /// A residency handover: its id (acknowledged only if every state was applied).
    Handover(u64),
}

/// A batch as it travels.
#[derive(Clone, Debug)]
pub struct BatchMsg {
    /// The sender's tail the batch belongs to.
    pub tail: Tail,
    /// The sender's stream to this region: a new one after every resend.
    pub stream: u64,
    pub after_seq: u64,
    pub last_seq: u64,
    pub hlc_ms: u64,
    /// The sender's residency policy version.
    pub residency_version: u64,
    pub deltas: Vec<(Key, Record)>,
}

/// A state's digest, as the replicas compare it (the encoded state itself, here).
pub(crate) fn digest(rec: &Record) -> Vec<u8> {
    codec::serialize(rec)
}

/// A page of states ready to go: the log position it covers and each state with its digest.
pub(crate) struct Page {
    pub(crate) cursor: u64,
    pub(crate) last_seq: u64,
    pub(crate) states: Vec<(Key, Record, Vec<u8>)>,
}

impl Node {
    /// Change-log entries of this node not yet past both tails toward `region`.
    pub(crate) fn unshipped(&self, region: usize) -> Vec<geokv_storage::LogEntry> {
        let name = Layout::region_name(region);
        let cursor = Tail::BOTH.iter().map(|t| self.store.cursor(&t.cursor_name(&name)).unwrap_or(0)).min();
        let mut entries = self.store.log_since(cursor.unwrap_or(0), usize::MAX).unwrap_or_default();
        entries.retain(|e| e.ship);
        entries
    }

    /// Whether this node is the shipper of `key` now (the first home replica it hears from).
    pub(crate) fn ships_here(&self, key: &[u8], now: u64) -> bool {
        shipping::shipper(&self.home(key), |n| self.healthy(n, now)) == Some(self.id)
    }

    pub(crate) fn ship(&mut self, ctx: &mut Ctx) {
        let here = self.region;
        for region in (0..ctx.layout.regions).filter(|&r| r != here) {
            for tail in Tail::BOTH {
                if let Some(f) = self.inflight.get(&(region, tail)) {
                    if ctx.now.saturating_sub(f.sent_at) < BATCH_TIMEOUT_MS {
                        continue;
                    }
                    // Lost on the way: resend from the cursor, to another node, on a new stream.
                    self.inflight.remove(&(region, tail));
                    *self.ship_target.entry(region).or_default() += 1;
                }
                match tail {
                    Tail::Primary => {
                        if let Some(page) = self.ship_page(region, tail, ctx) {
                            self.send_page(region, tail, page, ctx);
                        }
                    }
                    Tail::Takeover => self.take_over(region, ctx),
                }
            }
        }
    }

    /// The tail's next page of states toward `region`, by the protocol's rules: the primary
    /// tail takes the keys this node ships; the takeover tail every key, from settled entries.
    pub(crate) fn ship_page(&self, region: usize, tail: Tail, ctx: &Ctx) -> Option<Page> {
        let name = tail.cursor_name(&Layout::region_name(region));
        let cursor = self.store.cursor(&name).unwrap_or(0);
        let mut page = self.store.log_since(cursor, BATCH_ENTRIES).unwrap_or_default();
        if tail == Tail::Takeover {
            let now = self.physical_ms(ctx.now);
            page.truncate(shipping::settled(
                page.iter().map(|e| e.version.unix_millis()),
                now,
                TAKEOVER_GRACE_MS,
            ));
        }
        let entries = page.iter().map(|e| Entry { seq: e.seq, key: &e.key, ship: e.ship });
        let state_of = |key: &[u8]| {
            Ok::<_, ()>(self.state(key).map(|r| {
                let d = digest(&r);
                let size = d.len();
                ((r, d), size)
            }))
        };
        let keep = |key: &[u8]| {
            let allowed = self.allows(key, region) || ctx.bug == Some(Bug::ShipEverywhere);
            allowed && (tail == Tail::Takeover || self.ships_here(key, ctx.now))
        };
        let Ok(Some(NextBatch { last_seq, states })) = next_batch(entries, keep, state_of, BATCH_BYTES)
        else {
            return None;
        };
        let states = states.into_iter().map(|(k, (r, d))| (k, r, d)).collect();
        Some(Page { cursor, last_seq, states })
    }

    /// Sends a page of `tail` to `region` as a batch.
    pub(crate) fn send_page(&mut self, region: usize, tail: Tail, page: Page, ctx: &mut Ctx) {
        let stream = self.ship_target.get(&region).copied().unwrap_or(0);
        let target = ctx.layout.node(region, stream % ctx.layout.nodes_per_region);
        let hlc_ms = Stamp::new(self.hlc, self.id).unix_millis().max(self.physical_ms(ctx.now));
        let residency_version = self.held().version;
        let (deltas, digests) = page.states.into_iter().map(|(k, r, d)| ((k.clone(), r), (k, d))).unzip();
        let msg = BatchMsg {
            tail,
            stream: stream as u64,
            after_seq: page.cursor,
            last_seq: page.last_seq,
            hlc_ms,
            residency_version,
            deltas,
        };
        ctx.send(Addr::Node(target), Msg::Batch(msg));
        let flight = InFlight { last_seq: page.last_seq, stream: stream as u64, sent_at: ctx.now, digests };
        self.inflight.insert((region, tail), flight);
    }

    /// A batch of `tail` was answered by `region`.
    pub(crate) fn on_batch_ack(&mut self, region: usize, tail: Tail, stream: u64, last_seq: u64, ok: bool) {
        if self.inflight.get(&(region, tail)).is_none_or(|f| (f.last_seq, f.stream) != (last_seq, stream)) {
            return;
        }
        let flight = self.inflight.remove(&(region, tail)).expect("checked");
        if ok {
            let _ = self.store.set_cursor(&tail.cursor_name(&Layout::region_name(region)), last_seq);
            let acked = self.acked.entry(region).or_insert_with(|| shipping::Acked::new(ACKED_KEYS));
            for (key, d) in flight.digests {
                acked.record(&key, d);
            }
        } else {
            *self.ship_target.entry(region).or_default() += 1;
        }
    }

    pub(crate) fn receive_batch(&mut self, from: Addr, batch: BatchMsg, ctx: &mut Ctx) {
        let Addr::Node(origin) = from else { return };
        let last_seq = batch.last_seq;
        let tail = batch.tail;
        let expected =
            self.streams.get(&(origin, tail)).filter(|(s, _)| *s == batch.stream).map(|&(_, after)| after);
        let clock_ok = if batch.hlc_ms > self.physical_ms(ctx.now) + MAX_DRIFT_MS {
            Err(format!("batch clock {} ms is ahead", batch.hlc_ms))
        } else {
            Ok(())
        };
        if check_batch(expected, batch.after_seq, clock_ok).is_err() {
            return ctx.send(from, Msg::BatchAck { tail, stream: batch.stream, last_seq, ok: false });
        }
        if change::on_sender_version(batch.residency_version, self.held().version).is_err() {
            // The sender holds a newer policy: fetch it before taking its deltas.
            ctx.send(from, Msg::PolicyAsk);
            return ctx.send(from, Msg::BatchAck { tail, stream: batch.stream, last_seq, ok: false });
        }
        self.streams.insert((origin, tail), (batch.stream, last_seq));
        self.take_deltas(origin, Reply::Stream(tail, batch.stream, last_seq), batch.deltas, ctx);
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
                Reply::Stream(tail, stream, last_seq) => {
                    let ok = job.tally.ack().is_ok();
                    if !ok {
                        // The stream's order no longer holds: the sender resends from its cursor.
                        self.streams.remove(&(job.from, tail));
                    }
                    ctx.send(Addr::Node(job.from), Msg::BatchAck { tail, stream, last_seq, ok });
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
