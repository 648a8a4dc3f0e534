//! Cross-region replication: every node ships the changes of its own region's client writes
//! to every other region, and applies what other regions ship to it.
//!
//! **Sending.** One task per destination region tails this node's change log from the cursor
//! the destination acknowledged (saved in storage, so it survives restarts; the log is not
//! trimmed past it, so a long cut leaves the backlog on disk, not in memory). It builds
//! batches of deltas (the current state of each changed key, once per batch) from the entries
//! marked `ship` (client writes of this region and their replication inside it; repairs and
//! changes from other regions are not shipped again), stamps them with this node's HLC,
//! compresses them, and streams them to a node of the destination over `Replicate`, up to
//! [`WINDOW`] batches in flight. The emulated WAN link of the pair sits in front of the stream.
//!
//! **One shipper per key** (`geokv_protocol::shipping`). A node tails its log twice per
//! destination. The primary stream ships at once the keys whose shipper this node is (the
//! first of the key's home replicas that is up) and skips the others. The takeover stream
//! (`takeover.rs`) looks at every shipped entry again once it is older than
//! `takeover_grace_ms`: it asks each key's shipper whether the destination acknowledged the
//! state this node holds, and ships whatever is not: a write acknowledged at QUORUM reaches
//! other regions even if its shipper dies right after, with one delta per write normally.
//!
//! What goes in a batch and how a received one is taken in and acknowledged are the protocol's
//! rules (`geokv_protocol::xregion`), shared with the simulator; this module runs them.
//!
//! **Receiving** (`receive.rs`). Batches of a stream must follow each other (`after_seq` is the previous
//! batch's `last_seq`); a gap (a batch the link lost) is refused and the sender resends from
//! its cursor. A batch whose HLC stamp is beyond `max_clock_drift_ms` ahead is refused and
//! counted. Each delta is merged into the key's home replicas of this region at QUORUM; the
//! batch is acknowledged once all are.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use geokv_cluster::Health;
use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use geokv_protocol::shipping::{self, Tail};
use geokv_protocol::xregion;
use geokv_replication::{default_delay_ms, Batch, Delta, Link, LinkParams, Outbox, Plan};
use geokv_topology::Topology;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::region::{coordinator_decode as decode, coordinator_encode as encode};
use crate::Cluster;

mod receive;
mod status;
mod takeover;

/// Batches in flight to one destination.
pub const WINDOW: usize = 8;
/// Change-log entries read per batch, and the uncompressed bytes a batch stops at.
const MAX_BATCH_ENTRIES: usize = 2048;
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Deltas of one received batch applied at once.
const APPLY_PARALLELISM: usize = 64;

/// Keys whose acknowledged digest a node keeps per destination, to answer the takeover tails
/// of the other replicas: what was acknowledged within the grace at 10,000 writes/s, with
/// room (about 200 bytes a key, 20 MB per destination; a forgotten key is only shipped twice).
const ACKED_KEYS: usize = 100_000;
/// The longest the takeover tail's grace grows to when deliveries are slow.
const MAX_GRACE_MS: u64 = 30_000;
/// How often the takeover tail reads the log when its next entry is not settled yet, and the
/// entries it reads at once (it reads on at once while its pages come back full).
const TAKEOVER_POLL_MS: u64 = 100;
const TAKEOVER_PAGE: usize = 512;

/// The `[replication]` section of the server config.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// How often the change log is polled for new entries to ship, in milliseconds.
    pub interval_ms: u64,
    /// How old a change must be before the takeover stream checks that its key's shipper
    /// delivered it (and ships it from this node if not), in milliseconds: the longest a write
    /// waits when its shipper dies right after the write. Twice the last delivery time to the
    /// destination when that is longer.
    pub takeover_grace_ms: u64,
    /// Emulate WAN links between regions (delay from the great-circle distance between the
    /// regions' locations), for tests and demos on one machine. Off in real deployments.
    pub emulate_wan: bool,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig { interval_ms: 5, takeover_grace_ms: 1000, emulate_wan: false }
    }
}

/// One tail's stream to a destination.
struct TailStream {
    outbox: Mutex<Outbox>,
    /// Whether the stream is up now.
    connected: std::sync::atomic::AtomicBool,
    last_delivery_ms: AtomicU64,
    /// Time from sending a batch to its acknowledgement, for the last acknowledged one.
    round_trip_ms: AtomicU64,
    /// The batches in flight, in order, with what to record once acknowledged.
    sent: Mutex<std::collections::VecDeque<Sent>>,
    /// The takeover tail reads the log again no earlier than this (ms).
    not_before_ms: AtomicU64,
}

