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

use super::coalesce::{CallCounters, Counters, Fetches, Kind, Merges, Queue};
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
    /// State sends and fetches, coalesced (started on first use, from the runtime).
    merges: std::sync::OnceLock<Queue<Merges>>,
    fetches: std::sync::OnceLock<Queue<Fetches>>,
}

pub struct Peers {
    conns: Mutex<BTreeMap<NodeId, Conn>>,
    timeout: Duration,
    /// Calls of one kind in flight to one peer (`cluster.peer_calls_in_flight`).
    calls_in_flight: usize,
    faults: Arc<Faults>,
    /// TLS with this node's certificate, checking each peer's; `None`: plaintext.
    tls: Option<Arc<crate::security::NodeTls>>,
    counters: CallCounters,
}

impl Peers {
    pub fn new(
        timeout_ms: u64,
        calls_in_flight: usize,
        faults: Arc<Faults>,
        tls: Option<Arc<crate::security::NodeTls>>,
        counters: CallCounters,
    ) -> Self {
        let timeout = Duration::from_millis(timeout_ms);
        Peers { conns: Mutex::new(BTreeMap::new()), timeout, calls_in_flight, faults, tls, counters }
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
            conns.insert(
                id,
                Conn {
                    addr: addr.to_owned(),
                    client,
                    slots,
                    merges: Default::default(),
                    fetches: Default::default(),
                },
            );
        }
        conns.get(&id).map(f)
    }

    /// A client of node `id` at `addr`.
    pub fn client(&self, id: NodeId, addr: &str) -> Option<PeerClient> {
        self.with_conn(id, addr, |c| c.client.clone())
    }

    /// The queue of state sends to node `id` at `addr` (see [`super::coalesce`]). Call it
    /// from the runtime: the first call starts the queue's task.
    pub fn merge_queue(&self, id: NodeId, addr: &str) -> Option<Queue<Merges>> {
        self.with_conn(id, addr, |c| c.merges.get_or_init(|| self.queue(c)).clone())
    }

    /// The queue of fetches from node `id` at `addr` (as [`Peers::merge_queue`]).
    pub fn fetch_queue(&self, id: NodeId, addr: &str) -> Option<Queue<Fetches>> {
        self.with_conn(id, addr, |c| c.fetches.get_or_init(|| self.queue(c)).clone())
    }

    fn queue<K: Kind>(&self, c: &Conn) -> Queue<K> {
        let counters = Counters::of::<K>(&self.counters);
        Queue::start(c.client.clone(), self.faults.clone(), self.timeout, self.calls_in_flight, counters)
    }

    /// Slots for `n` state sends to `id` going together (at most all of them), waiting at
    /// most the request deadline.
    pub async fn slots(&self, id: NodeId, addr: &str, n: usize) -> Option<OwnedSemaphorePermit> {
        let sem = self.with_conn(id, addr, |c| c.slots.clone())?;
        let n = n.clamp(1, MAX_IN_FLIGHT_PER_PEER) as u32;
        tokio::time::timeout(self.timeout, sem.acquire_many_owned(n)).await.ok()?.ok()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
