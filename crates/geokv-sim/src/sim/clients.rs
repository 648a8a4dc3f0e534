//! The simulated clients: each picks a key and an operation, sends it to a random node of its
//! region, waits for the answer (or its own timeout), records the event and thinks a while.
//!
//! Keys by type: shared registers (Put, compare-and-swap on the version last read, Delete),
//! shared counters (Increment; from odd-numbered clients with a request id, sent again to
//! another node while an attempt's outcome is unknown, as `geokv_client::Failover` does; at
//! QUORUM, once the region has an acknowledged QUORUM increment, now and then a write of the
//! wrong type, which must be refused), shared sets (SetAdd),
//! shared keys written only with TTLs, and per region logs (Append; under
//! `SimConfig::append_ids`, from odd-numbered clients with a request id, sent again like an
//! increment's) and sets with removes, written at QUORUM. Now and then a client scans one kind of key (one page, of a random
//! size); each key the page covers is recorded as that key's read.
//! Values, chunks and members are unique where a rule must tell writes apart.

use geokv_cluster::Level;
use geokv_core::{Expect, Op};
use geokv_protocol::Action as Write;
use rand::Rng;

use super::node::{Msg, Request};
use super::{Addr, Asked, Bug, Ev, Layout, Pending, World, CLIENT_TIMEOUT_MS};
use crate::history::{Action, Event, Outcome};

/// Kinds of keys: registers, counters, sets, keys written with TTLs, and the region's own logs
/// and sets.
const KINDS: usize = 6;

/// A request's id: its unique name, hashed (FNV-1a), an id no other request has.
fn request_id(unique: &str) -> u128 {
    unique.bytes().fold(0x6c62_272e_07bb_0142_62b8_2175_6295_c58d_u128, |h, b| {
        (h ^ u128::from(b)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b)
    })
}

/// The start of every key of `kind` (logs and local sets: of `region`'s).
fn prefix(kind: usize, region: usize) -> String {
    match kind {
        0 => "reg-".into(),
        1 => "ctr-".into(),
        2 => "set-".into(),
        3 => "ttl-".into(),
        4 => format!("log-r{region}-"),
        _ => format!("lset-r{region}-"),
    }
}

impl World {
    fn pick(&mut self, count: usize) -> usize {
        self.rng.gen_range(0..count.max(1))
    }

    /// The next operation of client `c`: its key (a scan's prefix; unused for a batch), what
    /// it asks, and whether at QUORUM.
    fn next_op(&mut self, c: u32, id: u64) -> (Vec<u8>, Asked, bool) {
        let region = self.clients[c as usize].region;
        // A write at ONE lives on one disk until it spreads: with a wipe in the schedule,
        // writes go at QUORUM (the level whose writes survive a wipe).
        let wipes = self.schedule.steps.iter().any(|s| matches!(s.fault, super::Fault::Wipe { .. }));
        let quorum = wipes || self.rng.gen_bool(0.85);
        let unique = format!("c{c}-{id}");
        if self.rng.gen_bool(0.45) {
            let kind = self.pick(KINDS);
            let quorum = self.rng.gen_bool(0.75);
            match self.pick(20) {
                0 | 1 => {
                    let limit = 1 + self.pick(self.count(kind) + 1);
                    (prefix(kind, region).into_bytes(), Asked::Scan { limit }, quorum)
                }
                2 => {
                    let keys = (0..self.rng.gen_range(2..=4))
                        .map(|_| {
                            let kind = self.pick(KINDS);
                            self.key(kind, region)
                        })
                        .collect();
                    (Vec::new(), Asked::BatchGet(keys), quorum)
                }
                _ => (self.key(kind, region), Asked::One(Action::Read), quorum),
            }
        } else if self.rng.gen_bool(0.1) {
            (Vec::new(), self.batch_write(c, &unique, region, quorum), true)
        } else if self.cfg.residency && self.rng.gen_bool(0.15) {
            // A key only some regions may hold (`sim::residency`): forwarded there, or refused,
            // depending on its rule; the moving keys' regions change during the run.
            let (prefix, counter) = match self.pick(10) {
                0..=3 => (super::residency::PINNED, false),
                4 | 5 => (super::residency::REGION_1_ONLY, false),
                6..=8 => (super::residency::MOVING, false),
                _ => (super::residency::MOVING, true),
            };
            let key = if counter {
                format!("{prefix}ctr-{}", self.pick(2)).into_bytes()
            } else {
                format!("{prefix}{}", self.pick(2)).into_bytes()
            };
            let action = match (self.pick(3), counter) {
                (0, _) => Action::Read,
                (_, true) => Action::Increment { delta: self.rng.gen_range(1..=5) },
                (1, false) => Action::Delete,
                _ => Action::Put { value: unique.into_bytes() },
            };
            (key, Asked::One(action), quorum)
        } else {
            let (key, action, quorum) = self.next_write(c, unique, region, quorum);
            (key, Asked::One(action), quorum)
        }
    }

