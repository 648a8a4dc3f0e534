//! The TLS side of the test harness: a CA made for a test cluster, certificates for its nodes
//! and its test client, and the settings to reach its client and peer ports.

use std::path::{Path, PathBuf};
use std::process::Command;

use geokv_client::{proto, Client, Security};
use geokv_tls::issue::{Ca, Validity};
use geokv_tls::layout;

use super::{TestCluster, TEST_CLIENT};

impl TestCluster {
    /// Where a TLS cluster's certificates are (`geokv_tls::layout`).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// How to reach the peer port of a node: in a TLS cluster with the certificate of node
    /// `as_node` (1-based), as only nodes may call it.
    pub fn peer_security(&self, as_node: u64) -> Security {
        if !self.tls {
            return Security::none();
        }
        let w = geokv_tls::layout::node_paths(&self.certs_dir(), as_node);
        Security::tls(geokv_tls::layout::ca_cert_path(&self.certs_dir()), Some((w.cert, w.key)))
    }

    /// How test clients connect: in a TLS cluster with [`TEST_CLIENT`]'s certificate.
    pub fn client_security(&self) -> Security {
        if !self.tls {
            return Security::none();
        }
        let w = geokv_tls::layout::client_paths(&self.certs_dir(), TEST_CLIENT);
        Security::tls(geokv_tls::layout::ca_cert_path(&self.certs_dir()), Some((w.cert, w.key)))
    }

    /// A client of node `i`'s (0-based) peer port, as node 1 (or node 2 when `i` is node 1).
    pub async fn peer_client(
        &self,
        i: usize,
    ) -> Result<
        geokv_proto::v1::cluster_client::ClusterClient<tonic::transport::Channel>,
        geokv_client::ClientError,
    > {
        let as_node = if i == 0 { 2 } else { 1 };
        let channel =
            geokv_client::grpc::channel(&self.peer_addrs[i].to_string(), &self.peer_security(as_node))
                .await?;
        Ok(geokv_proto::v1::cluster_client::ClusterClient::new(channel))
    }

    /// CLI flags that reach node `i`'s peer port (TLS with a node certificate, or none).
    pub fn peer_cli_args(&self, i: usize) -> Vec<String> {
        let s = self.peer_security(if i == 0 { 2 } else { 1 });
        let mut args = Vec::new();
        for (flag, path) in [("--ca", s.ca), ("--cert", s.cert), ("--key", s.key)] {
            if let Some(p) = path {
                args.push(flag.to_string());
                args.push(p.display().to_string());
            }
        }
        args
    }

    /// A CA for this cluster, a certificate for every node of the topology file (re-issued for
    /// new nodes) and one for [`TEST_CLIENT`].
    pub(super) fn issue_certificates(&self) {
        use geokv_tls::issue::Validity;
        use geokv_tls::layout;
        let dir = self.certs_dir();
        let (ca, _) = layout::ca_in(&dir, "test CA", Validity::days(2)).unwrap();
        let topology = geokv_topology::Topology::load(&self.topology_path()).unwrap();
        for n in &topology.nodes {
            let node = layout::NodeEntry {
                id: n.id,
                region: n.region.clone(),
                hosts: vec!["127.0.0.1".into(), "localhost".into()],
            };
            if !layout::node_paths(&dir, n.id).cert.exists() {
                layout::write_node(&dir, &ca, &node, Validity::days(1)).unwrap();
            }
        }
        layout::gossip_key_in(&dir).unwrap();
        if !layout::client_paths(&dir, TEST_CLIENT).cert.exists() {
            layout::write_client(&dir, &ca, TEST_CLIENT, Validity::days(1)).unwrap();
        }
    }
}

/// Writes an issued certificate and key to `dir/<name>.pem|.key`; returns them as TLS settings
/// that trust the cluster's CA.
pub fn files(cluster: &TestCluster, dir: &Path, name: &str, issued: &geokv_tls::issue::Issued) -> Security {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    Security::tls(layout::ca_cert_path(&cluster.certs_dir()), Some((cert, key)))
}

/// The cluster's own CA (to issue odd certificates with it).
pub fn cluster_ca(cluster: &TestCluster) -> Ca {
    layout::ca_in(&cluster.certs_dir(), "unused", Validity::days(1)).unwrap().0
}

/// A CA nobody trusts.
pub fn foreign_ca() -> Ca {
    Ca::create("intruder CA", Validity::days(2)).unwrap().0
}

pub fn expired() -> Validity {
    Validity { not_before: time::OffsetDateTime::now_utc() - time::Duration::days(10), days: 2 }
}

pub async fn register(c: &Client, key: &[u8]) -> Option<Vec<u8>> {
    match c.get(key).await.unwrap().and_then(|e| e.value).and_then(|v| v.kind) {
        Some(proto::value::Kind::Register(b)) => Some(b),
        None => None,
        other => panic!("{key:?} holds {other:?}"),
    }
}

/// `curl` of a TLS node's metrics port, with `security`'s CA and certificate.
pub fn curl(cluster: &TestCluster, i: usize, path: &str, security: &Security) -> (u16, String) {
    let addr = cluster.nodes[i].metrics_addr.expect("metrics endpoint");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "--cacert"]).arg(layout::ca_cert_path(&cluster.certs_dir()));
    if let (Some(cert), Some(key)) = (&security.cert, &security.key) {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd.arg(format!("https://{addr}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The sum of `geokv_auth_rejected_total` on a node's metrics endpoint (read over TLS with the
/// test client's certificate).
pub fn rejections(cluster: &TestCluster, i: usize, reason: &str) -> u64 {
    let (code, body) = curl(cluster, i, "/metrics", &cluster.client_security());
    assert_eq!(code, 200, "metrics over TLS with a client certificate: {body}");
    body.lines()
        .filter(|l| l.starts_with("geokv_auth_rejected_total") && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
