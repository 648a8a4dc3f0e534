//! Judges a [`History`](crate::history) and the replicas' final states, after every fault was
//! healed and the cluster went quiet:
//!
//! - **convergence**: every replica of a key, in every region, holds the same value and version
//!   (or, for an absent key, nothing where another still holds its tombstone);
//! - **final states** by type of key (registers, expiring registers, logs, counters, sets):
//!   see [`finals`];
//! - **read-after-write**: a QUORUM read that starts after a QUORUM write to the same key was
//!   acknowledged in the same region returns that write's version or a newer one (and, for a
//!   register at that very version, its value; for a set, its member); a QUORUM scan answers
//!   each key its page covers the same way, and leaves a key out only if a delete, an expiry
//!   or a set removal not older than those writes may hide it;
//! - **staleness** (a figure, not a rule): for each acknowledged write and each other region,
//!   the time from the acknowledgement until a read there first returned it or something newer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use geokv_core::Stamp;

use crate::history::{Action, Event, Observed, Outcome};

mod finals;

use finals::check_final;

/// One key's state at one replica at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    pub replica: String,
    pub region: String,
    pub observed: Observed,
    /// The record's version (`None`: the replica holds nothing for the key).
    pub version: Option<Stamp>,
}

/// Final states of every key of the history at each of its replicas.
pub type Finals = BTreeMap<Vec<u8>, Vec<ReplicaState>>;

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    /// QUORUM reads checked against earlier acknowledged QUORUM writes of their region.
    pub raw_checked: usize,
    /// Milliseconds from a write's acknowledgement until another region read it, sorted.
    pub staleness_ms: Vec<u64>,
    /// (write, region) pairs no later read in that region observed.
    pub staleness_unobserved: usize,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The `q`-quantile (0..=1) of the staleness figures.
    pub fn staleness_quantile(&self, q: f64) -> Option<u64> {
        let n = self.staleness_ms.len();
        (n > 0).then(|| self.staleness_ms[((n - 1) as f64 * q).round() as usize])
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok, {} failed, {} unknown; {} read-after-write checks; staleness p50 {} ms, p99 {} ms over {} (write, region) pairs, {} unobserved; {} violations",
            self.ok,
            self.failed,
            self.unknown,
            self.raw_checked,
            self.staleness_quantile(0.5).map_or("-".into(), |v| v.to_string()),
            self.staleness_quantile(0.99).map_or("-".into(), |v| v.to_string()),
            self.staleness_ms.len(),
            self.staleness_unobserved,
            self.violations.len()
        )?;
        for v in self.violations.iter().take(20) {
            write!(f, "\n  - {v}")?;
        }
        if self.violations.len() > 20 {
            write!(f, "\n  ... and {} more", self.violations.len() - 20)?;
        }
        Ok(())
    }
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Checks a history against the final states; `regions` must all hold every key.
pub fn check(events: &[Event], finals: &Finals, regions: &[String]) -> Report {
    check_held(events, finals, |_| regions.to_vec(), |_| false, false)
}

