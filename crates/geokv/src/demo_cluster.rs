//! The multi-region cluster of `geokv demo`: three regions of three nodes each, in this
//! process, on free loopback ports, with temporary data directories and emulated WAN links
//! (delays from the distances between Dublin, Ashburn and Singapore). TLS is on on every port
//! and link, with certificates made at start (`geokv certs create`'s code) in `certs/` of the
//! data directory; the tour's client presents the `demo` client certificate, and `[auth]` lets
//! it do everything while a `viewer` token may only read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use geokv_client::{proto, Client, Security};
use geokv_server::security::auth::{token_hash, AuthConfig, PrincipalConfig, RoleConfig};
use geokv_server::{serve, RunningServer, ServerConfig, SystemClock};
use proto::cluster_client::ClusterClient;

/// (name, jurisdiction, [longitude, latitude]) of the demo regions.
pub const REGIONS: [(&str, &str, [f64; 2]); 3] = [
    ("eu-west", "eu", [-6.26, 53.35]),
    ("us-east", "us", [-77.49, 39.04]),
    ("ap-southeast", "sg", [103.82, 1.35]),
];
pub const NODES_PER_REGION: usize = 3;

/// The demo's residency policy: `eu:user:` keys stay in the EU (requests elsewhere are
/// forwarded there), `us:phi:` keys stay in us-east (requests elsewhere are refused).
pub const DEMO_POLICY: &str = "[[rules]]\nname = \"default\"\nprefix = \"\"\neverywhere = true\n\n\
[[rules]]\nname = \"eu-users\"\nprefix = \"eu:user:\"\njurisdictions = [\"eu\"]\non_foreign = \"forward\"\n\n\
[[rules]]\nname = \"us-health\"\nprefix = \"us:phi:\"\nregions = [\"us-east\"]\non_foreign = \"reject\"\n";

pub struct DemoNode {
    pub region: &'static str,
    pub server: RunningServer,
}

/// The client principal of the tour.
pub const DEMO_CLIENT: &str = "demo";

impl DemoNode {
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.server.addr)
    }

    pub fn peer_addr(&self) -> String {
        self.server.peer_addr.map(|a| a.to_string()).unwrap_or_default()
    }
}

pub struct DemoCluster {
    pub nodes: Vec<DemoNode>,
    /// Where the deployment's certificates are.
    pub certs: PathBuf,
    /// The token of principal `viewer`, who may only read `greeting`.
    pub viewer_token: String,
}

