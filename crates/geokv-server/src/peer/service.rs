//! The node-to-node `geokv.v1.Cluster` gRPC service.

use std::sync::Arc;

use geokv_core::{Op, Stamp};
use geokv_proto::v1 as pb;
use pb::cluster_server::Cluster as ClusterRpc;
use tonic::{Request, Response, Status};

use crate::api::convert;
use crate::api::status::to_status;
use crate::region::coordinator::{decode, encode, Action, Applied};
use crate::region::Cluster;
use geokv_core::Expect;

pub struct ClusterService {
    cluster: Arc<Cluster>,
}

impl ClusterService {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        ClusterService { cluster }
    }

    /// One `Fetch`: this replica's state of a key.
    async fn serve_fetch(&self, req: pb::FetchRequest) -> Result<pb::FetchResponse, Status> {
        if req.writer_hlc > 0 {
            self.cluster.node().observe_remote_time(req.writer_hlc, 0).map_err(|e| {
                crate::api::status::detailed(
                    tonic::Code::FailedPrecondition,
                    format!(
                        "the coordinating node's clock is beyond max_clock_drift_ms ahead of this replica's ({e}); it may not write until the clocks agree (check NTP)"
                    ),
                    "CLOCK_DRIFT",
                    tonic::metadata::MetadataMap::new(),
                )
            })?;
        }
        if req.vote {
            self.cluster.vote().map_err(crate::api::status::failure_status)?;
        }
        let key = req.key;
        // From memory in place when it can tell; from the disk on the blocking pool.
        let state = match self.cluster.node().engine().get_cached(&key).map_err(to_status)? {
            Some(found) => found,
            None => self.blocking(move |n| n.engine().get(&key)).await?,
        };
        Ok(pb::FetchResponse { state: state.as_ref().map(encode).unwrap_or_default() })
    }

    /// One `Merge`: the state merged here, or kept as a hint for the home replica it names.
    async fn serve_merge(&self, req: pb::MergeRequest) -> Result<bool, Status> {
        match self.admit_merge(req)? {
            Kept::Hint(home, key, rec) => self.keep_hint(home, key, rec).await,
            // Through the writer thread: grouped with the other merges and writes queued now.
            Kept::Merge(key, rec, ship) => {
                self.cluster.node().merge_async(key, rec, ship).await.map_err(to_status)
            }
        }
    }

    /// A `Merge`'s key and state checked, and where it goes.
    fn admit_merge(&self, req: pb::MergeRequest) -> Result<Kept, Status> {
        self.cluster
            .node()
            .limits()
            .check_key(&req.key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let rec = decode(&req.state)?;
        let me = self.cluster.node().id();
        Ok(match geokv_protocol::keep(me, req.hint_for) {
            geokv_protocol::Keep::Hint(home) => Kept::Hint(home, req.key, rec),
            geokv_protocol::Keep::Merge => Kept::Merge(req.key, rec, req.ship),
        })
    }

    async fn keep_hint(&self, home: u64, key: Vec<u8>, rec: geokv_core::Record) -> Result<bool, Status> {
        self.blocking(move |n| n.engine().put_hint(home, &key, &rec).map(|_| true)).await
    }

    fn replicator(&self) -> Result<&std::sync::Arc<crate::xregion::Replicator>, Status> {
        self.cluster
            .replicator()
            .ok_or_else(|| Status::unavailable("replication is not running on this node yet"))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::Node) -> Result<T, geokv_storage::StorageError> + Send + 'static,
    ) -> Result<T, Status> {
        let node = self.cluster.node().clone();
        crate::blocking::run(move || f(&node)).await?.map_err(to_status)
    }
}

#[tonic::async_trait]
impl ClusterRpc for ClusterService {
    type ReplicateStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ReplicationAck, Status>> + Send + 'static>>;

