//! geokv-server: one node's runtime.
//!
//! Owns: the configuration file ([`ServerConfig`]), the node's operations over its storage
//! engine with its hybrid logical clock ([`Node`]), the tonic services (client API, health,
//! reflection) and the conversion between protobuf and core types at that edge, the mapping
//! of errors to gRPC status codes, the background sweeper (TTL expiry, tombstone purge,
//! change-log trimming), and fault injection for test clusters.
//!
//! Does not own: CRDT semantics (`geokv-core`) or the on-disk layout (`geokv-storage`).

mod clock;
mod cluster;
mod config;
mod convert;
mod faults;
mod forward;
pub mod metrics;
mod node;
mod observed;
mod replication;
mod residency;
mod runtime;
mod service;
mod status;
mod sweeper;
pub mod trace;

pub use clock::{Clock, SystemClock};
pub use cluster::Cluster;
pub use config::{ClusterConfig, ConfigError, FaultsConfig, MetricsConfig, ServerConfig, SweeperConfig};
pub use node::{Expect, Node, NodeError, ScanRequest, ScanResult};
pub use replication::ReplicationConfig;
pub use runtime::{serve, RunningServer};
pub use sweeper::SweepReport;
