//! Starting and stopping a node: storage, gRPC services, background tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use geokv_proto::v1::kv_server::KvServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use geokv_topology::Topology;

use crate::api::kv::KvService;
use crate::ops::health::Ready;
use crate::region::ClusterService;
use crate::security::gate::{Directory, GateLayer, Port};
use crate::security::listen::incoming;
use crate::security::{Alpn, NodeTls};
use crate::{sweeper, Clock, Cluster, Node, ServerConfig};

/// Streams a connection may reset before the server accepts them, on the node-to-node and
/// the client service (h2's default is 20; see `serve`).
const PEER_PENDING_RESETS: usize = 10_000;
const CLIENT_PENDING_RESETS: usize = 1_000;

/// A node serving gRPC. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Address of the node-to-node service, in a cluster.
    pub peer_addr: Option<SocketAddr>,
    /// Address of the metrics endpoint and status page, if configured.
    pub metrics_addr: Option<SocketAddr>,
    pub node: Arc<Node>,
    pub cluster: Option<Arc<Cluster>>,
    /// Whether the node should get client traffic (gRPC health, `/readyz`).
    pub ready: Arc<Ready>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
    shutdown: crate::config::ShutdownConfig,
}

impl RunningServer {
    /// Stops accepting requests, lets in-flight ones finish, and stops background tasks.
    pub async fn shutdown(mut self) -> Result<(), String> {
        self.node.set_stopping();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in &self.background {
            task.abort();
        }
        match self.server.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Drains the node (on SIGTERM): readiness off at once, new requests refused after
    /// `shutdown.drain_delay_ms` (so load balancers see the node leave), in-flight requests
    /// finished, hints handed off to their nodes, memtables flushed; all within
    /// `shutdown.grace_period_ms`, after which the rest is abandoned (the WAL keeps every
    /// acknowledged write either way).
    pub async fn drain(mut self) -> Result<(), String> {
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(self.shutdown.grace_period_ms);
        self.ready.drain().await;
        tracing::info!("draining: readiness off");
        tokio::time::sleep(Duration::from_millis(self.shutdown.drain_delay_ms)).await;
        // Watches and feeds end now: their clients go on through other nodes.
        self.node.set_stopping();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = match tokio::time::timeout_at(deadline, &mut self.server).await {
            Ok(Ok(r)) => r.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                tracing::warn!("in-flight requests did not finish within the grace period");
                Ok(())
            }
        };
        if let Some(cluster) = &self.cluster {
            match tokio::time::timeout_at(deadline, crate::region::handoff::handoff_once(cluster)).await {
                Ok(Ok(n)) => tracing::info!(delivered = n, "hints handed off"),
                Ok(Err(e)) => tracing::warn!(error = %e, "handing hints off failed; they stay on disk"),
                Err(_) => tracing::warn!("handing hints off did not finish within the grace period"),
            }
        }
        let node = self.node.clone();
        if let Err(e) = crate::blocking::run(move || node.engine().flush()).await {
            tracing::warn!(error = %e, "flush before exit failed; the WAL has every write");
        }
        for task in &self.background {
            task.abort();
        }
        tracing::info!(millis = started.elapsed().as_millis() as u64, "drained");
        served
    }

