//! An in-memory [`ReplicaStore`]: the store of the simulator's nodes and of tests that need a
//! replica's store without a disk. Same semantics as the RocksDB engine for everything the
//! protocol uses (the conformance suite checks it), the size rule ([`crate::size`]) and the
//! admission check ([`MemStore::set_admission`]) included; no stamp checks, no TTL index,
//! nothing survives the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use geokv_core::{CoreError, Crdt, NodeId, Record};

use crate::engine::{Admission, EraseReport};
use crate::purge::Purge;
use crate::{LogEntry, ReplicaStore, ScanPage, StorageError, Update};

#[derive(Default)]
struct Inner {
    data: BTreeMap<Vec<u8>, Record>,
    hints: BTreeMap<(NodeId, Vec<u8>), Record>,
    log: Vec<LogEntry>,
    last_seq: u64,
    cursors: BTreeMap<String, u64>,
}

/// A node's store in memory.
pub struct MemStore {
    inner: Mutex<Inner>,
    /// The grace period before a tombstone or an expired key is purged.
    grace_ms: u64,
    /// `limits.max_record_bytes`: client writes may not grow a state past it.
    max_record_bytes: usize,
    /// Merged states stored although over `max_record_bytes`.
    oversized_merges: std::sync::atomic::AtomicU64,
    /// Which keys may be stored at all (as [`crate::Engine::set_admission`]).
    admission: Option<Admission>,
}

