//! The background work of a simulated node in its region: hinted handoff and Merkle
//! anti-entropy (with the region's peers, and, as the server's cross-region backstop, with
//! the other regions' nodes), as drivers of `geokv-protocol`'s rules ([`hint_plan`],
//! [`delivered`]) and exchange machine ([`Exchange`]). What is decided here is only what the server's driver
//! decides too: which peer's turn it is (one that answers probes), when a call has waited
//! too long (the key fails, the exchange goes on), and when a stalled exchange is given up.

use std::collections::{BTreeMap, VecDeque};

use geokv_cluster::merkle::{self, Summary};
use geokv_core::{NodeId, Record};
use geokv_protocol::{
    delivered, hint_plan, AeCommand, Delivered, Exchange, Failure, HintPlan, Kind, PeerError,
};
use geokv_storage::{codec, ReplicaStore};

use super::node::{Ctx, Key, Msg, Node, REQUEST_TIMEOUT_MS};
use super::{Addr, Bug};

/// How long an anti-entropy exchange may take before it is given up.
const EXCHANGE_TIMEOUT_MS: u64 = 5 * REQUEST_TIMEOUT_MS;

/// Which exchange slot: a node runs at most one exchange with a peer of its region and one
/// with a node of another region at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Region = 0,
    Remote = 1,
}

/// An anti-entropy exchange under way with `peer`.
pub(crate) struct AeRun {
    /// Tells its messages from those of earlier exchanges.
    xid: u64,
    peer: NodeId,
    started: u64,
    ex: Exchange,
    /// Fetches and pushes under way: their keys and when they were sent.
    fetches: BTreeMap<u64, (Key, u64)>,
    pushes: BTreeMap<u64, (Key, u64)>,
}

impl Node {
    /// States of the keys both this node and `peer` are home replicas of, with their digests.
    /// A peer of this region replicates the keys this node's view gives it; a node of another
    /// region the keys its region may hold and its ring gives it (the server's `shared_with`).
    fn shared_digests(&self, peer: NodeId) -> BTreeMap<Key, u64> {
        let mut out = BTreeMap::new();
        let peer_region = self.region_of(peer);
        let peer_ring = &self.rings[peer_region];
        for (key, rec) in self.store.states() {
            let home = self.home(&key);
            let peer_replicates = geokv_protocol::anti_entropy::peer_replicates(
                &home,
                peer,
                peer_region == self.region,
                || self.allows(&key, peer_region) && peer_ring.preference_list(&key, self.n).contains(&peer),
            );
            if geokv_protocol::shared(&home, self.id, peer_replicates) {
                let digest = merkle::digest(&key, &codec::serialize(&rec));
                out.insert(key, digest);
            }
        }
        out
    }

    fn summary_with(&self, peer: NodeId) -> Summary {
        let mut s = Summary::default();
        for (key, digest) in self.shared_digests(peer) {
            s.add(&key, digest);
        }
        s
    }

    fn digests_with(&self, peer: NodeId, leaves: &[u32]) -> Vec<(Key, u64)> {
        let mut d: Vec<(Key, u64)> = self.shared_digests(peer).into_iter().collect();
        d.retain(|(k, _)| leaves.contains(&merkle::leaf_of(k)));
        d
    }

    /// The anti-entropy timer: starts an exchange with the next peer in turn (every pair of
    /// the region meets within `peers` rounds), unless one is under way.
    pub(crate) fn anti_entropy_tick(&mut self, scope: Scope, peers: &[NodeId], ctx: &mut Ctx) {
        if ctx.bug == Some(Bug::NoRepair)
            || (scope == Scope::Remote && ctx.bug == Some(Bug::SkipRemoteDeltas))
        {
            return;
        }
        self.expire_exchange_calls(scope, ctx);
        let slot = scope as usize;
        if self.ae[slot].as_ref().is_some_and(|r| ctx.now.saturating_sub(r.started) < EXCHANGE_TIMEOUT_MS) {
            return;
        }
        let peer = peers[self.ae_round[slot] % peers.len()];
        self.ae_round[slot] += 1;
        // Like the server, an exchange in the region is started only with a peer that answers
        // probes; one with another region's node is tried (its calls time out if it is down).
        if scope == Scope::Region && !self.healthy(peer, ctx.now) {
            self.ae[slot] = None;
            return;
        }
        let (ex, cmds) = Exchange::start();
        let xid = self.next();
        self.ae[slot] = Some(AeRun {
            xid,
            peer,
            started: ctx.now,
            ex,
            fetches: BTreeMap::new(),
            pushes: BTreeMap::new(),
        });
        self.run_exchange(scope, cmds, ctx);
    }

