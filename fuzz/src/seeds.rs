//! The committed seed corpus (`fuzz/corpus/<target>/`): real encodings of values and batches,
//! and the repository's topology and residency files, made here so they can be regenerated.
//!
//! Regenerate (after a format change) with
//! `cargo test --manifest-path fuzz/Cargo.toml -- --ignored write_seed_corpus`.
//! zstd and postcard are deterministic, so the output only changes when a format does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use geokv_core::{apply, Limits, Op, Record, Stamp};
use geokv_replication::{Batch, Delta};
use geokv_storage::codec;

use crate::config::SEPARATOR;

/// `(target, file name) -> contents`.
type Corpus = BTreeMap<(&'static str, String), Vec<u8>>;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// A key's state after `ops`, applied one after another by node 7 at increasing times.
fn record(ops: &[Op]) -> Record {
    let mut rec: Option<Record> = None;
    for (i, op) in ops.iter().enumerate() {
        let t = 1_000 + i as u64;
        let applied = apply(rec.as_ref(), op, Stamp::new(t << 32, 7), t, &Limits::default());
        rec = Some(applied.expect("seed operations apply").record);
    }
    rec.unwrap_or_default()
}

/// A key's state after each `(op, node, now_ms)` in turn: written by several nodes, with time
/// jumps (a minute: idempotent increments fold).
fn record_by(steps: &[(Op, u64, u64)]) -> Record {
    let mut rec: Option<Record> = None;
    for (i, (op, node, now_ms)) in steps.iter().enumerate() {
        let t = (now_ms + i as u64) << 20;
        let applied = apply(rec.as_ref(), op, Stamp::new(t, *node), *now_ms, &Limits::default());
        rec = Some(applied.expect("seed operations apply").record);
    }
    rec.unwrap_or_default()
}

fn put(value: &[u8], ttl_ms: Option<u64>) -> Op {
    Op::Put { value: value.to_vec(), ttl_ms }
}

fn members(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|m| m.as_bytes().to_vec()).collect()
}

fn sample_records() -> Vec<(&'static str, Record)> {
    let incr = |delta| Op::Increment { delta, ttl_ms: None };
    let once = |delta, id| Op::IncrementOnce { delta, ttl_ms: None, id };
    let minute = 61_000;
    vec![
        ("empty", Record::default()),
        // Idempotent increments (value format 3): copies by id from two nodes, then folded a
        // minute later, then deleted with ids observed.
        ("counter-once", record_by(&[(once(2, 11), 7, 1_000), (once(2, 11), 8, 1_001), (once(5, 12), 8, 1_002)])),
        (
            "counter-once-folded",
            record_by(&[
                (once(2, 11), 7, 1_000),
                (once(3, 12), 8, 1_001),
                (incr(1), 7, 1_000 + minute),
                (incr(1), 8, 1_001 + minute),
            ]),
        ),
        ("counter-once-deleted", record_by(&[(once(4, 13), 7, 1_000), (Op::Delete, 8, 1_001)])),
        ("register-persisted", record(&[put(b"kept", Some(30_000)), Op::Expire { ttl_ms: None }])),
        ("register", record(&[put(b"hello", None)])),
        ("register-ttl", record(&[put(b"session", Some(30_000))])),
        ("register-large", record(&[put(&b"geokv ".repeat(400), None)])),
        ("appended", record(&[put(b"a", None), Op::Append { value: b"bc".to_vec(), ttl_ms: Some(5) }])),
        // Idempotent appends (value format 4): two ids remembered next to the register.
        (
            "appended-once",
            record(&[
                put(b"a", None),
                Op::AppendOnce { value: b"b;".to_vec(), ttl_ms: None, id: 21 },
                Op::AppendOnce { value: b"c;".to_vec(), ttl_ms: Some(5), id: 22 },
            ]),
        ),
        ("tombstone", record(&[put(b"gone", None), Op::Delete])),
        ("counter", record(&[incr(5), incr(-2), incr(i64::MIN + 3)])),
        ("counter-reset", record(&[incr(3), Op::Delete, incr(1)])),
        ("set", record(&[Op::SetAdd { members: members(&["a", "b", "c"]), ttl_ms: None }])),
        (
            "set-removed",
            record(&[
                Op::SetAdd { members: members(&["x", "y"]), ttl_ms: Some(60_000) },
                Op::SetRemove { members: members(&["x"]) },
            ]),
        ),
    ]
}

