//! The RocksDB engine of one node.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use geokv_core::{CoreError, Crdt, NodeId, Record, Stamp};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::keys::{log_key, ttl_key, TtlTag};
use crate::purge;
use crate::{StorageConfig, StorageError};

const CF_DATA: &str = "data";
const CF_TTL: &str = "ttl";
const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const CF_HINTS: &str = "hints";
const META_NODE_ID: &[u8] = b"node_id";
const META_LAYOUT: &[u8] = b"layout_version";
/// The incarnation of this data directory: an HLC time set when it is created and renewed
/// whenever the node drops keys it held (see [`Engine::renew_incarnation`]).
const META_INCARNATION: &[u8] = b"incarnation";
/// The highest change-log sequence number ever assigned, saved before log entries are deleted
/// (trimmed or erased): the counter must never go back below what a destination acknowledged.
const META_LOG_HIGH_WATER: &[u8] = b"log_high_water";
const LAYOUT_VERSION: u8 = 2;
const LOCK_STRIPES: usize = 1024;
/// Most tombstones or expired keys one scan page steps over before it returns what it has.
const MAX_SKIPPED_PER_PAGE: usize = 10_000;
/// When a purge waits for tailers, it is tried again this much later.
const PURGE_RETRY_MS: u64 = 60_000;

/// Locks a mutex that guards no invariant a panic could break (the guarded state is either
/// `()` or a sequencer whose updates are single statements), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a read-modify-write decided: the new state to store (`None`: store nothing) and the
/// answer for the caller.
pub struct Update<T> {
    pub record: Option<Record>,
    pub out: T,
}

/// One change-log entry: the key that changed and the version it changed to. The entry does
/// not hold the value: whoever tails the log reads the key's current state, which subsumes
/// every earlier one (states merge).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: u64,
    pub key: Vec<u8>,
    pub version: Stamp,
    /// Whether the change carries a write made in this region (a client write or its
    /// replication inside the region), which the cross-region replicator ships; repairs
    /// (read repair, anti-entropy, handoff, streaming) and changes that came from other
    /// regions are not shipped again.
    pub ship: bool,
    /// Size of the key and its stored state after the change, in bytes (for backlog figures).
    pub bytes: u64,
}

/// One key's change in a commit: key, old state, new state, new state's uncompressed payload.
type Change<'a> = (&'a [u8], Option<&'a Record>, &'a Record, Vec<u8>);

/// Change-log sequence numbers: assigned before a batch commits, so they may commit out of
/// order. `committed` is the highest number below which every batch has committed (or
/// failed), which is how far a tailer may safely read.
#[derive(Default)]
struct Sequencer {
    last: u64,
    in_flight: BTreeSet<u64>,
}

pub struct Engine {
    db: DB,
    cfg: StorageConfig,
    wopts: WriteOptions,
    locks: Box<[Mutex<()>]>,
    seq: Mutex<Sequencer>,
    writes: AtomicU64,
    corrupt_reads: AtomicU64,
    corrupt_replaced: AtomicU64,
    oversized_merges: AtomicU64,
    /// Decides which keys may be stored at all (see [`Engine::set_admission`]).
    admission: std::sync::OnceLock<Admission>,
    /// Refuses states from other nodes whose stamps are too far ahead.
    stamp_check: std::sync::OnceLock<StampCheck>,
    /// Told how long each commit of key changes took (see [`Engine::set_commit_observer`]).
    commit_observer: std::sync::OnceLock<CommitObserver>,
    /// Injected slowness of every commit, in milliseconds (see [`Engine::set_commit_delay`]).
    commit_delay_ms: AtomicU64,
    path: std::path::PathBuf,
    /// Held while the change log's id is made (see [`Engine::log_id`]).
    log_id_lock: Mutex<()>,
}

/// Called with the duration of every commit of key changes (WAL write, and sync if on).
pub type CommitObserver = std::sync::Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// A check every stored key passes first: `Err(reason)` refuses the key (residency).
pub type Admission = std::sync::Arc<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// Checks the stamps of a state that came from another node before it is stored (merged or
/// kept as a hint); see [`Engine::set_stamp_check`].
pub type StampCheck = std::sync::Arc<dyn Fn(&Record) -> Result<(), String> + Send + Sync>;

