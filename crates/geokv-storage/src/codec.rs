//! The on-disk encoding of a key's state.
//!
//! ```text
//! byte 0      format version (1)
//! byte 1      flags: bit 0 = payload is zstd-compressed
//! bytes 2..6  CRC-32 (IEEE) of bytes 0..2 and the payload, little-endian
//! bytes 6..   payload: postcard encoding of `geokv_core::Record`, maybe compressed
//! ```
//! Decoding dispatches on the version byte, so a later format adds a decoder and keeps this
//! one. A checksum mismatch is reported as corruption and the value is never served.

use geokv_core::Record;

pub const FORMAT_V1: u8 = 1;
const FLAG_ZSTD: u8 = 1;
const HEADER: usize = 6;
/// Upper bound for a decompressed payload, against decompression bombs in corrupt input.
/// `limits.max_record_bytes` is validated to be at most this.
const MAX_DECODED: usize = geokv_core::MAX_RECORD_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is {0} bytes, shorter than the {HEADER}-byte header")]
    Truncated(usize),
    #[error("unknown format version {0} (this build reads version {FORMAT_V1})")]
    UnknownVersion(u8),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("payload does not decode: {0}")]
    Payload(String),
}

fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// The uncompressed payload of a record (what `limits.max_record_bytes` limits).
pub fn serialize(record: &Record) -> Vec<u8> {
    postcard::to_allocvec(record).expect("records always serialize")
}

/// Encodes a record; payloads of at least `compress_at` bytes are zstd-compressed when that
/// makes them smaller.
pub fn encode(record: &Record, compress_at: usize, level: i32) -> Vec<u8> {
    encode_serialized(serialize(record), compress_at, level)
}

/// Encodes a payload made by [`serialize`].
pub fn encode_serialized(plain: Vec<u8>, compress_at: usize, level: i32) -> Vec<u8> {
    let (flags, payload) = if plain.len() >= compress_at {
        match zstd::bulk::compress(&plain, level) {
            Ok(c) if c.len() < plain.len() => (FLAG_ZSTD, c),
            _ => (0, plain),
        }
    } else {
        (0, plain)
    };
    let head = [FORMAT_V1, flags];
    let crc = checksum(&head, &payload);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() < HEADER {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    match bytes[0] {
        FORMAT_V1 => decode_v1(bytes),
        v => Err(DecodeError::UnknownVersion(v)),
    }
}

fn decode_v1(bytes: &[u8]) -> Result<Record, DecodeError> {
    let flags = bytes[1];
    let stored = u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER..];
    let computed = checksum(&bytes[..2], payload);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    let plain;
    let payload = match flags {
        0 => payload,
        FLAG_ZSTD => {
            plain = zstd::bulk::decompress(payload, MAX_DECODED)
                .map_err(|e| DecodeError::Decompress(e.to_string()))?;
            &plain[..]
        }
        f => return Err(DecodeError::UnknownFlags(f)),
    };
    postcard::from_bytes(payload).map_err(|e| DecodeError::Payload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use geokv_core::{apply, Limits, Op, Stamp};

    fn sample(len: usize) -> Record {
        let op = Op::Put { value: vec![b'x'; len], ttl_ms: Some(1000) };
        apply(None, &op, Stamp::new(99, 3), 1_000, &Limits::default()).unwrap().record
    }

    #[test]
    fn round_trips_plain_and_compressed() {
        for len in [0, 10, 5000] {
            let r = sample(len);
            let bytes = encode(&r, 1024, 3);
            assert_eq!(bytes[1] == FLAG_ZSTD, len == 5000);
            assert_eq!(decode(&bytes).unwrap(), r);
        }
    }

    #[test]
    fn every_single_flipped_byte_is_detected() {
        for len in [10, 5000] {
            let bytes = encode(&sample(len), 1024, 3);
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x5a;
                assert!(decode(&bad).is_err(), "flip at {i} of {} not detected", bytes.len());
            }
        }
    }

    #[test]
    fn unknown_versions_and_short_input_are_errors() {
        let mut bytes = encode(&sample(1), 1024, 3);
        bytes[0] = 9;
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownVersion(9)));
        assert_eq!(decode(&[1, 0]), Err(DecodeError::Truncated(2)));
    }
}
