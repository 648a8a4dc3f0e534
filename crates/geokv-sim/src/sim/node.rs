//! One simulated node: the regional write/read protocol (coordinate, forward, quorum rounds,
//! stand-ins and hints, read repair, anti-entropy) and the cross-region replicator (change
//! log, durable cursor per destination region, batches, drift check, apply at QUORUM), written
//! over the same sans-IO parts the server uses: `geokv_core::apply` and the CRDT merge,
//! `Ring::placement`, `WriteRound`/`ReadRound` and `Level`. Handlers take a [`Ctx`] and
//! return nothing: what a node sends and the timers it sets are collected there, so the node
//! does no I/O and reads no clock.

use std::collections::{BTreeMap, BTreeSet};

use geokv_cluster::{Level, Outcome, ReadRound, WriteRound};
use geokv_core::{apply, Crdt, Limits, NodeId, Op, Record, Stamp};
use geokv_topology::{Ring, Target};
use rand::rngs::SmallRng;
use rand::Rng;

use super::{Addr, Bug, Layout};
use crate::history::Observed;

pub type Key = Vec<u8>;

/// The largest skew a replication batch's HLC stamp may have over the receiver's clock.
pub const MAX_DRIFT_MS: u64 = 500;
/// How long a peer may stay silent before it is suspected (not healthy).
pub const SUSPECT_MS: u64 = 500;
/// How long a coordinator waits for the replicas of one request.
pub const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// How long a replicator waits for a batch's acknowledgement before resending from the cursor.
pub const BATCH_TIMEOUT_MS: u64 = 2_000;
pub const PING_EVERY_MS: u64 = 100;
pub const HANDOFF_EVERY_MS: u64 = 200;
pub const SHIP_EVERY_MS: u64 = 50;
pub const ANTI_ENTROPY_EVERY_MS: u64 = 1_000;
/// Change-log entries per batch.
const BATCH_ENTRIES: usize = 32;
/// Unix milliseconds at simulated time 0 (the HLC wants a plausible wall clock).
const EPOCH_MS: u64 = 1_767_225_600_000;

/// What a client (or a forwarding node) asks a node to do.
#[derive(Clone, Debug)]
pub enum Request {
    Write(Op),
    Read,
}

/// The answer: the version and what was read, or why the outcome is unknown.
pub type Answer = Result<(Option<Stamp>, Option<Observed>), String>;

#[derive(Clone, Debug)]
pub enum Msg {
    Req {
        id: u64,
        key: Key,
        req: Request,
        level: Level,
    },
    Resp {
        id: u64,
        answer: Answer,
    },
    /// The connection of call `id` failed: the request or its answer was lost on the way (the
    /// caller cannot tell which, so the request may have run).
    CallFailed {
        id: u64,
    },
    Merge {
        id: u64,
        key: Key,
        rec: Record,
        hint_for: Option<NodeId>,
        ship: bool,
    },
    MergeAck {
        id: u64,
    },
    Fetch {
        id: u64,
        key: Key,
    },
    Fetched {
        id: u64,
        rec: Option<Record>,
    },
    Ping,
    Pong,
    Batch {
        last_seq: u64,
        hlc_ms: u64,
        deltas: Vec<(Key, Record)>,
    },
    BatchAck {
        last_seq: u64,
        ok: bool,
    },
    AntiEntropy {
        states: Vec<(Key, Record)>,
        reply: bool,
    },
}

