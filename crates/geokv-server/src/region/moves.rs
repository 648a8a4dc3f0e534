//! Nodes joining and leaving a region while it serves: ranges move by streaming.
//!
//! **Join**: a node started with `cluster.join = true` is `joining`. Once every reachable peer
//! sees it so (from then on, coordinators send it every write for its future ranges), it
//! streams in, from every current owner, the states of the keys it will replicate, merges
//! them, and turns `normal`: an owner that serves reads and counts toward quorums. A join
//! interrupted by a crash resumes at the next start (the status is saved).
//!
//! **Leave** (`Leave` RPC, `geokv leave`): the node turns `leaving` (still an owner, while
//! writes also go to the nodes that will replace it), waits until its peers see it so, streams
//! every key it holds to those nodes, then turns `left`.
//!
//! Writes that were in flight while a status change spread can miss the streamed copy; the
//! first anti-entropy round after the move (started right away) repairs them.
//!
//! **Cleanup** (`Cleanup` RPC, `geokv cleanup`): once no move is in progress, drops this node's
//! copies of keys it no longer replicates.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use geokv_cluster::Status;
use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use tokio::task::JoinSet;
use tonic::Status as RpcStatus;

use super::coordinator::{decode, encode};
use super::Cluster;
use crate::api::status::to_status;

/// How long a node waits for its peers to see a status change.
const SEEN_DEADLINE: Duration = Duration::from_secs(60);
/// Keys per page when streaming.
const STREAM_PAGE: u32 = 512;
/// State sends in flight while a leaving node streams its keys out.
const STREAM_PARALLELISM: usize = 32;

fn internal(e: impl std::fmt::Display) -> RpcStatus {
    RpcStatus::internal(e.to_string())
}

impl Cluster {
    fn gossip(&self) -> Result<&super::gossip::Handle, RpcStatus> {
        self.gossip.get().ok_or_else(|| RpcStatus::unavailable("gossip is not running on this node"))
    }

    fn report(&self, keys: u64, bytes: u64) -> pb::MoveReport {
        pb::MoveReport { keys, bytes, status: self.view().me().status.as_str().into() }
    }

