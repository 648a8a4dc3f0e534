//! geokv-storage: the RocksDB engine of one node.
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

pub use config::StorageConfig;
#[cfg(feature = "engine")]
pub use engine::{
    Admission, CommitObserver, Engine, EraseReport, LogEntry, ScanPage, StampCheck, Stats, Update,
};
#[cfg(feature = "engine")]
pub use error::StorageError;
#[cfg(feature = "engine")]
pub use keys::{DueEntry, TtlTag};