impl Msg {
    /// Whether handling the message twice is harmless (merges of states, reads, pings).
    pub fn idempotent(&self) -> bool {
        !matches!(self, Msg::Req { .. } | Msg::Resp { .. } | Msg::CallFailed { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    Ping,
    Handoff,
    Ship,
    AntiEntropy,
    /// A request this node coordinates or forwarded has waited its deadline.
    Deadline(u64),
}

/// What a handler produced: messages (with extra delay, e.g. a slow disk) and timers.
pub struct Ctx<'a> {
    pub now: u64,
    pub rng: &'a mut SmallRng,
    pub layout: &'a Layout,
    pub bug: Option<Bug>,
    pub sends: Vec<(Addr, Msg, u64)>,
    pub timers: Vec<(u64, Timer)>,
}

impl Ctx<'_> {
    fn send(&mut self, to: Addr, msg: Msg) {
        self.sends.push((to, msg, 0));
    }
}

/// Who waits for a quorum write.
#[derive(Clone, Debug)]
enum Owner {
    Client { to: Addr, id: u64 },
    Batch(u64),
}

struct WriteJob {
    owner: Option<Owner>,
    key: Key,
    rec: Record,
    round: WriteRound,
    /// Targets that have not answered, with the home replica each holds the write for.
    outstanding: BTreeMap<NodeId, NodeId>,
}

struct ReadJob {
    to: Addr,
    id: u64,
    key: Key,
    round: ReadRound,
    answered: bool,
}

/// A batch from another region being applied: acknowledged once every delta reached QUORUM.
struct BatchJob {
    from: NodeId,
    last_seq: u64,
    pending: usize,
    failed: bool,
}

struct InFlight {
    last_seq: u64,
    sent_at: u64,
}

/// A write this node forwarded to a home replica.
struct Forward {
    client: Addr,
    client_id: u64,
    key: Key,
    op: Op,
    level: Level,
    /// Home replicas tried so far.
    tried: Vec<NodeId>,
}

pub struct Node {
    pub id: NodeId,
    pub region: usize,
    pub up: bool,
    pub paused: bool,
    /// Bumped by every crash: timers of an earlier life are ignored.
    pub life: u64,
    ring: Ring,
    n: usize,
    // Durable: kept across crashes.
    pub store: BTreeMap<Key, Record>,
    pub hints: BTreeMap<NodeId, BTreeMap<Key, Record>>,
    /// The change log: keys changed by this region's writes, in order (sequence = index + 1).
    log: Vec<Key>,
    /// Per destination region, the last sequence it acknowledged.
    cursor: BTreeMap<usize, u64>,
    // Volatile.
    hlc: u64,
    heard: BTreeMap<NodeId, u64>,
    next_id: u64,
    writes: BTreeMap<u64, WriteJob>,
    /// Merge request id -> the write job it belongs to.
    merge_of: BTreeMap<u64, u64>,
    reads: BTreeMap<u64, ReadJob>,
    fetch_of: BTreeMap<u64, (u64, NodeId)>,
    /// Forwarded writes under way, by the forwarded request's id.
    forwards: BTreeMap<u64, Forward>,
    /// Hint deliveries under way: request id -> (home, key, state, sent at).
    handoffs: BTreeMap<u64, (NodeId, Key, Record, u64)>,
    batches: BTreeMap<u64, BatchJob>,
    inflight: BTreeMap<usize, InFlight>,
    ship_target: BTreeMap<usize, usize>,
    // Faults.
    pub clock_offset_ms: i64,
    pub clock_drift_ppm: i64,
    pub disk_delay_ms: u64,
}

impl Node {
    pub fn new(id: NodeId, region: usize, ring: Ring, n: usize) -> Node {
        Node {
            id,
            region,
            up: true,
            paused: false,
            life: 0,
            ring,
            n,
            store: BTreeMap::new(),
            hints: BTreeMap::new(),
            log: Vec::new(),
            cursor: BTreeMap::new(),
            hlc: 0,
            heard: BTreeMap::new(),
            next_id: 1,
            writes: BTreeMap::new(),
            merge_of: BTreeMap::new(),
            reads: BTreeMap::new(),
            fetch_of: BTreeMap::new(),
            forwards: BTreeMap::new(),
            handoffs: BTreeMap::new(),
            batches: BTreeMap::new(),
            inflight: BTreeMap::new(),
            ship_target: BTreeMap::new(),
            clock_offset_ms: 0,
            clock_drift_ppm: 0,
            disk_delay_ms: 0,
        }
    }

    /// The key's home replicas in this region.
    pub fn home(&self, key: &[u8]) -> Vec<NodeId> {
        self.ring.preference_list(key, self.n)
    }

