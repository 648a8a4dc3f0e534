//! A batch of deltas from one node of the origin region to another region.
//!
//! A delta is a key's full CRDT state as the origin node holds it when the batch is built
//! (a state-based CRDT's state is a valid delta: it merges into any replica, idempotently,
//! in any order). Several changes to one key between two batches travel once.

use serde::{Deserialize, Serialize};

/// Largest uncompressed batch a receiver accepts (a zstd bomb is refused, not expanded).
pub const MAX_BATCH_RAW_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub key: Vec<u8>,
    /// The state in geokv-storage's checksummed value encoding.
    pub state: Vec<u8>,
    /// HLC time (NTP64) of the state's newest write: how old the delta is.
    pub stamp: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub origin_region: String,
    pub origin_node: u64,
    /// Change-log positions this batch covers on the origin node: after `after_seq`, up to
    /// and including `last_seq`. The next batch of the stream starts after `last_seq`.
    pub after_seq: u64,
    pub last_seq: u64,
    /// The origin node's HLC (NTP64) when it sent the batch.
    pub hlc: u64,
    pub deltas: Vec<Delta>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("the batch does not decompress (or exceeds {MAX_BATCH_RAW_BYTES} bytes uncompressed): {0}")]
    Decompress(String),
    #[error("the batch does not decode: {0}")]
    Decode(String),
}

impl Batch {
    /// The wire bytes (compressed) and the uncompressed size.
    pub fn encode(&self, level: i32) -> (Vec<u8>, usize) {
        let raw = postcard::to_allocvec(self).expect("batches serialize");
        let wire = zstd::bulk::compress(&raw, level).expect("zstd compresses to memory");
        (wire, raw.len())
    }

    pub fn decode(wire: &[u8]) -> Result<Batch, BatchError> {
        let raw = zstd::bulk::decompress(wire, MAX_BATCH_RAW_BYTES)
            .map_err(|e| BatchError::Decompress(e.to_string()))?;
        postcard::from_bytes(&raw).map_err(|e| BatchError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        Batch {
            origin_region: "eu-west".into(),
            origin_node: 1,
            after_seq: 10,
            last_seq: 10 + n as u64,
            hlc: 42,
            deltas: (0..n)
                .map(|i| Delta {
                    key: format!("user:{i}").into_bytes(),
                    state: vec![7; 200],
                    stamp: i as u64,
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_round_trips_and_compresses() {
        let b = batch(500);
        let (wire, raw) = b.encode(3);
        assert!(wire.len() * 5 < raw, "{} B on the wire for {raw} B", wire.len());
        assert_eq!(Batch::decode(&wire).unwrap(), b);
    }

    #[test]
    fn garbage_and_bombs_are_refused() {
        assert!(matches!(Batch::decode(b"not zstd"), Err(BatchError::Decompress(_))));
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_BATCH_RAW_BYTES + 1], 1).unwrap();
        assert!(matches!(Batch::decode(&bomb), Err(BatchError::Decompress(_))));
        let (mut wire, _) = batch(3).encode(1);
        let last = wire.len() - 1;
        wire[last] ^= 0xff;
        assert!(Batch::decode(&wire).is_err());
    }
}
