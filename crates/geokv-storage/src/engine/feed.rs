//! What a change feed (a watch) needs of the change log besides its entries: which log it is
//! reading, and whether the part it asks for is still there.

use std::hash::{BuildHasher, Hasher};

use rocksdb::WriteBatch;

use super::{lock, Engine, CF_META};
use crate::StorageError;

/// A random number naming this data directory's change log. A node whose data directory was
/// replaced starts a new log at sequence number 1; a reader that kept a position in the old
/// log tells the two apart by this number.
const META_LOG_ID: &[u8] = b"log_id";
/// The sequence number the change log was last trimmed up to (entries up to it are gone).
pub(super) const META_LOG_TRIMMED: &[u8] = b"log_trimmed_upto";

/// Where a reader stands in this node's change log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStart {
    /// The position is in this log and its entries after it are all still there.
    Ok,
    /// The entries right after the position were trimmed: the reader must re-read.
    Trimmed { trimmed_upto: u64 },
    /// The position belongs to another log (the data directory was replaced or restored from
    /// an older backup): the reader starts this log from its beginning.
    OtherLog,
}

impl Engine {
    /// The number naming this data directory's change log, made the first time it is asked for.
    pub fn log_id(&self) -> Result<u64, StorageError> {
        if let Some(id) = self.stored_log_id()? {
            return Ok(id);
        }
        let _guard = lock(&self.log_id_lock);
        match self.stored_log_id()? {
            Some(id) => Ok(id),
            None => self.write_new_log_id(),
        }
    }

    /// Gives the change log a new id: after a restore from a backup, whose log goes back in
    /// time, positions in the log the node had before must not be taken for positions in it.
    pub fn renew_log_id(&self) -> Result<(), StorageError> {
        let _guard = lock(&self.log_id_lock);
        self.write_new_log_id().map(|_| ())
    }

    fn stored_log_id(&self) -> Result<Option<u64>, StorageError> {
        let v = self.db.get_cf(self.cf(CF_META), META_LOG_ID)?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map(u64::from_be_bytes))
    }

    /// Saves a random log id (callers hold `log_id_lock`).
    fn write_new_log_id(&self) -> Result<u64, StorageError> {
        // RandomState is seeded from the operating system's randomness.
        let id = std::collections::hash_map::RandomState::new().build_hasher().finish() | 1;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_META), META_LOG_ID, id.to_be_bytes());
        self.db.write_opt(b, &self.wopts)?;
        Ok(id)
    }

    /// The sequence number the change log was trimmed up to (0: never trimmed).
    pub fn log_trimmed_upto(&self) -> Result<u64, StorageError> {
        let v = self.db.get_cf(self.cf(CF_META), META_LOG_TRIMMED)?;
        Ok(v.and_then(|v| v.as_slice().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0))
    }

    /// Whether a reader at `seq` of log `log_id` can go on reading this log from there.
    pub fn log_start(&self, log_id: u64, seq: u64) -> Result<LogStart, StorageError> {
        if log_id != self.log_id()? || seq > lock(&self.seq).last {
            return Ok(LogStart::OtherLog);
        }
        let trimmed_upto = self.log_trimmed_upto()?;
        if seq < trimmed_upto {
            return Ok(LogStart::Trimmed { trimmed_upto });
        }
        Ok(LogStart::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Update;
    use crate::StorageConfig;
    use geokv_core::{apply, Limits, Op, Stamp};

    fn put(e: &Engine, key: &[u8], t: u64) {
        e.update(key, |cur| {
            let op = Op::Put { value: b"v".to_vec(), ttl_ms: None };
            let a = apply(cur, &op, Stamp::new(t << 32, 1), 1_700_000_000_000, &Limits::default())?;
            Ok(Update { record: Some(a.record), out: () })
        })
        .unwrap();
    }

    #[test]
    fn a_position_is_checked_against_the_log_it_came_from_and_its_trimming() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StorageConfig { changelog_retention_entries: 3, ..Default::default() };
        let e = Engine::open(dir.path(), 1, cfg.clone()).unwrap();
        let id = e.log_id().unwrap();
        assert_eq!(e.log_id().unwrap(), id, "the id is kept");
        for i in 0..10u64 {
            put(&e, format!("k{i}").as_bytes(), 100 + i);
        }
        assert_eq!(e.log_start(id, 2).unwrap(), LogStart::Ok);
        assert_eq!(e.log_start(id, 11).unwrap(), LogStart::OtherLog, "beyond the log's end");
        assert_eq!(e.log_start(id ^ 2, 2).unwrap(), LogStart::OtherLog);
        assert_eq!(e.trim_log().unwrap(), 7);
        assert_eq!(e.log_start(id, 2).unwrap(), LogStart::Trimmed { trimmed_upto: 7 });
        assert_eq!(e.log_start(id, 7).unwrap(), LogStart::Ok, "entry 8 onwards is there");
        drop(e);
        let e = Engine::open(dir.path(), 1, cfg).unwrap();
        assert_eq!(e.log_id().unwrap(), id, "the id survives a restart");
        assert_eq!(e.log_trimmed_upto().unwrap(), 7);
        let other = tempfile::tempdir().unwrap();
        let fresh = Engine::open(other.path(), 1, StorageConfig::default()).unwrap();
        assert_ne!(fresh.log_id().unwrap(), id, "a new data directory has a new log");
        e.renew_log_id().unwrap();
        assert_ne!(e.log_id().unwrap(), id, "a restored directory gets a new one");
        assert_eq!(e.log_start(id, 3).unwrap(), LogStart::OtherLog);
    }
}
