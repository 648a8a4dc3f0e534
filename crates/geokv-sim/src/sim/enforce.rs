//! Residency on a simulated node: the routing of a client request ([`Node::reside`]), and
//! policy changes, as the server carries them out
//! (`residency/apply.rs`, `residency/handover.rs`) with the decisions of
//! `geokv_protocol::residency::change`:
//!
//! - **Adopt**: an operator's apply offers a new version to the nodes it reaches; every
//!   [`SYNC_EVERY_MS`] a node asks the next node of the deployment for its version, and a
//!   receiver of a batch or a handover from a newer sender asks that sender. A newer version is
//!   adopted (the store's admission check follows it at once).
//! - **Enforce**: while the adopted version is not the one enforced, the node hands the states
//!   it holds of keys its region may no longer hold (its own copies and its hints) to every
//!   other region the policy lets hold them, each region's batch to one of its nodes, which
//!   merges them into its home replicas at QUORUM before it acknowledges. Keys every such region
//!   took, and whose state has not changed since, are erased (under a new actor from then on);
//!   the others stay and the next round tries again. Once none is left, the keys other regions
//!   may now hold are logged again for shipping, and the version is marked enforced.

use std::collections::{BTreeMap, BTreeSet};

use geokv_core::{NodeId, Record, Stamp};
use geokv_protocol::residency::change::{self, Adoption};
use geokv_storage::ReplicaStore;

use super::node::{Ctx, Key, Msg, Node, Request};
use super::residency::region_index;
use super::{Addr, Bug, Layout};
use geokv_protocol::residency::Residence;
use rand::Rng;

/// How often a node compares its policy version with the next node's (and checks whether its
/// policy still waits to be enforced).
pub const SYNC_EVERY_MS: u64 = 500;
/// How long a handover waits for the regions' acknowledgements before it settles for what it
/// has.
pub const HANDOVER_TIMEOUT_MS: u64 = 2_000;

/// An enforcement under way: the states handed over, and which regions each key still waits
/// for.
pub(crate) struct EnforceRun {
    /// The policy (version, text) being enforced.
    of: (u64, String),
    /// Each key's state as handed over, and the version of this node's own copy then.
    states: BTreeMap<Key, (Record, Option<Stamp>)>,
    needs: BTreeMap<Key, BTreeSet<usize>>,
    /// Handover messages under way: id -> (region, keys).
    waiting: BTreeMap<u64, (usize, Vec<Key>)>,
    started: u64,
}

/// A node's residency change state: what it enforced last (durable), the enforcement under
/// way, and the turns of its rotations (volatile).
#[derive(Default)]
pub(crate) struct Enforcement {
    /// The (version, text) last enforced on this node's data.
    pub(crate) enforced: (u64, String),
    pub(crate) run: Option<EnforceRun>,
    pub(crate) sync_turn: usize,
    pub(crate) handover_turn: usize,
    /// Keys erased, and enforcement rounds that kept keys back, over the run.
    pub(crate) erased: u64,
    pub(crate) kept_rounds: u64,
}

impl Node {
    /// Whether `region` may hold `key` under this node's policy.
    pub(crate) fn allows(&self, key: &[u8], region: usize) -> bool {
        self.held().policy.allows(key, &Layout::region_name(region))
    }

    pub(crate) fn held(&self) -> std::sync::RwLockReadGuard<'_, super::residency::Held> {
        self.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This node's policy version and text.
    pub fn policy_version(&self) -> (u64, String) {
        let h = self.held();
        (h.version, h.text.clone())
    }

    /// Offers this node a policy version; returns whether it adopted it.
    pub(crate) fn adopt(&mut self, version: u64, text: String) -> Result<bool, String> {
        let (mine, mine_text) = self.policy_version();
        match change::adoption((mine, &mine_text), (version, &text)) {
            Adoption::Ignore => Ok(false),
            Adoption::Keep(why) => Err(why),
            Adoption::Adopt => {
                let held = self.residency.held(version, text)?;
                *self.policy.write().unwrap_or_else(std::sync::PoisonError::into_inner) = held;
                Ok(true)
            }
        }
    }

