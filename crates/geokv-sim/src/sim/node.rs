//! One simulated node: its store (an in-memory map of CRDT states), hints, change log and
//! cursors, its clock, and the background work of the region and the replicator (pings,
//! hinted handoff, anti-entropy, shipping and receiving batches). Client requests, forwarded
//! writes and states from other regions run through `geokv-protocol`'s coordinators (see
//! [`super::drive`]). Handlers take a [`Ctx`] and return nothing: what a node sends and the
//! timers it sets are collected there, so the node does no I/O and reads no clock.

use std::collections::BTreeMap;

use geokv_cluster::{Health, MemberInfo, Membership, Status};
use geokv_core::{NodeId, Record, Stamp};
use geokv_protocol::shipping::{self, Tail};
use geokv_protocol::{Failure, Kind, PeerError, Recovery};
use geokv_storage::{MemStore, ReplicaStore};
use geokv_topology::Ring;
use rand::Rng;

use super::drive::{Input, Job, Reply};
use super::region::{AeRun, Scope};
use super::xregion::{BatchJob, InFlight};
use super::{Addr, Bug, Layout};

pub type Key = Vec<u8>;

/// The largest skew a replication batch's HLC stamp may have over the receiver's clock.
pub const MAX_DRIFT_MS: u64 = 500;
/// How long a peer may stay silent before it is suspected (not healthy).
pub const SUSPECT_MS: u64 = 500;
/// How long a coordinator waits for the replicas of one request.
pub const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// How long a coordinator waits for the replicas a read asked before asking the spare ones
/// (the server's `cluster.speculative_retry_ms`).
pub const SPECULATE_MS: u64 = 20;
/// How long a replicator waits for a batch's acknowledgement before resending from the cursor.
pub const BATCH_TIMEOUT_MS: u64 = 2_000;
pub const PING_EVERY_MS: u64 = 100;
pub const HANDOFF_EVERY_MS: u64 = 200;
pub const SHIP_EVERY_MS: u64 = 50;
/// How old a change must be before the takeover tail checks it with its key's shipper.
pub const TAKEOVER_GRACE_MS: u64 = 1_000;
/// Keys whose acknowledged digest a node keeps per destination.
pub(crate) const ACKED_KEYS: usize = 10_000;
pub const ANTI_ENTROPY_EVERY_MS: u64 = 1_000;
/// How often a node starts an exchange with a node of another region (the server's
/// cross-region backstop for what the replicator missed).
pub const REMOTE_ANTI_ENTROPY_EVERY_MS: u64 = 2_000;
/// How often a recovering node tries an exchange with a peer it still waits for.
pub const RECOVERY_EVERY_MS: u64 = 200;
/// How long a tombstone or an expired key is kept before the sweeper purges it: longer than
/// any fault of a schedule plus the repairs after it (the documented condition: the grace
/// period exceeds every outage).
pub const TOMBSTONE_GRACE_MS: u64 = 15_000;
pub const SWEEP_EVERY_MS: u64 = 500;
/// Change-log entries per batch.
pub(crate) const BATCH_ENTRIES: usize = 32;
/// Unix milliseconds at simulated time 0 (the HLC wants a plausible wall clock).
const EPOCH_MS: u64 = 1_767_225_600_000;

pub use super::msg::{Answer, Ctx, Msg, Request, Timer};

