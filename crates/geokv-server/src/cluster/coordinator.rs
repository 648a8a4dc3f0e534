//! Quorum writes and reads over the key's replicas.
//!
//! Writes: a home replica of the key first reads the key at the request's level and merges
//! what it finds (so a replica that missed writes does not build on a stale state), applies
//! the operation to its own state (so its HLC and its counter/set identity stamp it), then sends the resulting full state to the other
//! targets (healthy home replicas and stand-ins holding hints for the unhealthy ones) and
//! answers once W of them, itself included, have it durably. A node that is not a home replica
//! forwards the write to one that is. A target that fails during the write gets a durable hint
//! on the coordinator, handed off when it answers again.
//!
//! Reads: ask the healthy home replicas, merge the first R states (never "pick the newest":
//! counters and sets need the merge), answer, and send the merge to replicas that were behind
//! (read repair).

use std::sync::Arc;

use geokv_cluster::{Health, Level, Outcome, ReadRound, WriteRound};
use geokv_core::{NodeId, Op, OpOutcome, Record};
use geokv_proto::v1 as pb;
use geokv_storage::codec;
use geokv_topology::Target;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::{Cluster, QUORUM_FAILED};
use crate::node::Expect;
use crate::status::to_status;

/// A write a coordinator applies.
#[derive(Clone, Debug)]
pub enum Action {
    Op(Op),
    Cas { expect: Expect, value: Vec<u8>, ttl_ms: Option<u64> },
}

/// What the coordinator did.
#[derive(Clone, Debug)]
pub enum Applied {
    Written(OpOutcome, Record),
    /// A compare-and-swap whose condition did not hold; the state it found (None if absent).
    CasFailed(Option<Record>),
}

/// Whether a failed call certainly never reached the peer: no connection could be made.
/// (Any other transport failure may have come after the peer ran the request.)
pub fn never_sent(s: &Status) -> bool {
    use std::io::ErrorKind;
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::HostUnreachable
            ) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// Whether running a write again gives the same result: a put, delete or set change does; an
/// increment or append would count twice, and a compare-and-swap would find its own write.
fn repeatable(action: &Action) -> bool {
    matches!(action, Action::Op(Op::Put { .. } | Op::Delete | Op::SetAdd { .. } | Op::SetRemove { .. }))
}

/// Whether a peer's error means it could not be reached (as opposed to an answer it gave).
pub fn is_transport(s: &Status) -> bool {
    let from_connection = std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>());
    from_connection
        || matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
            && !s.message().starts_with(QUORUM_FAILED)
}

pub fn encode(rec: &Record) -> Vec<u8> {
    codec::encode(rec, 1024, 1)
}

pub fn decode(bytes: &[u8]) -> Result<Record, Status> {
    codec::decode(bytes).map_err(|e| Status::data_loss(format!("a replica sent a corrupt state: {e}")))
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::One => "ONE",
        Level::Quorum => "QUORUM",
        Level::All => "ALL",
    }
}

impl Cluster {
    /// Runs a client write: here if this node is a home replica of the key, else forwarded.
    pub async fn write(
        self: &Arc<Self>,
        key: Vec<u8>,
        action: Action,
        level: Level,
    ) -> Result<Applied, Status> {
        let home = self.view().home(&key);
        // A compare-and-swap runs on the first healthy home replica, so concurrent CAS calls
        // through different nodes meet on one coordinator while it is up. It is still not
        // linearizable (no consensus): a coordinator change during a failure can let two CAS
        // calls both succeed.
        let here = match action {
            Action::Cas { .. } => home.iter().find(|&&h| self.healthy(h)) == Some(&self.me),
            Action::Op(_) => home.contains(&self.me),
        };
        if here {
            return self.coordinate(key, action, level).await;
        }
        self.forward(key, action, level, &home).await
    }

