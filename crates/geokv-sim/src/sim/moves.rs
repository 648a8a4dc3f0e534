//! Joins, leaves and cleanups of simulated nodes, as drivers of `geokv_protocol::moves` (the
//! steps, when a move or a cleanup may run, which keys go where), as `region/moves.rs` drives
//! them on the server. What is the simulator's own: the pace (a step is looked at every
//! [`MOVE_EVERY_MS`]), the deadlines, and that an attempt that failed is started over a second
//! later (the server's `spawn_join` retries; an operator retries a leave or a cleanup).

use std::collections::BTreeMap;

use geokv_cluster::Status;
use geokv_core::{NodeId, Record};
use geokv_protocol::moves::{self, Move, MoveKind, Step};
use geokv_protocol::Failure;

use super::node::{Ctx, Key, Msg, Node, REQUEST_TIMEOUT_MS};
use super::{Addr, Bug};

/// How often a node looks at the step of its move.
pub const MOVE_EVERY_MS: u64 = 100;
/// How long a node waits for its peers to see a new status (the server waits 60 s).
const SEEN_DEADLINE_MS: u64 = 3_000;
/// How long a failed attempt waits before the move starts over.
const RETRY_MS: u64 = 1_000;
/// States per streamed page.
const STREAM_PAGE: usize = 16;

/// A join or leave under way.
pub(crate) struct MoveRun {
    mv: Move,
    step_started: u64,
    /// Streaming in: the owners still to stream from, and the page asked for (id, start, when).
    sources: Vec<NodeId>,
    page: Option<(u64, u64)>,
    /// Streaming out: started, and the sends not acknowledged yet (id -> when sent).
    streaming_out: bool,
    sends: BTreeMap<u64, u64>,
    failed: bool,
}

/// What is asked of this node and what it knows about its peers (kept across crashes: an
/// operator's leave or cleanup is retried until it is done).
#[derive(Default)]
pub(crate) struct MoveState {
    /// The version of this node's info each peer reported holding (from pongs).
    pub seen_by: BTreeMap<NodeId, u64>,
    /// A leave was asked for and has not finished.
    pub leave_asked: bool,
    /// A cleanup was asked for and has not run.
    pub cleanup_asked: bool,
    /// Peers to run a catch-up exchange with (after a join).
    pub catch_up: Vec<NodeId>,
    /// When a failed attempt starts over.
    retry_at: u64,
    /// A cleanup's attempt under way: when it began, the copies being handed over, and the
    /// ids of their sends.
    cleanup_started: Option<u64>,
    handing: BTreeMap<Key, Handing>,
    handoff_ids: BTreeMap<u64, Key>,
    /// Keys streamed and copies dropped, for the run's report.
    pub streamed: u64,
    pub dropped: u64,
}

impl MoveState {
    /// A restart forgets a cleanup's attempt under way (it is asked again).
    pub(crate) fn restart(&mut self) {
        self.cleanup_started = None;
        self.handing.clear();
        self.handoff_ids.clear();
    }
}

impl Node {
    /// Whether no join, leave or cleanup is under way or asked for.
    pub(crate) fn moves_done(&self) -> bool {
        self.mv.is_none()
            && !self.moves.leave_asked
            && !self.moves.cleanup_asked
            && self.moves.catch_up.is_empty()
            && self.view.me().status != Status::Joining
    }

    /// An operator asks this node to leave the region.
    pub fn ask_leave(&mut self) {
        self.moves.leave_asked = true;
    }

    /// An operator asks this node to drop the copies it no longer replicates.
    pub fn ask_cleanup(&mut self) {
        self.moves.cleanup_asked = true;
    }

    /// The move timer: starts a move that is due, or runs the step of the one under way.
    pub(crate) fn move_tick(&mut self, ctx: &mut Ctx) {
        if self.mv.as_ref().is_some_and(|r| r.failed) {
            self.mv = None;
            self.moves.retry_at = ctx.now + RETRY_MS;
        }
        if self.mv.is_none() {
            if ctx.now < self.moves.retry_at {
                return;
            }
            let next = match Move::join(self.view.me().status) {
                Some(join) => Some(join),
                None if self.moves.leave_asked => match Move::leave(&self.view) {
                    Ok(leave) => {
                        self.moves.leave_asked = leave.is_some();
                        leave
                    }
                    // Refused (another move under way, too few nodes): asked again later.
                    Err(_) => {
                        self.moves.retry_at = ctx.now + RETRY_MS;
                        None
                    }
                },
                None => None,
            };
            match next {
                Some(mv) => self.begin(mv, ctx),
                None => self.cleanup_if_asked(ctx),
            }
            return;
        }
        self.run_step(ctx);
    }

