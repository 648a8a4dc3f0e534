//! The deployment's status as one node can gather it: every node of every region is asked
//! for its stats and replication figures (in parallel, each with a deadline), the health of
//! each node comes from its own region's gossip view, and the lag of each region pair is
//! aggregated over the origin region's nodes. Serves `geokv status` (the `ClusterStatus` RPC)
//! and each node's status page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use tonic::Status;

use crate::region::anti_entropy::with_deadline;
use crate::region::Cluster;

/// How long one node may take to answer the status calls.
const STATUS_DEADLINE: Duration = Duration::from_millis(1500);

/// What one node answered (or why it did not).
struct Answer {
    id: NodeId,
    region: String,
    peer_addr: String,
    client_addr: String,
    figures: Result<(pb::StatsResponse, pb::ReplicationStatusResponse), String>,
}

impl Cluster {
    /// Gathers the deployment's status (see the module docs).
    pub async fn cluster_status(self: &Arc<Self>) -> pb::ClusterStatusResponse {
        let regions: Vec<String> =
            self.residency().topology().regions.iter().map(|r| r.name.clone()).collect();
        let asks = self.deployment_nodes().into_iter().map(|n| {
            let this = self.clone();
            async move {
                let figures = this.ask_status(n.id, &n.peer_addr).await;
                Answer {
                    id: n.id,
                    region: n.region,
                    peer_addr: n.peer_addr,
                    client_addr: n.client_addr,
                    figures,
                }
            }
        });
        let answers = futures::future::join_all(asks).await;
        pb::ClusterStatusResponse {
            gathered_by: self.me,
            at_ms: self.node.now_ms(),
            nodes: node_rows(&answers),
            lags: lag_matrix(&regions, &answers),
            places: self
                .residency()
                .topology()
                .regions
                .iter()
                .map(|r| pb::RegionPlace {
                    name: r.name.clone(),
                    longitude: r.location[0],
                    latitude: r.location[1],
                })
                .collect(),
            regions,
        }
    }

    async fn ask_status(
        &self,
        id: NodeId,
        addr: &str,
    ) -> Result<(pb::StatsResponse, pb::ReplicationStatusResponse), String> {
        let client = self.peers.client(id, addr).ok_or_else(|| format!("unusable address {addr}"))?;
        let (mut a, mut b) = (client.clone(), client);
        let stats = with_deadline(STATUS_DEADLINE, a.stats(pb::StatsRequest {}));
        let repl = with_deadline(STATUS_DEADLINE, b.replication_status(pb::ReplicationStatusRequest {}));
        let (stats, repl) = tokio::join!(stats, repl);
        let message = |s: Status| format!("{}: {}", crate::ops::metrics::code_name(s.code()), s.message());
        Ok((stats.map_err(message)?, repl.map_err(message)?))
    }
}

/// One row per node; health as the first answering node of its region reports it.
fn node_rows(answers: &[Answer]) -> Vec<pb::NodeStatus> {
    let mut seen_by_region: BTreeMap<&str, BTreeMap<NodeId, (String, String)>> = BTreeMap::new();
    for a in answers {
        if let Ok((stats, _)) = &a.figures {
            let view = seen_by_region.entry(a.region.as_str()).or_default();
            for m in &stats.members {
                view.entry(m.node_id).or_insert_with(|| (m.health.clone(), m.status.clone()));
            }
        }
    }
    let mut rows: Vec<pb::NodeStatus> = answers
        .iter()
        .map(|a| {
            let (health, status) = seen_by_region
                .get(a.region.as_str())
                .and_then(|v| v.get(&a.id))
                .cloned()
                .unwrap_or_else(|| ("unreachable".into(), String::new()));
            let mut row = pb::NodeStatus {
                node_id: a.id,
                region: a.region.clone(),
                health,
                status,
                reachable: a.figures.is_ok(),
                client_addr: a.client_addr.clone(),
                peer_addr: a.peer_addr.clone(),
                ..Default::default()
            };
            match &a.figures {
                Ok((s, _)) => {
                    row.ownership_primary = s.ownership_primary;
                    row.ownership_replica = s.ownership_replica;
                    row.disk_bytes = s.disk_bytes;
                    row.estimated_keys = s.estimated_keys;
                    row.hints_pending = s.hints_pending;
                    row.residency_version = s.residency_version;
                }
                Err(e) => row.error = e.clone(),
            }
            row
        })
        .collect();
    rows.sort_by(|a, b| (&a.region, a.node_id).cmp(&(&b.region, b.node_id)));
    rows
}

