use serde::{Deserialize, Serialize};

/// The `[storage]` section of the server configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// fsync the write-ahead log before a write is acknowledged. With `false`, a write survives
    /// a process crash but may be lost in a power failure or kernel crash.
    pub sync: bool,
    /// Values whose encoded state is at least this many bytes are zstd-compressed.
    pub compression_threshold_bytes: usize,
    /// zstd level for compressed values (1 = fastest).
    pub compression_level: i32,
    /// How long a tombstone is kept before it is purged, in seconds. Must be longer than any
    /// partition or outage after which a replica could bring the deleted value back.
    pub tombstone_grace_secs: u64,
    /// How many change-log entries are kept (older ones are trimmed by the sweeper).
    pub changelog_retention_entries: u64,
    /// Largest encoded state of one key (copied from `limits.max_record_bytes`).
    #[serde(skip)]
    pub max_record_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            sync: true,
            compression_threshold_bytes: 1024,
            compression_level: 3,
            tombstone_grace_secs: 24 * 3600,
            changelog_retention_entries: 1_000_000,
            max_record_bytes: geokv_core::Limits::default().max_record_bytes,
        }
    }
}
