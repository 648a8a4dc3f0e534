//! A node's writes: client operations stamped by its HLC, replica merges, batches and
//! compare-and-swap. The asynchronous ones go through the engine's writer thread (group
//! commit, awaited without blocking); the others block and run on tokio's blocking pool.

use futures::future::BoxFuture;
use futures::FutureExt;
use geokv_core::{apply_as, CoreError, Crdt, Expect, Op, OpOutcome, Record};
use geokv_storage::{Pending, StorageError, Update};

use super::{stamp_after, Node, NodeError};

/// A client write to commit on this node: its operation, and the state a first read found
/// for the key (`base`, merged into this node's state in the same commit, before the
/// operation applies).
#[derive(Debug, Clone)]
pub struct LocalWrite {
    pub key: Vec<u8>,
    pub base: Option<Record>,
    pub op: Op,
}

impl Node {
    /// Applies a client write. Returns what it did and the key's new state.
    pub fn write(&self, key: &[u8], op: &Op) -> Result<(OpOutcome, Record), NodeError> {
        self.limits.check_key(key)?;
        op.validate(&self.limits)?;
        self.engine.update(key, |current| {
            let stamp = self.stamp_after(current);
            let applied = apply_as(current, op, stamp, self.actor(), self.now_ms(), &self.limits)?;
            Ok(stored(applied))
        })
    }

    /// [`Node::write`] through the engine's writer thread: committed in a group with the other
    /// writes and merges queued at the same time (one WAL sync), awaited without blocking.
    pub async fn write_async(&self, key: Vec<u8>, op: Op) -> Result<(OpOutcome, Record), NodeError> {
        self.write_on(LocalWrite { key, base: None, op }).await
    }

    /// [`Node::write_async`] on this node's state merged with `write.base` (the state the
    /// write's first read found), in one commit.
    pub async fn write_on(&self, write: LocalWrite) -> Result<(OpOutcome, Record), NodeError> {
        let mut answers = self.write_all(vec![write]);
        answers.pop().expect("one answer per write").await
    }