    /// Whether the policy this node holds has not been enforced on its data yet.
    pub(crate) fn enforce_pending(&self) -> bool {
        let h = self.held();
        self.enforcement.enforced.0 != h.version || self.enforcement.enforced.1 != h.text
    }

    /// Every [`SYNC_EVERY_MS`]: asks the next node of the deployment for its policy, and
    /// starts or settles an enforcement.
    pub(crate) fn residency_tick(&mut self, ctx: &mut Ctx) {
        let others: Vec<NodeId> = ctx.layout.nodes().filter(|&n| n != self.id).collect();
        let e = &mut self.enforcement;
        e.sync_turn = e.sync_turn.wrapping_add(1);
        if !others.is_empty() {
            ctx.send(Addr::Node(others[e.sync_turn % others.len()]), Msg::PolicyAsk);
        }
        match &self.enforcement.run {
            Some(run) if ctx.now.saturating_sub(run.started) >= HANDOVER_TIMEOUT_MS => self.finish_enforce(),
            Some(_) => {}
            None if self.enforce_pending() => self.start_enforce(ctx),
            None => {}
        }
    }

    /// The states this node holds of the keys `doomed` picks: its own copy merged with the
    /// hints it keeps, and its own copy's version (as the server's `doomed_states`).
    fn doomed_states(&self, doomed: &dyn Fn(&[u8]) -> bool) -> BTreeMap<Key, (Record, Option<Stamp>)> {
        use geokv_core::Crdt;
        let mut states: BTreeMap<Key, (Record, Option<Stamp>)> = BTreeMap::new();
        for (key, rec) in self.store.states().into_iter().filter(|(k, _)| doomed(k)) {
            let v = rec.version();
            states.insert(key, (rec, Some(v)));
        }
        for target in self.store.hint_targets().expect("the in-memory store does not fail") {
            let hints =
                self.store.hints_for(target, None, usize::MAX).expect("the in-memory store does not fail");
            for (key, rec) in hints.into_iter().filter(|(k, _)| doomed(k)) {
                states.entry(key).and_modify(|(s, _)| s.merge(&rec)).or_insert((rec, None));
            }
        }
        states
    }

    fn start_enforce(&mut self, ctx: &mut Ctx) {
        let of = self.policy_version();
        let (version, region) = (of.0, Layout::region_name(self.region));
        let (states, handovers) = {
            let held = self.held();
            let states = self.doomed_states(&|k| change::doomed(&held.policy, &region, k));
            let handovers: BTreeMap<Key, BTreeSet<usize>> = states
                .keys()
                .map(|k| {
                    let regions = change::hand_over_regions(&held.policy, &region, k);
                    (k.clone(), regions.iter().map(|r| region_index(r)).collect())
                })
                .collect();
            (states, handovers)
        };
        let mut run =
            EnforceRun { of, states, needs: BTreeMap::new(), waiting: BTreeMap::new(), started: ctx.now };
        let mut by_region: BTreeMap<usize, Vec<Key>> = BTreeMap::new();
        for (key, regions) in handovers {
            // Planted bug: nothing is handed over; the keys are erased at once.
            if ctx.bug != Some(Bug::EraseWithoutHandover) {
                for &r in &regions {
                    by_region.entry(r).or_default().push(key.clone());
                }
                run.needs.insert(key, regions);
            } else {
                run.needs.insert(key, BTreeSet::new());
            }
        }
        self.enforcement.handover_turn = self.enforcement.handover_turn.wrapping_add(1);
        for (r, keys) in by_region {
            let id = self.next();
            let deltas = keys.iter().map(|k| (k.clone(), run.states[k].0.clone())).collect();
            let to = ctx.layout.node(r, self.enforcement.handover_turn % ctx.layout.nodes_per_region);
            ctx.send(Addr::Node(to), Msg::Handover { id, version, deltas });
            run.waiting.insert(id, (r, keys));
        }
        let settled = run.waiting.is_empty();
        self.enforcement.run = Some(run);
        if settled {
            self.finish_enforce();
        }
    }

    /// A region acknowledged (or refused) a handover.
    pub(crate) fn on_handover_ack(&mut self, id: u64, ok: bool) {
        let Some(run) = self.enforcement.run.as_mut() else { return };
        let Some((region, keys)) = run.waiting.remove(&id) else { return };
        if ok {
            for k in keys {
                if let Some(n) = run.needs.get_mut(&k) {
                    n.remove(&region);
                }
            }
        }
        if run.waiting.is_empty() {
            self.finish_enforce();
        }
    }

