//! Fixtures for the handler tests.

use geokv_core::{apply, Limits, NodeId, Op, Record, Stamp};
use geokv_topology::Ring;

use crate::Replicas;

pub fn ring() -> Ring {
    Ring::new([1, 2, 3, 4], 16)
}

/// A key and its three home replicas on [`ring`].
pub fn key_and_home() -> (Vec<u8>, Vec<NodeId>) {
    let key = b"key".to_vec();
    let home = ring().preference_list(&key, 3);
    (key, home)
}

pub fn replicas_at(me: NodeId, key: &[u8], healthy: impl Fn(NodeId) -> bool) -> Replicas {
    Replicas::new(me, &ring(), 3, key, healthy, [])
}

/// A counter incremented by `delta` as `node`.
pub fn counter(node: NodeId, delta: i64) -> Record {
    let op = Op::Increment { delta, ttl_ms: None };
    apply(None, &op, Stamp::new(1_000 + delta as u64, node), 0, &Limits::default()).expect("applies").record
}
