//! Cross-region replication: what a batch carries, and how a received batch is taken in and
//! acknowledged.
//!
//! **Sending.** A node tails its change log from a durable cursor per destination region.
//! The next batch ([`next_batch`]) carries the current state of each key changed by a
//! shipped entry (a client write of this region; repairs and states from other regions are
//! not shipped again), once per key, only keys the destination may hold, up to a size bound.
//! Its position is the last entry looked at, so a page with nothing to ship still moves the
//! cursor. The cursor moves when the destination acknowledges the batch; anything else (a
//! refusal, no answer) resends from the cursor.
//!
//! **Receiving.** Batches of a stream follow each other: one whose start is not the end of
//! the previous one is refused (a batch was lost). A batch whose clock is beyond the drift
//! bound is refused whole. Each state is then applied at QUORUM ([`merges_here`], then the
//! replicate round): a state the region may not hold is dropped, one refused for good
//! (stamped beyond the drift bound, over the size bound) is set aside and counted, so one
//! state can never stall the stream; any other failure refuses the batch, to be resent.
//! [`BatchTally`] keeps that count and gives the acknowledgement.

use crate::{Failure, Kind};

/// One change-log entry, as the sender sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub seq: u64,
    pub key: &'a [u8],
    /// A client write of this region (shipped), as opposed to a repair or a remote state.
    pub ship: bool,
}

/// A batch to send: the last change-log entry it covers, and the keys it carries with their
/// states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextBatch<S> {
    pub last_seq: u64,
    pub states: Vec<(Vec<u8>, S)>,
}

/// The next batch from `entries` (the change log after the cursor, in order): its position
/// and the keys it carries with their states. `state_of` gives a key's current state and its
/// size (None: the key is gone); `keep` whether the destination may hold the key. A batch
/// stops once its states reach `max_bytes`. `None` when there are no entries.
pub fn next_batch<'a, S, E>(
    entries: impl IntoIterator<Item = Entry<'a>>,
    keep: impl Fn(&[u8]) -> bool,
    mut state_of: impl FnMut(&[u8]) -> Result<Option<(S, usize)>, E>,
    max_bytes: usize,
) -> Result<Option<NextBatch<S>>, E> {
    let mut last = None;
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut bytes = 0;
    for e in entries {
        last = Some(e.seq);
        if !e.ship || !keep(e.key) || !seen.insert(e.key.to_vec()) {
            continue;
        }
        let Some((state, size)) = state_of(e.key)? else { continue };
        bytes += e.key.len() + size;
        out.push((e.key.to_vec(), state));
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(last.map(|last_seq| NextBatch { last_seq, states: out }))
}

/// Whether a receiving node merges a state from another region into its own store before
/// sending it to the key's replicas: it does when it is a home replica of the key (then the
/// replicas get the merged state); otherwise it only passes the state on.
pub fn merges_here(is_home: bool) -> bool {
    is_home
}

/// Whether a batch may be taken: it follows the previous one of its stream
/// (`expected_after`), and its clock is within the drift bound (`clock_ok`).
pub fn check_batch(
    expected_after: Option<u64>,
    after_seq: u64,
    clock_ok: Result<(), String>,
) -> Result<(), Failure> {
    if let Some(expected) = expected_after.filter(|&e| e != after_seq) {
        return Err(Failure::refused(
            Kind::FailedPrecondition,
            format!(
                "batch after {after_seq} arrived where {expected} was expected (a batch was lost); resend from the cursor"
            ),
        ));
    }
    clock_ok.map_err(|e| {
        Failure::refused(Kind::FailedPrecondition, format!("stamp beyond the maximum clock drift: {e}"))
    })
}

/// The states of one received batch as they are applied, and its acknowledgement.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchTally {
    pub applied: u64,
    /// Not allowed in this region (the sender's residency policy is older).
    pub dropped: u64,
    /// Refused for good and set aside.
    pub set_aside: u64,
    failure: Option<String>,
}

