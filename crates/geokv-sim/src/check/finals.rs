//! Rules on a key's final state, by the type of the key (the family of its first write), each
//! the documented guarantee of its operations (docs/value-model.md):
//!
//! - every key: the final version is no older than any acknowledged write's; no replica holds
//!   the key only if a delete, an expiry or a set removal may have left a state the sweeper
//!   purged (each distinct state the replicas hold is judged);
//! - **registers** (Put, CAS, Delete): the final value is one some write may have set (a swap
//!   whose condition failed sets nothing); the write acknowledged at the final version set it;
//!   a key an acknowledged write set ends absent only if a delete may have applied;
//! - **expiring registers** (every write has a TTL): absent everywhere once every deadline
//!   passed;
//! - **logs** (Append): each chunk at most once (an append is never applied twice, however
//!   many attempts of one with a request id were), each one some append may have added; an
//!   acknowledged QUORUM append survives when no other append could race it (two appends that
//!   both read the same value keep only one of them; a retried append races what its first
//!   attempt raced);
//! - **counters**: the value lies within [acknowledged, acknowledged + unknown] increments; a
//!   write of another type at QUORUM after an acknowledged QUORUM increment in the same region
//!   is refused;
//! - **sets** (add-wins): nothing that was never added; an acknowledged add is there unless a
//!   remove of the member may have applied after the add began (one whose outcome is unknown
//!   may take effect at any time); a member is gone after an
//!   acknowledged QUORUM remove that came after every add of it, each acknowledged at QUORUM in
//!   the remove's region.

use std::collections::BTreeSet;

use super::{show, ReplicaState};
use crate::history::{Action, Event, Family, Observed, Outcome};

pub(super) fn check_final(key: &[u8], evs: &[&Event], fin: &ReplicaState, out: &mut Vec<String>) {
    let writes: Vec<&Event> = evs.iter().copied().filter(|e| e.action.is_write()).collect();
    let newest_acked = writes.iter().filter(|e| e.acked_write()).filter_map(|e| e.ok_version()).max();
    // An expired key's marker is stamped at its deadline, a wall-clock time: when the writer's
    // HLC ran ahead of its wall clock (a clock that jumped back), the deadline, and so the
    // marker, can be older than the write's stamp. Its content is right (absent).
    let expired_marker = fin.observed == Observed::Absent && writes.iter().all(|e| e.action.sets_deadline());
    if let (Some(newest), Some(v), false) = (newest_acked, fin.version, expired_marker) {
        if v < newest {
            out.push(format!(
                "key {}: final version {v:?} is older than acknowledged write version {newest:?}",
                show(key)
            ));
        }
    }
    // A tombstone, an expired key or an emptied set is purged after its grace period.
    let purged = writes.iter().any(|e| {
        e.may_have_applied()
            && (matches!(e.action, Action::Delete | Action::SetRemove { .. }) || e.action.sets_deadline())
    });
    if newest_acked.is_some() && fin.version.is_none() && !purged {
        out.push(format!("key {}: acknowledged writes but no replica holds the key", show(key)));
    }
    let rules = Rules { key, writes: &writes, observed: &fin.observed, out };
    match writes.iter().find_map(|e| e.action.family()) {
        Some(Family::Register) => rules.register(fin),
        Some(Family::Expiring) => rules.expiring(),
        Some(Family::Log) => rules.log(),
        Some(Family::Counter) => rules.counter(),
        Some(Family::Set) => rules.set(),
        None => {
            if fin.observed != Observed::Absent {
                rules.out.push(format!("key {}: only deleted, ends as {:?}", show(key), fin.observed));
            }
        }
    }
}

struct Rules<'a> {
    key: &'a [u8],
    writes: &'a [&'a Event],
    observed: &'a Observed,
    out: &'a mut Vec<String>,
}

