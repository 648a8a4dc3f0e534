//! Unit tests of `op.rs`: each operation's semantics on one and several replicas.

use super::*;
use crate::{Crdt, View};

const NOW: u64 = 1_700_000_000_000;

struct Replica {
    node: u64,
    time: u64,
    rec: Option<Record>,
}

impl Replica {
    fn new(node: u64) -> Self {
        Replica { node, time: 0, rec: None }
    }
    /// An HLC stamp: `time` counts from the wall clock at `NOW`, as a real HLC would.
    fn stamp(&mut self) -> Stamp {
        let base = Stamp::ntp_from_millis(NOW);
        let v = self.rec.as_ref().map(|r| r.version().time.saturating_sub(base)).unwrap_or(0);
        self.time = self.time.max(v) + 1;
        Stamp::new(base + self.time, self.node)
    }
    fn run(&mut self, op: Op) -> Result<OpOutcome, CoreError> {
        let s = self.stamp();
        let a = apply(self.rec.as_ref(), &op, s, NOW, &Limits::default())?;
        self.rec = Some(a.record);
        Ok(a.outcome)
    }
    fn merge_from(&mut self, other: &Replica) {
        if let Some(o) = &other.rec {
            match &mut self.rec {
                Some(r) => r.merge(o),
                None => self.rec = Some(o.clone()),
            }
        }
    }
    fn view(&self) -> Option<View> {
        self.rec.as_ref().and_then(|r| r.view(NOW))
    }
}

fn put(v: &str) -> Op {
    Op::Put { value: v.as_bytes().to_vec(), ttl_ms: None }
}

#[test]
fn wrong_type_names_both_types() {
    let mut r = Replica::new(1);
    r.run(put("a")).unwrap();
    let err = r.run(Op::Increment { delta: 1, ttl_ms: None }).unwrap_err();
    assert_eq!(
        err,
        CoreError::WrongType { op: "Increment", expected: Kind::Counter, actual: Kind::Register }
    );
    assert!(err.to_string().contains("register") && err.to_string().contains("counter"));
}

#[test]
fn a_deleted_key_may_change_type() {
    let mut r = Replica::new(1);
    r.run(put("a")).unwrap();
    r.run(Op::Delete).unwrap();
    assert_eq!(r.run(Op::Increment { delta: 5, ttl_ms: None }).unwrap(), OpOutcome::Counter { value: 5 });
    assert_eq!(r.view(), Some(View::Counter(5)));
}

#[test]
fn delete_wins_over_older_concurrent_put_and_loses_to_newer() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.run(put("old")).unwrap(); // time 1
    b.time = 5;
    b.run(Op::Delete).unwrap(); // time 6
    let mut x = Replica::new(3);
    x.merge_from(&b);
    x.merge_from(&a);
    assert_eq!(x.view(), None);
    a.time = 10;
    a.run(put("new")).unwrap();
    x.merge_from(&a);
    assert_eq!(x.view(), Some(View::Register(b"new".to_vec())));
}

#[test]
fn counter_delete_keeps_increments_it_did_not_observe() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.run(Op::Increment { delta: 10, ttl_ms: None }).unwrap();
    b.merge_from(&a);
    b.time = 100;
    b.run(Op::Delete).unwrap();
    a.time = 200; // a's increment is concurrent with the delete and newer
    a.run(Op::Increment { delta: 3, ttl_ms: None }).unwrap();
    a.merge_from(&b);
    assert_eq!(a.view(), Some(View::Counter(3)));
}

/// Scenario 6 of the data-loss issue: an increment the deleter had not seen survives the
/// delete even when its stamp is older, and reads the same whichever replica answers.
#[test]
fn a_counter_delete_keeps_a_concurrent_older_increment_visible_everywhere() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.run(Op::Increment { delta: 10, ttl_ms: None }).unwrap();
    b.merge_from(&a);
    a.time = 50;
    a.run(Op::Increment { delta: 3, ttl_ms: None }).unwrap(); // b has not seen it
    b.time = 100;
    b.run(Op::Delete).unwrap(); // newer stamp than a's increment
    a.merge_from(&b);
    b.merge_from(&a);
    assert_eq!(a.view(), Some(View::Counter(3)), "the unobserved increment survives");
    assert_eq!(b.view(), a.view());
    // The next write builds on the survivor whichever replica coordinates it.
    let (mut a2, mut b2) = (Replica { node: 1, time: a.time, rec: a.rec.clone() }, b);
    a2.run(Op::Increment { delta: 1, ttl_ms: None }).unwrap();
    b2.run(Op::Increment { delta: 1, ttl_ms: None }).unwrap();
    assert_eq!((a2.view(), b2.view()), (Some(View::Counter(4)), Some(View::Counter(4))));
}

