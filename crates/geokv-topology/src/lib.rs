//! geokv-topology: where data lives.
//!
//! Owns: the topology file (regions with a location and a jurisdiction, the nodes of each
//! region, replication factor and virtual nodes) and its validation ([`Topology`]), and the
//! consistent-hash ring of a region ([`Ring`]) that maps a key to its preference list, and
//! residency policies ([`Policy`]): which regions may hold a key, evaluated without I/O.
//!
//! Does not own: node health (membership decides which nodes are up and passes that in), or
//! anything that does I/O beyond reading the topology file.

mod addr;
mod fence;
mod geo;
mod residency;
pub mod ring;
mod topology;

pub use addr::HostPort;
pub use fence::{fence_contains, fence_polygon, FenceError};
pub use geo::great_circle_km;
pub use residency::{Allow, OnForeign, Policy, PolicyError, Rule};
pub use ring::{Ownership, Placement, Ring, Target};
pub use topology::{NodeSpec, RegionSpec, Topology, TopologyError};
