//! A client over several nodes (those of one region, usually) that keeps working while nodes
//! restart: a request goes to the node that answered last, and when that node cannot be
//! reached, closes the connection under the request (it is shutting down), or is not serving
//! (UNAVAILABLE: not enough replicas reachable from it), the request goes to the next node, then around again after a pause,
//! until [`Failover::with_patience`] runs out.
//!
//! Reads are retried; so are puts, deletes, set adds and removes and TTL changes, at least once: a retry of
//! one that was applied before its answer was lost applies it again, which leaves the same
//! value unless another client wrote the key in between (then the retry wins). An increment
//! or an append carries a request id chosen once for all its attempts
//! ([`Client::increment_once`], [`Client::append_once`]), so it is retried like a put and
//! applies once however many of its attempts were applied; so is a batch whose every item may
//! run twice. Compare-and-swaps, and batches with an increment or append without an id, go to
//! another node only when they were certainly not applied (connecting failed, or the
//! coordinator said so): a second attempt of one that was applied would apply it again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{proto, Client, ClientError, Code, Result, Security};

/// How long a request keeps trying other nodes by default.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(10);
/// The pause after every node has failed once, before going around again.
const ROUND_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct Failover {
    nodes: std::sync::Arc<Vec<(String, Client)>>,
    current: std::sync::Arc<AtomicUsize>,
    patience: Duration,
}

/// Whether a failed request may go to another node: the node could not be reached, its
/// connection closed under the request (a node shutting down: the request was refused or
/// never sent), or it answered UNAVAILABLE.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Status(s) => s.code() == Code::Unavailable || s.connection_lost(),
        _ => false,
    }
}

/// Whether a batch item gives the same result when it runs twice (increments and appends
/// count once with a request id).
fn repeatable_item(op: &proto::WriteOp) -> bool {
    use proto::write_op::Op;
    match &op.op {
        Some(Op::Put(_) | Op::Delete(_) | Op::SetAdd(_) | Op::SetRemove(_) | Op::Expire(_)) => true,
        Some(Op::Increment(i)) => !i.request_id.is_empty(),
        Some(Op::Append(a)) => !a.request_id.is_empty(),
        None => false,
    }
}

/// Whether a failed request that may run twice (a read, a put, a delete, a set change) goes
/// to the next node: as [`retryable`], or its deadline passed (the node may hang).
fn repeatable(e: &ClientError) -> bool {
    retryable(e) || e.code() == Some(Code::DeadlineExceeded)
}

