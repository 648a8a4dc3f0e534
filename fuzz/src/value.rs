//! `value_decode`: the on-disk value encoding of geokv-storage.

use geokv_storage::codec;

/// Decodes `data` as a stored value, and again with its checksum made valid: without that
/// nearly every mutation stops at the CRC, and the payload decoders (zstd, postcard) would
/// see little of the fuzzer's input.
pub fn check(data: &[u8]) {
    decodes_consistently(data);
    if let Some(resealed) = with_valid_checksum(data) {
        decodes_consistently(&resealed);
    }
}

/// When a value decodes, encoding the record (plain and compressed) decodes to it again, and
/// the read path can look at it.
fn decodes_consistently(bytes: &[u8]) {
    let Ok(record) = codec::decode(bytes) else { return };
    for compress_at in [usize::MAX, 0] {
        let again = codec::encode(&record, compress_at, 1);
        assert_eq!(codec::decode(&again).as_ref(), Ok(&record), "re-encoded with compress_at {compress_at}");
    }
    let _ = (record.version(), record.view(0), record.view(u64::MAX));
}

/// `bytes` with the CRC-32 at bytes 2..6 recomputed over the header and the payload (see the
/// layout in `geokv_storage::codec`); `None` when `bytes` has no room for a header.
pub fn with_valid_checksum(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 6 {
        return None;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..2]);
    h.update(&bytes[6..]);
    let mut out = bytes.to_vec();
    out[2..6].copy_from_slice(&h.finalize().to_le_bytes());
    Some(out)
}
