//! Judges a [`History`](crate::history) and the replicas' final states, after every fault was
//! healed and the cluster went quiet:
//!
//! - **convergence**: every replica of a key, in every region, holds the same value and version;
//! - **registers**: the final value is one some client wrote (no value from nowhere), at a
//!   version no older than any acknowledged write (no acknowledged write lost to an older one);
//! - **counters**: the final value lies within [sum of acknowledged increments, that plus the
//!   increments whose outcome is unknown];
//! - **sets**: every acknowledged add is there, and nothing that was never added;
//! - **read-after-write**: a QUORUM read that starts after a QUORUM write to the same key was
//!   acknowledged in the same region returns that write's version or a newer one (and, for a
//!   register at that very version, its value; for a set, its member);
//! - **staleness** (a figure, not a rule): for each acknowledged write and each other region,
//!   the time from the acknowledgement until a read there first returned it or something newer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use geokv_core::Stamp;

use crate::history::{Action, Event, Observed, Outcome};

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
        check_convergence(key, states, regions, &mut report.violations);
        if let Some(first) = states.first() {
            check_final(key, evs, first, &mut report.violations);
        }
        check_read_after_write(key, evs, &mut report);
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
            if (&s.observed, s.version) != (&first.observed, first.version) {
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

fn check_final(key: &[u8], evs: &[&Event], fin: &ReplicaState, out: &mut Vec<String>) {
    let writes: Vec<&&Event> = evs.iter().filter(|e| e.action.is_write()).collect();
    let acked: Vec<&&Event> = writes.iter().copied().filter(|e| e.is_ok()).collect();
    let newest_acked = acked.iter().filter_map(|e| e.ok_version()).max();
    if let (Some(newest), Some(v)) = (newest_acked, fin.version) {
        if v < newest {
            out.push(format!(
                "key {}: final version {v:?} is older than acknowledged write version {newest:?}",
                show(key)
            ));
        }
    }
    if newest_acked.is_some() && fin.version.is_none() {
        out.push(format!("key {}: acknowledged writes but no replica holds the key", show(key)));
    }
    let Some(first) = writes.first() else { return };
    match (&first.action, &fin.observed) {
        (Action::Put { .. }, Observed::Register(value)) => {
            let possible = writes
                .iter()
                .any(|e| e.may_have_applied() && e.action == Action::Put { value: value.clone() });
            if !possible {
                out.push(format!("key {}: final value {:?} was never written", show(key), show(value)));
            }
            if let Some(w) = acked.iter().find(|e| e.ok_version() == fin.version) {
                if w.action != (Action::Put { value: value.clone() }) {
                    out.push(format!(
                        "key {}: final version {:?} belongs to {:?}, holds {:?}",
                        show(key),
                        fin.version,
                        w.action,
                        show(value)
                    ));
                }
            }
        }
        (Action::Increment { .. }, observed) => {
            let value = match observed {
                Observed::Counter(c) => i128::from(*c),
                Observed::Absent => 0,
                other => {
                    out.push(format!("key {}: a counter ends as {other:?}", show(key)));
                    return;
                }
            };
            let (mut lo, mut hi) = (0i128, 0i128);
            for e in &writes {
                let Action::Increment { delta } = e.action else { continue };
                let d = i128::from(delta);
                match e.outcome {
                    Outcome::Ok { .. } => {
                        lo += d;
                        hi += d;
                    }
                    Outcome::Unknown(_) => {
                        lo += d.min(0);
                        hi += d.max(0);
                    }
                    Outcome::Failed(_) => {}
                }
            }
            if value < lo || value > hi {
                out.push(format!(
                    "key {}: counter ends at {value}, outside [{lo}, {hi}] (acknowledged .. attempted)",
                    show(key)
                ));
            }
        }
        (Action::SetAdd { .. }, observed) => {
            let members = match observed {
                Observed::Set(m) => m.clone(),
                Observed::Absent => BTreeSet::new(),
                other => {
                    out.push(format!("key {}: a set ends as {other:?}", show(key)));
                    return;
                }
            };
            for e in &writes {
                if let (Action::SetAdd { member }, true) = (&e.action, e.is_ok()) {
                    if !members.contains(member) {
                        out.push(format!("key {}: acknowledged add of {} is lost", show(key), show(member)));
                    }
                }
            }
            for m in &members {
                let added = writes
                    .iter()
                    .any(|e| e.may_have_applied() && e.action == Action::SetAdd { member: m.clone() });
                if !added {
                    out.push(format!("key {}: member {} was never added", show(key), show(m)));
                }
            }
        }
        (action, observed) => {
            if *observed != Observed::Absent {
                out.push(format!("key {}: written by {action:?}, ends as {observed:?}", show(key)));
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

fn check_read_after_write(key: &[u8], evs: &[&Event], report: &mut Report) {
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
    for r in evs.iter().filter(|e| e.quorum && e.action == Action::Read) {
        let Outcome::Ok { version, observed } = &r.outcome else { continue };
        let Some(a) = acked.get(r.region.as_str()) else { continue };
        // Writes acknowledged strictly before the read started.
        let n = a.completed.partition_point(|&c| c < r.invoked_ms);
        if n == 0 {
            continue;
        }
        report.raw_checked += 1;
        let needed = a.max_version[n - 1];
        if version.is_none_or(|v| v < needed) {
            report.violations.push(format!(
                "key {}: QUORUM read in {} invoked at {} ms returned version {:?}, older than {:?} acknowledged there before it",
                show(key),
                r.region,
                r.invoked_ms,
                version,
                needed
            ));
            continue;
        }
        for w in &a.events[..n] {
            match (&w.action, observed) {
                (Action::Put { value }, Some(Observed::Register(seen)))
                    if *version == w.ok_version() && seen != value =>
                {
                    report.violations.push(format!(
                        "key {}: read at the version of the write of {} returned {}",
                        show(key),
                        show(value),
                        show(seen)
                    ));
                }
                (Action::SetAdd { member }, Some(Observed::Set(seen))) if !seen.contains(member) => {
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

fn measure_staleness(evs: &[&Event], report: &mut Report) {
    let regions: BTreeSet<&str> = evs.iter().map(|e| e.region.as_str()).collect();
    for w in evs.iter().filter(|e| e.action.is_write()) {
        let Some(v) = w.ok_version() else { continue };
        for region in regions.iter().filter(|&&r| r != w.region) {
            let seen = evs
                .iter()
                .filter(|r| {
                    r.action == Action::Read && r.region == *region && r.completed_ms >= w.completed_ms
                })
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
mod tests {
    use super::*;

    fn ev(region: &str, action: Action, t: (u64, u64), outcome: Outcome) -> Event {
        Event {
            client: 0,
            region: region.into(),
            key: b"k".to_vec(),
            quorum: true,
            action,
            invoked_ms: t.0,
            completed_ms: t.1,
            outcome,
        }
    }

    fn ok(v: u64, observed: Option<Observed>) -> Outcome {
        Outcome::Ok { version: Some(Stamp::new(v, 1)), observed }
    }

    fn finals(states: &[(&str, Observed, u64)]) -> Finals {
        let states = states
            .iter()
            .enumerate()
            .map(|(i, (region, o, v))| ReplicaState {
                replica: format!("n{i}"),
                region: region.to_string(),
                observed: o.clone(),
                version: Some(Stamp::new(*v, 1)),
            })
            .collect();
        BTreeMap::from([(b"k".to_vec(), states)])
    }

    fn put(v: &str) -> Action {
        Action::Put { value: v.into() }
    }

    fn regions() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn a_clean_register_history_passes_and_measures_staleness() {
        let h = vec![
            ev("a", put("x"), (0, 10), ok(5, None)),
            ev("b", Action::Read, (12, 30), ok(5, Some(Observed::Register(b"x".to_vec())))),
            ev("a", Action::Read, (11, 14), ok(5, Some(Observed::Register(b"x".to_vec())))),
        ];
        let f = finals(&[
            ("a", Observed::Register(b"x".to_vec()), 5),
            ("b", Observed::Register(b"x".to_vec()), 5),
        ]);
        let r = check(&h, &f, &regions());
        assert!(r.passed(), "{r}");
        assert_eq!(r.raw_checked, 1);
        assert_eq!(r.staleness_ms, vec![20]);
    }

    #[test]
    fn divergent_replicas_and_lost_acknowledged_writes_are_reported() {
        let h = vec![ev("a", put("x"), (0, 10), ok(5, None)), ev("a", put("y"), (20, 30), ok(7, None))];
        let f = finals(&[
            ("a", Observed::Register(b"x".to_vec()), 5),
            ("b", Observed::Register(b"y".to_vec()), 7),
        ]);
        let r = check(&h, &f, &regions());
        assert!(r.violations.iter().any(|v| v.contains("diverge")), "{r}");
        assert!(r.violations.iter().any(|v| v.contains("older than acknowledged")), "{r}");
    }

    #[test]
    fn a_value_nobody_wrote_is_reported_but_an_unknown_write_may_win() {
        let h = vec![
            ev("a", put("x"), (0, 10), ok(5, None)),
            ev("a", put("y"), (0, 10), Outcome::Unknown("timeout".into())),
            ev("a", put("z"), (0, 10), Outcome::Failed("bad".into())),
        ];
        let good = finals(&[
            ("a", Observed::Register(b"y".to_vec()), 9),
            ("b", Observed::Register(b"y".to_vec()), 9),
        ]);
        assert!(check(&h, &good, &regions()).passed());
        let bad = finals(&[
            ("a", Observed::Register(b"z".to_vec()), 9),
            ("b", Observed::Register(b"z".to_vec()), 9),
        ]);
        assert!(check(&h, &bad, &regions()).violations.iter().any(|v| v.contains("never written")));
    }

    #[test]
    fn a_stale_quorum_read_after_an_acknowledged_write_is_reported() {
        let h = vec![
            ev("a", put("x"), (0, 10), ok(5, None)),
            ev("a", put("y"), (20, 30), ok(7, None)),
            ev("a", Action::Read, (31, 40), ok(5, Some(Observed::Register(b"x".to_vec())))),
            // Concurrent with the second write: may return either.
            ev("a", Action::Read, (25, 35), ok(5, Some(Observed::Register(b"x".to_vec())))),
            // Another region: not bound by read-after-write.
            ev("b", Action::Read, (31, 40), ok(5, Some(Observed::Register(b"x".to_vec())))),
        ];
        let f = finals(&[
            ("a", Observed::Register(b"y".to_vec()), 7),
            ("b", Observed::Register(b"y".to_vec()), 7),
        ]);
        let r = check(&h, &f, &regions());
        assert_eq!(r.raw_checked, 2);
        assert_eq!(r.violations.len(), 1, "{r}");
    }

    #[test]
    fn counters_must_end_between_acknowledged_and_attempted() {
        let inc = |d| Action::Increment { delta: d };
        let h = vec![
            ev("a", inc(5), (0, 1), ok(1, None)),
            ev("b", inc(3), (0, 1), Outcome::Unknown("t".into())),
            ev("b", inc(100), (0, 1), Outcome::Failed("f".into())),
        ];
        for (value, pass) in [(5, true), (8, true), (4, false), (9, false), (105, false)] {
            let f = finals(&[("a", Observed::Counter(value), 2), ("b", Observed::Counter(value), 2)]);
            assert_eq!(check(&h, &f, &regions()).passed(), pass, "value {value}");
        }
    }

    #[test]
    fn sets_keep_every_acknowledged_add_and_nothing_else() {
        let add = |m: &str| Action::SetAdd { member: m.into() };
        let set = |ms: &[&str]| Observed::Set(ms.iter().map(|m| m.as_bytes().to_vec()).collect());
        let h = vec![
            ev("a", add("p"), (0, 1), ok(1, None)),
            ev("b", add("q"), (0, 1), Outcome::Unknown("t".into())),
            ev("a", Action::Read, (2, 3), ok(1, Some(set(&[])))),
        ];
        let f = |ms: &[&str]| finals(&[("a", set(ms), 2), ("b", set(ms), 2)]);
        let r = check(&h, &f(&["p"]), &regions());
        // The read after the acknowledged add misses it.
        assert_eq!(r.violations.len(), 1, "{r}");
        let h = &h[..2];
        assert!(check(h, &f(&["p", "q"]), &regions()).passed());
        assert!(!check(h, &f(&["q"]), &regions()).passed());
        assert!(!check(h, &f(&["p", "r"]), &regions()).passed());
    }

    #[test]
    fn a_region_without_the_key_is_reported() {
        let h = vec![ev("a", put("x"), (0, 10), ok(5, None))];
        let f = finals(&[("a", Observed::Register(b"x".to_vec()), 5)]);
        assert!(check(&h, &f, &regions()).violations.iter().any(|v| v.contains("region b")));
    }
}
