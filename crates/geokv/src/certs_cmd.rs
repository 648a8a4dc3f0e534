//! `geokv certs`: a deployment's CA, node and client certificates, so an operator needs no
//! openssl. Writes the layout of `geokv_tls::layout`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use geokv_tls::issue::Validity;
use geokv_tls::layout::{self, NodeEntry};
use geokv_topology::Topology;

#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// Create (or reuse) the CA in DIR and issue a certificate to every node of a topology,
    /// valid for the hosts the topology gives it, and to each --client; and (unless DIR has
    /// one) the deployment's gossip key, gossip.key.
    Create {
        /// The topology file whose nodes get certificates.
        #[arg(long)]
        topology: PathBuf,
        /// Directory for the files (the CA in it is reused if present).
        #[arg(long)]
        dir: PathBuf,
        /// A client principal to issue a certificate to (repeatable).
        #[arg(long = "client")]
        clients: Vec<String>,
        /// Days the node and client certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Name of a new CA.
        #[arg(long, default_value = "geokv deployment CA")]
        ca_name: String,
    },
    /// Issue one node's certificate with the CA in DIR (a node added to the topology).
    Node {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        region: String,
        /// An IP address or DNS name the node is reached at (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// A new random bearer token for a principal, and the SHA-256 to list under its
    /// `token_sha256` in the nodes' [auth] section (the nodes never store the token itself).
    Token {
        /// The principal the token is for (printed in the config snippet).
        #[arg(long)]
        name: String,
    },
    /// Issue a client certificate with the CA in DIR.
    Client {
        #[arg(long)]
        dir: PathBuf,
        /// The principal name the certificate proves.
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// The hosts a node of `topology` is reached at: its client and peer addresses' hosts (IP
/// addresses or DNS names) and its WAN host, and loopback (so the CLI on the node's own host can reach it at 127.0.0.1).
pub fn node_entries(topology: &Topology) -> Vec<NodeEntry> {
    topology
        .nodes
        .iter()
        .map(|n| {
            let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            let candidates = [n.client_addr.host().to_string(), n.peer_addr.host().to_string()]
                .into_iter()
                .chain(n.wan_host.map(|ip| ip.to_string()));
            for host in candidates {
                let unspecified = host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified());
                if !unspecified && !hosts.contains(&host) {
                    hosts.push(host);
                }
            }
            NodeEntry { id: n.id, region: n.region.clone(), hosts }
        })
        .collect()
}

/// Creates the CA (unless `dir` has one) and the certificates of every node of `topology` and
/// of `clients`.
pub fn create(
    topology: &Topology,
    dir: &Path,
    clients: &[String],
    days: u32,
    ca_name: &str,
) -> anyhow::Result<bool> {
    let (ca, new) = layout::ca_in(dir, ca_name, Validity::days(days.saturating_mul(10).max(days)))
        .map_err(anyhow::Error::msg)?;
    for node in node_entries(topology) {
        layout::write_node(dir, &ca, &node, Validity::days(days)).map_err(anyhow::Error::msg)?;
    }
    for name in clients {
        layout::write_client(dir, &ca, name, Validity::days(days)).map_err(anyhow::Error::msg)?;
    }
    layout::gossip_key_in(dir).map_err(anyhow::Error::msg)?;
    Ok(new)
}

/// 32 random bytes from the OS, hex: a token nobody guesses.
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    geokv_tls::hex(&bytes)
}

fn existing_ca(dir: &Path) -> anyhow::Result<geokv_tls::issue::Ca> {
    if !layout::ca_cert_path(dir).exists() {
        anyhow::bail!("{} holds no CA (ca.pem, ca.key); run `geokv certs create` first", dir.display());
    }
    let (ca, _) = layout::ca_in(dir, "", Validity::days(1)).map_err(anyhow::Error::msg)?;
    Ok(ca)
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Create { topology, dir, clients, days, ca_name } => {
            let t = Topology::load(&topology).with_context(|| format!("reading {}", topology.display()))?;
            let new = create(&t, &dir, &clients, days, &ca_name)?;
            println!(
                "{} CA in {}; certificates for {} node(s) and {} client(s) written",
                if new { "created a" } else { "reused the" },
                dir.display(),
                t.nodes.len(),
                clients.len()
            );
            println!(
                "keep {} secret and off the nodes: it signs every certificate",
                dir.join("ca.key").display()
            );
        }
        CertsCommand::Node { dir, id, region, hosts, days } => {
            let ca = existing_ca(&dir)?;
            let w = layout::write_node(&dir, &ca, &NodeEntry { id, region, hosts }, Validity::days(days))
                .map_err(anyhow::Error::msg)?;
            println!("wrote {} and {}", w.cert.display(), w.key.display());
        }
        CertsCommand::Token { name } => {
            let token = new_token();
            println!("token: {token}");
            println!("give the token to {name:?} (GEOKV_TOKEN); put this in every node's config:");
            println!(
                "[[auth.principals]]\nname = {name:?}\nroles = []\ntoken_sha256 = [\"{}\"]",
                geokv_server::security::auth::token_hash(&token)
            );
        }
        CertsCommand::Client { dir, name, days } => {
            let ca = existing_ca(&dir)?;
            let w =
                layout::write_client(&dir, &ca, &name, Validity::days(days)).map_err(anyhow::Error::msg)?;
            println!("wrote {} and {}", w.cert.display(), w.key.display());
        }
    }
    Ok(())
}
