//! The region driver: a node's part in its regional cluster. `Cluster` holds the membership
//! view and runs the protocol's machines (`geokv-protocol`) over the peer client: quorum
//! writes and reads (`coordinator.rs`), a BatchWrite's writes coordinated together
//! (`batch.rs`), a coordinator's fetches from and state sends to one replica
//! (`replica_io.rs`), hinted handoff (`handoff.rs`), Merkle anti-entropy
//! (`anti_entropy.rs`), membership by gossip (`gossip.rs`), joins, leaves and cleanup
//! (`moves.rs`), recovering the keys of a new data directory (`recovery.rs`), and the
//! cluster-wide scan (`scan.rs`).
//!
//! The decisions (placement, quorum bookkeeping, failure detection, what to send and when a
//! round is done) are sans-IO: `geokv-topology`, `geokv-cluster` and `geokv-protocol`; this
//! module feeds them gRPC answers and timers. Its neighbours by direction of traffic:
//! `crate::api` (client requests), `crate::peer` (node-to-node calls), `crate::xregion`
//! (other regions), `crate::residency`, `crate::ops`.

pub(crate) mod anti_entropy;
pub(crate) mod batch;
pub(crate) mod coordinator;
pub(crate) mod gossip;
pub(crate) mod handoff;
pub(crate) mod moves;
pub(crate) mod recovery;
mod replica_io;
pub(crate) mod scan;

use crate::peer::coalesce::{Fetches, Merges, Queue};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use geokv_cluster::{Health, MemberInfo, Membership, Status};
use geokv_core::NodeId;
use geokv_topology::Topology;

pub use crate::peer::ClusterService;
pub use anti_entropy::AntiEntropyError;
pub(crate) use coordinator::{decode as coordinator_decode, encode as coordinator_encode};
pub use coordinator::{Action, Applied, CoordinatorError};
pub use moves::MoveError;

use crate::{ClusterConfig, Node};

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
    pub(crate) node: Arc<Node>,
    pub(crate) stats: ClusterStats,
    /// Held while an anti-entropy round runs.
    pub(crate) ae_lock: tokio::sync::Mutex<()>,
    /// Set while this node recovers the keys of a new data directory (`recovery.rs`).
    pub(crate) recovery: std::sync::Mutex<Option<geokv_protocol::Recovery>>,
    /// Whether the data directory was restored from a backup (recovery then also waits for
    /// the other regions).
    pub(crate) restored: bool,
    /// Whether this node votes in quorum reads (false while it recovers).
    pub(crate) serving: tokio::sync::watch::Sender<bool>,
    pub(crate) me: NodeId,
    pub(crate) region: String,
    /// The membership view, replaced (not mutated) on each change so a request routes by one
    /// consistent snapshot.
    pub(crate) view: RwLock<Arc<Membership>>,
    pub(crate) peers: crate::peer::client::Peers,
    pub(crate) gossip: OnceLock<gossip::Handle>,
    pub(crate) replicator: OnceLock<Arc<crate::xregion::Replicator>>,
    /// Rings of the other regions (from the topology) with their replication factors, for
    /// cross-region anti-entropy.
    pub(crate) remote_rings: std::collections::BTreeMap<String, (geokv_topology::Ring, usize)>,
    /// The residency policy this node holds and enforces.
    pub(crate) residency: Arc<crate::residency::Residency>,
    pub(crate) cfg: ClusterConfig,
}

/// A node of the deployment and the addresses this node dials it at.
pub(crate) struct NodeAddrs {
    pub id: NodeId,
    pub region: String,
    pub peer_addr: String,
    pub client_addr: String,
}

/// Name of the saved membership view in the engine's meta column family.
const VIEW_META: &str = "cluster/view";

/// How a change of the view is kept.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Change {
    None,
    /// Health only: not saved (gossip says it again after a restart).
    Health,
    /// A node's info (status, addresses, version): saved.
    Info,
}

