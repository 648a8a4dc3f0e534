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

mod failover;
mod watch;

/// The README's example, compiled as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub use failover::Failover;
pub use geokv_proto::v1 as proto;
use proto::kv_client::KvClient;
use proto::Consistency;
use tonic::transport::{Channel, Endpoint};
pub use watch::{FailoverWatcher, Watcher};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("TLS settings: {0}")]
    Tls(String),
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

impl ClientError {
    /// The stable name of the cause a node gave (`google.rpc.ErrorInfo.reason` of domain
    /// `geokv.io`: `WRONG_TYPE`, `TOO_LARGE`, `QUORUM_NOT_REACHED`, ...; docs/api.md, "Error
    /// details"). Match on this rather than on messages.
    pub fn reason(&self) -> Option<String> {
        use tonic_types::StatusExt;
        match self {
            ClientError::Status(s) => {
                s.get_details_error_info().filter(|i| i.domain == "geokv.io").map(|i| i.reason)
            }
            _ => None,
        }
    }

    /// How long the node suggests waiting before trying again (`google.rpc.RetryInfo`).
    pub fn retry_after(&self) -> Option<Duration> {
        use tonic_types::StatusExt;
        match self {
            ClientError::Status(s) => s.get_details_retry_info().and_then(|r| r.retry_delay),
            _ => None,
        }
    }

    /// The gRPC status code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// The id of one logical increment, the same in every attempt of it
/// ([`Client::increment_once`]).
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

/// Adds the bearer token, if any, to every request.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The client's transport: a channel, with the bearer token on every request.
pub type Transport = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

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

    fn bearer(&self) -> Result<Bearer> {
        let Some(token) = &self.token else { return Ok(Bearer(None)) };
        if self.ca.is_none() {
            return Err(ClientError::Tls(
                "a token is only sent over TLS: give the deployment CA too (--ca or GEOKV_CA)".into(),
            ));
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Tls("the token holds characters a header cannot carry".into()))?;
        Ok(Bearer(Some(value)))
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

/// A channel to `endpoint` (`host:port`, `http://host:port` or `https://host:port`) with
/// `security`, connected before it is returned; every request on it has [`REQUEST_DEADLINE`].
pub async fn channel(endpoint: &str, security: &Security) -> Result<Channel> {
    channel_with_deadline(endpoint, security, REQUEST_DEADLINE).await
}

/// [`channel`] whose requests have `deadline` (operations that take long by nature: a
/// node's backup checkpoint).
pub async fn channel_with_deadline(
    endpoint: &str,
    security: &Security,
    deadline: Duration,
) -> Result<Channel> {
    let (ep, tls, shown) = endpoint_of(endpoint, security, deadline)?;
    let connected = match tls {
        None => ep.connect().await,
        Some(tls) => ep.connect_with_connector(tls.connector(security.server_name.clone())).await,
    };
    connected.map_err(|e| ClientError::Connect { endpoint: shown, message: describe(&e) })
}

/// A channel to `endpoint` that connects on its first request (and again after the
/// connection breaks): a node that is down now is not an error until a request needs it.
pub fn lazy_channel(endpoint: &str, security: &Security) -> Result<Channel> {
    let (ep, tls, _) = endpoint_of(endpoint, security, REQUEST_DEADLINE)?;
    Ok(match tls {
        None => ep.connect_lazy(),
        Some(tls) => ep.connect_with_connector_lazy(tls.connector(security.server_name.clone())),
    })
}

/// The tonic endpoint for `endpoint`, its TLS settings, and how to name it in errors.
fn endpoint_of(
    endpoint: &str,
    security: &Security,
    deadline: Duration,
) -> Result<(Endpoint, Option<std::sync::Arc<geokv_tls::client::ClientTls>>, String)> {
    let tls = security.client_tls()?;
    let bare = endpoint.trim_start_matches("http://").trim_start_matches("https://");
    if endpoint.starts_with("https://") && tls.is_none() {
        return Err(ClientError::Tls(format!(
            "{endpoint} is a TLS endpoint: give the deployment CA (--ca or GEOKV_CA)"
        )));
    }
    let uri = format!("http://{bare}");
    let shown = if tls.is_some() { format!("https://{bare}") } else { uri.clone() };
    let ep = Endpoint::from_shared(uri)
        .map_err(|e| ClientError::Endpoint { endpoint: endpoint.into(), message: e.to_string() })?
        .connect_timeout(deadline.min(Duration::from_secs(5)))
        .timeout(deadline)
        .tcp_nodelay(true);
    Ok((ep, tls, shown))
}

/// A client of the Admin service at `endpoint` (operating the deployment: status, links,
/// residency, leave, cleanup), with `security`'s credentials.
pub async fn admin(
    endpoint: &str,
    security: &Security,
) -> Result<proto::admin_client::AdminClient<Transport>> {
    admin_with_deadline(endpoint, security, REQUEST_DEADLINE).await
}

/// [`admin`] whose requests have `deadline`.
pub async fn admin_with_deadline(
    endpoint: &str,
    security: &Security,
    deadline: Duration,
) -> Result<proto::admin_client::AdminClient<Transport>> {
    let bearer = security.bearer()?;
    let channel = channel_with_deadline(endpoint, security, deadline).await?;
    Ok(proto::admin_client::AdminClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(256 * 1024 * 1024))
}

/// A transport error with its causes, which say what failed (refused, bad certificate, ...).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
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
        let channel = channel_with_deadline(endpoint, security, deadline).await?;
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
        call: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    ) -> std::result::Result<T, tonic::Status> {
        let Some(t) = self.timeout else { return call.await };
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
                Err(late)
            }
            Ok(answer) => answer,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer within {t:?}"))),
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

