//! Scan across the replicas of a region.
//!
//! Every reachable node returns a page of its own states (tombstones included, so a delete on
//! one replica hides the key's older value on another) from the same start key; of each key,
//! only the states of its home replicas count (as for a Get), not copies a move left behind. A key is
//! complete up to the smallest last key among nodes that had more to give; the coordinator
//! merges each complete key's states, drops what is not visible, and returns up to `limit`
//! keys. The page token resumes after the last key it returned, or, when the visible keys ran
//! short, after the last complete key.

use std::collections::BTreeMap;
use std::sync::Arc;

use geokv_cluster::Level;
use geokv_core::{Crdt, NodeId, Record};
use geokv_proto::v1 as pb;
use tonic::Status;

use super::coordinator::decode;
use super::{Cluster, QUORUM_FAILED};
use crate::api::status::to_status;
use crate::node::{page_token, ScanRequest, ScanResult};

/// One node's page: its states in key order, and where its page stopped (None: its end).
type NodePage = (Vec<(Vec<u8>, Record)>, Option<Vec<u8>>);

impl Cluster {
    pub async fn scan(self: &Arc<Self>, req: ScanRequest, level: Level) -> Result<ScanResult, Status> {
        let node = self.node.clone();
        let r = req.clone();
        let (start, limit) = crate::blocking::run(move || node.scan_bounds(&r)).await?.map_err(to_status)?;
        let view = self.view();
        let nodes: Vec<NodeId> =
            std::iter::once(self.me).chain(view.peers()).filter(|&id| self.healthy(id)).collect();
        let mut pages = Vec::new();
        for id in &nodes {
            match self.scan_node(*id, &start, &req.prefix, limit).await {
                Ok(page) => pages.push((*id, page)),
                Err(e) => tracing::debug!(node = id, error = %e, "scan: node did not answer"),
            }
        }
        // Every key must be read from `level` of its N replicas: with M nodes answering out of
        // the region's, at most N - R may be missing.
        let missing = view.peers().len() + 1 - pages.len();
        let allowed = view.n().saturating_sub(level.required(view.n()));
        if missing > allowed {
            return Err(Status::unavailable(format!(
                "{QUORUM_FAILED}: a scan at this consistency level tolerates {allowed} missing nodes and {missing} did not answer"
            )));
        }
        let bound: Option<Vec<u8>> = pages.iter().filter_map(|(_, (_, more))| more.clone()).min();
        let mut merged: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
        for (id, (items, _)) in pages {
            for (key, rec) in items {
                if bound.as_ref().is_some_and(|b| &key > b) {
                    continue;
                }
                // Only the key's home replicas count, as for a Get: a node that no longer owns
                // the key (a copy left behind by a move, before `cleanup`) may hold a state
                // the owners have long replaced or forgotten.
                if !view.home(&key).contains(&id) {
                    continue;
                }
                match merged.get_mut(&key) {
                    Some(m) => m.merge(&rec),
                    None => {
                        merged.insert(key, rec);
                    }
                }
            }
        }
        let now = self.node.now_ms();
        let mut visible: Vec<(Vec<u8>, Record)> =
            merged.into_iter().filter(|(_, r)| r.is_visible(now)).collect();
        let next = if visible.len() > limit {
            visible.truncate(limit);
            visible.last().map(|(k, _)| k.clone())
        } else {
            bound
        };
        Ok(ScanResult { items: visible, now, next_page_token: page_token(next) })
    }

    async fn scan_node(
        &self,
        id: NodeId,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<NodePage, Status> {
        // One more than the page so the coordinator can tell whether the page is full.
        let want = limit + 1;
        if id == self.me {
            self.vote().map_err(crate::api::status::failure_status)?;
            let node = self.node.clone();
            let (start, prefix) = (start.to_vec(), prefix.to_vec());
            let page = crate::blocking::run(move || node.scan_states(&start, &prefix, want, |_| true))
                .await?
                .map_err(to_status)?;
            return Ok((page.items, page.resume_after));
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
        Ok((items, resp.resume_after))
    }
}
