//! The simulated node as a driver of `geokv-protocol`: each client request, forwarded write
//! and state from another region is a job holding one of the protocol's coordinators; this
//! file carries out the commands it emits over the simulated network and the node's
//! in-memory store, and feeds the answers back. No protocol decision is made here: where a
//! planted [`Bug`] changes behaviour, it does so by lying to the protocol (a smaller level, a
//! dropped hint, a failure reported as never sent), as a faulty driver would.

use std::collections::VecDeque;

use geokv_cluster::Level;
use geokv_core::{apply_as, cas_holds, Crdt, Limits, NodeId, OpOutcome, Record};
use geokv_protocol::{
    Action, Applied, Command, Failure, ForwardCommand, Forwarder, Kind, PeerError, ReadCoordinator, Replicas,
    ReplicateRound, WriteCoordinator,
};
use geokv_storage::ReplicaStore;

use super::node::{Ctx, Key, Msg, Node, Timer, REQUEST_TIMEOUT_MS, SPECULATE_MS};
use super::{Addr, Bug};
use crate::history::Observed;

/// One of the protocol's coordinators.
pub(crate) enum Machine {
    Write(WriteCoordinator),
    Read(ReadCoordinator),
    Forward(Forwarder),
    /// Boxed: a round holds a whole record.
    Replicate(Box<ReplicateRound>),
}

/// What a job's coordinator answers.
pub(crate) enum Out {
    Applied(Applied),
    Read(Option<Record>),
    Replicated,
}

/// An event for a coordinator.
pub(crate) enum Input {
    Fetched(NodeId, Result<Option<Record>, PeerError>),
    Sent(NodeId, Result<(), PeerError>),
    Called(NodeId, Result<Applied, PeerError>),
    Timeout,
    /// The replicas a read asked are slow: ask the spare ones.
    Slow,
}

/// Who waits for a job's answer.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reply {
    Client {
        to: Addr,
        id: u64,
    },
    /// A node that forwarded the write here (`Msg::Coordinated`).
    Node {
        to: Addr,
        id: u64,
    },
    /// A state of a batch from another region.
    Batch(u64),
    /// Item `index` of a client batch.
    Item {
        batch: u64,
        index: usize,
    },
}

pub(crate) struct Job {
    machine: Machine,
    key: Key,
    action: Option<Action>,
    level: Level,
    reply: Reply,
}

impl Machine {
    fn feed(&mut self, input: Input) -> Vec<Command<Out>> {
        fn out<T>(cmds: Vec<Command<T>>, f: fn(T) -> Out) -> Vec<Command<Out>> {
            cmds.into_iter().map(|c| c.map_answer(f)).collect()
        }
        match (self, input) {
            (Machine::Write(w), Input::Fetched(n, r)) => out(w.on_fetched(n, r), Out::Applied),
            (Machine::Write(w), Input::Sent(n, r)) => out(w.on_sent(n, r), Out::Applied),
            (Machine::Write(w), Input::Timeout) => out(w.on_timeout(), Out::Applied),
            (Machine::Read(r), Input::Fetched(n, a)) => out(r.on_fetched(n, a), Out::Read),
            (Machine::Read(r), Input::Timeout) => out(r.on_timeout(), Out::Read),
            (Machine::Write(w), Input::Slow) => out(w.on_slow(), Out::Applied),
            (Machine::Read(r), Input::Slow) => out(r.on_slow(), Out::Read),
            (Machine::Forward(f), Input::Called(n, r)) => out(f.on_called(n, r), Out::Applied),
            (Machine::Forward(f), Input::Timeout) => match f.calling() {
                Some(n) => out(f.on_called(n, Err(PeerError::TimedOut("no answer".into()))), Out::Applied),
                None => Vec::new(),
            },
            (Machine::Replicate(r), Input::Sent(n, a)) => out(r.on_sent(n, a), |()| Out::Replicated),
            (Machine::Replicate(r), Input::Timeout) => out(r.on_timeout(), |()| Out::Replicated),
            _ => Vec::new(),
        }
    }

    fn done(&self) -> bool {
        match self {
            Machine::Write(w) => w.done(),
            Machine::Read(r) => r.done(),
            Machine::Forward(f) => f.done(),
            Machine::Replicate(r) => r.done(),
        }
    }
}

impl Node {
    fn replicas(&self, key: &[u8], now: u64) -> Replicas {
        let incoming = self.view.incoming(key);
        Replicas::new(self.id, self.view.owners(), self.n, key, |id| self.healthy(id, now), incoming)
    }

