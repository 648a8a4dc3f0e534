//! A batch of client writes coordinated per replica: each write keeps its own coordinator
//! (`geokv_protocol::WriteCoordinator`, the same state machine a single write and the
//! simulator run), but their commands are carried out together: this node's first reads in
//! one pass, a peer's first reads in one `FetchMany`, the writes applied here in one commit
//! (one WAL sync), a peer's new states in one `MergeMany`. A batch of 100 keys costs a few
//! calls to each replica instead of hundreds of tasks, channels and queue items.
//!
//! The items of one key run one after another, in the client's order (`geokv_protocol::batch`):
//! round k holds the k-th item of every key, and starts once round k - 1 has answered. Keys
//! this node is not a home replica of are forwarded one write at a time, as single writes are.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use geokv_cluster::Level;
use geokv_core::{NodeId, Op, OpOutcome, Record};
use geokv_proto::v1 as pb;
use geokv_protocol::{route, Action, Applied, Command, PeerError, Route, WriteCoordinator};
use tokio::sync::oneshot;

use super::coordinator::CoordinatorError;
use super::replica_io::merge_request;
use super::Cluster;
use crate::node::{LocalWrite, NodeError};

/// One write's answer.
pub type Answer = Result<Applied, CoordinatorError>;

/// What a command carried out for the batch reports back to one write's coordinator.
enum Event {
    Fetched(NodeId, Result<Option<Record>, PeerError>),
    Sent(NodeId, Result<(), PeerError>),
    Applied(Result<(OpOutcome, Record), NodeError>),
}

/// Events of the batch's writes, by index.
type Events = Vec<(usize, Event)>;

/// One write of a round.
struct Write {
    key: Vec<u8>,
    op: Op,
    machine: WriteCoordinator,
    /// What the first read found, merged here in the commit that applies the write.
    base: Option<Record>,
    /// Still waiting for its first read (neither applied nor answered).
    reading: bool,
    answer: Option<Answer>,
    /// Answered by the driver (the store refused it): its coordinator expects nothing more.
    over: bool,
}

impl Write {
    fn done(&self) -> bool {
        self.over || self.machine.done()
    }
}

impl Cluster {
    /// Runs client writes, each key's operations in order; answers per key, in the same order.
    pub async fn write_keys(
        self: &Arc<Self>,
        keys: Vec<(Vec<u8>, Vec<Op>)>,
        level: Level,
    ) -> Vec<Vec<Answer>> {
        let mut answers: Vec<Vec<Answer>> = keys.iter().map(|_| Vec::new()).collect();
        let (mut here, mut away) = (Vec::new(), Vec::new());
        for (i, (key, ops)) in keys.into_iter().enumerate() {
            let first = Action::Op(ops[0].clone());
            match route(&first, &self.replicas(&key)) {
                Route::Here => here.push((i, key, VecDeque::from(ops))),
                Route::Forward(_) => away.push((i, key, ops)),
            }
        }
        // Keys homed elsewhere: forwarded one write at a time, as single writes are.
        let forwarded = futures::future::join_all(away.into_iter().map(|(i, key, ops)| async move {
            let mut done = Vec::with_capacity(ops.len());
            for op in ops {
                done.push(self.write(key.clone(), Action::Op(op), level).await);
            }
            (i, done)
        }));
        let coordinated = async {
            let mut out = Vec::new();
            loop {
                let round: Vec<(usize, Vec<u8>, Op)> = here
                    .iter_mut()
                    .filter_map(|(i, key, ops)| ops.pop_front().map(|op| (*i, key.clone(), op)))
                    .collect();
                if round.is_empty() {
                    return out;
                }
                let slots: Vec<usize> = round.iter().map(|(i, ..)| *i).collect();
                let writes = round.into_iter().map(|(_, key, op)| (key, op)).collect();
                out.extend(slots.into_iter().zip(self.coordinate_round(writes, level).await));
            }
        };
        let (forwarded, coordinated) = futures::future::join(forwarded, coordinated).await;
        for (i, done) in forwarded {
            answers[i] = done;
        }
        for (i, answer) in coordinated {
            answers[i].push(answer);
        }
        answers
    }

