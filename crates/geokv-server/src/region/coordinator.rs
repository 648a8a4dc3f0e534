//! The driver of the region's quorum protocol (`geokv-protocol`): takes a snapshot of the
//! key's replicas, lets the protocol's coordinators decide, and carries out their commands
//! over gRPC (peers) and RocksDB (this node), feeding the results back.
//!
//! A write's commands run in a task of their own, so sends still under way when the client
//! is answered go on (and leave hints if they fail). A read answers as soon as its
//! coordinator does; its repairs go on in the background.

use std::collections::VecDeque;
use std::sync::Arc;

use geokv_cluster::{Health, Level};
use geokv_core::{NodeId, Record};
use geokv_proto::v1 as pb;
use geokv_protocol::{
    route, Command, Failure, Forwarder, PeerError, ReadCoordinator, Replicas, ReplicateRound, Route,
    WriteCoordinator,
};
use geokv_storage::{codec, StorageError};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::Cluster;
use crate::api::status::peer_error;
use crate::blocking::TaskFailed;
use crate::node::LocalWrite;

pub use geokv_protocol::{Action, Applied};

/// Why a write, read or replication round this node drives failed (converted to a gRPC status
/// once, in `api::status`; a failure of this node's own part in a round becomes the
/// [`PeerError`] a peer's answer with that status would be).
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The protocol's answer: too few replicas, or a refusal (with its promise whether the
    /// write may have been stored).
    #[error("{0}")]
    Failed(Failure),
    /// The key is out of the node's limits.
    #[error("{0}")]
    InvalidKey(geokv_core::CoreError),
    /// A replica (or a coordinator) sent a state that does not decode.
    #[error("a replica sent a corrupt state: {0}")]
    Corrupt(#[from] codec::DecodeError),
    /// A coordinator this node forwarded a write to answered with something it cannot read.
    #[error("coordinator sent {0}")]
    BadAnswer(String),
    /// A driver's loop ended before its state machine answered (a bug).
    #[error("the {0} stopped without an answer")]
    NoAnswer(&'static str),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

pub fn encode(rec: &Record) -> Vec<u8> {
    codec::encode(rec, 1024, 1)
}

pub fn decode(bytes: &[u8]) -> Result<Record, CoordinatorError> {
    Ok(codec::decode(bytes)?)
}

/// What a command carried out in the background reports back to its coordinator.
enum Event {
    /// A replica's state (boxed: a record is far larger than the other events).
    Fetched(NodeId, Box<Result<Option<Record>, PeerError>>),
    Sent(NodeId, Result<(), PeerError>),
}

impl Cluster {
    /// The key's replicas as this node sees them now.
    pub(crate) fn replicas(&self, key: &[u8]) -> Replicas {
        let view = self.view();
        let now = self.node.now_ms();
        let healthy = |id| view.health(id, now) == Health::Alive;
        Replicas::new(self.me, view.owners(), view.n(), key, healthy, view.incoming(key))
    }

    /// Runs a client write: here if this node is a home replica of the key, else forwarded.
    pub async fn write(
        self: &Arc<Self>,
        key: Vec<u8>,
        action: Action,
        level: Level,
    ) -> Result<Applied, CoordinatorError> {
        let replicas = self.replicas(&key);
        match route(&action, &replicas) {
            Route::Here => self.coordinate_with(replicas, key, action, level).await,
            Route::Forward(candidates) => self.forward(key, action, level, replicas, candidates).await,
        }
    }

    /// Coordinates a write on this node (a home replica of the key).
    pub async fn coordinate(
        self: &Arc<Self>,
        key: Vec<u8>,
        action: Action,
        level: Level,
    ) -> Result<Applied, CoordinatorError> {
        let replicas = self.replicas(&key);
        self.coordinate_with(replicas, key, action, level).await
    }

    async fn coordinate_with(
        self: &Arc<Self>,
        replicas: Replicas,
        key: Vec<u8>,
        action: Action,
        level: Level,
    ) -> Result<Applied, CoordinatorError> {
        let (mut machine, mut cmds) = WriteCoordinator::start(replicas, level, self.node.hlc_now());
        if self.cfg().speculative_retry_ms == 0 {
            cmds.extend(machine.on_slow());
        }
        let (answer_tx, answer_rx) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(crate::trace::inherit(async move {
            this.drive_write(machine, cmds, key, action, answer_tx).await;
        }));
        answer_rx.await.map_err(|_| CoordinatorError::NoAnswer("write's coordinator"))?
    }

    /// Carries out a write coordinator's commands until it expects nothing more.
    async fn drive_write(
        self: Arc<Self>,
        mut machine: WriteCoordinator,
        cmds: Vec<Command<Applied>>,
        key: Vec<u8>,
        action: Action,
        answer: oneshot::Sender<Answer>,
    ) {
        let mut answer = Some(answer);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut queue: VecDeque<Command<Applied>> = cmds.into();
        // What the first read found: merged here in the commit that applies the write.
        let mut base = None;
        let slow = self.speculation();
        tokio::pin!(slow);
        loop {
            while let Some(cmd) = queue.pop_front() {
                match cmd {
                    Command::MergeLocal { state } => base = Some(state),
                    Command::Apply => match self.apply(&key, action.clone(), base.take()).await {
                        Ok(applied) => queue.extend(machine.on_applied(applied)),
                        // The store refused the write: nothing was stored.
                        Err(e) => return respond(&mut answer, Err(e)),
                    },
                    Command::Respond(r) => respond(&mut answer, r.map_err(CoordinatorError::Failed)),
                    // Durable before the write is answered.
                    Command::KeepHint { home, state } => self.keep_hint(home, &key, &state).await,
                    other => self.carry_out(other.map_answer(|_| ()), &key, &tx),
                }
            }
            if machine.done() {
                return;
            }
            let Some(event) = self.next_or_slow(&mut rx, slow.as_mut(), machine.may_speculate()).await else {
                queue.extend(machine.on_slow());
                continue;
            };
            let Some(event) = event else { return };
            queue.extend(match event {
                Event::Fetched(node, r) => machine.on_fetched(node, *r),
                Event::Sent(node, r) => machine.on_sent(node, r),
            });
        }
    }

    /// Applies a client write to this node's state merged with `base` (the state its first
    /// read found), stamped by this node's HLC.
    async fn apply(
        &self,
        key: &[u8],
        action: Action,
        base: Option<Record>,
    ) -> Result<Applied, CoordinatorError> {
        let (node, k) = (self.node.clone(), key.to_vec());
        if let Action::Op(op) = action {
            let (out, rec) = node.write_on(LocalWrite { key: k, base, op }).await?;
            return Ok(Applied::Written(out, rec));
        }
        if let Some(state) = base {
            node.merge_async(k.clone(), state, false).await?;
        }
        blocking(move || match action {
            Action::Op(_) => unreachable!("written above"),
            Action::Cas { expect, value, ttl_ms } => {
                let now = node.now_ms();
                let swapped = node.compare_and_swap(&k, expect, value, ttl_ms, now)?;
                Ok(match swapped {
                    (true, Some(rec)) => Applied::Written(geokv_core::OpOutcome::Put, rec),
                    (_, rec) => Applied::CasFailed(rec),
                })
            }
        })
        .await
    }

    /// Carries out a command whose result comes back as an [`Event`] (or not at all).
    fn carry_out(self: &Arc<Self>, cmd: Command<()>, key: &[u8], tx: &mpsc::UnboundedSender<Event>) {
        let (this, key, tx) = (self.clone(), key.to_vec(), tx.clone());
        let task = async move {
            match cmd {
                Command::Fetch { node, writer } => {
                    let _ = tx.send(Event::Fetched(node, Box::new(this.fetch(node, key, writer).await)));
                }
                Command::Repair { node, state } => this.repair(node, key, state).await,
                Command::Send { target, state, ship } => {
                    let _ =
                        tx.send(Event::Sent(target.node, this.send_state(target, &key, &state, ship).await));
                }
                Command::KeepHint { home, state } => this.keep_hint(home, &key, &state).await,
                Command::MergeLocal { .. } | Command::Apply | Command::Call { .. } | Command::Respond(_) => {
                    unreachable!("carried out by the coordinator's own loop")
                }
            }
        };
        tokio::spawn(crate::trace::inherit(task));
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
    ) -> Result<(), CoordinatorError> {
        let (mut round, cmds) = ReplicateRound::start(&self.replicas(key), level, rec.clone(), ship);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut queue: VecDeque<Command<()>> = cmds.into();
        let mut answer = None;
        loop {
            while let Some(cmd) = queue.pop_front() {
                match cmd {
                    Command::Respond(r) => answer = Some(r),
                    Command::KeepHint { home, state } => self.keep_hint(home, key, &state).await,
                    other => self.carry_out(other, key, &tx),
                }
            }
            if let Some(r) = answer.take() {
                if !round.done() {
                    // The rest of the round goes on without the caller.
                    let (this, key) = (self.clone(), key.to_vec());
                    tokio::spawn(crate::trace::inherit(async move {
                        while let Some(Event::Sent(node, r)) = rx.recv().await {
                            for cmd in round.on_sent(node, r) {
                                this.carry_out(cmd, &key, &tx);
                            }
                            if round.done() {
                                return;
                            }
                        }
                    }));
                }
                return r.map_err(CoordinatorError::Failed);
            }
            match rx.recv().await {
                Some(Event::Sent(node, r)) => queue.extend(round.on_sent(node, r)),
                Some(Event::Fetched(..)) => {}
                None => return Err(CoordinatorError::NoAnswer("replication round")),
            }
        }
    }

    /// Sends a replica state (`Merge`) to a peer. With injected faults it may go out a second
    /// time, on its own (merges are idempotent: the duplicate must change nothing).
    pub(crate) async fn send_merge(
        &self,
        client: &mut crate::peer::client::PeerClient,
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

    pub(super) async fn keep_hint(&self, home: NodeId, key: &[u8], rec: &Record) {
        let (node, key, rec) = (self.node.clone(), key.to_vec(), rec.clone());
        if let Err(e) = blocking(move || node.engine().put_hint(home, &key, &rec)).await {
            tracing::error!(home, error = %e, "could not keep a hint; anti-entropy must repair this replica");
        }
    }

    /// Hands a write to a home replica of the key, by the protocol's retry rules.
    async fn forward(
        self: &Arc<Self>,
        key: Vec<u8>,
        action: Action,
        level: Level,
        replicas: Replicas,
        candidates: Vec<NodeId>,
    ) -> Result<Applied, CoordinatorError> {
        let (mut machine, mut cmds) = Forwarder::start(&action, replicas.home(), candidates);
        let req = coordinate_request(&key, &action, level);
        loop {
            let mut next = Vec::new();
            for cmd in cmds {
                match cmd {
                    Command::Respond(r) => return r.map_err(CoordinatorError::Failed),
                    Command::Call { node } if node == self.me => {
                        let result = self.coordinate(key.clone(), action.clone(), level).await;
                        next.extend(machine.on_called(node, result.map_err(PeerError::from)));
                    }
                    Command::Call { node } => {
                        let result = self.call_coordinator(node, req.clone()).await;
                        next.extend(machine.on_called(node, result));
                    }
                    _ => unreachable!("a forward only calls and answers"),
                }
            }
            if next.is_empty() {
                return Err(CoordinatorError::NoAnswer("forward"));
            }
            cmds = next;
        }
    }

    async fn call_coordinator(&self, node: NodeId, req: pb::CoordinateRequest) -> Result<Applied, PeerError> {
        let Some(mut client) = self.client(node) else {
            return Err(PeerError::NeverSent(format!("node {node} has no known address")));
        };
        // The remote coordinator may itself wait up to a timeout for its replicas (it reads
        // the key first, then sends the new state: two rounds to its replicas).
        let deadline = 3 * self.peers.timeout();
        match tokio::time::timeout(deadline, client.coordinate(req)).await {
            Err(_) => Err(PeerError::TimedOut(format!("no answer within {} ms", deadline.as_millis()))),
            Ok(Err(s)) => Err(peer_error(s)),
            // The coordinator answered that it wrote: an answer we cannot read may hide a write.
            Ok(Ok(resp)) => decode_applied(resp.into_inner()).map_err(|e| {
                let message = format!("{e}; the write may or may not have been applied");
                PeerError::Answered(Failure {
                    kind: geokv_protocol::Kind::Internal,
                    maybe_applied: true,
                    message,
                    reason: Some("BAD_ANSWER".into()),
                })
            }),
        }
    }

    /// Reads a key from `level` of its healthy home replicas and merges their states.
    pub async fn read(
        self: &Arc<Self>,
        key: Vec<u8>,
        level: Level,
    ) -> Result<Option<Record>, CoordinatorError> {
        self.node.limits().check_key(&key).map_err(CoordinatorError::InvalidKey)?;
        let (mut machine, mut cmds) = ReadCoordinator::start(&self.replicas(&key), level, None);
        if self.cfg().speculative_retry_ms == 0 {
            cmds.extend(machine.on_slow());
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut queue: VecDeque<Command<Option<Record>>> = cmds.into();
        let slow = self.speculation();
        tokio::pin!(slow);
        loop {
            while let Some(cmd) = queue.pop_front() {
                match cmd {
                    Command::Respond(r) => return r.map_err(CoordinatorError::Failed),
                    other => self.carry_out(other.map_answer(|_| ()), &key, &tx),
                }
            }
            let Some(event) = self.next_or_slow(&mut rx, slow.as_mut(), machine.has_spare()).await else {
                queue.extend(machine.on_slow());
                continue;
            };
            match event {
                Some(Event::Fetched(node, r)) => {
                    let r = *r;
                    if let Err(PeerError::Answered(f)) = &r {
                        if f.kind == geokv_protocol::Kind::DataLoss {
                            tracing::warn!(node, key = %String::from_utf8_lossy(&key), "a replica holds a corrupt state; repairing it from the others");
                        }
                    }
                    queue.extend(machine.on_fetched(node, r));
                }
                Some(Event::Sent(..)) => {}
                None => return Err(CoordinatorError::NoAnswer("read")),
            }
        }
    }

    /// When a read's replicas count as slow and its spares are asked (`speculative_retry_ms`).
    pub(super) fn speculation(&self) -> tokio::time::Sleep {
        tokio::time::sleep(std::time::Duration::from_millis(self.cfg().speculative_retry_ms))
    }

    /// The next event of a coordinator's commands (`None` inside: every sender is gone), or
    /// `None` when `slow` fires first while the read `may_speculate`: the caller asks its
    /// spares (counted in `geokv_speculative_reads_total`).
    async fn next_or_slow(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
        slow: std::pin::Pin<&mut tokio::time::Sleep>,
        may_speculate: bool,
    ) -> Option<Option<Event>> {
        tokio::select! {
            event = rx.recv() => Some(event),
            () = slow, if may_speculate => {
                self.node.metrics().speculative_reads.inc();
                None
            }
        }
    }

    /// Read repair: brings one replica up to the merged state.
    pub(super) async fn repair(&self, node: NodeId, key: Vec<u8>, merged: Record) {
        let changed = if node == self.me {
            self.node.merge_async(key, merged, false).await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "read repair could not merge the state here");
                false
            })
        } else {
            let Some(mut client) = self.client(node) else { return };
            let req = pb::MergeRequest { key, state: encode(&merged), hint_for: None, ship: false };
            let sent = tokio::time::timeout(self.peers.timeout(), self.send_merge(&mut client, req)).await;
            matches!(sent, Ok(Ok(resp)) if resp.get_ref().changed)
        };
        if changed {
            self.stats.read_repairs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Runs storage work on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, CoordinatorError> {
    Ok(crate::blocking::run(f).await??)
}

/// What a write's coordinator answers its caller.
type Answer = Result<Applied, CoordinatorError>;

fn respond(answer: &mut Option<oneshot::Sender<Answer>>, r: Answer) {
    if let Some(tx) = answer.take() {
        let _ = tx.send(r);
    }
}

/// The newest format of a forwarded operation this node reads (`CoordinateRequest.format`):
/// `geokv_core::Op` in postcard (tests/golden.rs keeps its bytes). 0, from before formats were
/// numbered, is 1; 2 adds the operations after the first six (IncrementOnce, Expire); 3 adds
/// AppendOnce.
pub const COORDINATE_FORMAT: u32 = 3;

/// The format a forwarded `op` needs: 1 for the first six operations, which every release
/// reads, so that a node of the previous release refuses only what it cannot read, and says
/// to upgrade it rather than that the operation does not decode.
pub fn format_of(op: &geokv_core::Op) -> u32 {
    use geokv_core::Op;
    match op {
        Op::Put { .. }
        | Op::Append { .. }
        | Op::Delete
        | Op::Increment { .. }
        | Op::SetAdd { .. }
        | Op::SetRemove { .. } => 1,
        Op::IncrementOnce { .. } | Op::Expire { .. } => 2,
        Op::AppendOnce { .. } => 3,
    }
}

fn coordinate_request(key: &[u8], action: &Action, level: Level) -> pb::CoordinateRequest {
    let mut req = pb::CoordinateRequest {
        key: key.to_vec(),
        consistency: crate::api::convert::level_to_pb(level) as i32,
        format: match action {
            Action::Op(op) => format_of(op),
            Action::Cas { .. } => 1,
        },
        ..Default::default()
    };
    match action.clone() {
        Action::Op(op) => req.op = postcard::to_allocvec(&op).expect("ops serialize"),
        Action::Cas { expect, value, ttl_ms } => {
            req.cas = true;
            req.op = postcard::to_allocvec(&geokv_core::Op::Put { value, ttl_ms }).expect("ops serialize");
            match expect {
                geokv_core::Expect::Absent => req.expect_absent = true,
                geokv_core::Expect::Version(v) => (req.expected_hlc, req.expected_node) = (v.time, v.node),
            }
        }
    }
    req
}

fn decode_applied(resp: pb::CoordinateResponse) -> Result<Applied, CoordinatorError> {
    let state = if resp.state.is_empty() { None } else { Some(decode(&resp.state)?) };
    if resp.outcome.is_empty() {
        return Ok(Applied::CasFailed(state));
    }
    let outcome: geokv_core::OpOutcome = postcard::from_bytes(&resp.outcome)
        .map_err(|e| CoordinatorError::BadAnswer(format!("an undecodable outcome: {e}")))?;
    let rec = state.ok_or_else(|| CoordinatorError::BadAnswer("no state for a write".into()))?;
    Ok(Applied::Written(outcome, rec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use geokv_core::Op;

    #[test]
    fn a_forward_names_the_oldest_format_that_reads_its_operation() {
        let first_six = [
            Op::Put { value: vec![1], ttl_ms: None },
            Op::Append { value: vec![1], ttl_ms: None },
            Op::Delete,
            Op::Increment { delta: 1, ttl_ms: None },
            Op::SetAdd { members: vec![vec![1]], ttl_ms: None },
            Op::SetRemove { members: vec![vec![1]] },
        ];
        assert!(first_six.iter().all(|op| format_of(op) == 1), "a node of the previous release reads these");
        for newer in [Op::IncrementOnce { delta: 1, ttl_ms: None, id: 7 }, Op::Expire { ttl_ms: None }] {
            assert_eq!(format_of(&newer), 2, "{newer:?}");
            let req = coordinate_request(b"k", &Action::Op(newer), Level::Quorum);
            assert!(req.format <= COORDINATE_FORMAT);
        }
        let append_once = Op::AppendOnce { value: vec![1], ttl_ms: None, id: 7 };
        assert_eq!(format_of(&append_once), 3);
        let req = coordinate_request(b"k", &Action::Op(append_once), Level::Quorum);
        assert_eq!(req.format, COORDINATE_FORMAT);
    }
}