    fn begin(&mut self, mv: Move, ctx: &mut Ctx) {
        self.mv = Some(MoveRun {
            mv,
            step_started: ctx.now,
            sources: Vec::new(),
            page: None,
            streaming_out: false,
            sends: BTreeMap::new(),
            failed: false,
        });
        self.enter_step(ctx);
    }

    fn run(&mut self) -> &mut MoveRun {
        self.mv.as_mut().expect("a move is under way")
    }

    /// The current step succeeded: on to the next one (or the move is over).
    fn advance(&mut self, ctx: &mut Ctx) {
        if self.run().mv.advance().is_none() {
            let kind = self.run().mv.kind;
            self.mv = None;
            if kind == MoveKind::Leave {
                self.moves.leave_asked = false;
            }
            return;
        }
        self.enter_step(ctx);
    }

    /// Sets a new step up and runs it once.
    fn enter_step(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let healthy: Vec<NodeId> = self.view.peers().into_iter().filter(|&p| self.healthy(p, now)).collect();
        let run = self.run();
        run.step_started = now;
        if run.mv.step() == Some(Step::StreamIn) {
            let sources = moves::join_sources(&self.view, |id| healthy.contains(&id));
            self.run().sources = sources;
        }
        self.run_step(ctx);
    }

    fn run_step(&mut self, ctx: &mut Ctx) {
        let Some(step) = self.mv.as_ref().and_then(|r| r.mv.step()) else { return };
        let waited = ctx.now.saturating_sub(self.run().step_started);
        match step {
            Step::Announce(status) => {
                let floor = self.physical_ms(ctx.now);
                let next = self.view.me().next(status, floor);
                self.view.set_me(next);
                self.advance(ctx);
            }
            Step::WaitSeen | Step::Settle => {
                if self.seen_by_peers(ctx.now) {
                    self.advance(ctx);
                } else if waited > SEEN_DEADLINE_MS {
                    match step {
                        Step::WaitSeen => self.run().failed = true,
                        _ => self.advance(ctx),
                    }
                }
            }
            Step::StreamIn => self.stream_in(ctx),
            Step::StreamOut => self.stream_out(ctx),
            Step::CatchUp => {
                self.moves.catch_up = self.view.peers();
                self.advance(ctx);
            }
        }
    }

    /// Whether every healthy peer reported holding this node's current info.
    fn seen_by_peers(&self, now: u64) -> bool {
        let version = self.view.me().version;
        self.view
            .peers()
            .into_iter()
            .filter(|&p| self.healthy(p, now))
            .all(|p| self.moves.seen_by.get(&p).is_some_and(|&v| v >= version))
    }

    fn stream_in(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let run = self.run();
        if let Some((_, sent)) = run.page {
            if now.saturating_sub(sent) > 4 * REQUEST_TIMEOUT_MS {
                run.failed = true;
            }
            return;
        }
        match run.sources.first().copied() {
            Some(owner) => self.ask_page(owner, Vec::new(), ctx),
            None => self.advance(ctx),
        }
    }

    fn ask_page(&mut self, owner: NodeId, start: Key, ctx: &mut Ctx) {
        let id = self.next();
        self.run().page = Some((id, ctx.now));
        ctx.send(Addr::Node(owner), Msg::StreamPage { id, start, joiner: self.id });
    }

    /// An owner's answer to a page request: the states of the keys the joiner will replicate.
    pub(crate) fn stream_page(&mut self, from: Addr, id: u64, start: Key, joiner: NodeId, ctx: &mut Ctx) {
        let mut items = Vec::new();
        let mut next = None;
        for (key, rec) in self.store.states().into_iter().filter(|(k, _)| *k >= start) {
            if !moves::hands_over(&self.view, &key, joiner) {
                continue;
            }
            if items.len() == STREAM_PAGE {
                next = Some(key);
                break;
            }
            items.push((key, rec));
        }
        ctx.send(from, Msg::StreamPageIs { id, items, next });
    }

    pub(crate) fn on_stream_page(
        &mut self,
        id: u64,
        items: Vec<(Key, Record)>,
        next: Option<Key>,
        ctx: &mut Ctx,
    ) {
        if self.mv.as_ref().and_then(|r| r.page).map(|(p, _)| p) != Some(id) {
            return;
        }
        self.moves.streamed += items.len() as u64;
        for (key, rec) in items {
            if !self.ahead(rec.version().time, ctx.now) {
                let _ = self.merge_local(&key, &rec, false);
            }
        }
        let run = self.run();
        run.page = None;
        match next {
            Some(start) => {
                let owner = run.sources[0];
                self.ask_page(owner, start, ctx);
            }
            None => {
                run.sources.remove(0);
                self.stream_in(ctx);
            }
        }
    }

