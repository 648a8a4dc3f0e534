//! A node's part in its regional cluster: the coordinator of quorum writes and reads, the
//! node-to-node gRPC service, probing of peers, and hinted handoff.
//!
//! The decisions (placement, quorum bookkeeping, failure detection) are the sans-IO state
//! machines of `geokv-topology` and `geokv-cluster`; this module feeds them with gRPC answers
//! and timers.

mod anti_entropy;
mod coordinator;
mod peers;
mod scan;
mod service;
mod tasks;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use geokv_cluster::{Detector, DetectorConfig, Health};
use geokv_core::NodeId;
use geokv_topology::{Ring, Topology};

pub use coordinator::{Action, Applied};
pub use service::{level_of, ClusterService};

use crate::{ClusterConfig, Node};

/// Prefix of the message of a request that failed for want of replicas (`UNAVAILABLE`).
pub const QUORUM_FAILED: &str = "quorum not reached";

/// Counters of a node's cluster work.
#[derive(Default)]
pub struct ClusterStats {
    pub ae_rounds: AtomicU64,
    pub ae_keys_compared: AtomicU64,
    pub ae_keys_repaired: AtomicU64,
    pub ae_state_bytes_sent: AtomicU64,
    pub ae_state_bytes_received: AtomicU64,
    pub ae_summary_bytes: AtomicU64,
    pub hints_delivered: AtomicU64,
    pub read_repairs: AtomicU64,
}

pub struct Cluster {
    node: Arc<Node>,
    stats: ClusterStats,
    /// Held while an anti-entropy round runs.
    ae_lock: tokio::sync::Mutex<()>,
    me: NodeId,
    region: String,
    ring: Ring,
    n: usize,
    peers: peers::Peers,
    detector: Mutex<Detector>,
    cfg: ClusterConfig,
}

impl Cluster {
    /// The cluster view of node `node.id()` in `topology` (validated by the caller).
    pub fn new(node: Arc<Node>, topology: &Topology, cfg: ClusterConfig) -> Result<Arc<Self>, String> {
        let me = node.id();
        let spec = topology.node(me).ok_or_else(|| format!("node {me} is not in the topology"))?;
        let region = topology.region(&spec.region).expect("validated topology");
        let peers = peers::Peers::new(topology, &spec.region, me, cfg.request_timeout_ms)?;
        let detector = Detector::new(
            DetectorConfig { suspect_after_ms: cfg.suspect_after_ms, dead_after_ms: cfg.dead_after_ms },
            peers.ids(),
            node.now_ms(),
        );
        Ok(Arc::new(Cluster {
            me,
            region: spec.region.clone(),
            ring: topology.ring(&spec.region),
            n: region.replication_factor,
            peers,
            detector: Mutex::new(detector),
            cfg,
            node,
            stats: ClusterStats::default(),
            ae_lock: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    fn detector(&self) -> std::sync::MutexGuard<'_, Detector> {
        self.detector.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `id` may be used as a replica target now.
    pub fn healthy(&self, id: NodeId) -> bool {
        id == self.me || self.detector().health(id, self.node.now_ms()) == Health::Alive
    }

    /// Every peer's health, for operators.
    pub fn members(&self) -> std::collections::BTreeMap<NodeId, Health> {
        self.detector().snapshot(self.node.now_ms())
    }

    /// Starts probing peers, handing off hints, and anti-entropy.
    pub fn spawn_tasks(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tasks::spawn_prober(self.clone()),
            tasks::spawn_handoff(self.clone()),
            tasks::spawn_anti_entropy(self.clone()),
        ]
    }

    /// The counters, with the number of hints kept now (counted by a scan of the hints, so
    /// it runs on the blocking pool).
    pub async fn stats(&self) -> geokv_proto::v1::StatsResponse {
        let node = self.node.clone();
        let hints_pending =
            tokio::task::spawn_blocking(move || node.engine().hint_count()).await.unwrap_or(0);
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        geokv_proto::v1::StatsResponse {
            ae_rounds: get(&s.ae_rounds),
            ae_keys_compared: get(&s.ae_keys_compared),
            ae_keys_repaired: get(&s.ae_keys_repaired),
            ae_state_bytes_sent: get(&s.ae_state_bytes_sent),
            ae_state_bytes_received: get(&s.ae_state_bytes_received),
            ae_summary_bytes: get(&s.ae_summary_bytes),
            hints_pending,
            hints_delivered: get(&s.hints_delivered),
            read_repairs: get(&s.read_repairs),
            members: self
                .members()
                .into_iter()
                .map(|(node_id, h)| geokv_proto::v1::Member { node_id, health: h.as_str().into() })
                .collect(),
            node_id: self.me,
            region: self.region.clone(),
        }
    }
}