/// Scenario 5: a replica that purged an expired counter starts a new lifetime; a replica
/// still holding the expired state must not bring the old count back into it.
#[test]
fn a_new_lifetime_after_a_purged_expiry_does_not_bring_the_old_counter_or_members_back() {
    let l = Limits::default();
    let at = |ms: u64, node: u64| Stamp::new(Stamp::ntp_from_millis(ms), node);
    let inc = |delta, ttl_ms| Op::Increment { delta, ttl_ms };
    let old = apply(None, &inc(100, Some(10)), at(NOW, 2), NOW, &l).unwrap().record;
    // Node 1's sweeper purged it, keeping the marker; then node 1 increments.
    let marker = old.expired_marker(NOW + 20).expect("expired");
    assert!(marker.is_marker() && old.expired_marker(NOW + 9).is_none());
    let fresh = apply(Some(&marker), &inc(1, None), at(NOW + 20, 1), NOW + 20, &l).unwrap().record;
    for (mut x, y) in [(fresh.clone(), old.clone()), (old.clone(), fresh.clone())] {
        x.merge(&y);
        assert_eq!(x.view(NOW + 30), Some(View::Counter(1)));
    }
    // A replica that still holds the expired state starts its own new lifetime: the same.
    let mut other = apply(Some(&old), &inc(5, None), at(NOW + 25, 2), NOW + 25, &l).unwrap().record;
    other.merge(&fresh);
    assert_eq!(other.view(NOW + 30), Some(View::Counter(6)));
    let m = |s: &str| s.as_bytes().to_vec();
    let add = |x: &str, ttl_ms| Op::SetAdd { members: vec![m(x)], ttl_ms };
    let set = apply(None, &add("old", Some(10)), at(NOW, 2), NOW, &l).unwrap().record;
    let marker = set.expired_marker(NOW + 20);
    let fresh = apply(marker.as_ref(), &add("new", None), at(NOW + 20, 1), NOW + 20, &l).unwrap().record;
    for (mut x, y) in [(fresh.clone(), set.clone()), (set.clone(), fresh.clone())] {
        x.merge(&y);
        assert_eq!(x.view(NOW + 30), Some(View::Set(vec![m("new")])));
    }
}

/// A delete of a key that had expired does not bring back an increment made before the
/// deadline that the deleter had not seen; one it had not seen on a live key keeps the
/// deadline its writer gave.
#[test]
fn a_delete_keeps_unobserved_increments_under_their_ttl_and_closes_expired_keys() {
    let l = Limits::default();
    let at = |ms: u64, node: u64| Stamp::new(Stamp::ntp_from_millis(ms), node);
    let inc = |delta, ttl_ms| Op::Increment { delta, ttl_ms };
    let base = apply(None, &inc(1, Some(100)), at(NOW, 1), NOW, &l).unwrap().record;
    let other = apply(Some(&base), &inc(7, None), at(NOW + 50, 2), NOW + 50, &l).unwrap().record;
    // Deleted after the deadline by a replica that had not seen the +7.
    let mut late = apply(Some(&base), &Op::Delete, at(NOW + 200, 1), NOW + 200, &l).unwrap().record;
    late.merge(&other);
    assert_eq!(late.view(NOW + 300), None, "the expired counter stays gone");
    // Deleted before the deadline: the +7 survives, and expires at its deadline.
    let mut early = apply(Some(&base), &Op::Delete, at(NOW + 60, 1), NOW + 60, &l).unwrap().record;
    early.merge(&other);
    assert_eq!(early.view(NOW + 70), Some(View::Counter(7)));
    assert_eq!(early.view(NOW + 100), None, "the survivor keeps its TTL");
}

