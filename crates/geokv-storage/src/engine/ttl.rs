//! Expiry: the TTL index of keys due for work, and purging a key for good once its grace
//! period is over and every tailer of the change log has its last change.

use rocksdb::{IteratorMode, WriteBatch};

use super::{lock, Engine, CF_DATA, CF_TTL, PURGE_RETRY_MS};
use crate::codec;
use crate::keys::{parse_ttl_key, ttl_key, DueEntry, TtlTag};
use crate::purge::{self, Purge};
use crate::StorageError;

impl Engine {
    /// TTL-index entries due at `now_ms`, oldest first, at most `max`.
    pub fn due_ttl(&self, now_ms: u64, max: usize) -> Result<Vec<DueEntry>, StorageError> {
        let mut due = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_TTL), IteratorMode::Start) {
            let (k, _) = item?;
            match parse_ttl_key(&k) {
                Some(e) if e.deadline_ms <= now_ms => due.push(e),
                Some(_) => break,
                None => tracing::warn!(len = k.len(), "malformed TTL index key skipped"),
            }
            if due.len() >= max {
                break;
            }
        }
        Ok(due)
    }

    /// Drops a TTL-index entry that needs no more work.
    pub fn drop_ttl_entry(&self, entry: &DueEntry) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_TTL), ttl_key(entry.deadline_ms, entry.tag, &entry.key));
        Ok(self.db.write_opt(b, &self.wopts)?)
    }

    /// Removes `key` for good if its purge deadline (see `purge_deadline`) has passed by
    /// `now_ms`. If the deadline moved later (the key was written again, or the grace period
    /// was raised), the index entry is put back at the new deadline. Returns whether it purged.
    pub fn purge_if_due(&self, key: &[u8], now_ms: u64) -> Result<bool, StorageError> {
        let _guard = lock(self.stripe(key));
        let Some(rec) = self.get(key)? else { return Ok(false) };
        let mut b = WriteBatch::default();
        match purge::plan(&rec, now_ms, self.grace_ms(), || self.unshipped_since_ms())? {
            None => Ok(false),
            Some(Purge::NotDue(deadline)) => {
                b.put_cf(self.cf(CF_TTL), ttl_key(deadline, TtlTag::Purge, key), []);
                self.db.write_opt(b, &self.wopts)?;
                Ok(false)
            }
            Some(Purge::WaitForTailers) => {
                // The change may not have reached every tailer (another region) yet: purging
                // it now could lose a delete there. Try again later.
                b.put_cf(self.cf(CF_TTL), ttl_key(now_ms + PURGE_RETRY_MS, TtlTag::Purge, key), []);
                self.db.write_opt(b, &self.wopts)?;
                Ok(false)
            }
            Some(Purge::Marker(marker)) => {
                // An expired key leaves a marker of its deadline for one more grace period: a
                // replica still holding the expired state cannot bring it back into a new
                // lifetime.
                let plain = codec::serialize(&marker);
                self.commit_all(&[(key, Some(&rec), &*marker, plain)], false)?;
                Ok(true)
            }
            Some(Purge::Remove) => {
                let deadline = purge::deadline(&rec, self.grace_ms()).unwrap_or(now_ms);
                b.delete_cf(self.cf(CF_DATA), key);
                b.delete_cf(self.cf(CF_TTL), ttl_key(deadline, TtlTag::Purge, key));
                self.db.write_opt(b, &self.wopts)?;
                Ok(true)
            }
        }
    }

    /// HLC time (ms) of the oldest change-log entry some tailer has not consumed yet, if any.
    fn unshipped_since_ms(&self) -> Result<Option<u64>, StorageError> {
        let Some(floor) = self.cursors()?.into_iter().map(|(_, seq)| seq).min() else { return Ok(None) };
        Ok(self.log_since(floor, 1)?.first().map(|e| e.version.unix_millis()))
    }
}
