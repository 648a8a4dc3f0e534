//! geokv-client: the Rust client library for geokv's gRPC API, shared by the CLI, the tests and
//! the benchmarks. It does not depend on the storage engine.
//!
//! ```no_run
//! # async fn demo() -> Result<(), geokv_client::ClientError> {
//! let client = geokv_client::Client::connect("http://127.0.0.1:7400").await?;
//! client.put(b"greeting", b"hello", None).await?;
//! let entry = client.get(b"greeting").await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::Duration;

mod error;
mod failover;
pub mod grpc;
mod watch;

/// The README's example, compiled as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub use error::{ClientError, Code, FieldViolation, Result, Status, ERROR_DOMAIN};
pub use failover::Failover;
pub use geokv_proto::v1 as proto;
use grpc::Transport;
use proto::kv_client::KvClient;
use proto::Consistency;
use tonic::transport::Channel;
pub use watch::{FailoverWatcher, Watcher};

/// The id of one logical increment or append, the same in every attempt of it
/// ([`Client::increment_once`], [`Client::append_once`]).
pub type RequestId = [u8; 16];

/// A new random request id (128 random bits: two clients never pick the same).
pub fn new_request_id() -> RequestId {
    rand::random::<u128>().to_be_bytes()
}

/// Every request fails with DEADLINE_EXCEEDED if no answer comes within this long (a safety
/// net: servers bound their own work much more tightly).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Options of a Scan.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    pub prefix: Vec<u8>,
    pub start_key: Vec<u8>,
    /// Page size (0: server default).
    pub limit: u32,
    pub keys_only: bool,
}

/// A connection to one geokv node. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: KvClient<Transport>,
    consistency: Consistency,
    /// The deadline of each call (`grpc-timeout`), if shorter than the channel's.
    timeout: Option<Duration>,
}

/// A TTL in whole milliseconds, rounded up so that a sub-millisecond TTL is not sent as 0.
fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| d.as_nanos().div_ceil(1_000_000).min(u128::from(u64::MAX)) as u64)
}

/// How a client proves who it is and checks the node it talks to: TLS with the deployment CA,
/// optionally a client certificate (`geokv certs client`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// PEM file of the deployment CA; set: TLS.
    pub ca: Option<PathBuf>,
    /// PEM files of this client's certificate and key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the node's certificate must carry (default: the endpoint's host).
    pub server_name: Option<String>,
    /// A bearer token proving a principal of the deployment's `[auth]` section (sent over TLS
    /// only).
    pub token: Option<String>,
}

impl Security {
    /// Plaintext.
    pub fn none() -> Self {
        Security::default()
    }

    /// TLS trusting `ca`, with a client certificate when `cert` and `key` are given.
    pub fn tls(ca: impl Into<PathBuf>, cert_key: Option<(PathBuf, PathBuf)>) -> Self {
        let (cert, key) = cert_key.map_or((None, None), |(c, k)| (Some(c), Some(k)));
        Security { ca: Some(ca.into()), cert, key, server_name: None, token: None }
    }