    /// A client write or a write forwarded here: coordinated here or forwarded on.
    pub(crate) fn start_write(
        &mut self,
        reply: Reply,
        key: Key,
        action: Action,
        level: Level,
        ctx: &mut Ctx,
    ) {
        let replicas = self.replicas(&key, ctx.now);
        let (machine, cmds, deadline) = match (geokv_protocol::route(&action, &replicas), reply) {
            // A node coordinates what it is forwarded (it was chosen as a home replica).
            (geokv_protocol::Route::Here, _) | (_, Reply::Node { .. }) => {
                // Planted bug: the write is acknowledged once the coordinator has it.
                let level = if ctx.bug == Some(Bug::AckWithoutQuorum) { Level::One } else { level };
                let writer = self.stamp_time(ctx.now);
                let (m, cmds) = WriteCoordinator::start(replicas, level, writer);
                (Machine::Write(m), cmds, 2 * REQUEST_TIMEOUT_MS)
            }
            (geokv_protocol::Route::Forward(candidates), _) => {
                let (m, cmds): (Forwarder, Vec<ForwardCommand>) =
                    Forwarder::start(&action, replicas.home(), candidates);
                (Machine::Forward(m), cmds, 3 * REQUEST_TIMEOUT_MS)
            }
        };
        let cmds = cmds.into_iter().map(|c| c.map_answer(Out::Applied)).collect();
        let job = Job { machine, key, action: Some(action), level, reply };
        self.launch(job, cmds, deadline, ctx);
    }

    pub(crate) fn start_read(&mut self, reply: Reply, key: Key, level: Level, ctx: &mut Ctx) {
        let (machine, cmds) = ReadCoordinator::start(&self.replicas(&key, ctx.now), level, None);
        let cmds = cmds.into_iter().map(|c| c.map_answer(Out::Read)).collect();
        let job = Job { machine: Machine::Read(machine), key, action: None, level, reply };
        self.launch(job, cmds, REQUEST_TIMEOUT_MS, ctx);
    }

    /// Sends a state stored here to the key's other replicas (a state from another region).
    pub(crate) fn start_replicate(&mut self, batch: u64, key: Key, state: Record, ctx: &mut Ctx) {
        let replicas = self.replicas(&key, ctx.now);
        let (round, cmds) = ReplicateRound::start(&replicas, Level::Quorum, state, false);
        let cmds = cmds.into_iter().map(|c| c.map_answer(|()| Out::Replicated)).collect();
        let job = Job {
            machine: Machine::Replicate(Box::new(round)),
            key,
            action: None,
            level: Level::Quorum,
            reply: Reply::Batch(batch),
        };
        self.launch(job, cmds, REQUEST_TIMEOUT_MS + self.disk_delay_ms, ctx);
    }

    fn launch(&mut self, job: Job, cmds: Vec<Command<Out>>, deadline: u64, ctx: &mut Ctx) {
        let id = self.next();
        ctx.timers.push((ctx.now + deadline, Timer::Deadline(id)));
        if matches!(job.machine, Machine::Read(_) | Machine::Write(_)) {
            ctx.timers.push((ctx.now + SPECULATE_MS, Timer::Slow(id)));
        }
        self.drive(id, job, cmds, ctx);
    }

    /// Feeds an event to job `id`, if it is still under way.
    pub(crate) fn feed(&mut self, id: u64, input: Input, ctx: &mut Ctx) {
        if let Some(mut job) = self.jobs.remove(&id) {
            let cmds = job.machine.feed(input);
            self.drive(id, job, cmds, ctx);
        }
    }