    /// Starts (or restarts) the node: volatile state is rebuilt, timers armed, and every peer
    /// is presumed alive for a grace period.
    pub fn start(&mut self, ctx: &mut Ctx) {
        self.up = true;
        self.life += 1;
        self.hlc = 0;
        self.heard = self.peers(ctx.layout).into_iter().map(|p| (p, ctx.now)).collect();
        self.writes.clear();
        self.merge_of.clear();
        self.reads.clear();
        self.fetch_of.clear();
        self.forwards.clear();
        self.handoffs.clear();
        self.batches.clear();
        self.inflight.clear();
        for t in [Timer::Ping, Timer::Handoff, Timer::Ship, Timer::AntiEntropy] {
            let jitter = ctx.rng.gen_range(0..50);
            ctx.timers.push((ctx.now + jitter, t));
        }
    }

    pub fn crash(&mut self) {
        self.up = false;
    }

    fn peers(&self, layout: &Layout) -> Vec<NodeId> {
        (0..layout.nodes_per_region).map(|i| layout.node(self.region, i)).filter(|&p| p != self.id).collect()
    }

    /// This node's physical clock, in Unix milliseconds.
    pub fn physical_ms(&self, now: u64) -> u64 {
        let drift = now as i128 * self.clock_drift_ppm as i128 / 1_000_000;
        (EPOCH_MS as i128 + now as i128 + self.clock_offset_ms as i128 + drift) as u64
    }

    /// A new HLC stamp, newer than `floor` and everything this node issued or observed.
    fn stamp(&mut self, now: u64, floor: Stamp) -> Stamp {
        let physical = Stamp::ntp_from_millis(self.physical_ms(now));
        self.hlc = physical.max(self.hlc + 1).max(floor.time + 1);
        Stamp::new(self.hlc, self.id)
    }

    fn healthy(&self, id: NodeId, now: u64) -> bool {
        id == self.id || self.heard.get(&id).is_some_and(|&t| now.saturating_sub(t) <= SUSPECT_MS)
    }

    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Whether nothing is left to do: no hints, no unshipped changes, no requests under way.
    pub fn quiet(&self, layout: &Layout) -> bool {
        let shipped = (0..layout.regions)
            .filter(|&r| r != self.region)
            .all(|r| self.cursor.get(&r).copied().unwrap_or(0) == self.log.len() as u64);
        self.hints.values().all(BTreeMap::is_empty)
            && shipped
            && self.writes.is_empty()
            && self.batches.is_empty()
    }

    pub fn on_timer(&mut self, timer: Timer, ctx: &mut Ctx) {
        match timer {
            Timer::Ping => {
                for p in self.peers(ctx.layout) {
                    ctx.send(Addr::Node(p), Msg::Ping);
                }
                ctx.timers.push((ctx.now + PING_EVERY_MS, Timer::Ping));
            }
            Timer::Handoff => {
                self.hand_off(ctx);
                ctx.timers.push((ctx.now + HANDOFF_EVERY_MS, Timer::Handoff));
            }
            Timer::Ship => {
                self.ship(ctx);
                ctx.timers.push((ctx.now + SHIP_EVERY_MS, Timer::Ship));
            }
            Timer::AntiEntropy => {
                let peers = self.peers(ctx.layout);
                let peer = peers[ctx.rng.gen_range(0..peers.len())];
                let states = self.shared_states(peer);
                ctx.send(Addr::Node(peer), Msg::AntiEntropy { states, reply: true });
                ctx.timers.push((ctx.now + ANTI_ENTROPY_EVERY_MS, Timer::AntiEntropy));
            }
            Timer::Deadline(id) => self.deadline(id, ctx),
        }
    }