impl BatchTally {
    /// A state the region may not hold.
    pub fn on_dropped(&mut self) {
        self.dropped += 1;
    }

    /// Records one state's result; returns whether it was set aside (refused for good).
    pub fn on_applied(&mut self, result: Result<(), Failure>) -> bool {
        match result {
            Ok(()) => {
                self.applied += 1;
                false
            }
            Err(f) if f.kind == Kind::FailedPrecondition => {
                self.set_aside += 1;
                true
            }
            Err(f) => {
                self.failure.get_or_insert(f.message);
                false
            }
        }
    }

    /// The acknowledgement: how many states were not applied (dropped or set aside), or why
    /// the batch must be resent.
    pub fn ack(&self) -> Result<u64, String> {
        match &self.failure {
            Some(e) => Err(format!("a delta could not be applied: {e}")),
            None => Ok(self.dropped + self.set_aside),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(u64, &'static [u8], bool)]) -> Vec<Entry<'static>> {
        list.iter().map(|&(seq, key, ship)| Entry { seq, key, ship }).collect()
    }

    fn sizes(key: &[u8]) -> Result<Option<(String, usize)>, ()> {
        Ok((key != b"gone").then(|| (String::from_utf8_lossy(key).into_owned(), 10)))
    }

    #[test]
    fn a_batch_carries_each_shipped_key_once_and_covers_what_it_skipped() {
        let log = entries(&[
            (1, b"a", true),
            (2, b"rep", false),
            (3, b"a", true),
            (4, b"gone", true),
            (5, b"b", true),
        ]);
        let NextBatch { last_seq: last, states } =
            next_batch(log, |_| true, sizes, 1 << 20).unwrap().unwrap();
        assert_eq!(last, 5);
        assert_eq!(states, vec![(b"a".to_vec(), "a".to_string()), (b"b".to_vec(), "b".to_string())]);
        // Nothing to ship still moves the cursor; no entries, no batch.
        let batch = next_batch(entries(&[(7, b"rep", false)]), |_| true, sizes, 1 << 20).unwrap().unwrap();
        assert_eq!((batch.last_seq, batch.states.len()), (7, 0));
        assert!(next_batch(Vec::new(), |_| true, sizes, 1 << 20).unwrap().is_none());
    }

    #[test]
    fn a_batch_keeps_only_allowed_keys_and_stops_at_its_size() {
        let log = entries(&[(1, b"eu", true), (2, b"us", true), (3, b"c", true), (4, b"d", true)]);
        let NextBatch { last_seq: last, states } =
            next_batch(log.clone(), |k| k != b"eu", sizes, 1 << 20).unwrap().unwrap();
        assert_eq!((last, states.len()), (4, 3));
        let NextBatch { last_seq: last, states } = next_batch(log, |_| true, sizes, 24).unwrap().unwrap();
        assert_eq!((last, states.len()), (2, 2), "stops once 24 bytes are reached; the rest waits");
    }

    #[test]
    fn batches_must_follow_each_other_and_keep_within_the_drift() {
        assert!(check_batch(None, 9, Ok(())).is_ok());
        assert!(check_batch(Some(9), 9, Ok(())).is_ok());
        assert_eq!(check_batch(Some(8), 9, Ok(())).unwrap_err().kind, Kind::FailedPrecondition);
        assert!(check_batch(Some(9), 9, Err("ahead".into())).unwrap_err().message.contains("drift"));
    }

    #[test]
    fn refusals_are_set_aside_and_other_failures_resend_the_batch() {
        let mut t = BatchTally::default();
        assert!(!t.on_applied(Ok(())));
        t.on_dropped();
        assert!(t.on_applied(Err(Failure::refused(Kind::FailedPrecondition, "ahead"))));
        assert_eq!(t.ack(), Ok(2));
        assert!(!t.on_applied(Err(Failure::quorum("1 of 2", true))));
        assert!(t.ack().unwrap_err().contains("quorum not reached"));
        assert!(merges_here(true) && !merges_here(false));
    }
}
