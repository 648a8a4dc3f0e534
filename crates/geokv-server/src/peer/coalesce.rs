//! Calls to one peer, coalesced: the replica states a node sends a peer (`Merge`) and the
//! states it asks a peer for (`Fetch`) while earlier calls are in flight go together in one
//! `MergeMany` / `FetchMany` call, so under load a request's share of a peer call is a
//! fraction (each call costs both nodes framing, a dispatch, a task and, for a merge, a commit
//! of its own). A call with nothing in front of it goes out at once, alone, as a plain `Merge`
//! or `Fetch`: coalescing adds no wait.
//!
//! A peer that does not know the `...Many` calls (an older version, during a rolling upgrade)
//! answers UNIMPLEMENTED: the items go again one by one, and the queue makes single calls to
//! that peer for a minute before it tries again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use geokv_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::{Code, Status};

use super::client::PeerClient;
use crate::faults::Faults;

/// Calls in flight to one peer at most, per kind, by default (`cluster.peer_calls_in_flight`);
/// items queue behind them and go in the next.
pub const CALLS_IN_FLIGHT: usize = 1;
/// Most bytes of items in one call (a call may pass it by one item).
const MAX_BYTES: usize = 1 << 20;
/// How long a peer that answered UNIMPLEMENTED gets single calls.
const SINGLE_FOR: Duration = Duration::from_secs(60);

/// One kind of call that can be coalesced: the single call, the many call, and how big an item
/// is.
pub trait Kind: Send + Sync + 'static {
    type Req: Clone + Send + 'static;
    type Resp: Send + 'static;
    /// The `rpc` label of its metrics.
    const RPC: &'static str;
    /// Most items in one call.
    const MAX_ITEMS: usize;
    fn bytes(req: &Self::Req) -> usize;
    fn one(client: PeerClient, req: Self::Req) -> BoxFuture<'static, Result<Self::Resp, Status>>;
    /// One answer per item, in order (a count that does not match is the peer's error).
    fn many(
        client: PeerClient,
        reqs: Vec<Self::Req>,
    ) -> BoxFuture<'static, Result<Vec<ItemAnswer<Self::Resp>>, Status>>;
    /// Whether injected duplication applies (replica state sends).
    const DUPLICABLE: bool;
}

/// One item's answer in a many call: the response, or the status the single call would have
/// failed with.
pub type ItemAnswer<R> = Result<R, Status>;

/// `Merge` / `MergeMany`.
pub struct Merges;

impl Kind for Merges {
    type Req = pb::MergeRequest;
    type Resp = pb::MergeResponse;
    const RPC: &'static str = "merge";
    const MAX_ITEMS: usize = 128;
    const DUPLICABLE: bool = true;

    fn bytes(req: &Self::Req) -> usize {
        req.key.len() + req.state.len()
    }

    fn one(mut client: PeerClient, req: Self::Req) -> BoxFuture<'static, Result<Self::Resp, Status>> {
        Box::pin(async move { client.merge(req).await.map(tonic::Response::into_inner) })
    }

    fn many(
        mut client: PeerClient,
        items: Vec<Self::Req>,
    ) -> BoxFuture<'static, Result<Vec<ItemAnswer<Self::Resp>>, Status>> {
        Box::pin(async move {
            let resp = client.merge_many(pb::MergeManyRequest { items }).await?.into_inner();
            Ok(resp
                .results
                .into_iter()
                .map(|r| match r.code {
                    0 => Ok(pb::MergeResponse { changed: r.changed }),
                    code => Err(item_status(code, r.message, &r.failure, r.details)),
                })
                .collect())
        })
    }
}

/// `Fetch` / `FetchMany`.
pub struct Fetches;

impl Kind for Fetches {
    type Req = pb::FetchRequest;
    type Resp = pb::FetchResponse;
    const RPC: &'static str = "fetch";
    /// The answers carry states of up to `limits.max_record_bytes` each (16 MiB by default):
    /// few per call keeps an answer far below the peer clients' 512 MiB message limit.
    const MAX_ITEMS: usize = 16;
    const DUPLICABLE: bool = false;

    fn bytes(req: &Self::Req) -> usize {
        req.key.len()
    }

