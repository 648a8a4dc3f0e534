//! Idempotent increments through [`crate::apply_as`]: retries count once on any replica, in
//! any order of merges, across folding and forgetting, deletes and new lifetimes.

use proptest::prelude::*;

use crate::once::{FOLD_AFTER_MS, REMEMBER_MS};
use crate::{apply_as, CoreError, Crdt, Limits, Op, OpOutcome, Record, Stamp, View};

const NOW: u64 = 1_700_000_000_000;

/// One replica: its actor, its state and its HLC.
struct Replica {
    actor: u64,
    clock: u64,
    rec: Record,
}

impl Replica {
    fn new(actor: u64) -> Self {
        Replica { actor, clock: 0, rec: Record::default() }
    }

    fn run(&mut self, op: &Op, now_ms: u64) -> Result<OpOutcome, CoreError> {
        self.clock = self.clock.max(self.rec.version().time).max(Stamp::ntp_from_millis(now_ms)) + 1;
        let stamp = Stamp::new(self.clock, self.actor);
        let a = apply_as(Some(&self.rec), op, stamp, self.actor, now_ms, &Limits::default())?;
        self.rec = a.record;
        Ok(a.outcome)
    }

    fn value(&self, now_ms: u64) -> Option<i64> {
        match self.rec.view(now_ms) {
            Some(View::Counter(v)) => Some(v),
            None => None,
            other => panic!("not a counter: {other:?}"),
        }
    }
}

fn once(delta: i64, id: u128) -> Op {
    Op::IncrementOnce { delta, ttl_ms: None, id }
}

fn exchange(replicas: &mut [Replica]) {
    let mut all = Record::default();
    for r in replicas.iter() {
        all.merge(&r.rec);
    }
    for r in replicas.iter_mut() {
        r.rec.merge(&all);
    }
}

#[test]
fn a_retry_on_another_replica_counts_once_and_answers_the_value() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    assert_eq!(a.run(&once(5, 7), NOW), Ok(OpOutcome::Counter { value: 5 }));
    // The retry reaches b before a's state does: both apply it; merged, it counts once.
    assert_eq!(b.run(&once(5, 7), NOW), Ok(OpOutcome::Counter { value: 5 }));
    a.rec.merge(&b.rec);
    b.rec.merge(&a.rec);
    assert_eq!((a.value(NOW), b.value(NOW)), (Some(5), Some(5)));
    // A retry that finds the id answers with the counter as it is and changes nothing.
    a.run(&Op::Increment { delta: 2, ttl_ms: None }, NOW).unwrap();
    let before = a.rec.clone();
    assert_eq!(a.run(&once(5, 7), NOW), Ok(OpOutcome::Counter { value: 7 }));
    assert_eq!(a.rec, before);
}

#[test]
fn a_reused_id_with_another_delta_is_refused() {
    let mut a = Replica::new(1);
    a.run(&once(5, 7), NOW).unwrap();
    let err = a.run(&once(6, 7), NOW).unwrap_err();
    assert_eq!(err, CoreError::RequestReused { id: 7, then: 5, now: 6 });
    assert!(err.to_string().contains("use a new request id"), "{err}");
}

