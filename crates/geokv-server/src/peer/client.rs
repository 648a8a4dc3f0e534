//! Connections to the other nodes of the region, made as nodes appear in the membership view
//! and remade when a node's address changes. Every call goes through this node's injected
//! faults ([`crate::faults::net::FaultyChannel`]; none unless a test sets some).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use geokv_core::NodeId;
use geokv_proto::v1::cluster_client::ClusterClient;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::service::interceptor::InterceptedService;

use crate::faults::net::FaultyChannel;
use crate::faults::Faults;

/// A client of a peer node; calls carry the current request id and this node's id.
pub type PeerClient = ClusterClient<InterceptedService<FaultyChannel, crate::trace::Propagate>>;

/// State sends in flight to one peer at most; further sends wait (up to the request
/// deadline) for a slot, so a slow replica builds no unbounded queue of requests.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 256;

struct Conn {
    addr: String,
    client: PeerClient,
    slots: Arc<Semaphore>,
}

pub struct Peers {
    conns: Mutex<BTreeMap<NodeId, Conn>>,
    timeout: Duration,
    faults: Arc<Faults>,
    /// TLS with this node's certificate, checking each peer's; `None`: plaintext.
    tls: Option<Arc<crate::security::NodeTls>>,
}

impl Peers {
    pub fn new(timeout_ms: u64, faults: Arc<Faults>, tls: Option<Arc<crate::security::NodeTls>>) -> Self {
        Peers { conns: Mutex::new(BTreeMap::new()), timeout: Duration::from_millis(timeout_ms), faults, tls }
    }

    fn with_conn<T>(&self, id: NodeId, addr: &str, f: impl FnOnce(&Conn) -> T) -> Option<T> {
        let mut conns = self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if conns.get(&id).is_none_or(|c| c.addr != addr) {
            // Lazy: connected on first use, reconnected after failures.
            let channel = match crate::security::lazy_channel(addr, self.timeout, self.tls.as_ref(), Some(id))
            {
                Ok(channel) => channel,
                Err(e) => {
                    tracing::warn!(peer = id, addr, error = %e, "unusable peer address");
                    return None;
                }
            };
            let channel = FaultyChannel::new(channel, id, self.faults.clone());
            let propagate = crate::trace::Propagate::from_node(self.faults.node_id());
            let client = ClusterClient::with_interceptor(channel, propagate)
                .max_decoding_message_size(512 * 1024 * 1024);
            let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_PEER));
            conns.insert(id, Conn { addr: addr.to_owned(), client, slots });
        }
        conns.get(&id).map(f)
    }

    /// A client of node `id` at `addr`.
    pub fn client(&self, id: NodeId, addr: &str) -> Option<PeerClient> {
        self.with_conn(id, addr, |c| c.client.clone())
    }

    /// A slot for one state send to `id`, waiting at most the request deadline.
    pub async fn slot(&self, id: NodeId, addr: &str) -> Option<OwnedSemaphorePermit> {
        let sem = self.with_conn(id, addr, |c| c.slots.clone())?;
        tokio::time::timeout(self.timeout, sem.acquire_owned()).await.ok()?.ok()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
