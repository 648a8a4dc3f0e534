//! Reading the stored keys in order: a page of a scan (shared with the in-memory store) and a
//! walk over every key.

use rocksdb::{Direction, IteratorMode};

use super::{Engine, CF_DATA, MAX_SKIPPED_PER_PAGE};
use crate::StorageError;
use geokv_core::Record;

/// A page of a scan: live entries in key order, and where the next page starts.
pub struct ScanPage {
    pub items: Vec<(Vec<u8>, Record)>,
    /// `Some(k)`: more keys may follow; the next page starts strictly after `k` (the last key
    /// returned, or the last one examined when the page stopped stepping over dead keys).
    pub resume_after: Option<Vec<u8>>,
}

/// Builds a scan page from a store's entries in key order from the page's first key (an
/// entry's state is `None` once its key no longer starts with `prefix`): at most `limit`
/// entries and about `max_bytes` of response (always at least one entry). `size` says how big
/// an entry's response is, or `None` to skip it (tombstones, expired keys, keys a caller
/// refuses); a page stops after stepping over `MAX_SKIPPED_PER_PAGE` skipped keys. Shared by
/// the RocksDB engine and the in-memory store.
pub(crate) fn page(
    entries: impl Iterator<Item = Result<(Vec<u8>, Option<Record>), StorageError>>,
    prefix: &[u8],
    limit: usize,
    max_bytes: usize,
    size: impl Fn(&[u8], &Record) -> Option<usize>,
) -> Result<ScanPage, StorageError> {
    let mut items: Vec<(Vec<u8>, Record)> = Vec::new();
    let mut bytes = 0usize;
    let mut skipped = 0usize;
    for entry in entries {
        let (k, rec) = entry?;
        let Some(rec) = rec.filter(|_| k.starts_with(prefix)) else { break };
        let Some(entry_bytes) = size(&k, &rec) else {
            skipped += 1;
            if skipped >= MAX_SKIPPED_PER_PAGE {
                return Ok(ScanPage { items, resume_after: Some(k) });
            }
            continue;
        };
        bytes = bytes.saturating_add(entry_bytes);
        if items.len() == limit || (!items.is_empty() && bytes > max_bytes) {
            let last = items.last().map(|(k, _)| k.clone());
            return Ok(ScanPage { items, resume_after: last });
        }
        items.push((k, rec));
    }
    Ok(ScanPage { items, resume_after: None })
}

impl Engine {
    /// Live entries from `start` (inclusive) whose keys begin with `prefix`: at most `limit`
    /// entries and about `max_bytes` of response (always at least one entry). `size` says how
    /// big an entry's response is, or `None` to skip it (tombstones, expired keys); a page
    /// stops after stepping over `MAX_SKIPPED_PER_PAGE` skipped keys.
    pub fn scan(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        max_bytes: usize,
        size: impl Fn(&[u8], &Record) -> Option<usize>,
    ) -> Result<ScanPage, StorageError> {
        let from = if start < prefix { prefix } else { start };
        let iter = self.db.iterator_cf(self.cf(CF_DATA), IteratorMode::From(from, Direction::Forward));
        let entries = iter.map(|item| {
            let (k, v) = item?;
            let rec = if k.starts_with(prefix) { Some(self.decode(&k, &v)?) } else { None };
            Ok((k.into_vec(), rec))
        });
        page(entries, prefix, limit, max_bytes, size)
    }

    /// Calls `f` with every stored key and state, in key order (tombstones included).
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &Record)) -> Result<(), StorageError> {
        for item in self.db.iterator_cf(self.cf(CF_DATA), IteratorMode::Start) {
            let (k, v) = item?;
            // A corrupt state is stepped over (counted and logged by `decode`): it cannot be
            // summarised or streamed, and it must not stop the walk over every other key.
            // Anti-entropy then sees the key as missing here and brings the replicas' state.
            if let Ok(rec) = self.decode(&k, &v) {
                f(&k, &rec);
            }
        }
        Ok(())
    }
}
