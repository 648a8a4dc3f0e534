//! Deterministic simulation of a multi-region deployment: simulated nodes ([`node`]) on a
//! simulated network and clock, driven by one seeded RNG, with clients recording a
//! [`History`](crate::history) and a seeded fault [`Schedule`]. The same seed gives the same run,
//! message for message, so a failing seed replays exactly.
//!
//! After the fault window every fault is healed, clients stop, and the run goes on until the
//! cluster is quiet (no hints, every change shipped, nothing under way) plus two anti-entropy
//! rounds; then every replica's state is gathered and [`check`](crate::check::check)ed.

mod batch;
mod clients;
mod drive;
mod enforce;
mod faults;
mod moves;
mod msg;
pub mod node;
mod region;
pub mod residency;
pub mod scan;
pub mod schedule;
mod takeover;
mod xregion;

use std::collections::BTreeMap;

use geokv_core::NodeId;
use geokv_topology::Ring;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::check::{check_held, Finals, ReplicaState, Report};
use crate::history::{Action, Event, Observed, Outcome};
use node::{Ctx, Msg, Node, Timer};
pub use schedule::{Fault, Schedule, Step};

/// An endpoint of the simulated network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Addr {
    Node(NodeId),
    Client(u32),
}

/// Regions and nodes; node ids are `10 * (region + 1) + index + 1` (11, 12, ... 21, 22, ...).
#[derive(Clone, Debug)]
pub struct Layout {
    pub regions: usize,
    pub nodes_per_region: usize,
}

impl Layout {
    pub fn node(&self, region: usize, index: usize) -> NodeId {
        10 * (region as u64 + 1) + index as u64 + 1
    }

    pub fn region_of(&self, node: NodeId) -> usize {
        (node / 10 - 1) as usize
    }

    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.regions).flat_map(move |r| (0..self.nodes_per_region).map(move |i| self.node(r, i)))
    }

    pub fn region_name(region: usize) -> String {
        format!("region-{region}")
    }
}

/// Deliberate bugs, to show that the checker catches what they break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Writes are acknowledged once the coordinator has them (W = 1 whatever was asked).
    AckWithoutQuorum,
    /// Receivers acknowledge replication batches without applying them.
    SkipRemoteDeltas,
    /// Coordinators keep no hint for replicas that did not answer, and anti-entropy is off.
    NoRepair,
    /// A forwarded write whose connection failed is tried on the next home replica whatever
    /// it is (the server's behaviour before the fix: increments applied twice).
    RetryAnyForward,
    /// A coordinator writes without reading the key from the other replicas first (every
    /// replica is taken to have nothing): the server's behaviour before the data-loss fixes.
    SkipReadFirst,
    /// A set removal is computed without the state it removes from (it observes no adds).
    RemoveWithoutContext,
    /// A compare-and-swap whose condition fails still writes its value.
    SwapIgnoresCondition,
    /// A write of the wrong type replaces the key instead of being refused.
    WrongTypeOverwrites,
    /// The request layer drops TTLs.
    TtlDropped,
    /// A node restarted on an empty store votes in quorum reads before it has recovered its
    /// keys (the behaviour before recovery existed).
    RecoveringVotes,
    /// A scan reads the coordinator's own store only.
    ScanLocalOnly,
    /// A batch write runs each key's items in the reverse of the client's order.
    BatchReversed,
    /// The sweeper drops deleted and expired keys at once (no grace period, no wait for the
    /// cross-region replicator).
    PurgeEarly,
    /// A cleanup drops a node's foreign copies without handing them to the keys' home
    /// replicas first (the behaviour before seed 8949).
    CleanupDropsAtOnce,
    /// The replicator ships keys to every region, whatever the residency policy, and
    /// receivers take them (their stores have no admission check either).
    ShipEverywhere,
    /// Nodes never answer when asked for their residency policy: a node an apply did not
    /// reach keeps the old one.
    NoPolicySync,
    /// A residency enforcement erases the keys its region may no longer hold without handing
    /// them to the regions that may (the data-loss hole the handover closes).
    EraseWithoutHandover,
    /// A merge of replica states over `max_record_bytes` is not stored (the replica keeps its
    /// own state), as a store that held merges to the client writes' limit would do.
    OversizedMergeDropped,
    /// An append sent with a request id goes without it: its retries append it again.
    AppendIdDropped,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub layout: Layout,
    /// Replicas of a key per region.
    pub n: usize,
    pub clients_per_region: usize,
    /// Faults happen (and clients run) during this many simulated milliseconds.
    pub fault_window_ms: u64,
    pub registers: usize,
    pub counters: usize,
    pub sets: usize,
    /// Keys written only with TTLs.
    pub expiring: usize,
    /// Per region: append-only keys and sets with removes that only that region's clients write.
    pub logs: usize,
    pub local_sets: usize,
    /// `limits.max_record_bytes` of every node: small, so that client writes are refused for
    /// growing a key past it and concurrent set additions merge to more (stored anyway).
    pub max_record_bytes: usize,
    /// Clients also write and read registers only one region may hold (`sim::residency`).
    pub residency: bool,
    /// Clients also change TTLs (Expire): a TTL key's deadline moved, a counter's TTL taken
    /// away. Off in the default schedules, which keep the action streams their regression
    /// seeds were found with; `schedules_with_ttl_changes` runs them on.
    pub ttl_changes: bool,
    /// Odd-numbered clients append to the region's logs with request ids, and send an append
    /// whose outcome is unknown again to another node (as they do increments). Off in the
    /// default schedules for the same reason as `ttl_changes`;
    /// `schedules_with_idempotent_appends` runs them on.
    pub append_ids: bool,
    pub bug: Option<Bug>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            layout: Layout { regions: 3, nodes_per_region: 4 },
            n: 3,
            clients_per_region: 2,
            fault_window_ms: 8_000,
            registers: 6,
            counters: 3,
            sets: 3,
            expiring: 2,
            logs: 2,
            local_sets: 2,
            max_record_bytes: MAX_RECORD_BYTES,
            residency: true,
            ttl_changes: false,
            append_ids: false,
            bug: None,
        }
    }
}

