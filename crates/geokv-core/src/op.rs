//! Client operations and how each turns the current state of a key into a new one.
//!
//! [`apply`] is a pure function: the caller supplies the current record, an HLC stamp newer
//! than it, and the wall-clock time for TTLs. The resulting record is a full CRDT state that
//! any replica can merge.

use serde::{Deserialize, Serialize};

use crate::once::RequestId;
use crate::record::assign;
use crate::{CoreError, Dot, Kind, Limits, Record, Stamp};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set a register. Without a TTL, a previous TTL is removed (like Redis SET).
    Put { value: Vec<u8>, ttl_ms: Option<u64> },
    /// Append bytes to a register (creating it if absent). Keeps the TTL unless one is given.
    Append { value: Vec<u8>, ttl_ms: Option<u64> },
    /// Delete the key (a tombstone that wins over older concurrent writes).
    Delete,
    /// Add `delta` (may be negative) to a counter. Keeps the TTL unless one is given.
    Increment { delta: i64, ttl_ms: Option<u64> },
    /// Add members to a set. Keeps the TTL unless one is given.
    SetAdd { members: Vec<Vec<u8>>, ttl_ms: Option<u64> },
    /// Remove members from a set.
    SetRemove { members: Vec<Vec<u8>> },
    /// [`Op::Increment`] sent with a request id: every attempt of the request counts once
    /// (see [`crate::once`]). An attempt that finds the id applied changes nothing and answers
    /// with the counter as it is. (Last in the enum: earlier variants keep their encoding.)
    IncrementOnce { delta: i64, ttl_ms: Option<u64>, id: RequestId },
    /// Give the key a TTL (`Some`) or take its TTL away (`None`, Redis PERSIST), keeping its
    /// value, whatever its type. An absent key stays absent. (After `IncrementOnce`: earlier
    /// variants keep their encoding.)
    Expire { ttl_ms: Option<u64> },
    /// [`Op::Append`] sent with a request id: applied once however many times it is sent
    /// (see [`crate::append_once`]). An attempt that finds the id applied changes nothing and
    /// answers with the register as it is. (After `Expire`: earlier variants keep their
    /// encoding.)
    AppendOnce { value: Vec<u8>, ttl_ms: Option<u64>, id: RequestId },
}

impl Op {
    /// Name used in error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "Put",
            Op::Append { .. } | Op::AppendOnce { .. } => "Append",
            Op::Delete => "Delete",
            Op::Increment { .. } | Op::IncrementOnce { .. } => "Increment",
            Op::SetAdd { .. } => "SetAdd",
            Op::SetRemove { .. } => "SetRemove",
            Op::Expire { .. } => "Expire",
        }
    }

    /// The type of key this operation works on (`None` for Delete and Expire, which work on
    /// all).
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Op::Put { .. } | Op::Append { .. } | Op::AppendOnce { .. } => Some(Kind::Register),
            Op::Increment { .. } | Op::IncrementOnce { .. } => Some(Kind::Counter),
            Op::SetAdd { .. } | Op::SetRemove { .. } => Some(Kind::Set),
            Op::Delete | Op::Expire { .. } => None,
        }
    }

    fn ttl_ms(&self) -> Option<u64> {
        match self {
            Op::Put { ttl_ms, .. }
            | Op::Append { ttl_ms, .. }
            | Op::AppendOnce { ttl_ms, .. }
            | Op::Increment { ttl_ms, .. }
            | Op::IncrementOnce { ttl_ms, .. }
            | Op::SetAdd { ttl_ms, .. }
            | Op::Expire { ttl_ms } => *ttl_ms,
            Op::Delete | Op::SetRemove { .. } => None,
        }
    }

    /// Checks sizes and ranges before anything is read or written.
    pub fn validate(&self, limits: &Limits) -> Result<(), CoreError> {
        limits.check_ttl(self.ttl_ms())?;
        match self {
            Op::Put { value, .. } => limits.check_value("value", value),
            Op::Append { value, .. } | Op::AppendOnce { value, .. } => {
                limits.check_value("appended value", value)
            }
            Op::SetAdd { members, .. } | Op::SetRemove { members } => limits.check_members(members),
            Op::Delete | Op::Increment { .. } | Op::IncrementOnce { .. } | Op::Expire { .. } => Ok(()),
        }
    }
}