    /// Coordinates writes to distinct keys this node is a home replica of; answers once every
    /// one has. Sends still under way then go on in the background (and leave hints if they
    /// fail), as a single write's do.
    async fn coordinate_round(self: &Arc<Self>, writes: Vec<(Vec<u8>, Op)>, level: Level) -> Vec<Answer> {
        let speculate_now = self.cfg().speculative_retry_ms == 0;
        let mut queue: VecDeque<(usize, Command<Applied>)> = VecDeque::new();
        let writes: Vec<Write> = writes
            .into_iter()
            .enumerate()
            .map(|(i, (key, op))| {
                let (mut machine, mut cmds) =
                    WriteCoordinator::start(self.replicas(&key), level, self.node.hlc_now());
                if speculate_now {
                    cmds.extend(machine.on_slow());
                }
                queue.extend(cmds.into_iter().map(|c| (i, c)));
                Write { key, op, machine, base: None, reading: true, answer: None, over: false }
            })
            .collect();
        let (n, (answer_tx, answer_rx)) = (writes.len(), oneshot::channel());
        let this = self.clone();
        tokio::spawn(crate::trace::inherit(async move {
            this.drive_round(writes, queue, answer_tx).await;
        }));
        answer_rx.await.unwrap_or_else(|_| {
            (0..n).map(|_| Err(CoordinatorError::NoAnswer("batch's coordinator"))).collect()
        })
    }

    /// Carries out the round's commands, grouped by replica, until every write expects nothing
    /// more; answers `answer` once every write has answered.
    async fn drive_round(
        self: Arc<Self>,
        mut writes: Vec<Write>,
        mut queue: VecDeque<(usize, Command<Applied>)>,
        answer: oneshot::Sender<Vec<Answer>>,
    ) {
        let mut answer = Some(answer);
        let mut pending: FuturesUnordered<BoxFuture<'static, Events>> = FuturesUnordered::new();
        // Writes whose first read is done, waiting for the others' to be applied together.
        let mut ready = Vec::new();
        let slow = self.speculation();
        tokio::pin!(slow);
        loop {
            self.carry_out_all(&mut writes, &mut queue, &mut ready, &mut pending).await;
            if writes.iter().all(|w| w.over || w.answer.is_some()) {
                if let Some(tx) = answer.take() {
                    let answers = writes.iter_mut().map(|w| w.answer.take().expect("answered")).collect();
                    let _ = tx.send(answers);
                }
            }
            if writes.iter().all(Write::done) {
                return;
            }
            let may_speculate = writes.iter().any(|w| !w.over && w.machine.may_speculate());
            let events = tokio::select! {
                events = pending.next() => match events {
                    Some(events) => events,
                    None => {
                        // Nothing under way and still not done: a coordinator waits for
                        // nothing this driver can give it (a bug); answer what is left.
                        for w in writes.iter_mut().filter(|w| w.answer.is_none()) {
                            w.answer = Some(Err(CoordinatorError::NoAnswer("batch's coordinator")));
                        }
                        if let Some(tx) = answer.take() {
                            let _ = tx.send(writes.into_iter().filter_map(|w| w.answer).collect());
                        }
                        return;
                    }
                },
                () = slow.as_mut(), if may_speculate => {
                    self.node.metrics().speculative_reads.inc();
                    for (i, w) in writes.iter_mut().enumerate().filter(|(_, w)| !w.over) {
                        queue.extend(w.machine.on_slow().into_iter().map(|c| (i, c)));
                    }
                    continue;
                }
            };
            for (i, event) in events {
                let w = &mut writes[i];
                if w.over {
                    continue;
                }
                let cmds = match event {
                    Event::Fetched(node, r) => w.machine.on_fetched(node, r),
                    Event::Sent(node, r) => w.machine.on_sent(node, r),
                    Event::Applied(Ok((out, rec))) => w.machine.on_applied(Applied::Written(out, rec)),
                    // The store refused the write: nothing was stored.
                    Event::Applied(Err(e)) => {
                        w.answer.get_or_insert(Err(e.into()));
                        w.over = true;
                        Vec::new()
                    }
                };
                queue.extend(cmds.into_iter().map(|c| (i, c)));
            }
        }
    }