type Digests = Vec<(Vec<u8>, u128)>;

/// A batch in flight: its position, when it left, its states' digests (recorded in
/// `Dest::acked` when acknowledged) and, for the takeover tail, how many keys it found
/// covered and shipped (counted when acknowledged, so a resend does not count twice).
struct Sent {
    last_seq: u64,
    at_ms: u64,
    digests: Digests,
    covered: u64,
}

impl TailStream {
    fn new(acked: u64) -> TailStream {
        TailStream {
            outbox: Mutex::new(Outbox::new(acked)),
            connected: Default::default(),
            last_delivery_ms: AtomicU64::new(0),
            round_trip_ms: AtomicU64::new(0),
            sent: Default::default(),
            not_before_ms: AtomicU64::new(0),
        }
    }
}

struct Dest {
    region: String,
    /// Nodes of the destination region: (id, peer address), tried in turn.
    nodes: Vec<(NodeId, String)>,
    link: Mutex<Link>,
    primary: TailStream,
    takeover: TailStream,
    /// The states the destination acknowledged from this node, by digest (either stream).
    acked: Mutex<shipping::Acked<u128>>,
    /// Keys the takeover stream found delivered by their shipper, and keys it shipped itself.
    takeover_covered: AtomicU64,
    takeover_shipped: AtomicU64,
}

impl Dest {
    fn stream(&self, tail: Tail) -> &TailStream {
        match tail {
            Tail::Primary => &self.primary,
            Tail::Takeover => &self.takeover,
        }
    }
}