/// Checks a history against the final states, where each key is held by the regions
/// `regions_of` gives (its residency rule's); `finals` has the states of those regions only.
/// Read-after-write is not checked for the keys `no_raw` picks (keys whose residency changed
/// during the run: a region newly allowed to hold one may answer before it was handed over).
/// `beyond_drift`: some node's clock ran past the drift bound during the run, so a write it
/// stamped may order after writes that came later (docs/value-model.md: stamps order writes
/// by time within the drift bound only).
pub fn check_held(
    events: &[Event],
    finals: &Finals,
    regions_of: impl Fn(&[u8]) -> Vec<String>,
    no_raw: impl Fn(&[u8]) -> bool,
    beyond_drift: bool,
) -> Report {
    let mut report = Report::default();
    for e in events {
        match e.outcome {
            Outcome::Ok { .. } => report.ok += 1,
            Outcome::Failed(_) => report.failed += 1,
            Outcome::Unknown(_) => report.unknown += 1,
        }
    }
    let mut by_key: BTreeMap<&[u8], Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_key.entry(&e.key).or_default().push(e);
    }
    for (key, evs) in &by_key {
        let states = finals.get(*key).map(Vec::as_slice).unwrap_or(&[]);
        check_convergence(key, states, &regions_of(key), &mut report.violations);
        // Each distinct state a replica holds (after a divergence, each is judged); a replica
        // that holds nothing is judged only if none holds anything (it may have purged a
        // tombstone another still holds).
        let mut judged: Vec<(&Observed, Option<Stamp>)> = Vec::new();
        let any_held = states.iter().any(|s| s.version.is_some());
        for s in states.iter().filter(|s| s.version.is_some() || !any_held) {
            if !judged.contains(&(&s.observed, s.version)) {
                judged.push((&s.observed, s.version));
                check_final(key, evs, s, &mut report.violations);
            }
        }
        if !no_raw(key) {
            check_read_after_write(key, evs, beyond_drift, &mut report);
        }
        measure_staleness(evs, &mut report);
    }
    report.staleness_ms.sort_unstable();
    report
}

fn check_convergence(key: &[u8], states: &[ReplicaState], regions: &[String], out: &mut Vec<String>) {
    for region in regions {
        if !states.iter().any(|s| &s.region == region) {
            out.push(format!("key {}: no replica state gathered in region {region}", show(key)));
        }
    }
    if let Some(first) = states.first() {
        for s in &states[1..] {
            // A replica that purged a tombstone (or expiry marker) holds nothing where another
            // still holds it: both read as absent.
            let purged = s.observed == Observed::Absent
                && first.observed == Observed::Absent
                && (s.version.is_none() || first.version.is_none());
            if (&s.observed, s.version) != (&first.observed, first.version) && !purged {
                out.push(format!(
                    "key {}: replicas diverge after heal: {} ({}) holds {:?} @ {:?}, {} ({}) holds {:?} @ {:?}",
                    show(key),
                    first.replica,
                    first.region,
                    first.observed,
                    first.version,
                    s.replica,
                    s.region,
                    s.observed,
                    s.version
                ));
            }
        }
    }
}

/// Acknowledged QUORUM writes of one key in one region, sorted by completion, with the running
/// maximum of their versions.
struct Acked<'a> {
    completed: Vec<u64>,
    max_version: Vec<Stamp>,
    events: Vec<&'a Event>,
}

