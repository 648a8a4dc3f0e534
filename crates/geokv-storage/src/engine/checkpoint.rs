//! Checkpoints for backups: a consistent copy of the whole store (every column family at one
//! point of its history), taken while the node serves. SST files are hard-linked (they never
//! change), the rest copied, so a checkpoint costs little space until compaction replaces the
//! files it links.

use std::path::{Path, PathBuf};

use super::{Engine, LAYOUT_VERSION};
use crate::StorageError;

/// The folder inside a data directory where checkpoints are made (the same file system, so
/// files can be hard-linked). RocksDB ignores names that are not its own.
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// A checkpoint taken by [`Engine::checkpoint`].
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    /// Every change-log entry up to this sequence number is in the checkpoint.
    pub log_high_water: u64,
    /// The files of the checkpoint (names relative to `dir`) and their sizes, sorted by name.
    pub files: Vec<(String, u64)>,
    /// The layout version of the stored data.
    pub layout_version: u8,
}

fn io(path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Io { path: path.display().to_string(), reason: e.to_string() }
}

impl Engine {
    /// Takes a checkpoint named `name` (a new folder under [`CHECKPOINTS_DIR`]).
    pub fn checkpoint(&self, name: &str) -> Result<Checkpoint, StorageError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(StorageError::Io { path: name.into(), reason: "not a checkpoint name".into() });
        }
        let root = self.path.join(CHECKPOINTS_DIR);
        std::fs::create_dir_all(&root).map_err(|e| io(&root, e))?;
        let dir = root.join(name);
        // Read before the checkpoint: every entry up to it has committed, so it is included.
        let log_high_water = self.committed_seq();
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(&dir)?;
        let files = list_files(&dir)?;
        Ok(Checkpoint { dir, log_high_water, files, layout_version: LAYOUT_VERSION })
    }

    /// Removes the checkpoint named `name`.
    pub fn drop_checkpoint(&self, name: &str) -> Result<(), StorageError> {
        let dir = self.path.join(CHECKPOINTS_DIR).join(name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir, e)),
            _ => Ok(()),
        }
    }

    /// Removes every checkpoint (those of a previous run, which no backup can be reading).
    pub fn drop_checkpoints(&self) -> Result<(), StorageError> {
        let root = self.path.join(CHECKPOINTS_DIR);
        match std::fs::remove_dir_all(&root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&root, e)),
            _ => Ok(()),
        }
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The files of a checkpoint folder (which has no subfolders) with their sizes.
fn list_files(dir: &Path) -> Result<Vec<(String, u64)>, StorageError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let meta = entry.metadata().map_err(|e| io(&entry.path(), e))?;
        if meta.is_file() {
            files.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use geokv_core::{apply, Limits, Op, Stamp};

    fn put(e: &Engine, key: &[u8], value: &[u8]) {
        e.update(key, |cur| {
            let t =
                cur.map(|r| r.version().time).unwrap_or(0).max(Stamp::ntp_from_millis(1_700_000_000_000)) + 1;
            let op = Op::Put { value: value.to_vec(), ttl_ms: None };
            let a = apply(cur, &op, Stamp::new(t, 7), 1_700_000_000_000, &Limits::default())?;
            Ok(crate::Update { record: Some(a.record), out: () })
        })
        .unwrap();
    }

    #[test]
    fn a_checkpoint_opens_as_the_store_it_copied_and_later_writes_stay_out() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), 7, Default::default()).unwrap();
        put(&engine, b"before", b"1");
        let cp = engine.checkpoint("b1").unwrap();
        put(&engine, b"after", b"2");
        assert!(cp.files.iter().any(|(n, _)| n.starts_with("MANIFEST-")), "{:?}", cp.files);
        assert!(cp.log_high_water >= 1);
        // The live store still opens with the checkpoint folder inside it.
        drop(engine);
        let engine = Engine::open(dir.path(), 7, Default::default()).unwrap();
        assert!(engine.get(b"after").unwrap().is_some());
        let copy = tempfile::tempdir().unwrap();
        for (name, _) in &cp.files {
            std::fs::copy(cp.dir.join(name), copy.path().join(name)).unwrap();
        }
        engine.drop_checkpoints().unwrap();
        assert!(!cp.dir.exists());
        let restored = Engine::open(copy.path(), 7, Default::default()).unwrap();
        assert!(restored.get(b"before").unwrap().is_some());
        assert!(restored.get(b"after").unwrap().is_none());
        // Still the same node's data.
        assert!(Engine::open(copy.path(), 8, Default::default()).is_err());
    }

    #[test]
    fn checkpoint_names_are_plain() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), 7, Default::default()).unwrap();
        assert!(engine.checkpoint("../x").is_err());
        assert!(engine.checkpoint("").is_err());
    }
}
