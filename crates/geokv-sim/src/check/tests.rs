//! The checker's rules on small hand-made histories.

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
    let f =
        finals(&[("a", Observed::Register(b"x".to_vec()), 5), ("b", Observed::Register(b"x".to_vec()), 5)]);
    let r = check(&h, &f, &regions());
    assert!(r.passed(), "{r}");
    assert_eq!(r.raw_checked, 1);
    assert_eq!(r.staleness_ms, vec![20]);
}

#[test]
fn divergent_replicas_and_lost_acknowledged_writes_are_reported() {
    let h = vec![ev("a", put("x"), (0, 10), ok(5, None)), ev("a", put("y"), (20, 30), ok(7, None))];
    let f =
        finals(&[("a", Observed::Register(b"x".to_vec()), 5), ("b", Observed::Register(b"y".to_vec()), 7)]);
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
    let good =
        finals(&[("a", Observed::Register(b"y".to_vec()), 9), ("b", Observed::Register(b"y".to_vec()), 9)]);
    assert!(check(&h, &good, &regions()).passed());
    let bad =
        finals(&[("a", Observed::Register(b"z".to_vec()), 9), ("b", Observed::Register(b"z".to_vec()), 9)]);
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
    let f =
        finals(&[("a", Observed::Register(b"y".to_vec()), 7), ("b", Observed::Register(b"y".to_vec()), 7)]);
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
fn the_attempts_of_an_increment_with_a_request_id_count_once() {
    let once = |d, id| Action::IncrementOnce { delta: d, id };
    let h = vec![
        // Request 1: unknown twice, then acknowledged: counts 5 exactly once.
        ev("a", once(5, 1), (0, 1), Outcome::Unknown("t".into())),
        ev("b", once(5, 1), (1, 2), Outcome::Unknown("t".into())),
        ev("a", once(5, 1), (2, 3), ok(1, None)),
        // Request 2: only unknown attempts: 0 or 3, once.
        ev("a", once(3, 2), (0, 1), Outcome::Unknown("t".into())),
        ev("b", once(3, 2), (1, 2), Outcome::Unknown("t".into())),
    ];
    for (value, pass) in [(5, true), (8, true), (10, false), (11, false), (4, false)] {
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

#[test]
fn a_scan_answers_each_key_as_a_read_and_leaves_out_only_hidden_keys() {
    let x = || Some(Observed::Register(b"x".to_vec()));
    let left_out = Outcome::Ok { version: None, observed: Some(Observed::Absent) };
    let f =
        finals(&[("a", Observed::Register(b"x".to_vec()), 5), ("b", Observed::Register(b"x".to_vec()), 5)]);
    // Returned at the acknowledged version: passes, and counts as a checked read.
    let h = vec![ev("a", put("x"), (0, 10), ok(5, None)), ev("a", Action::Scanned, (11, 20), ok(5, x()))];
    let r = check(&h, &f, &regions());
    assert!(r.passed() && r.raw_checked == 1, "{r}");
    // Returned older than acknowledged before it.
    let h = vec![ev("a", put("x"), (0, 10), ok(5, None)), ev("a", Action::Scanned, (11, 20), ok(4, x()))];
    let r = check(&h, &f, &regions());
    assert!(r.violations.iter().any(|v| v.contains("QUORUM scan in a")), "{r}");
    // Left out, with nothing to hide it.
    let h =
        vec![ev("a", put("x"), (0, 10), ok(5, None)), ev("a", Action::Scanned, (11, 20), left_out.clone())];
    let r = check(&h, &f, &regions());
    assert!(r.violations.iter().any(|v| v.contains("left the key out")), "{r}");
    // Left out after a delete that may have applied, begun before the scan ended.
    let gone = finals(&[("a", Observed::Absent, 6), ("b", Observed::Absent, 6)]);
    let h = vec![
        ev("a", put("x"), (0, 10), ok(5, None)),
        ev("b", Action::Delete, (15, 40), Outcome::Unknown("t".into())),
        ev("a", Action::Scanned, (11, 20), left_out.clone()),
    ];
    assert!(check(&h, &gone, &regions()).passed());
    // A delete older than the acknowledged put hides nothing.
    let h = vec![
        ev("b", Action::Delete, (0, 1), ok(2, None)),
        ev("a", put("x"), (0, 10), ok(5, None)),
        ev("a", Action::Scanned, (11, 20), left_out),
    ];
    assert!(check(&h, &f, &regions()).violations.iter().any(|v| v.contains("left the key out")));
}

#[test]
fn a_batch_appends_a_keys_items_in_order() {
    let append = |c: &str| Action::Append { chunk: c.into() };
    let log =
        |v: &str| finals(&[("a", Observed::Register(v.into()), 9), ("b", Observed::Register(v.into()), 9)]);
    let h = vec![
        ev("a", append("c0-7.0;"), (0, 10), ok(5, None)),
        ev("a", append("c0-7.1;"), (0, 10), ok(6, None)),
    ];
    assert!(check(&h, &log("c0-7.0;c0-7.1;"), &regions()).passed());
    let r = check(&h, &log("c0-7.1;c0-7.0;"), &regions());
    assert!(r.violations.iter().any(|v| v.contains("an earlier item of the same batch")), "{r}");
    // An earlier item whose outcome is unknown may have landed late.
    let h = vec![
        ev("a", append("c0-7.0;"), (0, 10), Outcome::Unknown("t".into())),
        ev("a", append("c0-7.1;"), (0, 10), ok(6, None)),
    ];
    assert!(check(&h, &log("c0-7.1;c0-7.0;"), &regions()).passed());
}

#[test]
fn an_expired_keys_marker_may_be_stamped_before_the_last_write() {
    // The marker carries the deadline (wall clock), the write an HLC stamp that ran ahead.
    let h = vec![ev("a", Action::Expiring { value: "x".into(), ttl_ms: 100 }, (0, 10), ok(9, None))];
    let f = finals(&[("a", Observed::Absent, 5), ("b", Observed::Absent, 5)]);
    assert!(check(&h, &f, &regions()).passed());
    // Not for a key written without a TTL.
    let h = vec![ev("a", put("x"), (0, 10), ok(9, None)), ev("a", Action::Delete, (20, 30), ok(10, None))];
    let r = check(&h, &f, &regions());
    assert!(r.violations.iter().any(|v| v.contains("older than acknowledged")), "{r}");
}

#[test]
fn a_deadline_moved_by_an_expire_still_ends_the_key() {
    let h = vec![
        ev("a", Action::Expiring { value: "x".into(), ttl_ms: 100 }, (0, 10), ok(9, None)),
        ev("a", Action::Expire { ttl_ms: Some(500) }, (20, 30), ok(12, None)),
    ];
    let gone = finals(&[("a", Observed::Absent, 5), ("b", Observed::Absent, 5)]);
    assert!(check(&h, &gone, &regions()).passed());
    let x = || Observed::Register(b"x".to_vec());
    let kept = finals(&[("a", x(), 12), ("b", x(), 12)]);
    let r = check(&h, &kept, &regions());
    assert!(r.violations.iter().any(|v| v.contains("after every deadline")), "{r}");
}
