//! A node's operations over its storage engine, stamped by its hybrid logical clock.
//!
//! Most methods here are synchronous (RocksDB blocks); the gRPC layer runs them on tokio's
//! blocking pool. Client writes and replica merges on the request path go through the
//! engine's writer thread instead ([`Node::write_async`], [`Node::merge_async`]: group
//! commit, awaited without blocking). Validation happens before anything is read, so bad
//! input never touches stored data.

use std::sync::Arc;
use std::time::Duration;

use geokv_core::{CoreError, Limits, NodeId, Record, Stamp, View};
use geokv_storage::{Engine, GroupCommit, StorageError};

use crate::{Clock, ServerConfig};

mod writes;
pub use writes::LocalWrite;

/// Errors of node operations: storage failures and refused operations alike.
pub type NodeError = StorageError;

const PAGE_TOKEN_V1: u8 = 1;
const DEFAULT_SCAN_LIMIT: usize = 100;
/// Meta entry: set while the node recovers the keys of a new or restored data directory, 0 after.
const RECOVERING_META: &str = "recovering";
/// Values of the recovery mark: a new (empty) data directory, and one restored from a backup.
const NEW_DIRECTORY: u8 = 1;
const RESTORED: u8 = 2;

/// A fresh stamp of `hlc` (node `id`'s clock) newer than `current`'s version.
fn stamp_after(hlc: &uhlc::HLC, id: NodeId, current: Option<&Record>) -> Stamp {
    let stamp = Stamp::from_uhlc(&hlc.new_timestamp());
    match current.map(Record::version) {
        Some(version) if stamp <= version => {
            // The stored state is ahead of our clock (merged from a faster node): move the
            // clock past it so our stamps stay monotonic per key.
            if hlc.update_with_timestamp(&version.to_uhlc()).is_ok() {
                let again = Stamp::from_uhlc(&hlc.new_timestamp());
                if again > version {
                    return again;
                }
            }
            Stamp::new(version.time + 1, id)
        }
        _ => stamp,
    }
}

/// A file `geokv restore` keeps in a data directory while it writes it: a node refuses to start
/// on a directory that has it (a restore that did not finish).
pub const RESTORE_MARKER: &str = "RESTORE_IN_PROGRESS";

/// Prepares a data directory just restored from a backup (`geokv restore`) for its node's next
/// start: the node takes a new incarnation (it may have lost counter entries and set dots it
/// wrote after the backup) and recovers before it votes in quorum reads, from its region's
/// peers and, unless `region_local`, from every node of the other regions too (its whole region
/// may have been restored to the same older point). Hints and leftover checkpoints are dropped
/// (what the hints carried, anti-entropy brings).
pub fn prepare_restored(
    data_dir: &std::path::Path,
    node_id: NodeId,
    region_local: bool,
) -> Result<(), StorageError> {
    let engine = Engine::open(data_dir, node_id, geokv_storage::StorageConfig::default())?;
    engine.drop_checkpoints()?;
    for target in engine.hint_targets()? {
        engine.drop_hints_for(target)?;
    }
    engine.put_meta(RECOVERING_META, &[if region_local { NEW_DIRECTORY } else { RESTORED }])?;
    engine.renew_incarnation(0)?;
    // The restored log goes back in time: a watch's position in the node's log before the
    // restore must not be taken for one in this log.
    engine.renew_log_id()?;
    engine.flush()
}

/// The page token that resumes a scan after `last` (empty when the scan is complete).
pub fn page_token(last: Option<Vec<u8>>) -> Vec<u8> {
    match last {
        Some(last) => [&[PAGE_TOKEN_V1][..], &last].concat(),
        None => Vec::new(),
    }
}

/// Approximate encoded size of a value in a response.
fn view_bytes(view: &View) -> usize {
    match view {
        View::Register(b) => b.len(),
        View::Counter(_) => 10,
        View::Set(members) => members.iter().map(|m| m.len() + 2).sum(),
    }
}

pub use geokv_core::Expect;

#[derive(Clone, Debug, Default)]
pub struct ScanRequest {
    pub prefix: Vec<u8>,
    pub start_key: Vec<u8>,
    /// 0 for the default page size.
    pub limit: u32,
    pub page_token: Vec<u8>,
}

pub struct ScanResult {
    pub items: Vec<(Vec<u8>, Record)>,
    /// The time visibility was judged at (use it to render the entries).
    pub now: u64,
    /// Empty when the scan is complete.
    pub next_page_token: Vec<u8>,
}

