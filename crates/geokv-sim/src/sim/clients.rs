//! The simulated clients: each picks a key and an operation, sends it to a random node of its
//! region, waits for the answer (or its own timeout), records the event and thinks a while.
//!
//! Keys by type: shared registers (Put, compare-and-swap on the version last read, Delete),
//! shared counters (Increment; at QUORUM, once the region has an acknowledged QUORUM increment,
//! now and then a write of the wrong type, which must be refused), shared sets (SetAdd),
//! shared keys written only with TTLs, and per region logs (Append) and sets with removes,
//! written at QUORUM.
//! Values, chunks and members are unique where a rule must tell writes apart.

use geokv_cluster::Level;
use geokv_core::{Expect, Op};
use geokv_protocol::Action as Write;
use rand::Rng;

use super::node::{Msg, Request};
use super::{Addr, Bug, Ev, Layout, Pending, World, CLIENT_TIMEOUT_MS};
use crate::history::{Action, Event, Outcome};

impl World {
    fn pick(&mut self, count: usize) -> usize {
        self.rng.gen_range(0..count.max(1))
    }

    /// The next operation of client `c`: its key, what it asks, and whether at QUORUM.
    fn next_op(&mut self, c: u32, id: u64) -> (Vec<u8>, Action, bool) {
        let region = self.clients[c as usize].region;
        // A write at ONE lives on one disk until it spreads: with a wipe in the schedule,
        // writes go at QUORUM (the level whose writes survive a wipe).
        let wipes = self.schedule.steps.iter().any(|s| matches!(s.fault, super::Fault::Wipe { .. }));
        let quorum = wipes || self.rng.gen_bool(0.85);
        let unique = format!("c{c}-{id}");
        if self.rng.gen_bool(0.45) {
            let kinds = [
                self.cfg.registers,
                self.cfg.counters,
                self.cfg.sets,
                self.cfg.expiring,
                self.cfg.logs,
                self.cfg.local_sets,
            ];
            let kind = self.pick(kinds.len());
            let key = self.key(kind, region);
            let quorum = self.rng.gen_bool(0.75);
            return (key, Action::Read, quorum);
        }
        let kind = self.pick(6);
        let key = self.key(kind, region);
        // The region's own logs and sets are written at QUORUM: their rules hold from there.
        let quorum = quorum || kind >= 4;
        let member = format!("m{}", self.rng.gen_range(0..16)).into_bytes();
        let action = match kind {
            0 => match self.pick(10) {
                0..=4 => Action::Put { value: unique.into_bytes() },
                5..=8 => {
                    let expect = self.clients[c as usize].last_read.get(&key).copied().flatten();
                    Action::Cas { value: unique.into_bytes(), expect }
                }
                _ => Action::Delete,
            },
            1 if quorum && self.rng.gen_bool(0.15) && self.counter_exists(&key, region) => {
                if self.rng.gen_bool(0.5) {
                    Action::Put { value: unique.into_bytes() }
                } else {
                    Action::SetAdd { member }
                }
            }
            1 => Action::Increment { delta: self.rng.gen_range(1..=5) },
            2 => Action::SetAdd { member },
            3 => Action::Expiring { value: unique.into_bytes(), ttl_ms: self.rng.gen_range(100..2_000) },
            4 => Action::Append { chunk: format!("{unique};").into_bytes() },
            _ if self.rng.gen_bool(0.6) => Action::SetAdd { member },
            _ => Action::SetRemove { member },
        };
        (key, action, quorum)
    }

    fn key(&mut self, kind: usize, region: usize) -> Vec<u8> {
        let name = match kind {
            0 => format!("reg-{}", self.pick(self.cfg.registers)),
            1 => format!("ctr-{}", self.pick(self.cfg.counters)),
            2 => format!("set-{}", self.pick(self.cfg.sets)),
            3 => format!("ttl-{}", self.pick(self.cfg.expiring)),
            4 => format!("log-r{region}-{}", self.pick(self.cfg.logs)),
            _ => format!("lset-r{region}-{}", self.pick(self.cfg.local_sets)),
        };
        name.into_bytes()
    }

