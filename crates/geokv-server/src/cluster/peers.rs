//! Connections to the other nodes of the region.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use geokv_core::NodeId;
use geokv_proto::v1::cluster_client::ClusterClient;
use geokv_topology::Topology;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::{Channel, Endpoint};

/// State sends in flight to one peer at most; further sends wait (up to the request
/// deadline) for a slot, so a slow replica builds no unbounded queue of requests.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 256;

pub struct Peers {
    clients: BTreeMap<NodeId, ClusterClient<Channel>>,
    slots: BTreeMap<NodeId, Arc<Semaphore>>,
    timeout: Duration,
}

impl Peers {
    /// Lazy channels to every other node of `region` (connected on first use, reconnected
    /// after failures).
    pub fn new(topology: &Topology, region: &str, me: NodeId, timeout_ms: u64) -> Result<Self, String> {
        let timeout = Duration::from_millis(timeout_ms);
        let mut clients = BTreeMap::new();
        for (id, spec) in topology.nodes_in(region) {
            if id == me {
                continue;
            }
            let ep = Endpoint::from_shared(format!("http://{}", spec.peer_addr))
                .map_err(|e| format!("peer address of node {id}: {e}"))?
                .connect_timeout(timeout)
                .tcp_nodelay(true);
            clients.insert(
                id,
                ClusterClient::new(ep.connect_lazy()).max_decoding_message_size(512 * 1024 * 1024),
            );
        }
        let slots =
            clients.keys().map(|&id| (id, Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_PEER)))).collect();
        Ok(Peers { clients, slots, timeout })
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.clients.keys().copied().collect()
    }

    pub fn client(&self, id: NodeId) -> Option<ClusterClient<Channel>> {
        self.clients.get(&id).cloned()
    }

    /// A slot for one state send to `id`, waiting at most the request deadline.
    pub async fn slot(&self, id: NodeId) -> Option<OwnedSemaphorePermit> {
        let sem = self.slots.get(&id)?.clone();
        tokio::time::timeout(self.timeout, sem.acquire_owned()).await.ok()?.ok()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