/// The default `SimConfig::max_record_bytes`: about a set of ten members written from a few
/// nodes, so the shared sets (16 members, written from every region) reach it.
pub const MAX_RECORD_BYTES: usize = 400;

/// What one run did and what the checker found.
pub struct SimRun {
    pub schedule: Schedule,
    pub report: Report,
    pub history: Vec<Event>,
    /// Simulated milliseconds until the run ended.
    pub sim_ms: u64,
    pub messages: u64,
    pub dropped: u64,
    /// Merged states stored although over `max_record_bytes`, over all nodes.
    pub oversized_merges: u64,
    /// Nodes that left, came back and joined again; states streamed by moves; copies dropped
    /// by cleanups.
    pub rejoins: u64,
    pub streamed: u64,
    pub cleaned: u64,
    /// Residency changes applied; keys erased by enforcement; enforcement rounds that kept
    /// keys back (not every region took them yet).
    pub policy_changes: u64,
    pub erased: u64,
    pub kept_rounds: u64,
}

/// Runs the schedule drawn from `seed`.
pub fn run(seed: u64, cfg: &SimConfig) -> SimRun {
    run_schedule(Schedule::random(seed, &cfg.layout, cfg.fault_window_ms), cfg)
}

/// Runs a given schedule (its seed also drives the network and the clients).
pub fn run_schedule(schedule: Schedule, cfg: &SimConfig) -> SimRun {
    let mut w = World::new(schedule, cfg.clone());
    w.run();
    w.finish()
}

enum Ev {
    Deliver { from: Addr, to: Addr, msg: Box<Msg> },
    Timer { node: NodeId, life: u64, timer: Timer },
    ClientNext(u32),
    ClientTimeout(u32, u64),
    FaultStart(usize),
    FaultEnd(usize),
    CheckQuiet,
}

/// What a client asked: one operation on a key, or one page of a scan of the keys starting
/// with a prefix.
#[derive(Clone, Debug, PartialEq)]
enum Asked {
    One(Action),
    Scan { limit: usize },
    BatchWrite(Vec<(Vec<u8>, Action)>),
    BatchGet(Vec<Vec<u8>>),
}

struct Pending {
    id: u64,
    /// The key (a scan: the prefix).
    key: Vec<u8>,
    op: Asked,
    quorum: bool,
    invoked: u64,
    /// Which attempt of the operation this is (increments with a request id go again).
    attempt: u32,
}

