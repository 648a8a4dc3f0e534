use geokv_core::CoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// RocksDB failed (I/O error, full disk, ...).
    #[error("storage engine error: {0}")]
    Engine(#[from] rocksdb::Error),

    /// A stored value failed its checksum or could not be decoded. It is never served.
    #[error("corrupt value for key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },

    /// The new state of a key would be larger than `limits.max_record_bytes`.
    #[error("the key's stored state would be {actual} bytes, over the limit of {limit} bytes (limits.max_record_bytes)")]
    RecordTooLarge { actual: usize, limit: usize },

    /// A batch's single commit failed; none of its items were stored.
    #[error("the batch could not be committed, so none of its items were applied: {0}")]
    BatchFailed(String),

    /// The data directory belongs to another node or another format.
    #[error("data directory {path}: {reason}")]
    Incompatible { path: String, reason: String },

    /// This node may not hold the key (its residency policy forbids this region); nothing
    /// was stored.
    #[error("key {key:?} may not be stored here: {reason}")]
    NotAdmitted { key: String, reason: String },

    /// A state from another node carries a stamp further ahead of this node's clock than
    /// `max_clock_drift_ms` allows; nothing was stored.
    #[error("the state of key {key:?} sent by another node was refused: {reason}")]
    ClockDrift { key: String, reason: String },

    /// A file outside RocksDB's own (a checkpoint folder) could not be read or written.
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },

    /// The operation itself was refused (wrong type, limits, ...).
    #[error(transparent)]
    Core(#[from] CoreError),
}
