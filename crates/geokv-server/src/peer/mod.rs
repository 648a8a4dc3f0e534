//! Node-to-node traffic: the peer gRPC service a node answers (`service.rs`: merges, fetches,
//! coordinated writes, summaries and digests, residency and membership calls) and the client
//! it calls its peers with (`client.rs`), whose state sends to one peer are coalesced into
//! `MergeMany` calls under load (`coalesce.rs`), and its change feed for watches (`feed.rs`). Failed calls are typed once, as
//! `geokv_protocol::PeerError` (`crate::api::status::peer_error`).

pub mod client;
pub mod coalesce;
pub mod feed;
pub mod service;

pub use service::ClusterService;
