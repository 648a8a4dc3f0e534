//! geokv-cluster: the decisions of a regional cluster, without I/O.
//!
//! Owns: the membership view that gossip feeds ([`Membership`]: ring status, health, the
//! owners and future rings), consistency levels and what they require of N replicas, and the bookkeeping of one
//! quorum write or read ([`WriteRound`], [`ReadRound`]): who answered, whether the quorum is
//! reached or can no longer be, the merged state of a read and which replicas need read repair.
//! These are plain state machines: the transport feeds them answers and acts on what they
//! decide, and tests drive them without sockets.
//!
//! Does not own: the transport (gRPC lives in `geokv-server`), the ring (`geokv-topology`).

pub mod membership;
pub mod merkle;
mod quorum;

pub use membership::{Health, MemberInfo, Membership, Status};
pub use quorum::{Level, Outcome, ReadRound, WriteRound};
