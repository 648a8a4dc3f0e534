//! Small named values of the node itself (its saved cluster view, ...), and dropping a key's
//! copy from a node that no longer replicates it.

use rocksdb::WriteBatch;

use super::{lock, Engine, CF_DATA, CF_META, CF_TTL};
use crate::keys::ttl_key;
use crate::StorageError;

/// Meta names of change-log cursors.
const CURSOR_PREFIX: &str = "cursor/";

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

    /// Saves the change-log position `seq` that tailer `name` has consumed up to. The log is
    /// not trimmed past the lowest cursor.
    pub fn set_cursor(&self, name: &str, seq: u64) -> Result<(), StorageError> {
        self.put_meta(&format!("{CURSOR_PREFIX}{name}"), &seq.to_be_bytes())
    }

    /// Tailer `name`'s saved cursor (0 if it has none).
    pub fn cursor(&self, name: &str) -> Result<u64, StorageError> {
        Ok(self
            .get_meta(&format!("{CURSOR_PREFIX}{name}"))?
            .and_then(|v| v.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Every tailer's cursor.
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let prefix = [CALLER_PREFIX, CURSOR_PREFIX.as_bytes()].concat();
        let mut out = Vec::new();
        let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_META), mode) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Ok(raw) = <[u8; 8]>::try_from(&v[..]) {
                out.push((name, u64::from_be_bytes(raw)));
            }
        }
        Ok(out)
    }
}
