//! Small named values of the node itself (its saved cluster view, ...), and dropping a key's
//! copy from a node that no longer replicates it.

use rocksdb::WriteBatch;

use super::{lock, Engine, CF_DATA, CF_META, CF_TTL};
use crate::keys::ttl_key;
use crate::StorageError;

/// Names the engine itself uses in the meta column family; callers' names get a prefix so
/// they can never collide with them.
const CALLER_PREFIX: &[u8] = b"app/";

impl Engine {
    /// A value saved with [`Engine::put_meta`].
    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let key = [CALLER_PREFIX, name.as_bytes()].concat();
        Ok(self.db.get_cf(self.cf(CF_META), key)?)
    }

    /// Saves a small named value durably (synced like every write when `sync` is on).
    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_META), [CALLER_PREFIX, name.as_bytes()].concat(), value);
        Ok(self.db.write_opt(b, &self.wopts)?)
    }

    /// Removes this node's copy of `key` (state and TTL-index entries) without writing a
    /// tombstone: for a node that no longer replicates the key, not a delete of the key.
    /// Returns whether there was a copy.
    pub fn drop_copy(&self, key: &[u8]) -> Result<bool, StorageError> {
        let _guard = lock(self.stripe(key));
        let Some(rec) = self.get(key)? else { return Ok(false) };
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_DATA), key);
        for (deadline, tag) in self.index_entries(&rec) {
            b.delete_cf(self.cf(CF_TTL), ttl_key(deadline, tag, key));
        }
        self.db.write_opt(b, &self.wopts)?;
        Ok(true)
    }
}