    /// Carries out a job's commands (feeding back what completes at once) and keeps the job
    /// while it expects more.
    fn drive(&mut self, id: u64, mut job: Job, cmds: Vec<Command<Out>>, ctx: &mut Ctx) {
        let mut queue: VecDeque<Command<Out>> = cmds.into();
        while let Some(cmd) = queue.pop_front() {
            match cmd {
                Command::Fetch { node, .. } if node == self.id => {
                    let state =
                        self.vote(ctx.bug).map(|()| self.state(&job.key)).map_err(PeerError::Answered);
                    queue.extend(job.machine.feed(Input::Fetched(node, state)));
                }
                // Planted bug: the write's first read takes every other replica to have nothing.
                Command::Fetch { node, .. }
                    if ctx.bug == Some(Bug::SkipReadFirst) && matches!(job.machine, Machine::Write(_)) =>
                {
                    queue.extend(job.machine.feed(Input::Fetched(node, Ok(None))));
                }
                Command::Fetch { node, writer } => {
                    let call = self.call(id, node);
                    ctx.send(
                        Addr::Node(node),
                        Msg::Fetch { id: call, key: job.key.clone(), writer, vote: true },
                    );
                }
                Command::Repair { node, state } if node == self.id => {
                    let _ = self.merge_local(&job.key, &state, false);
                }
                Command::Repair { node, state } => {
                    let msg =
                        Msg::Merge { id: 0, key: job.key.clone(), rec: state, hint_for: None, ship: false };
                    ctx.send(Addr::Node(node), msg);
                }
                Command::MergeLocal { state } => {
                    if let Err(f) = self.merge_local(&job.key, &state, false) {
                        return self.answer(job.reply, Err(f), ctx);
                    }
                }
                Command::Apply => {
                    let action = job.action.clone().expect("a write job holds its action");
                    match self.apply_local(&job.key, &action, ctx.now, ctx.bug) {
                        Ok(applied) => queue.extend(job.machine.feed_applied(applied)),
                        // Refused by the data model: nothing was stored.
                        Err(f) => return self.answer(job.reply, Err(f), ctx),
                    }
                }
                Command::Send { target, state, ship } => {
                    let call = self.call(id, target.node);
                    let msg = Msg::Merge {
                        id: call,
                        key: job.key.clone(),
                        rec: state,
                        hint_for: target.hint_for,
                        ship,
                    };
                    ctx.send(Addr::Node(target.node), msg);
                }
                Command::KeepHint { home, state } => {
                    // Planted bug: no hint is kept.
                    if ctx.bug != Some(Bug::NoRepair) {
                        let _ = self.keep_hint(home, &job.key, &state);
                    }
                }
                Command::Call { node } => {
                    let call = self.call(id, node);
                    let action = job.action.clone().expect("a forward holds its action");
                    let msg = Msg::Coordinate { id: call, key: job.key.clone(), action, level: job.level };
                    ctx.send(Addr::Node(node), msg);
                }
                Command::Respond(r) => self.answer(job.reply, r, ctx),
            }
        }
        if !job.machine.done() {
            self.jobs.insert(id, job);
        }
    }

    /// A message id for a call of job `job` to `node`, to route the answer back.
    fn call(&mut self, job: u64, node: NodeId) -> u64 {
        let call = self.next();
        self.calls.insert(call, (job, node));
        call
    }

    /// Routes a peer's answer to the job that called it.
    pub(crate) fn answered(&mut self, call: u64, result: impl FnOnce(NodeId) -> Input, ctx: &mut Ctx) {
        if let Some((job, node)) = self.calls.remove(&call) {
            self.feed(job, result(node), ctx);
        }
    }

    /// Applies a client write to this node's state, stamped by this node's clock.
    fn apply_local(
        &mut self,
        key: &[u8],
        action: &Action,
        now: u64,
        bug: Option<Bug>,
    ) -> Result<Applied, Failure> {
        let now_ms = self.physical_ms(now);
        let current = self.state(key);
        let refused = |e: geokv_core::CoreError| Failure::refused_by(&e, format!("refused: {e}"));
        let stamp = self.stamp(now, current.as_ref().map(Record::version).unwrap_or_default());
        let actor = self.actor();
        let limits = Limits::default();
        let applied = match action {
            // Planted bug: a removal observes nothing.
            Action::Op(op @ geokv_core::Op::SetRemove { .. }) if bug == Some(Bug::RemoveWithoutContext) => {
                let a = apply_as(None, op, stamp, actor, now_ms, &limits).map_err(refused)?;
                Applied::Written(a.outcome, a.record)
            }
            Action::Op(op) => match apply_as(current.as_ref(), op, stamp, actor, now_ms, &limits) {
                Ok(a) => Applied::Written(a.outcome, a.record),
                // Planted bug: a write of the wrong type starts the key over.
                Err(geokv_core::CoreError::WrongType { .. }) if bug == Some(Bug::WrongTypeOverwrites) => {
                    let a = apply_as(None, op, stamp, actor, now_ms, &limits).map_err(refused)?;
                    Applied::Written(a.outcome, a.record)
                }
                Err(e) => return Err(refused(e)),
            },
            Action::Cas { expect, value, ttl_ms } => {
                let (holds, visible) = cas_holds(current.as_ref(), *expect, now_ms).map_err(refused)?;
                let visible = visible.cloned();
                let op = geokv_core::Op::Put { value: value.clone(), ttl_ms: *ttl_ms };
                let a = apply_as(current.as_ref(), &op, stamp, actor, now_ms, &limits).map_err(refused)?;
                if !holds {
                    // Planted bug: the failed swap writes anyway.
                    if bug == Some(Bug::SwapIgnoresCondition) {
                        let _ = self.merge_local(key, &a.record, true);
                    }
                    return Ok(Applied::CasFailed(visible));
                }
                Applied::Written(OpOutcome::Put, a.record)
            }
        };
        if let Applied::Written(out, rec) = &applied {
            if out.changes_nothing() {
                // Stored nowhere (the server's `Node::write` stores nothing either).
                return Ok(applied);
            }
            // Stored as the server's engine stores a client write: held to the size rule
            // (`geokv_storage::size`), refused whole if it grows the key past the limit.
            let new = rec.clone();
            self.store.update(key, |_| Ok(geokv_storage::Update { record: Some(new), out: () })).map_err(
                |e| match e {
                    geokv_storage::StorageError::RecordTooLarge { .. } => {
                        Failure::refused(Kind::FailedPrecondition, e.to_string())
                    }
                    other => stored(other),
                },
            )?;
            self.hlc = self.hlc.max(rec.version().time);
        }
        Ok(applied)
    }