impl Cluster {
    /// The cluster view of node `node.id()` in `topology` (validated by the caller). The
    /// view saved by an earlier run of this node wins over the topology file, which only
    /// seeds a node's first start: nodes that joined or left since are known from gossip.
    pub fn new(node: Arc<Node>, topology: &Topology, cfg: ClusterConfig) -> Result<Arc<Self>, String> {
        let me = node.id();
        let spec = topology.node(me).ok_or_else(|| format!("node {me} is not in the topology"))?;
        let region = topology.region(&spec.region).expect("validated topology");
        let saved: Option<Vec<MemberInfo>> = node
            .engine()
            .get_meta(VIEW_META)
            .map_err(|e| format!("cannot read the saved cluster view: {e}"))?
            .map(|raw| postcard::from_bytes(&raw))
            .transpose()
            .map_err(|e| format!("the saved cluster view does not decode ({e}); it is corrupt"))?;
        let info_of = |id: NodeId, s: &geokv_topology::NodeSpec, status| MemberInfo {
            id,
            version: 0,
            status,
            region: s.region.clone(),
            client_addr: s.client_addr_from(&spec.region).to_string(),
            peer_addr: s.peer_addr_from(&spec.region).to_string(),
        };
        let first_status = if cfg.join { Status::Joining } else { Status::Normal };
        let (mine, others): (Option<MemberInfo>, Vec<MemberInfo>) = match saved {
            Some(view) => {
                let mine = view.iter().find(|i| i.id == me).cloned();
                (mine, view.into_iter().filter(|i| i.id != me).collect())
            }
            None => (
                None,
                topology
                    .nodes
                    .iter()
                    .filter(|s| s.id != me)
                    .map(|s| info_of(s.id, s, Status::Normal))
                    .collect(),
            ),
        };
        // Addresses come from the topology file (they may have moved); the status from the
        // saved view; the version goes up on every start so peers take this incarnation.
        let status = mine.as_ref().map(|i| i.status).unwrap_or(first_status);
        let version = mine.as_ref().map(|i| i.version).unwrap_or(0);
        let me_info = MemberInfo { version, ..info_of(me, spec, status) }.next(status, node.now_ms());
        let residency =
            crate::residency::Residency::open(&spec.region, Arc::new(topology.clone()), node.engine())?;
        let grace = cfg.suspect_timeout_ms + 4 * cfg.probe_interval_ms;
        let view = Membership::new(
            me_info,
            others,
            region.replication_factor,
            topology.vnodes_per_node,
            node.now_ms(),
            grace,
        );
        let recovering = node.recovering().map_err(|e| format!("cannot read the recovery mark: {e}"))?;
        let restored = node.restored().map_err(|e| format!("cannot read the recovery mark: {e}"))?;
        let cluster = Arc::new(Cluster {
            recovery: std::sync::Mutex::new(recovering.then(geokv_protocol::Recovery::new)),
            restored,
            serving: tokio::sync::watch::Sender::new(!recovering),
            me,
            region: spec.region.clone(),
            view: RwLock::new(Arc::new(view)),
            peers: crate::peer::client::Peers::new(
                cfg.request_timeout_ms,
                cfg.peer_calls_in_flight,
                node.faults().clone(),
                node.tls().cloned(),
                crate::peer::coalesce::CallCounters::from(node.metrics()),
            ),
            gossip: OnceLock::new(),
            replicator: OnceLock::new(),
            remote_rings: topology
                .regions
                .iter()
                .filter(|r| r.name != spec.region)
                .map(|r| (r.name.clone(), (topology.ring(&r.name), r.replication_factor)))
                .collect(),
            residency,
            cfg,
            node,
            stats: ClusterStats::default(),
            ae_lock: tokio::sync::Mutex::new(()),
        });
        cluster.save_view()?;
        Ok(cluster)
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The counters of this node's cluster work.
    pub(crate) fn counters(&self) -> &ClusterStats {
        &self.stats
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub(crate) fn cfg(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// Attaches the cross-region replicator (once, at start).
    pub(crate) fn set_replicator(&self, r: Arc<crate::xregion::Replicator>) {
        let _ = self.replicator.set(r);
    }

    pub(crate) fn replicator(&self) -> Option<&Arc<crate::xregion::Replicator>> {
        self.replicator.get()
    }

    /// The current membership view.
    pub fn view(&self) -> Arc<Membership> {
        self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Applies `f` to a copy of the view and installs it if `f` says it changed; saves it if a
    /// node's info changed.
    pub(crate) fn update_view(&self, f: impl FnOnce(&mut Membership) -> Change) -> Change {
        let change = {
            let mut slot = self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut next = (**slot).clone();
            let change = f(&mut next);
            if change != Change::None {
                *slot = Arc::new(next);
            }
            change
        };
        if change == Change::Info {
            if let Err(e) = self.save_view() {
                tracing::error!(error = %e, "could not save the cluster view");
            }
        }
        change
    }

    fn save_view(&self) -> Result<(), String> {
        let infos: Vec<MemberInfo> = self.view().members().cloned().collect();
        let raw = postcard::to_allocvec(&infos).expect("member infos serialize");
        self.node.engine().put_meta(VIEW_META, &raw).map_err(|e| format!("cannot save the cluster view: {e}"))
    }

    /// Whether `id` may be used as a replica target now.
    pub fn healthy(&self, id: NodeId) -> bool {
        id == self.me || self.view().health(id, self.node.now_ms()) == Health::Alive
    }

    /// Every node of the deployment, this one included, with the addresses this node dials:
    /// the topology's nodes, updated by the view (joined nodes added, left ones removed).
    pub(crate) fn deployment_nodes(&self) -> Vec<NodeAddrs> {
        let mut nodes: std::collections::BTreeMap<NodeId, NodeAddrs> = self
            .residency
            .topology()
            .nodes
            .iter()
            .map(|n| {
                let addrs = NodeAddrs {
                    id: n.id,
                    region: n.region.clone(),
                    peer_addr: n.peer_addr_from(&self.region).to_string(),
                    client_addr: n.client_addr_from(&self.region).to_string(),
                };
                (n.id, addrs)
            })
            .collect();
        for m in self.view().members() {
            if m.status == Status::Left {
                nodes.remove(&m.id);
            } else {
                let addrs = NodeAddrs {
                    id: m.id,
                    region: m.region.clone(),
                    peer_addr: m.peer_addr.clone(),
                    client_addr: m.client_addr.clone(),
                };
                nodes.insert(m.id, addrs);
            }
        }
        nodes.into_values().collect()
    }

    /// This node's share of its region's ring.
    pub(crate) fn ownership(&self) -> geokv_topology::Ownership {
        let view = self.view();
        view.owners().ownership(self.me, view.n())
    }

    /// The deadline of one call to a peer.
    pub(crate) fn peer_timeout(&self) -> std::time::Duration {
        self.peers.timeout()
    }

    /// A client of node `id`, if the view knows its address.
    pub(crate) fn client(&self, id: NodeId) -> Option<crate::peer::client::PeerClient> {
        let addr = self.view().info(id)?.peer_addr.clone();
        self.peers.client(id, &addr)
    }

    /// The coalescing queue of state sends to `id` (see [`crate::peer::coalesce`]).
    pub(crate) fn merge_queue(&self, id: NodeId) -> Option<Queue<Merges>> {
        let addr = self.view().info(id)?.peer_addr.clone();
        self.peers.merge_queue(id, &addr)
    }

    /// The coalescing queue of fetches from `id`.
    pub(crate) fn fetch_queue(&self, id: NodeId) -> Option<Queue<Fetches>> {
        let addr = self.view().info(id)?.peer_addr.clone();
        self.peers.fetch_queue(id, &addr)
    }

    /// Slots for `n` state sends to `id` going together (see
    /// [`crate::peer::client::MAX_IN_FLIGHT_PER_PEER`]).
    pub(crate) async fn slots(&self, id: NodeId, n: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let addr = self.view().info(id)?.peer_addr.clone();
        self.peers.slots(id, &addr, n).await
    }

    /// Starts gossip, hinted handoff, anti-entropy, and the join if this node is joining.
    pub async fn start(self: &Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
        let mut tasks = gossip::start(self.clone()).await?;
        tasks.push(handoff::spawn_handoff(self.clone()));
        tasks.push(anti_entropy::spawn_anti_entropy(self.clone()));
        tasks.push(self.spawn_residency_sync());
        if self.view().me().status == Status::Joining {
            tasks.push(self.spawn_join());
        }
        Ok(tasks)
    }

    /// The counters, with the number of hints kept now (counted by a scan of the hints, so
    /// it runs on the blocking pool).
    pub async fn stats(&self) -> geokv_proto::v1::StatsResponse {
        // Counting hints scans them, and the storage figures read the data directory: both on
        // the blocking pool.
        let node = self.node.clone();
        let (hints_pending, storage) =
            crate::blocking::run(move || (node.engine().hint_count(), node.engine().stats()))
                .await
                .unwrap_or_default();
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (residency_forwards, residency_rejects, residency_dropped_deltas, residency_version) =
            self.residency_stats();
        let own = self.ownership();
        geokv_proto::v1::StatsResponse {
            residency_forwards,
            residency_rejects,
            residency_dropped_deltas,
            residency_version,
            ownership_primary: own.primary,
            ownership_replica: own.replica,
            disk_bytes: storage.disk_bytes,
            estimated_keys: storage.estimated_keys,
            ae_rounds: get(&s.ae_rounds),
            ae_keys_compared: get(&s.ae_keys_compared),
            ae_keys_repaired: get(&s.ae_keys_repaired),
            ae_state_bytes_sent: get(&s.ae_state_bytes_sent),
            ae_state_bytes_received: get(&s.ae_state_bytes_received),
            ae_summary_bytes: get(&s.ae_summary_bytes),
            hints_pending,
            hints_delivered: get(&s.hints_delivered),
            read_repairs: get(&s.read_repairs),
            members: {
                let (view, now) = (self.view(), self.node.now_ms());
                view.members()
                    .filter(|m| m.region == self.region)
                    .map(|m| geokv_proto::v1::Member {
                        node_id: m.id,
                        health: view.health(m.id, now).as_str().into(),
                        status: m.status.as_str().into(),
                        region: m.region.clone(),
                        client_addr: m.client_addr.clone(),
                        peer_addr: m.peer_addr.clone(),
                        version: m.version,
                    })
                    .collect()
            },
            node_id: self.me,
            region: self.region.clone(),
        }
    }
}
