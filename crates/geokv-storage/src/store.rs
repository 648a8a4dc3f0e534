//! The store seam: what the replica protocol needs from a node's store ([`ReplicaStore`]),
//! with two implementations, the RocksDB [`crate::Engine`] and the in-memory
//! [`crate::MemStore`], and one [`conformance`] suite both pass.

use geokv_core::{CoreError, NodeId, Record};

use crate::{LogEntry, ScanPage, StorageError, Update};

/// A node's store as the replica protocol uses it: key states, hints for unreachable
/// replicas, the change log the cross-region replicator tails, and its cursors.
pub trait ReplicaStore {
    /// The stored state of `key` (tombstones and expired states included).
    fn get(&self, key: &[u8]) -> Result<Option<Record>, StorageError>;

    /// Reads the state of `key`, lets `f` decide the new state, and stores it with a
    /// change-log entry (shipped to other regions). Writers of one key are serialized.
    fn update<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&Record>) -> Result<Update<T>, CoreError>,
    ) -> Result<T, StorageError>;

    /// Merges a replica's state of `key` into the stored one; whether it changed. A change is
    /// logged; `ship` says whether the cross-region replicator ships it.
    fn merge_as(&self, key: &[u8], incoming: &Record, ship: bool) -> Result<bool, StorageError>;

    /// Keeps `state` as a durable hint for `target` (merged with a hint already kept).
    fn put_hint(&self, target: NodeId, key: &[u8], state: &Record) -> Result<(), StorageError>;

    /// Nodes for which hints are kept, in order.
    fn hint_targets(&self) -> Result<Vec<NodeId>, StorageError>;

    /// Up to `max` hints kept for `target`, in key order, after key `after` if given.
    fn hints_for(
        &self,
        target: NodeId,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>, StorageError>;

    /// Drops a hint once handed off, unless it changed since (then `false`).
    fn remove_hint(&self, target: NodeId, key: &[u8], handed_off: &Record) -> Result<bool, StorageError>;

    /// Drops every hint kept for `target` (a node that left); returns how many.
    fn drop_hints_for(&self, target: NodeId) -> Result<u64, StorageError>;

    /// The highest sequence number below which every change-log entry is committed.
    fn committed_seq(&self) -> u64;

    /// Change-log entries after `after`, up to the committed sequence number, at most `max`.
    fn log_since(&self, after: u64, max: usize) -> Result<Vec<LogEntry>, StorageError>;

    /// Saves how far tailer `name` consumed the change log.
    fn set_cursor(&self, name: &str, seq: u64) -> Result<(), StorageError>;

    /// Tailer `name`'s saved cursor (0 if none).
    fn cursor(&self, name: &str) -> Result<u64, StorageError>;

    /// One page of stored states (tombstones and expired states included unless `size`
    /// skips them) from `start` (inclusive) whose keys begin with `prefix`: at most `limit`
    /// entries and about `max_bytes`; `size` gives an entry's response size or `None` to
    /// step over it.
    fn scan(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        max_bytes: usize,
        size: impl Fn(&[u8], &Record) -> Option<usize>,
    ) -> Result<ScanPage, StorageError>;

    /// The grace period before a tombstone or an expired key is purged (see [`crate::purge`]).
    fn grace_ms(&self) -> u64;

    /// `limits.max_record_bytes`: the size rule ([`crate::size`]) client writes are held to.
    fn max_record_bytes(&self) -> usize;

    /// Removes `key`'s state for good (or, for an expired key, replaces it by a marker of its
    /// deadline) if [`crate::purge::plan`] says so at `now_ms`; whether it did.
    fn purge_if_due(&self, key: &[u8], now_ms: u64) -> Result<bool, StorageError>;
}

impl ReplicaStore for crate::Engine {
    fn get(&self, key: &[u8]) -> Result<Option<Record>, StorageError> {
        crate::Engine::get(self, key)
    }

