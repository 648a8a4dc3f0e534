//! The replicated state of one key: a typed CRDT plus its liveness, type and TTL, each a
//! lattice of its own, so the whole record is a lattice (a product of lattices).

use crdts::LWWReg;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::append_once::AppendIds;
use crate::once::{merge_settled, Onces, Settled};

use crate::{Crdt, OrSet, PnCounter, Stamp};

/// The type a key holds. Fixed by the first write of a key's lifetime; once a key is deleted
/// (or expired) the next write may give it another type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Last-writer-wins register of bytes, ordered by HLC stamp (ties by node id).
    #[default]
    Register,
    /// PN-counter (signed 64-bit as seen by clients).
    Counter,
    /// Add-wins observed-remove set of byte strings.
    Set,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Register => "register",
            Kind::Counter => "counter",
            Kind::Set => "set",
        })
    }
}

/// What a client sees of a live key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    Register(Vec<u8>),
    Counter(i64),
    Set(Vec<Vec<u8>>),
}

/// Full CRDT state of one key.
///
/// - `kind`: LWW register of the key's type; written when a lifetime starts.
/// - `live`: LWW flag, `true` by every write, `false` by a delete. Decides whether a register
///   or counter exists (a set exists while it has members).
/// - `register`: LWW bytes; a delete overwrites them with nothing, so a tombstone holds no data.
/// - `counter` / `counter_base`: [`PnCounter`]s; the value is `counter - counter_base`; a delete copies the
///   observed counter into the base (an observed reset), so increments the deleter had not seen
///   survive it. `counter_base <= counter` pointwise is kept by merging the base into both.
/// - `onces` / `onces_base` / `settled`: the counter's idempotent increments (those sent with
///   a request id), kept by id so that every application of one request counts once, and the
///   actors' watermarks of the ones that count no more ([`crate::once`]); the value adds
///   `onces - onces_base`, and a delete copies them into the base as it copies the counter.
/// - `set`: add-wins OR-set; a delete removes every observed member.
/// - `expiry`: LWW deadline in Unix milliseconds, `None` for no TTL.
/// - `horizon`: an HLC time before which the key's content is gone for good, merged by maximum:
///   the deadline of a lifetime that expired. Counter entries of earlier epochs and set dots of
///   earlier adds are dropped by every state that knows it, so an expired lifetime that one
///   replica still holds (its sweeper is behind, or it was down across the purge) cannot come
///   back into a new lifetime another replica started. The sweeper keeps a small marker
///   carrying it when it purges an expired key (see [`Record::expired_marker`]).
/// - `appends`: the request ids of the register's idempotent appends, so that an append is
///   applied once however often it is sent ([`crate::append_once`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: LWWReg<Kind, Stamp>,
    pub live: LWWReg<bool, Stamp>,
    pub register: LWWReg<Vec<u8>, Stamp>,
    pub counter: PnCounter,
    pub counter_base: PnCounter,
    pub set: OrSet,
    pub expiry: LWWReg<Option<u64>, Stamp>,
    pub horizon: u64,
    pub onces: Onces,
    pub onces_base: Onces,
    pub settled: Settled,
    pub appends: AppendIds,
}

/// A record as format version 3 stores it (before `appends`): read with none. Also the layout
/// a record without idempotent appends is still written in, so nodes of the previous version
/// read it during a rolling upgrade.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordV3 {
    pub kind: LWWReg<Kind, Stamp>,
    pub live: LWWReg<bool, Stamp>,
    pub register: LWWReg<Vec<u8>, Stamp>,
    pub counter: PnCounter,
    pub counter_base: PnCounter,
    pub set: OrSet,
    pub expiry: LWWReg<Option<u64>, Stamp>,
    pub horizon: u64,
    pub onces: Onces,
    pub onces_base: Onces,
    pub settled: Settled,
}

