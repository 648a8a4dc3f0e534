//! geokv-core: the data model every other crate shares.
//!
//! Owns: keys and their limits, the CRDT value types and their merges ([`Record`]), the
//! hybrid-logical-clock stamps that order them ([`Stamp`]), the client operations and how they
//! turn into new CRDT states ([`apply`]), and the error type for all of the above.
//!
//! Does not own: storage, networking, clocks. Everything here is a pure function of its inputs
//! (time is passed in), so it is tested without disks or sockets.

pub mod append_once;
mod cas;
mod counter;
mod crdt;
mod error;
mod limits;
pub mod once;
mod once_settle;
#[cfg(test)]
mod once_tests;
mod op;
mod orset;
mod record;
mod show;
mod stamp;

pub use append_once::AppendIds;
pub use cas::{cas_holds, Expect};
pub use counter::{PnCounter, Totals};
pub use crdt::Crdt;
pub use error::CoreError;
pub use limits::{Limits, MAX_RECORD_BYTES, RECORD_OVERHEAD};
pub use once::{Once, Onces, RequestId, Settled};
pub use op::{apply, apply_as, Applied, Op, OpOutcome};
pub use orset::{Dot, OrSet};
pub use record::{Kind, Record, RecordV1, RecordV2, RecordV2Ref, RecordV3, RecordV3Ref, View};
pub use show::key_label;
pub use stamp::Stamp;

/// Identifies a node (and the actor it writes CRDT state as). Unique within a deployment.
pub type NodeId = u64;

/// The actor a node writes counter entries and set dots as: a mix of its id and its data
/// directory's incarnation, so that a node that may have lost some of its own CRDT state (its
/// data was wiped, or it dropped keys) never writes under a name whose history other replicas
/// remember better than it does.
pub fn actor_id(node: NodeId, incarnation: u64) -> u64 {
    // splitmix64 of the pair: distinct (node, incarnation) pairs collide with negligible odds.
    let mut z = node.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ incarnation.rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
