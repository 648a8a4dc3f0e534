//! Node-to-node traffic: the peer gRPC service a node answers (`service.rs`: merges, fetches,
//! coordinated writes, summaries and digests, residency and membership calls) and the client
//! it calls its peers with (`client.rs`). Failed calls are typed once, as
//! `geokv_protocol::PeerError` (`crate::api::status::peer_error`).

pub mod client;
pub mod service;

pub use service::ClusterService;
