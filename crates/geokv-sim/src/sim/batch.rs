//! Client batches on the simulated node, as the server runs them: each item is its own write
//! (or read) with its own coordinator and answer; a batch write runs a key's items one after
//! another in the client's order and different keys at once (`geokv_protocol::batch`); a
//! batch read reads every key at once. The batch is answered when every item is.

use std::collections::{BTreeMap, VecDeque};

use geokv_cluster::Level;
use geokv_protocol::Action;

use super::drive::Reply;
use super::node::{Answer, Ctx, Key, Msg, Node};
use super::{Addr, Bug};

/// A client batch this node runs.
pub(crate) struct ClientBatch {
    client: Addr,
    id: u64,
    level: Level,
    /// A batch write's items still to start, per key (each key's next item starts when the
    /// one before it is answered).
    waiting: BTreeMap<Key, VecDeque<(usize, Action)>>,
    /// Which key each item belongs to.
    keys: Vec<Key>,
    answers: Vec<Option<Answer>>,
}

impl Node {
    pub(crate) fn start_batch_write(
        &mut self,
        client: Addr,
        id: u64,
        items: Vec<(Key, Action)>,
        level: Level,
        ctx: &mut Ctx,
    ) {
        let keys = items.iter().map(|(k, _)| k.clone()).collect();
        let mut waiting: BTreeMap<Key, VecDeque<(usize, Action)>> = BTreeMap::new();
        for (key, mut queue) in geokv_protocol::batch::by_key(items) {
            // Planted bug: a key's items run in the reverse of the client's order.
            if ctx.bug == Some(Bug::BatchReversed) {
                queue.reverse();
            }
            waiting.insert(key, queue.into());
        }
        let n = waiting.values().map(VecDeque::len).sum();
        let batch = self.next();
        let first: Vec<Key> = waiting.keys().cloned().collect();
        self.client_batches
            .insert(batch, ClientBatch { client, id, level, waiting, keys, answers: vec![None; n] });
        for key in first {
            self.next_item(batch, &key, ctx);
        }
    }

    pub(crate) fn start_batch_get(
        &mut self,
        client: Addr,
        id: u64,
        keys: Vec<Key>,
        level: Level,
        ctx: &mut Ctx,
    ) {
        let batch = self.next();
        let n = keys.len();
        let b = ClientBatch {
            client,
            id,
            level,
            waiting: BTreeMap::new(),
            keys: keys.clone(),
            answers: vec![None; n],
        };
        self.client_batches.insert(batch, b);
        for (index, key) in keys.into_iter().enumerate() {
            self.start_read(Reply::Item { batch, index }, key, level, ctx);
        }
    }

    /// Starts the next item of `key` in batch `batch`, if any.
    fn next_item(&mut self, batch: u64, key: &[u8], ctx: &mut Ctx) {
        let Some(b) = self.client_batches.get_mut(&batch) else { return };
        let Some((index, action)) = b.waiting.get_mut(key).and_then(VecDeque::pop_front) else { return };
        let level = b.level;
        self.start_write(Reply::Item { batch, index }, key.to_vec(), action, level, ctx);
    }

    /// Item `index` of batch `batch` was answered: the key's next item starts; the last
    /// answer answers the batch.
    pub(crate) fn item_done(&mut self, batch: u64, index: usize, answer: Answer, ctx: &mut Ctx) {
        let Some(b) = self.client_batches.get_mut(&batch) else { return };
        b.answers[index] = Some(answer);
        let key = b.keys[index].clone();
        self.next_item(batch, &key, ctx);
        let Some(b) = self.client_batches.get(&batch) else { return };
        if b.answers.iter().all(Option::is_some) {
            let b = self.client_batches.remove(&batch).expect("the batch is under way");
            let answers = b.answers.into_iter().flatten().collect();
            ctx.sends.push((b.client, Msg::BatchResp { id: b.id, answers }, self.disk_delay_ms));
        }
    }
}
