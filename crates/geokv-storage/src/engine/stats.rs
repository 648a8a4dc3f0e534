//! What an engine reports of itself: its counters and RocksDB's size estimates.

use std::path::Path;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Engine, CF_DATA, CF_HINTS, CF_LOG, CF_META, CF_TTL};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub writes: u64,
    pub corrupt_reads: u64,
    /// Corrupt stored states replaced by a replica's state (read repair, anti-entropy, hints).
    pub corrupt_replaced: u64,
    /// Merges stored although the merged state is over `max_record_bytes` (each replica's
    /// state was within it; refusing the merge would leave the replicas apart for good).
    pub oversized_merges: u64,
    pub last_seq: u64,
    pub estimated_keys: u64,
    pub live_data_bytes: u64,
    /// SST files of every column family.
    pub sst_bytes: u64,
    pub memtable_bytes: u64,
    /// RocksDB's estimate of the bytes compaction still has to rewrite.
    pub pending_compaction_bytes: u64,
    pub running_compactions: u64,
    /// Every file in the data directory (SSTs, WAL, MANIFEST, logs).
    pub disk_bytes: u64,
}

const ALL_CFS: [&str; 5] = [CF_DATA, CF_TTL, CF_LOG, CF_META, CF_HINTS];

/// Bytes of the files directly in `dir` (RocksDB keeps its files in one directory).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}

impl Engine {
    pub fn stats(&self) -> Stats {
        let prop =
            |name: &str| self.db.property_int_value_cf(self.cf(CF_DATA), name).ok().flatten().unwrap_or(0);
        let all = |name: &str| -> u64 {
            ALL_CFS
                .iter()
                .filter_map(|cf| self.db.property_int_value_cf(self.cf(cf), name).ok().flatten())
                .sum()
        };
        Stats {
            writes: self.writes.load(Ordering::Relaxed),
            corrupt_reads: self.corrupt_reads.load(Ordering::Relaxed),
            corrupt_replaced: self.corrupt_replaced.load(Ordering::Relaxed),
            oversized_merges: self.oversized_merges.load(Ordering::Relaxed),
            last_seq: self.committed_seq(),
            estimated_keys: prop("rocksdb.estimate-num-keys"),
            live_data_bytes: prop("rocksdb.estimate-live-data-size"),
            sst_bytes: all("rocksdb.total-sst-files-size"),
            memtable_bytes: all("rocksdb.cur-size-all-mem-tables"),
            pending_compaction_bytes: all("rocksdb.estimate-pending-compaction-bytes"),
            running_compactions: self
                .db
                .property_int_value("rocksdb.num-running-compactions")
                .ok()
                .flatten()
                .unwrap_or(0),
            disk_bytes: dir_bytes(&self.path),
        }
    }
}
