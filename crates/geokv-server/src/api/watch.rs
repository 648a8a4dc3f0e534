//! The `Watch` RPC: the change feeds of the region's nodes (`crate::peer::feed`) merged into
//! one stream of key changes. What to deliver and where each feed starts is decided by
//! [`geokv_protocol::watch::WatchMerge`]; this file carries it out: it opens every node's feed
//! (this node's in place, the others' over the peer RPC `Feed`), reopens a feed that ended
//! from where the watch stands in it, drops keys this region may not hold, builds the events
//! and encodes the revision.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use geokv_core::{NodeId, Stamp};
use geokv_proto::v1 as pb;
use geokv_protocol::watch::{Deliver, FeedEntry, FeedStart, PendingChange, Revision, WatchMerge};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::api::convert::{value, version};
use crate::api::kv::KvService;
use crate::api::status::invalid;
use crate::peer::feed::{self, FeedBatch};
use crate::region::Cluster;
use crate::Node;

pub type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// How soon a feed that ended (its node went down) is opened again.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// A feed that sends nothing (not even its once-a-second progress) for this long is taken for
/// dead (a half-open connection) and opened again.
const FEED_SILENCE: Duration = Duration::from_secs(5);
/// A stream with no events says where it stands at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What the feeds tell the watch: a batch of node `.0`'s feed number `.1`, or its end.
enum FeedMsg {
    Batch(NodeId, u64, FeedBatch),
    Ended(NodeId, u64, Status),
}

impl KvService {
    pub(crate) async fn serve_watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let req = req.into_inner();
        if !req.prefix.is_empty() {
            self.node().limits().check_key(&req.prefix).map_err(|e| invalid(format!("prefix: {e}")))?;
        }
        let region = self.cluster().map(|c| c.region().to_owned()).unwrap_or_default();
        let from = if req.revision.is_empty() {
            None
        } else {
            Some(decode_revision(&req.revision, &region, &req.prefix)?)
        };
        let watch = Watch {
            node: self.node().clone(),
            cluster: self.cluster().cloned(),
            region,
            prefix: req.prefix,
            merge: WatchMerge::new(from),
            open: BTreeSet::new(),
            feeds: BTreeMap::new(),
            next_feed: 0,
            reopen: BTreeMap::new(),
            quiet: BTreeSet::new(),
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(watch.run(tx));
        Ok(Response::new(Box::pin(crate::xregion::ack_stream(rx))))
    }
}

struct Watch {
    node: Arc<Node>,
    cluster: Option<Arc<Cluster>>,
    region: String,
    prefix: Vec<u8>,
    merge: WatchMerge,
    /// Nodes whose feed has opened and not ended.
    open: BTreeSet<NodeId>,
    /// The number of each node's current feed (messages of an older one are ignored).
    feeds: BTreeMap<NodeId, u64>,
    next_feed: u64,
    /// Feeds to open again, and when.
    reopen: BTreeMap<NodeId, Instant>,
    /// Nodes whose feed ended and has not opened again (logged once per outage).
    quiet: BTreeSet<NodeId>,
}

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

impl Watch {
    /// The region's nodes (this one alone without a cluster).
    fn nodes(&self) -> Vec<NodeId> {
        let me = self.node.id();
        match &self.cluster {
            Some(c) => std::iter::once(me).chain(c.view().peers()).collect(),
            None => vec![me],
        }
    }