    /// Fetches and pushes of the exchange under way with no answer within the request
    /// timeout fail (the server's calls have the same deadline): their keys are left for a
    /// later exchange, and the exchange goes on.
    fn expire_exchange_calls(&mut self, scope: Scope, ctx: &mut Ctx) {
        let Some(run) = self.ae[scope as usize].as_mut() else { return };
        let late = |sent: &u64| ctx.now.saturating_sub(*sent) >= REQUEST_TIMEOUT_MS;
        let fetches: Vec<u64> = run.fetches.iter().filter(|(_, (_, t))| late(t)).map(|(id, _)| *id).collect();
        let pushes: Vec<u64> = run.pushes.iter().filter(|(_, (_, t))| late(t)).map(|(id, _)| *id).collect();
        let mut cmds = Vec::new();
        for id in fetches {
            let Some((key, _)) = self.ae_run(scope).fetches.remove(&id) else { continue };
            cmds.extend(self.exchange(scope).on_fetched(key, Err(PeerError::TimedOut("no answer".into()))));
        }
        for id in pushes {
            let Some((key, _)) = self.ae_run(scope).pushes.remove(&id) else { continue };
            cmds.extend(self.exchange(scope).on_pushed(key, Err(PeerError::TimedOut("no answer".into()))));
        }
        self.run_exchange(scope, cmds, ctx);
    }

    /// Carries out an exchange's commands.
    fn run_exchange(&mut self, scope: Scope, cmds: Vec<AeCommand>, ctx: &mut Ctx) {
        let mut queue = VecDeque::from(cmds);
        while let Some(cmd) = queue.pop_front() {
            let Some(run) = &self.ae[scope as usize] else { return };
            let (xid, peer) = (run.xid, run.peer);
            let to = Addr::Node(peer);
            let more = match cmd {
                AeCommand::Summarize => {
                    let s = self.summary_with(peer);
                    self.exchange(scope).on_local_summary(s)
                }
                AeCommand::AskSummary => {
                    ctx.send(to, Msg::AeSummary { xid });
                    Vec::new()
                }
                AeCommand::Digests { leaves } => {
                    ctx.send(to, Msg::AeDigests { xid, leaves });
                    Vec::new()
                }
                AeCommand::Fetch { key } => {
                    let id = self.next();
                    let now = ctx.now;
                    self.ae_run(scope).fetches.insert(id, (key.clone(), now));
                    ctx.send(to, Msg::Fetch { id, key, writer: None, vote: false });
                    Vec::new()
                }
                AeCommand::MergeAndPush { key, theirs } => {
                    self.merge_and_push(scope, key, theirs.map(|b| *b), ctx)
                }
                AeCommand::Done(result) => {
                    self.ae[scope as usize] = None;
                    self.exchanged(peer, &result);
                    Vec::new()
                }
            };
            queue.extend(more);
        }
    }

    fn ae_run(&mut self, scope: Scope) -> &mut AeRun {
        self.ae[scope as usize].as_mut().expect("an exchange is under way")
    }

    fn exchange(&mut self, scope: Scope) -> &mut Exchange {
        &mut self.ae_run(scope).ex
    }

    fn merge_and_push(
        &mut self,
        scope: Scope,
        key: Key,
        theirs: Option<Record>,
        ctx: &mut Ctx,
    ) -> Vec<AeCommand> {
        if let Some(rec) = theirs {
            // The store refuses a state stamped beyond the drift bound (as RocksDB's does).
            if self.ahead(rec.version().time, ctx.now) {
                let refused = Failure::refused(Kind::FailedPrecondition, "stamped beyond the drift bound");
                return self.exchange(scope).on_pushed(key, Err(PeerError::Answered(refused)));
            }
            if let Err(refused) = self.merge_local(&key, &rec, false) {
                return self.exchange(scope).on_pushed(key, Err(PeerError::Answered(refused)));
            }
        }
        match self.state(&key) {
            Some(rec) => {
                let id = self.next();
                let run = self.ae_run(scope);
                run.pushes.insert(id, (key.clone(), ctx.now));
                let peer = run.peer;
                ctx.send(Addr::Node(peer), Msg::Merge { id, key, rec, hint_for: None, ship: false });
                Vec::new()
            }
            None => self.exchange(scope).on_pushed(key, Ok(())),
        }
    }