/// [`RecordV3`]'s layout, borrowed from a [`Record`] (serializes to the same bytes).
#[derive(Serialize)]
pub struct RecordV3Ref<'a> {
    kind: &'a LWWReg<Kind, Stamp>,
    live: &'a LWWReg<bool, Stamp>,
    register: &'a LWWReg<Vec<u8>, Stamp>,
    counter: &'a PnCounter,
    counter_base: &'a PnCounter,
    set: &'a OrSet,
    expiry: &'a LWWReg<Option<u64>, Stamp>,
    horizon: u64,
    onces: &'a Onces,
    onces_base: &'a Onces,
    settled: &'a Settled,
}

impl<'a> From<&'a Record> for RecordV3Ref<'a> {
    fn from(r: &'a Record) -> Self {
        RecordV3Ref {
            kind: &r.kind,
            live: &r.live,
            register: &r.register,
            counter: &r.counter,
            counter_base: &r.counter_base,
            set: &r.set,
            expiry: &r.expiry,
            horizon: r.horizon,
            onces: &r.onces,
            onces_base: &r.onces_base,
            settled: &r.settled,
        }
    }
}

impl From<RecordV3> for Record {
    fn from(v: RecordV3) -> Record {
        let RecordV3 {
            kind,
            live,
            register,
            counter,
            counter_base,
            set,
            expiry,
            horizon,
            onces,
            onces_base,
            settled,
        } = v;
        Record {
            kind,
            live,
            register,
            counter,
            counter_base,
            set,
            expiry,
            horizon,
            onces,
            onces_base,
            settled,
            appends: AppendIds::default(),
        }
    }
}

/// A record as format version 2 stores it (before `onces`): read with none. Also the layout
/// a record without idempotent increments is still written in, so nodes of the previous
/// version read it during a rolling upgrade.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordV2 {
    pub kind: LWWReg<Kind, Stamp>,
    pub live: LWWReg<bool, Stamp>,
    pub register: LWWReg<Vec<u8>, Stamp>,
    pub counter: PnCounter,
    pub counter_base: PnCounter,
    pub set: OrSet,
    pub expiry: LWWReg<Option<u64>, Stamp>,
    pub horizon: u64,
}

/// [`RecordV2`]'s layout, borrowed from a [`Record`] (serializes to the same bytes).
#[derive(Serialize)]
pub struct RecordV2Ref<'a> {
    kind: &'a LWWReg<Kind, Stamp>,
    live: &'a LWWReg<bool, Stamp>,
    register: &'a LWWReg<Vec<u8>, Stamp>,
    counter: &'a PnCounter,
    counter_base: &'a PnCounter,
    set: &'a OrSet,
    expiry: &'a LWWReg<Option<u64>, Stamp>,
    horizon: u64,
}

impl<'a> From<&'a Record> for RecordV2Ref<'a> {
    fn from(r: &'a Record) -> Self {
        RecordV2Ref {
            kind: &r.kind,
            live: &r.live,
            register: &r.register,
            counter: &r.counter,
            counter_base: &r.counter_base,
            set: &r.set,
            expiry: &r.expiry,
            horizon: r.horizon,
        }
    }
}

impl From<RecordV2> for Record {
    fn from(v: RecordV2) -> Record {
        let RecordV2 { kind, live, register, counter, counter_base, set, expiry, horizon } = v;
        Record { kind, live, register, counter, counter_base, set, expiry, horizon, ..Record::default() }
    }
}

/// A record as format version 1 stored it (before `horizon`): read with horizon 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordV1 {
    pub kind: LWWReg<Kind, Stamp>,
    pub live: LWWReg<bool, Stamp>,
    pub register: LWWReg<Vec<u8>, Stamp>,
    pub counter: PnCounter,
    pub counter_base: PnCounter,
    pub set: OrSet,
    pub expiry: LWWReg<Option<u64>, Stamp>,
}

impl From<RecordV1> for Record {
    fn from(v: RecordV1) -> Record {
        let RecordV1 { kind, live, register, counter, counter_base, set, expiry } = v;
        Record { kind, live, register, counter, counter_base, set, expiry, ..Record::default() }
    }
}