#[test]
fn entries_fold_into_their_actor_after_a_minute_and_are_forgotten_after_the_window() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    a.run(&once(5, 7), NOW).unwrap();
    b.run(&once(5, 7), NOW + 10).unwrap();
    b.run(&once(-2, 8), NOW + 20).unwrap();
    let mut all = [a, b];
    exchange(&mut all);
    let [mut a, mut b] = all;
    // Each actor folds its own copies: b folds request 7 (its copy) and 8; so does a, for 7,
    // and the request, folded twice, counts once.
    let later = NOW + FOLD_AFTER_MS + 100;
    b.run(&Op::Increment { delta: 1, ttl_ms: None }, later).unwrap();
    assert_eq!(b.rec.onces.get(7).unwrap().folders(), std::collections::BTreeSet::from([2]));
    assert!(b.rec.onces.get(8).unwrap().folded());
    a.run(&Op::Increment { delta: 1, ttl_ms: None }, later).unwrap();
    assert!(a.rec.onces.get(7).unwrap().folded());
    let mut all = [a, b];
    exchange(&mut all);
    assert_eq!(all.iter().map(|r| r.value(later)).collect::<Vec<_>>(), vec![Some(5); 2]);
    // Inside the window a retry is still recognised; once the window has passed since the
    // folds, request 8 is gone; request 7, folded by both, stays (with its correction), and
    // the value stays.
    assert_eq!(all[0].run(&once(5, 7), later), Ok(OpOutcome::Counter { value: 5 }));
    let gone = later + REMEMBER_MS + 100;
    all[1].run(&Op::Increment { delta: 1, ttl_ms: None }, gone).unwrap();
    assert!(all[1].rec.onces.get(8).is_none() && all[1].rec.onces.len() == 1, "{:?}", all[1].rec.onces);
    exchange(&mut all);
    assert_eq!(all.iter().map(|r| r.value(gone)).collect::<Vec<_>>(), vec![Some(6); 2]);
}

#[test]
fn a_delete_resets_observed_idempotent_increments_and_keeps_unobserved_ones() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    a.run(&once(5, 1), NOW).unwrap();
    b.rec.merge(&a.rec);
    b.run(&once(3, 2), NOW + 1).unwrap();
    a.run(&Op::Delete, NOW + 2).unwrap();
    assert_eq!(a.value(NOW + 2), None);
    // The retry of request 1 after the delete changes nothing: the delete observed it.
    assert_eq!(a.run(&once(5, 1), NOW + 3), Ok(OpOutcome::Counter { value: 0 }));
    assert_eq!(a.value(NOW + 3), None);
    a.rec.merge(&b.rec);
    b.rec.merge(&a.rec);
    assert_eq!((a.value(NOW + 3), b.value(NOW + 3)), (Some(3), Some(3)), "request 2 survives the delete");
    // Folding and forgetting later keep the value.
    let gone = NOW + REMEMBER_MS + 100;
    b.run(&Op::Increment { delta: 0, ttl_ms: None }, NOW + FOLD_AFTER_MS + 100).unwrap();
    a.rec.merge(&b.rec);
    a.run(&Op::Increment { delta: 1, ttl_ms: None }, gone).unwrap();
    b.rec.merge(&a.rec);
    assert_eq!((a.value(gone), b.value(gone)), (Some(4), Some(4)));
}

#[test]
fn ids_folded_before_a_delete_are_still_forgotten_from_both_sides() {
    let mut a = Replica::new(1);
    a.run(&once(5, 1), NOW).unwrap();
    let fold = NOW + FOLD_AFTER_MS + 10;
    a.run(&Op::Increment { delta: 1, ttl_ms: None }, fold).unwrap();
    assert!(a.rec.onces.get(1).unwrap().folded());
    a.run(&Op::Delete, fold + 1).unwrap();
    assert!(a.rec.onces_base.get(1).is_some());
    // The next write starts a new lifetime (the key was deleted), which keeps the pair for
    // another window; the write after that drops it.
    let restart = fold + REMEMBER_MS + 10;
    a.run(&Op::Increment { delta: 2, ttl_ms: None }, restart).unwrap();
    let gone = restart + REMEMBER_MS + 10;
    a.run(&Op::Increment { delta: 1, ttl_ms: None }, gone).unwrap();
    assert!(a.rec.onces.is_empty() && a.rec.onces_base.is_empty(), "{:?}", a.rec);
    assert_eq!(a.value(gone), Some(3));
}

