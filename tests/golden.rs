//! Compatibility across versions: the encodings of this version, kept as files in
//! `tests/golden/`. Each file is decoded by this build and compared with the value it was
//! written from; the value is encoded again and compared byte for byte (for compressed forms,
//! their uncompressed bytes: a newer zstd may compress differently and still be read). A change
//! that would leave a node unable to read what a node of this version stored or sent fails here.
//!
//! To change a format: give it a new version, keep reading the old one, and add golden files for
//! the new version (`GEOKV_WRITE_GOLDEN=1` writes the files that are missing); never edit or
//! delete the files of an earlier version. docs/operations.md ("Upgrades") has the procedure.

use std::path::PathBuf;

use geokv_core::{apply_as, Limits, Op, OpOutcome, Record, RecordV1, Stamp};
use geokv_storage::codec;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden").join(name)
}

/// The stored golden file `name`; written from `bytes` if it is missing and
/// GEOKV_WRITE_GOLDEN=1 (otherwise a missing file fails).
fn golden(name: &str, bytes: &[u8]) -> Vec<u8> {
    let p = path(name);
    if !p.exists() && std::env::var("GEOKV_WRITE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&p, bytes).unwrap();
    }
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("golden file {}: {e} (GEOKV_WRITE_GOLDEN=1 writes it)", p.display()))
}

/// Asserts that this build encodes `value` exactly as the golden file of this version.
fn same(name: &str, encoded: &[u8]) {
    let stored = golden(name, encoded);
    assert_eq!(
        stored, encoded,
        "{name}: this build encodes differently from the golden file of this version"
    );
}

const NOW: u64 = 1_764_600_000_000;
const T0: u64 = 0x6000_0000_0000_0000;

/// Applies `ops` in turn, each with a later stamp from `node` (acting as `actor`).
fn build(ops: &[(Op, u64, u64)]) -> Record {
    let mut rec: Option<Record> = None;
    for (i, (op, node, actor)) in ops.iter().enumerate() {
        let stamp = Stamp::new(T0 + (i as u64 + 1) * 1_000_000, *node);
        rec = Some(apply_as(rec.as_ref(), op, stamp, *actor, NOW, &Limits::default()).unwrap().record);
    }
    rec.unwrap()
}

fn records() -> Vec<(&'static str, Record)> {
    vec![
        ("register", build(&[(Op::Put { value: b"golden value".to_vec(), ttl_ms: Some(3_600_000) }, 1, 11)])),
        (
            "counter",
            build(&[
                (Op::Increment { delta: 5, ttl_ms: None }, 1, 11),
                (Op::Increment { delta: -2, ttl_ms: None }, 2, 22),
            ]),
        ),
        (
            "set",
            build(&[
                (Op::SetAdd { members: vec![b"a".to_vec(), b"b".to_vec()], ttl_ms: None }, 1, 11),
                (Op::SetRemove { members: vec![b"a".to_vec()] }, 2, 22),
            ]),
        ),
        (
            "tombstone",
            build(&[(Op::Put { value: b"gone".to_vec(), ttl_ms: None }, 1, 11), (Op::Delete, 3, 33)]),
        ),
    ]
}

#[test]
fn stored_records_of_this_version_and_the_previous_one_still_read() {
    for (name, rec) in records() {
        // Version 2, as this build stores it (uncompressed and zstd-compressed).
        let plain = codec::encode(&rec, usize::MAX, 3);
        assert_eq!(plain[0], codec::FORMAT_V2);
        same(&format!("record-v2-{name}.bin"), &plain);
        assert_eq!(codec::decode(&golden(&format!("record-v2-{name}.bin"), &plain)).unwrap(), rec, "{name}");
        let compressed = codec::encode(&rec, 0, 3);
        let stored = golden(&format!("record-v2-{name}-zstd.bin"), &compressed);
        assert_eq!(codec::decode(&stored).unwrap(), rec, "{name} (compressed)");
        // Version 1 (before horizons): read with horizon 0.
        let v1 = RecordV1 {
            kind: rec.kind.clone(),
            live: rec.live.clone(),
            register: rec.register.clone(),
            counter: rec.counter.clone(),
            counter_base: rec.counter_base.clone(),
            set: rec.set.clone(),
            expiry: rec.expiry.clone(),
        };
        let payload = postcard::to_allocvec(&v1).unwrap();
        let head = [codec::FORMAT_V1, 0];
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(&payload);
        let bytes = [&head[..], &crc.finalize().to_le_bytes(), &payload].concat();
        let stored = golden(&format!("record-v1-{name}.bin"), &bytes);
        assert_eq!(codec::decode(&stored).unwrap(), Record { horizon: 0, ..rec }, "{name} (version 1)");
    }
}