    pub fn on_msg(&mut self, from: Addr, msg: Msg, ctx: &mut Ctx) {
        if let Addr::Node(peer) = from {
            if ctx.layout.region_of(peer) == self.region {
                self.heard.insert(peer, ctx.now);
            }
        }
        match msg {
            Msg::Req { id, key, req, level } => self.request(from, id, key, req, level, ctx),
            Msg::Resp { id, answer } => {
                if let Some(f) = self.forwards.remove(&id) {
                    ctx.send(f.client, Msg::Resp { id: f.client_id, answer });
                }
            }
            Msg::CallFailed { id } => {
                if let Some(f) = self.forwards.remove(&id) {
                    self.forward_failed(f, ctx);
                }
            }
            Msg::Merge { id, key, rec, hint_for, ship } => {
                match hint_for {
                    Some(home) if home != self.id => {
                        merge_into(self.hints.entry(home).or_default(), &key, &rec);
                    }
                    _ => self.merge_local(&key, &rec, ship),
                }
                // The acknowledgement leaves once the write is on disk.
                ctx.sends.push((from, Msg::MergeAck { id }, self.disk_delay_ms));
            }
            Msg::MergeAck { id } => self.merge_acked(from, id, ctx),
            Msg::Fetch { id, key } => {
                ctx.send(from, Msg::Fetched { id, rec: self.store.get(&key).cloned() });
            }
            Msg::Fetched { id, rec } => self.fetched(id, rec, ctx),
            Msg::Ping => ctx.send(from, Msg::Pong),
            Msg::Pong => {}
            Msg::Batch { last_seq, hlc_ms, deltas } => {
                self.receive_batch(from, last_seq, hlc_ms, deltas, ctx)
            }
            Msg::BatchAck { last_seq, ok } => {
                let region = match from {
                    Addr::Node(p) => ctx.layout.region_of(p),
                    Addr::Client(_) => return,
                };
                if self.inflight.get(&region).is_some_and(|f| f.last_seq == last_seq) {
                    self.inflight.remove(&region);
                    if ok {
                        self.cursor.insert(region, last_seq);
                    } else {
                        *self.ship_target.entry(region).or_default() += 1;
                    }
                }
            }
            Msg::AntiEntropy { states, reply } => {
                let Addr::Node(peer) = from else { return };
                if ctx.bug == Some(Bug::NoRepair) {
                    return;
                }
                for (key, rec) in &states {
                    if self.home(key).contains(&self.id) {
                        self.merge_local(key, rec, false);
                    }
                }
                if reply {
                    ctx.send(from, Msg::AntiEntropy { states: self.shared_states(peer), reply: false });
                }
            }
        }
    }

