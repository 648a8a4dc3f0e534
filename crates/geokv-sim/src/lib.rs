//! Fault testing for geokv.
//!
//! - [`history`]: the operations clients ran, with their outcomes (ok, failed, unknown).
//! - [`check`]: judges a history and the replicas' final states (convergence, no lost
//!   acknowledged write, counter bounds, set adds, QUORUM read-after-write, staleness figures).
//!   The real-process fault tests (`tests/faults.rs`) use both.
//! - [`sim`]: a deterministic simulation of a multi-region deployment built from the same
//!   sans-IO parts as the server (CRDT apply and merge, ring placement with stand-ins, quorum
//!   rounds), on a simulated network and clock with seeded faults; thousands of schedules run
//!   in seconds, and a seed replays exactly.

pub mod check;
pub mod history;
pub mod sim;
