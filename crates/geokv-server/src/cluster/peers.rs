//! Connections to the other nodes of the region.

use std::collections::BTreeMap;
use std::time::Duration;

use geokv_core::NodeId;
use geokv_proto::v1::cluster_client::ClusterClient;
use geokv_topology::Topology;
use tonic::transport::{Channel, Endpoint};

pub struct Peers {
    clients: BTreeMap<NodeId, ClusterClient<Channel>>,
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
        Ok(Peers { clients, timeout })
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.clients.keys().copied().collect()
    }

    pub fn client(&self, id: NodeId) -> Option<ClusterClient<Channel>> {
        self.clients.get(&id).cloned()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