    /// A batch of 2 to 4 writes, at QUORUM: half the time appends to one or two of the
    /// region's logs (so a key's items follow each other), otherwise writes of any kind
    /// (compare-and-swap is not a batch operation).
    fn batch_write(&mut self, c: u32, unique: &str, region: usize, quorum: bool) -> Asked {
        let n = self.rng.gen_range(2..=4);
        let logs = self.rng.gen_bool(0.5);
        let items = (0..n)
            .map(|i| {
                let unique = format!("{unique}.{i}");
                if logs {
                    let key = format!("{}{}", prefix(4, region), self.pick(self.cfg.logs.min(2)));
                    return (key.into_bytes(), Action::Append { chunk: format!("{unique};").into_bytes() });
                }
                match self.next_write(c, unique.clone(), region, quorum) {
                    (key, Action::Cas { .. }, _) => (key, Action::Put { value: unique.into_bytes() }),
                    (key, action, _) => (key, action),
                }
            })
            .collect();
        Asked::BatchWrite(items)
    }

    /// One write of client `c` with the unique value `unique`: its key, the write, and
    /// whether at QUORUM.
    fn next_write(&mut self, c: u32, unique: String, region: usize, quorum: bool) -> (Vec<u8>, Action, bool) {
        let kind = self.pick(KINDS);
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
            // A counter's TTL taken away (it has none): its count must not change.
            1 if self.cfg.ttl_changes && self.rng.gen_bool(0.05) => Action::Expire { ttl_ms: None },
            1 if c % 2 == 1 => {
                Action::IncrementOnce { delta: self.rng.gen_range(1..=5), id: request_id(&unique) }
            }
            1 => Action::Increment { delta: self.rng.gen_range(1..=5) },
            2 => Action::SetAdd { member },
            // A TTL key's deadline moved by an Expire: it still ends absent.
            3 if self.cfg.ttl_changes && self.rng.gen_bool(0.25) => {
                Action::Expire { ttl_ms: Some(self.rng.gen_range(100..2_000)) }
            }
            3 => Action::Expiring { value: unique.into_bytes(), ttl_ms: self.rng.gen_range(100..2_000) },
            4 if self.cfg.append_ids && c % 2 == 1 => {
                Action::AppendOnce { chunk: format!("{unique};").into_bytes(), id: request_id(&unique) }
            }
            4 => Action::Append { chunk: format!("{unique};").into_bytes() },
            _ if self.rng.gen_bool(0.6) => Action::SetAdd { member },
            _ => Action::SetRemove { member },
        };
        (key, action, quorum)
    }

    /// How many keys of `kind` there are.
    fn count(&self, kind: usize) -> usize {
        let c = &self.cfg;
        [c.registers, c.counters, c.sets, c.expiring, c.logs, c.local_sets][kind]
    }

    fn key(&mut self, kind: usize, region: usize) -> Vec<u8> {
        let i = self.pick(self.count(kind));
        format!("{}{i}", prefix(kind, region)).into_bytes()
    }

    /// Every key of the kind whose keys start with `prefix`, in byte order.
    fn keys_with(&self, prefix: &[u8], region: usize) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = (0..KINDS)
            .filter(|&kind| self::prefix(kind, region).as_bytes() == prefix)
            .flat_map(|kind| (0..self.count(kind)).map(move |i| format!("{}{i}", self::prefix(kind, region))))
            .map(String::into_bytes)
            .collect();
        keys.sort();
        keys
    }

    /// Whether this region saw an acknowledged QUORUM increment of `key` (from then on, the
    /// key is a counter for every QUORUM request of the region).
    fn counter_exists(&self, key: &[u8], region: usize) -> bool {
        let name = Layout::region_name(region);
        self.history.iter().any(|e| {
            e.key == key && e.quorum && e.region == name && e.action.is_increment() && e.acked_write()
        })
    }

    /// The request a client sends for `op` (the request layer of a node).
    fn request(&self, op: &Asked) -> Request {
        match op {
            Asked::Scan { limit } => Request::Scan { limit: *limit },
            Asked::One(action) => self.write(action).map_or(Request::Read, Request::Write),
            Asked::BatchGet(keys) => Request::BatchGet(keys.clone()),
            Asked::BatchWrite(items) => Request::BatchWrite(
                items.iter().filter_map(|(k, a)| self.write(a).map(|w| (k.clone(), w))).collect(),
            ),
        }
    }

    /// The write a client sends for `action` (`None`: a read).
    fn write(&self, action: &Action) -> Option<Write> {
        let ttl = |ms: u64| if self.cfg.bug == Some(Bug::TtlDropped) { None } else { Some(ms) };
        let op = match action.clone() {
            Action::Read | Action::Scanned => return None,
            Action::Put { value } => Op::Put { value, ttl_ms: None },
            Action::Expiring { value, ttl_ms } => Op::Put { value, ttl_ms: ttl(ttl_ms) },
            Action::Delete => Op::Delete,
            Action::Cas { value, expect } => {
                let expect = expect.map_or(Expect::Absent, Expect::Version);
                return Some(Write::Cas { expect, value, ttl_ms: None });
            }
            Action::Append { chunk } => Op::Append { value: chunk, ttl_ms: None },
            Action::AppendOnce { chunk, .. } if self.cfg.bug == Some(Bug::AppendIdDropped) => {
                Op::Append { value: chunk, ttl_ms: None }
            }
            Action::AppendOnce { chunk, id } => Op::AppendOnce { value: chunk, ttl_ms: None, id },
            Action::Increment { delta } => Op::Increment { delta, ttl_ms: None },
            Action::IncrementOnce { delta, id } => Op::IncrementOnce { delta, ttl_ms: None, id },
            Action::SetAdd { member } => Op::SetAdd { members: vec![member], ttl_ms: None },
            Action::SetRemove { member } => Op::SetRemove { members: vec![member] },
            Action::Expire { ttl_ms } => Op::Expire { ttl_ms: ttl_ms.and_then(ttl) },
        };
        Some(Write::Op(op))
    }

    pub(super) fn client_next(&mut self, c: u32) {
        if self.now >= self.cfg.fault_window_ms {
            return;
        }
        self.next_request += 1;
        let id = self.next_request;
        let (key, op, quorum) = self.next_op(c, id);
        self.send_op(c, id, key, op, quorum);
    }

    /// Sends `op` (request `id`) from client `c` to a random node of its region.
    fn send_op(&mut self, c: u32, id: u64, key: Vec<u8>, op: Asked, quorum: bool) {
        let req = self.request(&op);
        let level = if quorum { Level::Quorum } else { Level::One };
        let region = self.clients[c as usize].region;
        let node = self.cfg.layout.node(region, self.rng.gen_range(0..self.cfg.layout.nodes_per_region));
        self.clients[c as usize].pending =
            Some(Pending { id, key: key.clone(), op, quorum, invoked: self.now, attempt: 1 });
        // A batch write runs a key's items one after another: its client waits longer.
        let items = match &req {
            Request::BatchWrite(items) => items.len() as u64,
            _ => 1,
        };
        self.send(Addr::Client(c), Addr::Node(node), Msg::Req { id, key, req, level, client: None }, 0);
        self.at(self.now + items * CLIENT_TIMEOUT_MS, Ev::ClientTimeout(c, id));
    }

    pub(super) fn client_answer(&mut self, c: u32, msg: Msg) {
        let (id, answers) = match msg {
            Msg::ScanResp { id, answer } => return self.scan_answer(c, id, answer),
            Msg::Resp { id, answer } => (id, vec![answer]),
            Msg::BatchResp { id, answers } => (id, answers),
            _ => return,
        };
        let Some(p) = self.clients[c as usize].pending.as_ref().filter(|p| p.id == id) else { return };
        if let (Asked::One(Action::Read), Some(Ok((version, observed)))) = (&p.op, answers.first()) {
            let seen = observed.as_ref().filter(|o| **o != crate::history::Observed::Absent).and(*version);
            let key = p.key.clone();
            self.clients[c as usize].last_read.insert(key, seen);
        }
        let outcomes = answers
            .into_iter()
            .map(|answer| match answer {
                Ok((version, observed)) => Outcome::Ok { version, observed },
                // The coordinator promises nothing was stored.
                Err(e) if !e.maybe_applied => Outcome::Failed(e.message),
                Err(e) => Outcome::Unknown(e.message),
            })
            .collect();
        self.client_done(c, outcomes);
    }

    /// A scan's answer: each key its page covers (up to where the next page starts) is
    /// recorded as read, at the version the scan returned or as left out. A failed scan
    /// records nothing (it read nothing).
    fn scan_answer(&mut self, c: u32, id: u64, answer: super::scan::ScanReply) {
        let client = &mut self.clients[c as usize];
        let Some(p) = client.pending.take_if(|p| p.id == id) else { return };
        let region = client.region;
        if let Ok((items, next)) = answer {
            let mut found: std::collections::BTreeMap<Vec<u8>, _> =
                items.into_iter().map(|(k, v, o)| (k, (v, o))).collect();
            for key in self.keys_with(&p.key, region) {
                if next.as_ref().is_some_and(|n| &key > n) {
                    break;
                }
                let outcome = match found.remove(&key) {
                    Some((version, observed)) => {
                        Outcome::Ok { version: Some(version), observed: Some(observed) }
                    }
                    None => Outcome::Ok { version: None, observed: Some(crate::history::Observed::Absent) },
                };
                self.history.push(Event {
                    client: c,
                    region: Layout::region_name(region),
                    key,
                    quorum: p.quorum,
                    action: Action::Scanned,
                    invoked_ms: p.invoked,
                    completed_ms: self.now,
                    outcome,
                });
            }
        }
        let think = self.rng.gen_range(5..60);
        self.at(self.now + think, Ev::ClientNext(c));
    }

    /// Client `c`'s request ended: each of its items (a single operation is one) is recorded
    /// with its outcome (one outcome for all: a timeout). A scan that got no answer read
    /// nothing.
    pub(super) fn client_done(&mut self, c: u32, outcomes: Vec<Outcome>) {
        let client = &mut self.clients[c as usize];
        let Some(p) = client.pending.take() else { return };
        let items: Vec<(Vec<u8>, Action)> = match p.op {
            Asked::One(action) => vec![(p.key, action)],
            Asked::BatchWrite(items) => items,
            Asked::BatchGet(keys) => keys.into_iter().map(|k| (k, Action::Read)).collect(),
            Asked::Scan { .. } => Vec::new(),
        };
        let region = Layout::region_name(client.region);
        // An increment or append with a request id whose outcome is unknown goes again, to
        // another node (up to three attempts, while clients still run).
        let again = match (&items[..], outcomes.first()) {
            (
                [(key, a @ (Action::IncrementOnce { .. } | Action::AppendOnce { .. }))],
                Some(Outcome::Unknown(_)),
            ) if p.attempt < 3 && self.now < self.cfg.fault_window_ms => {
                Some((key.clone(), a.clone(), p.quorum, p.attempt + 1))
            }
            _ => None,
        };
        for (i, (key, action)) in items.into_iter().enumerate() {
            let Some(outcome) = outcomes.get(i).or(outcomes.first()).cloned() else { break };
            self.history.push(Event {
                client: c,
                region: region.clone(),
                key,
                quorum: p.quorum,
                action,
                invoked_ms: p.invoked,
                completed_ms: self.now,
                outcome,
            });
        }
        if let Some((key, action, quorum, attempt)) = again {
            self.next_request += 1;
            let id = self.next_request;
            self.send_op(c, id, key, Asked::One(action), quorum);
            if let Some(p) = self.clients[c as usize].pending.as_mut() {
                p.attempt = attempt;
            }
            return;
        }
        let think = self.rng.gen_range(5..60);
        self.at(self.now + think, Ev::ClientNext(c));
    }
}
