//! What simulated nodes and clients say to each other ([`Msg`]), the timers a node sets
//! ([`Timer`]), and what a handler produces ([`Ctx`]).

use geokv_cluster::{Level, MemberInfo};
use geokv_core::{NodeId, Record, Stamp};
use geokv_protocol::shipping::Tail;
use geokv_protocol::{Action, Applied, Failure};
use rand::rngs::SmallRng;

use super::node::Key;
use super::xregion::BatchMsg;
use super::{Addr, Bug, Layout};
use crate::history::Observed;

/// What a client asks a node to do.
#[derive(Clone, Debug)]
pub enum Request {
    Write(Action),
    Read,
    /// A scan of the keys starting with the request's key: one page of at most `limit` keys.
    Scan {
        limit: usize,
    },
    /// A batch of writes (the request's key is unused).
    BatchWrite(Vec<(Key, Action)>),
    /// A batch of reads (the request's key is unused).
    BatchGet(Vec<Key>),
}

/// The answer: the version and what was read, or why the request failed.
pub type Answer = Result<(Option<Stamp>, Option<Observed>), Failure>;

#[derive(Clone, Debug)]
pub enum Msg {
    Req {
        id: u64,
        key: Key,
        req: Request,
        level: Level,
        /// Set when another region forwarded the request here (residency): the client to
        /// answer.
        client: Option<Addr>,
    },
    Resp {
        id: u64,
        answer: Answer,
    },
    /// A write forwarded to a home replica of its key.
    Coordinate {
        id: u64,
        key: Key,
        action: Action,
        level: Level,
    },
    Coordinated {
        id: u64,
        result: Result<Applied, Failure>,
    },
    /// The connection of call `id` failed: the request or its answer was lost on the way (the
    /// caller cannot tell which, so the request may have run).
    CallFailed {
        id: u64,
    },
    Merge {
        id: u64,
        key: Key,
        rec: Record,
        hint_for: Option<NodeId>,
        ship: bool,
    },
    MergeAck {
        id: u64,
        result: Result<(), Failure>,
    },
    Fetch {
        id: u64,
        key: Key,
        writer: Option<u64>,
        /// A vote in a quorum read (a recovering replica refuses it), not an anti-entropy fetch.
        vote: bool,
    },
    Fetched {
        id: u64,
        result: Result<Option<Record>, Failure>,
    },
    /// A scan's page of this node's states: `want` states starting with `prefix`.
    ScanPage {
        id: u64,
        prefix: Key,
        want: usize,
    },
    ScanPageIs {
        id: u64,
        result: Result<geokv_protocol::NodePage, Failure>,
    },
    ScanResp {
        id: u64,
        answer: super::scan::ScanReply,
    },
    /// A batch's answers, one per item in the request's order.
    BatchResp {
        id: u64,
        answers: Vec<Answer>,
    },
    /// Which residency policy do you hold?
    PolicyAsk,
    PolicyIs {
        version: u64,
        text: String,
    },
    /// States of keys the sender's region may no longer hold, for the home replicas of this
    /// region (see [`super::enforce`]), sent under policy `version`.
    Handover {
        id: u64,
        version: u64,
        deltas: Vec<(Key, Record)>,
    },
    HandoverAck {
        id: u64,
        ok: bool,
    },
    /// A probe, carrying the sender's member info (gossip).
    Ping(MemberInfo),
    /// The answer: the responder's info, and the version of the prober's info it holds.
    Pong {
        info: MemberInfo,
        sees: u64,
    },
    /// A joining node asks an owner for the states of the keys it will replicate, from `start`.
    StreamPage {
        id: u64,
        start: Key,
        joiner: NodeId,
    },
    StreamPageIs {
        id: u64,
        items: Vec<(Key, Record)>,
        next: Option<Key>,
    },
    Batch(BatchMsg),
    BatchAck {
        tail: Tail,
        /// The stream of the batch acknowledged.
        stream: u64,
        last_seq: u64,
        ok: bool,
    },
    /// A takeover tail asks a key's shipper whether `region` acknowledged these states from it
    /// (by digest).
    ShippedAsk {
        id: u64,
        region: usize,
        items: Vec<(Key, Vec<u8>)>,
    },
    ShippedIs {
        id: u64,
        covered: Vec<bool>,
    },
    /// Anti-entropy exchange `xid`: the Merkle summary of the keys the two share, please.
    AeSummary {
        xid: u64,
    },
    AeSummaryIs {
        xid: u64,
        leaves: Vec<u64>,
    },
    /// The digests of the shared keys in these buckets, please.
    AeDigests {
        xid: u64,
        leaves: Vec<u32>,
    },
    AeDigestsAre {
        xid: u64,
        leaves: Vec<u32>,
        digests: Vec<(Key, u64)>,
    },
}

impl Msg {
    /// Whether handling the message twice is harmless (merges of states, reads, pings).
    pub fn idempotent(&self) -> bool {
        !matches!(
            self,
            Msg::Req { .. }
                | Msg::Resp { .. }
                | Msg::ScanResp { .. }
                | Msg::BatchResp { .. }
                | Msg::Coordinate { .. }
                | Msg::Coordinated { .. }
                | Msg::CallFailed { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    Ping,
    Handoff,
    Ship,
    AntiEntropy,
    /// An anti-entropy exchange with the next node of another region.
    RemoteAntiEntropy,
    /// The sweeper: purges tombstones and expired keys past their grace period.
    Sweep,
    /// The next step of a join, leave or cleanup (see [`super::moves`]).
    Move,
    /// A residency policy comparison, and the enforcement's next step (see
    /// [`super::enforce`]).
    Residency,
    /// A request this node coordinates or forwarded has waited its deadline.
    Deadline(u64),
    /// A read (or a write's first read) this node coordinates has waited
    /// [`super::node::SPECULATE_MS`]: its spare replicas are asked.
    Slow(u64),
}

/// What a handler produced: messages (with extra delay, e.g. a slow disk) and timers.
pub struct Ctx<'a> {
    pub now: u64,
    pub rng: &'a mut SmallRng,
    pub layout: &'a Layout,
    pub bug: Option<Bug>,
    pub sends: Vec<(Addr, Msg, u64)>,
    pub timers: Vec<(u64, Timer)>,
}

impl Ctx<'_> {
    pub(crate) fn send(&mut self, to: Addr, msg: Msg) {
        self.sends.push((to, msg, 0));
    }
}
