//! Hints: states kept for an unreachable replica, handed off when it answers again.

use geokv_core::{Crdt, NodeId, Record};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::{lock, Engine, CF_HINTS};
use crate::{codec, StorageError};

impl Engine {
    pub(super) fn hint_key(target: NodeId, key: &[u8]) -> Vec<u8> {
        [&target.to_be_bytes()[..], key].concat()
    }

    /// Keeps `state` as a durable hint for `target` (merged with any hint already kept).
    pub fn put_hint(&self, target: NodeId, key: &[u8], state: &Record) -> Result<(), StorageError> {
        self.check_stamps(key, state)?;
        let hk = Self::hint_key(target, key);
        let _guard = lock(self.stripe(&hk));
        self.admit(key)?;
        let mut merged = state.clone();
        if let Some(raw) = self.db.get_pinned_cf(self.cf(CF_HINTS), &hk)? {
            merged.merge(&self.decode(key, &raw)?);
        }
        let encoded =
            codec::encode(&merged, self.cfg.compression_threshold_bytes, self.cfg.compression_level);
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_HINTS), &hk, encoded);
        self.slow_disk();
        Ok(self.db.write_opt(b, &self.wopts)?)
    }

    /// Nodes for which hints are kept.
    pub fn hint_targets(&self) -> Result<Vec<NodeId>, StorageError> {
        let mut targets = Vec::new();
        let mut from = 0u64.to_be_bytes().to_vec();
        loop {
            let mut it =
                self.db.iterator_cf(self.cf(CF_HINTS), IteratorMode::From(&from, Direction::Forward));
            let Some(item) = it.next() else { return Ok(targets) };
            let (k, _) = item?;
            let Some(target) = k.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) else {
                return Ok(targets);
            };
            targets.push(target);
            match target.checked_add(1) {
                Some(next) => from = next.to_be_bytes().to_vec(),
                None => return Ok(targets),
            }
        }
    }

    /// Up to `max` hints kept for `target`, in key order, after key `after` if given. A hint
    /// that does not decode is logged, counted and skipped.
    pub fn hints_for(
        &self,
        target: NodeId,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>, StorageError> {
        let prefix = target.to_be_bytes();
        let start = match after {
            Some(k) => [&prefix[..], k, &[0]].concat(),
            None => prefix.to_vec(),
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_HINTS), IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() >= max {
                break;
            }
            let key = k[8..].to_vec();
            if let Ok(rec) = self.decode(&key, &v) {
                out.push((key, rec));
            }
        }
        Ok(out)
    }

    /// Drops a hint once handed off, unless it changed since it was read.
    pub fn remove_hint(&self, target: NodeId, key: &[u8], handed_off: &Record) -> Result<bool, StorageError> {
        let hk = Self::hint_key(target, key);
        let _guard = lock(self.stripe(&hk));
        let Some(raw) = self.db.get_pinned_cf(self.cf(CF_HINTS), &hk)? else { return Ok(false) };
        if self.decode(key, &raw)? != *handed_off {
            return Ok(false);
        }
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_HINTS), &hk);
        self.db.write_opt(b, &self.wopts)?;
        Ok(true)
    }

    /// Number of hints kept (all targets).
    pub fn hint_count(&self) -> u64 {
        self.db.iterator_cf(self.cf(CF_HINTS), IteratorMode::Start).count() as u64
    }

    /// Drops every hint kept for `target` (a node that left the region for good: what the hints
    /// held is on the key's other replicas, and anti-entropy copies it to the new ones).
    /// Returns how many were dropped.
    pub fn drop_hints_for(&self, target: NodeId) -> Result<u64, StorageError> {
        let mut dropped = 0;
        loop {
            let page = self.hints_for(target, None, 1024)?;
            if page.is_empty() {
                return Ok(dropped);
            }
            let mut b = WriteBatch::default();
            for (key, _) in &page {
                b.delete_cf(self.cf(CF_HINTS), Self::hint_key(target, key));
            }
            self.db.write_opt(b, &self.wopts)?;
            dropped += page.len() as u64;
        }
    }
}
