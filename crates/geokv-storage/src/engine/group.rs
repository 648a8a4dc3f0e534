//! Group commit: one thread commits the key changes that callers hand it, as many as are
//! waiting at once in one `WriteBatch` (one WAL write and, with `storage.sync`, one fsync).
//!
//! [`Engine::update`] commits each call on its caller's thread: with 50 clients that is 50
//! blocking threads, each parked in RocksDB's write group while a leader syncs for them, then
//! woken, then handing the answer back to an async worker. [`GroupCommit::submit`] instead
//! queues the change and returns a future: the writer thread takes everything queued, reads
//! and decides each change in order (a later change of the same key sees the earlier one),
//! commits them together, and only then answers each caller, so nothing is acknowledged (or
//! served from a decision) before it is durable. A caller on an async worker never blocks.
//!
//! The writer holds the stripe locks of its group's keys from the read to the end of the
//! commit, like [`Engine::update`] does for one key, so the engine's other writers (purges,
//! erasure, [`Engine::update`] itself) never interleave with it. Readers take no locks.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};

use futures::channel::oneshot;
use geokv_core::{CoreError, Crdt, Record};

use super::{lock, Change, Engine, Update};
use crate::StorageError;

/// Most changes one group commits.
const MAX_GROUP: usize = 512;

/// What happens to a change's caller once its group is committed (or failed).
type Finish = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// Decides a key's new state from its current one (or is told why it cannot), and returns
/// how to answer the caller once the group's commit is known.
type Decide = Box<dyn FnOnce(Result<Option<&Record>, StorageError>) -> (Option<Record>, Finish) + Send>;

struct Job {
    key: Vec<u8>,
    /// The change-log entry is for the replicator (see [`super::LogEntry::ship`]).
    ship: bool,
    /// A replica's state merged in: a corrupt stored state is replaced, and the result may be
    /// over `max_record_bytes` (as in [`Engine::merge`]).
    merge: bool,
    decide: Decide,
}

/// The writer thread of an [`Engine`]: see the module's documentation. Dropping it lets the
/// thread finish what is queued and waits for it.
pub struct GroupCommit {
    engine: Arc<Engine>,
    /// Jobs handed over together (a [`Batch`]) arrive together, so they go in one group.
    tx: Option<mpsc::Sender<Vec<Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A queued change's answer: a future, or [`Pending::wait`] from a thread that may block.
pub struct Pending<T>(oneshot::Receiver<Result<T, StorageError>>);

impl<T> std::future::Future for Pending<T> {
    type Output = Result<T, StorageError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or_else(|_| Err(writer_gone())))
    }
}

impl<T> Pending<T> {
    /// Blocks until the change is committed or refused. Never call it on an async worker.
    pub fn wait(self) -> Result<T, StorageError> {
        futures::executor::block_on(self)
    }
}

/// The answer of a change whose group ended without answering it: a bug caught in the writer
/// (the change may have been committed), or the node shutting down.
fn writer_gone() -> StorageError {
    StorageError::Io {
        path: "storage writer".into(),
        reason: "the change was not answered (the node is shutting down, or the writer failed); it may or may not be stored".into(),
    }
}

impl GroupCommit {
    /// Starts the writer thread of `engine`.
    pub fn start(engine: Arc<Engine>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Vec<Job>>();
        let writer = engine.clone();
        let thread = std::thread::Builder::new().name("geokv-commit".into()).spawn(move || {
            while let Ok(mut jobs) = rx.recv() {
                // A batch is never split; a group may pass MAX_GROUP by its last batch.
                while jobs.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(more) => jobs.extend(more),
                        Err(_) => break,
                    }
                }
                // A bug in a group fails that group's callers (their answers are dropped: see
                // `writer_gone`), not every later write of the node.
                if catch_unwind(AssertUnwindSafe(|| writer.commit_group(jobs))).is_err() {
                    tracing::error!(
                        "committing a group of changes panicked; its callers were told it failed"
                    );
                }
            }
        })?;
        Ok(GroupCommit { engine, tx: Some(tx), thread: Some(thread) })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// [`Engine::update`] through the writer thread: `f` decides the new state of `key` from
    /// its current one (on the writer thread, so it must not call the engine's writes), and
    /// the answer comes once the change is committed.
    pub fn submit<T: Send + 'static>(
        &self,
        key: Vec<u8>,
        f: impl FnOnce(Option<&Record>) -> Result<Update<T>, CoreError> + Send + 'static,
    ) -> Pending<T> {
        let mut batch = self.batch();
        let pending = batch.submit(key, f);
        batch.commit();
        pending
    }

    /// [`Engine::merge_as`] through the writer thread: merges a replica's state of `key`;
    /// resolves to whether this node's state changed.
    pub fn merge(&self, key: Vec<u8>, incoming: Record, ship: bool) -> Pending<bool> {
        let mut batch = self.batch();
        let pending = batch.merge(key, incoming, ship);
        batch.commit();
        pending
    }

    /// Changes to hand the writer together ([`Batch::commit`]): they are committed in one
    /// group, in the order they were added (a later change of a key sees the earlier one).
    pub fn batch(&self) -> Batch<'_> {
        Batch { commits: self, jobs: Vec::new() }
    }

    /// Hands jobs to the writer thread; if it is gone, answers their callers.
    fn send(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        if let Some(Err(mpsc::SendError(jobs))) = self.tx.as_ref().map(|tx| tx.send(jobs)) {
            for job in jobs {
                (job.decide)(Err(writer_gone())).1(Err(writer_gone()));
            }
        }
    }
}

/// Changes handed to the writer together: see [`GroupCommit::batch`]. Nothing is queued until
/// [`Batch::commit`] (a batch dropped uncommitted answers its callers that the writer is gone).
pub struct Batch<'a> {
    commits: &'a GroupCommit,
    jobs: Vec<Job>,
}