    /// The same, with a bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    fn bearer(&self) -> Result<grpc::Bearer> {
        let Some(token) = &self.token else { return Ok(grpc::Bearer(None)) };
        if self.ca.is_none() {
            return Err(ClientError::Tls(
                "a token is only sent over TLS: give the deployment CA too (--ca or GEOKV_CA)".into(),
            ));
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Tls("the token holds characters a header cannot carry".into()))?;
        Ok(grpc::Bearer(Some(value)))
    }

    fn client_tls(&self) -> Result<Option<std::sync::Arc<geokv_tls::client::ClientTls>>> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() || self.key.is_some() {
                return Err(ClientError::Tls(
                    "a client certificate needs the deployment CA too (--ca or GEOKV_CA)".into(),
                ));
            }
            return Ok(None);
        };
        let roots = geokv_tls::files::load_roots(ca).map_err(|e| ClientError::Tls(e.to_string()))?;
        let identity: Option<std::sync::Arc<dyn geokv_tls::rustls::client::ResolvesClientCert>> =
            match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => {
                    let certified = geokv_tls::files::load_certified_key(cert, key)
                        .map_err(|e| ClientError::Tls(e.to_string()))?;
                    Some(geokv_tls::server::Reloadable::new(certified))
                }
                (None, None) => None,
                _ => {
                    return Err(ClientError::Tls(
                        "give both a certificate and its key (--cert and --key), or neither".into(),
                    ))
                }
            };
        let config = geokv_tls::client::client_config(roots, identity).map_err(ClientError::Tls)?;
        Ok(Some(geokv_tls::client::ClientTls::new(config)))
    }
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:7400`; `http://` is added if missing),
    /// plaintext.
    pub async fn connect(endpoint: &str) -> Result<Self> {
        Self::connect_with(endpoint, &Security::none()).await
    }

    /// Connects to `endpoint` with `security` (TLS when it names a CA).
    pub async fn connect_with(endpoint: &str, security: &Security) -> Result<Self> {
        Self::connect_with_deadline(endpoint, security, REQUEST_DEADLINE).await
    }

    /// [`Client::connect_with`] whose requests fail with DEADLINE_EXCEEDED after `deadline`.
    pub async fn connect_with_deadline(
        endpoint: &str,
        security: &Security,
        deadline: Duration,
    ) -> Result<Self> {
        let channel = grpc::channel_with_deadline(endpoint, security, deadline).await?;
        Self::over(channel, security)
    }

    /// A client over `channel`, with `security`'s bearer token.
    pub(crate) fn over(channel: Channel, security: &Security) -> Result<Self> {
        let bearer = security.bearer()?;
        Ok(Client {
            inner: KvClient::with_interceptor(channel, bearer).max_decoding_message_size(256 * 1024 * 1024),
            consistency: Consistency::Unspecified,
            timeout: None,
        })
    }

    /// A client that sends `level` with every request.
    pub fn with_consistency(mut self, level: Consistency) -> Self {
        self.consistency = level;
        self
    }

    /// A client whose every call fails with DEADLINE_EXCEEDED when no answer came within
    /// `timeout` (sent as `grpc-timeout`, so the node stops working on it too). Without it, a
    /// call waits up to the channel's deadline ([`REQUEST_DEADLINE`] by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs `call` within this client's per-call deadline: DEADLINE_EXCEEDED when no answer
    /// came in time (also when the node gave up first: tonic's server answers its own
    /// `grpc-timeout` with CANCELLED).
    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        let Some(t) = self.timeout else {
            return call.await.map(tonic::Response::into_inner).map_err(ClientError::from_grpc);
        };
        let started = std::time::Instant::now();
        match tokio::time::timeout(t, call).await {
            // tonic's answer to an expired grpc-timeout; any other cancellation is passed on.
            Ok(Err(s))
                if s.code() == tonic::Code::Cancelled
                    && (s.message() == "Timeout expired" || started.elapsed() >= t.mul_f64(0.9)) =>
            {
                let mut late = tonic::Status::deadline_exceeded(format!(
                    "no answer within {t:?} (the node gave up: {})",
                    s.message()
                ));
                *late.metadata_mut() = s.metadata().clone();
                Err(ClientError::from_grpc(late))
            }
            Ok(answer) => answer.map(tonic::Response::into_inner).map_err(ClientError::from_grpc),
            Err(_) => Err(ClientError::Status(Status::new(
                Code::DeadlineExceeded,
                format!("no answer within {t:?}"),
            ))),
        }
    }

    /// `message` as a request with this client's per-call deadline.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(t) = self.timeout {
            r.set_timeout(t);
        }
        r
    }

    /// The generated stub ([`grpc::kv`]).
    pub(crate) fn stub(&self) -> KvClient<Transport> {
        self.inner.clone()
    }

    fn c(&self) -> i32 {
        self.consistency as i32
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<proto::Entry>> {
        let req = proto::GetRequest { key: key.to_vec(), consistency: self.c() };
        Ok(self.timed(self.stub().get(self.request(req))).await?.entry)
    }

    pub async fn put(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<proto::PutResponse> {
        let req = proto::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            consistency: self.c(),
            ttl_ms: ttl_ms(ttl),
        };
        self.timed(self.stub().put(self.request(req))).await
    }

    pub async fn delete(&self, key: &[u8]) -> Result<proto::DeleteResponse> {
        let req = proto::DeleteRequest { key: key.to_vec(), consistency: self.c() };
        self.timed(self.stub().delete(self.request(req))).await
    }

    pub async fn increment(
        &self,
        key: &[u8],
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<proto::IncrementResponse> {
        self.increment_request(key, delta, ttl, Vec::new()).await
    }

    /// An increment that counts once however many times it is sent: send it again with the
    /// same `request_id` (from [`new_request_id`]) after an error that leaves its outcome
    /// unknown, to this node or another, and all its attempts together count once, for 10
    /// minutes after the first was applied. [`Failover::increment`] does this for you.
    ///
    /// ```no_run
    /// # async fn example(client: geokv_client::Client) -> geokv_client::Result<()> {
    /// let id = geokv_client::new_request_id();
    /// let answer = match client.increment_once(b"visits", 1, None, id).await {
    ///     Ok(answer) => answer,
    ///     // Lost in transit: the same id again cannot count twice.
    ///     Err(_) => client.increment_once(b"visits", 1, None, id).await?,
    /// };
    /// println!("visits = {}", answer.value);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn increment_once(
        &self,
        key: &[u8],
        delta: i64,
        ttl: Option<Duration>,
        request_id: RequestId,
    ) -> Result<proto::IncrementResponse> {
        self.increment_request(key, delta, ttl, request_id.to_vec()).await
    }

    async fn increment_request(
        &self,
        key: &[u8],
        delta: i64,
        ttl: Option<Duration>,
        request_id: Vec<u8>,
    ) -> Result<proto::IncrementResponse> {
        let req = proto::IncrementRequest {
            key: key.to_vec(),
            delta,
            consistency: self.c(),
            ttl_ms: ttl_ms(ttl),
            request_id,
        };
        self.timed(self.stub().increment(self.request(req))).await
    }

    /// Appends `value` to a register. Sent again after a lost answer it may append twice:
    /// [`Client::append_once`] may not.
    pub async fn append(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<proto::AppendResponse> {
        self.append_request(key, value, ttl, Vec::new()).await
    }

    /// An append applied once however many times it is sent: send it again with the same
    /// `request_id` (from [`new_request_id`]) after an error that leaves its outcome unknown,
    /// to this node or another, and its bytes are appended once, for 10 minutes after it was
    /// applied (an attempt that finds it applied answers with the register's length as it is).
    /// The same id with other bytes is refused. [`Failover::append`] does this for you.
    pub async fn append_once(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        request_id: RequestId,
    ) -> Result<proto::AppendResponse> {
        self.append_request(key, value, ttl, request_id.to_vec()).await
    }

    async fn append_request(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        request_id: Vec<u8>,
    ) -> Result<proto::AppendResponse> {
        let req = proto::AppendRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            consistency: self.c(),
            ttl_ms: ttl_ms(ttl),
            request_id,
        };
        self.timed(self.stub().append(self.request(req))).await
    }

    pub async fn set_add(
        &self,
        key: &[u8],
        members: Vec<Vec<u8>>,
        ttl: Option<Duration>,
    ) -> Result<proto::SetChangeResponse> {
        let req =
            proto::SetAddRequest { key: key.to_vec(), members, consistency: self.c(), ttl_ms: ttl_ms(ttl) };
        self.timed(self.stub().set_add(self.request(req))).await
    }

    pub async fn set_remove(&self, key: &[u8], members: Vec<Vec<u8>>) -> Result<proto::SetChangeResponse> {
        let req = proto::SetRemoveRequest { key: key.to_vec(), members, consistency: self.c() };
        self.timed(self.stub().set_remove(self.request(req))).await
    }

    /// Gives `key` (of any type) a TTL, or with `None` takes its TTL away (Redis PERSIST),
    /// keeping its value; `existed` is false, and nothing changes, when the key is absent.
    pub async fn expire(&self, key: &[u8], ttl: Option<Duration>) -> Result<proto::ExpireResponse> {
        let req = proto::ExpireRequest { key: key.to_vec(), ttl_ms: ttl_ms(ttl), consistency: self.c() };
        self.timed(self.stub().expire(self.request(req))).await
    }

    pub async fn set_members(&self, key: &[u8]) -> Result<proto::SetMembersResponse> {
        let req = proto::SetMembersRequest { key: key.to_vec(), consistency: self.c() };
        self.timed(self.stub().set_members(self.request(req))).await
    }

    /// Sets `key` to `value` if its version is `expected` (`None`: if it is absent).
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<proto::Version>,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<proto::CompareAndSwapResponse> {
        use proto::compare_and_swap_request::Expected;
        let expected = Some(match expected {
            Some(v) => Expected::ExpectedVersion(v),
            None => Expected::ExpectAbsent(true),
        });
        let req = proto::CompareAndSwapRequest {
            key: key.to_vec(),
            expected,
            value: value.to_vec(),
            consistency: self.c(),
            ttl_ms: ttl_ms(ttl),
        };
        self.timed(self.stub().compare_and_swap(self.request(req))).await
    }

    pub async fn batch_get(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<proto::Entry>>> {
        let req = proto::BatchGetRequest { keys, consistency: self.c() };
        Ok(self
            .timed(self.stub().batch_get(self.request(req)))
            .await?
            .results
            .into_iter()
            .map(|r| r.entry)
            .collect())
    }

    pub async fn batch_write(&self, ops: Vec<proto::WriteOp>) -> Result<Vec<proto::WriteResult>> {
        let req = proto::BatchWriteRequest { ops, consistency: self.c() };
        Ok(self.timed(self.stub().batch_write(self.request(req))).await?.results)
    }

    /// One page of a scan; pass the returned token back to continue (empty: done).
    pub async fn scan_page(&self, opts: &ScanOptions, page_token: Vec<u8>) -> Result<proto::ScanResponse> {
        let req = proto::ScanRequest {
            prefix: opts.prefix.clone(),
            start_key: opts.start_key.clone(),
            limit: opts.limit,
            page_token,
            keys_only: opts.keys_only,
            consistency: self.c(),
        };
        self.timed(self.stub().scan(self.request(req))).await
    }

    /// Every entry of a scan, following pages to the end.
    pub async fn scan_all(&self, opts: &ScanOptions) -> Result<Vec<proto::Entry>> {
        every_page(|token| self.scan_page(opts, token)).await
    }
}

/// Every entry of a scan: `page(token)` for each page, from the first (empty token) until a
/// page says it is the last.
pub(crate) async fn every_page<F, Fut>(mut page: F) -> Result<Vec<proto::Entry>>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<proto::ScanResponse>>,
{
    let mut all = Vec::new();
    let mut token = Vec::new();
    loop {
        let p = page(token).await?;
        all.extend(p.entries);
        if p.next_page_token.is_empty() {
            return Ok(all);
        }
        token = p.next_page_token;
    }
}

/// Builders for BatchWrite items.
pub mod op {
    use super::{proto, ttl_ms};
    use proto::write_op::Op;
    use std::time::Duration;

    fn w(op: Op) -> proto::WriteOp {
        proto::WriteOp { op: Some(op) }
    }
    pub fn put(key: &[u8], value: &[u8], ttl: Option<Duration>) -> proto::WriteOp {
        w(Op::Put(proto::BatchPut { key: key.to_vec(), value: value.to_vec(), ttl_ms: ttl_ms(ttl) }))
    }
    pub fn delete(key: &[u8]) -> proto::WriteOp {
        w(Op::Delete(proto::BatchDelete { key: key.to_vec() }))
    }
    pub fn increment(key: &[u8], delta: i64, ttl: Option<Duration>) -> proto::WriteOp {
        w(Op::Increment(proto::BatchIncrement {
            key: key.to_vec(),
            delta,
            ttl_ms: ttl_ms(ttl),
            request_id: Vec::new(),
        }))
    }
    /// An increment that counts once however many times the batch is sent (see
    /// [`crate::Client::increment_once`]).
    pub fn increment_once(
        key: &[u8],
        delta: i64,
        ttl: Option<Duration>,
        request_id: crate::RequestId,
    ) -> proto::WriteOp {
        w(Op::Increment(proto::BatchIncrement {
            key: key.to_vec(),
            delta,
            ttl_ms: ttl_ms(ttl),
            request_id: request_id.to_vec(),
        }))
    }
    pub fn append(key: &[u8], value: &[u8], ttl: Option<Duration>) -> proto::WriteOp {
        w(Op::Append(proto::BatchAppend {
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_ms: ttl_ms(ttl),
            request_id: Vec::new(),
        }))
    }
    /// An append applied once however many times the batch is sent (see
    /// [`crate::Client::append_once`]).
    pub fn append_once(
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        request_id: crate::RequestId,
    ) -> proto::WriteOp {
        w(Op::Append(proto::BatchAppend {
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_ms: ttl_ms(ttl),
            request_id: request_id.to_vec(),
        }))
    }
    pub fn set_add(key: &[u8], members: Vec<Vec<u8>>, ttl: Option<Duration>) -> proto::WriteOp {
        w(Op::SetAdd(proto::BatchSetAdd { key: key.to_vec(), members, ttl_ms: ttl_ms(ttl) }))
    }
    pub fn set_remove(key: &[u8], members: Vec<Vec<u8>>) -> proto::WriteOp {
        w(Op::SetRemove(proto::BatchSetRemove { key: key.to_vec(), members }))
    }
    /// A TTL for the key (`None`: no TTL), its value kept.
    pub fn expire(key: &[u8], ttl: Option<Duration>) -> proto::WriteOp {
        w(Op::Expire(proto::BatchExpire { key: key.to_vec(), ttl_ms: ttl_ms(ttl) }))
    }
}