    /// A peer's answer in an exchange this node runs; false if the message is not one.
    pub(crate) fn on_exchange_msg(&mut self, msg: &Msg, ctx: &mut Ctx) -> bool {
        [Scope::Region, Scope::Remote].into_iter().any(|scope| self.on_exchange_answer(scope, msg, ctx))
    }

    fn on_exchange_answer(&mut self, scope: Scope, msg: &Msg, ctx: &mut Ctx) -> bool {
        let Some(run) = &self.ae[scope as usize] else { return false };
        let (xid, peer) = (run.xid, run.peer);
        let cmds = match msg {
            Msg::AeSummaryIs { xid: x, leaves } if *x == xid => {
                self.exchange(scope).on_peer_summary(Ok(Summary { leaves: leaves.clone() }))
            }
            Msg::AeDigestsAre { xid: x, leaves, digests } if *x == xid => {
                let mine: BTreeMap<Key, u64> = self.digests_with(peer, leaves).into_iter().collect();
                self.exchange(scope).on_digests(Ok((mine, digests.iter().cloned().collect())))
            }
            Msg::Fetched { id, result } => {
                let Some((key, _)) = self.ae_run(scope).fetches.remove(id) else { return false };
                self.exchange(scope).on_fetched(key, result.clone().map_err(PeerError::Answered))
            }
            Msg::MergeAck { id, result } => {
                let Some((key, _)) = self.ae_run(scope).pushes.remove(id) else { return false };
                self.exchange(scope).on_pushed(key, result.clone().map_err(PeerError::Answered))
            }
            _ => return false,
        };
        self.run_exchange(scope, cmds, ctx);
        true
    }

    /// A peer's request in an exchange it runs with this node.
    pub(crate) fn on_exchange_request(&mut self, from: Addr, msg: Msg, ctx: &mut Ctx) {
        let Addr::Node(peer) = from else { return };
        match msg {
            Msg::AeSummary { xid } => {
                ctx.send(from, Msg::AeSummaryIs { xid, leaves: self.summary_with(peer).leaves });
            }
            Msg::AeDigests { xid, leaves } => {
                let digests = self.digests_with(peer, &leaves);
                ctx.send(from, Msg::AeDigestsAre { xid, leaves, digests });
            }
            _ => {}
        }
    }

    /// One handoff round: the hints kept for each node, by the protocol's plan.
    pub(crate) fn hand_off(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let targets = self.store.hint_targets().expect("the in-memory store does not fail");
        for target in targets {
            match hint_plan(self.id, target, false, self.healthy(target, now)) {
                HintPlan::Drop => {
                    let _ = self.store.drop_hints_for(target);
                }
                HintPlan::MergeHere => {
                    for (key, rec) in self.store.hints_for(target, None, usize::MAX).unwrap_or_default() {
                        if self.merge_local(&key, &rec, false).is_ok() {
                            let _ = self.store.remove_hint(target, &key, &rec);
                        }
                    }
                }
                HintPlan::Wait => {}
                HintPlan::Deliver => {
                    for (key, rec) in self.store.hints_for(target, None, usize::MAX).unwrap_or_default() {
                        if self.handoffs.values().any(|(h, k, _, _)| *h == target && *k == key) {
                            continue;
                        }
                        let mid = self.next();
                        self.handoffs.insert(mid, (target, key.clone(), rec.clone(), now));
                        let msg = Msg::Merge { id: mid, key, rec, hint_for: None, ship: false };
                        ctx.send(Addr::Node(target), msg);
                    }
                }
            }
        }
        // Deliveries whose acknowledgement never came are retried on a later round.
        self.handoffs.retain(|_, (_, _, _, sent)| now.saturating_sub(*sent) < REQUEST_TIMEOUT_MS);
    }

    /// The answer to a hint delivery; false if `id` is not one.
    pub(crate) fn on_handoff_ack(&mut self, id: u64, result: &Result<(), Failure>) -> bool {
        let Some((home, key, rec, _)) = self.handoffs.remove(&id) else { return false };
        let result = result.clone().map_err(PeerError::Answered);
        match delivered(&result) {
            // Removed only if the hint still holds the state delivered.
            Delivered::Remove => {
                let _ = self.store.remove_hint(home, &key, &rec);
            }
            // Kept for a later round (the sim's deliveries of one round are already sent).
            Delivered::StopTarget | Delivered::KeepAndGoOn => {}
        }
        true
    }
}