/// LWW join that is commutative even for equal markers (the larger value wins the tie; equal
/// markers with different values only arise from corrupted input, never from real stamps).
fn join_lww<V: Ord + Clone>(mine: &mut LWWReg<V, Stamp>, theirs: &LWWReg<V, Stamp>) {
    if (&theirs.marker, &theirs.val) > (&mine.marker, &mine.val) {
        mine.val = theirs.val.clone();
        mine.marker = theirs.marker;
    }
}

/// Overwrites an LWW register with a stamp known to be newer than all the record holds.
pub(crate) fn assign<V>(reg: &mut LWWReg<V, Stamp>, val: V, stamp: Stamp) {
    reg.val = val;
    reg.marker = stamp;
}

impl Crdt for Record {
    fn merge(&mut self, other: &Self) {
        join_lww(&mut self.kind, &other.kind);
        join_lww(&mut self.live, &other.live);
        join_lww(&mut self.register, &other.register);
        join_lww(&mut self.expiry, &other.expiry);
        self.counter.merge(&other.counter);
        self.counter_base.merge(&other.counter_base);
        let base = self.counter_base.clone();
        self.counter.merge(&base);
        self.onces.merge(&other.onces);
        self.onces_base.merge(&other.onces_base);
        merge_settled(&mut self.settled, &other.settled);
        self.appends.merge(&other.appends);
        self.set.merge(&other.set);
        self.horizon = self.horizon.max(other.horizon);
        self.forget_before_horizon();
    }
}

impl Record {
    /// The record's version: the newest stamp any write to it carried.
    pub fn version(&self) -> Stamp {
        self.kind.marker.max(self.live.marker).max(self.register.marker).max(self.expiry.marker)
    }

    /// Whether the key exists, ignoring its TTL. A set exists while it has members; a
    /// counter while it lives, or while it holds increments a delete did not observe (they
    /// survive the delete, as a set's unobserved adds do).
    pub fn exists(&self) -> bool {
        match self.kind.val {
            Kind::Register => self.live.val,
            Kind::Counter => self.live.val || self.counter != self.counter_base || self.unobserved_onces(),
            Kind::Set => !self.set.is_empty(),
        }
    }

    /// Whether the key's lifetime is over: never written, deleted (and nothing survived the
    /// delete), or past its TTL. The next write starts a new lifetime from a clean slate.
    pub fn ended(&self, now_ms: u64) -> bool {
        self.is_expired(now_ms) || !self.exists() && !self.live.val
    }

    /// Starts a new lifetime at `stamp` (newer than the record) from a clean slate. When the
    /// lifetime that ended expired, everything it held is gone for good: its deadline becomes
    /// the horizon, here and in every state this one is merged into.
    pub(crate) fn begin_lifetime(&mut self, stamp: Stamp, now_ms: u64) {
        self.close_if_expired(now_ms);
        self.clear(stamp);
    }

    /// Deletes the key at `stamp`: everything this state observed is gone (an observed
    /// reset). The TTL stays as it was, so increments and adds the delete did not observe keep
    /// the deadline their writers gave them; a key that had expired is closed at its deadline
    /// first, so no write made before it can surface through the delete.
    pub(crate) fn delete(&mut self, stamp: Stamp, now_ms: u64) {
        self.close_if_expired(now_ms);
        let expiry = self.expiry.clone();
        self.clear(stamp);
        self.expiry = expiry;
    }

    /// When the key expired by `now_ms`, makes its deadline the horizon.
    fn close_if_expired(&mut self, now_ms: u64) {
        if let Some(deadline) = self.expiry.val.filter(|&d| d <= now_ms) {
            self.horizon = self.horizon.max(Stamp::ntp_from_millis(deadline));
            self.forget_before_horizon();
        }
    }