    fn update<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&Record>) -> Result<Update<T>, CoreError>,
    ) -> Result<T, StorageError> {
        crate::Engine::update(self, key, f)
    }

    fn merge_as(&self, key: &[u8], incoming: &Record, ship: bool) -> Result<bool, StorageError> {
        crate::Engine::merge_as(self, key, incoming, ship)
    }

    fn put_hint(&self, target: NodeId, key: &[u8], state: &Record) -> Result<(), StorageError> {
        crate::Engine::put_hint(self, target, key, state)
    }

    fn hint_targets(&self) -> Result<Vec<NodeId>, StorageError> {
        crate::Engine::hint_targets(self)
    }

    fn hints_for(
        &self,
        target: NodeId,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>, StorageError> {
        crate::Engine::hints_for(self, target, after, max)
    }

    fn remove_hint(&self, target: NodeId, key: &[u8], handed_off: &Record) -> Result<bool, StorageError> {
        crate::Engine::remove_hint(self, target, key, handed_off)
    }

    fn drop_hints_for(&self, target: NodeId) -> Result<u64, StorageError> {
        crate::Engine::drop_hints_for(self, target)
    }

    fn committed_seq(&self) -> u64 {
        crate::Engine::committed_seq(self)
    }

    fn log_since(&self, after: u64, max: usize) -> Result<Vec<LogEntry>, StorageError> {
        crate::Engine::log_since(self, after, max)
    }

    fn set_cursor(&self, name: &str, seq: u64) -> Result<(), StorageError> {
        crate::Engine::set_cursor(self, name, seq)
    }

    fn cursor(&self, name: &str) -> Result<u64, StorageError> {
        crate::Engine::cursor(self, name)
    }

    fn scan(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        max_bytes: usize,
        size: impl Fn(&[u8], &Record) -> Option<usize>,
    ) -> Result<ScanPage, StorageError> {
        crate::Engine::scan(self, start, prefix, limit, max_bytes, size)
    }

    fn grace_ms(&self) -> u64 {
        crate::Engine::grace_ms(self)
    }

    fn max_record_bytes(&self) -> usize {
        crate::Engine::max_record_bytes(self)
    }

    fn purge_if_due(&self, key: &[u8], now_ms: u64) -> Result<bool, StorageError> {
        crate::Engine::purge_if_due(self, key, now_ms)
    }
}

/// The behaviour every [`ReplicaStore`] must have. Each function takes a fresh, empty store
/// and panics with what broke; [`run_all`](conformance::run_all) runs them all.
pub mod conformance {
    use geokv_core::{apply, Crdt, Limits, Op, Record, Stamp};

    use super::ReplicaStore;
    use crate::Update;

    const NOW: u64 = 1_700_000_000_000;

    /// A state of `key` written by `node` at HLC time `t` (NTP64 milliseconds after `NOW`).
    fn state(op: &Op, node: u64, t: u64) -> Record {
        let stamp = Stamp::new(Stamp::ntp_from_millis(NOW + t), node);
        apply(None, op, stamp, NOW, &Limits::default()).expect("applies").record
    }

    fn add(member: &str, node: u64, t: u64) -> Record {
        state(&Op::SetAdd { members: vec![member.as_bytes().to_vec()], ttl_ms: None }, node, t)
    }

    /// Runs every check, each on a fresh store from `fresh`.
    pub fn run_all<S: ReplicaStore>(fresh: impl Fn() -> S) {
        updates_store_what_they_decide(&fresh());
        merges_are_idempotent_and_keep_both_sides(&fresh());
        changes_are_logged_in_order_and_unchanged_merges_are_not(&fresh());
        hints_merge_page_and_drop_only_when_unchanged(&fresh());
        cursors_start_at_zero_and_keep_what_was_saved(&fresh());
        scans_page_by_prefix_limit_and_size(&fresh());
        purges_tombstones_and_expired_keys_after_the_grace_period(&fresh());
        writes_are_held_to_the_size_limit_and_merges_are_not(&fresh());
    }