/// A state's digest, as compared between the replicas of a key.
fn digest(state: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(state)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub struct Replicator {
    cluster: Arc<Cluster>,
    cfg: ReplicationConfig,
    dests: BTreeMap<String, Arc<Dest>>,
    batches_received: AtomicU64,
    deltas_applied: AtomicU64,
    drift_rejections: AtomicU64,
    /// Received states refused for good by this region (see `receive`), not applied.
    deltas_set_aside: AtomicU64,
    /// Draws for the link emulator's jitter and loss.
    rng: Mutex<rand010::rngs::SmallRng>,
}

impl Replicator {
    pub fn new(
        cluster: Arc<Cluster>,
        topology: &Topology,
        cfg: ReplicationConfig,
    ) -> Result<Arc<Self>, String> {
        let mine = cluster.region().to_owned();
        let cluster_seed = cluster.node().id() ^ cluster.node().now_ms();
        let mut dests = BTreeMap::new();
        for region in topology.regions.iter().filter(|r| r.name != mine) {
            let nodes = topology
                .nodes_in(&region.name)
                .into_iter()
                .map(|(id, spec)| (id, spec.peer_addr_from(&mine).to_string()))
                .collect();
            let km = topology.distance_km(&mine, &region.name).unwrap_or(0.0);
            let params = match (cfg.emulate_wan, topology.link(&mine, &region.name)) {
                (false, _) => LinkParams::with_delay(0),
                (true, None) => LinkParams::with_delay(default_delay_ms(km)),
                (true, Some(l)) => LinkParams {
                    delay_ms: l.delay_ms.unwrap_or_else(|| default_delay_ms(km)),
                    jitter_ms: l.jitter_ms,
                    loss: l.loss,
                    cut: false,
                },
            };
            // Saved at once (0 on a first start): the log is never trimmed past them, even
            // before the destination has acknowledged anything. A node upgraded from a version
            // where every replica shipped everything starts its takeover tail where its only
            // tail was (everything before was shipped).
            let engine = cluster.node().engine();
            let err = |e: geokv_storage::StorageError| e.to_string();
            let (primary, takeover) =
                (Tail::Primary.cursor_name(&region.name), Tail::Takeover.cursor_name(&region.name));
            let saved = engine.cursors().map_err(err)?;
            let at = |name: &str| saved.iter().find(|(n, _)| n == name).map(|(_, seq)| *seq);
            let acked = at(&primary).unwrap_or(0);
            let takeover_acked = at(&takeover).unwrap_or(acked);
            engine.set_cursor(&primary, acked).map_err(err)?;
            engine.set_cursor(&takeover, takeover_acked).map_err(err)?;
            dests.insert(
                region.name.clone(),
                Arc::new(Dest {
                    region: region.name.clone(),
                    nodes,
                    link: Mutex::new(Link::new(params)),
                    primary: TailStream::new(acked),
                    takeover: TailStream::new(takeover_acked),
                    acked: Mutex::new(shipping::Acked::new(ACKED_KEYS)),
                    takeover_covered: AtomicU64::new(0),
                    takeover_shipped: AtomicU64::new(0),
                }),
            );
        }
        Ok(Arc::new(Replicator {
            cluster,
            cfg,
            dests,
            batches_received: AtomicU64::new(0),
            deltas_applied: AtomicU64::new(0),
            drift_rejections: AtomicU64::new(0),
            deltas_set_aside: AtomicU64::new(0),
            rng: Mutex::new({
                use rand010::SeedableRng;
                rand010::rngs::SmallRng::seed_from_u64(cluster_seed)
            }),
        }))
    }

    /// Starts two sender tasks per destination region (its primary and takeover tails), and
    /// the task that samples each destination's lag every second for its history (the status
    /// page's plots).
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let sampler = self.spawn_sampler();
        let senders = self
            .dests
            .values()
            .flat_map(|dest| Tail::BOTH.map(|tail| (dest, tail)))
            .map(|(dest, tail)| {
                let (this, dest) = (self.clone(), dest.clone());
                let span = tracing::info_span!("replication", destination = %dest.region, ?tail);
                tokio::spawn(tracing::Instrument::instrument(async move {
                    let mut attempt = 0usize;
                    loop {
                        let target = dest.nodes[attempt % dest.nodes.len().max(1)].clone();
                        if let Err(e) = this.stream_to(&dest, tail, &target).await {
                            tracing::debug!(region = %dest.region, node = target.0, error = %e, "replication stream ended");
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }, span))
            })
            .collect::<Vec<_>>();
        senders.into_iter().chain([sampler]).collect()
    }

    /// Streams one tail's batches to one node of `dest` until the stream fails.
    async fn stream_to(&self, dest: &Arc<Dest>, tail: Tail, target: &(NodeId, String)) -> Result<(), String> {
        if dest.nodes.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Err("the region has no nodes".into());
        }
        let stream = dest.stream(tail);
        lock(&stream.outbox).rewind();
        lock(&stream.sent).clear();
        stream.not_before_ms.store(0, Ordering::Relaxed);
        let timeout = Duration::from_millis(self.cluster.cfg().request_timeout_ms);
        let node_tls = self.cluster.node().tls();
        let channel = crate::security::lazy_channel(&target.1, timeout, node_tls, Some(target.0))?;
        let mut client = pb::cluster_client::ClusterClient::new(channel)
            .max_decoding_message_size(512 * 1024 * 1024)
            .max_encoding_message_size(512 * 1024 * 1024);
        let (tx, rx) = mpsc::channel::<pb::ReplicationBatch>(WINDOW);
        let mut acks = client.replicate(receiver_stream(rx)).await.map_err(|e| e.to_string())?.into_inner();
        stream.connected.store(true, Ordering::Relaxed);
        // The link: batches wait here until their delivery time, in order.
        let (link_tx, mut link_rx) = mpsc::unbounded_channel::<(u64, pb::ReplicationBatch)>();
        let node = self.cluster.node().clone();
        let delivery = tokio::spawn(async move {
            while let Some((at, batch)) = link_rx.recv().await {
                let wait = at.saturating_sub(node.now_ms());
                tokio::time::sleep(Duration::from_millis(wait)).await;
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        let result = self.pump(dest, tail, &mut acks, &link_tx).await;
        stream.connected.store(false, Ordering::Relaxed);
        delivery.abort();
        result
    }

    async fn pump(
        &self,
        dest: &Arc<Dest>,
        tail: Tail,
        acks: &mut tonic::Streaming<pb::ReplicationAck>,
        link: &mpsc::UnboundedSender<(u64, pb::ReplicationBatch)>,
    ) -> Result<(), String> {
        let poll = Duration::from_millis(self.cfg.interval_ms);
        let ack_timeout = {
            let link = lock(&dest.link).params;
            // A window of batches is applied one after another at the receiver.
            let apply = WINDOW as u64 * self.cluster.cfg().request_timeout_ms;
            Duration::from_millis(apply + 2 * (link.delay_ms + link.jitter_ms))
        };
        let mut last_progress = Instant::now();
        let stream = dest.stream(tail);
        loop {
            let in_flight = lock(&stream.outbox).in_flight();
            if in_flight > 0 && last_progress.elapsed() > ack_timeout {
                return Err(format!("no acknowledgement within {ack_timeout:?}; resending from the cursor"));
            }
            tokio::select! {
                ack = acks.message() => {
                    let ack = ack.map_err(|e| e.to_string())?.ok_or("the destination closed the stream")?;
                    if !ack.ok {
                        return Err(format!("batch refused: {}", ack.error));
                    }
                    // Acknowledgements come in batch order; one for a later batch means the
                    // batch ahead of it was lost (the receiver cannot tell on a new stream).
                    let expected = lock(&stream.outbox).expected_ack();
                    if expected != Some(ack.last_seq) {
                        return Err(format!(
                            "acknowledgement for {} where {expected:?} was due: a batch was lost; resending from the cursor",
                            ack.last_seq
                        ));
                    }
                    let (cursor, oldest) = lock(&stream.outbox).acked_batches(ack.last_seq);
                    last_progress = Instant::now();
                    let now = self.cluster.node().now_ms();
                    let mut deltas = 0;
                    {
                        // What the destination holds now, for the other replicas' takeover tails
                        // (not when it set some states aside or dropped them: those are not
                        // there, and the replicas that hold them may try again).
                        let mut sent = lock(&stream.sent);
                        let mut acked = lock(&dest.acked);
                        while sent.front().is_some_and(|b| b.last_seq <= ack.last_seq) {
                            let b = sent.pop_front().expect("checked");
                            stream.round_trip_ms.store(now.saturating_sub(b.at_ms), Ordering::Relaxed);
                            deltas += b.digests.len();
                            if tail == Tail::Takeover {
                                dest.takeover_covered.fetch_add(b.covered, Ordering::Relaxed);
                                dest.takeover_shipped.fetch_add(b.digests.len() as u64, Ordering::Relaxed);
                            }
                            if ack.not_applied == 0 {
                                for (key, d) in b.digests {
                                    acked.record(&key, d);
                                }
                            }
                        }
                    }
                    // The delivery time of writes is the primary tail's batches with states in
                    // them (the takeover tail sends on purpose only after its grace).
                    if let (Some(oldest), true, Tail::Primary) = (oldest, deltas > 0, tail) {
                        let took = now.saturating_sub(oldest);
                        stream.last_delivery_ms.store(took, Ordering::Relaxed);
                        let metrics = self.cluster.node().metrics();
                        metrics.delivered(self.cluster.region(), &dest.region, Duration::from_millis(took));
                    }
                    let node = self.cluster.node().clone();
                    let name = tail.cursor_name(&dest.region);
                    crate::blocking::run(move || node.engine().set_cursor(&name, cursor))
                        .await?
                        .map_err(|e| e.to_string())?;
                }
                // Also wakes a full window up now and then, to notice a missing acknowledgement.
                _ = tokio::time::sleep(poll) => {
                    if in_flight == 0 {
                        last_progress = Instant::now();
                    }
                    if in_flight < WINDOW {
                        self.send_next(dest, tail, link).await?;
                    }
                }
            }
        }
    }

    /// Builds the next batch of one tail for `dest` and hands it to the link, if there is
    /// anything new.
    async fn send_next(
        &self,
        dest: &Arc<Dest>,
        tail: Tail,
        link: &mpsc::UnboundedSender<(u64, pb::ReplicationBatch)>,
    ) -> Result<(), String> {
        let stream = dest.stream(tail);
        let after = lock(&stream.outbox).next_seq();
        lock(&stream.outbox).committed(self.cluster.node().engine().committed_seq());
        if lock(&dest.link).params.cut {
            // Nothing gets through: only note how old the oldest change waiting is.
            let node = self.cluster.node().clone();
            let first = crate::blocking::run(move || node.engine().log_since(after, 1))
                .await?
                .map_err(|e| e.to_string())?;
            if let Some(entry) = first.first() {
                lock(&stream.outbox).waiting(entry.version.unix_millis());
            }
            return Ok(());
        }
        // Only keys the destination may hold (under the policy in force now) go there.
        let residency = self.cluster.residency().clone();
        let residency_version = residency.version();
        let region = dest.region.clone();
        let allowed = move |key: &[u8]| residency.allows(key, &region);
        let built = match tail {
            Tail::Primary => {
                let node = self.cluster.node().clone();
                let this_region = self.cluster.region().to_owned();
                let ships = self.ships_here();
                let keep = move |key: &[u8]| allowed(key) && ships(key);
                crate::blocking::run(move || {
                    let entries =
                        node.engine().log_since(after, MAX_BATCH_ENTRIES).map_err(|e| e.to_string())?;
                    build_batch(&node, &this_region, after, &entries, keep)
                })
                .await??
                .map(|(batch, digests)| (batch, digests, 0))
            }
            Tail::Takeover => self.takeover_batch(dest, after, allowed).await?,
        };
        let Some((mut batch, digests, covered)) = built else { return Ok(()) };
        batch.hlc = self.cluster.node().hlc_now();
        let oldest = batch.deltas.iter().map(|d| geokv_core::Stamp::new(d.stamp, 0).unix_millis()).min();
        let now = self.cluster.node().now_ms();
        let (jitter, loss) = {
            use rand010::RngExt;
            let mut rng = lock(&self.rng);
            (rng.random::<f64>(), rng.random::<f64>())
        };
        let plan = lock(&dest.link).plan(now, jitter, loss);
        if plan == Plan::Cut {
            if let Some(o) = oldest {
                lock(&stream.outbox).waiting(o);
            }
            return Ok(());
        }
        let (wire, raw) = batch.encode(3);
        lock(&stream.outbox).sent(
            batch.last_seq,
            oldest.unwrap_or(now),
            batch.deltas.len() as u64,
            raw as u64,
            wire.len() as u64,
        );
        lock(&stream.sent).push_back(Sent { last_seq: batch.last_seq, at_ms: now, digests, covered });
        if let Plan::DeliverAt(at) = plan {
            let msg = pb::ReplicationBatch {
                payload: wire,
                last_seq: batch.last_seq,
                residency_version,
                format: geokv_replication::BATCH_FORMAT,
            };
            link.send((at, msg)).map_err(|_| "the link stopped".to_string())?;
        }
        Ok(())
    }

    /// The shipper of a key now (the first of its home replicas that is up, by this node's
    /// view), as of this call's view.
    fn shipper_of(&self) -> impl Fn(&[u8]) -> Option<NodeId> + Send + 'static {
        let view = self.cluster.view();
        let (me, now) = (self.cluster.node().id(), self.cluster.node().now_ms());
        move |key: &[u8]| {
            shipping::shipper(&view.home(key), |n| n == me || view.health(n, now) == Health::Alive)
        }
    }

    /// Whether this node is the shipper of a key now.
    fn ships_here(&self) -> impl Fn(&[u8]) -> bool + Send + 'static {
        let (shipper_of, me) = (self.shipper_of(), self.cluster.node().id());
        move |key: &[u8]| shipper_of(key) == Some(me)
    }

    /// Whether the emulated link to `region` is cut.
    pub fn is_cut(&self, region: &str) -> bool {
        self.dests.get(region).is_some_and(|d| lock(&d.link).params.cut)
    }

    pub fn set_link(&self, region: &str, params: LinkParams) -> Result<(), String> {
        params.validate()?;
        let dest = self.dests.get(region).ok_or_else(|| {
            format!(
                "unknown destination region {region:?}; known: {:?}",
                self.dests.keys().collect::<Vec<_>>()
            )
        })?;
        lock(&dest.link).params = params;
        tracing::info!(region, ?params, "link settings changed");
        Ok(())
    }
}

/// The next batch from `entries` (the change log after position `after`), by the protocol's
/// rule (`geokv_protocol::xregion::next_batch`): the current state of every key changed by a
/// shipped entry (once per key) that `keep` takes, up to the size limits, with each state's
/// digest (in the order of the batch's deltas). `None` when there are no entries.
fn build_batch(
    node: &crate::Node,
    region: &str,
    after: u64,
    entries: &[geokv_storage::LogEntry],
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Option<(Batch, Digests)>, String> {
    let listed = entries.iter().map(|e| xregion::Entry { seq: e.seq, key: &e.key, ship: e.ship });
    type StateAndSize = ((Delta, u128), usize);
    let state_of = |key: &[u8]| -> Result<Option<StateAndSize>, String> {
        let Some(rec) = node.engine().get(key).map_err(|e| e.to_string())? else { return Ok(None) };
        let state = encode(&rec);
        let size = state.len();
        let d = digest(&state);
        Ok(Some(((Delta { stamp: rec.version().time, key: key.to_vec(), state }, d), size)))
    };
    let Some(xregion::NextBatch { last_seq, states }) =
        xregion::next_batch(listed, keep, state_of, MAX_BATCH_BYTES)?
    else {
        return Ok(None);
    };
    let (deltas, digests) = states.into_iter().map(|(key, (delta, d))| (delta, (key, d))).unzip();
    let batch = Batch {
        origin_region: region.to_owned(),
        origin_node: node.id(),
        after_seq: after,
        last_seq,
        hlc: 0,
        deltas,
    };
    Ok(Some((batch, digests)))
}

fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// A response stream (acknowledgements of `Replicate`, reports of `ApplyResidency`) fed by a
/// channel.
pub fn ack_stream<T: Send + 'static>(
    rx: mpsc::Receiver<Result<T, tonic::Status>>,
) -> impl Stream<Item = Result<T, tonic::Status>> + Send + 'static {
    receiver_stream(rx)
}