pub struct Node {
    id: NodeId,
    engine: Arc<Engine>,
    /// The engine's writer thread (group commit).
    commits: GroupCommit,
    hlc: Arc<uhlc::HLC>,
    /// The actor this node writes counter entries and set dots as (see `geokv_core::actor_id`).
    actor: Arc<std::sync::atomic::AtomicU64>,
    limits: Limits,
    clock: Arc<dyn Clock>,
    pub(crate) sweep_batch: usize,
    metrics: crate::ops::metrics::Metrics,
    faults: Arc<crate::faults::Faults>,
    /// This node's TLS, when its config has a `[tls]` section (set once, at start).
    tls: std::sync::OnceLock<Arc<crate::security::NodeTls>>,
    /// Set when the node stops serving (drain or shutdown): streams end so clients go on
    /// elsewhere, instead of holding the shutdown until its grace period runs out.
    stopping: std::sync::atomic::AtomicBool,
}

impl Node {
    pub fn open(cfg: &ServerConfig, clock: Arc<dyn Clock>) -> Result<Self, NodeError> {
        if cfg.data_dir.join(RESTORE_MARKER).exists() {
            return Err(StorageError::Incompatible {
                path: cfg.data_dir.display().to_string(),
                reason: "a `geokv restore` into it did not finish; run the restore again".into(),
            });
        }
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| StorageError::Incompatible {
            path: cfg.data_dir.display().to_string(),
            reason: format!("cannot create it: {e}"),
        })?;
        let storage = geokv_storage::StorageConfig {
            max_record_bytes: cfg.limits.max_record_bytes,
            ..cfg.storage.clone()
        };
        let engine = Engine::open(&cfg.data_dir, cfg.node_id, storage)?;
        if cfg.clock_offset_ms != 0 {
            crate::clock::set_hlc_offset_ms(cfg.clock_offset_ms);
        }
        let hlc = uhlc::HLCBuilder::new()
            .with_id(Stamp::uhlc_id(cfg.node_id))
            .with_clock(crate::clock::hlc_physical_time)
            .with_max_delta(Duration::from_millis(cfg.max_clock_drift_ms))
            .build();
        let hlc = Arc::new(hlc);
        // States from other nodes: the newest stamp they carry must be within the drift bound
        // (and moves this node's clock past it, as any remote time does).
        let check = hlc.clone();
        engine.set_stamp_check(Arc::new(move |rec: &Record| {
            let v = rec.version();
            check.update_with_timestamp(&v.to_uhlc()).map_err(|e| {
                format!("its stamp is beyond max_clock_drift_ms ahead of this node's clock (the sender's clock runs ahead): {e}")
            })
        }));
        let metrics = crate::ops::metrics::Metrics::new(clock.now_ms());
        let commits = metrics.commit_seconds.clone();
        engine.set_commit_observer(Arc::new(move |took| commits.observe(took.as_secs_f64())));
        let faults = Arc::new(crate::faults::Faults::new(
            cfg.node_id,
            cfg.faults.enabled,
            metrics.faults_injected.clone(),
            metrics.faults_active.clone(),
            crate::clock::set_fault_skew,
        ));
        let mut incarnation = engine.incarnation()?;
        if incarnation == 0 {
            // A new data directory (or one from before incarnations): a new actor, and the
            // node recovers its keys from its peers before it votes in quorum reads (the
            // mark is saved first, so a crash in between cannot skip it).
            // A directory restored from a backup keeps its stronger mark (`restored`).
            if engine.get_meta(RECOVERING_META)?.as_deref() != Some(&[RESTORED][..]) {
                engine.put_meta(RECOVERING_META, &[NEW_DIRECTORY])?;
            }
            incarnation = Stamp::from_uhlc(&hlc.new_timestamp()).time;
            engine.renew_incarnation(incarnation)?;
        }
        let actor =
            Arc::new(std::sync::atomic::AtomicU64::new(geokv_core::actor_id(cfg.node_id, incarnation)));
        let engine = Arc::new(engine);
        let commits = GroupCommit::start(engine.clone()).map_err(|e| StorageError::Io {
            path: cfg.data_dir.display().to_string(),
            reason: format!("cannot start the storage writer thread: {e}"),
        })?;
        Ok(Node {
            commits,
            tls: std::sync::OnceLock::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            actor,
            faults,
            metrics,
            id: cfg.node_id,
            engine,
            hlc,
            limits: cfg.limits.clone(),
            clock,
            sweep_batch: cfg.sweeper.batch,
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The actor this node's writes make counter entries and set dots as.
    pub fn actor(&self) -> u64 {
        self.actor.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this node started on a new data directory and has not recovered its keys
    /// from its peers yet (see `geokv_protocol::recovery`); saved, so a restart keeps it.
    pub fn recovering(&self) -> Result<bool, StorageError> {
        Ok(self.engine.get_meta(RECOVERING_META)?.is_some_and(|v| v == [NEW_DIRECTORY] || v == [RESTORED]))
    }

    /// Whether this node's data directory was restored from a backup and it has not recovered
    /// yet: it then also waits for the other regions (see `Cluster::recovery_waiting`).
    pub fn restored(&self) -> Result<bool, StorageError> {
        Ok(self.engine.get_meta(RECOVERING_META)?.is_some_and(|v| v == [RESTORED]))
    }

    /// Saves that this node has recovered its keys.
    pub fn set_recovered(&self) -> Result<(), StorageError> {
        self.engine.put_meta(RECOVERING_META, &[0])
    }

    /// Renews this node's incarnation, and so its actor: called after it dropped state of keys
    /// it held (residency erase, cleanup), since it may later hold those keys again with less
    /// than all it once wrote to them.
    pub fn renew_actor(&self) -> Result<(), StorageError> {
        let incarnation = Stamp::from_uhlc(&self.hlc.new_timestamp()).time;
        self.engine.renew_incarnation(incarnation)?;
        self.actor.store(geokv_core::actor_id(self.id, incarnation), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Sets this node's TLS (once, before it makes or takes any call).
    pub(crate) fn set_tls(&self, tls: Arc<crate::security::NodeTls>) {
        let _ = self.tls.set(tls);
    }

    /// This node's TLS: `None` when it runs plaintext.
    pub(crate) fn tls(&self) -> Option<&Arc<crate::security::NodeTls>> {
        self.tls.get()
    }

    /// Whether the node is stopping (streams such as watches end).
    pub fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &crate::ops::metrics::Metrics {
        &self.metrics
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The faults injected into this node (none unless `[faults] enabled` and a test sets
    /// some).
    pub(crate) fn faults(&self) -> &Arc<crate::faults::Faults> {
        &self.faults
    }

    /// Replaces the faults in force on this node (network, HLC clock, disk); returns them.
    pub(crate) fn inject_faults(
        &self,
        spec: crate::faults::FaultSpec,
    ) -> Result<Arc<crate::faults::FaultSpec>, crate::faults::FaultsError> {
        self.faults.replace(spec, &self.engine)
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// This node's HLC now (NTP64).
    pub fn hlc_now(&self) -> u64 {
        Stamp::from_uhlc(&self.hlc.new_timestamp()).time
    }

    /// Moves this node's HLC past a remote node's time (NTP64); refused when that time is
    /// beyond `max_clock_drift_ms` ahead of this node's clock.
    pub fn observe_remote_time(&self, time: u64, from: NodeId) -> Result<(), String> {
        self.hlc.update_with_timestamp(&Stamp::new(time, from).to_uhlc()).map_err(|e| e.to_string())
    }

    /// A fresh HLC stamp newer than `current`'s version.
    pub(crate) fn stamp_after(&self, current: Option<&Record>) -> Stamp {
        stamp_after(&self.hlc, self.id, current)
    }

    /// The key's state if a client reading at `now` sees it (not absent, deleted or expired).
    /// Render the answer with the same `now`, so a TTL running out in between cannot produce a
    /// half-visible entry.
    pub fn get(&self, key: &[u8], now: u64) -> Result<Option<Record>, NodeError> {
        self.limits.check_key(key)?;
        Ok(self.engine.get(key)?.filter(|r| r.is_visible(now)))
    }

    /// [`Node::get`] if memory alone can answer (no disk read, so it may run on an async
    /// worker); `None` otherwise.
    pub fn get_cached(&self, key: &[u8], now: u64) -> Option<Result<Option<Record>, NodeError>> {
        if let Err(e) = self.limits.check_key(key) {
            return Some(Err(e.into()));
        }
        match self.engine.get_cached(key) {
            Ok(Some(found)) => Some(Ok(found.filter(|r| r.is_visible(now)))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// One page of live keys in byte order.
    pub fn scan(&self, req: &ScanRequest) -> Result<ScanResult, NodeError> {
        let (start, limit) = self.scan_bounds(req)?;
        let now = self.now_ms();
        let size = |key: &[u8], r: &Record| r.view(now).map(|v| key.len() + view_bytes(&v) + 32);
        let page = self.engine.scan(&start, &req.prefix, limit, self.limits.max_response_bytes, size)?;
        Ok(ScanResult { items: page.items, now, next_page_token: page_token(page.resume_after) })
    }

    /// This replica's states (tombstones and expired keys included) from `start`, for a
    /// cluster-wide scan that merges them across replicas. (Sizes for the page budget are
    /// estimated from the value as it would be read at time 0, i.e. ignoring TTLs.) Keys
    /// `keep` refuses are stepped over.
    pub fn scan_states(
        &self,
        start: &[u8],
        prefix: &[u8],
        limit: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<geokv_storage::ScanPage, NodeError> {
        let size = |key: &[u8], r: &Record| {
            keep(key).then(|| key.len() + r.view(0).map(|v| view_bytes(&v)).unwrap_or(0) + 64)
        };
        self.engine.scan(start, prefix, limit, self.limits.max_response_bytes, size)
    }

    /// Checks a scan request and returns the key to start from and the page size.
    pub fn scan_bounds(&self, req: &ScanRequest) -> Result<(Vec<u8>, usize), NodeError> {
        let limit = match req.limit as usize {
            0 => DEFAULT_SCAN_LIMIT.min(self.limits.max_scan_limit),
            n if n > self.limits.max_scan_limit => {
                return Err(CoreError::TooMany {
                    what: "scan limit",
                    actual: n,
                    limit: self.limits.max_scan_limit,
                    setting: "limits.max_scan_limit",
                }
                .into())
            }
            n => n,
        };
        for (what, k) in [("prefix", &req.prefix), ("start_key", &req.start_key)] {
            if k.len() > self.limits.max_key_bytes {
                return Err(CoreError::TooLarge {
                    what,
                    actual: k.len(),
                    limit: self.limits.max_key_bytes,
                    setting: "limits.max_key_bytes",
                }
                .into());
            }
        }
        let start = if req.page_token.is_empty() { req.start_key.clone() } else { self.resume_after(req)? };
        Ok((start, limit))
    }

    /// The first key after the one a page token names.
    fn resume_after(&self, req: &ScanRequest) -> Result<Vec<u8>, NodeError> {
        let bad = |why: &str| {
            CoreError::InvalidArgument(format!("page_token is not valid ({why}); pass the next_page_token of the previous ScanResponse unchanged, with the same prefix"))
        };
        let (version, last) = req.page_token.split_first().ok_or_else(|| bad("empty"))?;
        if *version != PAGE_TOKEN_V1 {
            return Err(bad("unknown version").into());
        }
        if !last.starts_with(&req.prefix) {
            return Err(bad("it belongs to another prefix").into());
        }
        if last.len() > self.limits.max_key_bytes {
            return Err(bad("too long").into());
        }
        let mut start = last.to_vec();
        start.push(0);
        Ok(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> Node {
        Node::open(&ServerConfig::new(1, dir.to_path_buf()), Arc::new(crate::SystemClock)).unwrap()
    }

    #[test]
    fn a_new_data_directory_recovers_under_a_new_actor_and_a_restart_keeps_both() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path());
        assert!(first.recovering().unwrap(), "a new directory starts recovering");
        let actor = first.actor();
        drop(first);
        // A restart during recovery recovers again, under the same actor.
        let again = open(dir.path());
        assert!(again.recovering().unwrap());
        assert_eq!(again.actor(), actor);
        again.set_recovered().unwrap();
        drop(again);
        let recovered = open(dir.path());
        assert!(!recovered.recovering().unwrap(), "the end of recovery is saved");
        assert_eq!(recovered.actor(), actor);
        drop(recovered);
        // The disk is wiped: a new actor (its old dots may be gone), and recovery again.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let wiped = open(dir.path());
        assert!(wiped.recovering().unwrap());
        assert_ne!(wiped.actor(), actor);
    }

    #[test]
    fn a_restored_directory_recovers_under_a_new_actor_and_a_half_restored_one_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path());
        first.set_recovered().unwrap();
        let actor = first.actor();
        first.engine().put_hint(9, b"k", &geokv_core::Record::default()).unwrap();
        drop(first);
        prepare_restored(dir.path(), 1, false).unwrap();
        let restored = open(dir.path());
        assert!(restored.recovering().unwrap() && restored.restored().unwrap());
        assert_ne!(restored.actor(), actor, "a restored directory writes as a new actor");
        assert_eq!(restored.engine().hint_count(), 0, "its hints are dropped");
        restored.set_recovered().unwrap();
        drop(restored);
        // Restored for its region only: recovering, but not waiting for other regions.
        prepare_restored(dir.path(), 1, true).unwrap();
        let local = open(dir.path());
        assert!(local.recovering().unwrap() && !local.restored().unwrap());
        drop(local);
        std::fs::write(dir.path().join(RESTORE_MARKER), b"").unwrap();
        let err = Node::open(&ServerConfig::new(1, dir.path().to_path_buf()), Arc::new(crate::SystemClock))
            .err()
            .expect("a directory a restore did not finish does not open");
        assert!(err.to_string().contains("did not finish"), "{err}");
    }
}
