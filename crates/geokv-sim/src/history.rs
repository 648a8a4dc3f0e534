//! A history of client operations against a cluster: what each client asked, where, when it
//! was invoked and completed, and how it ended. Both the simulation and the real-process fault
//! tests record one; [`crate::check`] judges it.

use std::collections::BTreeSet;
use std::sync::Mutex;

use geokv_core::Stamp;

/// What a client asked. Each key of a history holds one type (its first write's family), so
/// the checker knows how to read it from the operations on it. Values, chunks and members are
/// unique within a history where a rule needs to tell writes apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set a register.
    Put { value: Vec<u8> },
    /// Set a register with a TTL (keys written only this way must end absent).
    Expiring { value: Vec<u8>, ttl_ms: u64 },
    /// Delete the key.
    Delete,
    /// Compare-and-swap a register: `expect` the version it must be at (`None`: absent).
    Cas { value: Vec<u8>, expect: Option<Stamp> },
    /// Append a chunk (ending in `;`) to a register.
    Append { chunk: Vec<u8> },
    /// Append a chunk with a request id: one attempt of it (a client sends the same again, to
    /// another node, when an attempt's outcome is unknown; the chunk is appended once).
    AppendOnce { chunk: Vec<u8>, id: u128 },
    /// Add to a counter.
    Increment { delta: i64 },
    /// Add to a counter with a request id: one attempt of it (a client sends the same again,
    /// to another node, when an attempt's outcome is unknown; all its attempts count once).
    IncrementOnce { delta: i64, id: u128 },
    /// Add one member to a set.
    SetAdd { member: Vec<u8> },
    /// Remove one member from a set.
    SetRemove { member: Vec<u8> },
    /// Change the key's TTL (`None`: take it away), keeping its value (an Expire).
    Expire { ttl_ms: Option<u64> },
    /// Read the key.
    Read,
    /// The key as a scan answered it: a visible key with its version and value, or (version
    /// `None`, observed `Absent`) a key the scan's page covered and did not return.
    Scanned,
}

/// The type of key an operation writes (`None`: it writes any type, or reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Register,
    Expiring,
    Log,
    Counter,
    Set,
}

impl Action {
    pub fn is_write(&self) -> bool {
        !self.is_read()
    }

    /// A read of the key: a Get, or a scan's answer for it.
    pub fn is_read(&self) -> bool {
        matches!(self, Action::Read | Action::Scanned)
    }

    pub fn family(&self) -> Option<Family> {
        match self {
            Action::Put { .. } | Action::Cas { .. } => Some(Family::Register),
            Action::Expiring { .. } => Some(Family::Expiring),
            Action::Append { .. } | Action::AppendOnce { .. } => Some(Family::Log),
            Action::Increment { .. } | Action::IncrementOnce { .. } => Some(Family::Counter),
            Action::SetAdd { .. } | Action::SetRemove { .. } => Some(Family::Set),
            Action::Delete | Action::Expire { .. } | Action::Read | Action::Scanned => None,
        }
    }

    /// A write that may end the key at a deadline: a put with a TTL, or an Expire with one.
    pub fn sets_deadline(&self) -> bool {
        matches!(self, Action::Expiring { .. } | Action::Expire { ttl_ms: Some(_) })
    }

    /// An increment, with a request id or without.
    pub fn is_increment(&self) -> bool {
        matches!(self, Action::Increment { .. } | Action::IncrementOnce { .. })
    }

    /// The chunk this write appends, with a request id or without.
    pub fn chunk(&self) -> Option<&[u8]> {
        match self {
            Action::Append { chunk } | Action::AppendOnce { chunk, .. } => Some(chunk),
            _ => None,
        }
    }

    /// The register value this write sets, if it sets one.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            Action::Put { value } | Action::Expiring { value, .. } | Action::Cas { value, .. } => Some(value),
            _ => None,
        }
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

    /// Whether the write may have taken effect (acknowledged or unknown). A compare-and-swap
    /// acknowledged without a version found its condition false and wrote nothing.
    pub fn may_have_applied(&self) -> bool {
        match (&self.action, &self.outcome) {
            (_, Outcome::Failed(_)) => false,
            (Action::Cas { .. }, Outcome::Ok { version, .. }) => version.is_some(),
            _ => true,
        }
    }

    /// Acknowledged as written (a swap whose condition held, any other acknowledged write).
    pub fn acked_write(&self) -> bool {
        self.action.is_write() && self.ok_version().is_some()
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
