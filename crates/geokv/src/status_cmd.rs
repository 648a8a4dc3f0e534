//! `geokv status`: the deployment at a glance, from any node's peer address: regions and nodes
//! (health, ring ownership, keys, disk, hints) and the region x region replication lag matrix.

use std::time::Duration;

use clap::Args;
use geokv_client::proto;
use geokv_server::metrics::human_bytes;

use crate::admin_conn::AdminConn;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Peer address of any node of the deployment (from the topology), e.g. 127.0.0.1:7501
    /// (its node-to-node service: with TLS, only a node certificate may call it); without it,
    /// the Admin service at --endpoint.
    #[arg(long)]
    pub peer: Option<String>,
    /// Refresh every this many seconds until interrupted.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
}

pub async fn run(args: StatusArgs, json: bool) -> anyhow::Result<()> {
    let mut client = AdminConn::open(args.peer.as_deref()).await?;
    loop {
        let s = client.cluster_status(proto::ClusterStatusRequest {}).await?;
        let text = if json { serde_json::to_string_pretty(&s)? } else { render(&s) };
        match args.watch {
            None => {
                println!("{text}");
                return Ok(());
            }
            Some(secs) => {
                // Clear the screen and print the fresh table at the top.
                println!("\x1b[2J\x1b[H{text}");
                tokio::time::sleep(Duration::from_secs(secs.max(1))).await;
            }
        }
    }
}

/// The two tables as text.
pub fn render(s: &proto::ClusterStatusResponse) -> String {
    let mut out = format!(
        "{:<14} {:>5}  {:<12} {:<8} {:>8} {:>8} {:>10} {:>10} {:>7}  {}\n",
        "region", "node", "health", "ring", "primary", "replica", "keys", "disk", "hints", "client / peer"
    );
    for n in &s.nodes {
        if n.reachable {
            out.push_str(&format!(
                "{:<14} {:>5}  {:<12} {:<8} {:>7.1}% {:>7.1}% {:>10} {:>10} {:>7}  {} / {}\n",
                n.region,
                n.node_id,
                n.health,
                n.status,
                n.ownership_primary * 100.0,
                n.ownership_replica * 100.0,
                n.estimated_keys,
                human_bytes(n.disk_bytes),
                n.hints_pending,
                n.client_addr,
                n.peer_addr
            ));
        } else {
            out.push_str(&format!(
                "{:<14} {:>5}  {:<12} {:<8} not answering: {}\n",
                n.region, n.node_id, n.health, n.status, n.error
            ));
        }
    }
    out.push_str("\nreplication lag ms (backlog entries), rows ship to columns\n");
    out.push_str(&format!("{:<14}", "from \\ to"));
    for r in &s.regions {
        out.push_str(&format!(" {r:>22}"));
    }
    out.push('\n');
    for origin in &s.regions {
        out.push_str(&format!("{origin:<14}"));
        for dest in &s.regions {
            let cell = s.lags.iter().find(|c| &c.origin == origin && &c.destination == dest);
            let text = match cell {
                None => "-".to_string(),
                Some(c) if c.nodes_reporting == 0 => "no answer".to_string(),
                Some(c) => {
                    let flag = if c.cut {
                        " CUT"
                    } else if c.nodes_connected == 0 {
                        " DOWN"
                    } else {
                        ""
                    };
                    format!("{} ({}){flag}", c.lag_ms, c.backlog_entries)
                }
            };
            out.push_str(&format!(" {text:>22}"));
        }
        out.push('\n');
    }
    out.trim_end().to_string()
}