#[test]
fn a_node_that_never_writes_again_does_not_hold_back_the_others() {
    let (mut a, mut b) = (Replica::new(1), Replica::new(2));
    a.run(&once(5, 1), NOW).unwrap();
    b.run(&once(5, 1), NOW).unwrap();
    a.rec.merge(&b.rec);
    // Only a writes from now on: it folds its own copy, and its later requests are folded and
    // forgotten in their turn although b's copy of request 1 is never folded.
    let fold = NOW + FOLD_AFTER_MS + 10;
    a.run(&once(2, 2), fold).unwrap();
    assert!(a.rec.onces.get(1).unwrap().folded());
    a.run(&Op::Increment { delta: 1, ttl_ms: None }, fold + FOLD_AFTER_MS + 10).unwrap();
    assert!(a.rec.onces.get(2).unwrap().folded());
    let gone = fold + FOLD_AFTER_MS + REMEMBER_MS + 100;
    a.run(&Op::Increment { delta: 1, ttl_ms: None }, gone).unwrap();
    assert!(a.rec.onces.get(2).is_none(), "request 2 is forgotten: {:?}", a.rec.onces);
    a.rec.merge(&b.rec);
    assert_eq!(a.value(gone), Some(9));
}

#[test]
fn records_without_idempotent_increments_do_not_need_the_new_format() {
    let mut a = Replica::new(1);
    a.run(&Op::Increment { delta: 1, ttl_ms: None }, NOW).unwrap();
    assert!(!a.rec.needs_v3());
    a.run(&once(1, 9), NOW).unwrap();
    assert!(a.rec.needs_v3());
}