pub struct Node {
    pub id: NodeId,
    pub region: usize,
    pub up: bool,
    pub paused: bool,
    /// Bumped by every crash: timers of an earlier life are ignored.
    pub life: u64,
    /// This node's view of its region (`geokv_cluster::Membership`): who owns which keys, who
    /// is joining or leaving. Learned from the member infos pings and pongs carry. Kept across
    /// crashes (the server saves it).
    pub view: Membership,
    /// Every region's ring as the topology gives it, for exchanges with other regions.
    pub(crate) rings: Vec<Ring>,
    /// The deployment's topology for residency decisions (see [`super::residency`]).
    pub(crate) residency: std::sync::Arc<super::residency::SimResidency>,
    /// The residency policy this node holds (durable; the store's admission check reads it).
    pub(crate) policy: super::residency::SharedPolicy,
    /// Residency changes: what was enforced last, the enforcement under way (see
    /// [`super::enforce`]).
    pub(crate) enforcement: super::enforce::Enforcement,
    /// A join or leave under way, and what the operator asked for (see [`super::moves`]).
    pub(crate) mv: Option<super::moves::MoveRun>,
    pub(crate) moves: super::moves::MoveState,
    pub(crate) n: usize,
    /// Durable, kept across crashes: states, hints, the change log and the replicator's
    /// cursors (named after the destination region).
    pub store: MemStore,
    /// Renewed when the node loses its data: the actor it writes counter entries and set dots
    /// as is `actor_id(id, incarnation)`, as on the server.
    pub incarnation: u64,
    /// Set when the node lost its data (durable, as the server's flag): it votes in no quorum
    /// read until it has completed an exchange with every peer (`geokv_protocol::recovery`).
    /// The peers it has synced with are volatile: a crash starts them over.
    pub recovery: Option<Recovery>,
    // Volatile.
    /// Turns of the anti-entropy rotations (see [`Scope`]).
    pub(crate) ae_round: [usize; 2],
    /// The anti-entropy exchanges this node runs, with a peer of its region and with a node of
    /// another region (indexed by [`Scope`]).
    pub(crate) ae: [Option<AeRun>; 2],
    pub(crate) hlc: u64,
    heard: BTreeMap<NodeId, u64>,
    next_id: u64,
    /// Requests under way (see [`super::drive`]).
    pub(crate) jobs: BTreeMap<u64, Job>,
    /// Calls to peers under way: message id -> (job, peer).
    pub(crate) calls: BTreeMap<u64, (u64, NodeId)>,
    /// Scans this node coordinates, and their page requests under way (id -> (scan, peer)).
    pub(crate) scans: BTreeMap<u64, super::scan::ScanJob>,
    pub(crate) scan_calls: BTreeMap<u64, (u64, NodeId)>,
    /// Client batches under way.
    pub(crate) client_batches: BTreeMap<u64, super::batch::ClientBatch>,
    /// Hint deliveries under way: request id -> (home, key, state, sent at).
    pub(crate) handoffs: BTreeMap<u64, (NodeId, Key, Record, u64)>,
    pub(crate) batches: BTreeMap<u64, BatchJob>,
    pub(crate) inflight: BTreeMap<(usize, Tail), InFlight>,
    pub(crate) ship_target: BTreeMap<usize, usize>,
    /// Streams of batches from other regions: (sender, tail) -> (stream, where the next batch
    /// starts).
    pub(crate) streams: BTreeMap<(NodeId, Tail), (u64, u64)>,
    /// Per destination region, the states it acknowledged from this node (by digest), and
    /// the takeover page waiting for its shippers' answers.
    pub(crate) acked: BTreeMap<usize, shipping::Acked<Vec<u8>>>,
    pub(crate) asking: BTreeMap<usize, super::takeover::Asking>,
    // Faults.
    pub clock_offset_ms: i64,
    pub clock_drift_ppm: i64,
    pub disk_delay_ms: u64,
    /// Planted bug [`Bug::OversizedMergeDropped`].
    pub(crate) drop_oversized_merges: bool,
}

impl Node {
    pub fn new(
        id: NodeId,
        region: usize,
        rings: Vec<Ring>,
        n: usize,
        max_record_bytes: usize,
        residency: std::sync::Arc<super::residency::SimResidency>,
        bug: Option<Bug>,
    ) -> Node {
        let policy = std::sync::Arc::new(std::sync::RwLock::new(residency.initial()));
        let mut store = MemStore::with_grace_ms(TOMBSTONE_GRACE_MS).with_max_record_bytes(max_record_bytes);
        // The store refuses keys this node's region may not hold, as the engine's admission
        // (planted bug `ShipEverywhere`: no admission check either).
        if bug != Some(Bug::ShipEverywhere) {
            let (check, here) = (policy.clone(), Layout::region_name(region));
            store.set_admission(std::sync::Arc::new(move |key: &[u8]| {
                let held = check.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                geokv_protocol::residency::change::admission(&held.policy, held.version, &here, key)
            }));
        }
        Node {
            id,
            region,
            up: true,
            paused: false,
            life: 0,
            view: Membership::new(
                member(id, region, Status::Normal, 1),
                rings[region]
                    .nodes()
                    .iter()
                    .filter(|&&p| p != id)
                    .map(|&p| member(p, region, Status::Normal, 1)),
                n,
                64,
                0,
                SUSPECT_MS,
            ),
            rings,
            enforcement: super::enforce::Enforcement {
                enforced: {
                    let h = policy.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                    (h.version, h.text.clone())
                },
                ..Default::default()
            },
            policy,
            residency,
            mv: None,
            moves: Default::default(),
            n,
            store,
            incarnation: 1,
            recovery: None,
            ae_round: [0, 0],
            ae: [None, None],
            hlc: 0,
            heard: BTreeMap::new(),
            next_id: 1,
            jobs: BTreeMap::new(),
            calls: BTreeMap::new(),
            scans: BTreeMap::new(),
            scan_calls: BTreeMap::new(),
            client_batches: BTreeMap::new(),
            handoffs: BTreeMap::new(),
            batches: BTreeMap::new(),
            inflight: BTreeMap::new(),
            ship_target: BTreeMap::new(),
            streams: BTreeMap::new(),
            acked: BTreeMap::new(),
            asking: BTreeMap::new(),
            clock_offset_ms: 0,
            clock_drift_ppm: 0,
            disk_delay_ms: 0,
            drop_oversized_merges: bug == Some(Bug::OversizedMergeDropped),
        }
    }

