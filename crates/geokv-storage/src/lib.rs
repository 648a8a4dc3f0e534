//! geokv-storage: the store of one node.
//!
//! The protocol's view of a store is [`ReplicaStore`]; the RocksDB [`Engine`] and the
//! in-memory [`MemStore`] implement it and pass one conformance suite ([`store::conformance`]).
//!
//! Owns: the on-disk layout (column families `data`, `ttl`, `log`, `meta`), the versioned and
//! checksummed value encoding ([`codec`]), and read-modify-write of one key committed in a
//! single `WriteBatch` together with its change-log entry and TTL-index entries.
//!
//! Does not own: what an operation means (that is `geokv-core`), clocks (callers pass the time
//! and the HLC stamp), or anything about the network.
//!
//! The engine is the `engine` feature (on by default). Without it the crate is just the codec
//! and the config section, and does not build RocksDB: the fuzz targets (`fuzz/`) use that.

pub mod codec;
mod config;
#[cfg(feature = "engine")]
mod engine;
#[cfg(feature = "engine")]
mod error;
#[cfg(feature = "engine")]
mod keys;
#[cfg(feature = "engine")]
mod mem;
pub mod purge;
#[cfg(feature = "engine")]
pub mod size;
#[cfg(feature = "engine")]
pub mod store;

pub use config::StorageConfig;
#[cfg(feature = "engine")]
pub use engine::{
    Admission, Batch, Checkpoint, CommitObserver, Engine, EraseReport, GroupCommit, LogEntry, LogStart,
    Pending, ScanPage, StampCheck, Stats, Update, CHECKPOINTS_DIR,
};
#[cfg(feature = "engine")]
pub use error::StorageError;
#[cfg(feature = "engine")]
pub use keys::{DueEntry, TtlTag};
#[cfg(feature = "engine")]
pub use mem::MemStore;
#[cfg(feature = "engine")]
pub use store::ReplicaStore;
