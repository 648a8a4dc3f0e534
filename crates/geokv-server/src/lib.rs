//! geokv-server: one node's runtime, the driver of the protocol (`geokv-protocol`) over tonic
//! and RocksDB. Laid out by direction of traffic:
//!
//! - `api/`: client requests: the `Kv` handlers, conversion between protobuf and core types,
//!   errors to gRPC status codes (one place), requests served through another region.
//! - `peer/`: node-to-node calls: the peer service a node answers, the client it calls with.
//! - `region/`: the region driver (`Cluster`): quorum coordination, hinted handoff,
//!   anti-entropy, gossip membership, joins, leaves, cleanup, the cluster scan.
//! - `xregion/`: the cross-region sender and receiver streams.
//! - `residency/`: the installed policy and request routing; applying, enforcing and
//!   explaining a new policy, handing keys over to the regions it gives them.
//! - `ops/`: metrics, the status page, the deployment status.
//! - the node itself: the configuration file ([`ServerConfig`]), the node's operations over
//!   its engine with its hybrid logical clock ([`Node`]), the sweeper (TTL expiry, tombstone
//!   purge, change-log trimming), the process runtime, request tracing, and fault injection
//!   for test clusters (the `geokv-testkit` crate); blocking storage work runs through `blocking::run`.
//!
//! Does not own: CRDT semantics (`geokv-core`), the on-disk layout (`geokv-storage`), any
//! protocol decision (`geokv-protocol`).

mod api;
mod blocking;
mod clock;
mod config;
use geokv_testkit as faults;
mod node;
mod ops;
mod peer;
mod region;
mod residency;
mod runtime;
pub mod security;
mod sweeper;
pub mod trace;
mod xregion;

pub use ops::metrics;

pub use clock::{Clock, SystemClock};
pub use config::{
    ClusterConfig, ConfigError, FaultsConfig, MetricsConfig, ServerConfig, ShutdownConfig, SweeperConfig,
};
pub use node::{prepare_restored, Expect, Node, NodeError, ScanRequest, ScanResult, RESTORE_MARKER};
pub use ops::backup::sha256_of as sha256_file;
pub use ops::utc_date;
pub use region::Cluster;
pub use runtime::{serve, RunningServer};
pub use security::TlsConfig;
pub use sweeper::SweepReport;
pub use xregion::ReplicationConfig;
