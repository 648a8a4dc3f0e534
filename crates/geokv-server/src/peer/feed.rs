//! A node's change feed, the source side of a watch: its change log under a prefix, from a
//! position, as it grows, with each key's state. Served to the region's other nodes as the
//! peer RPC `Feed`, and read in place by a watch running on this node
//! (`crate::api::watch`, which merges the feeds of the region's nodes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use geokv_core::{NodeId, Record, Stamp};
use geokv_proto::v1 as pb;
use geokv_protocol::watch::{FeedStart, LogPosition};
use geokv_storage::{codec, LogStart};
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::api::status::{detailed, to_status};
use crate::region::coordinator::{decode, encode};
use crate::Node;

/// Log entries read at once.
const PAGE: usize = 512;
/// State bytes a batch carries at most (it carries at least one state).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How often an idle feed looks at the log.
const POLL: Duration = Duration::from_millis(10);
/// An idle feed says where it stands this often, so its reader can tell it is alive and the
/// watch's revision keeps up with the log.
const PROGRESS: Duration = Duration::from_secs(1);

/// The reason of the error a watch gets when the changes after its revision are gone.
pub const REVISION_TRIMMED: &str = "REVISION_TRIMMED";

/// A change-log entry under the prefix, with the key's state when it was read.
#[derive(Clone, Debug)]
pub struct FeedItem {
    pub key: Vec<u8>,
    /// `None`: the node holds no state of the key any more (purged).
    pub state: Option<Record>,
    pub version: Stamp,
    /// xxh3-64 of the state's serialized form.
    pub digest: u64,
}

/// A batch of a feed and where the feed stands after it.
#[derive(Clone, Debug)]
pub struct FeedBatch {
    pub position: LogPosition,
    pub items: Vec<FeedItem>,
}

/// The error of a position whose next entries were trimmed.
fn trimmed(node: NodeId, seq: u64, upto: u64) -> Status {
    detailed(
        Code::OutOfRange,
        format!(
            "node {node} no longer keeps the changes after this watch's revision (its change log was trimmed up to entry {upto}, past entry {seq}); read the keys again and watch from now (storage.changelog_retention_entries sets how many changes a node keeps)"
        ),
        REVISION_TRIMMED,
        MetadataMap::new(),
    )
}

/// The digest of a state, the same on every node for the same state.
pub fn digest(state: &Record) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&codec::serialize(state))
}

/// Opens this node's feed. The first batch has no items and says where the feed starts.
pub async fn open(
    node: Arc<Node>,
    prefix: Vec<u8>,
    start: FeedStart,
) -> Result<mpsc::Receiver<Result<FeedBatch, Status>>, Status> {
    let n = node.clone();
    let position = crate::blocking::run(move || resolve(&n, start)).await??;
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(Ok(FeedBatch { position, items: Vec::new() })).expect("a new channel has room");
    tokio::spawn(run(node, prefix, position, tx));
    Ok(rx)
}

/// Where a feed asked to start at `start` starts.
fn resolve(node: &Node, start: FeedStart) -> Result<LogPosition, Status> {
    let engine = node.engine();
    let log_id = engine.log_id().map_err(to_status)?;
    match start {
        FeedStart::Now => Ok(LogPosition { log_id, seq: engine.committed_seq() }),
        FeedStart::After(p) => match engine.log_start(p.log_id, p.seq).map_err(to_status)? {
            LogStart::Ok => Ok(p),
            LogStart::Trimmed { trimmed_upto } => Err(trimmed(node.id(), p.seq, trimmed_upto)),
            // The node's data directory was replaced (or restored from an older backup): its
            // log now holds the states it recovered, not changes since the revision. Like a
            // node the watch never read, it is read from now on (the changes it took are on
            // the keys' other replicas too, except writes at level ONE it alone took).
            LogStart::OtherLog => {
                tracing::info!(
                    log_id = p.log_id,
                    seq = p.seq,
                    "a watch resumes in a change log this node no longer has; it reads this node's changes from now on"
                );
                Ok(LogPosition { log_id, seq: engine.committed_seq() })
            }
        },
    }
}