struct Client {
    region: usize,
    pending: Option<Pending>,
    /// The version each key had at this client's last read of it (`None`: absent), which its
    /// compare-and-swaps expect.
    last_read: BTreeMap<Vec<u8>, Option<geokv_core::Stamp>>,
}

/// The deadline for the cluster to go quiet after the fault window.
const QUIET_DEADLINE_MS: u64 = 60_000;
const CLIENT_TIMEOUT_MS: u64 = 3_000;

struct World {
    cfg: SimConfig,
    schedule: Schedule,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    rng: SmallRng,
    nodes: BTreeMap<NodeId, Node>,
    clients: Vec<Client>,
    next_request: u64,
    blocked: BTreeMap<(NodeId, NodeId), u32>,
    lossy: Vec<(f64, f64, u64)>,
    crashed: BTreeMap<NodeId, u32>,
    paused: BTreeMap<NodeId, u32>,
    deferred: BTreeMap<NodeId, Vec<Ev>>,
    /// Nodes that left their region and are away; those due back (their step ended); nodes
    /// that came back and whose region cleans up once they have joined.
    gone: std::collections::BTreeSet<NodeId>,
    rejoin_due: std::collections::BTreeSet<NodeId>,
    rejoined: std::collections::BTreeSet<NodeId>,
    rejoins: u64,
    /// Residency changes the operator applied.
    policy_changes: u64,
    history: Vec<Event>,
    quiet_since: Option<u64>,
    done: bool,
    quiesced: bool,
    messages: u64,
    dropped: u64,
}

impl World {
    fn new(schedule: Schedule, cfg: SimConfig) -> World {
        let layout = cfg.layout.clone();
        let mut nodes = BTreeMap::new();
        let residency = std::sync::Arc::new(residency::SimResidency::new(&layout, cfg.n));
        let rings: Vec<Ring> = (0..layout.regions)
            .map(|r| Ring::new((0..layout.nodes_per_region).map(|i| layout.node(r, i)), 64))
            .collect();
        for (r, ring) in rings.iter().enumerate() {
            for &id in ring.nodes() {
                nodes.insert(
                    id,
                    Node::new(id, r, rings.clone(), cfg.n, cfg.max_record_bytes, residency.clone(), cfg.bug),
                );
            }
        }
        let clients = (0..layout.regions)
            .flat_map(|region| {
                (0..cfg.clients_per_region).map(move |_| Client {
                    region,
                    pending: None,
                    last_read: BTreeMap::new(),
                })
            })
            .collect();
        World {
            rng: SmallRng::seed_from_u64(schedule.seed),
            cfg,
            schedule,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            clients,
            next_request: 0,
            blocked: BTreeMap::new(),
            lossy: Vec::new(),
            crashed: BTreeMap::new(),
            paused: BTreeMap::new(),
            deferred: BTreeMap::new(),
            gone: Default::default(),
            rejoin_due: Default::default(),
            rejoined: Default::default(),
            rejoins: 0,
            policy_changes: 0,
            history: Vec::new(),
            quiet_since: None,
            done: false,
            quiesced: false,
            messages: 0,
            dropped: 0,
        }
    }

    fn at(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((time, self.seq), ev);
    }