    fn one(mut client: PeerClient, req: Self::Req) -> BoxFuture<'static, Result<Self::Resp, Status>> {
        Box::pin(async move { client.fetch(req).await.map(tonic::Response::into_inner) })
    }

    fn many(
        mut client: PeerClient,
        items: Vec<Self::Req>,
    ) -> BoxFuture<'static, Result<Vec<ItemAnswer<Self::Resp>>, Status>> {
        Box::pin(async move {
            let resp = client.fetch_many(pb::FetchManyRequest { items }).await?.into_inner();
            Ok(resp
                .results
                .into_iter()
                .map(|r| match r.code {
                    0 => Ok(pb::FetchResponse { state: r.state }),
                    code => Err(item_status(code, r.message, &r.failure, r.details)),
                })
                .collect())
        })
    }
}

/// The status the single call would have failed with (code, message, `geokv-failure`, and
/// its error details).
pub fn item_status(code: i32, message: String, failure: &str, details: Vec<u8>) -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    if !failure.is_empty() {
        if let Ok(value) = failure.parse() {
            metadata.insert(crate::api::status::FAILURE_METADATA, value);
        }
    }
    Status::with_details_and_metadata(Code::from(code), message, details.into(), metadata)
}

/// What a many call's item carries when the single call failed: (code, message, failure,
/// details).
pub fn item_failure(status: &Status) -> (i32, String, String, Vec<u8>) {
    let failure = status.metadata().get(crate::api::status::FAILURE_METADATA);
    let failure = failure.and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status.code() as i32, status.message().to_owned(), failure, status.details().to_vec())
}

/// The node's counters of coalesced calls (`geokv_peer_items_total`, ...).
#[derive(Clone)]
pub struct CallCounters {
    items: prometheus::IntCounterVec,
    calls: prometheus::IntCounterVec,
}

impl From<&crate::ops::metrics::Metrics> for CallCounters {
    fn from(m: &crate::ops::metrics::Metrics) -> Self {
        CallCounters { items: m.peer_items.clone(), calls: m.peer_many_calls.clone() }
    }
}

/// [`CallCounters`] of one kind of call.
#[derive(Clone)]
pub struct Counters {
    alone: prometheus::IntCounter,
    coalesced: prometheus::IntCounter,
    calls: prometheus::IntCounter,
}

impl Counters {
    pub fn of<K: Kind>(c: &CallCounters) -> Self {
        Counters {
            alone: c.items.with_label_values(&[K::RPC, "single"]),
            coalesced: c.items.with_label_values(&[K::RPC, "many"]),
            calls: c.calls.with_label_values(&[K::RPC]),
        }
    }
}

struct Queued<K: Kind> {
    req: K::Req,
    done: oneshot::Sender<Result<K::Resp, Status>>,
    /// The request id of the caller's request (sent with the call; a coalesced call carries
    /// its first item's).
    id: Option<String>,
}

/// The queue of one kind of call to one peer (see the module's documentation).
pub struct Queue<K: Kind> {
    /// Items sent together ([`Queue::call_all`]) arrive together, so they go in the same calls.
    tx: mpsc::UnboundedSender<Vec<Queued<K>>>,
}

impl<K: Kind> Clone for Queue<K> {
    fn clone(&self) -> Self {
        Queue { tx: self.tx.clone() }
    }
}

/// What the queue's task shares with the calls it starts.
struct Link {
    client: PeerClient,
    faults: Arc<Faults>,
    timeout: Duration,
    counters: Counters,
    /// Until when (ms since `epoch`) the peer gets single calls; 0: many calls.
    single_until_ms: AtomicU64,
    epoch: Instant,
}