async fn run(
    node: Arc<Node>,
    prefix: Vec<u8>,
    mut position: LogPosition,
    tx: mpsc::Sender<Result<FeedBatch, Status>>,
) {
    let mut last_sent = Instant::now();
    loop {
        if tx.is_closed() {
            return;
        }
        if node.stopping() {
            let _ = tx.send(Err(Status::unavailable("the node is shutting down"))).await;
            return;
        }
        if node.engine().committed_seq() <= position.seq {
            if last_sent.elapsed() >= PROGRESS {
                if tx.send(Ok(FeedBatch { position, items: Vec::new() })).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
            }
            tokio::time::sleep(POLL).await;
            continue;
        }
        let (n, p) = (node.clone(), prefix.clone());
        let batch = match crate::blocking::run(move || read_batch(&n, &p, position)).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(status)) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(Status::internal(format!("reading the change log failed: {e}")))).await;
                return;
            }
        };
        position = batch.position;
        if batch.items.is_empty() && last_sent.elapsed() < PROGRESS {
            continue;
        }
        if tx.send(Ok(batch)).await.is_err() {
            return;
        }
        last_sent = Instant::now();
    }
}

/// The next batch after `position`: entries of keys under `prefix` whose state has not
/// changed again since (a later entry carries the newer state).
fn read_batch(node: &Node, prefix: &[u8], position: LogPosition) -> Result<FeedBatch, Status> {
    let engine = node.engine();
    // Every entry up to here is committed: when the read finds nothing beyond some point below
    // it (the numbers of a failed commit, entries erased), the feed moves past them.
    let committed = engine.committed_seq();
    let entries = engine.log_since(position.seq, PAGE).map_err(to_status)?;
    let read_all = entries.len() < PAGE;
    // Checked after the read: entries trimmed before it would be missing from it.
    let trimmed_upto = engine.log_trimmed_upto().map_err(to_status)?;
    if position.seq < trimmed_upto {
        return Err(trimmed(node.id(), position.seq, trimmed_upto));
    }
    let mut items = Vec::new();
    let mut bytes = 0;
    let mut upto = position.seq;
    let mut stopped_early = false;
    for entry in entries {
        if bytes >= MAX_BATCH_BYTES {
            stopped_early = true;
            break;
        }
        upto = entry.seq;
        if !entry.key.starts_with(prefix) {
            continue;
        }
        let state = engine.get(&entry.key).map_err(to_status)?;
        if state.as_ref().is_some_and(|rec| rec.version() != entry.version) {
            continue;
        }
        let serialized = state.as_ref().map(codec::serialize).unwrap_or_default();
        bytes += entry.key.len() + serialized.len();
        let digest = xxhash_rust::xxh3::xxh3_64(&serialized);
        items.push(FeedItem { key: entry.key, state, version: entry.version, digest });
    }
    if read_all && !stopped_early {
        upto = upto.max(committed);
    }
    Ok(FeedBatch { position: LogPosition { log_id: position.log_id, seq: upto }, items })
}

pub fn position_to_pb(p: LogPosition) -> pb::FeedPosition {
    pb::FeedPosition { log_id: p.log_id, seq: p.seq }
}

pub fn position_from_pb(p: &pb::FeedPosition) -> LogPosition {
    LogPosition { log_id: p.log_id, seq: p.seq }
}

/// A batch as the peer RPC sends it.
pub fn batch_to_pb(b: FeedBatch) -> pb::FeedBatch {
    pb::FeedBatch {
        position: Some(position_to_pb(b.position)),
        items: b
            .items
            .into_iter()
            .map(|i| pb::FeedItem {
                state: i.state.as_ref().map(encode).unwrap_or_default(),
                key: i.key,
                version_hlc: i.version.time,
                version_node: i.version.node,
                digest: i.digest,
            })
            .collect(),
    }
}

/// A batch a peer sent.
pub fn batch_from_pb(b: pb::FeedBatch) -> Result<FeedBatch, Status> {
    let position = b.position.as_ref().map(position_from_pb).ok_or_else(|| {
        detailed(Code::Internal, "a peer's feed batch has no position", "BAD_ANSWER", MetadataMap::new())
    })?;
    let items = b
        .items
        .into_iter()
        .map(|i| {
            let state = if i.state.is_empty() { None } else { Some(decode(&i.state)?) };
            Ok(FeedItem {
                key: i.key,
                state,
                version: Stamp::new(i.version_hlc, i.version_node),
                digest: i.digest,
            })
        })
        .collect::<Result<_, Status>>()?;
    Ok(FeedBatch { position, items })
}