    /// Applies a write at this replica and replicates the new state to a write quorum.
    pub async fn coordinate(
        self: &Arc<Self>,
        key: Vec<u8>,
        action: Action,
        level: Level,
    ) -> Result<Applied, Status> {
        // Every operation depends on the key's current state: its type (a wrong-type write is
        // refused), its value (Append, CAS), its members (SetRemove), its observed counter
        // (Delete), and the outcome reported. This replica may have missed writes that a
        // quorum acknowledged (it was unreachable, or wiped), so it first reads the key at the
        // request's level and merges what it finds: with R + W > N every write acknowledged
        // at QUORUM is seen by a write at QUORUM, and the new state carries it.
        let writer = Some(self.node.hlc_now());
        let current = self.read_as(key.clone(), level, writer).await.map_err(|s| {
            if s.message().starts_with(QUORUM_FAILED) {
                Status::unavailable(format!(
                    "{QUORUM_FAILED}: a {} write first reads the key from the replicas a {} read needs, and that failed ({}); nothing was written",
                    level_name(level),
                    level_name(level),
                    s.message().trim_start_matches(QUORUM_FAILED).trim_start_matches(": ")
                ))
            } else {
                s
            }
        })?;
        if let Some(merged) = current {
            let (node, k) = (self.node.clone(), key.clone());
            tokio::task::spawn_blocking(move || node.engine().merge(&k, &merged))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(to_status)?;
        }
        let node = self.node.clone();
        let k = key.clone();
        let applied = tokio::task::spawn_blocking(move || match action {
            Action::Op(op) => node.write(&k, &op).map(|(out, rec)| Applied::Written(out, rec)),
            Action::Cas { expect, value, ttl_ms } => {
                let now = node.now_ms();
                node.compare_and_swap(&k, expect, value, ttl_ms, now).map(|(ok, rec)| match (ok, rec) {
                    (true, Some(rec)) => Applied::Written(OpOutcome::Put, rec),
                    (_, rec) => Applied::CasFailed(rec),
                })
            }
        })
        .await
        .map_err(|e| Status::internal(format!("write task failed: {e}")))?
        .map_err(to_status)?;
        if let Applied::Written(_, rec) = &applied {
            self.replicate(&key, rec, level, true).await?;
        }
        Ok(applied)
    }

