//! A node's grouped writes: what goes to the writer thread together is one commit, and a
//! write's base is checked as a replica's state is.

use std::sync::Arc;

use geokv_core::{apply, Limits, Op, Record, Stamp, View};
use geokv_storage::StorageError;

use super::LocalWrite;
use crate::{Node, ServerConfig};

fn open(dir: &std::path::Path) -> Node {
    Node::open(&ServerConfig::new(1, dir.to_path_buf()), Arc::new(crate::SystemClock)).unwrap()
}

/// A register written by node `by` at `ms` (Unix milliseconds).
fn register(value: &[u8], ms: u64, by: u64) -> Record {
    let op = Op::Put { value: value.to_vec(), ttl_ms: None };
    apply(None, &op, Stamp::new(Stamp::ntp_from_millis(ms), by), 0, &Limits::default()).unwrap().record
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn value(node: &Node, key: &[u8]) -> Option<Vec<u8>> {
    match node.get(key, node.now_ms()).unwrap()?.view(node.now_ms())? {
        View::Register(v) => Some(v),
        other => panic!("not a register: {other:?}"),
    }
}

/// Replica states handed over together (`Node::merge_all`, which serves a `MergeMany`) are
/// one commit (one WAL sync), not one each. 600 states: more than the writer thread takes in
/// one group when they come one by one (512).
#[tokio::test]
async fn a_replicas_merges_handed_over_together_are_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path());
    let commits = || node.metrics().commit_seconds.get_sample_count();
    let before = commits();
    let states =
        (0..600).map(|i| (format!("k{i}").into_bytes(), register(b"v", now_ms(), 2), false)).collect();
    for changed in futures::future::join_all(node.merge_all(states)).await {
        assert!(changed.unwrap(), "each state is new here");
    }
    assert_eq!(commits() - before, 1, "600 merges handed over together, one commit");
    for i in 0..600 {
        assert_eq!(value(&node, format!("k{i}").as_bytes()).as_deref(), Some(&b"v"[..]));
    }
}

/// The base a write's first read found is merged in the write's own commit: checked as a
/// replica's state is (a stamp beyond `max_clock_drift_ms` is refused and nothing of the write
/// is stored), and otherwise the operation applies on it.
#[tokio::test]
async fn a_writes_base_stamped_beyond_the_drift_bound_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let node = open(dir.path());
    let append = Op::Append { value: b"+x".to_vec(), ttl_ms: None };
    let ahead = register(b"future", now_ms() + 3_600_000, 2);
    let refused =
        node.write_on(LocalWrite { key: b"k".to_vec(), base: Some(ahead), op: append.clone() }).await;
    assert!(matches!(refused, Err(StorageError::ClockDrift { .. })), "{refused:?}");
    assert_eq!(value(&node, b"k"), None, "nothing of a refused write is stored");
    // Within the bound: the operation applies on the base, in one commit.
    let commits = node.metrics().commit_seconds.get_sample_count();
    let base = register(b"old", now_ms(), 2);
    let (_, rec) =
        node.write_on(LocalWrite { key: b"k".to_vec(), base: Some(base), op: append }).await.unwrap();
    assert_eq!(rec.view(node.now_ms()), Some(View::Register(b"old+x".to_vec())));
    assert_eq!(value(&node, b"k").as_deref(), Some(&b"old+x"[..]));
    assert_eq!(node.metrics().commit_seconds.get_sample_count() - commits, 1);
}
