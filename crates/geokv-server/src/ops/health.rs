//! Readiness, apart from liveness: whether a node should get client traffic now. gRPC health
//! (the whole server, `""`, and `geokv.v1.Kv`) says NOT_SERVING and `/readyz` answers 503 with
//! the reason until the node is ready, and again from the moment it starts draining (SIGTERM);
//! `/healthz` only says the process answers.
//!
//! A node is ready once its data is open (it is before anything serves), it votes in quorum
//! reads (a node on a new data directory first recovers its keys from its peers), and, in a
//! region of several nodes, it is in gossip contact with at least one peer.

use std::sync::Arc;
use std::time::Duration;

use geokv_proto::v1::kv_server::KvServer;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::api::kv::KvService;
use crate::Cluster;

/// Where a node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Not ready yet, and why.
    Starting(&'static str),
    Ready,
    /// Shutting down: finishing in-flight requests, handing hints off.
    Draining,
}

/// A node's readiness, shared by the gRPC health service and the metrics port.
pub struct Ready {
    state: watch::Sender<Readiness>,
    health: HealthReporter,
}

impl Ready {
    pub async fn new(health: HealthReporter) -> Arc<Ready> {
        let ready = Arc::new(Ready { state: watch::channel(Readiness::Starting("starting")).0, health });
        ready.publish(false).await;
        ready
    }

    pub fn get(&self) -> Readiness {
        self.state.borrow().clone()
    }

    async fn publish(&self, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.health.set_service_status("", status).await;
        if serving {
            self.health.set_serving::<KvServer<KvService>>().await;
        } else {
            self.health.set_not_serving::<KvServer<KvService>>().await;
        }
    }

    async fn set(&self, to: Readiness) {
        if *self.state.borrow() == Readiness::Draining {
            return; // draining is final
        }
        let serving = to == Readiness::Ready;
        self.state.send_replace(to);
        self.publish(serving).await;
    }

    /// The node starts draining: not ready from now on.
    pub async fn drain(&self) {
        self.state.send_replace(Readiness::Draining);
        self.publish(false).await;
    }

    /// Watches the node (a region's member: `cluster`) until it is ready, then says so.
    pub fn spawn(self: &Arc<Self>, cluster: Option<Arc<Cluster>>) -> tokio::task::JoinHandle<()> {
        let ready = self.clone();
        tokio::spawn(async move {
            if let Some(c) = &cluster {
                ready
                    .set(Readiness::Starting("recovering the keys of a new data directory from its peers"))
                    .await;
                c.serving_reads().await;
                loop {
                    let peers = c.view().peers();
                    if peers.is_empty() || peers.iter().any(|p| c.healthy(*p)) {
                        break;
                    }
                    ready.set(Readiness::Starting("no gossip contact with any peer of its region yet")).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            ready.set(Readiness::Ready).await;
        })
    }
}