impl Engine {
    /// Opens (or creates) the data directory of node `node_id`.
    pub fn open(path: &Path, node_id: NodeId, cfg: StorageConfig) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        let cfs = [CF_DATA, CF_TTL, CF_LOG, CF_META, CF_HINTS]
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let mut wopts = WriteOptions::default();
        wopts.set_sync(cfg.sync);
        let locks = (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        let engine = Engine {
            db,
            cfg,
            wopts,
            locks,
            seq: Mutex::new(Sequencer::default()),
            writes: AtomicU64::new(0),
            corrupt_reads: AtomicU64::new(0),
            corrupt_replaced: AtomicU64::new(0),
            oversized_merges: AtomicU64::new(0),
            admission: std::sync::OnceLock::new(),
            stamp_check: std::sync::OnceLock::new(),
            commit_observer: std::sync::OnceLock::new(),
            commit_delay_ms: AtomicU64::new(0),
            path: path.to_path_buf(),
            log_id_lock: Mutex::new(()),
        };
        engine.check_identity(path, node_id)?;
        lock(&engine.seq).last = engine.last_logged_seq()?;
        Ok(engine)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column families are created at open")
    }

    /// This data directory's incarnation (0 for one made before incarnations existed, until
    /// the node renews it).
    pub fn incarnation(&self) -> Result<u64, StorageError> {
        let v = self.db.get_cf(self.cf(CF_META), META_INCARNATION)?;
        Ok(v.and_then(|v| v.as_slice().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0))
    }