    async fn run(mut self, out: Out) {
        let (tx, mut rx) = mpsc::channel(64);
        // The first response goes out once every node's feed has opened (its position is
        // known) or failed to open (the node is down: it is read from when it comes back).
        let mut waiting_open: BTreeSet<NodeId> = self.nodes().into_iter().collect();
        for id in waiting_open.clone() {
            self.open_feed(id, &tx);
        }
        let mut set_up = false;
        // Batches that came before the first response: taken in after it, so that its
        // revision covers none of them.
        let mut held: Vec<(NodeId, FeedBatch)> = Vec::new();
        let mut moved = false;
        let mut last_sent = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { return };
                    match msg {
                        FeedMsg::Batch(id, n, batch) if self.feeds.get(&id) == Some(&n) => {
                            waiting_open.remove(&id);
                            self.quiet.remove(&id);
                            moved = true;
                            if !set_up && self.open.contains(&id) {
                                held.push((id, batch));
                                continue;
                            }
                            let events = self.on_batch(id, batch);
                            if !events.is_empty() {
                                if !self.send(&out, events).await {
                                    return;
                                }
                                moved = false;
                                last_sent = Instant::now();
                            }
                        }
                        FeedMsg::Ended(id, n, status) if self.feeds.get(&id) == Some(&n) => {
                            waiting_open.remove(&id);
                            self.open.remove(&id);
                            self.feeds.remove(&id);
                            self.merge.closed(id);
                            if status.code() == tonic::Code::OutOfRange {
                                let _ = out.send(Err(status)).await;
                                return;
                            }
                            if self.quiet.insert(id) {
                                tracing::warn!(node = id, error = %status, "watch: a node's change feed ended; it is opened again every second");
                            } else {
                                tracing::debug!(node = id, error = %status, "watch: a node's change feed failed to open again");
                            }
                            self.reopen.insert(id, Instant::now() + REOPEN_AFTER);
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    if self.node.stopping() {
                        let _ = out.send(Err(crate::api::status::coded(tonic::Code::Unavailable,
                            "this node is shutting down; watch again on another node of the region from the last revision",
                        ))).await;
                        return;
                    }
                    let now = Instant::now();
                    let due: Vec<NodeId> = self.reopen.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
                    for id in due {
                        self.reopen.remove(&id);
                        self.open_feed(id, &tx);
                    }
                    // Nodes that joined the region since.
                    for id in self.nodes() {
                        if !self.feeds.contains_key(&id) && !self.reopen.contains_key(&id) {
                            self.open_feed(id, &tx);
                        }
                    }
                    if set_up && moved && last_sent.elapsed() >= PROGRESS_EVERY {
                        if !self.send(&out, Vec::new()).await {
                            return;
                        }
                        moved = false;
                        last_sent = Instant::now();
                    }
                }
                _ = out.closed() => return,
            }
            if !set_up && waiting_open.is_empty() {
                set_up = true;
                if !self.send(&out, Vec::new()).await {
                    return;
                }
                for (id, batch) in std::mem::take(&mut held) {
                    let events = self.on_batch(id, batch);
                    if !events.is_empty() && !self.send(&out, events).await {
                        return;
                    }
                }
                moved = false;
                last_sent = Instant::now();
            }
        }
    }

    /// Sends events with the revision after them; false when the client is gone.
    async fn send(&self, out: &Out, events: Vec<pb::WatchEvent>) -> bool {
        let revision = encode_revision(&self.region, &self.prefix, &self.merge.revision());
        out.send(Ok(pb::WatchResponse { events, revision })).await.is_ok()
    }

    /// Opens node `id`'s feed from where the watch stands in its log.
    fn open_feed(&mut self, id: NodeId, tx: &mpsc::Sender<FeedMsg>) {
        self.next_feed += 1;
        let n = self.next_feed;
        self.feeds.insert(id, n);
        let start = self.merge.start(id);
        let tx = tx.clone();
        let prefix = self.prefix.clone();
        if id == self.node.id() {
            let node = self.node.clone();
            tokio::spawn(async move {
                match feed::open(node, prefix, start).await {
                    Ok(batches) => forward(id, n, Box::pin(crate::xregion::ack_stream(batches)), tx).await,
                    Err(status) => {
                        let _ = tx.send(FeedMsg::Ended(id, n, status)).await;
                    }
                }
            });
            return;
        }
        let cluster = self.cluster.clone().expect("peers only in a cluster");
        tokio::spawn(async move {
            match remote_feed(&cluster, id, prefix, start).await {
                Ok(batches) => forward(id, n, batches, tx).await,
                Err(status) => {
                    let _ = tx.send(FeedMsg::Ended(id, n, status)).await;
                }
            }
        });
    }

    /// Takes in a batch of node `id`'s feed; the events to deliver.
    fn on_batch(&mut self, id: NodeId, batch: FeedBatch) -> Vec<pb::WatchEvent> {
        if self.open.insert(id) && batch.items.is_empty() {
            self.merge.opened(id, batch.position);
            return Vec::new();
        }
        let entries: Vec<FeedEntry<'_>> = batch
            .items
            .iter()
            .map(|i| FeedEntry {
                key_hash: xxhash_rust::xxh3::xxh3_64(&i.key),
                version: i.version,
                digest: i.digest,
                state: i.state.as_ref(),
            })
            .collect();
        let view = self.cluster.as_ref().map(|c| c.view());
        let open = &self.open;
        let items = &batch.items;
        let chosen = self.merge.on_batch(
            id,
            batch.position.seq,
            &entries,
            |i| match &view {
                Some(view) => view.home(&items[i].key).into_iter().filter(|n| open.contains(n)).collect(),
                None => vec![id],
            },
            feed::digest,
        );
        let now = self.node.now_ms();
        let residency = self.cluster.as_ref().map(|c| c.residency().installed());
        let allowed = |key: &[u8]| residency.as_ref().is_none_or(|r| r.policy.allows(key, &self.region));
        chosen
            .into_iter()
            .filter_map(|d| match d {
                Deliver::Entry(i) => {
                    let item = &batch.items[i];
                    allowed(&item.key).then(|| event(&item.key, item.state.as_ref(), item.version, now))
                }
                Deliver::Merged(i, state) => {
                    let key = &batch.items[i].key;
                    allowed(key).then(|| event(key, Some(&*state), state.version(), now))
                }
            })
            .collect()
    }
}