    /// States of the keys both this node and `peer` are home replicas of.
    fn shared_states(&self, peer: NodeId) -> Vec<(Key, Record)> {
        self.store
            .iter()
            .filter(|(k, _)| {
                let home = self.home(k);
                home.contains(&self.id) && home.contains(&peer)
            })
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    fn merge_local(&mut self, key: &[u8], rec: &Record, ship: bool) {
        let changed = merge_into(&mut self.store, key, rec);
        self.hlc = self.hlc.max(rec.version().time);
        if changed && ship {
            self.log.push(key.to_vec());
        }
    }

    fn request(&mut self, from: Addr, id: u64, key: Key, req: Request, level: Level, ctx: &mut Ctx) {
        match req {
            Request::Read => self.start_read(from, id, key, level, ctx),
            Request::Write(op) => {
                let home = self.home(&key);
                if home.contains(&self.id) {
                    return self.coordinate(from, id, key, op, level, ctx);
                }
                let f = Forward { client: from, client_id: id, key, op, level, tried: Vec::new() };
                self.forward(f, ctx);
            }
        }
    }

    /// Sends a write to the next healthy home replica not tried yet.
    fn forward(&mut self, mut f: Forward, ctx: &mut Ctx) {
        let now = ctx.now;
        let next = self.home(&f.key).into_iter().find(|&h| !f.tried.contains(&h) && self.healthy(h, now));
        let Some(to) = next else {
            let answer = Err("no home replica could coordinate the write".to_string());
            return ctx.send(f.client, Msg::Resp { id: f.client_id, answer });
        };
        f.tried.push(to);
        let fid = self.next();
        let req = Msg::Req { id: fid, key: f.key.clone(), req: Request::Write(f.op.clone()), level: f.level };
        self.forwards.insert(fid, f);
        ctx.send(Addr::Node(to), req);
        ctx.timers.push((ctx.now + 2 * REQUEST_TIMEOUT_MS, Timer::Deadline(fid)));
    }

    /// A forwarded call failed on its connection: the home replica may have run it. Only a
    /// write that may run twice (put, delete, set change) is tried on the next home replica,
    /// as the server does.
    fn forward_failed(&mut self, f: Forward, ctx: &mut Ctx) {
        let repeatable =
            matches!(f.op, Op::Put { .. } | Op::Delete | Op::SetAdd { .. } | Op::SetRemove { .. });
        if repeatable || ctx.bug == Some(Bug::RetryAnyForward) {
            return self.forward(f, ctx);
        }
        let answer = Err("the forwarded write's connection failed; it may have been applied".to_string());
        ctx.send(f.client, Msg::Resp { id: f.client_id, answer });
    }

    fn coordinate(&mut self, from: Addr, id: u64, key: Key, op: Op, level: Level, ctx: &mut Ctx) {
        let current = self.store.get(&key).cloned();
        let floor = current.as_ref().map(Record::version).unwrap_or(Stamp::ZERO);
        let stamp = self.stamp(ctx.now, floor);
        let now_ms = self.physical_ms(ctx.now);
        let applied = match apply(current.as_ref(), &op, stamp, now_ms, &Limits::default()) {
            Ok(a) => a,
            Err(e) => return ctx.send(from, Msg::Resp { id, answer: Err(format!("refused: {e}")) }),
        };
        self.merge_local(&key, &applied.record, true);
        let rec = self.store.get(&key).cloned().unwrap_or(applied.record);
        self.replicate(Owner::Client { to: from, id }, key, rec, level, true, ctx);
    }

    /// Sends a stored state to the key's other targets and waits for `level` home replicas.
    fn replicate(&mut self, owner: Owner, key: Key, rec: Record, level: Level, ship: bool, ctx: &mut Ctx) {
        let now = ctx.now;
        let placement = self.ring.placement(&key, self.n, |id| self.healthy(id, now));
        let needed = if ctx.bug == Some(Bug::AckWithoutQuorum) { 1 } else { level.required(self.n) };
        let mut round = WriteRound::new(placement.targets.clone(), needed);
        if placement.home.contains(&self.id) {
            round.ack(self.id);
        }
        // Unhealthy home replicas no stand-in covers: the coordinator keeps their hints.
        let down: Vec<NodeId> = placement.home.iter().copied().filter(|&h| !self.healthy(h, now)).collect();
        for home in down {
            if !placement.targets.iter().any(|t| t.hint_for == Some(home)) {
                merge_into(self.hints.entry(home).or_default(), &key, &rec);
            }
        }
        let job = self.next();
        let mut outstanding = BTreeMap::new();
        let me = self.id;
        for Target { node, hint_for } in placement.targets.into_iter().filter(|t| t.node != me) {
            let mid = self.next();
            self.merge_of.insert(mid, job);
            outstanding.insert(node, hint_for.unwrap_or(node));
            ctx.send(
                Addr::Node(node),
                Msg::Merge { id: mid, key: key.clone(), rec: rec.clone(), hint_for, ship },
            );
        }
        let version = rec.version();
        let mut w = WriteJob { owner: Some(owner), key, rec, round, outstanding };
        if w.round.outcome() != Outcome::Pending {
            self.settle(&mut w, version, ctx);
        }
        if w.outstanding.is_empty() {
            return;
        }
        self.writes.insert(job, w);
        // The timer fires after the (possibly slow) local write.
        ctx.timers.push((ctx.now + REQUEST_TIMEOUT_MS + self.disk_delay_ms, Timer::Deadline(job)));
    }

    /// Answers the owner of a write job whose round has an outcome.
    fn settle(&mut self, w: &mut WriteJob, version: Stamp, ctx: &mut Ctx) {
        let reached = w.round.outcome() == Outcome::Reached;
        match w.owner.take() {
            Some(Owner::Client { to, id }) => {
                let answer =
                    if reached { Ok((Some(version), None)) } else { Err("quorum not reached".to_string()) };
                ctx.sends.push((to, Msg::Resp { id, answer }, self.disk_delay_ms));
            }
            Some(Owner::Batch(b)) => self.batch_delta_done(b, reached, ctx),
            None => {}
        }
    }

    fn merge_acked(&mut self, from: Addr, mid: u64, ctx: &mut Ctx) {
        if let Some((home, key, rec, _)) = self.handoffs.remove(&mid) {
            // Delivered: drop the hint unless a newer state arrived for it meanwhile.
            if let Some(hs) = self.hints.get_mut(&home) {
                if hs.get(&key) == Some(&rec) {
                    hs.remove(&key);
                }
            }
            return;
        }
        let (Some(job), Addr::Node(node)) = (self.merge_of.remove(&mid), from) else { return };
        let Some(mut w) = self.writes.remove(&job) else { return };
        w.outstanding.remove(&node);
        let before = w.round.outcome();
        w.round.ack(node);
        if before == Outcome::Pending && w.round.outcome() != Outcome::Pending {
            let version = w.rec.version();
            self.settle(&mut w, version, ctx);
        }
        if !w.outstanding.is_empty() {
            self.writes.insert(job, w);
        }
    }

    fn deadline(&mut self, id: u64, ctx: &mut Ctx) {
        if let Some(f) = self.forwards.remove(&id) {
            ctx.send(
                f.client,
                Msg::Resp { id: f.client_id, answer: Err("forwarded write timed out".into()) },
            );
        }
        if let Some(mut w) = self.writes.remove(&id) {
            // Targets that never answered get a hint here, handed off when they are back.
            for (&node, &home) in &w.outstanding {
                w.round.fail(node);
                if ctx.bug != Some(Bug::NoRepair) {
                    merge_into(self.hints.entry(home).or_default(), &w.key, &w.rec);
                }
            }
            let version = w.rec.version();
            self.settle(&mut w, version, ctx);
        }
        if let Some(r) = self.reads.remove(&id) {
            if !r.answered {
                ctx.send(r.to, Msg::Resp { id: r.id, answer: Err("read timed out".into()) });
            }
        }
    }

    fn start_read(&mut self, from: Addr, id: u64, key: Key, level: Level, ctx: &mut Ctx) {
        let now = ctx.now;
        let home = self.home(&key);
        let replicas: Vec<NodeId> = home.iter().copied().filter(|&h| self.healthy(h, now)).collect();
        let round = ReadRound::new(replicas.clone(), level.required(self.n));
        let job = self.next();
        self.reads.insert(job, ReadJob { to: from, id, key: key.clone(), round, answered: false });
        for r in replicas {
            if r == self.id {
                let rec = self.store.get(&key).cloned();
                self.answer_read(job, r, rec, ctx);
            } else {
                let fid = self.next();
                self.fetch_of.insert(fid, (job, r));
                ctx.send(Addr::Node(r), Msg::Fetch { id: fid, key: key.clone() });
            }
        }
        self.answer_read(job, 0, None, ctx);
        ctx.timers.push((ctx.now + REQUEST_TIMEOUT_MS, Timer::Deadline(job)));
    }

    fn fetched(&mut self, fid: u64, rec: Option<Record>, ctx: &mut Ctx) {
        if let Some((job, node)) = self.fetch_of.remove(&fid) {
            self.answer_read(job, node, rec, ctx);
        }
    }

    /// Counts one replica's answer (node 0: only re-evaluate) and answers at R, with repair.
    fn answer_read(&mut self, job: u64, node: NodeId, rec: Option<Record>, ctx: &mut Ctx) {
        let now_ms = self.physical_ms(ctx.now);
        let Some(r) = self.reads.get_mut(&job) else { return };
        if node != 0 {
            r.round.answer(node, rec);
        }
        if r.answered {
            return;
        }
        let answer = match r.round.outcome() {
            Outcome::Pending => return,
            Outcome::Impossible => Err("too few replicas for the read".to_string()),
            Outcome::Reached => {
                let merged = r.round.merged();
                if let Some(m) = &merged {
                    for stale in r.round.stale(m) {
                        ctx.send(
                            Addr::Node(stale),
                            Msg::Merge {
                                id: 0,
                                key: r.key.clone(),
                                rec: m.clone(),
                                hint_for: None,
                                ship: false,
                            },
                        );
                    }
                }
                let version = merged.as_ref().map(Record::version);
                Ok((version, Some(Observed::from_view(merged.and_then(|m| m.view(now_ms))))))
            }
        };
        r.answered = true;
        ctx.send(r.to, Msg::Resp { id: r.id, answer });
    }

    fn hand_off(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let homes: Vec<NodeId> =
            self.hints.keys().copied().filter(|&h| h != self.id && self.healthy(h, now)).collect();
        if let Some(mine) = self.hints.remove(&self.id) {
            for (key, rec) in mine {
                self.merge_local(&key, &rec, false);
            }
        }
        for home in homes {
            let pending: Vec<(Key, Record)> =
                self.hints[&home].iter().map(|(k, r)| (k.clone(), r.clone())).collect();
            for (key, rec) in pending {
                if self.handoffs.values().any(|(h, k, _, _)| *h == home && *k == key) {
                    continue;
                }
                let mid = self.next();
                self.handoffs.insert(mid, (home, key.clone(), rec.clone(), now));
                ctx.send(Addr::Node(home), Msg::Merge { id: mid, key, rec, hint_for: None, ship: false });
            }
        }
        // Deliveries whose acknowledgement never came are retried on a later tick.
        self.handoffs.retain(|_, (_, _, _, sent)| now.saturating_sub(*sent) < REQUEST_TIMEOUT_MS);
    }

    fn ship(&mut self, ctx: &mut Ctx) {
        for region in (0..ctx.layout.regions).filter(|&r| r != self.region) {
            if let Some(f) = self.inflight.get(&region) {
                if ctx.now.saturating_sub(f.sent_at) < BATCH_TIMEOUT_MS {
                    continue;
                }
                // Lost on the way: resend from the cursor, to another node.
                self.inflight.remove(&region);
                *self.ship_target.entry(region).or_default() += 1;
            }
            let cursor = self.cursor.get(&region).copied().unwrap_or(0) as usize;
            if cursor >= self.log.len() {
                continue;
            }
            let last = (cursor + BATCH_ENTRIES).min(self.log.len());
            let keys: BTreeSet<&Key> = self.log[cursor..last].iter().collect();
            let deltas =
                keys.into_iter().filter_map(|k| self.store.get(k).map(|r| (k.clone(), r.clone()))).collect();
            let target = ctx.layout.node(
                region,
                self.ship_target.get(&region).copied().unwrap_or(0) % ctx.layout.nodes_per_region,
            );
            let hlc_ms = Stamp::new(self.hlc, self.id).unix_millis().max(self.physical_ms(ctx.now));
            ctx.send(Addr::Node(target), Msg::Batch { last_seq: last as u64, hlc_ms, deltas });
            self.inflight.insert(region, InFlight { last_seq: last as u64, sent_at: ctx.now });
        }
    }

    fn receive_batch(
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
                self.store.get(&key).cloned().unwrap_or(rec)
            } else {
                rec
            };
            self.replicate(Owner::Batch(b), key, state, Level::Quorum, false, ctx);
        }
        self.batch_delta_done(b, true, ctx);
    }

    fn batch_delta_done(&mut self, b: u64, ok: bool, ctx: &mut Ctx) {
        let Some(job) = self.batches.get_mut(&b) else { return };
        job.pending -= 1;
        job.failed |= !ok;
        if job.pending == 0 {
            let job = self.batches.remove(&b).expect("present");
            ctx.send(Addr::Node(job.from), Msg::BatchAck { last_seq: job.last_seq, ok: !job.failed });
        }
    }
}

/// Merges `rec` into a map's state for `key`; whether the state changed.
fn merge_into(map: &mut BTreeMap<Key, Record>, key: &[u8], rec: &Record) -> bool {
    match map.get_mut(key) {
        Some(cur) => {
            let before = cur.clone();
            cur.merge(rec);
            *cur != before
        }
        None => {
            map.insert(key.to_vec(), rec.clone());
            true
        }
    }
}
