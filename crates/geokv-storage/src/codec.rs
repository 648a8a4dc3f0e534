//! The on-disk encoding of a key's state.
//!
//! ```text
//! byte 0      format version (4 for a record that holds idempotent appends, 3 for one that
//!             holds idempotent increments and no appends, 2 for one that never held either;
//!             1 is still read)
//! byte 1      flags: bit 0 = payload is zstd-compressed
//! bytes 2..6  CRC-32 (IEEE) of bytes 0..2 and the payload, little-endian
//! bytes 6..   payload: postcard encoding of `geokv_core::Record`, maybe compressed
//!             (one zstd frame that declares its decompressed size)
//! ```
//! Decoding dispatches on the version byte, so a later format adds a decoder and keeps this
//! one. Version 1's payload is a record without `horizon` (`geokv_core::RecordV1`), read with
//! horizon 0; version 2's a record without idempotent increments (`geokv_core::RecordV2`),
//! read with none; version 3's a record without idempotent appends (`geokv_core::RecordV3`).
//! A record is written in the oldest version that holds it, byte for byte what the previous
//! releases wrote, so their nodes read it during a rolling upgrade and Merkle digests of such
//! records agree across the releases. A checksum mismatch is reported as
//! corruption and the value is never served.

use geokv_core::Record;

pub const FORMAT_V1: u8 = 1;
pub const FORMAT_V2: u8 = 2;
pub const FORMAT_V3: u8 = 3;
pub const FORMAT_V4: u8 = 4;
const FLAG_ZSTD: u8 = 1;
const HEADER: usize = 6;
/// Upper bound for a decompressed payload, against decompression bombs in corrupt input: a
/// frame declaring more is refused unread. `limits.max_record_bytes` is validated to be at
/// most this.
const MAX_DECODED: usize = geokv_core::MAX_RECORD_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is {0} bytes, shorter than the {HEADER}-byte header")]
    Truncated(usize),
    #[error("unknown format version {0} (this build reads versions {FORMAT_V1} to {FORMAT_V4})")]
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

/// The format version a record is written in: 2 unless it holds idempotent increments (3) or
/// appends (4).
pub fn format_of(record: &Record) -> u8 {
    if record.needs_v4() {
        FORMAT_V4
    } else if record.needs_v3() {
        FORMAT_V3
    } else {
        FORMAT_V2
    }
}

/// The uncompressed payload of a record (what `limits.max_record_bytes` limits), in the
/// layout of [`format_of`] it.
pub fn serialize(record: &Record) -> Vec<u8> {
    if record.needs_v4() {
        postcard::to_allocvec(record).expect("records always serialize")
    } else if record.needs_v3() {
        postcard::to_allocvec(&geokv_core::RecordV3Ref::from(record)).expect("records always serialize")
    } else {
        postcard::to_allocvec(&geokv_core::RecordV2Ref::from(record)).expect("records always serialize")
    }
}

/// Encodes a record; payloads of at least `compress_at` bytes are zstd-compressed when that
/// makes them smaller.
pub fn encode(record: &Record, compress_at: usize, level: i32) -> Vec<u8> {
    encode_serialized(serialize(record), format_of(record), compress_at, level)
}

/// Encodes a payload made by [`serialize`] of a record whose [`format_of`] is `format`.
pub fn encode_serialized(plain: Vec<u8>, format: u8, compress_at: usize, level: i32) -> Vec<u8> {
    let (flags, payload) = if plain.len() >= compress_at {
        match zstd::bulk::compress(&plain, level) {
            Ok(c) if c.len() < plain.len() => (FLAG_ZSTD, c),
            _ => (0, plain),
        }
    } else {
        (0, plain)
    };
    let head = [format, flags];
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
        FORMAT_V1 => {
            let v1: geokv_core::RecordV1 = postcard_payload(bytes)?;
            Ok(v1.into())
        }
        FORMAT_V2 => {
            let v2: geokv_core::RecordV2 = postcard_payload(bytes)?;
            Ok(v2.into())
        }
        FORMAT_V3 => {
            let v3: geokv_core::RecordV3 = postcard_payload(bytes)?;
            Ok(v3.into())
        }
        FORMAT_V4 => postcard_payload(bytes),
        v => Err(DecodeError::UnknownVersion(v)),
    }
}

