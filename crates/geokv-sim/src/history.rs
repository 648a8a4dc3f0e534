//! A history of client operations against a cluster: what each client asked, where, when it
//! was invoked and completed, and how it ended. Both the simulation and the real-process fault
//! tests record one; [`crate::check`] judges it.

use std::collections::BTreeSet;
use std::sync::Mutex;

use geokv_core::Stamp;

/// What a client asked. Each key of a history holds one type, so the checker knows how to read
/// it from the operations on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set a register to a value unique within the history.
    Put { value: Vec<u8> },
    /// Add to a counter.
    Increment { delta: i64 },
    /// Add one member to a set.
    SetAdd { member: Vec<u8> },
    /// Read the key.
    Read,
}

impl Action {
    pub fn is_write(&self) -> bool {
        !matches!(self, Action::Read)
    }
}

/// What a read returned, or what a replica holds at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Absent,
    Register(Vec<u8>),
    Counter(i64),
    Set(BTreeSet<Vec<u8>>),
}

impl Observed {
    pub fn from_view(view: Option<geokv_core::View>) -> Observed {
        match view {
            None => Observed::Absent,
            Some(geokv_core::View::Register(v)) => Observed::Register(v),
            Some(geokv_core::View::Counter(c)) => Observed::Counter(c),
            Some(geokv_core::View::Set(m)) => Observed::Set(m.into_iter().collect()),
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged. `version` is the record version the answer carried (absent for a read of
    /// an absent key); `observed` is what a read returned.
    Ok { version: Option<Stamp>, observed: Option<Observed> },
    /// Refused before anything was written (a validation error): certainly not applied.
    Failed(String),
    /// Timed out, unavailable, connection lost, quorum missed: it may or may not have been
    /// applied (a leaderless write that missed its quorum is kept by the replicas it reached).
    Unknown(String),
}

/// One completed operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub client: u32,
    /// Region of the node the client talked to.
    pub region: String,
    pub key: Vec<u8>,
    /// Asked at QUORUM (read-after-write is checked between QUORUM operations only).
    pub quorum: bool,
    pub action: Action,
    /// Milliseconds on one clock shared by every client of the history (the test's clock, not
    /// a node's).
    pub invoked_ms: u64,
    pub completed_ms: u64,
    pub outcome: Outcome,
}

impl Event {
    pub fn ok_version(&self) -> Option<Stamp> {
        match &self.outcome {
            Outcome::Ok { version, .. } => *version,
            _ => None,
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { .. })
    }

    /// Whether the write may have taken effect (acknowledged or unknown).
    pub fn may_have_applied(&self) -> bool {
        !matches!(self.outcome, Outcome::Failed(_))
    }
}

/// Events recorded by concurrent clients.
#[derive(Debug, Default)]
pub struct History {
    events: Mutex<Vec<Event>>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn record(&self, event: Event) {
        self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(event);
    }

    /// The events so far, in order of completion.
    pub fn events(&self) -> Vec<Event> {
        let mut events = self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        events.sort_by_key(|e| (e.completed_ms, e.invoked_ms));
        events
    }

    pub fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
