//! Merkle anti-entropy between the replicas of a region, and with the other regions' nodes.
//!
//! The exchange itself (summaries, differing buckets a few at a time, per-key digests, fetch,
//! merge here, push back) is the protocol's `geokv_protocol::anti_entropy::Exchange`; this file
//! runs its commands against the store and the peer's gRPC service.
//!
//! Summaries are computed by a scan of the node's data per round (not maintained
//! incrementally), which costs O(keys) of local reads per round; rounds are spaced by
//! `cluster.anti_entropy_interval_ms`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use geokv_cluster::merkle::{self, Summary};
use geokv_cluster::Membership;
use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use geokv_protocol::anti_entropy::{shared, AeCommand, Digests, Exchange};
use geokv_protocol::{Failure, Kind, PeerError};
use geokv_storage::{codec, StorageError};
use tonic::Status;

use super::coordinator::{decode, encode};
use super::Cluster;
use crate::api::status::peer_error;
use crate::blocking::TaskFailed;

/// Deadline of a peer's summary or digest scan.
const AE_SCAN_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an exchange with a peer did not complete (logged; the next round retries it). The codes
/// it would have as a gRPC status are in `api::status`.
#[derive(Debug, thiserror::Error)]
pub enum AntiEntropyError {
    /// The peer is not a member this node has a client for.
    #[error("unknown peer")]
    UnknownPeer,
    /// Pushing a merged state to the peer failed.
    #[error("pushing to node {node} failed: {error}")]
    Peer { node: NodeId, error: PeerError },
    /// The exchange ended, but some keys failed.
    #[error("{failed} keys could not be exchanged; the next round retries them")]
    KeysFailed { failed: u64 },
    /// The exchange stopped early (the peer's summary or digests could not be had).
    #[error("{0}")]
    Stopped(String),
    /// The driver ran out of commands before the exchange's outcome (a bug).
    #[error("the anti-entropy exchange stopped without an outcome")]
    NoOutcome,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

/// Awaits a node-to-node call for at most `deadline`. The error is the transport's answer (or
/// `DEADLINE_EXCEEDED`): callers that act on it type it with `api::status::peer_error`; the
/// status page and residency reports show its code.
pub(crate) async fn with_deadline<T>(
    deadline: std::time::Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(deadline, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {deadline:?}"))),
    }
}

/// Runs an anti-entropy round with every healthy peer each `anti_entropy_interval_ms`.
pub fn spawn_anti_entropy(cluster: Arc<Cluster>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let period = Duration::from_millis(cluster.cfg.anti_entropy_interval_ms);
            // A node on a new data directory recovers first (`recovery.rs`).
            cluster.recover().await;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                cluster.anti_entropy_round().await;
            }
        },
        tracing::info_span!("anti_entropy"),
    ))
}

impl Cluster {
    /// Whether `key` is replicated by both this node and `peer` in `view`. A peer of another
    /// region replicates the keys its region's ring (from the topology) gives it.
    fn shared_with(&self, view: &Membership, key: &[u8], peer: NodeId) -> bool {
        let home = view.home(key);
        if !home.contains(&self.me) {
            return false;
        }
        let Some(region) = view.info(peer).map(|i| i.region.as_str()) else { return false };
        let peer_replicates =
            geokv_protocol::anti_entropy::peer_replicates(&home, peer, region == self.region, || {
                self.residency.allows(key, region)
                    && self
                        .remote_rings
                        .get(region)
                        .is_some_and(|(ring, n)| ring.preference_list(key, *n).contains(&peer))
            });
        shared(&home, self.me, peer_replicates)
    }

    /// Digests of the keys shared with `peer`, optionally only in some buckets.
    fn local_digests(
        &self,
        peer: NodeId,
        leaves: Option<&[u32]>,
    ) -> Result<BTreeMap<Vec<u8>, u64>, geokv_storage::StorageError> {
        let wanted: Option<std::collections::BTreeSet<u32>> = leaves.map(|l| l.iter().copied().collect());
        let mut out = BTreeMap::new();
        let view = self.view();
        self.node.engine().for_each(|key, rec| {
            if self.shared_with(&view, key, peer)
                && wanted.as_ref().is_none_or(|w| w.contains(&merkle::leaf_of(key)))
            {
                out.insert(key.to_vec(), merkle::digest(key, &codec::serialize(rec)));
            }
        })?;
        Ok(out)
    }