/// A counter with idempotent increments (one folded into its actor's entry, one not): version
/// 3, which a record without them is never written as.
#[test]
fn records_with_idempotent_increments_are_version_3() {
    let first = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
    // Applied two minutes and one second before NOW; at NOW actor 11 writes again: it folds
    // its request (the fold is recent, so the id is still remembered) and moves its watermark.
    let at = |ms_before: u64, node: u64| Stamp::new(Stamp::ntp_from_millis(NOW - ms_before), node);
    let run = |rec: Option<&Record>, op: Op, stamp: Stamp, actor: u64, ms_before: u64| {
        apply_as(rec, &op, stamp, actor, NOW - ms_before, &Limits::default()).unwrap().record
    };
    let one = run(None, Op::IncrementOnce { delta: 4, ttl_ms: None, id: first }, at(120_000, 1), 11, 120_000);
    let two = run(Some(&one), Op::IncrementOnce { delta: -1, ttl_ms: None, id: 2 }, at(1_000, 2), 22, 1_000);
    let rec = run(Some(&two), Op::Increment { delta: 1, ttl_ms: None }, at(0, 1), 11, 0);
    assert!(
        rec.onces.get(first).is_some_and(|o| o.folded()) && rec.onces.get(2).is_some_and(|o| !o.folded())
    );
    assert!(rec.settled.contains_key(&11));
    let plain = codec::encode(&rec, usize::MAX, 3);
    assert_eq!(plain[0], codec::FORMAT_V3);
    same("record-v3-counter-once.bin", &plain);
    assert_eq!(codec::decode(&golden("record-v3-counter-once.bin", &plain)).unwrap(), rec);
    let compressed = codec::encode(&rec, 0, 3);
    let stored = golden("record-v3-counter-once-zstd.bin", &compressed);
    assert_eq!(codec::decode(&stored).unwrap(), rec, "compressed");
    // The operation as a coordinator is sent it (a variant after the first six: their
    // encodings, pinned in ops-v1.postcard, are unchanged).
    let op = Op::IncrementOnce { delta: -7, ttl_ms: Some(5), id: first };
    let encoded = postcard::to_allocvec(&op).unwrap();
    same("op-increment-once-v1.postcard", &encoded);
    assert_eq!(postcard::from_bytes::<Op>(&golden("op-increment-once-v1.postcard", &encoded)).unwrap(), op);
}

#[test]
fn replication_batches_of_this_version_still_read() {
    let state = codec::encode(&records()[0].1, usize::MAX, 3);
    let batch = geokv_replication::Batch {
        origin_region: "eu-west".into(),
        origin_node: 1,
        after_seq: 41,
        last_seq: 42,
        hlc: T0,
        deltas: vec![geokv_replication::Delta { key: b"golden".to_vec(), state, stamp: T0 }],
    };
    assert_eq!(geokv_replication::BATCH_FORMAT, 1, "a new batch format needs golden files of its own");
    same("batch-v1.postcard", &postcard::to_allocvec(&batch).unwrap());
    let (wire, _) = batch.encode(3);
    let stored = golden("batch-v1.wire", &wire);
    assert_eq!(geokv_replication::Batch::decode(&stored).unwrap(), batch);
}