    /// Serves until the server fails (or is shut down from elsewhere).
    pub async fn wait(self) -> Result<(), String> {
        match self.server.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Reflection over every service this node serves, so generic clients (grpcurl) work.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(geokv_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Opens the node's storage and starts serving the client API, health and reflection on the
/// configured address. Returns once the listener is bound.
pub async fn serve(cfg: ServerConfig, clock: Arc<dyn Clock>) -> Result<RunningServer, String> {
    let metrics_listener = match &cfg.metrics.listen {
        Some(listen) => Some(crate::ops::metrics::http::bind(listen).await?),
        None => None,
    };
    // The topology and TLS files first: a bad one stops the start before any data is opened.
    let topology = match &cfg.topology {
        Some(path) => Some((Topology::load(path).map_err(|e| e.to_string())?, path.clone())),
        None => None,
    };
    let tls = match &cfg.tls {
        Some(t) => Some(NodeTls::load(&t.for_node(cfg.node_id)).map_err(|e| format!("[tls]: {e}"))?),
        None => None,
    };
    if let Some((topology, path)) = &topology {
        if topology.nodes.len() > 1 && tls.is_none() && !cfg.insecure {
            return Err(format!(
                "node {} is one of {} nodes of topology {} and has no [tls] section: its ports would be open to anyone who reaches them. Add a [tls] section (create the certificates with `geokv certs create`), or set `insecure = true` to run plaintext on a network you trust",
                cfg.node_id,
                topology.nodes.len(),
                path.display()
            ));
        }
    }
    let node = Arc::new(Node::open(&cfg, clock).map_err(|e| e.to_string())?);
    let mut background = Vec::new();
    if let Some(t) = &tls {
        t.count_into(node.metrics().auth_rejected.clone());
        node.set_tls(t.clone());
        background.push(t.spawn_watch());
    }
    let mut directory = Directory::default();
    let (listen, cluster, peer_addr) = match topology {
        None => (cfg.listen_addr(), None, None),
        Some((topology, path)) => {
            let spec = topology.node(cfg.node_id).ok_or_else(|| {
                format!(
                    "node_id {} is not a node of topology {}; add it or fix node_id",
                    cfg.node_id,
                    path.display()
                )
            })?;
            directory = Directory::of(&topology);
            let (client_addr, peer_addr) = (spec.client_addr.clone(), spec.peer_addr.clone());
            let cluster = Cluster::new(node.clone(), &topology, cfg.cluster.clone())?;
            let peer_listener = TcpListener::bind(spec.listen_addr(&peer_addr))
                .await
                .map_err(|e| format!("cannot listen on peer address {peer_addr}: {e}"))?;
            let peer_bound = peer_listener.local_addr().map_err(|e| e.to_string())?;
            let peer_service =
                geokv_proto::v1::cluster_server::ClusterServer::new(ClusterService::new(cluster.clone()))
                    .max_decoding_message_size(512 * 1024 * 1024)
                    .max_encoding_message_size(512 * 1024 * 1024);
            let peer_reflection = reflection().build_v1().map_err(|e| e.to_string())?;
            let gate = GateLayer {
                port: Port::Peer,
                node: cfg.node_id,
                tls: tls.clone(),
                directory: Arc::new(directory.clone()),
                auth: None,
            };
            let peer_server = tonic::transport::Server::builder()
                .layer(crate::trace::RequestIdLayer { server: "peer" })
                .layer(gate)
                .layer(crate::faults::net::LoseAnswersLayer {
                    faults: node.faults().clone(),
                    caller: crate::trace::caller,
                })
                // Peers cancel calls that time out; under load many such resets arrive before the
                // server accepts the streams, and h2's default (20) answers that with a GOAWAY
                // that fails every call on the connection. Peers are trusted nodes.
                .http2_max_pending_accept_reset_streams(Some(PEER_PENDING_RESETS))
                .add_service(peer_reflection)
                .add_service(peer_service);
            let peer_tls = tls.clone();
            background.push(tokio::spawn(async move {
                if let Err(e) =
                    peer_server.serve_with_incoming(incoming(peer_listener, peer_tls, Alpn::Grpc)).await
                {
                    tracing::error!(error = %e, "node-to-node service stopped");
                }
            }));
            background.extend(cluster.start().await?);
            let replicator =
                crate::xregion::Replicator::new(cluster.clone(), &topology, cfg.replication.clone())?;
            cluster.set_replicator(replicator.clone());
            background.extend(replicator.spawn());
            tracing::info!(region = cluster.region(), %peer_addr, "joined regional cluster");
            (spec.listen_addr(&client_addr), Some(cluster), Some(peer_bound))
        }
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}; pick a free address"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;

    let (health, health_service) = tonic_health::server::health_reporter();
    let ready = Ready::new(health).await;
    background.push(ready.spawn(cluster.clone()));
    let reflection_v1 = reflection().build_v1().map_err(|e| e.to_string())?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| e.to_string())?;
    let kv = KvServer::new(KvService::new(node.clone(), cluster.clone()))
        .max_decoding_message_size(cfg.limits.max_request_bytes)
        .max_encoding_message_size(cfg.limits.max_response_bytes.saturating_mul(2));

    // The `[auth]` grants, for the client port and the metrics port.
    let auth = cfg.auth.as_ref().map(|a| Arc::new(crate::security::auth::Authorizer::new(a)));
    let (stop, stopped) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .layer(crate::trace::RequestIdLayer { server: "client" })
        .layer(GateLayer {
            port: Port::Client,
            node: cfg.node_id,
            tls: tls.clone(),
            directory: Arc::new(directory),
            auth: auth.clone(),
        })
        .http2_max_pending_accept_reset_streams(Some(CLIENT_PENDING_RESETS))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(kv)
        .add_optional_service(cluster.as_ref().map(|c| {
            geokv_proto::v1::admin_server::AdminServer::new(crate::api::admin::AdminService::new(c.clone()))
        }));
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        incoming(listener, tls.clone(), Alpn::Grpc),
        async {
            let _ = stopped.await;
        },
    ));
    background.push(sweeper::spawn(node.clone(), Duration::from_millis(cfg.sweeper.interval_ms)));
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let (addr, task) = crate::ops::metrics::http::serve(
                listener,
                node.clone(),
                cluster.clone(),
                auth,
                ready.clone(),
            )?;
            background.push(task);
            tracing::info!(%addr, "metrics and status page serving");
            Some(addr)
        }
        None => None,
    };
    tracing::info!(node_id = cfg.node_id, %addr, data_dir = %cfg.data_dir.display(), "geokv node serving");
    Ok(RunningServer {
        addr,
        peer_addr,
        metrics_addr,
        node,
        cluster,
        ready,
        stop: Some(stop),
        server,
        background,
        shutdown: cfg.shutdown.clone(),
    })
}