    /// Waits until every peer of the region that is alive reports this node's current info
    /// (its version or a later one).
    async fn wait_until_seen(&self) -> Result<(), RpcStatus> {
        let deadline = tokio::time::Instant::now() + SEEN_DEADLINE;
        let pause = Duration::from_millis(self.cfg.probe_interval_ms);
        loop {
            let version = self.view().me().version;
            let mut unseen = Vec::new();
            for peer in self.view().peers().into_iter().filter(|&p| self.healthy(p)) {
                if !self.peer_sees_me(peer, version).await {
                    unseen.push(peer);
                }
            }
            if unseen.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(RpcStatus::unavailable(format!(
                    "peers {unseen:?} did not learn this node's new status within {SEEN_DEADLINE:?}; retry once they are reachable"
                )));
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn peer_sees_me(&self, peer: NodeId, version: u64) -> bool {
        let Some(mut client) = self.client(peer) else { return false };
        match tokio::time::timeout(self.peers.timeout(), client.stats(pb::StatsRequest {})).await {
            Ok(Ok(resp)) => {
                resp.into_inner().members.iter().any(|m| m.node_id == self.me && m.version >= version)
            }
            _ => false,
        }
    }

    /// Runs this node's join to the end (see the module docs). Idempotent.
    pub async fn join(self: &Arc<Self>) -> Result<pb::MoveReport, RpcStatus> {
        if self.view().me().status != Status::Joining {
            return Ok(self.report(0, 0));
        }
        self.wait_until_seen().await?;
        let (mut keys, mut bytes) = (0, 0);
        let owners: Vec<NodeId> =
            self.view().owners().nodes().iter().copied().filter(|&id| id != self.me).collect();
        for owner in owners {
            if !self.healthy(owner) {
                tracing::warn!(owner, "join: owner down, its keys come from the other replicas");
                continue;
            }
            let (k, b) = self.stream_from(owner).await?;
            keys += k;
            bytes += b;
        }
        self.gossip()?.set_status(Status::Normal).await.map_err(RpcStatus::unavailable)?;
        tracing::info!(keys, bytes, "joined the region: streamed in its ranges and took them over");
        if let Err(e) = self.wait_until_seen().await {
            tracing::warn!(error = %e, "joined, but not every peer has seen it yet");
        }
        self.spawn_catch_up_round();
        Ok(self.report(keys, bytes))
    }

    /// Streams in from `owner` the states of every key this node will replicate.
    async fn stream_from(&self, owner: NodeId) -> Result<(u64, u64), RpcStatus> {
        let mut client = self.client(owner).ok_or_else(|| RpcStatus::internal("unknown owner"))?;
        let (mut keys, mut bytes) = (0u64, 0u64);
        let mut start = Vec::new();
        loop {
            let req = pb::ScanStatesRequest {
                start: start.clone(),
                prefix: Vec::new(),
                limit: STREAM_PAGE,
                future_replica: Some(self.me),
            };
            let page = tokio::time::timeout(4 * self.peers.timeout(), client.scan_states(req))
                .await
                .map_err(|_| RpcStatus::deadline_exceeded(format!("streaming from node {owner} timed out")))??
                .into_inner();
            let mut states = Vec::with_capacity(page.items.len());
            for item in page.items {
                bytes += item.state.len() as u64;
                states.push((item.key, decode(&item.state)?));
            }
            keys += states.len() as u64;
            let node = self.node.clone();
            crate::blocking::run(move || {
                states.iter().try_for_each(|(k, rec)| node.engine().merge(k, rec).map(|_| ()))
            })
            .await?
            .map_err(to_status)?;
            match page.resume_after {
                Some(after) => start = [after.as_slice(), &[0]].concat(),
                None => return Ok((keys, bytes)),
            }
        }
    }

    /// Takes this node off the ring (see the module docs). Idempotent once left.
    pub async fn leave(self: &Arc<Self>) -> Result<pb::MoveReport, RpcStatus> {
        let view = self.view();
        match view.me().status {
            Status::Left => return Ok(self.report(0, 0)),
            Status::Joining => {
                return Err(RpcStatus::failed_precondition(
                    "this node is still joining; let the join finish before it leaves",
                ))
            }
            Status::Normal | Status::Leaving => {}
        }
        let remaining = view.owners().nodes().len() - 1;
        if remaining < view.n() {
            return Err(RpcStatus::failed_precondition(format!(
                "the region would keep {remaining} nodes, fewer than its replication factor {}; add a node first",
                view.n()
            )));
        }
        if view.members().any(|m| m.id != self.me && matches!(m.status, Status::Joining | Status::Leaving)) {
            return Err(RpcStatus::failed_precondition(
                "another node of the region is joining or leaving; one move at a time",
            ));
        }
        if view.me().status == Status::Normal {
            self.gossip()?.set_status(Status::Leaving).await.map_err(RpcStatus::unavailable)?;
        }
        self.wait_until_seen().await?;
        let (keys, bytes) = self.stream_out().await?;
        self.gossip()?.set_status(Status::Left).await.map_err(RpcStatus::unavailable)?;
        tracing::info!(keys, bytes, "left the region: streamed its keys to their next owners");
        if let Err(e) = self.wait_until_seen().await {
            tracing::warn!(error = %e, "left, but not every peer has seen it yet");
        }
        Ok(self.report(keys, bytes))
    }

    /// Sends every key this node holds to the nodes that take it over when it is gone.
    async fn stream_out(self: &Arc<Self>) -> Result<(u64, u64), RpcStatus> {
        let (mut keys, mut bytes) = (0u64, 0u64);
        let mut start = Vec::new();
        loop {
            let node = self.node.clone();
            let from = start.clone();
            let page =
                crate::blocking::run(move || node.scan_states(&from, &[], STREAM_PAGE as usize, |_| true))
                    .await?
                    .map_err(to_status)?;
            let view = self.view();
            let mut sends = JoinSet::new();
            for (key, rec) in &page.items {
                let state = encode(rec);
                for target in view.incoming(key) {
                    if sends.len() >= STREAM_PARALLELISM {
                        sends.join_next().await.expect("non-empty").map_err(internal)??;
                    }
                    keys += 1;
                    bytes += state.len() as u64;
                    let (this, key, state) = (self.clone(), key.clone(), state.clone());
                    sends.spawn(async move { this.push_state(target, key, state).await });
                }
            }
            while let Some(done) = sends.join_next().await {
                done.map_err(internal)??;
            }
            match page.resume_after {
                Some(after) => start = [after.as_slice(), &[0]].concat(),
                None => return Ok((keys, bytes)),
            }
        }
    }

    async fn push_state(&self, target: NodeId, key: Vec<u8>, state: Vec<u8>) -> Result<(), RpcStatus> {
        let mut client = self.client(target).ok_or_else(|| RpcStatus::internal("unknown node"))?;
        let req = pb::MergeRequest { key, state, hint_for: None, ship: false };
        match tokio::time::timeout(self.peers.timeout(), self.send_merge(&mut client, req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(RpcStatus::new(
                s.code(),
                format!("streaming to node {target} failed: {}; the leave can be retried", s.message()),
            )),
            Err(_) => Err(RpcStatus::unavailable(format!(
                "streaming to node {target} timed out; the leave can be retried"
            ))),
        }
    }

    /// Drops this node's copies of keys it does not replicate (see the module docs).
    pub async fn cleanup(self: &Arc<Self>) -> Result<pb::MoveReport, RpcStatus> {
        let view = self.view();
        if view.in_transition() {
            return Err(RpcStatus::failed_precondition(
                "a node of the region is joining or leaving; clean up once it has finished",
            ));
        }
        let (node, me) = (self.node.clone(), self.me);
        let (keys, bytes) = crate::blocking::run(move || {
            let mut foreign = Vec::new();
            node.engine().for_each(|key, rec| {
                if !view.home(key).contains(&me) {
                    foreign.push((key.to_vec(), geokv_storage::codec::serialize(rec).len() as u64));
                }
            })?;
            if !foreign.is_empty() {
                // Should this node own some of these keys again, it will hold less than it once
                // wrote to them: from now on it writes as a new actor (renewed first, so a
                // failure leaves the copies for the next cleanup).
                node.renew_actor()?;
            }
            let (mut keys, mut bytes) = (0, 0);
            for (key, size) in foreign {
                if node.engine().drop_copy(&key)? {
                    keys += 1;
                    bytes += size;
                }
            }
            Ok::<_, geokv_storage::StorageError>((keys, bytes))
        })
        .await?
        .map_err(to_status)?;
        tracing::info!(keys, bytes, "cleanup: dropped copies of keys this node no longer replicates");
        Ok(self.report(keys, bytes))
    }

    /// Starts an anti-entropy round with every peer now, to repair what a move missed.
    pub(crate) fn spawn_catch_up_round(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                this.anti_entropy_round().await;
                tracing::info!(
                    repaired = this.stats.ae_keys_repaired.load(Ordering::Relaxed),
                    "catch-up anti-entropy round after a move done"
                );
            },
            tracing::info_span!("anti_entropy", catch_up = true),
        ));
    }

    /// Drives an interrupted or new join until it succeeds, retrying after failures.
    pub(crate) fn spawn_join(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let mut pause = Duration::from_millis(this.cfg.probe_interval_ms * 4);
                while this.view().me().status == Status::Joining {
                    match this.join().await {
                        Ok(report) => tracing::info!(keys = report.keys, "join finished"),
                        Err(e) => {
                            tracing::warn!(error = %e, "join did not finish; retrying");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            },
            tracing::info_span!("join"),
        ))
    }
}