    /// The region of a node of the deployment.
    pub(crate) fn region_of(&self, node: NodeId) -> usize {
        self.rings.iter().position(|r| r.nodes().contains(&node)).expect("a node of the deployment")
    }

    /// The key's home replicas in this region (owners: normal and leaving nodes).
    pub fn home(&self, key: &[u8]) -> Vec<NodeId> {
        self.view.home(key)
    }

    /// The nodes of the region's ring, now and once the moves under way are done.
    pub(crate) fn ring_nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> =
            self.view.owners().nodes().iter().chain(self.view.future_owners().nodes()).copied().collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Starts (or restarts) the node: volatile state is rebuilt, timers armed, and every peer
    /// is presumed alive for a grace period.
    pub fn start(&mut self, ctx: &mut Ctx) {
        self.up = true;
        self.life += 1;
        self.hlc = 0;
        self.heard = self.peers(ctx.layout).into_iter().map(|p| (p, ctx.now)).collect();
        self.jobs.clear();
        self.calls.clear();
        self.scans.clear();
        self.scan_calls.clear();
        self.client_batches.clear();
        self.handoffs.clear();
        self.ae = [None, None];
        self.mv = None;
        self.moves.seen_by.clear();
        self.moves.catch_up.clear();
        self.moves.restart();
        if self.recovery.is_some() {
            self.recovery = Some(Recovery::new());
        }
        self.batches.clear();
        self.inflight.clear();
        self.streams.clear();
        self.acked.clear();
        self.asking.clear();
        self.enforcement.run = None;
        for t in [
            Timer::Ping,
            Timer::Handoff,
            Timer::Ship,
            Timer::AntiEntropy,
            Timer::RemoteAntiEntropy,
            Timer::Move,
            Timer::Sweep,
            Timer::Residency,
        ] {
            let jitter = ctx.rng.gen_range(0..50);
            ctx.timers.push((ctx.now + jitter, t));
        }
    }

    /// Comes back on an empty disk after leaving, to join the region again: a new actor, a
    /// recovering store, and a joining info newer than the one its peers remember.
    pub fn rejoin(&mut self, now: u64) {
        self.wipe();
        let floor = self.physical_ms(now);
        let joining = self.view.me().next(Status::Joining, floor);
        self.view.set_me(joining);
    }

    pub fn crash(&mut self) {
        self.up = false;
    }

    /// Loses everything on disk: states, hints, change log and cursors. The node writes under
    /// a new actor from now on (it may have lost some of its own CRDT history).
    pub fn wipe(&mut self) {
        self.store.wipe();
        // The saved policy went with the disk: the node starts over on the topology's policy
        // file (version 0, enforced on the empty store at once) and learns newer ones from its
        // peers, as the server does.
        let initial = self.residency.initial();
        self.enforcement.enforced = (initial.version, initial.text.clone());
        *self.policy.write().unwrap_or_else(std::sync::PoisonError::into_inner) = initial;
        self.incarnation += 1;
        self.recovery = Some(Recovery::new());
    }