fn value_seeds(out: &mut Corpus) {
    for (name, rec) in sample_records() {
        let plain = codec::encode(&rec, usize::MAX, 1);
        let compressed = codec::encode(&rec, 0, 3);
        if compressed != plain {
            out.insert(("value_decode", format!("{name}-zstd")), compressed);
        }
        out.insert(("value_decode", name.to_string()), plain);
    }
}

fn batch(deltas: usize) -> Batch {
    let states: Vec<Vec<u8>> = sample_records().iter().map(|(_, r)| codec::encode(r, 1024, 3)).collect();
    Batch {
        origin_region: "eu-west".into(),
        origin_node: 3,
        after_seq: 41,
        last_seq: 41 + deltas as u64,
        hlc: 7 << 40,
        deltas: (0..deltas)
            .map(|i| Delta {
                key: format!("user:{i}").into_bytes(),
                state: states[i % states.len()].clone(),
                stamp: (i as u64) << 32,
            })
            .collect(),
    }
}

/// Each batch twice: its wire bytes, and its uncompressed postcard bytes (see `crate::batch`).
fn batch_seeds(out: &mut Corpus) {
    for n in [0, 1, 3, 12] {
        let b = batch(n);
        out.insert(("batch_decode", format!("wire-{n}-deltas")), b.encode(3).0);
        let (wire, raw_len) = b.encode(1);
        let raw = zstd::bulk::decompress(&wire, raw_len).expect("own encoding");
        out.insert(("batch_decode", format!("raw-{n}-deltas")), raw);
    }
}

fn config_seeds(out: &mut Corpus) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |name: &str| std::fs::read_to_string(repo.join("topology").join(name)).expect("topology file");
    let (three, policy) = (read("three-regions.toml"), read("residency.toml"));
    for name in ["one-region.toml", "three-regions.toml", "docker-three-regions.toml", "residency.toml"] {
        out.insert(("config_parse", name.to_string()), read(name).into_bytes());
    }
    let mut combined = |name: &str, policy: &str| {
        out.insert(("config_parse", name.to_string()), format!("{three}{SEPARATOR}{policy}").into_bytes());
    };
    combined("three-regions+residency", &policy);
    combined(
        "three-regions+min-regions",
        "min_regions = 2\n[[rules]]\nprefix = \"\"\nregions = [\"eu-west\", \"us-east\"]\n\
         [[rules]]\nname = \"sg\"\nprefix = \"sg:\"\njurisdictions = [\"sg\"]\nmin_regions = 1\n",
    );
    combined(
        "three-regions+fence",
        "[[rules]]\nprefix = \"\"\nfence = [[-30.0, 30.0], [150.0, 30.0], [150.0, -10.0], [60.0, 20.0], [-30.0, -10.0]]\n\
         on_foreign = \"forward\"\n",
    );
}

fn generate() -> Corpus {
    let mut out = Corpus::new();
    value_seeds(&mut out);
    batch_seeds(&mut out);
    config_seeds(&mut out);
    out
}

fn committed() -> Corpus {
    let mut out = Corpus::new();
    for target in ["value_decode", "batch_decode", "config_parse"] {
        for entry in std::fs::read_dir(corpus_dir().join(target)).expect("corpus directory") {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().expect("file name").to_string_lossy().into_owned();
            out.insert((target, name), std::fs::read(&path).expect("corpus file"));
        }
    }
    out
}

#[test]
#[ignore = "writes fuzz/corpus; run it to regenerate the seeds"]
fn write_seed_corpus() {
    for target in ["value_decode", "batch_decode", "config_parse"] {
        let dir = corpus_dir().join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create corpus directory");
    }
    for ((target, name), bytes) in generate() {
        std::fs::write(corpus_dir().join(target).join(name), bytes).expect("write seed");
    }
}

#[test]
fn committed_corpus_is_what_the_generator_writes() {
    let (committed, generated) = (committed(), generate());
    assert_eq!(committed.keys().collect::<Vec<_>>(), generated.keys().collect::<Vec<_>>());
    for (name, bytes) in &generated {
        assert!(committed[name] == *bytes, "{name:?} differs; run write_seed_corpus");
    }
}

#[test]
fn seeds_are_valid_inputs_and_pass_the_checks() {
    for ((target, name), bytes) in committed() {
        match target {
            "value_decode" => {
                assert!(codec::decode(&bytes).is_ok(), "{name}");
                crate::value::check(&bytes);
            }
            "batch_decode" => {
                let wire = if name.starts_with("raw-") {
                    zstd::bulk::compress(&bytes, 1).unwrap()
                } else {
                    bytes.clone()
                };
                assert!(Batch::decode(&wire).is_ok(), "{name}");
                crate::batch::check(&bytes);
            }
            _ => crate::config::check(&bytes),
        }
    }
}