#[derive(Clone, Debug)]
enum Step {
    /// An attempt of request `id` (delta `id + 1`) on a replica.
    Attempt {
        replica: usize,
        id: u128,
    },
    /// A plain increment of 1 on a replica.
    Plain {
        replica: usize,
    },
    Merge {
        into: usize,
        from: usize,
    },
    /// Every replica exchanges its state, then time moves on (past folding, or past the window).
    Later {
        ms: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..3, 0u128..6).prop_map(|(replica, id)| Step::Attempt { replica, id }),
        1 => (0usize..3).prop_map(|replica| Step::Plain { replica }),
        3 => (0usize..3, 0usize..3).prop_map(|(into, from)| Step::Merge { into, from }),
        1 => prop_oneof![Just(FOLD_AFTER_MS + 1), Just(REMEMBER_MS + 1)].prop_map(|ms| Step::Later { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// However attempts are spread over replicas and merged, once every replica has exchanged
    /// its state the counter is the plain increments plus each request's delta once (requests
    /// retried after their window are new requests: a model of a client that stops retrying).
    #[test]
    fn every_request_counts_once(steps in prop::collection::vec(step(), 0..60)) {
        let mut replicas: Vec<Replica> = (1..=3).map(Replica::new).collect();
        let mut now = NOW;
        let mut expected = 0i64;
        // Requests counted in the current window (ids may be reused after it).
        let mut counted = std::collections::BTreeMap::new();
        for s in &steps {
            match s {
                Step::Attempt { replica, id } => {
                    let fresh = counted.get(id).is_none_or(|&at| now >= at + REMEMBER_MS);
                    let known = replicas.iter().any(|r| r.rec.onces.get(*id).is_some());
                    if fresh && !known {
                        counted.insert(*id, now);
                        expected += *id as i64 + 1;
                    }
                    if fresh && known {
                        // A reuse after the window that some replica still remembers: not a
                        // retry this model allows.
                        continue;
                    }
                    replicas[*replica].run(&once(*id as i64 + 1, *id), now).unwrap();
                }
                Step::Plain { replica } => {
                    replicas[*replica].run(&Op::Increment { delta: 1, ttl_ms: None }, now).unwrap();
                    expected += 1;
                }
                Step::Merge { into, from } => {
                    let from = replicas[*from].rec.clone();
                    replicas[*into].rec.merge(&from);
                }
                Step::Later { ms } => {
                    exchange(&mut replicas);
                    now += ms;
                }
            }
        }
        exchange(&mut replicas);
        for r in &replicas {
            prop_assert_eq!(r.value(now).unwrap_or(0), expected);
        }
    }
}

/// Steps with deletes and arbitrary partial merges; before time jumps every replica exchanges
/// its state (the assumption: copies of one request made on different nodes meet within the
/// window), and a request is retried only within the window.
#[derive(Clone, Debug)]
enum Wild {
    Attempt { replica: usize, id: u128 },
    Plain { replica: usize },
    Delete { replica: usize },
    Merge { into: usize, from: usize },
    Later { ms: u64 },
}

fn wild() -> impl Strategy<Value = Wild> {
    prop_oneof![
        4 => (0usize..3, 0u128..5).prop_map(|(replica, id)| Wild::Attempt { replica, id }),
        1 => (0usize..3).prop_map(|replica| Wild::Plain { replica }),
        1 => (0usize..3).prop_map(|replica| Wild::Delete { replica }),
        3 => (0usize..3, 0usize..3).prop_map(|(into, from)| Wild::Merge { into, from }),
        1 => prop_oneof![Just(FOLD_AFTER_MS + 1), Just(REMEMBER_MS + 1)].prop_map(|ms| Wild::Later { ms }),
    ]
}

fn merged(a: &Record, b: &Record) -> Record {
    let mut m = a.clone();
    m.merge(b);
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The upkeep an actor does as it writes (folding, moving its watermark, forgetting) never
    /// changes the counter's value, alone or merged with any other replica's state, however
    /// stale: only what a write adds changes it.
    #[test]
    fn upkeep_keeps_the_value_alone_and_merged(steps in prop::collection::vec(wild(), 0..50)) {
        let mut replicas: Vec<Replica> = (1..=3).map(Replica::new).collect();
        let mut now = NOW;
        let mut first = std::collections::BTreeMap::new();
        for s in &steps {
            match s {
                Wild::Attempt { replica, id } => {
                    if now - *first.entry(*id).or_insert(now) > REMEMBER_MS - 2 * FOLD_AFTER_MS {
                        continue;
                    }
                    let _ = replicas[*replica].run(&once(*id as i64 + 1, *id), now);
                }
                Wild::Plain { replica } => {
                    replicas[*replica].run(&Op::Increment { delta: 1, ttl_ms: None }, now).unwrap();
                }
                Wild::Delete { replica } => {
                    replicas[*replica].run(&Op::Delete, now).unwrap();
                }
                Wild::Merge { into, from } => {
                    let from = replicas[*from].rec.clone();
                    replicas[*into].rec.merge(&from);
                }
                Wild::Later { ms } => {
                    exchange(&mut replicas);
                    now += ms;
                }
            }
        }
        // Each replica's upkeep is its own actor's (an actor's own state holds every copy it
        // made: its watermark may pass only what it has seen).
        for i in 0..3 {
            let actor = i as u64 + 1;
            {
                let later = now + FOLD_AFTER_MS + 1;
                let mut settled = replicas[i].rec.clone();
                let stamp = Stamp::new(settled.version().time.max(Stamp::ntp_from_millis(later)) + 1, actor);
                settled.settle_onces(actor, stamp, later);
                prop_assert_eq!(settled.counter_value(), replicas[i].rec.counter_value());
                for j in 0..3 {
                    prop_assert_eq!(
                        merged(&settled, &replicas[j].rec).counter_value(),
                        merged(&replicas[i].rec, &replicas[j].rec).counter_value(),
                        "replica {} settled by actor {} and merged with replica {}", i, actor, j
                    );
                }
                // Past the window the upkeep also forgets; alone, the value stays.
                let much_later = now + REMEMBER_MS + 1;
                let stamp = Stamp::new(settled.version().time.max(Stamp::ntp_from_millis(much_later)) + 1, actor);
                settled.settle_onces(actor, stamp, much_later);
                prop_assert_eq!(settled.counter_value(), replicas[i].rec.counter_value());
            }
        }
    }
}