    /// Erases what every region took, then (when nothing is left) re-ships what other regions
    /// may now hold and marks the version enforced.
    fn finish_enforce(&mut self) {
        let Some(run) = self.enforcement.run.take() else { return };
        if run.of != self.policy_version() {
            // A newer version came meanwhile: the next round enforces that one.
            return;
        }
        let handed: BTreeMap<Key, Option<Stamp>> = run
            .needs
            .iter()
            .filter(|(_, left)| left.is_empty())
            .map(|(k, _)| (k.clone(), run.states[k].1))
            .collect();
        if !handed.is_empty() {
            // This node may hold less than it once wrote of these keys: a new actor from now on.
            self.incarnation += 1;
            let now: BTreeMap<Key, Option<Stamp>> =
                handed.keys().map(|k| (k.clone(), self.state(k).map(|r| r.version()))).collect();
            let report = self.store.erase_where(|k| {
                handed.get(k).is_some_and(|own| change::erasable(*own, now.get(k).copied().flatten()))
            });
            self.enforcement.erased += report.keys;
        }
        let region = Layout::region_name(self.region);
        let left = {
            let held = self.held();
            self.doomed_states(&|k| change::doomed(&held.policy, &region, k)).len()
        };
        if left > 0 {
            self.enforcement.kept_rounds += 1;
            return;
        }
        let previous =
            self.residency.held(self.enforcement.enforced.0, self.enforcement.enforced.1.clone()).ok();
        if let Some(prev) = previous {
            let held = self.held();
            let reship: Vec<Key> = self
                .store
                .states()
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| {
                    let first_home = self.home(k).first() == Some(&self.id);
                    change::reships(&prev.policy, &held.policy, &region, k, first_home)
                })
                .collect();
            drop(held);
            for k in reship {
                self.store.reship(&k);
            }
        }
        self.enforcement.enforced = self.policy_version();
    }

    /// A policy answer: adopted if newer.
    pub(crate) fn on_policy(&mut self, version: u64, text: String) {
        let _ = self.adopt(version, text);
    }

    /// A handover from a node of another region: refused while the sender's policy is newer
    /// (this node asks for it); otherwise each state goes through the receiver's path of a
    /// replication batch, and the acknowledgement says whether every one was applied.
    pub(crate) fn receive_handover(
        &mut self,
        from: Addr,
        id: u64,
        version: u64,
        deltas: Vec<(Key, Record)>,
        ctx: &mut Ctx,
    ) {
        if change::on_sender_version(version, self.held().version).is_err() {
            ctx.send(from, Msg::PolicyAsk);
            return ctx.send(from, Msg::HandoverAck { id, ok: false });
        }
        let Addr::Node(origin) = from else { return };
        self.take_deltas(origin, super::xregion::Reply::Handover(id), deltas, ctx);
    }

    /// The residency routing of a client's single-key request
    /// (`geokv_protocol::residency::residence`): the request back if it runs here; otherwise
    /// it is refused, or forwarded to a node of the nearest allowed region (which answers the
    /// client), and `None`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reside(
        &mut self,
        from: Addr,
        id: u64,
        key: Key,
        req: Request,
        level: geokv_cluster::Level,
        client: Option<Addr>,
        ctx: &mut Ctx,
    ) -> Option<Msg> {
        let to = client.unwrap_or(from);
        let residence = self.residency.residence(&self.held(), &key, self.region, client.is_some());
        match residence {
            Residence::Here => Some(Msg::Req { id, key, req, level, client }),
            Residence::Refused(refused) => {
                ctx.send(to, Msg::Resp { id, answer: Err(refused) });
                None
            }
            Residence::Forward { regions, .. } => {
                let region = super::residency::region_index(&regions[0]);
                let node = ctx.layout.node(region, ctx.rng.gen_range(0..ctx.layout.nodes_per_region));
                ctx.send(Addr::Node(node), Msg::Req { id, key, req, level, client: Some(to) });
                None
            }
        }
    }
}
