//! `geokv admin`: operating single nodes (their view of the cluster, leaving the ring,
//! cleanup, cross-region replication and its emulated links), through the Admin service at
//! the first of `--endpoints` or, with `--peer`, a node's peer address ([`AdminConn`]).

use anyhow::Context;
use clap::Subcommand;
use geokv_client::proto;
use serde_json::{json, Value as Json};

use crate::admin_conn::AdminConn;
use crate::client_cmd::print;
use crate::output::*;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Show a cluster node's view: peers' health, anti-entropy, hints and read-repair counters.
    /// Talks to the Admin service at --endpoints' first node, or with --peer to the node's peer address.
    PeerStats {
        /// The node's peer address (its node-to-node service, which only a node certificate may
        /// call with TLS); without it, the Admin service at --endpoints' first node.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Take a node off its region's ring: it streams its keys to their next owners, then
    /// turns "left" (it can be stopped then).
    Leave {
        /// The node's peer address (its node-to-node service, which only a node certificate may
        /// call with TLS); without it, the Admin service at --endpoints' first node.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Drop a node's copies of keys it no longer replicates, after joins and leaves have
    /// finished.
    Cleanup {
        /// The node's peer address (its node-to-node service, which only a node certificate may
        /// call with TLS); without it, the Admin service at --endpoints' first node.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Show a node's cross-region replication: per destination region the lag (age of the
    /// oldest unacknowledged change), backlog, bytes before/after compression and link.
    ReplStatus {
        /// The node's peer address (its node-to-node service, which only a node certificate may
        /// call with TLS); without it, the Admin service at --endpoints' first node.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Change the emulated WAN link from a node to another region (its other settings kept).
    Link {
        /// The node's peer address (its node-to-node service, which only a node certificate may
        /// call with TLS); without it, the Admin service at --endpoints' first node.
        #[arg(long)]
        peer: Option<String>,
        /// Destination region.
        #[arg(long)]
        to: String,
        #[arg(long)]
        delay_ms: Option<u64>,
        #[arg(long)]
        jitter_ms: Option<u64>,
        /// Probability that a batch is lost, 0 to 1.
        #[arg(long)]
        loss: Option<f64>,
        /// Cut the link (`--cut true`) or heal it (`--cut false`).
        #[arg(long)]
        cut: Option<bool>,
    },
}

pub async fn run(cmd: AdminCommand, js: bool) -> anyhow::Result<()> {
    // A command that changes one node must name it: not the first of a list meant for
    // failover (GEOKV_ENDPOINTS, say).
    let changes = match &cmd {
        AdminCommand::Leave { peer } | AdminCommand::Cleanup { peer } | AdminCommand::Link { peer, .. } => {
            peer.is_none()
        }
        _ => false,
    };
    if changes && crate::client_cmd::endpoints().len() > 1 {
        return Err(crate::cli_io::usage(
            "this command changes one node: name it alone with --endpoints URL (or its peer address with --peer)",
        ));
    }
    match &cmd {
        AdminCommand::PeerStats { peer } => peer_stats(peer.as_deref(), js).await,
        AdminCommand::Leave { peer } | AdminCommand::Cleanup { peer } => {
            move_cmd(peer.as_deref(), matches!(cmd, AdminCommand::Leave { .. }), js).await
        }
        AdminCommand::ReplStatus { peer } => repl_status(peer.as_deref(), js).await,
        AdminCommand::Link { peer, to, delay_ms, jitter_ms, loss, cut } => {
            set_link(peer.as_deref(), to, (*delay_ms, *jitter_ms, *loss, *cut), js).await
        }
    }
}

fn link_json(l: &proto::LinkSettings) -> Json {
    json!({ "delay_ms": l.delay_ms, "jitter_ms": l.jitter_ms, "loss": l.loss, "cut": l.cut })
}

async fn repl_status(peer: Option<&str>, js: bool) -> anyhow::Result<()> {
    let s = AdminConn::open(peer).await?.replication_status(proto::ReplicationStatusRequest {}).await?;
    let dests: Vec<Json> = s
        .destinations
        .iter()
        .map(|d| {
            json!({ "destination": d.destination, "lag_ms": d.oldest_unacked_ms, "backlog_entries": d.backlog_entries,
                "backlog_bytes": d.backlog_bytes, "acked_seq": d.acked_seq, "committed_seq": d.committed_seq,
                "batches_sent": d.batches_sent, "deltas_sent": d.deltas_sent, "deltas_acked": d.deltas_acked,
                "raw_bytes": d.raw_bytes, "wire_bytes": d.wire_bytes, "resends": d.resends,
                "takeover_acked_seq": d.takeover_acked_seq, "takeover_covered": d.takeover_covered,
                "takeover_shipped": d.takeover_shipped,
                "link": d.link.as_ref().map(link_json) })
        })
        .collect();
    let j = json!({ "node_id": s.node_id, "region": s.region, "destinations": dests,
        "batches_received": s.batches_received, "deltas_applied": s.deltas_applied, "drift_rejections": s.drift_rejections });
    let rows = s.destinations.iter().map(|d| {
        let link = d.link.unwrap_or_default();
        let link = if link.cut {
            "cut".to_string()
        } else {
            format!("{} ms ±{} loss {}", link.delay_ms, link.jitter_ms, link.loss)
        };
        vec![
            d.destination.clone(),
            d.oldest_unacked_ms.to_string(),
            d.backlog_entries.to_string(),
            d.backlog_bytes.to_string(),
            d.raw_bytes.to_string(),
            d.wire_bytes.to_string(),
            link,
        ]
    });
    let human = format!(
        "node {} in {}: received {} batches, applied {} deltas, {} drift rejections\n{}",
        s.node_id,
        s.region,
        s.batches_received,
        s.deltas_applied,
        s.drift_rejections,
        table(&["to", "lag ms", "backlog", "backlog B", "raw B", "wire B", "link"], rows, &[1, 2, 3, 4, 5])
    );
    print(js, j, human);
    Ok(())
}

async fn set_link(
    peer: Option<&str>,
    to: &str,
    (delay_ms, jitter_ms, loss, cut): (Option<u64>, Option<u64>, Option<f64>, Option<bool>),
    js: bool,
) -> anyhow::Result<()> {
    let mut c = AdminConn::open(peer).await?;
    let status = c.replication_status(proto::ReplicationStatusRequest {}).await?;
    let current = status.destinations.iter().find(|d| d.destination == to).with_context(|| {
        let known: Vec<&str> = status.destinations.iter().map(|d| d.destination.as_str()).collect();
        format!("node {} in {} replicates to {known:?}, not to {to:?}", status.node_id, status.region)
    })?;
    let mut link = current.link.unwrap_or_default();
    link.delay_ms = delay_ms.unwrap_or(link.delay_ms);
    link.jitter_ms = jitter_ms.unwrap_or(link.jitter_ms);
    link.loss = loss.unwrap_or(link.loss);
    link.cut = cut.unwrap_or(link.cut);
    c.set_link(proto::SetLinkRequest { destination: to.to_string(), link: Some(link) }).await?;
    print(js, link_json(&link), format!("link {} -> {to}: {}", status.region, link_json(&link)));
    Ok(())
}

async fn move_cmd(peer: Option<&str>, leave: bool, js: bool) -> anyhow::Result<()> {
    let mut c = AdminConn::open(peer).await?;
    let r = if leave {
        c.leave(proto::LeaveRequest {}).await?
    } else {
        c.cleanup(proto::CleanupRequest {}).await?
    };
    let verb = if leave { "streamed" } else { "dropped" };
    let j = json!({ "keys": r.keys, "bytes": r.bytes, "status": r.status });
    print(js, j, format!("{verb} {} keys ({} B); node is now {}", r.keys, r.bytes, r.status));
    Ok(())
}

async fn peer_stats(peer: Option<&str>, js: bool) -> anyhow::Result<()> {
    let s = AdminConn::open(peer).await?.stats(proto::StatsRequest {}).await?;
    let members: Vec<Json> = s
        .members
        .iter()
        .map(|m| {
            json!({ "node_id": m.node_id, "health": m.health, "status": m.status, "region": m.region,
                "client_addr": m.client_addr, "peer_addr": m.peer_addr, "version": m.version })
        })
        .collect();
    let j = json!({
        "node_id": s.node_id, "region": s.region, "members": members,
        "anti_entropy": { "rounds": s.ae_rounds, "keys_compared": s.ae_keys_compared, "keys_repaired": s.ae_keys_repaired,
            "state_bytes_sent": s.ae_state_bytes_sent, "state_bytes_received": s.ae_state_bytes_received, "summary_bytes": s.ae_summary_bytes },
        "hints": { "pending": s.hints_pending, "delivered": s.hints_delivered },
        "read_repairs": s.read_repairs,
    });
    let mut human = format!("node {} in region {}\n", s.node_id, s.region);
    for m in &s.members {
        human.push_str(&format!(
            "  node {:>4}  {:<8} {:<8} {:<12} client {} peer {}\n",
            m.node_id, m.health, m.status, m.region, m.client_addr, m.peer_addr
        ));
    }
    human.push_str(&format!(
        "anti-entropy: {} rounds, {} keys compared, {} repaired, {} B sent, {} B received\nhints: {} pending, {} delivered; read repairs: {}",
        s.ae_rounds, s.ae_keys_compared, s.ae_keys_repaired, s.ae_state_bytes_sent, s.ae_state_bytes_received,
        s.hints_pending, s.hints_delivered, s.read_repairs
    ));
    print(js, j, human);
    Ok(())
}