    pub fn updates_store_what_they_decide<S: ReplicaStore>(s: &S) {
        assert_eq!(s.get(b"k").unwrap(), None, "a fresh store holds nothing");
        let rec = state(&Op::Put { value: b"v".to_vec(), ttl_ms: None }, 1, 1);
        let out = s.update(b"k", |cur| {
            assert!(cur.is_none());
            Ok(Update { record: Some(rec.clone()), out: 7 })
        });
        assert_eq!(out.unwrap(), 7);
        assert_eq!(s.get(b"k").unwrap(), Some(rec.clone()));
        s.update(b"k", |cur| {
            assert_eq!(cur, Some(&rec), "an update sees the stored state");
            Ok(Update { record: None, out: () })
        })
        .unwrap();
        assert_eq!(s.get(b"k").unwrap(), Some(rec), "an update that decides nothing stores nothing");
        let refused: Result<(), _> =
            s.update(b"k", |_| Err(geokv_core::CoreError::InvalidArgument("no".into())));
        assert!(refused.is_err(), "a refused update is an error");
    }

    pub fn merges_are_idempotent_and_keep_both_sides<S: ReplicaStore>(s: &S) {
        let (a, b) = (add("a", 1, 1), add("b", 2, 2));
        assert!(s.merge_as(b"set", &a, false).unwrap(), "merging into nothing stores the state");
        assert!(!s.merge_as(b"set", &a, false).unwrap(), "merging the same state again changes nothing");
        assert!(s.merge_as(b"set", &b, false).unwrap());
        let mut both = a.clone();
        both.merge(&b);
        assert_eq!(s.get(b"set").unwrap(), Some(both.clone()), "a merge keeps both sides");
        assert!(!s.merge_as(b"set", &a, false).unwrap(), "an older state changes nothing");
        assert_eq!(s.get(b"set").unwrap(), Some(both));
    }

    pub fn changes_are_logged_in_order_and_unchanged_merges_are_not<S: ReplicaStore>(s: &S) {
        let before = s.committed_seq();
        let put = state(&Op::Put { value: b"1".to_vec(), ttl_ms: None }, 1, 1);
        s.update(b"x", |_| Ok(Update { record: Some(put.clone()), out: () })).unwrap();
        s.merge_as(b"y", &add("m", 2, 2), true).unwrap();
        s.merge_as(b"z", &add("n", 3, 3), false).unwrap();
        s.merge_as(b"z", &add("n", 3, 3), true).unwrap();
        let log = s.log_since(before, 100).unwrap();
        let seen: Vec<(Vec<u8>, bool)> = log.iter().map(|e| (e.key.clone(), e.ship)).collect();
        assert_eq!(seen, vec![(b"x".to_vec(), true), (b"y".to_vec(), true), (b"z".to_vec(), false)]);
        assert!(log.windows(2).all(|w| w[0].seq < w[1].seq), "sequence numbers increase");
        assert_eq!(log[0].version, put.version(), "an entry carries the version written");
        assert_eq!(s.committed_seq(), log[2].seq);
        assert_eq!(s.log_since(log[0].seq, 1).unwrap(), vec![log[1].clone()], "log_since pages");
        assert!(s.log_since(log[2].seq, 10).unwrap().is_empty());
    }

