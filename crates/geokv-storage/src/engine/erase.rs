//! Erasing keys for good (a residency policy no longer lets this node hold them), and
//! re-logging a key so the cross-region replicator ships it again.
//!
//! An erase is not a delete: no tombstone is written. Every trace of the key goes: its state,
//! its TTL-index entries, its change-log entries and the hints kept for other nodes. Then
//! [`Engine::compact_all`] flushes the memtables (so the write-ahead-log files holding the
//! key become obsolete and are deleted) and rewrites every SST file down to the last level
//! (so the deleted entries and their delete markers are dropped from disk).

use geokv_core::NodeId;
use rocksdb::{BottommostLevelCompaction, CompactOptions, IteratorMode, WriteBatch};

use super::{lock, Engine, LogEntry, CF_DATA, CF_HINTS, CF_LOG, CF_META, CF_TTL};
use crate::keys::parse_ttl_key;
use crate::StorageError;

/// Deletes are committed this many at a time.
const ERASE_BATCH: usize = 1024;

/// What an erase removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EraseReport {
    /// Keys whose state was stored here.
    pub keys: u64,
    pub ttl_entries: u64,
    pub log_entries: u64,
    pub hints: u64,
}

impl Engine {
    /// Removes every trace of the keys `doomed` picks: states (tombstones included), TTL-index
    /// entries, change-log entries and hints. Writes go on meanwhile:
    /// install an admission check that refuses the same keys first, or new copies may land
    /// behind the scan.
    pub fn erase_where(&self, doomed: impl Fn(&[u8]) -> bool) -> Result<EraseReport, StorageError> {
        let mut report = EraseReport::default();
        let mut pending: Vec<Vec<u8>> = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_DATA), IteratorMode::Start) {
            let (k, _) = item?;
            if doomed(&k) {
                pending.push(k.into_vec());
            }
            if pending.len() >= ERASE_BATCH {
                report.keys += self.erase_states(&std::mem::take(&mut pending))?;
            }
        }
        report.keys += self.erase_states(&pending)?;
        report.ttl_entries =
            self.delete_where(CF_TTL, |k, _| parse_ttl_key(k).is_some_and(|e| doomed(&e.key)))?;
        self.save_log_high_water()?;
        report.log_entries = self
            .delete_where(CF_LOG, |_, v| postcard::from_bytes::<LogEntry>(v).is_ok_and(|e| doomed(&e.key)))?;
        report.hints = self.delete_where(CF_HINTS, |k, _| k.len() >= 8 && doomed(&k[8..]))?;
        Ok(report)
    }

    /// Deletes the states of `keys`. Returns how many were deleted.
    fn erase_states(&self, keys: &[Vec<u8>]) -> Result<u64, StorageError> {
        let mut b = WriteBatch::default();
        for key in keys {
            b.delete_cf(self.cf(CF_DATA), key);
        }
        self.db.write_opt(b, &self.wopts)?;
        Ok(keys.len() as u64)
    }

    /// Deletes the entries of column family `cf` that `doomed(key, value)` picks.
    fn delete_where(&self, cf: &str, doomed: impl Fn(&[u8], &[u8]) -> bool) -> Result<u64, StorageError> {
        let mut deleted = 0;
        let mut b = WriteBatch::default();
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
            let (k, v) = item?;
            if doomed(&k, &v) {
                b.delete_cf(self.cf(cf), &k);
                deleted += 1;
                if b.len() >= ERASE_BATCH {
                    self.db.write_opt(std::mem::take(&mut b), &self.wopts)?;
                }
            }
        }
        self.db.write_opt(b, &self.wopts)?;
        Ok(deleted)
    }

    /// Flushes every column family and compacts each down to its last level, forcing the
    /// last level too: afterwards no SST or live write-ahead-log file holds what was deleted.
    /// Blocks until done (seconds per GiB).
    pub fn compact_all(&self) -> Result<(), StorageError> {
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        opts.set_exclusive_manual_compaction(true);
        for name in [CF_DATA, CF_TTL, CF_LOG, CF_HINTS, CF_META] {
            self.db.flush_cf(self.cf(name))?;
        }
        for name in [CF_DATA, CF_TTL, CF_LOG, CF_HINTS, CF_META] {
            self.db.compact_range_cf_opt(self.cf(name), None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }

    /// Writes a new change-log entry for `key`'s current state, marked for shipping, so the
    /// cross-region replicator sends it again (to a region that may now hold it). Returns
    /// whether the key had a state.
    pub fn reship(&self, key: &[u8]) -> Result<bool, StorageError> {
        let _guard = lock(self.stripe(key));
        let Some(rec) = self.get(key)? else { return Ok(false) };
        let plain = self.serialize_checked(key, &rec, Some(&rec), true)?;
        self.commit_all(&[(key, Some(&rec), &rec, plain)], true)?;
        Ok(true)
    }

    /// How many hints this node keeps for `key` (for any node).
    pub fn hints_of(&self, key: &[u8]) -> Result<u64, StorageError> {
        let mut n = 0;
        for target in self.hint_targets()? {
            let hk: Vec<u8> = Self::hint_key(target as NodeId, key);
            if self.db.get_pinned_cf(self.cf(CF_HINTS), hk)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }
}