/// The demo's `[auth]`: the tour's client `demo` may do everything; `viewer`, proved by a
/// token, may read the key `greeting` and nothing else.
fn demo_auth(viewer_token: &str) -> AuthConfig {
    let role = |name: &str, read: &[&str], write: &[&str], admin| RoleConfig {
        name: name.into(),
        read: read.iter().map(|s| s.to_string()).collect(),
        write: write.iter().map(|s| s.to_string()).collect(),
        admin,
    };
    AuthConfig {
        roles: vec![role("operator", &[""], &[""], true), role("viewer", &["greeting"], &[], false)],
        principals: vec![
            PrincipalConfig {
                name: DEMO_CLIENT.into(),
                roles: vec!["operator".into()],
                token_sha256: vec![],
            },
            PrincipalConfig {
                name: "viewer".into(),
                roles: vec!["viewer".into()],
                token_sha256: vec![token_hash(viewer_token)],
            },
        ],
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl DemoCluster {
    /// Starts the nine nodes under `dir` (ports picked free just before; retried if taken).
    pub async fn start(dir: &Path) -> anyhow::Result<DemoCluster> {
        let mut last = None;
        for attempt in 0..3 {
            match Self::try_start(&dir.join(format!("attempt-{attempt}"))).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    async fn try_start(dir: &Path) -> anyhow::Result<DemoCluster> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("residency.toml"), DEMO_POLICY)?;
        let mut topology = String::from(
            "# geokv demo: three regions of three nodes on loopback.\nresidency = \"residency.toml\"\n",
        );
        for (name, jurisdiction, [lon, lat]) in REGIONS {
            topology.push_str(&format!(
                "[[regions]]\nname = \"{name}\"\nlocation = [{lon}, {lat}]\njurisdiction = \"{jurisdiction}\"\nreplication_factor = 3\n\n"
            ));
        }
        let mut ids = Vec::new();
        for (r, (name, _, _)) in REGIONS.iter().enumerate() {
            for n in 0..NODES_PER_REGION {
                let id = (r * NODES_PER_REGION + n + 1) as u64;
                topology.push_str(&format!(
                    "[[nodes]]\nid = {id}\nregion = \"{name}\"\nclient_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\n\n",
                    free_port()?,
                    free_port()?
                ));
                ids.push((id, *name));
            }
        }
        let topo_path = dir.join("topology.toml");
        std::fs::write(&topo_path, topology)?;
        let certs = dir.join("certs");
        let parsed = geokv_topology::Topology::load(&topo_path)?;
        crate::certs_cmd::create(&parsed, &certs, &[DEMO_CLIENT.to_string()], 30, "geokv demo CA")?;
        let viewer_token = crate::certs_cmd::new_token();
        let mut nodes = Vec::new();
        for (id, region) in ids {
            let mut cfg = ServerConfig::new(id, dir.join(format!("node-{id}")));
            cfg.topology = Some(topo_path.clone());
            let node_files = geokv_tls::layout::node_paths(&certs, id);
            cfg.tls = Some(geokv_server::TlsConfig {
                ca: geokv_tls::layout::ca_cert_path(&certs),
                cert: node_files.cert,
                key: node_files.key,
                reload_check_ms: 5000,
                gossip_key: Some(geokv_tls::layout::gossip_key_path(&certs)),
            });
            cfg.auth = Some(demo_auth(&viewer_token));
            cfg.storage.sync = false;
            cfg.replication.emulate_wan = true;
            cfg.cluster.probe_interval_ms = 200;
            cfg.cluster.suspect_timeout_ms = 1000;
            cfg.cluster.request_timeout_ms = 1000;
            cfg.metrics.listen = Some("127.0.0.1:0".into());
            let server = serve(cfg, Arc::new(SystemClock)).await.map_err(anyhow::Error::msg)?;
            nodes.push(DemoNode { region, server });
        }
        // New data directories: each node serves reads once its first exchanges with its
        // region's peers (empty, like it) are done.
        for node in &nodes {
            if let Some(c) = &node.server.cluster {
                tokio::time::timeout(std::time::Duration::from_secs(30), c.serving_reads())
                    .await
                    .context("a node did not start serving reads within 30 s")?;
            }
        }
        Ok(DemoCluster { nodes, certs, viewer_token })
    }

    /// How the tour's client connects: TLS, the `demo` client certificate.
    pub fn client_security(&self) -> Security {
        let w = geokv_tls::layout::client_paths(&self.certs, DEMO_CLIENT);
        Security::tls(geokv_tls::layout::ca_cert_path(&self.certs), Some((w.cert, w.key)))
    }

    /// How the tour reaches a peer port: as node 1 (only nodes may call it).
    pub fn peer_security(&self) -> Security {
        let w = geokv_tls::layout::node_paths(&self.certs, 1);
        Security::tls(geokv_tls::layout::ca_cert_path(&self.certs), Some((w.cert, w.key)))
    }

    /// A client of a node's peer port.
    pub async fn peer_client(
        &self,
        node: &DemoNode,
    ) -> anyhow::Result<ClusterClient<tonic::transport::Channel>> {
        Ok(ClusterClient::new(geokv_client::grpc::channel(&node.peer_addr(), &self.peer_security()).await?))
    }

    pub fn in_region(&self, region: &str) -> impl Iterator<Item = &DemoNode> {
        let region = region.to_owned();
        self.nodes.iter().filter(move |n| n.region == region)
    }

    /// A client of the first node of `region`.
    pub async fn client(&self, region: &str) -> anyhow::Result<Client> {
        let node = self.in_region(region).next().context("no such region")?;
        Ok(Client::connect_with(&node.endpoint(), &self.client_security()).await?)
    }

    /// Cuts or heals every link between `region` and the others, both ways.
    pub async fn set_isolated(&self, region: &str, cut: bool) -> anyhow::Result<()> {
        for node in &self.nodes {
            let mut c = self.peer_client(node).await?;
            let status = c.replication_status(proto::ReplicationStatusRequest {}).await?.into_inner();
            for d in status.destinations {
                if node.region == region || d.destination == region {
                    let mut link = d.link.unwrap_or_default();
                    link.cut = cut;
                    c.set_link(proto::SetLinkRequest { destination: d.destination, link: Some(link) })
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Lag matrix, from the deployment status gathered by the first node: for each (origin,
    /// destination), the largest oldest-unacknowledged age over the origin's nodes, the backlog,
    /// the link, and wire bytes before/after compression.
    pub async fn lag_table(&self) -> anyhow::Result<String> {
        let mut c = self.peer_client(&self.nodes[0]).await?;
        let status = c.cluster_status(proto::ClusterStatusRequest {}).await?.into_inner();
        let rows = status.lags.iter().map(|c| {
            let link = if c.cut { "cut".to_string() } else { c.link_delay_ms.to_string() };
            vec![
                c.origin.clone(),
                c.destination.clone(),
                c.lag_ms.to_string(),
                c.backlog_entries.to_string(),
                c.backlog_bytes.to_string(),
                link,
                c.raw_bytes.to_string(),
                c.wire_bytes.to_string(),
            ]
        });
        let header = ["from", "to", "lag ms", "backlog", "backlog B", "link ms", "raw B", "wire B"];
        Ok(format!("{}\n", crate::output::table(&header, rows, &[2, 3, 4, 5, 6, 7])))
    }

    pub async fn shutdown(self) {
        for node in self.nodes {
            let _ = node.server.shutdown().await;
        }
    }
}