fn check_read_after_write(key: &[u8], evs: &[&Event], beyond_drift: bool, report: &mut Report) {
    let mut acked: BTreeMap<&str, Acked> = BTreeMap::new();
    let mut writes: Vec<&Event> =
        evs.iter().copied().filter(|e| e.quorum && e.action.is_write() && e.ok_version().is_some()).collect();
    writes.sort_by_key(|e| e.completed_ms);
    for w in writes {
        let a = acked.entry(&w.region).or_insert_with(|| Acked {
            completed: vec![],
            max_version: vec![],
            events: vec![],
        });
        let v = w.ok_version().unwrap_or(Stamp::ZERO);
        let m = a.max_version.last().copied().unwrap_or(Stamp::ZERO).max(v);
        a.completed.push(w.completed_ms);
        a.max_version.push(m);
        a.events.push(w);
    }
    for r in evs.iter().filter(|e| e.quorum && e.action.is_read()) {
        let Outcome::Ok { version, observed } = &r.outcome else { continue };
        let Some(a) = acked.get(r.region.as_str()) else { continue };
        // Writes acknowledged strictly before the read started.
        let n = a.completed.partition_point(|&c| c < r.invoked_ms);
        if n == 0 {
            continue;
        }
        report.raw_checked += 1;
        let needed = a.max_version[n - 1];
        if r.action == Action::Scanned && version.is_none() {
            // A scan left the key out: only a delete, an expiry or a removal of a set's last
            // member at least as new as the writes acknowledged before it may hide it.
            if !hidden(evs, r, needed, beyond_drift) {
                report.violations.push(format!(
                    "key {}: QUORUM scan in {} invoked at {} ms left the key out, though {:?} was acknowledged there before it and no delete, expiry or removal may hide it",
                    show(key),
                    r.region,
                    r.invoked_ms,
                    needed
                ));
            }
            continue;
        }
        if version.is_none_or(|v| v < needed) {
            let what = if r.action == Action::Scanned { "scan" } else { "read" };
            report.violations.push(format!(
                "key {}: QUORUM {what} in {} invoked at {} ms returned version {:?}, older than {:?} acknowledged there before it",
                show(key),
                r.region,
                r.invoked_ms,
                version,
                needed
            ));
            continue;
        }
        for w in &a.events[..n] {
            let at_its_version = *version == w.ok_version();
            match (&w.action, observed) {
                (action, Some(Observed::Register(seen)))
                    if at_its_version && action.value().is_some_and(|v| v != seen.as_slice()) =>
                {
                    report.violations.push(format!(
                        "key {}: read at the version of the write of {} returned {}",
                        show(key),
                        show(action.value().unwrap_or_default()),
                        show(seen)
                    ));
                }
                (Action::Delete, Some(seen)) if at_its_version && *seen != Observed::Absent => {
                    report.violations.push(format!(
                        "key {}: read at the version of a delete returned {seen:?}",
                        show(key)
                    ));
                }
                // (A remove of the member may have come after the add.)
                (Action::SetAdd { member }, Some(Observed::Set(seen)))
                    if !seen.contains(member) && !removed_ever(evs, member) =>
                {
                    report.violations.push(format!(
                        "key {}: QUORUM read in {} misses {} acknowledged there before it",
                        show(key),
                        r.region,
                        show(member)
                    ));
                }
                _ => {}
            }
        }
    }
}

/// Whether a delete, a write with a TTL or a set removal (a set without members does not
/// exist) that may have applied, not older than `needed` and begun before scan answer `r`
/// completed, may explain why the scan left the key out.
/// Whether a delete, an expiry or a removal may hide a key written at `needed` from scan `r`.
/// Its version is the one its client was told, unless `beyond_drift`: a write forwarded to a
/// home replica whose answer was lost is retried on another (a delete may run twice), and the
/// first attempt, stamped by a clock past the drift bound, may order after later writes (seed
/// 4096), so any such write that may have applied may hide the key.
fn hidden(evs: &[&Event], r: &Event, needed: Stamp, beyond_drift: bool) -> bool {
    evs.iter().any(|e| {
        (matches!(e.action, Action::Delete | Action::SetRemove { .. }) || e.action.sets_deadline())
            && e.may_have_applied()
            && e.invoked_ms < r.completed_ms
            && (beyond_drift || e.ok_version().is_none_or(|v| v >= needed))
    })
}

/// Whether any remove of `member` may have applied.
fn removed_ever(evs: &[&Event], member: &[u8]) -> bool {
    evs.iter().any(|e| e.may_have_applied() && e.action == Action::SetRemove { member: member.to_vec() })
}

fn measure_staleness(evs: &[&Event], report: &mut Report) {
    let regions: BTreeSet<&str> = evs.iter().map(|e| e.region.as_str()).collect();
    for w in evs.iter().filter(|e| e.action.is_write()) {
        let Some(v) = w.ok_version() else { continue };
        for region in regions.iter().filter(|&&r| r != w.region) {
            let seen = evs
                .iter()
                .filter(|r| r.action.is_read() && r.region == *region && r.completed_ms >= w.completed_ms)
                .filter(|r| r.ok_version().is_some_and(|rv| rv >= v))
                .map(|r| r.completed_ms - w.completed_ms)
                .min();
            match seen {
                Some(ms) => report.staleness_ms.push(ms),
                None => report.staleness_unobserved += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests;