    /// Whether this node may vote in a quorum read (see `geokv_protocol::recovery`).
    /// (Planted bug: a recovering node votes.)
    pub(crate) fn vote(&self, bug: Option<Bug>) -> Result<(), Failure> {
        if bug == Some(Bug::RecoveringVotes) {
            return Ok(());
        }
        let waiting = self.recovery.as_ref().map(|r| r.waiting_for(self.id, self.ring_nodes()));
        geokv_protocol::vote(self.id, waiting.as_deref())
    }

    /// An anti-entropy exchange this node ran with `peer` ended: a recovering node may be
    /// recovered now.
    pub(crate) fn exchanged(&mut self, peer: NodeId, result: &Result<geokv_protocol::Outcome, String>) {
        let ring = self.ring_nodes();
        let Some(r) = self.recovery.as_mut() else { return };
        r.on_exchange(peer, result);
        if r.waiting_for(self.id, ring).is_empty() {
            self.recovery = None;
        }
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
    pub(crate) fn stamp(&mut self, now: u64, floor: Stamp) -> Stamp {
        let physical = Stamp::ntp_from_millis(self.physical_ms(now));
        self.hlc = physical.max(self.hlc + 1).max(floor.time + 1);
        Stamp::new(self.hlc, self.id)
    }

    /// Whether HLC time `time` is beyond the drift bound ahead of this node's clock.
    pub(crate) fn ahead(&self, time: u64, now: u64) -> bool {
        geokv_protocol::beyond_drift(time, self.physical_ms(now), MAX_DRIFT_MS)
    }

    /// The actor this node writes CRDT state as.
    pub(crate) fn actor(&self) -> u64 {
        geokv_core::actor_id(self.id, self.incarnation)
    }

    /// This node's HLC time now (NTP64), without issuing a stamp.
    pub(crate) fn stamp_time(&self, now: u64) -> u64 {
        Stamp::ntp_from_millis(self.physical_ms(now)).max(self.hlc)
    }

    pub(crate) fn healthy(&self, id: NodeId, now: u64) -> bool {
        id == self.id || self.heard.get(&id).is_some_and(|&t| now.saturating_sub(t) <= SUSPECT_MS)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Whether nothing is left to do: no hints, no unshipped changes, no requests under way,
    /// no recovery, no tombstone or expired key left to purge (an expiry marker may stay: it
    /// goes a grace period later, as a tombstone does).
    pub fn quiet(&self, layout: &Layout) -> bool {
        let shipped = (0..layout.regions).filter(|&r| r != self.region).all(|r| self.unshipped(r).is_empty());
        // A node still recovering its keys has work left too.
        !self.store.has_hints()
            && shipped
            && self.jobs.is_empty()
            && self.scans.is_empty()
            && self.client_batches.is_empty()
            && self.batches.is_empty()
            && self.recovery.is_none()
            && self.moves_done()
            && !self.enforce_pending()
            && self.enforcement.run.is_none()
            && !self.store.states().iter().any(|(_, r)| {
                !r.is_marker() && geokv_storage::purge::deadline(r, self.store.grace_ms()).is_some()
            })
    }

    /// The state of `key` in this node's store.
    pub fn state(&self, key: &[u8]) -> Option<Record> {
        self.store.get(key).expect("the in-memory store does not fail")
    }

    pub fn on_timer(&mut self, timer: Timer, ctx: &mut Ctx) {
        match timer {
            Timer::Ping => {
                for p in self.peers(ctx.layout) {
                    ctx.send(Addr::Node(p), Msg::Ping(self.view.me().clone()));
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
                // A recovering node exchanges with the peers it still waits for, promptly.
                let (peers, every) = match &self.recovery {
                    Some(r) => (r.waiting_for(self.id, self.ring_nodes()), RECOVERY_EVERY_MS),
                    // After a move, an exchange with every peer now (`Step::CatchUp`).
                    None if !self.moves.catch_up.is_empty() => {
                        (vec![self.moves.catch_up.remove(0)], RECOVERY_EVERY_MS)
                    }
                    None => (self.view.peers(), ANTI_ENTROPY_EVERY_MS),
                };
                if !peers.is_empty() {
                    self.anti_entropy_tick(Scope::Region, &peers, ctx);
                }
                ctx.timers.push((ctx.now + every, Timer::AntiEntropy));
            }
            Timer::RemoteAntiEntropy => {
                let remote: Vec<NodeId> = (0..self.rings.len())
                    .filter(|&r| r != self.region)
                    .flat_map(|r| self.rings[r].nodes().iter().copied())
                    .collect();
                if !remote.is_empty() {
                    self.anti_entropy_tick(Scope::Remote, &remote, ctx);
                }
                ctx.timers.push((ctx.now + REMOTE_ANTI_ENTROPY_EVERY_MS, Timer::RemoteAntiEntropy));
            }
            Timer::Sweep => {
                let now_ms = self.physical_ms(ctx.now);
                for (key, rec) in self.store.states() {
                    // Planted bug: what is not visible is dropped at once.
                    if ctx.bug == Some(Bug::PurgeEarly) && !rec.is_visible(now_ms) {
                        self.store.forget(&key);
                    }
                    self.store.purge_if_due(&key, now_ms).expect("the in-memory store does not fail");
                }
                ctx.timers.push((ctx.now + SWEEP_EVERY_MS, Timer::Sweep));
            }
            Timer::Residency => {
                self.residency_tick(ctx);
                ctx.timers.push((ctx.now + super::enforce::SYNC_EVERY_MS, Timer::Residency));
            }
            Timer::Move => {
                self.move_tick(ctx);
                ctx.timers.push((ctx.now + super::moves::MOVE_EVERY_MS, Timer::Move));
            }
            Timer::Deadline(id) => {
                if !self.finish_scan(id, ctx) {
                    self.feed(id, Input::Timeout, ctx)
                }
            }
            Timer::Slow(id) => self.feed(id, Input::Slow, ctx),
        }
    }

    pub fn on_msg(&mut self, from: Addr, msg: Msg, ctx: &mut Ctx) {
        if let Addr::Node(peer) = from {
            if ctx.layout.region_of(peer) == self.region {
                self.heard.insert(peer, ctx.now);
            }
        }
        if self.on_exchange_msg(&msg, ctx) {
            return;
        }
        let msg = match msg {
            Msg::Req { id, key, req: req @ (Request::Write(_) | Request::Read), level, client } => {
                match self.reside(from, id, key, req, level, client, ctx) {
                    Some(msg) => msg,
                    None => return,
                }
            }
            other => other,
        };
        match msg {
            Msg::Req { id, key, req: Request::Write(action), level, client } => {
                self.start_write(Reply::Client { to: client.unwrap_or(from), id }, key, action, level, ctx)
            }
            Msg::Req { id, key, req: Request::Read, level, client } => {
                self.start_read(Reply::Client { to: client.unwrap_or(from), id }, key, level, ctx)
            }
            Msg::Req { id, key, req: Request::Scan { limit }, level, .. } => {
                self.start_scan(from, id, key, limit, level, ctx)
            }
            Msg::Req { id, req: Request::BatchWrite(items), level, .. } => {
                self.start_batch_write(from, id, items, level, ctx)
            }
            Msg::Req { id, req: Request::BatchGet(keys), level, .. } => {
                self.start_batch_get(from, id, keys, level, ctx)
            }
            Msg::Resp { .. } | Msg::ScanResp { .. } | Msg::BatchResp { .. } => {}
            Msg::ScanPage { id, prefix, want } => {
                let result = self.page(&prefix, want, ctx.bug);
                ctx.send(from, Msg::ScanPageIs { id, result });
            }
            Msg::ScanPageIs { id, result } => self.on_page_answer(id, result, ctx),
            Msg::Coordinate { id, key, action, level } => {
                self.start_write(Reply::Node { to: from, id }, key, action, level, ctx)
            }
            Msg::Coordinated { id, result } => {
                self.answered(id, |n| Input::Called(n, result.map_err(PeerError::Answered)), ctx)
            }
            Msg::CallFailed { id } => {
                // The connection broke: the coordinator may have run the write. Planted bug:
                // the failure is taken as a call that never left.
                let e = if ctx.bug == Some(Bug::RetryAnyForward) {
                    PeerError::NeverSent("connection refused".into())
                } else {
                    PeerError::Transport("connection reset".into())
                };
                self.answered(id, |n| Input::Called(n, Err(e)), ctx)
            }
            Msg::Merge { id, key, rec, hint_for, ship } => {
                if self.ahead(rec.version().time, ctx.now) {
                    let refused = Failure::refused(
                        Kind::FailedPrecondition,
                        "the state is stamped beyond the drift bound",
                    );
                    return ctx.send(from, Msg::MergeAck { id, result: Err(refused) });
                }
                let result = match geokv_protocol::keep(self.id, hint_for) {
                    geokv_protocol::Keep::Hint(home) => self.keep_hint(home, &key, &rec),
                    geokv_protocol::Keep::Merge => self.merge_local(&key, &rec, ship),
                };
                // The acknowledgement leaves once the write is on disk.
                ctx.sends.push((from, Msg::MergeAck { id, result }, self.disk_delay_ms));
            }
            Msg::MergeAck { id, result } => {
                if self.on_handoff_ack(id, &result)
                    || self.on_stream_ack(id, &result)
                    || self.on_cleanup_ack(id, &result)
                {
                    return;
                }
                self.answered(id, |n| Input::Sent(n, result.map_err(PeerError::Answered)), ctx)
            }
            Msg::Fetch { id, key, writer, vote } => {
                let result = match writer {
                    // The coordinator's clock runs too far ahead of this replica's: it may not
                    // write until the clocks agree.
                    Some(w) if self.ahead(w, ctx.now) => {
                        Err(Failure::refused(Kind::FailedPrecondition, "the coordinator's clock is ahead"))
                    }
                    _ if vote => self.vote(ctx.bug).map(|()| self.state(&key)),
                    _ => Ok(self.state(&key)),
                };
                ctx.send(from, Msg::Fetched { id, result });
            }
            Msg::Fetched { id, result } => {
                // A replica whose clock ran ahead may hold stamps from the future: its answer
                // is not used.
                let result = match result {
                    Ok(Some(rec)) if self.ahead(rec.version().time, ctx.now) => Err(Failure::refused(
                        Kind::FailedPrecondition,
                        "the replica's state is stamped beyond the drift bound",
                    )),
                    other => other,
                };
                self.answered(id, |n| Input::Fetched(n, result.map_err(PeerError::Answered)), ctx)
            }
            Msg::Ping(info) => {
                let sees = self.view.info(info.id).map_or(0, |i| i.version);
                self.view.learn(info, Health::Alive);
                let sees = sees.max(self.view.info(peer_of(from)).map_or(0, |i| i.version));
                ctx.send(from, Msg::Pong { info: self.view.me().clone(), sees });
            }
            Msg::Pong { info, sees } => {
                self.view.learn(info, Health::Alive);
                self.moves.seen_by.insert(peer_of(from), sees);
            }
            Msg::StreamPage { id, start, joiner } => self.stream_page(from, id, start, joiner, ctx),
            Msg::StreamPageIs { id, items, next } => self.on_stream_page(id, items, next, ctx),
            Msg::Batch(batch) => self.receive_batch(from, batch, ctx),
            Msg::BatchAck { tail, stream, last_seq, ok } => {
                if let Addr::Node(p) = from {
                    self.on_batch_ack(ctx.layout.region_of(p), tail, stream, last_seq, ok);
                }
            }
            Msg::ShippedAsk { id, region, items } => self.on_shipped_ask(from, id, region, items, ctx),
            Msg::ShippedIs { id, covered } => self.on_shipped_is(id, covered, ctx),
            Msg::PolicyAsk if ctx.bug == Some(Bug::NoPolicySync) => {}
            Msg::PolicyAsk => {
                let (version, text) = self.policy_version();
                ctx.send(from, Msg::PolicyIs { version, text });
            }
            Msg::PolicyIs { version, text } => self.on_policy(version, text),
            Msg::Handover { id, version, deltas } => self.receive_handover(from, id, version, deltas, ctx),
            Msg::HandoverAck { id, ok } => self.on_handover_ack(id, ok),
            Msg::AeSummary { .. } | Msg::AeDigests { .. } => self.on_exchange_request(from, msg, ctx),
            Msg::AeSummaryIs { .. } | Msg::AeDigestsAre { .. } => {}
        }
    }
}

/// A node's member info as the simulation gossips it (no addresses).
pub(crate) fn member(id: NodeId, region: usize, status: Status, version: u64) -> MemberInfo {
    MemberInfo {
        id,
        version,
        status,
        region: Layout::region_name(region),
        client_addr: String::new(),
        peer_addr: String::new(),
    }
}

fn peer_of(from: Addr) -> NodeId {
    match from {
        Addr::Node(id) => id,
        Addr::Client(_) => 0,
    }
}