/// What an operation did, as the client is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpOutcome {
    Put,
    Deleted {
        existed: bool,
    },
    Appended {
        len: u64,
    },
    Counter {
        value: i64,
    },
    SetChanged {
        changed: u64,
        size: u64,
    },
    /// An Expire: whether the key existed (its TTL changed only then).
    Expired {
        existed: bool,
    },
}

impl OpOutcome {
    /// Whether the operation left the key as it was, so that nothing is stored, logged or
    /// sent to other replicas (an Expire of an absent key), and no version is answered.
    pub fn changes_nothing(&self) -> bool {
        matches!(self, OpOutcome::Expired { existed: false })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub record: Record,
    pub outcome: OpOutcome,
}

/// Applies `op` to the current state of a key, writing counter entries and set dots as the
/// stamp's node. See [`apply_as`].
pub fn apply(
    current: Option<&Record>,
    op: &Op,
    stamp: Stamp,
    now_ms: u64,
    limits: &Limits,
) -> Result<Applied, CoreError> {
    apply_as(current, op, stamp, stamp.node, now_ms, limits)
}

/// Applies `op` to the current state of a key.
///
/// `stamp` must be newer than `current.version()` (the node's HLC guarantees this once it has
/// been updated with the stored version); `actor` names the counter entries and set dots this
/// write makes (a node's actor changes when it may have lost some of its own; see
/// [`crate::OrSet`]); `now_ms` is the wall clock used for TTLs. A deleted or expired key is
/// over: a write other than Delete starts a new lifetime from a clean slate, and so does a
/// write of another type to a set that is empty.
pub fn apply_as(
    current: Option<&Record>,
    op: &Op,
    stamp: Stamp,
    actor: u64,
    now_ms: u64,
    limits: &Limits,
) -> Result<Applied, CoreError> {
    let mut rec = current.cloned().unwrap_or_default();
    if current.is_some() && stamp <= rec.version() {
        return Err(CoreError::StaleStamp { stamp, version: rec.version() });
    }
    // A request sent again that was applied before changes nothing.
    if let Some(answer) = applied_before(&rec, op, now_ms) {
        return answer.map(|outcome| Applied { record: rec, outcome });
    }
    let visible = rec.is_visible(now_ms);
    if let Some(kind) = op.kind() {
        if visible && rec.kind.val != kind {
            return Err(CoreError::WrongType { op: op.name(), expected: kind, actual: rec.kind.val });
        }
        if rec.ended(now_ms) || !visible && rec.kind.val != kind {
            // A clean slate: whatever the ended lifetime still holds is gone, here and in
            // every replica this state reaches.
            rec.begin_lifetime(stamp, now_ms);
            assign(&mut rec.kind, kind, stamp);
        }
    }
    let outcome = match op {
        Op::Delete => {
            rec.delete(stamp, now_ms);
            return Ok(Applied { record: rec, outcome: OpOutcome::Deleted { existed: visible } });
        }
        Op::Expire { ttl_ms } => {
            // Only the deadline changes (its stamp orders it against concurrent TTL changes);
            // an absent key is left as it is.
            if visible {
                assign(&mut rec.expiry, ttl_ms.map(|t| now_ms.saturating_add(t)), stamp);
            }
            return Ok(Applied { record: rec, outcome: OpOutcome::Expired { existed: visible } });
        }
        Op::Put { value, .. } => {
            assign(&mut rec.register, value.clone(), stamp);
            OpOutcome::Put
        }
        Op::Append { value, .. } | Op::AppendOnce { value, .. } => {
            let mut joined = rec.register.val.clone();
            joined.extend_from_slice(value);
            limits.check_value("value after append", &joined)?;
            let len = joined.len() as u64;
            assign(&mut rec.register, joined, stamp);
            if let Op::AppendOnce { id, .. } = op {
                rec.appends.insert(*id, stamp.time, crate::append_once::digest(value), now_ms);
            }
            OpOutcome::Appended { len }
        }
        Op::Increment { delta, .. } => {
            let current = rec.counter_value();
            let next = current + i128::from(*delta);
            if next < i128::from(i64::MIN) || next > i128::from(i64::MAX) {
                return Err(CoreError::Overflow { current, delta: *delta });
            }
            // A lifetime's counts live in epochs it started (never in an older entry).
            rec.counter.add(actor, *delta, stamp.time, rec.kind.marker.time);
            rec.settle_onces(actor, stamp, now_ms);
            OpOutcome::Counter { value: next as i64 }
        }
        Op::IncrementOnce { delta, id, .. } => {
            let current = rec.counter_value();
            let next = current + i128::from(*delta);
            if next < i128::from(i64::MIN) || next > i128::from(i64::MAX) {
                return Err(CoreError::Overflow { current, delta: *delta });
            }
            rec.onces.insert(*id, *delta, stamp.time, actor);
            rec.settle_onces(actor, stamp, now_ms);
            OpOutcome::Counter { value: next as i64 }
        }
        Op::SetAdd { members, .. } => {
            let dot = Dot { node: actor, counter: stamp.time };
            let changed = members.iter().filter(|m| rec.set.add(dot, m.to_vec())).count();
            OpOutcome::SetChanged { changed: changed as u64, size: rec.set.len() as u64 }
        }
        Op::SetRemove { members } => {
            let changed = members.iter().filter(|m| rec.set.remove(m)).count();
            OpOutcome::SetChanged { changed: changed as u64, size: rec.set.len() as u64 }
        }
    };
    assign(&mut rec.live, true, stamp);
    rec.forget_before_horizon();
    match (op, op.ttl_ms()) {
        (_, Some(ttl)) => assign(&mut rec.expiry, Some(now_ms.saturating_add(ttl)), stamp),
        // A plain Put replaces the value and its TTL, like Redis SET.
        (Op::Put { .. }, None) => assign(&mut rec.expiry, None, stamp),
        _ => {}
    }
    Ok(Applied { record: rec, outcome })
}

/// The answer to an idempotent increment or append whose request id `rec` holds (applied
/// before: the value as it is), or its refusal when the id came with another delta or other
/// bytes; `None` for any other operation, or one whose id is new.
fn applied_before(rec: &Record, op: &Op, now_ms: u64) -> Option<Result<OpOutcome, CoreError>> {
    let visible = |kind| rec.is_visible(now_ms) && rec.kind.val == kind;
    Some(match op {
        Op::IncrementOnce { delta, id, .. } => {
            let seen = rec.onces.get(*id)?;
            if seen.delta() != *delta {
                return Some(Err(CoreError::RequestReused { id: *id, then: seen.delta(), now: *delta }));
            }
            let value = rec.counter_value().clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
            Ok(OpOutcome::Counter { value: if visible(Kind::Counter) { value } else { 0 } })
        }
        Op::AppendOnce { value, id, .. } => {
            let seen = rec.appends.get(*id)?;
            if seen.digest != crate::append_once::digest(value) {
                return Some(Err(CoreError::AppendReused { id: *id }));
            }
            let len = if visible(Kind::Register) { rec.register.val.len() as u64 } else { 0 };
            Ok(OpOutcome::Appended { len })
        }
        _ => return None,
    })
}

#[cfg(test)]
#[path = "op_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "op_laws.rs"]
mod laws;