    /// The generated stub, for requests this wrapper does not shape (tests of bad input).
    pub fn raw(&self) -> KvClient<Transport> {
        self.inner.clone()
    }

    fn c(&self) -> i32 {
        self.consistency as i32
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<proto::Entry>> {
        let req = proto::GetRequest { key: key.to_vec(), consistency: self.c() };
        Ok(self.timed(self.raw().get(self.request(req))).await?.into_inner().entry)
    }

    pub async fn put(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<proto::PutResponse> {
        let req = proto::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            consistency: self.c(),
            ttl_ms: ttl_ms(ttl),
        };
        Ok(self.timed(self.raw().put(self.request(req))).await?.into_inner())
    }

    pub async fn delete(&self, key: &[u8]) -> Result<proto::DeleteResponse> {
        let req = proto::DeleteRequest { key: key.to_vec(), consistency: self.c() };
        Ok(self.timed(self.raw().delete(self.request(req))).await?.into_inner())
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
        Ok(self.timed(self.raw().increment(self.request(req))).await?.into_inner())
    }

    pub async fn append(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<proto::AppendResponse> {
        let req = proto::AppendRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            consistency: self.c(),
            ttl_ms: ttl_ms(ttl),
        };
        Ok(self.timed(self.raw().append(self.request(req))).await?.into_inner())
    }

    pub async fn set_add(
        &self,
        key: &[u8],
        members: Vec<Vec<u8>>,
        ttl: Option<Duration>,
    ) -> Result<proto::SetChangeResponse> {
        let req =
            proto::SetAddRequest { key: key.to_vec(), members, consistency: self.c(), ttl_ms: ttl_ms(ttl) };
        Ok(self.timed(self.raw().set_add(self.request(req))).await?.into_inner())
    }

    pub async fn set_remove(&self, key: &[u8], members: Vec<Vec<u8>>) -> Result<proto::SetChangeResponse> {
        let req = proto::SetRemoveRequest { key: key.to_vec(), members, consistency: self.c() };
        Ok(self.timed(self.raw().set_remove(self.request(req))).await?.into_inner())
    }

    pub async fn set_members(&self, key: &[u8]) -> Result<proto::SetMembersResponse> {
        let req = proto::SetMembersRequest { key: key.to_vec(), consistency: self.c() };
        Ok(self.timed(self.raw().set_members(self.request(req))).await?.into_inner())
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
        Ok(self.timed(self.raw().compare_and_swap(self.request(req))).await?.into_inner())
    }

    pub async fn batch_get(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<proto::Entry>>> {
        let req = proto::BatchGetRequest { keys, consistency: self.c() };
        Ok(self
            .timed(self.raw().batch_get(self.request(req)))
            .await?
            .into_inner()
            .results
            .into_iter()
            .map(|r| r.entry)
            .collect())
    }

    pub async fn batch_write(&self, ops: Vec<proto::WriteOp>) -> Result<Vec<proto::WriteResult>> {
        let req = proto::BatchWriteRequest { ops, consistency: self.c() };
        Ok(self.timed(self.raw().batch_write(self.request(req))).await?.into_inner().results)
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
        Ok(self.timed(self.raw().scan(self.request(req))).await?.into_inner())
    }

    /// Every entry of a scan, following pages to the end.
    pub async fn scan_all(&self, opts: &ScanOptions) -> Result<Vec<proto::Entry>> {
        let mut all = Vec::new();
        let mut token = Vec::new();
        loop {
            let page = self.scan_page(opts, token).await?;
            all.extend(page.entries);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
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
        w(Op::Append(proto::BatchAppend { key: key.to_vec(), value: value.to_vec(), ttl_ms: ttl_ms(ttl) }))
    }
    pub fn set_add(key: &[u8], members: Vec<Vec<u8>>, ttl: Option<Duration>) -> proto::WriteOp {
        w(Op::SetAdd(proto::BatchSetAdd { key: key.to_vec(), members, ttl_ms: ttl_ms(ttl) }))
    }
    pub fn set_remove(key: &[u8], members: Vec<Vec<u8>>) -> proto::WriteOp {
        w(Op::SetRemove(proto::BatchSetRemove { key: key.to_vec(), members }))
    }
}
