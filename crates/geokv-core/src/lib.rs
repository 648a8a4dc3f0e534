//! geokv-core: the data model every other crate shares.
//!
//! Owns: keys and their limits, the CRDT value types and their merges ([`Record`]), the
//! hybrid-logical-clock stamps that order them ([`Stamp`]), the client operations and how they
//! turn into new CRDT states ([`apply`]), and the error type for all of the above.
//!
//! Does not own: storage, networking, clocks. Everything here is a pure function of its inputs
//! (time is passed in), so it is tested without disks or sockets.

mod counter;
mod crdt;
mod error;
mod limits;
mod op;
mod orset;
mod record;
mod stamp;

pub use counter::{PnCounter, Totals};
pub use crdt::Crdt;
pub use error::CoreError;
pub use limits::{Limits, MAX_RECORD_BYTES, RECORD_OVERHEAD};
pub use op::{apply, Applied, Op, OpOutcome};
pub use orset::{Dot, OrSet};
pub use record::{Kind, Record, View};
pub use stamp::Stamp;

/// Identifies a node (and the actor it writes CRDT state as). Unique within a deployment.
pub type NodeId = u64;
