//! Nodes joining and leaving a region while it serves: ranges move by streaming. The steps and
//! which keys go where are `geokv_protocol::moves`'s; this file carries them out.
//!
//! **Join**: a node started with `cluster.join = true` is `joining`. Once every reachable peer
//! sees it so (from then on, coordinators send it every write for its future ranges), it
//! streams in, from every current owner, the states of the keys it will replicate, merges
//! them, and turns `normal`: an owner that serves reads and counts toward quorums. A join
//! interrupted by a crash resumes at the next start (the status is saved).
//!
//! **Leave** (`Leave` RPC, `geokv admin leave`): the node turns `leaving` (still an owner, while
//! writes also go to the nodes that will replace it), waits until its peers see it so, streams
//! every key it holds to those nodes, then turns `left`.
//!
//! Writes that were in flight while a status change spread can miss the streamed copy; the
//! first anti-entropy round after the move (started right away) repairs them.
//!
//! **Cleanup** (`Cleanup` RPC, `geokv admin cleanup`): once no move is in progress, hands each copy
//! of a key this node no longer replicates to the key's home replicas, and drops it once they
//! all took it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use geokv_cluster::Status;
use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use geokv_protocol::moves::{self, Move, Step};
use geokv_protocol::PeerError;
use geokv_storage::StorageError;
use tokio::task::JoinSet;

use super::coordinator::encode;
use super::Cluster;
use crate::api::status::peer_error;
use crate::blocking::TaskFailed;

/// How long a node waits for its peers to see a status change.
const SEEN_DEADLINE: Duration = Duration::from_secs(60);
/// Keys per page when streaming.
const STREAM_PAGE: u32 = 512;
/// State sends in flight while a leaving node streams its keys out.
const STREAM_PARALLELISM: usize = 32;