    fn answer(&mut self, reply: Reply, r: Result<Out, Failure>, ctx: &mut Ctx) {
        let now_ms = self.physical_ms(ctx.now);
        let client_answer = |r: Result<Out, Failure>| {
            r.map(|out| match out {
                Out::Applied(Applied::Written(out, _)) if out.changes_nothing() => (None, None),
                Out::Applied(Applied::Written(_, rec)) => (Some(rec.version()), None),
                Out::Applied(Applied::CasFailed(_)) | Out::Replicated => (None, None),
                Out::Read(merged) => {
                    let version = merged.as_ref().map(Record::version);
                    (version, Some(Observed::from_view(merged.and_then(|m| m.view(now_ms)))))
                }
            })
        };
        match reply {
            Reply::Client { to, id } => {
                ctx.sends.push((to, Msg::Resp { id, answer: client_answer(r) }, self.disk_delay_ms));
            }
            Reply::Item { batch, index } => self.item_done(batch, index, client_answer(r), ctx),
            Reply::Node { to, id } => {
                let result = r.map(|out| match out {
                    Out::Applied(a) => a,
                    _ => unreachable!("a forwarded job is a write"),
                });
                ctx.sends.push((to, Msg::Coordinated { id, result }, self.disk_delay_ms));
            }
            Reply::Batch(b) => self.batch_delta_done(b, r.map(|_| ()), ctx),
        }
    }
}

impl Machine {
    fn feed_applied(&mut self, applied: Applied) -> Vec<Command<Out>> {
        match self {
            Machine::Write(w) => {
                w.on_applied(applied).into_iter().map(|c| c.map_answer(Out::Applied)).collect()
            }
            _ => Vec::new(),
        }
    }
}

impl Node {
    /// Merges a state into this node's store (logging the change; `ship`: for the
    /// cross-region replicator). Refused if the node's residency policy keeps the key out of
    /// its region (the store's admission check).
    pub(crate) fn merge_local(&mut self, key: &[u8], rec: &Record, ship: bool) -> Result<(), Failure> {
        if self.drop_oversized_merges {
            let mut merged = self.state(key).unwrap_or_default();
            merged.merge(rec);
            if geokv_storage::codec::serialize(&merged).len() > self.store.max_record_bytes() {
                return Ok(());
            }
        }
        self.store.merge_as(key, rec, ship).map_err(stored)?;
        self.hlc = self.hlc.max(rec.version().time);
        Ok(())
    }

    pub(crate) fn keep_hint(&mut self, home: NodeId, key: &[u8], rec: &Record) -> Result<(), Failure> {
        self.store.put_hint(home, key, rec).map_err(stored)
    }
}

/// A store's refusal: the residency admission check (the in-memory store fails no other way
/// on these paths).
pub(crate) fn stored(e: geokv_storage::StorageError) -> Failure {
    match e {
        geokv_storage::StorageError::NotAdmitted { .. } => {
            Failure::refused(Kind::FailedPrecondition, e.to_string())
        }
        other => panic!("the in-memory store does not fail: {other}"),
    }
}
