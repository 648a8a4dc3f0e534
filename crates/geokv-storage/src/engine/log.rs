//! The change log: its committed entries, read by the cross-region replicator and the change
//! feeds, and trimmed to its retention but never past a tailer's cursor.

use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::{feed, lock, Engine, LogEntry, CF_LOG, CF_META};
use crate::keys::log_key;
use crate::StorageError;

impl Engine {
    /// Highest sequence number below which every change-log entry is committed.
    pub fn committed_seq(&self) -> u64 {
        let s = lock(&self.seq);
        s.in_flight.first().map(|first| first - 1).unwrap_or(s.last)
    }

    /// Change-log entries after `after` up to the committed sequence number, at most `max`.
    pub fn log_since(&self, after: u64, max: usize) -> Result<Vec<LogEntry>, StorageError> {
        let upto = self.committed_seq();
        let start = log_key(after.saturating_add(1));
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::From(&start, Direction::Forward)) {
            let (_, v) = item?;
            let entry: LogEntry = postcard::from_bytes(&v)
                .map_err(|e| StorageError::Corrupt { key: "<change log>".into(), reason: e.to_string() })?;
            if entry.seq > upto || out.len() >= max {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Trims the change log to the configured number of newest entries, but never past a
    /// tailer's cursor (see [`Engine::set_cursor`]): a tailer that fell behind finds its
    /// backlog on disk. Returns the sequence number trimmed up to (0: nothing).
    pub fn trim_log(&self) -> Result<u64, StorageError> {
        let last = self.committed_seq();
        let keep = self.cfg.changelog_retention_entries;
        if last <= keep {
            return Ok(0);
        }
        let floor = self.cursors()?.into_iter().map(|(_, seq)| seq).min().unwrap_or(u64::MAX);
        let cut = (last - keep).min(floor);
        if cut == 0 {
            return Ok(0);
        }
        self.save_log_high_water()?;
        let mut b = WriteBatch::default();
        b.delete_range_cf(self.cf(CF_LOG), log_key(0), log_key(cut + 1));
        b.put_cf(self.cf(CF_META), feed::META_LOG_TRIMMED, cut.max(self.log_trimmed_upto()?).to_be_bytes());
        self.db.write_opt(b, &self.wopts)?;
        Ok(cut)
    }
}