    fn stream_out(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        if !self.run().streaming_out {
            self.run().streaming_out = true;
            for (key, rec) in self.store.states() {
                for target in moves::streams_to(&self.view, &key) {
                    let id = self.next();
                    self.run().sends.insert(id, now);
                    self.moves.streamed += 1;
                    let msg =
                        Msg::Merge { id, key: key.clone(), rec: rec.clone(), hint_for: None, ship: false };
                    ctx.send(Addr::Node(target), msg);
                }
            }
        }
        let run = self.run();
        if run.sends.values().any(|&sent| now.saturating_sub(sent) > REQUEST_TIMEOUT_MS) {
            run.failed = true;
        } else if run.sends.is_empty() {
            self.advance(ctx);
        }
    }

    /// The answer to a state sent while streaming out; false if `id` is not one.
    pub(crate) fn on_stream_ack(&mut self, id: u64, result: &Result<(), Failure>) -> bool {
        let Some(run) = self.mv.as_mut() else { return false };
        if run.sends.remove(&id).is_none() {
            return false;
        }
        if result.is_err() {
            run.failed = true;
        }
        true
    }

    /// A cleanup asked for runs once no move is under way in the region: each foreign copy is
    /// sent to the key's home replicas (`moves::hand_over_to`) and dropped once all of them
    /// have taken it; a cleanup with copies left over is tried again later.
    fn cleanup_if_asked(&mut self, ctx: &mut Ctx) {
        if !self.moves.cleanup_asked {
            return;
        }
        let now = ctx.now;
        if let Some(started) = self.moves.cleanup_started {
            let waiting = self.moves.handing.values().any(|h| h.waiting > 0 && !h.failed);
            if waiting && now.saturating_sub(started) < REQUEST_TIMEOUT_MS {
                return;
            }
            // Done with this attempt: what was not taken everywhere stays.
            let left = self.moves.handing.values().any(|h| h.waiting > 0 || h.failed);
            self.moves.handing.clear();
            self.moves.handoff_ids.clear();
            self.moves.cleanup_started = None;
            if left {
                self.moves.retry_at = now + RETRY_MS;
            } else {
                self.moves.cleanup_asked = false;
            }
            return;
        }
        if moves::cleanup_allowed(&self.view).is_err() {
            self.moves.retry_at = now + RETRY_MS;
            return;
        }
        let foreign: Vec<(Key, Record)> =
            self.store.states().into_iter().filter(|(k, _)| moves::foreign(&self.view, k)).collect();
        if foreign.is_empty() {
            self.moves.cleanup_asked = false;
            return;
        }
        // As on the server: a new actor first, then the copies go.
        self.incarnation += 1;
        // Planted bug: the copies go at once, without being handed over (the behaviour
        // before seed 8949).
        if ctx.bug == Some(Bug::CleanupDropsAtOnce) {
            for (key, _) in foreign {
                self.store.forget(&key);
                self.moves.dropped += 1;
            }
            self.moves.cleanup_asked = false;
            return;
        }
        self.moves.cleanup_started = Some(now);
        for (key, rec) in foreign {
            let targets = moves::hand_over_to(&self.view, &key);
            self.moves
                .handing
                .insert(key.clone(), Handing { waiting: targets.len(), failed: false, rec: rec.clone() });
            for target in targets {
                let id = self.next();
                self.moves.handoff_ids.insert(id, key.clone());
                let msg = Msg::Merge { id, key: key.clone(), rec: rec.clone(), hint_for: None, ship: false };
                ctx.send(Addr::Node(target), msg);
            }
        }
    }

    /// The answer to a copy a cleanup handed over; false if `id` is not one. A copy every home
    /// replica took is dropped, if it is still the state handed over.
    pub(crate) fn on_cleanup_ack(&mut self, id: u64, result: &Result<(), Failure>) -> bool {
        let Some(key) = self.moves.handoff_ids.remove(&id) else { return false };
        let Some(h) = self.moves.handing.get_mut(&key) else { return true };
        if result.is_err() {
            h.failed = true;
            return true;
        }
        h.waiting -= 1;
        if h.waiting == 0 && !h.failed {
            let handed = h.rec.clone();
            if self.state(&key).as_ref() == Some(&handed) {
                self.store.forget(&key);
                self.moves.dropped += 1;
            }
        }
        true
    }
}

/// A foreign copy a cleanup is handing over: acknowledgements still awaited, whether a home
/// replica refused it, and the state sent.
pub(crate) struct Handing {
    waiting: usize,
    failed: bool,
    rec: Record,
}