/// Checks the checksum, decompresses, and decodes the postcard payload of a value.
fn postcard_payload<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
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
            plain = decompress(payload)?;
            &plain[..]
        }
        f => return Err(DecodeError::UnknownFlags(f)),
    };
    postcard::from_bytes(payload).map_err(|e| DecodeError::Payload(e.to_string()))
}

/// Decompresses a payload into a buffer of the size its zstd frame declares (which
/// [`encode_serialized`] always writes), refusing a declared size over [`MAX_DECODED`] before
/// allocating anything; zstd checks that the output matches the declared size. (A buffer of
/// `MAX_DECODED` bytes for every compressed value, as before, was a 256 MiB allocation per
/// read; found by the `value_decode` fuzz target.)
fn decompress(payload: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let declared = match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(DecodeError::Decompress("the zstd frame does not declare its size".into())),
        Err(_) => return Err(DecodeError::Decompress("not a zstd frame".into())),
    };
    match usize::try_from(declared) {
        Ok(n) if n <= MAX_DECODED => {
            zstd::bulk::decompress(payload, n).map_err(|e| DecodeError::Decompress(e.to_string()))
        }
        _ => Err(DecodeError::Decompress(format!(
            "declares {declared} bytes, over the {MAX_DECODED}-byte bound"
        ))),
    }
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

    /// A value with a valid header around any payload.
    fn sealed(flags: u8, payload: &[u8]) -> Vec<u8> {
        let head = [FORMAT_V2, flags];
        [&head[..], &checksum(&head, payload).to_le_bytes(), payload].concat()
    }

    /// `fuzz/` found this (a compressed counter from the seed corpus) allocating 256 MiB.
    const FUZZ_OOM_COMPRESSED_COUNTER: [u8; 38] = [
        0x01, 0x01, 0xfa, 0xb8, 0x8f, 0xc3, 0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x24, 0xbd, 0x00, 0x00, 0x60, 0x00,
        0x80, 0x7d, 0x07, 0x90, 0x80, 0x80, 0x80, 0x80, 0x90, 0x7d, 0x07, 0x04, 0x00, 0x20, 0x00, 0xb0, 0xbb,
        0x72, 0xd8, 0x02, 0x58,
    ];

    #[test]
    fn a_compressed_value_decompresses_into_a_buffer_of_its_declared_size() {
        assert!(decode(&FUZZ_OOM_COMPRESSED_COUNTER).is_ok());
        let plain = decompress(&FUZZ_OOM_COMPRESSED_COUNTER[HEADER..]).unwrap();
        assert_eq!((plain.len(), plain.capacity()), (36, 36));
        let big = encode(&sample(5000), 1024, 3);
        assert_eq!(decompress(&big[HEADER..]).unwrap().capacity(), serialize(&sample(5000)).len());
    }

    #[test]
    fn a_frame_declaring_more_than_the_bound_is_refused_before_decompressing() {
        // zstd magic, single-segment frame with an 8-byte content size, and no blocks.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        frame.extend_from_slice(&(MAX_DECODED as u64 + 1).to_le_bytes());
        let err = decode(&sealed(FLAG_ZSTD, &frame)).unwrap_err();
        assert!(matches!(&err, DecodeError::Decompress(m) if m.contains("over the")), "{err}");
    }

    #[test]
    fn compressed_payloads_must_be_zstd_frames_that_declare_their_size() {
        let plain = serialize(&sample(5000));
        let undeclared = zstd::stream::encode_all(&plain[..], 3).unwrap();
        assert!(decode(&sealed(FLAG_ZSTD, &undeclared)).is_err());
        assert!(decode(&sealed(FLAG_ZSTD, b"")).is_err());
        assert!(decode(&sealed(FLAG_ZSTD, b"not zstd")).is_err());
        let declared = zstd::bulk::compress(&plain, 3).unwrap();
        assert_eq!(decode(&sealed(FLAG_ZSTD, &declared)), Ok(sample(5000)));
    }

    #[test]
    fn a_version_1_value_reads_as_a_record_with_no_horizon() {
        let r = sample(10);
        let v1 = geokv_core::RecordV1 {
            kind: r.kind.clone(),
            live: r.live.clone(),
            register: r.register.clone(),
            counter: r.counter.clone(),
            counter_base: r.counter_base.clone(),
            set: r.set.clone(),
            expiry: r.expiry.clone(),
        };
        let payload = postcard::to_allocvec(&v1).unwrap();
        let head = [FORMAT_V1, 0];
        let bytes = [&head[..], &checksum(&head, &payload).to_le_bytes(), &payload].concat();
        let read = decode(&bytes).unwrap();
        assert_eq!(read, Record { horizon: 0, ..r });
    }

    #[test]
    fn a_record_without_idempotent_increments_is_written_as_version_2_and_one_with_them_as_3() {
        let r = sample(10);
        let bytes = encode(&r, 1024, 3);
        assert_eq!(bytes[0], FORMAT_V2);
        // Byte for byte the previous release's payload: the record without the new fields.
        let v2 = geokv_core::RecordV2 {
            kind: r.kind.clone(),
            live: r.live.clone(),
            register: r.register.clone(),
            counter: r.counter.clone(),
            counter_base: r.counter_base.clone(),
            set: r.set.clone(),
            expiry: r.expiry.clone(),
            horizon: r.horizon,
        };
        assert_eq!(&bytes[HEADER..], &postcard::to_allocvec(&v2).unwrap()[..]);
        assert_eq!(decode(&bytes).unwrap(), r);

        let op = Op::IncrementOnce { delta: 4, ttl_ms: None, id: 0xfeed };
        let counted = apply(None, &op, Stamp::new(99, 3), 1_000, &Limits::default()).unwrap().record;
        for compress_at in [1, 1024] {
            let bytes = encode(&counted, compress_at, 3);
            assert_eq!(bytes[0], FORMAT_V3);
            assert_eq!(decode(&bytes).unwrap(), counted);
        }
    }

    #[test]
    fn a_record_with_idempotent_appends_is_written_as_version_4_and_one_without_as_before() {
        let op = Op::IncrementOnce { delta: 4, ttl_ms: None, id: 0xfeed };
        let counted = apply(None, &op, Stamp::new(99, 3), 1_000, &Limits::default()).unwrap().record;
        // Byte for byte the previous release's version 3 payload: no appends field.
        let v3 = geokv_core::RecordV3 {
            kind: counted.kind.clone(),
            live: counted.live.clone(),
            register: counted.register.clone(),
            counter: counted.counter.clone(),
            counter_base: counted.counter_base.clone(),
            set: counted.set.clone(),
            expiry: counted.expiry.clone(),
            horizon: counted.horizon,
            onces: counted.onces.clone(),
            onces_base: counted.onces_base.clone(),
            settled: counted.settled.clone(),
        };
        assert_eq!(&encode(&counted, 1024, 3)[HEADER..], &postcard::to_allocvec(&v3).unwrap()[..]);

        let op = Op::AppendOnce { value: b"tail".to_vec(), ttl_ms: None, id: 0xbeef };
        let appended = apply(None, &op, Stamp::new(99, 3), 1_000, &Limits::default()).unwrap().record;
        assert!(!appended.appends.is_empty());
        for compress_at in [1, 1024] {
            let bytes = encode(&appended, compress_at, 3);
            assert_eq!(bytes[0], FORMAT_V4);
            assert_eq!(decode(&bytes).unwrap(), appended);
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