impl Failover {
    /// A client over `endpoints`, each with `security`; connections are made when needed, so
    /// nodes that are down now are no error.
    pub fn connect(endpoints: &[String], security: &Security) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(ClientError::Endpoint {
                endpoint: String::new(),
                message: "no endpoints given".into(),
            });
        }
        let nodes = endpoints
            .iter()
            .map(|e| Ok((e.clone(), Client::over(crate::grpc::lazy_channel(e, security)?, security)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Failover {
            nodes: std::sync::Arc::new(nodes),
            current: Default::default(),
            patience: DEFAULT_PATIENCE,
        })
    }

    /// Every request sends `level`.
    pub fn with_consistency(mut self, level: proto::Consistency) -> Self {
        let nodes = self.nodes.iter().map(|(e, c)| (e.clone(), c.clone().with_consistency(level))).collect();
        self.nodes = std::sync::Arc::new(nodes);
        self
    }

    /// Each attempt's deadline ([`Client::with_timeout`]): a node that hangs costs at most
    /// this much before the next is tried (for requests that may be sent again, increments
    /// included: their request id makes a second attempt count once).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        let nodes = self.nodes.iter().map(|(e, c)| (e.clone(), c.clone().with_timeout(timeout))).collect();
        self.nodes = std::sync::Arc::new(nodes);
        self
    }

    /// How long a request keeps going around the nodes (each is tried at least once).
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    pub(crate) fn patience(&self) -> Duration {
        self.patience
    }

    /// The node requests go to now failed outside a request: the next request starts at the
    /// next node.
    pub(crate) fn skip_current(&self) {
        let n = self.nodes.len();
        let _ = self.current.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |i| Some((i + 1) % n));
    }

    /// The endpoint requests go to now.
    pub fn current(&self) -> &str {
        &self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()].0
    }

    /// Runs `call` on the current node, and on the next ones while it fails in a way that may
    /// be retried.
    async fn run<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.run_if(repeatable, call).await
    }

    /// [`Failover::run`], retrying only the failures `may_retry` picks.
    pub(crate) async fn run_if<T, F, Fut>(&self, may_retry: fn(&ClientError) -> bool, call: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now().checked_add(self.patience);
        let n = self.nodes.len();
        let first = self.current.load(Ordering::Relaxed);
        // The last attempt whose outcome is unknown (it may have been applied): what the
        // caller is told if the attempts after it fail otherwise (say, no node reachable), so
        // that a write is never reported as certainly not applied when one attempt may have been.
        let mut uncertain: Option<(usize, ClientError)> = None;
        for attempt in 0usize.. {
            let i = (first + attempt) % n;
            let e = match call(self.nodes[i].1.clone()).await {
                Ok(v) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => e,
            };
            let patient = deadline.is_none_or(|d| Instant::now() < d);
            if retryable(&e) && !may_retry(&e) {
                // The node is not usable: the next request starts at the next one.
                self.current.store((i + 1) % n, Ordering::Relaxed);
            } else if may_retry(&e) && (attempt + 1 < n || patient) {
                // Every node is tried once, then again while patience lasts.
                self.current.store((i + 1) % n, Ordering::Relaxed);
                if !e.not_applied() {
                    uncertain = Some((i, e));
                }
                if (attempt + 1) % n == 0 {
                    tokio::time::sleep(ROUND_PAUSE).await;
                }
                continue;
            }
            return Err(match uncertain {
                Some((j, earlier)) if e.not_applied() => self.named(j, earlier),
                _ => self.named(i, e),
            });
        }
        unreachable!("the loop returns")
    }

    /// A failure to connect to node `i` (the channels connect when a request needs them) as
    /// the error that names it.
    fn named(&self, i: usize, e: ClientError) -> ClientError {
        match &e {
            ClientError::Status(s) if s.not_sent() => {
                ClientError::Connect { endpoint: self.nodes[i].0.clone(), message: s.message().to_string() }
            }
            _ => e,
        }
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<proto::Entry>> {
        self.run(|c| async move { c.get(key).await }).await
    }

    pub async fn batch_get(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<proto::Entry>>> {
        self.run(|c| {
            let keys = keys.clone();
            async move { c.batch_get(keys).await }
        })
        .await
    }

    pub async fn put(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<proto::PutResponse> {
        self.run(|c| async move { c.put(key, value, ttl).await }).await
    }

    pub async fn delete(&self, key: &[u8]) -> Result<proto::DeleteResponse> {
        self.run(|c| async move { c.delete(key).await }).await
    }

    pub async fn set_add(
        &self,
        key: &[u8],
        members: Vec<Vec<u8>>,
        ttl: Option<Duration>,
    ) -> Result<proto::SetChangeResponse> {
        self.run(|c| {
            let members = members.clone();
            async move { c.set_add(key, members, ttl).await }
        })
        .await
    }

    pub async fn set_remove(&self, key: &[u8], members: Vec<Vec<u8>>) -> Result<proto::SetChangeResponse> {
        self.run(|c| {
            let members = members.clone();
            async move { c.set_remove(key, members).await }
        })
        .await
    }

    /// See [`Client::expire`]; sent again like a put.
    pub async fn expire(&self, key: &[u8], ttl: Option<Duration>) -> Result<proto::ExpireResponse> {
        self.run(|c| async move { c.expire(key, ttl).await }).await
    }

    pub async fn set_members(&self, key: &[u8]) -> Result<proto::SetMembersResponse> {
        self.run(|c| async move { c.set_members(key).await }).await
    }

    /// An increment with a new request id, retried on the other nodes like a put: it counts
    /// once however many of its attempts were applied (see the module comment).
    pub async fn increment(
        &self,
        key: &[u8],
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<proto::IncrementResponse> {
        self.increment_once(key, delta, ttl, crate::new_request_id()).await
    }

    /// [`Client::increment_once`] with the caller's request id (to go on retrying after this
    /// call gave up, with the same id).
    pub async fn increment_once(
        &self,
        key: &[u8],
        delta: i64,
        ttl: Option<Duration>,
        id: crate::RequestId,
    ) -> Result<proto::IncrementResponse> {
        self.run(|c| async move { c.increment_once(key, delta, ttl, id).await }).await
    }

    /// An append with a new request id, retried on the other nodes like a put: its bytes are
    /// appended once however many of its attempts were applied.
    pub async fn append(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<proto::AppendResponse> {
        self.append_once(key, value, ttl, crate::new_request_id()).await
    }

    /// [`Client::append_once`] with the caller's request id (to go on retrying after this call
    /// gave up, with the same id).
    pub async fn append_once(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        id: crate::RequestId,
    ) -> Result<proto::AppendResponse> {
        self.run(|c| async move { c.append_once(key, value, ttl, id).await }).await
    }

    /// A compare-and-swap, sent to another node only when it was certainly not applied (a
    /// retry of one that was would find its own version and fail).
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<proto::Version>,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<proto::CompareAndSwapResponse> {
        self.run_if(ClientError::not_applied, |c| async move {
            c.compare_and_swap(key, expected, value, ttl).await
        })
        .await
    }

    /// A batch, retried on the other nodes like a put when every item may run twice (its
    /// increments and appends carry request ids), else sent to another node
    /// only when it was certainly not applied.
    pub async fn batch_write(&self, ops: Vec<proto::WriteOp>) -> Result<Vec<proto::WriteResult>> {
        let call = |c: Client| {
            let ops = ops.clone();
            async move { c.batch_write(ops).await }
        };
        if ops.iter().all(repeatable_item) {
            self.run(call).await
        } else {
            self.run_if(ClientError::not_applied, call).await
        }
    }

    /// One page of a scan (see [`Client::scan_page`]); a page token works on any node.
    pub async fn scan_page(
        &self,
        opts: &crate::ScanOptions,
        page_token: Vec<u8>,
    ) -> Result<proto::ScanResponse> {
        self.run(|c| {
            let token = page_token.clone();
            async move { c.scan_page(opts, token).await }
        })
        .await
    }

    /// Every entry of a scan, following pages to the end, each page on any node.
    pub async fn scan_all(&self, opts: &crate::ScanOptions) -> Result<Vec<proto::Entry>> {
        crate::every_page(|token| self.scan_page(opts, token)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_and_connection_failures_are_retried() {
        assert!(retryable(&ClientError::from_grpc(tonic::Status::unavailable("draining"))));
        assert!(retryable(&ClientError::Connect { endpoint: "x".into(), message: "refused".into() }));
        assert!(!retryable(&ClientError::from_grpc(tonic::Status::invalid_argument("bad key"))));
        assert!(!retryable(&ClientError::from_grpc(tonic::Status::deadline_exceeded("slow"))));
        // An append goes on only when it certainly reached no node.
        assert!(ClientError::Connect { endpoint: "x".into(), message: "refused".into() }.not_applied());
        assert!(!ClientError::from_grpc(tonic::Status::unavailable("draining")).not_applied());
        // ... but a read or a put whose node did not answer in time goes to the next one.
        assert!(repeatable(&ClientError::from_grpc(tonic::Status::deadline_exceeded("slow"))));
    }

    #[tokio::test]
    async fn an_attempt_that_may_have_applied_is_what_the_caller_hears() {
        // The first node takes the connection and never answers (the attempt's outcome is
        // unknown); nothing listens at the second (certainly not applied there).
        let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let ends = vec![format!("http://{}", hang.local_addr().unwrap()), format!("http://{dead}")];
        let f = Failover::connect(&ends, &Security::none())
            .unwrap()
            .with_timeout(Duration::from_millis(300))
            .with_patience(Duration::ZERO);
        let e = f.increment(b"c", 1, None).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::DeadlineExceeded), "{e:?}");
        assert!(!e.not_applied());
    }

    #[tokio::test]
    async fn a_request_goes_around_the_nodes_until_one_answers_or_patience_runs_out() {
        // Nothing listens on these ports: every attempt fails to connect.
        let ends: Vec<String> = (0..2)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                format!("http://{}", l.local_addr().unwrap())
            })
            .collect();
        let f =
            Failover::connect(&ends, &Security::none()).unwrap().with_patience(Duration::from_millis(300));
        let started = Instant::now();
        let e = f.get(b"k").await.unwrap_err();
        assert!(matches!(&e, ClientError::Connect { endpoint, .. } if ends.contains(endpoint)), "{e:?}");
        assert!(started.elapsed() >= Duration::from_millis(300), "it kept trying for its patience");
        assert!(Failover::connect(&[], &Security::none()).is_err());
        // An increment (with its request id) goes around the same way.
        let started = Instant::now();
        let e = f.increment(b"c", 1, None).await.unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert!(started.elapsed() >= Duration::from_millis(300), "it kept trying for its patience");
        // So does an append: connecting failed, so no node has it.
        let started = Instant::now();
        let e = f.append(b"a", b"x", None).await.unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert!(started.elapsed() >= Duration::from_millis(300), "it kept trying for its patience");
        // Without patience, each node is still tried once.
        let f = f.with_patience(Duration::ZERO);
        assert!(matches!(f.get(b"k").await.unwrap_err(), ClientError::Connect { .. }));
    }
}