    /// Sends `rec` (already stored here) to the key's other targets; returns once `level` of
    /// the N replicas have it. Sends still under way then go on in the background.
    /// `ship` marks a client write of this region (see `MergeRequest.ship`).
    pub(crate) async fn replicate(
        self: &Arc<Self>,
        key: &[u8],
        rec: &Record,
        level: Level,
        ship: bool,
    ) -> Result<(), Status> {
        let view = self.view();
        let now = self.node.now_ms();
        let healthy = |id| id == self.me || view.health(id, now) == Health::Alive;
        let n = view.n();
        let placement = view.owners().placement(key, n, healthy);
        let needed = level.required(n);
        let mut round = WriteRound::new(placement.targets.clone(), needed);
        if placement.home.contains(&self.me) {
            round.ack(self.me);
        }
        let mut others: Vec<Target> =
            placement.targets.iter().copied().filter(|t| t.node != self.me).collect();
        // Nodes taking the key over (joining, or replacing a leaving node) get it too, outside
        // the quorum; a hint is kept for those that are down.
        for node in view.incoming(key).into_iter().filter(|&id| id != self.me) {
            if healthy(node) {
                others.push(Target { node, hint_for: None });
            } else {
                self.keep_hint(node, key, rec).await;
            }
        }
        let state = encode(rec);
        // Unhealthy home replicas that no stand-in covers (the region has no spare node): the
        // coordinator keeps their hints itself.
        for &home in placement.home.iter().filter(|&&h| !healthy(h)) {
            if !placement.targets.iter().any(|t| t.hint_for == Some(home)) {
                self.keep_hint(home, key, rec).await;
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        for target in others {
            let (this, tx, key, state, rec) =
                (self.clone(), tx.clone(), key.to_vec(), state.clone(), rec.clone());
            tokio::spawn(crate::trace::inherit(async move {
                let ok = this.send_state(target, &key, state, &rec, ship).await;
                let _ = tx.send((target.node, ok));
            }));
        }
        drop(tx);
        while round.outcome() == Outcome::Pending {
            match rx.recv().await {
                Some((node, true)) => round.ack(node),
                Some((node, false)) => round.fail(node),
                None => break,
            };
        }
        match round.outcome() {
            Outcome::Reached => Ok(()),
            _ => Err(Status::unavailable(format!(
                "{QUORUM_FAILED}: a {} write needs {needed} of {} replicas, {} acknowledged ({:?}); the write is stored on those and not rolled back; unreachable replicas get it by hinted handoff",
                level_name(level),
                n,
                round.acked().len(),
                round.acked()
            ))),
        }
    }

    /// Sends a state to one target; on failure keeps a durable hint for a home replica.
    async fn send_state(&self, target: Target, key: &[u8], state: Vec<u8>, rec: &Record, ship: bool) -> bool {
        let req = pb::MergeRequest { key: key.to_vec(), state, hint_for: target.hint_for, ship };
        // Backpressure: a replica with too many sends in flight gets a hint instead.
        let slot = self.slot(target.node).await;
        let result = match (slot.is_some(), self.client(target.node)) {
            (false, _) => Err(Status::unavailable("too many sends in flight to this replica")),
            (true, None) => Err(Status::internal("unknown peer")),
            (true, Some(mut c)) => {
                match tokio::time::timeout(self.peers.timeout(), self.send_merge(&mut c, req)).await {
                    Ok(r) => r.map(|_| ()),
                    Err(_) => Err(Status::deadline_exceeded("merge timed out")),
                }
            }
        };
        drop(slot);
        match result {
            Ok(()) => true,
            Err(s) if is_transport(&s) => {
                // Unreachable: keep the state for it, to hand off when it answers again.
                let home = target.hint_for.unwrap_or(target.node);
                self.keep_hint(home, key, rec).await;
                false
            }
            Err(s) => {
                // The replica answered and refused (its state would exceed its limits, its copy
                // is corrupt, ...): a hint would be refused the same way.
                tracing::warn!(node = target.node, error = %s, "replica refused a state");
                false
            }
        }
    }

    /// Sends a replica state (`Merge`) to a peer. With injected faults it may go out a second
    /// time, on its own (merges are idempotent: the duplicate must change nothing).
    pub(crate) async fn send_merge(
        &self,
        client: &mut super::peers::PeerClient,
        req: pb::MergeRequest,
    ) -> Result<tonic::Response<pb::MergeResponse>, Status> {
        if self.node.faults().duplicates() {
            let (mut again, copy, deadline) = (client.clone(), req.clone(), self.peers.timeout());
            tokio::spawn(crate::trace::inherit(async move {
                let _ = tokio::time::timeout(deadline, again.merge(copy)).await;
            }));
        }
        client.merge(req).await
    }

    async fn keep_hint(&self, home: NodeId, key: &[u8], rec: &Record) {
        let (node, key, rec) = (self.node.clone(), key.to_vec(), rec.clone());
        let kept = tokio::task::spawn_blocking(move || node.engine().put_hint(home, &key, &rec)).await;
        if !matches!(kept, Ok(Ok(()))) {
            tracing::error!(home, "could not keep a hint; anti-entropy must repair this replica");
        }
    }

    /// Hands a write to a home replica of the key, trying them in ring order.
    async fn forward(
        &self,
        key: Vec<u8>,
        action: Action,
        level: Level,
        home: &[NodeId],
    ) -> Result<Applied, Status> {
        let retry_safe = repeatable(&action);
        let mut req =
            pb::CoordinateRequest { key, consistency: level_to_pb(level) as i32, ..Default::default() };
        match action {
            Action::Op(op) => req.op = postcard::to_allocvec(&op).expect("ops serialize"),
            Action::Cas { expect, value, ttl_ms } => {
                req.cas = true;
                req.op = postcard::to_allocvec(&Op::Put { value, ttl_ms }).expect("ops serialize");
                match expect {
                    Expect::Absent => req.expect_absent = true,
                    Expect::Version(v) => (req.expected_hlc, req.expected_node) = (v.time, v.node),
                }
            }
        }
        let mut last_error = None;
        for &target in home.iter().filter(|&&h| self.healthy(h)) {
            let Some(mut client) = self.client(target) else { continue };
            // The remote coordinator may itself wait up to a timeout for its replicas
            // (it reads the key first, then sends the new state: two rounds to its replicas.)
            let call = tokio::time::timeout(3 * self.peers.timeout(), client.coordinate(req.clone()));
            let result = call.await.unwrap_or_else(|_| {
                Err(Status::unavailable(format!("{QUORUM_FAILED}: node {target} did not answer in time; the write may or may not have been applied")))
            });
            match result {
                Ok(resp) => return decode_applied(resp.into_inner()),
                // The coordinator ran the write and refused it, or could not reach a quorum:
                // the answer is final (retrying elsewhere could apply it twice).
                Err(s) if !is_transport(&s) => return Err(s),
                // The call may have failed after the coordinator ran it (its answer lost):
                // only a write that may run twice moves on to the next home replica.
                Err(s) if !retry_safe && !never_sent(&s) => {
                    return Err(Status::unavailable(format!(
                        "{QUORUM_FAILED}: the call to node {target} failed ({}); it may have applied the write, which is not retried elsewhere because running it twice would apply it twice; the write may or may not have been applied",
                        s.message()
                    )))
                }
                Err(s) => {
                    last_error = Some(s);
                }
            }
        }
        Err(Status::unavailable(format!(
            "{QUORUM_FAILED}: no home replica of the key ({home:?}) could coordinate the write{}",
            last_error.map(|e| format!(" (last error: {})", e.message())).unwrap_or_default()
        )))
    }

    /// Reads a key from `level` of its healthy home replicas and merges their states.
    pub async fn read(self: &Arc<Self>, key: Vec<u8>, level: Level) -> Result<Option<Record>, Status> {
        self.read_as(key, level, None).await
    }

    /// [`Cluster::read`]; `writer`: this node's HLC time when the read comes before a write it
    /// coordinates (replicas refuse it when this node's clock runs too far ahead of theirs).
    async fn read_as(
        self: &Arc<Self>,
        key: Vec<u8>,
        level: Level,
        writer: Option<u64>,
    ) -> Result<Option<Record>, Status> {
        self.node.limits().check_key(&key).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let view = self.view();
        let (home, n) = (view.home(&key), view.n());
        let needed = level.required(n);
        let candidates: Vec<NodeId> = home.iter().copied().filter(|&h| self.healthy(h)).collect();
        if candidates.len() < needed {
            return Err(Status::unavailable(format!(
                "{QUORUM_FAILED}: a {} read needs {needed} of {} replicas, {} are reachable",
                level_name(level),
                n,
                candidates.len()
            )));
        }
        let mut round = ReadRound::new(candidates.clone(), needed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for node in candidates {
            let (this, tx, key) = (self.clone(), tx.clone(), key.clone());
            tokio::spawn(crate::trace::inherit(async move {
                let _ = tx.send((node, this.fetch(node, key, writer).await));
            }));
        }
        drop(tx);
        let mut refused: Option<Status> = None;
        // Replicas whose stored state failed its checksum: not counted toward the quorum (their
        // state is unknown), repaired with the merged state once the others answered.
        let mut corrupt = Vec::new();
        while round.outcome() == Outcome::Pending {
            match rx.recv().await {
                Some((node, Ok(state))) => round.answer(node, state),
                Some((node, Err(s))) => {
                    if s.code() == tonic::Code::DataLoss {
                        tracing::warn!(node, key = %String::from_utf8_lossy(&key), "a replica holds a corrupt state; repairing it from the others");
                        corrupt.push(node);
                    }
                    if !is_transport(&s) {
                        refused = Some(s);
                    }
                    round.fail(node)
                }
                None => break,
            };
        }
        if round.outcome() != Outcome::Reached {
            // A replica's own answer (a corrupt state, ...) says more than "too few answered".
            if let Some(s) = refused {
                return Err(s);
            }
            return Err(Status::unavailable(format!(
                "{QUORUM_FAILED}: a {} read needs {needed} of {} replicas and too few answered",
                level_name(level),
                n
            )));
        }
        let merged = round.merged();
        if let Some(m) = &merged {
            for stale in round.stale(m).into_iter().chain(corrupt) {
                let this = self.clone();
                let (key, m) = (key.clone(), m.clone());
                tokio::spawn(crate::trace::inherit(async move { this.repair(stale, key, m).await }));
            }
        }
        Ok(merged)
    }

    /// One replica's state of a key.
    async fn fetch(&self, node: NodeId, key: Vec<u8>, writer: Option<u64>) -> Result<Option<Record>, Status> {
        if node == self.me {
            let n = self.node.clone();
            return tokio::task::spawn_blocking(move || n.engine().get(&key))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(to_status);
        }
        let mut client = self.client(node).ok_or_else(|| Status::internal("unknown peer"))?;
        let resp = tokio::time::timeout(
            self.peers.timeout(),
            client.fetch(pb::FetchRequest { key, writer_hlc: writer.unwrap_or(0) }),
        )
        .await
        .map_err(|_| Status::deadline_exceeded("fetch timed out"))?;
        match resp {
            Ok(r) if r.get_ref().state.is_empty() => Ok(None),
            Ok(r) => {
                let rec = decode(&r.into_inner().state)?;
                // A replica whose clock ran ahead may hold stamps from the future: such a state
                // is neither served nor merged anywhere (it would win every LWW race).
                let v = rec.version();
                self.node.observe_remote_time(v.time, v.node).map_err(|e| {
                    Status::failed_precondition(format!(
                        "node {node} holds a state of the key stamped beyond max_clock_drift_ms ahead of this node's clock ({e}); its answer is not used"
                    ))
                })?;
                Ok(Some(rec))
            }
            Err(s) => Err(s),
        }
    }

    /// Read repair: brings one replica up to the merged state.
    async fn repair(&self, node: NodeId, key: Vec<u8>, merged: Record) {
        if node == self.me {
            let n = self.node.clone();
            if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || n.engine().merge(&key, &merged)).await {
                self.stats.read_repairs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return;
        }
        let Some(mut client) = self.client(node) else { return };
        let req = pb::MergeRequest { key, state: encode(&merged), hint_for: None, ship: false };
        if let Ok(Ok(resp)) =
            tokio::time::timeout(self.peers.timeout(), self.send_merge(&mut client, req)).await
        {
            if resp.into_inner().changed {
                self.stats.read_repairs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

pub fn level_to_pb(level: Level) -> pb::Consistency {
    match level {
        Level::One => pb::Consistency::One,
        Level::Quorum => pb::Consistency::Quorum,
        Level::All => pb::Consistency::All,
    }
}

fn decode_applied(resp: pb::CoordinateResponse) -> Result<Applied, Status> {
    let state = if resp.state.is_empty() { None } else { Some(decode(&resp.state)?) };
    if resp.outcome.is_empty() {
        return Ok(Applied::CasFailed(state));
    }
    let outcome: OpOutcome = postcard::from_bytes(&resp.outcome)
        .map_err(|e| Status::internal(format!("coordinator sent an undecodable outcome: {e}")))?;
    let rec = state.ok_or_else(|| Status::internal("coordinator sent no state for a write"))?;
    Ok(Applied::Written(outcome, rec))
}
