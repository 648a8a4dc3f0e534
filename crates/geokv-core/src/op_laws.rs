//! Property tests: the merge laws hold for states built by arbitrary operations, on
//! arbitrary replicas, with arbitrary partial merges in between (no causal delivery).
use super::*;
use crate::Crdt;
use proptest::prelude::*;

const NOW: u64 = 1_000_000;

#[derive(Clone, Debug)]
enum Step {
    Do { replica: usize, op: Op, now_offset: u64 },
    Merge { into: usize, from: usize },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let member = prop::collection::vec(0u8..4, 1..2);
    prop_oneof![
        (prop::collection::vec(any::<u8>(), 0..3), prop::option::of(1u64..50))
            .prop_map(|(value, ttl_ms)| Op::Put { value, ttl_ms }),
        (prop::collection::vec(any::<u8>(), 0..3), prop::option::of(1u64..50))
            .prop_map(|(value, ttl_ms)| Op::Append { value, ttl_ms }),
        Just(Op::Delete),
        (-5i64..5, prop::option::of(1u64..50)).prop_map(|(delta, ttl_ms)| Op::Increment { delta, ttl_ms }),
        (prop::collection::vec(member.clone(), 1..3), prop::option::of(1u64..50))
            .prop_map(|(members, ttl_ms)| Op::SetAdd { members, ttl_ms }),
        prop::collection::vec(member, 1..3).prop_map(|members| Op::SetRemove { members }),
        (0u128..4).prop_map(|id| Op::IncrementOnce { delta: id as i64 + 1, ttl_ms: None, id }),
        (0u128..4).prop_map(|id| Op::AppendOnce { value: vec![id as u8], ttl_ms: None, id }),
        prop::option::of(1u64..50).prop_map(|ttl_ms| Op::Expire { ttl_ms }),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        // Now and then far later: idempotent increments fold, and are forgotten.
        3 => (0usize..3, op_strategy(), prop_oneof![
            8 => 0u64..100,
            1 => Just(crate::once::FOLD_AFTER_MS + 50),
            1 => Just(crate::once::REMEMBER_MS + 50),
        ])
            .prop_map(|(replica, op, now_offset)| Step::Do { replica, op, now_offset }),
        1 => (0usize..3, 0usize..3).prop_map(|(into, from)| Step::Merge { into, from }),
    ]
}

/// Runs the steps on three replicas and returns their final states.
fn run(steps: &[Step]) -> Vec<Record> {
    let mut recs: Vec<Record> = vec![Record::default(); 3];
    let mut clock = 0u64;
    for step in steps {
        match step {
            Step::Do { replica, op, now_offset } => {
                // An HLC: never behind the wall clock, always past what the replica saw.
                let wall = Stamp::ntp_from_millis(NOW + now_offset);
                clock = clock.max(recs[*replica].version().time).max(wall) + 1;
                let stamp = Stamp::new(clock, *replica as u64 + 1);
                let cur = Some(&recs[*replica]);
                // Refused operations (wrong type, overflow) leave the state as it was.
                if let Ok(a) = apply(cur, op, stamp, NOW + now_offset, &Limits::default()) {
                    recs[*replica] = a.record;
                }
            }
            Step::Merge { into, from } => {
                let from = recs[*from].clone();
                recs[*into].merge(&from);
            }
        }
    }
    recs
}

fn merged(a: &Record, b: &Record) -> Record {
    let mut m = a.clone();
    m.merge(b);
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn merge_is_commutative_associative_idempotent(steps in prop::collection::vec(step_strategy(), 0..40)) {
        let r = run(&steps);
        let (a, b, c) = (&r[0], &r[1], &r[2]);
        prop_assert_eq!(merged(a, b), merged(b, a));
        prop_assert_eq!(merged(&merged(a, b), c), merged(a, &merged(b, c)));
        prop_assert_eq!(merged(a, a), a.clone());
        // Re-merging an older piece of knowledge changes nothing (duplicates are harmless).
        let ab = merged(a, b);
        prop_assert_eq!(merged(&ab, b), ab.clone());
    }

    #[test]
    fn replicas_converge_after_full_exchange(steps in prop::collection::vec(step_strategy(), 0..40)) {
        let r = run(&steps);
        let all = merged(&merged(&r[0], &r[1]), &r[2]);
        let other_order = merged(&merged(&r[2], &r[0]), &r[1]);
        prop_assert_eq!(&all, &other_order);
        for now in [NOW, NOW + 60, NOW + 1000] {
            prop_assert_eq!(all.view(now), other_order.view(now));
        }
    }
}