/// Scenario 4: a node that lost its own set dots (its data was wiped) writes as a new
/// actor, so its next add does not remove what it added before from the other replicas.
#[test]
fn an_add_by_a_node_that_lost_its_dots_removes_nothing_it_added_before() {
    let l = Limits::default();
    let m = |s: &str| s.as_bytes().to_vec();
    let add = |members: Vec<Vec<u8>>| Op::SetAdd { members, ttl_ms: None };
    let before =
        apply_as(None, &add(vec![m("x")]), Stamp::new(10, 1), crate::actor_id(1, 5), NOW, &l).unwrap().record;
    // Node 1 is wiped and adds again under a new incarnation.
    let after = apply_as(None, &add(vec![m("y")]), Stamp::new(20, 1), crate::actor_id(1, 15), NOW, &l)
        .unwrap()
        .record;
    let mut other = before.clone();
    other.merge(&after);
    assert_eq!(other.view(NOW), Some(View::Set(vec![m("x"), m("y")])));
    // Under the same actor, the new context would cover the lost dot and drop it.
    let same =
        apply_as(None, &add(vec![m("y")]), Stamp::new(20, 1), crate::actor_id(1, 5), NOW, &l).unwrap().record;
    let mut lost = before;
    lost.merge(&same);
    assert_eq!(lost.view(NOW), Some(View::Set(vec![m("y")])), "why the actor must change");
}

/// An emptied set keeps its lifetime: an add concurrent with the removal of the last member
/// survives an add made after the removal.
#[test]
fn emptying_a_set_does_not_start_a_new_lifetime() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    let m = |s: &str| s.as_bytes().to_vec();
    a.run(Op::SetAdd { members: vec![m("x")], ttl_ms: None }).unwrap();
    b.merge_from(&a);
    b.time = 30;
    b.run(Op::SetAdd { members: vec![m("y")], ttl_ms: None }).unwrap();
    a.time = 10;
    a.run(Op::SetRemove { members: vec![m("x")] }).unwrap();
    a.time = 40;
    a.run(Op::SetAdd { members: vec![m("z")], ttl_ms: None }).unwrap();
    a.merge_from(&b);
    assert_eq!(a.view(), Some(View::Set(vec![m("y"), m("z")])));
}

#[test]
fn counter_overflow_is_refused_and_changes_nothing() {
    let mut r = Replica::new(1);
    r.run(Op::Increment { delta: i64::MAX, ttl_ms: None }).unwrap();
    let before = r.rec.clone();
    assert!(matches!(r.run(Op::Increment { delta: 1, ttl_ms: None }), Err(CoreError::Overflow { .. })));
    assert_eq!(r.rec, before);
    assert_eq!(
        r.run(Op::Increment { delta: i64::MIN, ttl_ms: None }).unwrap(),
        OpOutcome::Counter { value: -1 }
    );
}

#[test]
fn alternating_extreme_increments_never_wrap_a_total() {
    let mut r = Replica::new(1);
    for d in [i64::MAX, -i64::MAX, i64::MAX, -i64::MAX, 1, 1] {
        r.run(Op::Increment { delta: d, ttl_ms: None }).unwrap();
    }
    assert_eq!(r.view(), Some(View::Counter(2)));
}

#[test]
fn expired_keys_read_absent_and_restart_on_write() {
    let mut r = Replica::new(1);
    let s = r.stamp();
    let a = apply(None, &Op::Increment { delta: 7, ttl_ms: Some(10) }, s, NOW, &Limits::default()).unwrap();
    assert_eq!(a.record.view(NOW + 9), Some(View::Counter(7)));
    assert_eq!(a.record.ttl_remaining_ms(NOW + 4), Some(6));
    assert_eq!(a.record.view(NOW + 10), None);
    let s2 = Stamp::new(Stamp::ntp_from_millis(NOW + 10) + 1, 1);
    let b =
        apply(Some(&a.record), &Op::Increment { delta: 1, ttl_ms: None }, s2, NOW + 10, &Limits::default())
            .unwrap();
    assert_eq!(b.outcome, OpOutcome::Counter { value: 1 });
    assert_eq!(b.record.view(NOW + 1_000_000), Some(View::Counter(1)));
}