    /// The Merkle summary of the keys shared with `peer`, and how many keys it covers. Digests
    /// are folded in as the data is scanned, so memory does not grow with the key count.
    pub fn summary_for(&self, peer: NodeId) -> Result<(Summary, usize), geokv_storage::StorageError> {
        let mut s = Summary::default();
        let mut count = 0;
        let view = self.view();
        self.node.engine().for_each(|key, rec| {
            if self.shared_with(&view, key, peer) {
                s.add(key, merkle::digest(key, &codec::serialize(rec)));
                count += 1;
            }
        })?;
        Ok((s, count))
    }

    pub fn digests_for(
        &self,
        peer: NodeId,
        leaves: &[u32],
    ) -> Result<Vec<pb::KeyDigest>, geokv_storage::StorageError> {
        Ok(self
            .local_digests(peer, Some(leaves))?
            .into_iter()
            .map(|(key, digest)| pb::KeyDigest { key, digest })
            .collect())
    }

    /// One anti-entropy round with every healthy peer of the region, then with every node of
    /// the other regions whose (emulated) link is not cut: the cross-region backstop for
    /// anything the replication log missed. Rounds do not overlap: a round asked for while one
    /// runs (timer or `RunAntiEntropy`) waits for it.
    pub async fn anti_entropy_round(self: &Arc<Self>) {
        let _one_at_a_time = self.ae_lock.lock().await;
        for peer in self.view().peers() {
            if !self.healthy(peer) {
                continue;
            }
            if let Err(e) = self.anti_entropy_with(peer).await {
                tracing::warn!(peer, error = %e, "anti-entropy round failed; will retry");
            }
        }
        for (region, (ring, _)) in &self.remote_rings {
            if self.replicator().is_some_and(|r| r.is_cut(region)) {
                continue;
            }
            for &peer in ring.nodes() {
                if let Err(e) = self.anti_entropy_with(peer).await {
                    tracing::warn!(peer, region, error = %e, "cross-region anti-entropy failed; will retry");
                }
            }
        }
        self.stats.ae_rounds.fetch_add(1, Ordering::Relaxed);
    }

