//! geokv-protocol: the replica protocol of a region, without I/O.
//!
//! Owns the decisions a node makes for a client request: where it runs ([`route`]), in what
//! order a batch's items run ([`batch`]), how a home replica coordinates a write
//! ([`WriteCoordinator`]: read first, apply, fan out, count acknowledgements, keep hints), how
//! a quorum read merges and repairs ([`ReadCoordinator`]), how a scan merges the pages of a
//! region's nodes ([`ScanRound`]), how a state is sent to a key's replicas ([`ReplicateRound`],
//! also used for states from other regions), how a write is forwarded and when a failed forward
//! may be retried ([`Forwarder`]), where a replica keeps a state it is sent ([`keep`]), what
//! becomes of the hints it keeps ([`hint_plan`], [`delivered`]), how two replicas find and
//! exchange the keys they differ on ([`Exchange`], Merkle anti-entropy), what a cross-region
//! batch carries and how a received one is taken in and acknowledged ([`xregion`]), when a
//! replica that lost its data may vote in quorum reads again ([`recovery`]), how the change
//! feeds of a region's nodes merge into one watch ([`watch`]), the steps of
//! nodes joining and leaving a region and of cleanup ([`moves`]), and where a client request
//! runs under the residency policy ([`residency`]).
//!
//! Each coordinator is a state machine: it takes events (a replica's answer, the store's
//! result, a deadline) and returns [`Command`]s (fetch, merge, apply, send, keep a hint,
//! call, respond). It never touches a socket, a disk or a clock: the server carries the
//! commands out over gRPC and RocksDB, the simulator over its simulated network and an
//! in-memory store, and the tests below assert the exact commands each event produces.
//!
//! Does not own: the ring and placement (`geokv-topology`), quorum arithmetic and the
//! membership view (`geokv-cluster`), CRDT semantics (`geokv-core`), transports and stores.

pub mod anti_entropy;
pub mod batch;
mod command;
mod error;
mod forward;
pub mod handoff;
pub mod moves;
mod read;
pub mod recovery;
mod replicas;
pub mod residency;
pub mod scan;
pub mod shipping;
pub mod watch;
mod write;
pub mod xregion;

#[cfg(test)]
mod testing;

pub use anti_entropy::{shared, AeCommand, Exchange, Outcome, DIGEST_BUCKETS_PER_CALL};
pub use command::Command;
pub use error::{core_reason, Failure, Kind, PeerError, QUORUM_FAILED, QUORUM_NOT_REACHED};
pub use forward::{ForwardCommand, Forwarder};
pub use handoff::{delivered, hint_plan, Delivered, HintPlan};
pub use read::{ReadCommand, ReadCoordinator};
pub use recovery::{vote, Recovery};
pub use replicas::{keep, repeatable, route, Keep, Replicas, Route};
pub use scan::{NodePage, ScanAnswer, ScanRound};
pub use write::{ReplicateRound, WriteCommand, WriteCoordinator};

use geokv_core::{Expect, Op, OpOutcome, Record, Stamp};

/// Whether HLC time `stamp_time` (NTP64) lies beyond `max_drift_ms` ahead of a node's clock
/// (`local_ms`, Unix milliseconds). A state stamped that far ahead is neither stored nor
/// served (it would win every last-writer-wins race), and a coordinator whose clock runs that
/// far ahead may not write.
pub fn beyond_drift(stamp_time: u64, local_ms: u64, max_drift_ms: u64) -> bool {
    Stamp::new(stamp_time, 0).unix_millis() > local_ms.saturating_add(max_drift_ms)
}

/// A client write.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Op(Op),
    Cas { expect: Expect, value: Vec<u8>, ttl_ms: Option<u64> },
}

/// What a coordinator did with a write.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// Written: the operation's outcome and the key's new state.
    Written(OpOutcome, Record),
    /// A compare-and-swap whose condition did not hold; the state it found (None if absent).
    CasFailed(Option<Record>),
}