#[test]
fn internal_requests_of_this_version_still_read() {
    // Coordinate requests carry an operation, their answers its outcome (postcard).
    let ops = vec![
        Op::Put { value: b"v".to_vec(), ttl_ms: Some(1000) },
        Op::Append { value: b"w".to_vec(), ttl_ms: None },
        Op::Delete,
        Op::Increment { delta: -7, ttl_ms: Some(5) },
        Op::SetAdd { members: vec![b"m".to_vec()], ttl_ms: None },
        Op::SetRemove { members: vec![b"m".to_vec(), b"n".to_vec()] },
    ];
    let encoded = postcard::to_allocvec(&ops).unwrap();
    same("ops-v1.postcard", &encoded);
    assert_eq!(postcard::from_bytes::<Vec<Op>>(&golden("ops-v1.postcard", &encoded)).unwrap(), ops);
    let outcomes = vec![
        OpOutcome::Put,
        OpOutcome::Deleted { existed: true },
        OpOutcome::Appended { len: 9 },
        OpOutcome::Counter { value: -3 },
        OpOutcome::SetChanged { changed: 1, size: 4 },
    ];
    let encoded = postcard::to_allocvec(&outcomes).unwrap();
    same("outcomes-v1.postcard", &encoded);
    assert_eq!(
        postcard::from_bytes::<Vec<OpOutcome>>(&golden("outcomes-v1.postcard", &encoded)).unwrap(),
        outcomes
    );
    // Expire and its outcome: variants after the others (whose encodings are pinned above).
    let expire = (
        Op::Expire { ttl_ms: Some(30_000) },
        Op::Expire { ttl_ms: None },
        OpOutcome::Expired { existed: true },
    );
    let encoded = postcard::to_allocvec(&expire).unwrap();
    same("op-expire-v1.postcard", &encoded);
    assert_eq!(
        postcard::from_bytes::<(Op, Op, OpOutcome)>(&golden("op-expire-v1.postcard", &encoded)).unwrap(),
        expire
    );
    // Gossip identities (foca members, postcard).
    let member = geokv_cluster::MemberInfo {
        id: 3,
        version: 17,
        status: geokv_cluster::Status::Normal,
        region: "us-east".into(),
        client_addr: "10.0.0.3:7400".into(),
        peer_addr: "10.0.0.3:7500".into(),
    };
    let encoded = postcard::to_allocvec(&member).unwrap();
    same("member-v1.postcard", &encoded);
    assert_eq!(
        postcard::from_bytes::<geokv_cluster::MemberInfo>(&golden("member-v1.postcard", &encoded)).unwrap(),
        member
    );
}

/// A register with idempotent appends is format 4 (`appends` after the version 3 layout),
/// which a record without them is never written as; the operation is pinned too.
#[test]
fn records_with_idempotent_appends_are_version_4() {
    let at = |ms_before: u64, node: u64| Stamp::new(Stamp::ntp_from_millis(NOW - ms_before), node);
    let run = |rec: Option<&Record>, op: Op, stamp: Stamp, ms_before: u64| {
        apply_as(rec, &op, stamp, stamp.node, NOW - ms_before, &Limits::default()).unwrap().record
    };
    let first = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
    let one =
        run(None, Op::AppendOnce { value: b"a;".to_vec(), ttl_ms: None, id: first }, at(2_000, 1), 2_000);
    let two = run(
        Some(&one),
        Op::AppendOnce { value: b"b;".to_vec(), ttl_ms: Some(60_000), id: 2 },
        at(1_000, 2),
        1_000,
    );
    let rec = run(Some(&two), Op::Append { value: b"c;".to_vec(), ttl_ms: None }, at(0, 1), 0);
    assert_eq!(rec.register.val, b"a;b;c;");
    assert!(rec.appends.get(first).is_some() && rec.appends.get(2).is_some());
    let plain = codec::encode(&rec, usize::MAX, 3);
    assert_eq!(plain[0], codec::FORMAT_V4);
    same("record-v4-register-appends.bin", &plain);
    assert_eq!(codec::decode(&golden("record-v4-register-appends.bin", &plain)).unwrap(), rec);
    let compressed = codec::encode(&rec, 0, 3);
    let stored = golden("record-v4-register-appends-zstd.bin", &compressed);
    assert_eq!(codec::decode(&stored).unwrap(), rec, "compressed");
    let op = Op::AppendOnce { value: b"tail".to_vec(), ttl_ms: Some(5), id: first };
    let encoded = postcard::to_allocvec(&op).unwrap();
    same("op-append-once-v1.postcard", &encoded);
    assert_eq!(postcard::from_bytes::<Op>(&golden("op-append-once-v1.postcard", &encoded)).unwrap(), op);
}