    /// Takes every queued command and starts it, those of one kind and replica together. The
    /// writes are applied here once no write of the round is still reading (the round answers
    /// when its last write does, so waiting costs it nothing), in one commit, and their states
    /// then go to each replica together.
    async fn carry_out_all(
        self: &Arc<Self>,
        writes: &mut [Write],
        queue: &mut VecDeque<(usize, Command<Applied>)>,
        ready: &mut Vec<usize>,
        pending: &mut FuturesUnordered<BoxFuture<'static, Events>>,
    ) {
        let mut fetches: BTreeMap<NodeId, Vec<(usize, Option<u64>)>> = BTreeMap::new();
        let mut sends: BTreeMap<NodeId, Vec<(usize, pb::MergeRequest)>> = BTreeMap::new();
        while let Some((i, cmd)) = queue.pop_front() {
            let w = &mut writes[i];
            match cmd {
                Command::Fetch { node, writer } => fetches.entry(node).or_default().push((i, writer)),
                Command::MergeLocal { state } => w.base = Some(state),
                Command::Apply => {
                    w.reading = false;
                    ready.push(i);
                }
                Command::Send { target, state, ship } => {
                    let req = merge_request(&target, w.key.clone(), &state, ship);
                    sends.entry(target.node).or_default().push((i, req))
                }
                // Durable before the write is answered.
                Command::KeepHint { home, state } => self.keep_hint(home, &w.key, &state).await,
                Command::Repair { node, state } => {
                    let (this, key) = (self.clone(), w.key.clone());
                    tokio::spawn(crate::trace::inherit(async move { this.repair(node, key, state).await }));
                }
                Command::Respond(r) => {
                    w.reading = false;
                    w.answer.get_or_insert(r.map_err(CoordinatorError::Failed));
                }
                Command::Call { .. } => unreachable!("a home replica's write calls no coordinator"),
            }
        }
        if !ready.is_empty() && !writes.iter().any(|w| w.reading && !w.over) {
            let applies = std::mem::take(ready);
            let local: Vec<LocalWrite> = applies
                .iter()
                .map(|&i| {
                    let w = &mut writes[i];
                    LocalWrite { key: w.key.clone(), base: w.base.take(), op: w.op.clone() }
                })
                .collect();
            let answers = self.node.write_all(local);
            pending.push(
                async move {
                    let results = futures::future::join_all(answers).await;
                    applies.into_iter().zip(results).map(|(i, r)| (i, Event::Applied(r))).collect()
                }
                .boxed(),
            );
        }
        for (node, items) in fetches {
            let keys = items.into_iter().map(|(i, writer)| (i, writes[i].key.clone(), writer)).collect();
            pending.push(self.clone().fetch_all(node, keys).boxed());
        }
        for (node, items) in sends {
            pending.push(self.clone().send_all(node, items).boxed());
        }
    }

    /// The states of keys on one replica (`Cluster::fetch_many`), as the writes' events.
    async fn fetch_all(self: Arc<Self>, node: NodeId, keys: Vec<(usize, Vec<u8>, Option<u64>)>) -> Events {
        let (slots, keys): (Vec<usize>, Vec<_>) = keys.into_iter().map(|(i, key, w)| (i, (key, w))).unzip();
        let states = self.fetch_many(node, keys).await;
        slots.into_iter().zip(states).map(|(i, r)| (i, Event::Fetched(node, r))).collect()
    }

    /// New states of keys to one replica (`Cluster::send_many`), as the writes' events.
    async fn send_all(self: Arc<Self>, node: NodeId, items: Vec<(usize, pb::MergeRequest)>) -> Events {
        let (slots, reqs): (Vec<usize>, Vec<_>) = items.into_iter().unzip();
        let sent = self.send_many(node, reqs).await;
        slots.into_iter().zip(sent).map(|(i, r)| (i, Event::Sent(node, r))).collect()
    }
}