/// One cell per ordered pair of distinct regions.
fn lag_matrix(regions: &[String], answers: &[Answer]) -> Vec<pb::LagCell> {
    let mut cells = Vec::new();
    for origin in regions {
        for destination in regions.iter().filter(|d| *d != origin) {
            let mut cell = pb::LagCell {
                origin: origin.clone(),
                destination: destination.clone(),
                ..Default::default()
            };
            let reports = answers
                .iter()
                .filter(|a| &a.region == origin)
                .filter_map(|a| a.figures.as_ref().ok())
                .filter_map(|(_, r)| r.destinations.iter().find(|d| &d.destination == destination));
            let mut histories = Vec::new();
            for d in reports {
                histories.push(d.history.iter().map(|p| (p.at_ms, p.lag_ms)).collect());
                cell.nodes_reporting += 1;
                cell.nodes_connected += u32::from(d.connected);
                cell.lag_ms = cell.lag_ms.max(d.oldest_unacked_ms);
                cell.backlog_entries += d.backlog_entries;
                cell.backlog_bytes += d.backlog_bytes;
                cell.last_delivery_ms = cell.last_delivery_ms.max(d.last_delivery_ms);
                cell.raw_bytes += d.raw_bytes;
                cell.wire_bytes += d.wire_bytes;
                let link = d.link.unwrap_or_default();
                cell.cut |= link.cut;
                cell.link_delay_ms = cell.link_delay_ms.max(link.delay_ms);
            }
            cell.history = geokv_replication::worst_of(histories)
                .into_iter()
                .map(|(at_ms, lag_ms)| pb::LagPoint { at_ms, lag_ms })
                .collect();
            cells.push(cell);
        }
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: NodeId, region: &str, lag: Option<(u64, u64, bool)>) -> Answer {
        let figures = lag.map(|(lag_ms, backlog, connected)| {
            let stats = pb::StatsResponse {
                members: vec![pb::Member {
                    node_id: id,
                    health: "alive".into(),
                    status: "normal".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let repl = pb::ReplicationStatusResponse {
                destinations: vec![pb::RegionLag {
                    destination: "b".into(),
                    oldest_unacked_ms: lag_ms,
                    backlog_entries: backlog,
                    connected,
                    ..Default::default()
                }],
                ..Default::default()
            };
            (stats, repl)
        });
        Answer {
            id,
            region: region.into(),
            peer_addr: String::new(),
            client_addr: String::new(),
            figures: figures.ok_or_else(|| "UNAVAILABLE: down".to_string()),
        }
    }

    #[test]
    fn lag_is_the_worst_origin_node_and_backlog_the_sum() {
        let answers = [
            answer(1, "a", Some((300, 5, true))),
            answer(2, "a", Some((100, 7, false))),
            answer(3, "a", None),
        ];
        let cells = lag_matrix(&["a".into(), "b".into()], &answers);
        let ab = &cells[0];
        assert_eq!((ab.origin.as_str(), ab.destination.as_str()), ("a", "b"));
        assert_eq!((ab.lag_ms, ab.backlog_entries, ab.nodes_reporting, ab.nodes_connected), (300, 12, 2, 1));
        assert_eq!(cells[1].nodes_reporting, 0, "b reported nothing to a");
        let rows = node_rows(&answers);
        assert_eq!(rows[2].health, "unreachable");
        assert!(!rows[2].reachable && rows[2].error.contains("down"));
        assert_eq!(rows[0].health, "alive");
    }
}