    pub fn hints_merge_page_and_drop_only_when_unchanged<S: ReplicaStore>(s: &S) {
        assert!(s.hint_targets().unwrap().is_empty());
        s.put_hint(9, b"k1", &add("a", 1, 1)).unwrap();
        s.put_hint(9, b"k1", &add("b", 1, 2)).unwrap();
        s.put_hint(9, b"k2", &add("c", 1, 3)).unwrap();
        s.put_hint(4, b"k1", &add("d", 1, 4)).unwrap();
        assert_eq!(s.hint_targets().unwrap(), vec![4, 9]);
        let mut merged = add("a", 1, 1);
        merged.merge(&add("b", 1, 2));
        let page = s.hints_for(9, None, 1).unwrap();
        assert_eq!(page, vec![(b"k1".to_vec(), merged.clone())], "hints for a key merge");
        let rest = s.hints_for(9, Some(b"k1"), 10).unwrap();
        assert_eq!(rest.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), vec![b"k2".to_vec()]);
        assert!(!s.remove_hint(9, b"k1", &add("a", 1, 1)).unwrap(), "a hint that changed is kept");
        assert!(s.remove_hint(9, b"k1", &merged).unwrap());
        assert_eq!(s.hints_for(9, None, 10).unwrap().len(), 1);
        assert_eq!(s.get(b"k1").unwrap(), None, "hints are not the node's own states");
        assert_eq!(s.drop_hints_for(9).unwrap(), 1);
        assert_eq!(s.hint_targets().unwrap(), vec![4], "only the hints for the node that left go");
    }

    pub fn cursors_start_at_zero_and_keep_what_was_saved<S: ReplicaStore>(s: &S) {
        assert_eq!(s.cursor("to-eu").unwrap(), 0);
        s.set_cursor("to-eu", 42).unwrap();
        s.set_cursor("to-us", 7).unwrap();
        assert_eq!((s.cursor("to-eu").unwrap(), s.cursor("to-us").unwrap()), (42, 7));
    }

    pub fn scans_page_by_prefix_limit_and_size<S: ReplicaStore>(s: &S) {
        let put = |v: &str, t| state(&Op::Put { value: v.as_bytes().to_vec(), ttl_ms: None }, 1, t);
        for (i, k) in ["a1", "b1", "b2", "b3", "b4", "c1"].into_iter().enumerate() {
            s.merge_as(k.as_bytes(), &put(k, i as u64 + 1), false).unwrap();
        }
        let keys = |p: &crate::ScanPage| p.items.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        let all = s.scan(b"", b"b", 10, usize::MAX, |_, _| Some(1)).unwrap();
        assert_eq!(keys(&all), vec![b"b1".to_vec(), b"b2".to_vec(), b"b3".to_vec(), b"b4".to_vec()]);
        assert_eq!(all.resume_after, None, "a page that reached the prefix's end says so");
        let first = s.scan(b"b2", b"b", 2, usize::MAX, |_, _| Some(1)).unwrap();
        assert_eq!(
            keys(&first),
            vec![b"b2".to_vec(), b"b3".to_vec()],
            "from start, inclusive, at most limit"
        );
        assert_eq!(first.resume_after, Some(b"b3".to_vec()), "a full page resumes after its last key");
        let small = s.scan(b"", b"b", 10, 2, |_, _| Some(1)).unwrap();
        assert_eq!(keys(&small), vec![b"b1".to_vec(), b"b2".to_vec()], "about max_bytes per page");
        let one = s.scan(b"", b"b", 10, 0, |_, _| Some(5)).unwrap();
        assert_eq!(keys(&one).len(), 1, "a page holds at least one entry");
        let skip = s.scan(b"", b"b", 10, usize::MAX, |k, _| (k != b"b2").then_some(1)).unwrap();
        assert_eq!(keys(&skip), vec![b"b1".to_vec(), b"b3".to_vec(), b"b4".to_vec()], "skipped keys");
        assert_eq!(skip.items[0].1, put("b1", 2), "a page carries the stored states");
    }

    pub fn purges_tombstones_and_expired_keys_after_the_grace_period<S: ReplicaStore>(s: &S) {
        let grace = s.grace_ms();
        let put = state(&Op::Put { value: b"v".to_vec(), ttl_ms: None }, 1, 1);
        let at = |t: u64| Stamp::new(Stamp::ntp_from_millis(NOW + t), 1);
        let gone =
            apply(Some(&put), &Op::Delete, at(2), NOW + 2, &Limits::default()).expect("applies").record;
        s.merge_as(b"live", &put, false).unwrap();
        s.merge_as(b"gone", &gone, false).unwrap();
        assert!(!s.purge_if_due(b"live", NOW + 10 * grace).unwrap(), "a live key is never purged");
        assert!(!s.purge_if_due(b"gone", NOW + 1 + grace).unwrap(), "a tombstone is kept its grace period");
        assert!(s.get(b"gone").unwrap().is_some());
        assert!(s.purge_if_due(b"gone", NOW + 2 + grace).unwrap(), "then removed");
        assert_eq!(s.get(b"gone").unwrap(), None);
        assert!(!s.purge_if_due(b"absent", NOW).unwrap());
        let ttl = apply(
            None,
            &Op::Put { value: b"t".to_vec(), ttl_ms: Some(5) },
            at(3),
            NOW + 3,
            &Limits::default(),
        )
        .expect("applies")
        .record;
        s.merge_as(b"ttl", &ttl, false).unwrap();
        assert!(s.purge_if_due(b"ttl", NOW + 8 + grace).unwrap(), "an expired key is replaced");
        let marker = s.get(b"ttl").unwrap().expect("by a marker");
        assert!(marker.is_marker(), "{marker:?}");
        assert!(s.purge_if_due(b"ttl", NOW + 8 + 2 * grace).unwrap(), "which goes a grace period later");
        assert_eq!(s.get(b"ttl").unwrap(), None);
    }

    /// The size rule ([`crate::size`]): a client write may not grow a state past
    /// `max_record_bytes` (nothing is stored), a merge of two states within it is stored
    /// whatever its size, and a write that shrinks an oversized state is taken.
    pub fn writes_are_held_to_the_size_limit_and_merges_are_not<S: ReplicaStore>(s: &S) {
        let limit = s.max_record_bytes();
        assert!(limit <= 64 * 1024, "run the conformance suite with a small limits.max_record_bytes");
        let member = |prefix: &str, i: usize| format!("{prefix}-{i:06}").into_bytes();
        // The largest set of one writer's members that stays within the limit.
        let within = |prefix: &str, node: u64| {
            let mut n = 1;
            loop {
                let members = (0..n + 1).map(|i| member(prefix, i)).collect();
                let rec = state(&Op::SetAdd { members, ttl_ms: None }, node, 1);
                if crate::codec::serialize(&rec).len() > limit {
                    let members = (0..n).map(|i| member(prefix, i)).collect();
                    return state(&Op::SetAdd { members, ttl_ms: None }, node, 1);
                }
                n += 1;
            }
        };
        let (a, b) = (within("a", 1), within("b", 2));
        s.merge_as(b"big", &a, false).unwrap();
        // A client write growing the state past the limit is refused and stores nothing.
        let seq = s.committed_seq();
        let grown = s.update(b"big", |cur| {
            let stamp = Stamp::new(Stamp::ntp_from_millis(NOW + 5), 1);
            let op = Op::SetAdd { members: vec![member("c", 0)], ttl_ms: None };
            let a = apply(cur, &op, stamp, NOW, &Limits::default())?;
            Ok(Update { record: Some(a.record), out: () })
        });
        assert!(matches!(grown, Err(crate::StorageError::RecordTooLarge { .. })), "{grown:?}");
        assert_eq!(s.get(b"big").unwrap(), Some(a.clone()), "a refused write stores nothing");
        assert_eq!(s.committed_seq(), seq, "and logs nothing");
        // Two states within the limit merge to more: stored.
        assert!(s.merge_as(b"big", &b, false).unwrap());
        let mut both = a.clone();
        both.merge(&b);
        assert!(crate::codec::serialize(&both).len() > limit);
        assert_eq!(s.get(b"big").unwrap(), Some(both.clone()), "an oversized merge is stored");
        // A removal shrinks the oversized state: taken.
        s.update(b"big", |cur| {
            let stamp = Stamp::new(Stamp::ntp_from_millis(NOW + 6), 1);
            let a =
                apply(cur, &Op::SetRemove { members: vec![member("a", 0)] }, stamp, NOW, &Limits::default())?;
            Ok(Update { record: Some(a.record), out: () })
        })
        .expect("a write that shrinks an oversized state is taken");
    }
}
