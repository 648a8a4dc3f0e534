//! geokv-replication: the decisions of cross-region replication, without I/O.
//!
//! Owns: the wire format of a batch of deltas ([`Batch`]: postcard, zstd-compressed, with a
//! bound on the decompressed size), the link emulator's plan for a batch on a region pair
//! ([`Link`]: delay, jitter, loss, cut, FIFO like a TCP stream), and the sender's lag
//! accounting per destination ([`Outbox`]). Does not own: tailing the change log, the gRPC
//! stream, or applying deltas (those live in `geokv-server`).

mod batch;
mod lag;
mod link;

pub use batch::{reads_format, Batch, BatchError, Delta, BATCH_FORMAT, MAX_BATCH_RAW_BYTES};
pub use lag::{worst_of, LagHistory, LagReport, Outbox, HISTORY_STEP_MS, HISTORY_WINDOW_MS};
pub use link::{default_delay_ms, Link, LinkParams, Plan};
