//! A batch of deltas from one node of the origin region to another region.
//!
//! A delta is a key's full CRDT state as the origin node holds it when the batch is built
//! (a state-based CRDT's state is a valid delta: it merges into any replica, idempotently,
//! in any order). Several changes to one key between two batches travel once.

use serde::{Deserialize, Serialize};

/// Largest uncompressed batch a receiver accepts (a zstd bomb is refused, not expanded: its
/// frame must declare its size, and one declaring more is refused before anything is
/// allocated).
pub const MAX_BATCH_RAW_BYTES: usize = 64 * 1024 * 1024;

/// The format of a batch's payload this build writes (`ReplicationBatch.format`): the postcard
/// layout of [`Batch`] in one zstd frame. A batch without a format (0) is of format 1. A later
/// format gets a new number, and receivers keep reading this one (tests/golden.rs).
pub const BATCH_FORMAT: u32 = 1;

/// Whether this build reads payloads of `format` (0: sent before formats were numbered, = 1).
pub fn reads_format(format: u32) -> bool {
    format <= BATCH_FORMAT
}

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
        let raw = decompress(wire)?;
        postcard::from_bytes(&raw).map_err(|e| BatchError::Decode(e.to_string()))
    }
}

/// Decompresses wire bytes into a buffer of the size the zstd frame declares ([`Batch::encode`]
/// always writes it); zstd checks the output against it. Sizing the buffer by the bound
/// instead, as before, allocated 64 MiB per batch, even an empty one (found by the
/// `batch_decode` fuzz target).
fn decompress(wire: &[u8]) -> Result<Vec<u8>, BatchError> {
    let refuse = |why: String| Err(BatchError::Decompress(why));
    match zstd::zstd_safe::get_frame_content_size(wire) {
        Ok(Some(n)) => match usize::try_from(n) {
            Ok(n) if n <= MAX_BATCH_RAW_BYTES => {
                zstd::bulk::decompress(wire, n).map_err(|e| BatchError::Decompress(e.to_string()))
            }
            _ => refuse(format!("the frame declares {n} bytes")),
        },
        Ok(None) => refuse("the zstd frame does not declare its size".into()),
        Err(_) => refuse("not a zstd frame".into()),
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

    #[test]
    fn a_batch_decompresses_into_a_buffer_of_its_own_size() {
        // The empty input is what `fuzz/` found allocating 64 MiB.
        assert!(matches!(Batch::decode(b""), Err(BatchError::Decompress(_))));
        let (wire, raw) = batch(3).encode(3);
        assert_eq!(decompress(&wire).unwrap().capacity(), raw);
    }

    #[test]
    fn a_frame_that_does_not_declare_its_size_is_refused() {
        let raw = postcard::to_allocvec(&batch(2)).unwrap();
        let undeclared = zstd::stream::encode_all(&raw[..], 3).unwrap();
        assert!(matches!(Batch::decode(&undeclared), Err(BatchError::Decompress(_))));
    }
}
