//! The size rule for a key's stored state, shared by the RocksDB engine and the in-memory
//! store (and so run by the simulator as on the server).
//!
//! A client write may not grow a state past `limits.max_record_bytes`; a write that does not
//! grow it (a removal from a set that merges made oversized) is taken. A merge of replica
//! states is taken up to the codec's bound ([`geokv_core::MAX_RECORD_BYTES`]) and counted when
//! over the limit: both states were within it, and refusing their merge would leave the
//! replicas (or regions) apart for good and stall whatever carries the merge.

use geokv_core::Record;

use crate::{codec, StorageError};

/// How a new state stands against the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fits {
    /// Within `max_record_bytes` (or a client write that does not grow the state).
    Within,
    /// A merge over `max_record_bytes`: stored, and counted.
    OversizedMerge,
}

/// Whether a new state of `plain_len` uncompressed bytes may be stored in place of `old`
/// (`merge`: a replica's state merged in, not a client write).
pub fn check(
    plain_len: usize,
    old: Option<&Record>,
    limit: usize,
    merge: bool,
) -> Result<Fits, StorageError> {
    if plain_len <= limit {
        return Ok(Fits::Within);
    }
    if merge {
        if plain_len > geokv_core::MAX_RECORD_BYTES {
            return Err(StorageError::RecordTooLarge {
                actual: plain_len,
                limit: geokv_core::MAX_RECORD_BYTES,
            });
        }
        return Ok(Fits::OversizedMerge);
    }
    if old.is_some_and(|o| codec::serialize(o).len() >= plain_len) {
        return Ok(Fits::Within);
    }
    Err(StorageError::RecordTooLarge { actual: plain_len, limit })
}

#[cfg(test)]
mod tests {
    use geokv_core::{apply, Limits, Op, Stamp};

    use super::*;

    fn set(members: usize) -> Record {
        let op = Op::SetAdd {
            members: (0..members).map(|i| format!("member-{i:04}").into_bytes()).collect(),
            ttl_ms: None,
        };
        apply(None, &op, Stamp::new(1 << 32, 1), 0, &Limits::default()).unwrap().record
    }

    #[test]
    fn client_writes_may_not_grow_a_state_past_the_limit() {
        let (small, big) = (set(2), set(20));
        let limit = codec::serialize(&small).len();
        assert_eq!(check(limit, None, limit, false).unwrap(), Fits::Within);
        let len = codec::serialize(&big).len();
        match check(len, Some(&small), limit, false) {
            Err(StorageError::RecordTooLarge { actual, limit: l }) => assert_eq!((actual, l), (len, limit)),
            other => panic!("a write growing the state past the limit must be refused, got {other:?}"),
        }
        // A write that does not grow an oversized state (a removal) is taken.
        assert_eq!(check(len, Some(&big), limit, false).unwrap(), Fits::Within);
    }

    #[test]
    fn merges_are_taken_over_the_limit_up_to_the_codec_bound() {
        assert_eq!(check(1_000, None, 100, true).unwrap(), Fits::OversizedMerge);
        assert!(matches!(
            check(geokv_core::MAX_RECORD_BYTES + 1, None, 100, true),
            Err(StorageError::RecordTooLarge { .. })
        ));
    }
}
