//! geokv-storage: the RocksDB engine of one node.
//!
//! Owns: the on-disk layout (column families `data`, `ttl`, `log`, `meta`), the versioned and
//! checksummed value encoding ([`codec`]), and read-modify-write of one key committed in a
//! single `WriteBatch` together with its change-log entry and TTL-index entries.
//!
//! Does not own: what an operation means (that is `geokv-core`), clocks (callers pass the time
//! and the HLC stamp), or anything about the network.

pub mod codec;
mod config;
mod engine;
mod error;
mod keys;

pub use config::StorageConfig;
pub use engine::{Admission, CommitObserver, Engine, EraseReport, LogEntry, ScanPage, Stats, Update};
pub use error::StorageError;
pub use keys::{DueEntry, TtlTag};