    /// Saves a new incarnation (durably). A node renews it when it may have lost CRDT state
    /// it wrote itself (a new data directory, keys erased or dropped), so that it writes as a
    /// new actor from then on (see `geokv_core::OrSet`).
    pub fn renew_incarnation(&self, incarnation: u64) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.put_cf_opt(self.cf(CF_META), META_INCARNATION, incarnation.to_be_bytes(), &opts)?;
        Ok(())
    }

    fn check_identity(&self, path: &Path, node_id: NodeId) -> Result<(), StorageError> {
        let meta = self.cf(CF_META);
        let incompatible =
            |reason: String| StorageError::Incompatible { path: path.display().to_string(), reason };
        match self.db.get_cf(meta, META_LAYOUT)? {
            None => {
                let mut b = WriteBatch::default();
                b.put_cf(meta, META_LAYOUT, [LAYOUT_VERSION]);
                b.put_cf(meta, META_NODE_ID, node_id.to_be_bytes());
                self.db.write_opt(b, &self.wopts)?;
            }
            Some(v) if v.as_slice() != [LAYOUT_VERSION] => {
                return Err(incompatible(format!("layout version {v:?}, this build reads {LAYOUT_VERSION}")));
            }
            Some(_) => {
                let stored = self.db.get_cf(meta, META_NODE_ID)?.unwrap_or_default();
                if stored.as_slice() != node_id.to_be_bytes() {
                    let stored = stored.try_into().map(u64::from_be_bytes).unwrap_or(0);
                    return Err(incompatible(format!(
                        "it belongs to node {stored}, not node {node_id}; point data_dir elsewhere or fix node_id"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The highest sequence number assigned before this start: the newest entry of the log,
    /// or the high-water mark saved before entries were deleted, whichever is higher.
    fn last_logged_seq(&self) -> Result<u64, StorageError> {
        let newest = match self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End).next() {
            Some(item) => {
                let (k, _) = item?;
                k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0)
            }
            None => 0,
        };
        let saved = self.db.get_cf(self.cf(CF_META), META_LOG_HIGH_WATER)?;
        let saved = saved.and_then(|v| v.as_slice().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
        Ok(newest.max(saved))
    }

    /// Saves the highest sequence number assigned so far (durably, before any log entry is
    /// deleted), so a restart after the newest entries were erased does not reuse numbers.
    pub(crate) fn save_log_high_water(&self) -> Result<(), StorageError> {
        let last = lock(&self.seq).last;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.put_cf_opt(self.cf(CF_META), META_LOG_HIGH_WATER, last.to_be_bytes(), &opts)?;
        Ok(())
    }

    fn stripe_index(&self, key: &[u8]) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() as usize) % self.locks.len()
    }

    fn stripe(&self, key: &[u8]) -> &Mutex<()> {
        &self.locks[self.stripe_index(key)]
    }

    fn decode(&self, key: &[u8], raw: &[u8]) -> Result<Record, StorageError> {
        codec::decode(raw).map_err(|e| {
            self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
            tracing::error!(key = %String::from_utf8_lossy(key), error = %e, "corrupt stored value");
            StorageError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: e.to_string() }
        })
    }

    /// Installs the admission check every write of a key (client write, merge, hint) passes
    /// first, under the key's lock. Set once, before serving.
    pub fn set_admission(&self, check: Admission) {
        let _ = self.admission.set(check);
    }

    /// Installs the observer of commit durations (for metrics). Set once, before serving.
    pub fn set_commit_observer(&self, observe: CommitObserver) {
        let _ = self.commit_observer.set(observe);
    }

    /// Fault injection (a slow disk or fsync): every commit of key changes, and of a hint,
    /// sleeps this long before writing, holding the keys' locks as a slow write would. Commits
    /// run on blocking threads (never on an async runtime's workers), so sleeping is safe.
    /// Zero (the default) turns it off.
    pub fn set_commit_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.commit_delay_ms.store(ms, Ordering::Relaxed);
    }

    /// The injected commit delay (see [`Engine::set_commit_delay`]).
    pub fn commit_delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.commit_delay_ms.load(Ordering::Relaxed))
    }

    /// Sleeps for the injected commit delay, if any.
    fn slow_disk(&self) {
        let delay = self.commit_delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }

    /// Installs the check every state from another node (a merge, a hint) passes before it
    /// is stored: a node whose clock runs ahead must not make its peers store stamps that
    /// would win every last-writer-wins race. Set once, before serving.
    pub fn set_stamp_check(&self, check: StampCheck) {
        let _ = self.stamp_check.set(check);
    }

    /// Refuses a state from elsewhere stamped beyond what the stamp check allows (a clock
    /// running too far ahead: see [`Engine::set_stamp_check`]); merges ask it first.
    pub fn check_stamps(&self, key: &[u8], incoming: &Record) -> Result<(), StorageError> {
        match self.stamp_check.get() {
            Some(check) => check(incoming).map_err(|reason| StorageError::ClockDrift {
                key: String::from_utf8_lossy(key).into_owned(),
                reason,
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn admit(&self, key: &[u8]) -> Result<(), StorageError> {
        match self.admission.get() {
            Some(check) => check(key).map_err(|reason| StorageError::NotAdmitted {
                key: String::from_utf8_lossy(key).into_owned(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// The stored state of `key` (tombstones and expired states included).
    pub fn get(&self, key: &[u8]) -> Result<Option<Record>, StorageError> {
        match self.db.get_pinned_cf(self.cf(CF_DATA), key)? {
            Some(raw) => self.decode(key, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// Reads the state of `key`, lets `f` decide the new state, and commits it in one batch
    /// with its change-log entry and TTL-index changes. Writers of the same key are serialized.
    pub fn update<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&Record>) -> Result<Update<T>, CoreError>,
    ) -> Result<T, StorageError> {
        self.update_as(key, true, false, f)
    }

    /// Read-modify-write of one key. With `merge` (a replica's state is merged in), a stored
    /// state that fails its checksum is treated as absent (so the replica's state replaces it)
    /// instead of failing, and the result may be over `max_record_bytes` (see
    /// [`Engine::serialize_checked`]).
    fn update_as<T>(
        &self,
        key: &[u8],
        ship: bool,
        merge: bool,
        f: impl FnOnce(Option<&Record>) -> Result<Update<T>, CoreError>,
    ) -> Result<T, StorageError> {
        let _guard = lock(self.stripe(key));
        self.admit(key)?;
        let old = match self.get(key) {
            Err(StorageError::Corrupt { key: shown, reason }) if merge => {
                self.corrupt_replaced.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %shown, %reason, "replacing a corrupt stored state with a replica's state");
                None
            }
            other => other?,
        };
        let Update { record, out } = f(old.as_ref())?;
        if let Some(new) = record {
            let plain = self.serialize_checked(key, &new, old.as_ref(), merge)?;
            self.commit_all(&[(key, old.as_ref(), &new, plain)], ship)?;
        }
        Ok(out)
    }

    /// `limits.max_record_bytes` (see [`crate::size`]).
    pub fn max_record_bytes(&self) -> usize {
        self.cfg.max_record_bytes
    }

    /// The grace period before a tombstone or an expired key is purged (see [`crate::purge`]).
    pub fn grace_ms(&self) -> u64 {
        self.cfg.tombstone_grace_secs.saturating_mul(1000)
    }

    fn index_entries(&self, rec: &Record) -> Vec<(u64, TtlTag)> {
        purge::deadline(rec, self.grace_ms()).map(|d| (d, TtlTag::Purge)).into_iter().collect()
    }

    /// The uncompressed payload of a new state of `key`, checked against `max_record_bytes` by
    /// the size rule ([`crate::size`]); an oversized merge is counted and logged.
    pub(crate) fn serialize_checked(
        &self,
        key: &[u8],
        new: &Record,
        old: Option<&Record>,
        merge: bool,
    ) -> Result<Vec<u8>, StorageError> {
        let plain = codec::serialize(new);
        let limit = self.cfg.max_record_bytes;
        if crate::size::check(plain.len(), old, limit, merge)? == crate::size::Fits::OversizedMerge {
            self.oversized_merges.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key = %String::from_utf8_lossy(key), bytes = plain.len(), limit, "a merged state is over limits.max_record_bytes; stored (writes that would grow it are refused)");
        }
        Ok(plain)
    }

    /// Commits changes of several keys in one `WriteBatch` (one WAL write and sync), each with
    /// its TTL-index changes and change-log entry. Callers hold the keys' stripe locks.
    fn commit_all(&self, changes: &[Change<'_>], ship: bool) -> Result<(), StorageError> {
        self.commit_each(changes, |_| ship)
    }

    /// [`Engine::commit_all`] with `ship(i)` saying whether change `i` is for the replicator.
    fn commit_each(&self, changes: &[Change<'_>], ship: impl Fn(usize) -> bool) -> Result<(), StorageError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let first_seq = {
            let mut s = lock(&self.seq);
            let first = s.last + 1;
            s.last += changes.len() as u64;
            let last = s.last;
            s.in_flight.extend(first..=last);
            first
        };
        for (i, (key, old, new, plain)) in changes.iter().enumerate() {
            let encoded = codec::encode_serialized(
                plain.clone(),
                codec::format_of(new),
                self.cfg.compression_threshold_bytes,
                self.cfg.compression_level,
            );
            batch.put_cf(self.cf(CF_DATA), key, &encoded);
            let old_idx = old.map(|r| self.index_entries(r)).unwrap_or_default();
            let new_idx = self.index_entries(new);
            for (deadline, tag) in old_idx.iter().filter(|e| !new_idx.contains(e)) {
                batch.delete_cf(self.cf(CF_TTL), ttl_key(*deadline, *tag, key));
            }
            for (deadline, tag) in new_idx.iter().filter(|e| !old_idx.contains(e)) {
                batch.put_cf(self.cf(CF_TTL), ttl_key(*deadline, *tag, key), []);
            }
            let seq = first_seq + i as u64;
            let bytes = (key.len() + encoded.len()) as u64;
            let entry = LogEntry { seq, key: key.to_vec(), version: new.version(), ship: ship(i), bytes };
            batch.put_cf(
                self.cf(CF_LOG),
                log_key(seq),
                postcard::to_allocvec(&entry).expect("log entry serializes"),
            );
        }
        let started = std::time::Instant::now();
        self.slow_disk();
        let result = self.db.write_opt(batch, &self.wopts);
        if let Some(observe) = self.commit_observer.get() {
            observe(started.elapsed());
        }
        {
            let mut s = lock(&self.seq);
            for seq in first_seq..first_seq + changes.len() as u64 {
                s.in_flight.remove(&seq);
            }
        }
        result?;
        self.writes.fetch_add(changes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Read-modify-write of many keys committed together in one `WriteBatch`: `f(i, state)`
    /// decides item `i` of `keys` given the key's current state (including earlier items of
    /// the same batch on the same key). Returns each item's own result; a failure of the
    /// commit itself fails the whole call.
    pub fn update_many<T>(
        &self,
        keys: &[Vec<u8>],
        mut f: impl FnMut(usize, Option<&Record>) -> Result<Update<T>, CoreError>,
    ) -> Result<Vec<Result<T, StorageError>>, StorageError> {
        // Lock every stripe involved, in index order, so concurrent batches cannot deadlock.
        let mut stripes: Vec<usize> = keys.iter().map(|k| self.stripe_index(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let _guards: Vec<_> = stripes.iter().map(|&i| lock(&self.locks[i])).collect();
        let mut original: std::collections::HashMap<&[u8], Option<Record>> = std::collections::HashMap::new();
        let mut latest: std::collections::HashMap<&[u8], (Record, Vec<u8>)> =
            std::collections::HashMap::new();
        let mut order: Vec<&[u8]> = Vec::new();
        let mut results = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_slice();
            if let Err(e) = self.admit(key) {
                results.push(Err(e));
                continue;
            }
            if !original.contains_key(key) {
                match self.get(key) {
                    Ok(rec) => {
                        original.insert(key, rec);
                    }
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                }
            }
            let current = latest.get(key).map(|(r, _)| r).or(original[key].as_ref());
            let outcome = match f(i, current).map_err(StorageError::from) {
                Ok(Update { record: Some(new), out }) => {
                    self.serialize_checked(key, &new, current, false).map(|plain| (Some((new, plain)), out))
                }
                Ok(Update { record: None, out }) => Ok((None, out)),
                Err(e) => Err(e),
            };
            let outcome = outcome.map(|(change, out)| {
                if let Some(change) = change {
                    if !latest.contains_key(key) {
                        order.push(key);
                    }
                    latest.insert(key, change);
                }
                out
            });
            results.push(outcome);
        }
        let changes: Vec<Change<'_>> = order
            .iter()
            .map(|k| {
                let (new, plain) = &latest[k];
                (*k, original[k].as_ref(), new, plain.clone())
            })
            .collect();
        self.commit_all(&changes, true)?;
        Ok(results)
    }

    /// Merges a replica's state of `key` into ours. Returns whether our state changed (a
    /// change is committed with its change-log entry, like a local write).
    pub fn merge(&self, key: &[u8], incoming: &Record) -> Result<bool, StorageError> {
        self.merge_as(key, incoming, false)
    }

    /// [`Engine::merge`], with `ship` saying whether the change-log entry is for the
    /// replicator to ship to other regions (see [`LogEntry::ship`]).
    ///
    /// A stored state that fails its checksum cannot be merged: it is replaced by `incoming`
    /// (counted in [`Stats::corrupt_replaced`]); the replicas that sent it hold the rest.
    pub fn merge_as(&self, key: &[u8], incoming: &Record, ship: bool) -> Result<bool, StorageError> {
        self.check_stamps(key, incoming)?;
        self.update_as(key, ship, true, |current| {
            let merged = match current {
                Some(cur) => {
                    let mut m = cur.clone();
                    m.merge(incoming);
                    m
                }
                None => incoming.clone(),
            };
            let changed = current != Some(&merged);
            Ok(Update { record: changed.then_some(merged), out: changed })
        })
    }

    /// Flushes memtables to SST files (the WAL already makes writes durable).
    pub fn flush(&self) -> Result<(), StorageError> {
        for cf in [CF_DATA, CF_TTL, CF_LOG, CF_HINTS] {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }

    /// The raw stored bytes of a key. Only for tests of corruption handling.
    #[doc(hidden)]
    pub fn get_raw_for_test(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(CF_DATA), key)?)
    }

    /// Overwrites the raw stored bytes of a key. Only for tests of corruption handling.
    #[doc(hidden)]
    pub fn put_raw_for_test(&self, key: &[u8], raw: &[u8]) -> Result<(), StorageError> {
        Ok(self.db.put_cf(self.cf(CF_DATA), key, raw)?)
    }
}

mod cached;
mod checkpoint;
mod log;
mod scan;
pub(crate) use scan::page;
pub use scan::ScanPage;
mod stats;
pub use stats::Stats;
mod ttl;
pub use checkpoint::{Checkpoint, CHECKPOINTS_DIR};
mod erase;
pub use erase::EraseReport;
mod feed;
pub use feed::LogStart;
mod group;
pub use group::{Batch, GroupCommit, Pending};
mod hints;
mod meta;
#[cfg(test)]
mod tests;
