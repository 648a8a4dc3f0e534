//! Reads answered from memory alone (memtables and the block cache), without touching the
//! disk, so a caller on an async runtime can serve them in place and send only the misses to
//! a blocking thread.

use rocksdb::{ErrorKind, ReadOptions, ReadTier};

use super::{Engine, CF_DATA};
use crate::StorageError;
use geokv_core::Record;

impl Engine {
    /// The stored state of `key` as [`Engine::get`] gives it, if memory alone can tell:
    /// `None` when answering would read the disk.
    pub fn get_cached(&self, key: &[u8]) -> Result<Option<Option<Record>>, StorageError> {
        let mut opts = ReadOptions::default();
        opts.set_read_tier(ReadTier::BlockCache);
        match self.db.get_pinned_cf_opt(self.cf(CF_DATA), key, &opts) {
            Ok(Some(raw)) => self.decode(key, &raw).map(|r| Some(Some(r))),
            Ok(None) => Ok(Some(None)),
            Err(e) if e.kind() == ErrorKind::Incomplete => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geokv_core::{apply, Limits, Op, Stamp};

    #[test]
    fn memory_answers_what_it_holds_and_says_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), 7, Default::default()).unwrap();
        engine
            .update(b"k", |cur| {
                let op = Op::Put { value: b"v".to_vec(), ttl_ms: None };
                let a = apply(
                    cur,
                    &op,
                    Stamp::new(Stamp::ntp_from_millis(1_700_000_000_000), 7),
                    0,
                    &Limits::default(),
                )?;
                Ok(crate::Update { record: Some(a.record), out: () })
            })
            .unwrap();
        // In the memtable.
        let hit = engine.get_cached(b"k").unwrap().expect("answered from memory");
        assert_eq!(hit, engine.get(b"k").unwrap());
        assert_eq!(engine.get_cached(b"absent").unwrap(), Some(None));
        // After a flush and a reopen, the block cache is cold: memory cannot tell.
        engine.flush().unwrap();
        drop(engine);
        let engine = Engine::open(dir.path(), 7, Default::default()).unwrap();
        assert_eq!(engine.get_cached(b"k").unwrap(), None);
        assert!(engine.get(b"k").unwrap().is_some());
    }
}
