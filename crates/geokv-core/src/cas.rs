//! The condition of a compare-and-swap, and whether a key's state meets it.

use crate::{CoreError, Kind, Record, Stamp};

/// The condition of a compare-and-swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key must be absent (never written, deleted or expired).
    Absent,
    /// The key's current version must be exactly this one.
    Version(Stamp),
}

/// Whether a compare-and-swap expecting `expect` may write over `current` at `now_ms`.
/// Returns the visible state (what a failed swap reports) with the answer. A live key of
/// another type than a register is refused: a swap writes a register.
pub fn cas_holds(
    current: Option<&Record>,
    expect: Expect,
    now_ms: u64,
) -> Result<(bool, Option<&Record>), CoreError> {
    let visible = current.filter(|r| r.is_visible(now_ms));
    if let Some(r) = visible {
        if r.kind.val != Kind::Register {
            return Err(CoreError::WrongType {
                op: "CompareAndSwap",
                expected: Kind::Register,
                actual: r.kind.val,
            });
        }
    }
    let holds = match (expect, visible) {
        (Expect::Absent, None) => true,
        (Expect::Version(v), Some(r)) => r.version() == v,
        _ => false,
    };
    Ok((holds, visible))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{apply, Limits, Op};

    fn put(value: &[u8], at: u64, ttl_ms: Option<u64>) -> Record {
        let op = Op::Put { value: value.to_vec(), ttl_ms };
        apply(None, &op, Stamp::new(at, 1), Stamp::new(at, 1).unix_millis(), &Limits::default())
            .expect("put applies")
            .record
    }

    #[test]
    fn absent_holds_for_no_state_and_for_an_expired_one_only() {
        assert!(cas_holds(None, Expect::Absent, 0).unwrap().0);
        let live = put(b"v", Stamp::ntp_from_millis(1_000), Some(1_000));
        assert!(!cas_holds(Some(&live), Expect::Absent, 1_500).unwrap().0);
        assert!(cas_holds(Some(&live), Expect::Absent, 2_500).unwrap().0);
    }

    #[test]
    fn a_version_holds_only_when_it_is_exactly_the_current_one() {
        let rec = put(b"v", Stamp::ntp_from_millis(1_000), None);
        let (ok, seen) = cas_holds(Some(&rec), Expect::Version(rec.version()), 1_000).unwrap();
        assert!(ok);
        assert_eq!(seen, Some(&rec));
        let other = Stamp::new(rec.version().time + 1, 1);
        assert!(!cas_holds(Some(&rec), Expect::Version(other), 1_000).unwrap().0);
        assert!(!cas_holds(None, Expect::Version(other), 1_000).unwrap().0);
    }

    #[test]
    fn a_swap_over_a_counter_is_a_wrong_type_error() {
        let op = Op::Increment { delta: 1, ttl_ms: None };
        let ctr = apply(None, &op, Stamp::new(5, 1), 0, &Limits::default()).unwrap().record;
        assert!(matches!(cas_holds(Some(&ctr), Expect::Absent, 0), Err(CoreError::WrongType { .. })));
    }
}