    /// One exchange with `peer`, driven by the protocol's state machine
    /// (`geokv_protocol::anti_entropy::Exchange`): this driver only runs its commands.
    pub(crate) async fn anti_entropy_with(self: &Arc<Self>, peer: NodeId) -> Result<(), AntiEntropyError> {
        let mut client = self.client(peer).ok_or(AntiEntropyError::UnknownPeer)?;
        let (mut exchange, first) = Exchange::start();
        let mut todo: VecDeque<AeCommand> = first.into();
        while let Some(command) = todo.pop_front() {
            let next = match command {
                AeCommand::Summarize => {
                    let this = self.clone();
                    let (mine, compared) = crate::blocking::run(move || this.summary_for(peer)).await??;
                    self.stats.ae_keys_compared.fetch_add(compared as u64, Ordering::Relaxed);
                    exchange.on_local_summary(mine)
                }
                AeCommand::AskSummary => {
                    let theirs =
                        with_deadline(AE_SCAN_TIMEOUT, client.summary(pb::SummaryRequest { peer: self.me }))
                            .await
                            .map(|s| {
                                self.stats
                                    .ae_summary_bytes
                                    .fetch_add(s.leaves.len() as u64 * 8, Ordering::Relaxed);
                                Summary { leaves: s.leaves }
                            })
                            .map_err(peer_error);
                    exchange.on_peer_summary(theirs)
                }
                AeCommand::Digests { leaves } => {
                    let digests = self.both_digests(&mut client, peer, leaves).await?;
                    exchange.on_digests(digests)
                }
                AeCommand::Fetch { key } => {
                    let request = pb::FetchRequest { key: key.clone(), writer_hlc: 0, vote: false };
                    let theirs = match with_deadline(self.peers.timeout(), client.fetch(request)).await {
                        Ok(r) => {
                            self.stats
                                .ae_state_bytes_received
                                .fetch_add(r.state.len() as u64, Ordering::Relaxed);
                            if r.state.is_empty() {
                                Ok(None)
                            } else {
                                // A state this node cannot decode is not the peer's corrupt
                                // copy: the key fails and the next round retries it.
                                decode(&r.state).map(Some).map_err(|e| {
                                    PeerError::Answered(Failure::refused(
                                        Kind::Internal,
                                        format!("this node cannot decode the peer's state: {e}"),
                                    ))
                                })
                            }
                        }
                        Err(s) => Err(peer_error(s)),
                    };
                    exchange.on_fetched(key, theirs)
                }
                AeCommand::MergeAndPush { key, theirs } => {
                    let pushed =
                        self.merge_and_push(&mut client, peer, key.clone(), theirs.map(|b| *b)).await;
                    if let Err(e) = &pushed {
                        tracing::debug!(peer, error = %e, "anti-entropy exchange failed");
                    }
                    exchange.on_pushed(key, pushed.map_err(PeerError::from))
                }
                AeCommand::Done(result) => {
                    self.exchanged(peer, &result).await;
                    return match result {
                        Ok(outcome) if outcome.failed > 0 => {
                            Err(AntiEntropyError::KeysFailed { failed: outcome.failed })
                        }
                        Ok(_) => Ok(()),
                        Err(why) => Err(AntiEntropyError::Stopped(why)),
                    };
                }
            };
            // Follow-ups first: a fetched state is merged and pushed before the next fetch, so
            // one state at a time is held, not a whole chunk's.
            for command in next.into_iter().rev() {
                todo.push_front(command);
            }
        }
        Err(AntiEntropyError::NoOutcome)
    }

    /// This node's and the peer's digests of the keys in some buckets.
    async fn both_digests(
        self: &Arc<Self>,
        client: &mut crate::peer::client::PeerClient,
        peer: NodeId,
        leaves: Vec<u32>,
    ) -> Result<Result<(Digests, Digests), PeerError>, AntiEntropyError> {
        let request = pb::DigestsRequest { peer: self.me, leaves: leaves.clone() };
        let theirs: Digests = match with_deadline(AE_SCAN_TIMEOUT, client.digests(request)).await {
            Ok(r) => r.digests.into_iter().map(|d| (d.key, d.digest)).collect(),
            Err(s) => return Ok(Err(peer_error(s))),
        };
        self.stats
            .ae_summary_bytes
            .fetch_add(theirs.keys().map(|k| k.len() as u64 + 8).sum::<u64>(), Ordering::Relaxed);
        let this = self.clone();
        let mine = crate::blocking::run(move || this.local_digests(peer, Some(&leaves))).await??;
        Ok(Ok((mine, theirs)))
    }

    /// Merges the peer's state of `key` (if any) here and pushes the merged state back.
    async fn merge_and_push(
        &self,
        client: &mut crate::peer::client::PeerClient,
        peer: NodeId,
        key: Vec<u8>,
        theirs: Option<geokv_core::Record>,
    ) -> Result<(), AntiEntropyError> {
        let node = self.node.clone();
        let k = key.clone();
        let merged = crate::blocking::run(move || {
            if let Some(rec) = &theirs {
                node.engine().merge(&k, rec)?;
            }
            node.engine().get(&k)
        })
        .await??;
        if let Some(rec) = merged {
            let state = encode(&rec);
            self.stats.ae_state_bytes_sent.fetch_add(state.len() as u64, Ordering::Relaxed);
            let req = pb::MergeRequest { key, state, hint_for: None, ship: false };
            with_deadline(self.peers.timeout(), self.send_merge(client, req))
                .await
                .map_err(|s| AntiEntropyError::Peer { node: peer, error: peer_error(s) })?;
        }
        self.stats.ae_keys_repaired.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
