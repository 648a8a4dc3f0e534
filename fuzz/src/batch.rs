//! `batch_decode`: the wire format of cross-region replication batches.

use geokv_replication::{Batch, MAX_BATCH_RAW_BYTES};

/// Decodes `data` as wire bytes, and `data` compressed as if it were the uncompressed batch:
/// mutations of compressed bytes rarely decompress, so the second form is how the fuzzer
/// reaches the postcard decoder. Seeds of both forms are in the corpus.
pub fn check(data: &[u8]) {
    decodes_consistently(data);
    let wire = zstd::bulk::compress(data, 1).expect("zstd compresses to memory");
    decodes_consistently(&wire);
}

/// When a batch decodes, its own encoding decodes to it again and fits the receiver's bound.
fn decodes_consistently(wire: &[u8]) {
    let Ok(batch) = Batch::decode(wire) else { return };
    let (again, raw_len) = batch.encode(1);
    assert!(raw_len <= MAX_BATCH_RAW_BYTES, "a decoded batch re-encodes to {raw_len} bytes");
    assert_eq!(Batch::decode(&again).as_ref(), Ok(&batch));
}
