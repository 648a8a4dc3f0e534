//! Scan across the replicas of a region: the server's driver of
//! [`geokv_protocol::ScanRound`] (which nodes count, the bound, merging, the next page).
//! Every node believed up is asked for a page of its own states at once.

use std::sync::Arc;

use geokv_cluster::Level;
use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use geokv_protocol::{NodePage, ScanRound};
use tonic::Status;

use super::coordinator::decode;
use super::Cluster;
use crate::api::status::{failure_status, to_status};
use crate::node::{page_token, ScanRequest, ScanResult};

impl Cluster {
    pub async fn scan(self: &Arc<Self>, req: ScanRequest, level: Level) -> Result<ScanResult, Status> {
        let node = self.node.clone();
        let r = req.clone();
        let (start, limit) = crate::blocking::run(move || node.scan_bounds(&r)).await?.map_err(to_status)?;
        let view = self.view();
        let nodes: Vec<NodeId> =
            std::iter::once(self.me).chain(view.peers()).filter(|&id| self.healthy(id)).collect();
        let (mut round, ask) = ScanRound::start(nodes, view.peers().len() + 1, view.n(), level, limit);
        let want = round.want();
        let pages = futures::future::join_all(ask.into_iter().map(|id| {
            let (start, prefix) = (&start, &req.prefix);
            async move { (id, self.scan_node(id, start, prefix, want).await) }
        }))
        .await;
        for (id, page) in pages {
            if let Err(e) = &page {
                tracing::debug!(node = id, error = %e, "scan: node did not answer");
            }
            round.on_page(id, page.map_err(crate::api::status::peer_error));
        }
        let now = self.node.now_ms();
        let answer = round.finish(|key| view.home(key), now).map_err(failure_status)?;
        Ok(ScanResult { items: answer.items, now, next_page_token: page_token(answer.next) })
    }

    /// Node `id`'s page of `want` states from `start`.
    async fn scan_node(
        &self,
        id: NodeId,
        start: &[u8],
        prefix: &[u8],
        want: usize,
    ) -> Result<NodePage, Status> {
        if id == self.me {
            self.vote().map_err(failure_status)?;
            let node = self.node.clone();
            let (start, prefix) = (start.to_vec(), prefix.to_vec());
            let page = crate::blocking::run(move || node.scan_states(&start, &prefix, want, |_| true))
                .await?
                .map_err(to_status)?;
            return Ok(NodePage { items: page.items, more: page.resume_after });
        }
        let mut client = self.client(id).ok_or_else(|| Status::internal("unknown peer"))?;
        let req = pb::ScanStatesRequest {
            start: start.to_vec(),
            prefix: prefix.to_vec(),
            limit: want as u32,
            future_replica: None,
        };
        let resp = tokio::time::timeout(2 * self.peers.timeout(), client.scan_states(req))
            .await
            .map_err(|_| Status::deadline_exceeded("scan page timed out"))??
            .into_inner();
        let items =
            resp.items.into_iter().map(|i| Ok((i.key, decode(&i.state)?))).collect::<Result<_, Status>>()?;
        Ok(NodePage { items, more: resp.resume_after })
    }
}