impl Default for MemStore {
    fn default() -> Self {
        let cfg = crate::StorageConfig::default();
        MemStore {
            inner: Mutex::default(),
            grace_ms: cfg.tombstone_grace_secs.saturating_mul(1000),
            max_record_bytes: cfg.max_record_bytes,
            oversized_merges: Default::default(),
            admission: None,
        }
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// A store that purges tombstones and expired keys `grace_ms` after their time.
    pub fn with_grace_ms(grace_ms: u64) -> MemStore {
        MemStore { grace_ms, ..MemStore::default() }
    }

    /// The same store with `limits.max_record_bytes` set to `bytes`.
    pub fn with_max_record_bytes(self, bytes: usize) -> MemStore {
        MemStore { max_record_bytes: bytes, ..self }
    }

    /// Installs the check every write of a key (client write, merge, hint) passes before
    /// anything is stored, as the engine's (a residency policy).
    pub fn set_admission(&mut self, check: Admission) {
        self.admission = Some(check);
    }

    fn admit(&self, key: &[u8]) -> Result<(), StorageError> {
        match &self.admission {
            Some(check) => check(key).map_err(|reason| StorageError::NotAdmitted {
                key: String::from_utf8_lossy(key).into_owned(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Removes every trace of the keys `doomed` picks: states (tombstones included), change-log
    /// entries and hints, as [`crate::Engine::erase_where`].
    pub fn erase_where(&self, doomed: impl Fn(&[u8]) -> bool) -> EraseReport {
        let mut i = self.lock();
        let mut report = EraseReport::default();
        let before = (i.data.len(), i.log.len(), i.hints.len());
        i.data.retain(|k, _| !doomed(k));
        i.log.retain(|e| !doomed(&e.key));
        i.hints.retain(|(_, k), _| !doomed(k));
        report.keys = (before.0 - i.data.len()) as u64;
        report.log_entries = (before.1 - i.log.len()) as u64;
        report.hints = (before.2 - i.hints.len()) as u64;
        report
    }

    /// Logs `key`'s current state again for shipping, as [`crate::Engine::reship`]. Returns
    /// whether the key had a state.
    pub fn reship(&self, key: &[u8]) -> bool {
        let mut i = self.lock();
        let Some(rec) = i.data.get(key).cloned() else { return false };
        i.store(key, rec, true);
        true
    }

    /// How many merged states were stored although over `max_record_bytes`.
    pub fn oversized_merges(&self) -> u64 {
        self.oversized_merges.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks a new state of `key` against the size rule, counting an oversized merge.
    fn fits(&self, new: &Record, old: Option<&Record>, merge: bool) -> Result<(), StorageError> {
        let len = crate::codec::serialize(new).len();
        if crate::size::check(len, old, self.max_record_bytes, merge)? == crate::size::Fits::OversizedMerge {
            self.oversized_merges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// The HLC time (Unix milliseconds) of the oldest change a tailer has not consumed, as
    /// the engine's: from the smallest saved cursor.
    fn unshipped_since_ms(i: &Inner) -> Option<u64> {
        let floor = i.cursors.values().copied().min()?;
        i.log.iter().find(|e| e.seq > floor).map(|e| e.version.unix_millis())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every stored state, in key order.
    pub fn states(&self) -> Vec<(Vec<u8>, Record)> {
        self.lock().data.iter().map(|(k, r)| (k.clone(), r.clone())).collect()
    }

    /// Whether any hint is kept.
    pub fn has_hints(&self) -> bool {
        !self.lock().hints.is_empty()
    }

    /// Drops `key`'s state without a trace (for tests that need a store that lost a key).
    pub fn forget(&self, key: &[u8]) {
        self.lock().data.remove(key);
    }

    /// Forgets everything (a wiped disk); sequence numbers go on from where they were.
    pub fn wipe(&self) {
        let mut i = self.lock();
        let last_seq = i.last_seq;
        *i = Inner { last_seq, ..Inner::default() };
    }
}

impl Inner {
    fn store(&mut self, key: &[u8], rec: Record, ship: bool) {
        self.last_seq += 1;
        let bytes = (key.len() + crate::codec::serialize(&rec).len()) as u64;
        let entry = LogEntry { seq: self.last_seq, key: key.to_vec(), version: rec.version(), ship, bytes };
        self.log.push(entry);
        self.data.insert(key.to_vec(), rec);
    }
}

impl ReplicaStore for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Record>, StorageError> {
        Ok(self.lock().data.get(key).cloned())
    }

    fn update<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&Record>) -> Result<Update<T>, CoreError>,
    ) -> Result<T, StorageError> {
        self.admit(key)?;
        let mut i = self.lock();
        let Update { record, out } = f(i.data.get(key))?;
        if let Some(rec) = record {
            self.fits(&rec, i.data.get(key), false)?;
            i.store(key, rec, true);
        }
        Ok(out)
    }

    fn merge_as(&self, key: &[u8], incoming: &Record, ship: bool) -> Result<bool, StorageError> {
        self.admit(key)?;
        let mut i = self.lock();
        let merged = match i.data.get(key) {
            Some(cur) => {
                let mut m = cur.clone();
                m.merge(incoming);
                if m == *cur {
                    return Ok(false);
                }
                m
            }
            None => incoming.clone(),
        };
        self.fits(&merged, i.data.get(key), true)?;
        i.store(key, merged, ship);
        Ok(true)
    }

    fn put_hint(&self, target: NodeId, key: &[u8], state: &Record) -> Result<(), StorageError> {
        self.admit(key)?;
        let mut i = self.lock();
        i.hints.entry((target, key.to_vec())).and_modify(|h| h.merge(state)).or_insert_with(|| state.clone());
        Ok(())
    }

    fn hint_targets(&self) -> Result<Vec<NodeId>, StorageError> {
        let mut targets: Vec<NodeId> = self.lock().hints.keys().map(|(t, _)| *t).collect();
        targets.dedup();
        Ok(targets)
    }

    fn hints_for(
        &self,
        target: NodeId,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>, StorageError> {
        let i = self.lock();
        Ok(i.hints
            .range((target, Vec::new())..)
            .take_while(|((t, _), _)| *t == target)
            .filter(|((_, k), _)| after.is_none_or(|a| k.as_slice() > a))
            .take(max)
            .map(|((_, k), r)| (k.clone(), r.clone()))
            .collect())
    }

    fn remove_hint(&self, target: NodeId, key: &[u8], handed_off: &Record) -> Result<bool, StorageError> {
        let mut i = self.lock();
        let id = (target, key.to_vec());
        if i.hints.get(&id) != Some(handed_off) {
            return Ok(false);
        }
        i.hints.remove(&id);
        Ok(true)
    }

    fn drop_hints_for(&self, target: NodeId) -> Result<u64, StorageError> {
        let mut i = self.lock();
        let before = i.hints.len();
        i.hints.retain(|(t, _), _| *t != target);
        Ok((before - i.hints.len()) as u64)
    }

    fn committed_seq(&self) -> u64 {
        self.lock().last_seq
    }

    fn log_since(&self, after: u64, max: usize) -> Result<Vec<LogEntry>, StorageError> {
        let i = self.lock();
        // The log is in sequence order.
        let from = i.log.partition_point(|e| e.seq <= after);
        Ok(i.log[from..].iter().take(max).cloned().collect())
    }

    fn set_cursor(&self, name: &str, seq: u64) -> Result<(), StorageError> {
        self.lock().cursors.insert(name.to_string(), seq);
        Ok(())
    }

    fn cursor(&self, name: &str) -> Result<u64, StorageError> {
        Ok(self.lock().cursors.get(name).copied().unwrap_or(0))
    }

    fn scan(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        max_bytes: usize,
        size: impl Fn(&[u8], &Record) -> Option<usize>,
    ) -> Result<ScanPage, StorageError> {
        let from = if start < prefix { prefix } else { start };
        let i = self.lock();
        let entries = i.data.range(from.to_vec()..).map(|(k, r)| Ok((k.clone(), Some(r.clone()))));
        crate::engine::page(entries, prefix, limit, max_bytes, size)
    }

    fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    fn grace_ms(&self) -> u64 {
        self.grace_ms
    }

    fn purge_if_due(&self, key: &[u8], now_ms: u64) -> Result<bool, StorageError> {
        let mut i = self.lock();
        let Some(rec) = i.data.get(key).cloned() else { return Ok(false) };
        let unshipped = || Ok::<_, StorageError>(MemStore::unshipped_since_ms(&i));
        match crate::purge::plan(&rec, now_ms, self.grace_ms, unshipped)? {
            None | Some(Purge::NotDue(_)) | Some(Purge::WaitForTailers) => Ok(false),
            Some(Purge::Marker(marker)) => {
                i.store(key, *marker, false);
                Ok(true)
            }
            Some(Purge::Remove) => {
                i.data.remove(key);
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_memory_store_passes_the_conformance_suite() {
        crate::store::conformance::run_all(|| MemStore::new().with_max_record_bytes(4096));
    }

    #[test]
    fn a_wipe_forgets_states_and_hints_but_not_the_sequence() {
        let s = MemStore::new();
        s.merge_as(b"k", &Record::default(), true).unwrap();
        let seq = s.committed_seq();
        s.wipe();
        assert_eq!(s.get(b"k").unwrap(), None);
        assert!(!s.has_hints());
        assert_eq!(s.committed_seq(), seq);
    }

    #[test]
    fn admission_refuses_before_storing_and_an_erase_leaves_no_trace() {
        let state = |t: u64| {
            let put = geokv_core::Op::Put { value: vec![1], ttl_ms: None };
            let stamp = geokv_core::Stamp::new(geokv_core::Stamp::ntp_from_millis(1_700_000_000_000 + t), 1);
            geokv_core::apply(None, &put, stamp, 1_700_000_000_000, &geokv_core::Limits::default())
                .expect("applies")
                .record
        };
        let mut s = MemStore::new();
        s.set_admission(std::sync::Arc::new(|k: &[u8]| {
            if k.starts_with(b"no:") {
                Err("not here".to_string())
            } else {
                Ok(())
            }
        }));
        for refused in [
            s.merge_as(b"no:1", &state(5), true).unwrap_err(),
            s.put_hint(2, b"no:1", &state(5)).unwrap_err(),
        ] {
            assert!(matches!(refused, StorageError::NotAdmitted { ref reason, .. } if reason == "not here"));
        }
        assert_eq!(s.get(b"no:1").unwrap(), None);
        assert!(!s.has_hints());
        s.merge_as(b"a:1", &state(5), true).unwrap();
        s.merge_as(b"b:1", &state(6), true).unwrap();
        s.put_hint(3, b"a:1", &state(7)).unwrap();
        let report = s.erase_where(|k| k.starts_with(b"a:"));
        assert_eq!((report.keys, report.log_entries, report.hints), (1, 1, 1));
        assert_eq!(s.get(b"a:1").unwrap(), None);
        assert!(!s.has_hints());
        assert!(s.log_since(0, 10).unwrap().iter().all(|e| e.key == b"b:1"));
        // A reship logs the current state again, for shipping.
        let seq = s.committed_seq();
        assert!(s.reship(b"b:1") && !s.reship(b"a:1"));
        let entries = s.log_since(seq, 10).unwrap();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].ship && entries[0].key == b"b:1");
    }
}