#[test]
fn put_without_ttl_clears_it_and_append_keeps_it() {
    let mut r = Replica::new(1);
    r.run(Op::Put { value: b"a".to_vec(), ttl_ms: Some(1000) }).unwrap();
    r.run(Op::Append { value: b"b".to_vec(), ttl_ms: None }).unwrap();
    assert_eq!(r.rec.as_ref().unwrap().ttl_remaining_ms(NOW), Some(1000));
    assert_eq!(r.view(), Some(View::Register(b"ab".to_vec())));
    r.run(put("c")).unwrap();
    assert_eq!(r.rec.as_ref().unwrap().ttl_remaining_ms(NOW), None);
}

#[test]
fn expire_sets_or_removes_a_ttl_on_any_type_and_leaves_absent_keys_absent() {
    let ttl = |r: &Replica| r.rec.as_ref().unwrap().ttl_remaining_ms(NOW);
    let mut a = Replica::new(1);
    assert_eq!(a.run(Op::Expire { ttl_ms: Some(500) }).unwrap(), OpOutcome::Expired { existed: false });
    assert_eq!(a.view(), None);
    a.run(Op::Increment { delta: 3, ttl_ms: None }).unwrap();
    assert_eq!(a.run(Op::Expire { ttl_ms: Some(500) }).unwrap(), OpOutcome::Expired { existed: true });
    assert_eq!((ttl(&a), a.view()), (Some(500), Some(View::Counter(3))));
    // A later write without a TTL keeps it (an increment); a persist takes it away.
    a.run(Op::Increment { delta: 1, ttl_ms: None }).unwrap();
    assert_eq!(ttl(&a), Some(500));
    assert_eq!(a.run(Op::Expire { ttl_ms: None }).unwrap(), OpOutcome::Expired { existed: true });
    assert_eq!((ttl(&a), a.view()), (None, Some(View::Counter(4))));
    // Concurrent changes of the TTL: the later stamp wins on both replicas.
    let mut b = Replica::new(2);
    b.merge_from(&a);
    a.run(Op::Expire { ttl_ms: Some(100) }).unwrap();
    b.run(Op::Expire { ttl_ms: Some(900) }).unwrap();
    a.merge_from(&b);
    b.merge_from(&a);
    assert_eq!((ttl(&a), ttl(&b)), (Some(900), Some(900)));
    // An expired key is absent: an Expire does not bring it back.
    let later = NOW + 1_000;
    let stamp = Stamp::new(Stamp::ntp_from_millis(later), 1);
    let gone = apply(a.rec.as_ref(), &Op::Expire { ttl_ms: None }, stamp, later, &Limits::default()).unwrap();
    assert_eq!(gone.outcome, OpOutcome::Expired { existed: false });
    assert_eq!(gone.record.view(later), None);
    assert!(Op::Expire { ttl_ms: Some(0) }.validate(&Limits::default()).is_err());
}

#[test]
fn append_past_the_value_limit_is_refused() {
    let limits = Limits { max_value_bytes: 4, ..Limits::default() };
    let a = apply(None, &Op::Append { value: b"abc".to_vec(), ttl_ms: None }, Stamp::new(1, 1), NOW, &limits)
        .unwrap();
    let err = apply(
        Some(&a.record),
        &Op::Append { value: b"de".to_vec(), ttl_ms: None },
        Stamp::new(2, 1),
        NOW,
        &limits,
    )
    .unwrap_err();
    assert!(matches!(err, CoreError::TooLarge { actual: 5, limit: 4, .. }), "{err}");
}

#[test]
fn stale_stamps_are_refused() {
    let a = apply(None, &put("x"), Stamp::new(5, 1), NOW, &Limits::default()).unwrap();
    assert!(matches!(
        apply(Some(&a.record), &put("y"), Stamp::new(5, 1), NOW, &Limits::default()),
        Err(CoreError::StaleStamp { .. })
    ));
}

#[test]
fn set_add_remove_report_changes() {
    let mut r = Replica::new(1);
    let m = |s: &str| s.as_bytes().to_vec();
    assert_eq!(
        r.run(Op::SetAdd { members: vec![m("a"), m("b"), m("a")], ttl_ms: None }).unwrap(),
        OpOutcome::SetChanged { changed: 2, size: 2 }
    );
    assert_eq!(
        r.run(Op::SetRemove { members: vec![m("a"), m("z")] }).unwrap(),
        OpOutcome::SetChanged { changed: 1, size: 1 }
    );
    assert_eq!(r.view(), Some(View::Set(vec![m("b")])));
}
