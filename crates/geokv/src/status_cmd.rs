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
    let nodes = s.nodes.iter().map(|n| {
        let mut row = vec![n.region.clone(), n.node_id.to_string(), n.health.clone(), n.status.clone()];
        if n.reachable {
            row.extend([
                format!("{:.1}%", n.ownership_primary * 100.0),
                format!("{:.1}%", n.ownership_replica * 100.0),
                n.estimated_keys.to_string(),
                human_bytes(n.disk_bytes),
                n.hints_pending.to_string(),
                format!("{} / {}", n.client_addr, n.peer_addr),
            ]);
        } else {
            row.extend(["-", "-", "-", "-", "-"].map(String::from));
            row.push(format!("not answering: {}", n.error));
        }
        row
    });
    let mut out = crate::output::table(
        &["region", "node", "health", "ring", "primary", "replica", "keys", "disk", "hints", "client / peer"],
        nodes,
        &[1, 4, 5, 6, 7, 8],
    );
    out.push_str("\n\nreplication lag ms (backlog entries), rows ship to columns\n");
    let mut header = vec!["from \\ to"];
    header.extend(s.regions.iter().map(String::as_str));
    let rows = s.regions.iter().map(|origin| {
        let mut row = vec![origin.clone()];
        for dest in &s.regions {
            let cell = s.lags.iter().find(|c| &c.origin == origin && &c.destination == dest);
            row.push(match cell {
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
            });
        }
        row
    });
    let right: Vec<usize> = (1..=s.regions.len()).collect();
    out.push_str(&crate::output::table(&header, rows, &right));
    out
}