    /// Client writes handed to the engine's writer thread together: committed in one group
    /// (one WAL sync), in order, each succeeding or failing on its own. Each applies to this
    /// node's state merged with its `base`; a base stamped too far ahead of this node's clock
    /// is refused (as a merge is), and nothing of that write is stored.
    pub fn write_all(
        &self,
        writes: Vec<LocalWrite>,
    ) -> Vec<BoxFuture<'static, Result<(OpOutcome, Record), NodeError>>> {
        let refused = |e: NodeError| -> BoxFuture<'static, Result<(OpOutcome, Record), NodeError>> {
            futures::future::ready(Err(e)).boxed()
        };
        let mut batch = self.commits.batch();
        let answers = writes
            .into_iter()
            .map(|LocalWrite { key, base, op }| {
                let checked = self.limits.check_key(&key).and_then(|_| op.validate(&self.limits));
                if let Err(e) = checked {
                    return refused(e.into());
                }
                if let Some(base) = &base {
                    if let Err(e) = self.engine.check_stamps(&key, base) {
                        return refused(e);
                    }
                }
                // The decision runs on the writer thread: it takes what it needs, not the node.
                let (hlc, id, actor, clock, limits) =
                    (self.hlc.clone(), self.id, self.actor.clone(), self.clock.clone(), self.limits.clone());
                batch
                    .submit(key, move |current| {
                        let merged = with_base(current, base);
                        let current = merged.as_ref().map_or(current, |(m, _)| Some(m));
                        let stamp = stamp_after(&hlc, id, current);
                        // The actor as of the decision (a renewal in between is seen, as in `write`).
                        let actor = actor.load(std::sync::atomic::Ordering::SeqCst);
                        let applied = apply_as(current, &op, stamp, actor, clock.now_ms(), &limits)?;
                        let mut update = stored(applied);
                        if update.record.is_none() {
                            // The operation changed nothing; what the base brought is kept.
                            update.record = merged.and_then(|(m, changed)| changed.then_some(m));
                        }
                        Ok(update)
                    })
                    .boxed()
            })
            .collect();
        batch.commit();
        answers
    }

    /// [`Engine::merge_as`] through the engine's writer thread (see [`Node::write_async`]):
    /// whether this node's state of `key` changed.
    pub async fn merge_async(&self, key: Vec<u8>, state: Record, ship: bool) -> Result<bool, NodeError> {
        self.commits.merge(key, state, ship).await
    }

    /// Replica states `(key, state, ship)` merged through the writer thread together, in one
    /// group (a `MergeMany`): whether each changed this node's state.
    pub fn merge_all(&self, states: Vec<(Vec<u8>, Record, bool)>) -> Vec<Pending<bool>> {
        let mut batch = self.commits.batch();
        let answers = states.into_iter().map(|(key, state, ship)| batch.merge(key, state, ship)).collect();
        batch.commit();
        answers
    }

    /// Applies many client writes, committed together in one `WriteBatch` (one WAL sync).
    /// Each item succeeds or fails on its own; invalid items touch nothing.
    /// Items that did not even parse come in as errors and keep their place in the answer.
    pub fn write_batch(
        &self,
        items: Vec<Result<(Vec<u8>, Op), CoreError>>,
    ) -> Vec<Result<(OpOutcome, Record), NodeError>> {
        let mut results: Vec<Option<Result<(OpOutcome, Record), NodeError>>> =
            Vec::with_capacity(items.len());
        let mut valid_keys = Vec::new();
        let mut valid_ops = Vec::new();
        let mut slots = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let checked = item.and_then(|(key, op)| {
                self.limits.check_key(&key).and_then(|_| op.validate(&self.limits)).map(|_| (key, op))
            });
            match checked {
                Ok((key, op)) => {
                    valid_keys.push(key);
                    valid_ops.push(op);
                    slots.push(i);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e.into()))),
            }
        }
        let applied = self.engine.update_many(&valid_keys, |i, current| {
            let stamp = self.stamp_after(current);
            let applied = apply_as(current, &valid_ops[i], stamp, self.actor(), self.now_ms(), &self.limits)?;
            Ok(stored(applied))
        });
        match applied {
            Ok(outs) => {
                for (slot, out) in slots.into_iter().zip(outs) {
                    results[slot] = Some(out);
                }
            }
            Err(e) => {
                let message = e.to_string();
                for slot in slots {
                    results[slot] = Some(Err(StorageError::BatchFailed(message.clone())));
                }
            }
        }
        results.into_iter().map(|r| r.expect("every item has a result")).collect()
    }

    /// Sets a register if `expect` holds at `now`. Returns whether it swapped, and the key's
    /// state after a swap or the mismatching state (None if absent) after a conflict.
    pub fn compare_and_swap(
        &self,
        key: &[u8],
        expect: Expect,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        now: u64,
    ) -> Result<(bool, Option<Record>), NodeError> {
        self.limits.check_key(key)?;
        let op = Op::Put { value, ttl_ms };
        op.validate(&self.limits)?;
        self.engine.update(key, |current| {
            let (holds, visible) = geokv_core::cas_holds(current, expect, now)?;
            if !holds {
                return Ok(Update { record: None, out: (false, visible.cloned()) });
            }
            let applied = apply_as(current, &op, self.stamp_after(current), self.actor(), now, &self.limits)?;
            let record = applied.record.clone();
            Ok(Update { record: Some(applied.record), out: (true, Some(record)) })
        })
    }
}

/// What the engine stores for a client write, and what the write answers: the new state, or
/// nothing when the operation changed nothing (an Expire of an absent key: no version, no
/// change-log entry, nothing to replicate).
fn stored(applied: geokv_core::Applied) -> Update<(OpOutcome, Record)> {
    let record = (!applied.outcome.changes_nothing()).then(|| applied.record.clone());
    Update { record, out: (applied.outcome, applied.record) }
}

/// `current` merged with a write's `base`, and whether that changed it; `None` without a base.
fn with_base(current: Option<&Record>, base: Option<Record>) -> Option<(Record, bool)> {
    let base = base?;
    Some(match current {
        Some(cur) => {
            let mut merged = cur.clone();
            merged.merge(&base);
            let changed = &merged != cur;
            (merged, changed)
        }
        None => (base, true),
    })
}

#[cfg(test)]
#[path = "writes_tests.rs"]
mod tests;