    /// Whether this region saw an acknowledged QUORUM increment of `key` (from then on, the
    /// key is a counter for every QUORUM request of the region).
    fn counter_exists(&self, key: &[u8], region: usize) -> bool {
        let name = Layout::region_name(region);
        self.history.iter().any(|e| {
            e.key == key
                && e.quorum
                && e.region == name
                && matches!(e.action, Action::Increment { .. })
                && e.acked_write()
        })
    }

    /// The request a client sends for `action` (the request layer of a node).
    fn request(&self, action: &Action) -> Request {
        let ttl = |ms: u64| if self.cfg.bug == Some(Bug::TtlDropped) { None } else { Some(ms) };
        let op = match action.clone() {
            Action::Read => return Request::Read,
            Action::Put { value } => Op::Put { value, ttl_ms: None },
            Action::Expiring { value, ttl_ms } => Op::Put { value, ttl_ms: ttl(ttl_ms) },
            Action::Delete => Op::Delete,
            Action::Cas { value, expect } => {
                let expect = expect.map_or(Expect::Absent, Expect::Version);
                return Request::Write(Write::Cas { expect, value, ttl_ms: None });
            }
            Action::Append { chunk } => Op::Append { value: chunk, ttl_ms: None },
            Action::Increment { delta } => Op::Increment { delta, ttl_ms: None },
            Action::SetAdd { member } => Op::SetAdd { members: vec![member], ttl_ms: None },
            Action::SetRemove { member } => Op::SetRemove { members: vec![member] },
        };
        Request::Write(Write::Op(op))
    }

    pub(super) fn client_next(&mut self, c: u32) {
        if self.now >= self.cfg.fault_window_ms {
            return;
        }
        self.next_request += 1;
        let id = self.next_request;
        let (key, action, quorum) = self.next_op(c, id);
        let req = self.request(&action);
        let level = if quorum { Level::Quorum } else { Level::One };
        let region = self.clients[c as usize].region;
        let node = self.cfg.layout.node(region, self.rng.gen_range(0..self.cfg.layout.nodes_per_region));
        self.clients[c as usize].pending =
            Some(Pending { id, key: key.clone(), action, quorum, invoked: self.now });
        self.send(Addr::Client(c), Addr::Node(node), Msg::Req { id, key, req, level }, 0);
        self.at(self.now + CLIENT_TIMEOUT_MS, Ev::ClientTimeout(c, id));
    }

    pub(super) fn client_answer(&mut self, c: u32, msg: Msg) {
        let Msg::Resp { id, answer } = msg else { return };
        let Some(p) = self.clients[c as usize].pending.as_ref().filter(|p| p.id == id) else { return };
        let outcome = match answer {
            Ok((version, observed)) => {
                if p.action == Action::Read {
                    let seen =
                        observed.as_ref().filter(|o| **o != crate::history::Observed::Absent).and(version);
                    let key = p.key.clone();
                    self.clients[c as usize].last_read.insert(key, seen);
                }
                Outcome::Ok { version, observed }
            }
            // The coordinator promises nothing was stored.
            Err(e) if !e.maybe_applied => Outcome::Failed(e.message),
            Err(e) => Outcome::Unknown(e.message),
        };
        self.client_done(c, outcome);
    }

    pub(super) fn client_done(&mut self, c: u32, outcome: Outcome) {
        let client = &mut self.clients[c as usize];
        let Some(p) = client.pending.take() else { return };
        self.history.push(Event {
            client: c,
            region: Layout::region_name(client.region),
            key: p.key,
            quorum: p.quorum,
            action: p.action,
            invoked_ms: p.invoked,
            completed_ms: self.now,
            outcome,
        });
        let think = self.rng.gen_range(5..60);
        self.at(self.now + think, Ev::ClientNext(c));
    }
}