    fn run(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.with_node(id, |n, ctx| n.start(ctx));
        }
        for c in 0..self.clients.len() as u32 {
            let t = self.rng.gen_range(0..20);
            self.at(t, Ev::ClientNext(c));
        }
        for i in 0..self.schedule.steps.len() {
            let (start, end) = (self.schedule.steps[i].start_ms, self.schedule.steps[i].end_ms);
            self.at(start, Ev::FaultStart(i));
            self.at(end, Ev::FaultEnd(i));
        }
        self.at(self.cfg.fault_window_ms, Ev::CheckQuiet);
        while let Some(((time, _), ev)) = self.queue.pop_first() {
            self.now = time;
            self.handle(ev);
            if self.done {
                break;
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to: Addr::Client(c), msg, .. } => self.client_answer(c, *msg),
            Ev::Deliver { from, to: Addr::Node(id), msg } => {
                if !self.nodes[&id].up {
                    self.dropped += 1;
                    return;
                }
                if self.nodes[&id].paused {
                    self.deferred.entry(id).or_default().push(Ev::Deliver { from, to: Addr::Node(id), msg });
                    return;
                }
                if let Addr::Node(src) = from {
                    if self.blocked.contains_key(&(src, id)) {
                        self.dropped += 1;
                        return;
                    }
                }
                self.with_node(id, |n, ctx| n.on_msg(from, *msg, ctx));
            }
            Ev::Timer { node, life, timer } => {
                let n = &self.nodes[&node];
                if !n.up || n.life != life {
                    return;
                }
                if n.paused {
                    self.deferred.entry(node).or_default().push(Ev::Timer { node, life, timer });
                    return;
                }
                self.with_node(node, |n, ctx| n.on_timer(timer, ctx));
            }
            Ev::ClientNext(c) => self.client_next(c),
            Ev::ClientTimeout(c, id) => {
                if self.clients[c as usize].pending.as_ref().is_some_and(|p| p.id == id) {
                    self.client_done(c, vec![Outcome::Unknown("client timeout".into())]);
                }
            }
            Ev::FaultStart(i) => self.fault(i, true),
            Ev::FaultEnd(i) => self.fault(i, false),
            Ev::CheckQuiet => self.check_quiet(),
        }
    }

    /// Runs a node handler and sends what it produced.
    fn with_node(&mut self, id: NodeId, f: impl FnOnce(&mut Node, &mut Ctx)) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let mut ctx = Ctx {
            now: self.now,
            rng: &mut self.rng,
            layout: &self.cfg.layout,
            bug: self.cfg.bug,
            sends: Vec::new(),
            timers: Vec::new(),
        };
        f(node, &mut ctx);
        let life = node.life;
        let (sends, timers) = (ctx.sends, ctx.timers);
        for (to, msg, extra) in sends {
            self.send(Addr::Node(id), to, msg, extra);
        }
        for (time, timer) in timers {
            self.at(time, Ev::Timer { node: id, life, timer });
        }
    }

    fn send(&mut self, from: Addr, to: Addr, msg: Msg, extra: u64) {
        self.messages += 1;
        let mut latency = 1;
        if let (Addr::Node(a), Addr::Node(b)) = (from, to) {
            if self.blocked.contains_key(&(a, b)) {
                self.dropped += 1;
                return self.connection_failed(from, to, &msg);
            }
            let (ra, rb) = (self.cfg.layout.region_of(a), self.cfg.layout.region_of(b));
            latency = if ra == rb {
                1 + self.rng.gen_range(0..=2)
            } else {
                20 + 15 * ra.abs_diff(rb) as u64 + self.rng.gen_range(0..=10)
            };
            let (drop, dup, jitter) = self
                .lossy
                .iter()
                .fold((0.0f64, 0.0f64, 0u64), |acc, l| (acc.0.max(l.0), acc.1.max(l.1), acc.2.max(l.2)));
            latency += self.rng.gen_range(0..=jitter);
            if self.rng.gen_bool(drop) {
                self.dropped += 1;
                return self.connection_failed(from, to, &msg);
            }
            // Requests and answers travel once (a gRPC call over HTTP/2 is never duplicated by
            // the network; duplicates come from retries, which the coordinator rules on); the
            // messages that carry states, digests and pings may arrive twice.
            if msg.idempotent() && self.rng.gen_bool(dup) {
                let again = latency + self.rng.gen_range(0..=jitter.max(5));
                self.at(self.now + again + extra, Ev::Deliver { from, to, msg: Box::new(msg.clone()) });
            }
        }
        self.at(self.now + latency + extra, Ev::Deliver { from, to, msg: Box::new(msg) });
    }

    /// A call's request or answer was lost: the calling node's connection reports the failure
    /// (as gRPC does with UNAVAILABLE), whichever of the two it was.
    fn connection_failed(&mut self, from: Addr, to: Addr, msg: &Msg) {
        let (caller, id) = match *msg {
            Msg::Coordinate { id, .. } => (from, id),
            Msg::Coordinated { id, .. } => (to, id),
            _ => return,
        };
        if let Addr::Node(_) = caller {
            self.at(
                self.now + 1,
                Ev::Deliver {
                    from: Addr::Client(u32::MAX),
                    to: caller,
                    msg: Box::new(Msg::CallFailed { id }),
                },
            );
        }
    }

    fn check_quiet(&mut self) {
        self.moves_tick();
        let layout = &self.cfg.layout;
        let quiet = self.nodes.values().all(|n| n.up && !n.paused && n.quiet(layout))
            && self.clients.iter().all(|c| c.pending.is_none());
        match (quiet, self.quiet_since) {
            (true, None) => self.quiet_since = Some(self.now),
            // Quiet through three anti-entropy rounds (each node meets every peer): done.
            (true, Some(since)) if self.now >= since + 3 * node::ANTI_ENTROPY_EVERY_MS + 500 => {
                self.quiesced = true;
                self.done = true;
            }
            (false, _) => self.quiet_since = None,
            _ => {}
        }
        if self.now >= self.cfg.fault_window_ms + QUIET_DEADLINE_MS {
            self.done = true;
        }
        self.at(self.now + 250, Ev::CheckQuiet);
    }

    fn finish(self) -> SimRun {
        let mut finals = Finals::new();
        let keys: std::collections::BTreeSet<&Vec<u8>> = self.history.iter().map(|e| &e.key).collect();
        let mut misplaced = Vec::new();
        for key in keys {
            let mut states = Vec::new();
            for r in 0..self.cfg.layout.regions {
                let any = &self.nodes[&self.cfg.layout.node(r, 0)];
                // Residency: no node of a region the key's rule excludes holds it.
                if !any.allows(key, r) {
                    for n in self.nodes.values().filter(|n| n.region == r && n.state(key).is_some()) {
                        misplaced.push(format!(
                            "key {}: node {} of {} holds it, which its residency rule does not allow",
                            String::from_utf8_lossy(key),
                            n.id,
                            Layout::region_name(r)
                        ));
                    }
                    continue;
                }
                for id in any.home(key) {
                    let n = &self.nodes[&id];
                    let rec = n.state(key);
                    states.push(ReplicaState {
                        replica: format!("node {id}"),
                        region: Layout::region_name(r),
                        observed: Observed::from_view(
                            rec.as_ref().and_then(|r| r.view(n.physical_ms(self.now))),
                        ),
                        version: rec.map(|r| r.version()),
                    });
                }
            }
            finals.insert(key.clone(), states);
        }
        let any = self.nodes.values().next().expect("nodes");
        let regions = self.cfg.layout.regions;
        // During a residency change, a read in a region newly allowed to hold a key may miss
        // writes not handed over yet: read-after-write is not promised for the moving keys.
        let changed = self.policy_changes > 0;
        let moving = |key: &[u8]| changed && key.starts_with(residency::MOVING.as_bytes());
        let mut report = check_held(
            &self.history,
            &finals,
            |key| (0..regions).filter(|&r| any.allows(key, r)).map(Layout::region_name).collect(),
            moving,
            self.schedule.steps.iter().any(|s| matches!(s.fault, Fault::ClockJump { .. })),
        );
        report.violations.extend(misplaced);
        // Every node ends on the same policy.
        let policy = any.policy_version();
        for n in self.nodes.values().filter(|n| n.policy_version() != policy) {
            report.violations.push(format!(
                "residency policies did not converge: node {} holds version {}, node {} version {} (or another text)",
                n.id,
                n.policy_version().0,
                any.id,
                policy.0
            ));
        }
        if !self.quiesced {
            report.violations.push(format!(
                "the cluster did not go quiet within {QUIET_DEADLINE_MS} ms of the heal (hints, unshipped changes or requests left)"
            ));
        }
        let oversized_merges = self.nodes.values().map(|n| n.store.oversized_merges()).sum();
        SimRun {
            oversized_merges,
            rejoins: self.rejoins,
            streamed: self.nodes.values().map(|n| n.moves.streamed).sum(),
            cleaned: self.nodes.values().map(|n| n.moves.dropped).sum(),
            policy_changes: self.policy_changes,
            erased: self.nodes.values().map(|n| n.enforcement.erased).sum(),
            kept_rounds: self.nodes.values().map(|n| n.enforcement.kept_rounds).sum(),
            schedule: self.schedule,
            report,
            history: self.history,
            sim_ms: self.now,
            messages: self.messages,
            dropped: self.dropped,
        }
    }
}