/// Passes a feed's batches on to the watch, then its end.
async fn forward(
    id: NodeId,
    n: u64,
    mut batches: impl futures::Stream<Item = Result<FeedBatch, Status>> + Unpin,
    tx: mpsc::Sender<FeedMsg>,
) {
    use futures::StreamExt as _;
    loop {
        let Ok(next) = tokio::time::timeout(FEED_SILENCE, batches.next()).await else {
            let silent = crate::api::status::coded(
                tonic::Code::Unavailable,
                format!("node {id}'s feed sent nothing for {FEED_SILENCE:?}"),
            );
            let _ = tx.send(FeedMsg::Ended(id, n, silent)).await;
            return;
        };
        let Some(batch) = next else { break };
        let msg = match batch {
            Ok(batch) => FeedMsg::Batch(id, n, batch),
            Err(status) => FeedMsg::Ended(id, n, status),
        };
        let ended = matches!(msg, FeedMsg::Ended(..));
        if tx.send(msg).await.is_err() || ended {
            return;
        }
    }
    let _ = tx
        .send(FeedMsg::Ended(id, n, crate::api::status::coded(tonic::Code::Unavailable, "the feed ended")))
        .await;
}

/// Node `id`'s feed over the peer RPC.
async fn remote_feed(
    cluster: &Cluster,
    id: NodeId,
    prefix: Vec<u8>,
    start: FeedStart,
) -> Result<Pin<Box<dyn futures::Stream<Item = Result<FeedBatch, Status>> + Send>>, Status> {
    use futures::StreamExt as _;
    let client = cluster.client(id).ok_or_else(|| {
        crate::api::status::coded(tonic::Code::Unavailable, format!("node {id} has no known address"))
    })?;
    let after = match start {
        FeedStart::Now => None,
        FeedStart::After(p) => Some(feed::position_to_pb(p)),
    };
    let mut client = client.max_decoding_message_size(usize::MAX);
    let call = client.feed(pb::FeedRequest { prefix, after });
    let stream = tokio::time::timeout(2 * cluster.peer_timeout(), call)
        .await
        .map_err(|_| {
            crate::api::status::coded(
                tonic::Code::Unavailable,
                format!("node {id} did not open its feed in time"),
            )
        })??
        .into_inner();
    Ok(Box::pin(stream.map(|b| b.and_then(feed::batch_from_pb))))
}