impl<K: Kind> Queue<K> {
    /// Starts the queue's task (on the current tokio runtime) for the peer `client` calls.
    pub fn start(
        client: PeerClient,
        faults: Arc<Faults>,
        timeout: Duration,
        in_flight: usize,
        counters: Counters,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Queued<K>>>();
        let (single_until_ms, epoch) = (AtomicU64::new(0), Instant::now());
        let link = Arc::new(Link { client, faults, timeout, counters, single_until_ms, epoch });
        let calls = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            // Items received and not yet sent, oldest first.
            let mut waiting: VecDeque<Queued<K>> = VecDeque::new();
            loop {
                let Ok(permit) = calls.clone().acquire_owned().await else { return };
                // Items whose caller gave up (timed out, went away) are not sent.
                let first = loop {
                    match waiting.pop_front() {
                        Some(q) if q.done.is_closed() => continue,
                        Some(q) => break q,
                        None => match rx.recv().await {
                            Some(items) => waiting.extend(items),
                            None => return,
                        },
                    }
                };
                let mut bytes = K::bytes(&first.req);
                let mut batch = vec![first];
                while batch.len() < K::MAX_ITEMS && bytes < MAX_BYTES {
                    let next = match waiting.pop_front() {
                        Some(q) => q,
                        None => match rx.try_recv() {
                            Ok(items) => {
                                waiting.extend(items);
                                continue;
                            }
                            Err(_) => break,
                        },
                    };
                    if next.done.is_closed() {
                        continue;
                    }
                    bytes += K::bytes(&next.req);
                    batch.push(next);
                }
                let link = link.clone();
                let id = batch[0].id.clone();
                tokio::spawn(crate::trace::scoped(id, async move {
                    link.send::<K>(batch).await;
                    drop(permit);
                }));
            }
        });
        Queue { tx }
    }

    /// Makes calls queued together: they go in as few many calls as their sizes allow, never
    /// split by other callers' items. The peer's answers (or why there are none), in order.
    pub async fn call_all(&self, reqs: Vec<K::Req>) -> Vec<Result<K::Resp, Status>> {
        let id = crate::trace::current();
        let (items, answers): (Vec<_>, Vec<_>) = reqs
            .into_iter()
            .map(|req| {
                let (done, answer) = oneshot::channel();
                (Queued { req, done, id: id.clone() }, answer)
            })
            .unzip();
        let closed = self.tx.send(items).is_err();
        let answers = answers.into_iter().map(|answer| async move {
            if closed {
                return Err(Status::unavailable("the call queue to this peer is closed"));
            }
            answer.await.unwrap_or_else(|_| Err(Status::unavailable("the call to this peer was abandoned")))
        });
        futures::future::join_all(answers).await
    }
}

impl Link {
    async fn send<K: Kind>(&self, batch: Vec<Queued<K>>) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if batch.len() == 1 || now_ms < self.single_until_ms.load(Ordering::Relaxed) {
            return self.one_by_one(batch).await;
        }
        let reqs: Vec<K::Req> = batch.iter().map(|q| q.req.clone()).collect();
        if K::DUPLICABLE && self.faults.duplicates() {
            // Injected duplication: the whole call goes out a second time, on its own.
            let (copy, client, deadline) = (reqs.clone(), self.client.clone(), self.timeout);
            tokio::spawn(async move { drop(tokio::time::timeout(deadline, K::many(client, copy)).await) });
        }
        let answered = match tokio::time::timeout(self.timeout, K::many(self.client.clone(), reqs)).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(format!("{} timed out", K::RPC))),
        };
        match answered {
            Ok(answers) if answers.len() == batch.len() => {
                self.counters.calls.inc();
                self.counters.coalesced.inc_by(batch.len() as u64);
                for (q, answer) in batch.into_iter().zip(answers) {
                    let _ = q.done.send(answer);
                }
            }
            Ok(answers) => {
                let status =
                    Status::internal(format!("the peer answered {} items of {}", answers.len(), batch.len()));
                batch.into_iter().for_each(|q| drop(q.done.send(Err(status.clone()))));
            }
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::info!(
                    rpc = K::RPC,
                    "a peer does not serve coalesced calls (an older version); calling it one by one"
                );
                let until = self.epoch.elapsed() + SINGLE_FOR;
                self.single_until_ms.store(until.as_millis() as u64, Ordering::Relaxed);
                self.one_by_one(batch).await;
            }
            Err(status) => batch.into_iter().for_each(|q| drop(q.done.send(Err(status.clone())))),
        }
    }

    /// Each item in its own call, concurrently. With injected duplication a state may go out a
    /// second time, on its own (merges are idempotent: the duplicate must change nothing).
    async fn one_by_one<K: Kind>(&self, batch: Vec<Queued<K>>) {
        self.counters.alone.inc_by(batch.len() as u64);
        let calls = batch.into_iter().map(|q| {
            crate::trace::scoped(q.id.clone(), async move {
                if K::DUPLICABLE && self.faults.duplicates() {
                    let (copy, client, deadline) = (q.req.clone(), self.client.clone(), self.timeout);
                    tokio::spawn(
                        async move { drop(tokio::time::timeout(deadline, K::one(client, copy)).await) },
                    );
                }
                let answer =
                    match tokio::time::timeout(self.timeout, K::one(self.client.clone(), q.req)).await {
                        Ok(r) => r,
                        Err(_) => Err(Status::deadline_exceeded(format!("{} timed out", K::RPC))),
                    };
                let _ = q.done.send(answer);
            })
        });
        futures::future::join_all(calls).await;
    }
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;