    /// What the sweeper keeps of an expired key when it purges it: no content, only the
    /// horizon (the deadline), the type, and a `live = false` stamped at the deadline, so
    /// that a replica still holding the expired lifetime cannot bring it back into a new one.
    /// `None` when the record is not expired at `now_ms`.
    pub fn expired_marker(&self, now_ms: u64) -> Option<Record> {
        let deadline = self.expiry.val.filter(|&d| d <= now_ms)?;
        let at = Stamp::new(Stamp::ntp_from_millis(deadline), 0);
        let mut marker = Record { horizon: self.horizon.max(at.time), ..Record::default() };
        marker.kind = LWWReg { val: self.kind.val, marker: self.kind.marker.min(at) };
        marker.live = LWWReg { val: false, marker: at };
        Some(marker)
    }

    /// Whether this record is an expiry marker and nothing more (see
    /// [`Record::expired_marker`]).
    pub fn is_marker(&self) -> bool {
        self.horizon > 0
            && !self.live.val
            && self.live.marker.time == self.horizon
            && self.register.val.is_empty()
            && self.counter == PnCounter::default()
            && self.counter_base == PnCounter::default()
            && self.onces.is_empty()
            && self.onces_base.is_empty()
            && self.settled.is_empty()
            && self.appends.is_empty()
            && self.set.is_empty()
    }

    /// Drops the counter entries and set dots made before the horizon.
    pub(crate) fn forget_before_horizon(&mut self) {
        if self.horizon > 0 {
            self.counter.retain_from(self.horizon);
            self.counter_base.retain_from(self.horizon);
            self.onces.retain_from(self.horizon);
            self.onces_base.retain_from(self.horizon);
            self.set.retain_from(self.horizon);
        }
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expiry.val.is_some_and(|deadline| deadline <= now_ms)
    }

    /// Whether a client reading at `now_ms` sees the key.
    pub fn is_visible(&self, now_ms: u64) -> bool {
        self.exists() && !self.is_expired(now_ms)
    }

    /// Milliseconds until the TTL expires, if the key has one.
    pub fn ttl_remaining_ms(&self, now_ms: u64) -> Option<u64> {
        self.expiry.val.map(|deadline| deadline.saturating_sub(now_ms))
    }

    /// The counter's value (wide, so a merge of concurrent increments cannot overflow here).
    pub fn counter_value(&self) -> i128 {
        self.counter.value() - self.counter_base.value() + self.onces_value()
    }

    /// Whether this record holds anything a format before version 3 cannot hold (idempotent
    /// increments).
    pub fn needs_v3(&self) -> bool {
        !self.onces.is_empty()
            || !self.onces_base.is_empty()
            || self.onces.since != 0
            || self.onces_base.since != 0
            || !self.settled.is_empty()
    }

    /// Whether this record holds anything a format before version 4 cannot hold (idempotent
    /// appends).
    pub fn needs_v4(&self) -> bool {
        !self.appends.is_empty()
    }

    /// What a client sees at `now_ms`: `None` for an absent, deleted or expired key.
    pub fn view(&self, now_ms: u64) -> Option<View> {
        if !self.is_visible(now_ms) {
            return None;
        }
        Some(match self.kind.val {
            Kind::Register => View::Register(self.register.val.clone()),
            Kind::Counter => {
                View::Counter(self.counter_value().clamp(i64::MIN as i128, i64::MAX as i128) as i64)
            }
            Kind::Set => View::Set(self.set.members().cloned().collect()),
        })
    }

    /// Logically deletes everything this state has observed, at `stamp` (newer than the record).
    pub(crate) fn clear(&mut self, stamp: Stamp) {
        assign(&mut self.live, false, stamp);
        assign(&mut self.register, Vec::new(), stamp);
        assign(&mut self.expiry, None, stamp);
        self.counter_base = self.counter.clone();
        self.onces_base = self.onces.clone();
        if !self.onces.is_empty() {
            self.onces_base.since = stamp.time;
        }
        self.set.clear();
    }
}