impl Batch<'_> {
    /// [`GroupCommit::submit`], in this batch.
    pub fn submit<T: Send + 'static>(
        &mut self,
        key: Vec<u8>,
        f: impl FnOnce(Option<&Record>) -> Result<Update<T>, CoreError> + Send + 'static,
    ) -> Pending<T> {
        self.queue(key, true, false, f)
    }

    /// [`GroupCommit::merge`], in this batch.
    pub fn merge(&mut self, key: Vec<u8>, incoming: Record, ship: bool) -> Pending<bool> {
        if let Err(e) = self.commits.engine.check_stamps(&key, &incoming) {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err(e));
            return Pending(rx);
        }
        self.queue(key, ship, true, move |current| {
            let merged = match current {
                Some(cur) => {
                    let mut m = cur.clone();
                    m.merge(&incoming);
                    m
                }
                None => incoming,
            };
            let changed = current != Some(&merged);
            Ok(Update { record: changed.then_some(merged), out: changed })
        })
    }

    /// Hands the batch's changes to the writer, to be committed in one group.
    pub fn commit(mut self) {
        self.commits.send(std::mem::take(&mut self.jobs));
    }

    fn queue<T: Send + 'static>(
        &mut self,
        key: Vec<u8>,
        ship: bool,
        merge: bool,
        f: impl FnOnce(Option<&Record>) -> Result<Update<T>, CoreError> + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = oneshot::channel::<Result<T, StorageError>>();
        let decide: Decide = Box::new(move |current| {
            let decided = current.and_then(|current| match catch_unwind(AssertUnwindSafe(|| f(current))) {
                Ok(decided) => decided.map_err(StorageError::from),
                Err(_) => Err(StorageError::BatchFailed("deciding the key's new state panicked".into())),
            });
            match decided {
                Ok(Update { record, out }) => {
                    let finish: Finish = Box::new(move |committed| {
                        let _ = tx.send(committed.map(|()| out));
                    });
                    (record, finish)
                }
                // Answered with the group, like every other change: a refusal may rest on an
                // earlier change of the same group, which must be committed first.
                Err(e) => {
                    let finish: Finish = Box::new(move |committed| {
                        let _ = tx.send(Err(committed.err().unwrap_or(e)));
                    });
                    (None, finish)
                }
            }
        });
        self.jobs.push(Job { key, ship, merge, decide });
        Pending(rx)
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            // Never wait for itself (the last owner of the engine's owner let go on it).
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// A key's state as the group read it, and its latest decided state in the group.
struct Slot {
    stored: Result<Option<Record>, StorageError>,
    latest: Option<(Record, Vec<u8>)>,
    ship: bool,
}

impl Engine {
    /// Reads, decides and commits one group of queued changes, then answers their callers.
    fn commit_group(&self, jobs: Vec<Job>) {
        let mut stripes: Vec<usize> = jobs.iter().map(|j| self.stripe_index(&j.key)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let guards: Vec<_> = stripes.iter().map(|&i| lock(&self.locks[i])).collect();
        let mut slots: std::collections::HashMap<Vec<u8>, Slot> = std::collections::HashMap::new();
        let mut order: Vec<Vec<u8>> = Vec::new();
        let mut finishes: Vec<Finish> = Vec::with_capacity(jobs.len());
        for job in jobs {
            if let Err(e) = self.admit(&job.key) {
                finishes.push((job.decide)(Err(e)).1);
                continue;
            }
            let slot = slots.entry(job.key.clone()).or_insert_with(|| Slot {
                stored: self.get(&job.key),
                latest: None,
                ship: false,
            });
            let current: Result<Option<&Record>, StorageError> = match (&slot.latest, &slot.stored) {
                (Some((rec, _)), _) => Ok(Some(rec)),
                (None, Ok(stored)) => Ok(stored.as_ref()),
                (None, Err(StorageError::Corrupt { key, reason })) if job.merge => {
                    self.corrupt_replaced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(key = %key, %reason, "replacing a corrupt stored state with a replica's state");
                    Ok(None)
                }
                (None, Err(e)) => Err(e.clone()),
            };
            let (record, finish) = match current {
                Ok(current) => {
                    let current = current.cloned();
                    (job.decide)(Ok(current.as_ref()))
                }
                Err(e) => (job.decide)(Err(e)),
            };
            let Some(new) = record else {
                // Nothing to store, but the answer may rest on this group's changes.
                finishes.push(finish);
                continue;
            };
            let before =
                slot.latest.as_ref().map(|(r, _)| r).or(slot.stored.as_ref().ok().and_then(|s| s.as_ref()));
            match self.serialize_checked(&job.key, &new, before, job.merge) {
                Ok(plain) => {
                    if slot.latest.is_none() {
                        order.push(job.key.clone());
                    }
                    slot.latest = Some((new, plain));
                    slot.ship |= job.ship;
                    finishes.push(finish);
                }
                Err(e) => finishes.push(Box::new(move |committed| finish(Err(committed.err().unwrap_or(e))))),
            }
        }
        let changes: Vec<Change<'_>> = order
            .iter()
            .map(|k| {
                let slot = &slots[k];
                let (new, plain) = slot.latest.as_ref().expect("ordered keys have a decided state");
                let old = slot.stored.as_ref().ok().and_then(|s| s.as_ref());
                (k.as_slice(), old, new, plain.clone())
            })
            .collect();
        let committed = self.commit_each(&changes, |i| slots[&order[i]].ship);
        drop(guards);
        match committed {
            Ok(()) => finishes.into_iter().for_each(|finish| finish(Ok(()))),
            Err(e) => finishes.into_iter().for_each(|finish| finish(Err(e.clone()))),
        }
    }
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