    async fn replicate(
        &self,
        req: Request<tonic::Streaming<pb::ReplicationBatch>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let replicator = self.replicator()?.clone();
        // With TLS, the node whose certificate opened the stream: its batches must name it.
        let sender =
            req.extensions().get::<crate::security::gate::Caller>().and_then(|c| match &c.identity {
                geokv_tls::Identity::Node { id, region } => Some((*id, region.clone())),
                geokv_tls::Identity::Client { .. } => None,
            });
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut expected_after = None;
            while let Ok(Some(batch)) = inbound.message().await {
                let ack = replicator.receive(batch, &mut expected_after, sender.as_ref()).await;
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(crate::xregion::ack_stream(rx))))
    }

    type FeedStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::FeedBatch, Status>> + Send + 'static>>;

    async fn feed(&self, req: Request<pb::FeedRequest>) -> Result<Response<Self::FeedStream>, Status> {
        let req = req.into_inner();
        let start = match &req.after {
            Some(p) => geokv_protocol::watch::FeedStart::After(super::feed::position_from_pb(p)),
            None => geokv_protocol::watch::FeedStart::Now,
        };
        let mut batches = super::feed::open(self.cluster.node().clone(), req.prefix, start).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            while let Some(batch) = batches.recv().await {
                if tx.send(batch.map(super::feed::batch_to_pb)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(crate::xregion::ack_stream(rx))))
    }

    async fn shipped(
        &self,
        req: Request<pb::ShippedRequest>,
    ) -> Result<Response<pb::ShippedResponse>, Status> {
        Ok(Response::new(self.replicator()?.shipped(req.into_inner())?))
    }

    async fn replication_status(
        &self,
        _req: Request<pb::ReplicationStatusRequest>,
    ) -> Result<Response<pb::ReplicationStatusResponse>, Status> {
        Ok(Response::new(self.replicator()?.status()))
    }

    async fn set_link(
        &self,
        req: Request<pb::SetLinkRequest>,
    ) -> Result<Response<pb::SetLinkResponse>, Status> {
        let req = req.into_inner();
        let l = req.link.ok_or_else(|| Status::invalid_argument("link settings are missing"))?;
        let params = geokv_replication::LinkParams {
            delay_ms: l.delay_ms,
            jitter_ms: l.jitter_ms,
            loss: l.loss,
            cut: l.cut,
        };
        self.replicator()?.set_link(&req.destination, params).map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::SetLinkResponse {}))
    }

    async fn merge(&self, req: Request<pb::MergeRequest>) -> Result<Response<pb::MergeResponse>, Status> {
        let changed = self.serve_merge(req.into_inner()).await?;
        Ok(Response::new(pb::MergeResponse { changed }))
    }

    async fn merge_many(
        &self,
        req: Request<pb::MergeManyRequest>,
    ) -> Result<Response<pb::MergeManyResponse>, Status> {
        // The merges handed to the writer thread together: one commit group.
        let mut results: Vec<Option<Result<bool, Status>>> = Vec::new();
        let (mut merges, mut merged, mut hints) = (Vec::new(), Vec::new(), Vec::new());
        for (i, item) in req.into_inner().items.into_iter().enumerate() {
            results.push(None);
            match self.admit_merge(item) {
                Err(status) => results[i] = Some(Err(status)),
                Ok(Kept::Merge(key, rec, ship)) => {
                    merges.push((key, rec, ship));
                    merged.push(i);
                }
                Ok(Kept::Hint(home, key, rec)) => hints.push((i, self.keep_hint(home, key, rec))),
            }
        }
        let pending = self.cluster.node().merge_all(merges);
        let (merges, hints) = futures::future::join(
            futures::future::join_all(pending),
            futures::future::join_all(hints.into_iter().map(|(i, kept)| async move { (i, kept.await) })),
        )
        .await;
        for (i, r) in merged.into_iter().zip(merges) {
            results[i] = Some(r.map_err(to_status));
        }
        for (i, r) in hints {
            results[i] = Some(r);
        }
        let results = results
            .into_iter()
            .map(|r| match r.expect("every item has a result") {
                Ok(changed) => pb::MergeItemResult { changed, ..Default::default() },
                Err(status) => {
                    let (code, message, failure, details) = crate::peer::coalesce::item_failure(&status);
                    pb::MergeItemResult { changed: false, code, message, failure, details }
                }
            })
            .collect();
        Ok(Response::new(pb::MergeManyResponse { results }))
    }

    async fn inject_faults(
        &self,
        req: Request<pb::InjectFaultsRequest>,
    ) -> Result<Response<pb::InjectFaultsResponse>, Status> {
        let node = self.cluster.node();
        let now = node.inject_faults(req.into_inner().into())?;
        Ok(Response::new(now.to_response(node.id())))
    }

    async fn fetch(&self, req: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        Ok(Response::new(self.serve_fetch(req.into_inner()).await?))
    }

    async fn fetch_many(
        &self,
        req: Request<pb::FetchManyRequest>,
    ) -> Result<Response<pb::FetchManyResponse>, Status> {
        let served =
            futures::future::join_all(req.into_inner().items.into_iter().map(|item| self.serve_fetch(item)));
        let results = served
            .await
            .into_iter()
            .map(|r| match r {
                Ok(resp) => pb::FetchItemResult { state: resp.state, ..Default::default() },
                Err(status) => {
                    let (code, message, failure, details) = crate::peer::coalesce::item_failure(&status);
                    pb::FetchItemResult { state: Vec::new(), code, message, failure, details }
                }
            })
            .collect();
        Ok(Response::new(pb::FetchManyResponse { results }))
    }

    async fn coordinate(
        &self,
        req: Request<pb::CoordinateRequest>,
    ) -> Result<Response<pb::CoordinateResponse>, Status> {
        let req = req.into_inner();
        let level = convert::level(req.consistency)?;
        if req.format > crate::region::coordinator::COORDINATE_FORMAT {
            return Err(Status::failed_precondition(format!(
                "the forwarded operation is in format {}, newer than this node reads (up to {}): upgrade this node",
                req.format,
                crate::region::coordinator::COORDINATE_FORMAT
            )));
        }
        let op: Op = postcard::from_bytes(&req.op)
            .map_err(|e| Status::invalid_argument(format!("the forwarded operation does not decode: {e}")))?;
        let action = match (req.cas, op) {
            (false, op) => Action::Op(op),
            (true, Op::Put { value, ttl_ms }) => {
                let expect = if req.expect_absent {
                    Expect::Absent
                } else {
                    Expect::Version(Stamp::new(req.expected_hlc, req.expected_node))
                };
                Action::Cas { expect, value, ttl_ms }
            }
            (true, _) => {
                return Err(Status::invalid_argument("a forwarded compare-and-swap must carry a Put"))
            }
        };
        let resp = match self.cluster.coordinate(req.key, action, level).await? {
            Applied::Written(outcome, rec) => pb::CoordinateResponse {
                outcome: postcard::to_allocvec(&outcome).expect("outcomes serialize"),
                state: encode(&rec),
            },
            Applied::CasFailed(rec) => pb::CoordinateResponse {
                outcome: Vec::new(),
                state: rec.as_ref().map(encode).unwrap_or_default(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn ping(&self, _req: Request<pb::PingRequest>) -> Result<Response<pb::PingResponse>, Status> {
        Ok(Response::new(pb::PingResponse { node_id: self.cluster.node().id() }))
    }

    async fn summary(
        &self,
        req: Request<pb::SummaryRequest>,
    ) -> Result<Response<pb::SummaryResponse>, Status> {
        let peer = req.into_inner().peer;
        let c = self.cluster.clone();
        let (summary, _) = crate::blocking::run(move || c.summary_for(peer)).await?.map_err(to_status)?;
        Ok(Response::new(pb::SummaryResponse { leaves: summary.leaves }))
    }

    async fn digests(
        &self,
        req: Request<pb::DigestsRequest>,
    ) -> Result<Response<pb::DigestsResponse>, Status> {
        let req = req.into_inner();
        let c = self.cluster.clone();
        let digests =
            crate::blocking::run(move || c.digests_for(req.peer, &req.leaves)).await?.map_err(to_status)?;
        Ok(Response::new(pb::DigestsResponse { digests }))
    }

    async fn scan_states(
        &self,
        req: Request<pb::ScanStatesRequest>,
    ) -> Result<Response<pb::ScanStatesResponse>, Status> {
        let req = req.into_inner();
        if req.future_replica.is_none() {
            self.cluster.vote().map_err(crate::api::status::failure_status)?;
        }
        let limit = (req.limit as usize).clamp(1, self.cluster.node().limits().max_scan_limit + 1);
        let view = self.cluster.view();
        let keep = move |key: &[u8]| {
            req.future_replica.is_none_or(|joiner| geokv_protocol::moves::hands_over(&view, key, joiner))
        };
        let (start, prefix) = (req.start.clone(), req.prefix.clone());
        let page = self.blocking(move |n| n.scan_states(&start, &prefix, limit, keep)).await?;
        Ok(Response::new(pb::ScanStatesResponse {
            items: page
                .items
                .iter()
                .map(|(key, rec)| pb::KeyState { key: key.clone(), state: encode(rec) })
                .collect(),
            resume_after: page.resume_after,
        }))
    }

    async fn get_residency(
        &self,
        req: Request<pb::GetResidencyRequest>,
    ) -> Result<Response<pb::ResidencyPolicy>, Status> {
        let installed = self.cluster.residency().installed();
        let newer = installed.version > req.into_inner().known_version;
        Ok(Response::new(pb::ResidencyPolicy {
            version: installed.version,
            text: if newer { installed.text.clone() } else { String::new() },
        }))
    }

    async fn adopt_residency(
        &self,
        req: Request<pb::ResidencyPolicy>,
    ) -> Result<Response<pb::ResidencyReport>, Status> {
        let p = req.into_inner();
        let offered = crate::residency::Saved { version: p.version, text: p.text };
        Ok(Response::new(self.cluster.adopt_residency(offered).await?))
    }

    async fn enforce_residency(
        &self,
        _req: Request<pb::EnforceResidencyRequest>,
    ) -> Result<Response<pb::ResidencyReport>, Status> {
        Ok(Response::new(self.cluster.enforce_residency().await?))
    }

    type ApplyResidencyStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ResidencyReport, Status>> + Send + 'static>>;

    async fn apply_residency(
        &self,
        req: Request<pb::ApplyResidencyRequest>,
    ) -> Result<Response<Self::ApplyResidencyStream>, Status> {
        let req = req.into_inner();
        geokv_topology::Policy::parse(&req.text, &req.origin, self.cluster.residency().topology())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            if let Err(s) = cluster.apply_residency(req.text, req.origin, tx.clone()).await {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(Box::pin(crate::xregion::ack_stream(rx))))
    }

    async fn explain_residency(
        &self,
        req: Request<pb::ExplainResidencyRequest>,
    ) -> Result<Response<pb::ResidencyExplanation>, Status> {
        Ok(Response::new(self.cluster.explain_residency(req.into_inner().key).await?))
    }

    async fn holds(&self, req: Request<pb::HoldsRequest>) -> Result<Response<pb::HoldsResponse>, Status> {
        Ok(Response::new(self.cluster.holds(req.into_inner().key).await?))
    }

    async fn compact(
        &self,
        _req: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        let started = std::time::Instant::now();
        self.blocking(|n| n.engine().compact_all()).await?;
        Ok(Response::new(pb::CompactResponse { millis: started.elapsed().as_millis() as u64 }))
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(self.cluster.cluster_status().await))
    }

    async fn stats(&self, _req: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(self.cluster.stats().await))
    }

    async fn leave(&self, _req: Request<pb::LeaveRequest>) -> Result<Response<pb::MoveReport>, Status> {
        Ok(Response::new(self.cluster.leave().await?))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<pb::MoveReport>, Status> {
        Ok(Response::new(self.cluster.cleanup().await?))
    }

    async fn run_anti_entropy(
        &self,
        _req: Request<pb::RunAntiEntropyRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        self.cluster.anti_entropy_round().await;
        Ok(Response::new(self.cluster.stats().await))
    }
}

/// Where a replica state sent to this node goes.
enum Kept {
    /// Kept as a hint for home replica `.0`.
    Hint(geokv_core::NodeId, Vec<u8>, geokv_core::Record),
    /// Merged here; `.2`: logged for the cross-region replicator.
    Merge(Vec<u8>, geokv_core::Record, bool),
}