fn event(key: &[u8], state: Option<&geokv_core::Record>, stamp: Stamp, now_ms: u64) -> pb::WatchEvent {
    let visible = state.and_then(|rec| rec.view(now_ms).map(|v| (rec, v)));
    pb::WatchEvent {
        key: key.to_vec(),
        deleted: visible.is_none(),
        version: Some(version(stamp)),
        ttl_remaining_ms: visible.as_ref().and_then(|(rec, _)| rec.ttl_remaining_ms(now_ms)),
        value: visible.map(|(_, v)| value(v)),
    }
}

fn encode_revision(region: &str, prefix: &[u8], rev: &Revision) -> Vec<u8> {
    pb::WatchRevision {
        region: region.to_owned(),
        prefix: prefix.to_vec(),
        positions: rev
            .positions
            .iter()
            .map(|(&node_id, &p)| pb::watch_revision::Position {
                node_id,
                position: Some(feed::position_to_pb(p)),
            })
            .collect(),
        pending: rev
            .pending
            .iter()
            .map(|p| pb::watch_revision::Pending {
                key_hash: p.key_hash,
                version_hlc: p.version.time,
                version_node: p.version.node,
                digest: p.digest,
                waiting: p.waiting.clone(),
            })
            .collect(),
    }
    .encode_to_vec()
}

fn decode_revision(raw: &[u8], region: &str, prefix: &[u8]) -> Result<Revision, Status> {
    let rev = pb::WatchRevision::decode(raw).map_err(|e| {
        invalid(format!("revision: not a revision this service gave ({e}); pass the `revision` of a WatchResponse as it came"))
    })?;
    if rev.region != region {
        return Err(invalid(format!(
            "revision: made in region {:?}, this is region {region:?}; resume a watch in the region it ran in, or watch from now",
            rev.region
        )));
    }
    if rev.prefix != prefix {
        return Err(invalid(format!(
            "revision: made by a watch of prefix {:?}, not {:?}; resume with the prefix it was made for",
            String::from_utf8_lossy(&rev.prefix),
            String::from_utf8_lossy(prefix)
        )));
    }
    let mut positions = BTreeMap::new();
    for p in rev.positions {
        let position = p.position.as_ref().map(feed::position_from_pb).ok_or_else(|| {
            invalid(
                "revision: a node's position is missing; pass the `revision` of a WatchResponse as it came",
            )
        })?;
        positions.insert(p.node_id, position);
    }
    let pending = rev
        .pending
        .into_iter()
        .map(|p| PendingChange {
            key_hash: p.key_hash,
            version: Stamp::new(p.version_hlc, p.version_node),
            digest: p.digest,
            waiting: p.waiting,
        })
        .collect();
    Ok(Revision { positions, pending })
}

#[cfg(test)]
mod tests {
    use super::*;
    use geokv_protocol::watch::LogPosition;

    #[test]
    fn a_revision_round_trips_and_is_checked() {
        let mut rev = Revision::default();
        rev.positions.insert(3, LogPosition { log_id: 77, seq: 12 });
        rev.pending.push(PendingChange {
            key_hash: 5,
            version: Stamp::new(9, 3),
            digest: 4,
            waiting: vec![1, 2],
        });
        let raw = encode_revision("eu-west", b"p/", &rev);
        assert_eq!(decode_revision(&raw, "eu-west", b"p/").unwrap(), rev);
        let wider = decode_revision(&raw, "eu-west", b"").unwrap_err();
        assert_eq!(wider.code(), tonic::Code::InvalidArgument, "another prefix");
        let other = decode_revision(&raw, "us-east", b"p/").unwrap_err();
        assert_eq!(other.code(), tonic::Code::InvalidArgument);
        assert!(other.message().contains("eu-west"), "{}", other.message());
        let garbage = decode_revision(b"\xff\xff\xff", "eu-west", b"p/").unwrap_err();
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    }
}