impl Rules<'_> {
    fn violation(&mut self, what: String) {
        self.out.push(format!("key {}: {what}", show(self.key)));
    }

    fn register(mut self, fin: &ReplicaState) {
        match self.observed {
            Observed::Register(value) => {
                let possible =
                    self.writes.iter().any(|e| e.may_have_applied() && e.action.value() == Some(value));
                if !possible {
                    self.violation(format!("final value {:?} was never written", show(value)));
                }
                if let Some(w) = self.writes.iter().find(|e| e.acked_write() && e.ok_version() == fin.version)
                {
                    if w.action.value() != Some(value.as_slice()) {
                        let what = format!(
                            "final version {:?} belongs to {:?}, holds {:?}",
                            fin.version,
                            w.action,
                            show(value)
                        );
                        self.violation(what);
                    }
                }
            }
            Observed::Absent => {
                let deleted = self.writes.iter().any(|e| e.action == Action::Delete && e.may_have_applied());
                // (A write whose outcome is unknown may not have applied at all.)
                let set = self.writes.iter().any(|e| e.acked_write() && e.action.value().is_some());
                if set && !deleted {
                    self.violation("written, never deleted, and ends absent".into());
                }
            }
            other => {
                let other = other.clone();
                self.violation(format!("a register ends as {other:?}"));
            }
        }
    }

    fn expiring(mut self) {
        if *self.observed != Observed::Absent {
            let o = self.observed.clone();
            self.violation(format!("written only with TTLs, still holds {o:?} after every deadline"));
        }
    }

    fn log(mut self) {
        let value = match self.observed {
            Observed::Register(v) => v.clone(),
            Observed::Absent => Vec::new(),
            other => {
                let other = other.clone();
                return self.violation(format!("a log ends as {other:?}"));
            }
        };
        let chunks: Vec<Vec<u8>> =
            value.split(|&b| b == b';').filter(|c| !c.is_empty()).map(|c| [c, b";"].concat()).collect();
        let mut seen = BTreeSet::new();
        for c in &chunks {
            if !seen.insert(c) {
                self.violation(format!("chunk {} was applied twice", show(c)));
            }
            let appended =
                self.writes.iter().any(|e| e.may_have_applied() && e.action.chunk() == Some(&c[..]));
            if !appended {
                self.violation(format!("chunk {} was never appended", show(c)));
            }
        }
        self.batch_order(&chunks);
        let appends: Vec<&Event> =
            self.writes.iter().copied().filter(|e| e.action.chunk().is_some()).collect();
        for a in appends.iter().filter(|a| a.acked_write() && a.quorum) {
            let Some(chunk) = a.action.chunk() else { continue };
            // The request began with its first attempt (chunks are unique to a request).
            let began =
                appends.iter().filter(|b| b.action.chunk() == Some(chunk)).map(|b| b.invoked_ms).min();
            let began = began.unwrap_or(a.invoked_ms);
            // Another append that may have applied races `a` unless it was acknowledged at
            // QUORUM in `a`'s region before `a` began (then `a` read it) or began there at
            // QUORUM after `a` was acknowledged (then it read `a`). Attempts of one request do
            // not race each other.
            let ordered = |b: &&Event| {
                b.action.chunk() == Some(chunk)
                    || !b.may_have_applied()
                    || b.quorum
                        && b.region == a.region
                        && (b.acked_write() && b.completed_ms < began || b.invoked_ms > a.completed_ms)
            };
            if appends.iter().all(ordered) && !seen.contains(&chunk.to_vec()) {
                self.violation(format!(
                    "acknowledged append of {} is lost, and no append raced it",
                    show(chunk)
                ));
            }
        }
    }

    /// A batch runs a key's items in the client's order: of two chunks appended by one batch
    /// (`<request>.<item>;`), the earlier item, once acknowledged, comes first in the log.
    fn batch_order(&mut self, chunks: &[Vec<u8>]) {
        let item = |c: &[u8]| {
            let text = std::str::from_utf8(c.strip_suffix(b";")?).ok()?;
            let (batch, i) = text.rsplit_once('.')?;
            Some((batch.to_string(), i.parse::<usize>().ok()?))
        };
        for (p, c) in chunks.iter().enumerate() {
            let Some((batch, i)) = item(c) else { continue };
            let acked = self.writes.iter().any(|e| e.acked_write() && e.action.chunk() == Some(&c[..]));
            let later_first = chunks[..p].iter().find(|d| item(d).is_some_and(|(b, j)| b == batch && j > i));
            if let (true, Some(d)) = (acked, later_first) {
                self.violation(format!(
                    "chunk {} precedes chunk {}, an earlier item of the same batch that was acknowledged",
                    show(d),
                    show(c)
                ));
            }
        }
    }

    fn counter(mut self) {
        let value = match self.observed {
            Observed::Counter(c) => i128::from(*c),
            Observed::Absent => 0,
            other => {
                let other = other.clone();
                return self.violation(format!("a counter ends as {other:?}"));
            }
        };
        let (mut lo, mut hi) = (0i128, 0i128);
        // The attempts of each increment with a request id, which together count once.
        let mut once: std::collections::BTreeMap<u128, (i64, Vec<&Outcome>)> = Default::default();
        for e in self.writes {
            let delta = match e.action {
                Action::Increment { delta } => delta,
                Action::IncrementOnce { delta, id } => {
                    once.entry(id).or_insert((delta, Vec::new())).1.push(&e.outcome);
                    continue;
                }
                _ => continue,
            };
            let d = i128::from(delta);
            match e.outcome {
                Outcome::Ok { .. } => (lo, hi) = (lo + d, hi + d),
                Outcome::Unknown(_) => (lo, hi) = (lo + d.min(0), hi + d.max(0)),
                Outcome::Failed(_) => {}
            }
        }
        for (delta, attempts) in once.values() {
            let d = i128::from(*delta);
            if attempts.iter().any(|o| matches!(o, Outcome::Ok { .. })) {
                (lo, hi) = (lo + d, hi + d);
            } else if attempts.iter().any(|o| matches!(o, Outcome::Unknown(_))) {
                (lo, hi) = (lo + d.min(0), hi + d.max(0));
            }
        }
        if value < lo || value > hi {
            self.violation(format!(
                "counter ends at {value}, outside [{lo}, {hi}] (acknowledged .. attempted)"
            ));
        }
        let increments: Vec<&Event> =
            self.writes.iter().copied().filter(|e| e.action.is_increment()).collect();
        for w in self.writes.iter().filter(|e| e.action.family().is_some_and(|f| f != Family::Counter)) {
            let exists = increments.iter().any(|i| {
                i.acked_write() && i.quorum && i.region == w.region && i.completed_ms < w.invoked_ms
            });
            if w.quorum && w.is_ok() && exists {
                let what = format!("{:?} at QUORUM on a counter an acknowledged QUORUM increment in {} created was acknowledged", w.action, w.region);
                self.violation(what);
            }
        }
    }

    fn set(mut self) {
        let members = match self.observed {
            Observed::Set(m) => m.clone(),
            Observed::Absent => BTreeSet::new(),
            other => {
                let other = other.clone();
                return self.violation(format!("a set ends as {other:?}"));
            }
        };
        let writes = self.writes;
        let adds = |m: &[u8]| with_action(writes, &Action::SetAdd { member: m.to_vec() });
        let removes = |m: &[u8]| with_action(writes, &Action::SetRemove { member: m.to_vec() });
        let mut found = Vec::new();
        for a in self.writes.iter().filter(|e| e.acked_write()) {
            let Action::SetAdd { member } = &a.action else { continue };
            // A remove whose outcome is unknown may take effect any time after it began (its
            // coordinator may run it after the client gave up), so after the add too.
            let removable = removes(member)
                .into_iter()
                .any(|r| r.may_have_applied() && (r.completed_ms > a.invoked_ms || !r.is_ok()));
            if !removable && !members.contains(member) {
                found.push(format!("acknowledged add of {} is lost", show(member)));
            }
        }
        for m in &members {
            if !adds(m).into_iter().any(|e| e.may_have_applied()) {
                found.push(format!("member {} was never added", show(m)));
            }
            let removed = removes(m).into_iter().any(|r| {
                r.acked_write()
                    && r.quorum
                    && adds(m).into_iter().filter(|a| a.may_have_applied()).all(|a| {
                        a.acked_write() && a.quorum && a.region == r.region && a.completed_ms < r.invoked_ms
                    })
            });
            if removed {
                found.push(format!(
                    "member {} is present after an acknowledged QUORUM remove that followed every add of it",
                    show(m)
                ));
            }
        }
        for f in found {
            self.violation(f);
        }
    }
}

fn with_action<'a>(writes: &[&'a Event], action: &Action) -> Vec<&'a Event> {
    writes.iter().copied().filter(|e| e.action == *action).collect()
}