/// Why a join, leave or cleanup did not finish (converted to a gRPC status once, in
/// `api::status`).
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The move may not run now; the message says what to do first.
    #[error("{0}")]
    Refused(String),
    /// Gossip or the peers did not take part in time; the move can be retried.
    #[error("{0}")]
    Unavailable(String),
    /// A call to a peer did not succeed.
    #[error("{what} node {node} failed: {error}; the move can be retried")]
    Peer { what: &'static str, node: NodeId, error: PeerError },
    /// A peer sent a state that does not decode.
    #[error("node {node} sent a corrupt state: {reason}")]
    Corrupt { node: NodeId, reason: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

impl Cluster {
    fn gossip(&self) -> Result<&super::gossip::Handle, MoveError> {
        self.gossip.get().ok_or_else(|| MoveError::Unavailable("gossip is not running on this node".into()))
    }

    async fn set_status(&self, status: Status) -> Result<(), MoveError> {
        self.gossip()?.set_status(status).await.map(|_| ()).map_err(MoveError::Unavailable)
    }

    fn report(&self, keys: u64, bytes: u64) -> pb::MoveReport {
        pb::MoveReport { keys, bytes, status: self.view().me().status.as_str().into() }
    }

    /// Waits until every peer of the region that is alive reports this node's current info
    /// (its version or a later one).
    async fn wait_until_seen(&self) -> Result<(), MoveError> {
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
                return Err(MoveError::Unavailable(format!(
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
    pub async fn join(self: &Arc<Self>) -> Result<pb::MoveReport, MoveError> {
        let Some(join) = Move::join(self.view().me().status) else { return Ok(self.report(0, 0)) };
        let (keys, bytes) = self.run_move(join).await?;
        tracing::info!(keys, bytes, "joined the region: streamed in its ranges and took them over");
        Ok(self.report(keys, bytes))
    }

    /// Carries out the steps of a join or leave (`geokv_protocol::moves`); the keys and bytes
    /// streamed.
    async fn run_move(self: &Arc<Self>, mut mv: Move) -> Result<(u64, u64), MoveError> {
        let (mut keys, mut bytes) = (0, 0);
        while let Some(step) = mv.step() {
            let (k, b) = match step {
                Step::Announce(status) => self.set_status(status).await.map(|()| (0, 0))?,
                Step::WaitSeen => self.wait_until_seen().await.map(|()| (0, 0))?,
                Step::StreamIn => self.stream_in().await?,
                Step::StreamOut => self.stream_out().await?,
                Step::Settle => {
                    if let Err(e) = self.wait_until_seen().await {
                        tracing::warn!(error = %e, "moved, but not every peer has seen it yet");
                    }
                    (0, 0)
                }
                Step::CatchUp => {
                    self.spawn_catch_up_round();
                    (0, 0)
                }
            };
            keys += k;
            bytes += b;
            mv.advance();
        }
        Ok((keys, bytes))
    }

    /// Streams in, from every owner that is up, the keys this node will replicate.
    async fn stream_in(&self) -> Result<(u64, u64), MoveError> {
        let view = self.view();
        let sources = moves::join_sources(&view, |id| self.healthy(id));
        for down in view.owners().nodes().iter().filter(|&&id| id != self.me && !sources.contains(&id)) {
            tracing::warn!(owner = down, "join: owner down, its keys come from the other replicas");
        }
        let (mut keys, mut bytes) = (0, 0);
        for owner in sources {
            let (k, b) = self.stream_from(owner).await?;
            keys += k;
            bytes += b;
        }
        Ok((keys, bytes))
    }

    /// Streams in from `owner` the states of every key this node will replicate.
    async fn stream_from(&self, owner: NodeId) -> Result<(u64, u64), MoveError> {
        let failed = |error| MoveError::Peer { what: "streaming from", node: owner, error };
        let mut client =
            self.client(owner).ok_or_else(|| failed(PeerError::NeverSent("not a member".into())))?;
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
                .map_err(|_| failed(PeerError::TimedOut("no page in time".into())))?
                .map_err(|s| failed(peer_error(s)))?
                .into_inner();
            let mut states = Vec::with_capacity(page.items.len());
            for item in page.items {
                bytes += item.state.len() as u64;
                let rec = geokv_storage::codec::decode(&item.state)
                    .map_err(|e| MoveError::Corrupt { node: owner, reason: e.to_string() })?;
                states.push((item.key, rec));
            }
            keys += states.len() as u64;
            let node = self.node.clone();
            crate::blocking::run(move || {
                states.iter().try_for_each(|(k, rec)| node.engine().merge(k, rec).map(|_| ()))
            })
            .await??;
            match page.resume_after {
                Some(after) => start = [after.as_slice(), &[0]].concat(),
                None => return Ok((keys, bytes)),
            }
        }
    }

    /// Takes this node off the ring (see the module docs). Idempotent once left.
    pub async fn leave(self: &Arc<Self>) -> Result<pb::MoveReport, MoveError> {
        let leave = match Move::leave(&self.view()) {
            Ok(Some(leave)) => leave,
            Ok(None) => return Ok(self.report(0, 0)),
            Err(refused) => return Err(MoveError::Refused(refused.message)),
        };
        let (keys, bytes) = self.run_move(leave).await?;
        tracing::info!(keys, bytes, "left the region: streamed its keys to their next owners");
        Ok(self.report(keys, bytes))
    }

    /// Sends every key this node holds to the nodes that take it over when it is gone.
    async fn stream_out(self: &Arc<Self>) -> Result<(u64, u64), MoveError> {
        let (mut keys, mut bytes) = (0u64, 0u64);
        let mut start = Vec::new();
        loop {
            let node = self.node.clone();
            let from = start.clone();
            let page =
                crate::blocking::run(move || node.scan_states(&from, &[], STREAM_PAGE as usize, |_| true))
                    .await??;
            let view = self.view();
            let mut sends = JoinSet::new();
            for (key, rec) in &page.items {
                let state = encode(rec);
                for target in moves::streams_to(&view, key) {
                    if sends.len() >= STREAM_PARALLELISM {
                        sends.join_next().await.expect("non-empty").map_err(TaskFailed::from)??;
                    }
                    keys += 1;
                    bytes += state.len() as u64;
                    let (this, key, state) = (self.clone(), key.clone(), state.clone());
                    sends.spawn(async move { this.push_state(target, key, state).await });
                }
            }
            while let Some(done) = sends.join_next().await {
                done.map_err(TaskFailed::from)??;
            }
            match page.resume_after {
                Some(after) => start = [after.as_slice(), &[0]].concat(),
                None => return Ok((keys, bytes)),
            }
        }
    }

    async fn push_state(&self, target: NodeId, key: Vec<u8>, state: Vec<u8>) -> Result<(), MoveError> {
        let failed = |error| MoveError::Peer { what: "streaming to", node: target, error };
        let mut client =
            self.client(target).ok_or_else(|| failed(PeerError::NeverSent("not a member".into())))?;
        let req = pb::MergeRequest { key, state, hint_for: None, ship: false };
        match tokio::time::timeout(self.peers.timeout(), self.send_merge(&mut client, req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(failed(peer_error(s))),
            Err(_) => Err(failed(PeerError::TimedOut("no answer in time".into()))),
        }
    }

    /// Drops this node's copies of keys it does not replicate (see the module docs): each is
    /// first handed to every home replica of its key (`moves::hand_over_to`; it may be the
    /// only copy) and dropped once all of them took it. Copies not taken stay; the cleanup
    /// then fails with UNAVAILABLE saying how many, and can be run again.
    pub async fn cleanup(self: &Arc<Self>) -> Result<pb::MoveReport, MoveError> {
        let view = self.view();
        moves::cleanup_allowed(&view).map_err(|refused| MoveError::Refused(refused.message))?;
        let (node, v) = (self.node.clone(), view.clone());
        let foreign = crate::blocking::run(move || {
            let mut foreign = Vec::new();
            node.engine().for_each(|key, rec| {
                if moves::foreign(&v, key) {
                    foreign.push((key.to_vec(), rec.clone()));
                }
            })?;
            if !foreign.is_empty() {
                // Should this node own some of these keys again, it will hold less than it once
                // wrote to them: from now on it writes as a new actor (renewed first, so a
                // failure leaves the copies for the next cleanup).
                node.renew_actor()?;
            }
            Ok::<_, StorageError>(foreign)
        })
        .await??;
        let (mut keys, mut bytes, mut kept) = (0u64, 0u64, Vec::new());
        for (key, rec) in foreign {
            let state = encode(&rec);
            let mut handed = Ok(());
            for target in moves::hand_over_to(&view, &key) {
                handed = self.push_state(target, key.clone(), state.clone()).await;
                if handed.is_err() {
                    break;
                }
            }
            if let Err(e) = handed {
                kept.push(e);
                continue;
            }
            let node = self.node.clone();
            let size = state.len() as u64;
            let dropped = crate::blocking::run(move || {
                // Only the state handed over goes.
                if node.engine().get(&key)?.as_ref() != Some(&rec) {
                    return Ok(false);
                }
                node.engine().drop_copy(&key)
            })
            .await??;
            if dropped {
                keys += 1;
                bytes += size;
            }
        }
        tracing::info!(
            keys,
            bytes,
            kept = kept.len(),
            "cleanup: dropped copies of keys this node no longer replicates"
        );
        if let Some(first) = kept.first() {
            return Err(MoveError::Unavailable(format!(
                "cleanup dropped {keys} copies and kept {} that a home replica did not take (first: {first}); run cleanup again",
                kept.len()
            )));
        }
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
