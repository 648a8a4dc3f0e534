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

use std::time::Duration;

pub use geokv_proto::v1 as proto;
use proto::kv_client::KvClient;
use proto::Consistency;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

impl ClientError {
    /// The gRPC status code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

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
    inner: KvClient<Channel>,
    consistency: Consistency,
}

/// A TTL in whole milliseconds, rounded up so that a sub-millisecond TTL is not sent as 0.
fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| d.as_nanos().div_ceil(1_000_000).min(u128::from(u64::MAX)) as u64)
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:7400`; `http://` is added if missing).
    pub async fn connect(endpoint: &str) -> Result<Self> {
        let uri = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
        let ep = Endpoint::from_shared(uri.clone())
            .map_err(|e| ClientError::Endpoint { endpoint: endpoint.into(), message: e.to_string() })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_DEADLINE)
            .tcp_nodelay(true);
        let channel = ep
            .connect()
            .await
            .map_err(|e| ClientError::Connect { endpoint: uri, message: format!("{e:?}") })?;
        Ok(Client {
            inner: KvClient::new(channel).max_decoding_message_size(256 * 1024 * 1024),
            consistency: Consistency::Unspecified,
        })
    }

    /// A client that sends `level` with every request.
    pub fn with_consistency(mut self, level: Consistency) -> Self {
        self.consistency = level;
        self
    }

    /// The generated stub, for requests this wrapper does not shape (tests of bad input).
    pub fn raw(&self) -> KvClient<Channel> {
        self.inner.clone()
    }

    fn c(&self) -> i32 {
        self.consistency as i32
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<proto::Entry>> {
        let req = proto::GetRequest { key: key.to_vec(), consistency: self.c() };
        Ok(self.raw().get(req).await?.into_inner().entry)
    }

    pub async fn put(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<proto::PutResponse> {
        let req = proto::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            consistency: self.c(),
            ttl_ms: ttl_ms(ttl),
        };
        Ok(self.raw().put(req).await?.into_inner())
    }

    pub async fn delete(&self, key: &[u8]) -> Result<proto::DeleteResponse> {
        let req = proto::DeleteRequest { key: key.to_vec(), consistency: self.c() };
        Ok(self.raw().delete(req).await?.into_inner())
    }

    pub async fn increment(
        &self,
        key: &[u8],
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<proto::IncrementResponse> {
        let req =
            proto::IncrementRequest { key: key.to_vec(), delta, consistency: self.c(), ttl_ms: ttl_ms(ttl) };
        Ok(self.raw().increment(req).await?.into_inner())
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
        Ok(self.raw().append(req).await?.into_inner())
    }

    pub async fn set_add(
        &self,
        key: &[u8],
        members: Vec<Vec<u8>>,
        ttl: Option<Duration>,
    ) -> Result<proto::SetChangeResponse> {
        let req =
            proto::SetAddRequest { key: key.to_vec(), members, consistency: self.c(), ttl_ms: ttl_ms(ttl) };
        Ok(self.raw().set_add(req).await?.into_inner())
    }

    pub async fn set_remove(&self, key: &[u8], members: Vec<Vec<u8>>) -> Result<proto::SetChangeResponse> {
        let req = proto::SetRemoveRequest { key: key.to_vec(), members, consistency: self.c() };
        Ok(self.raw().set_remove(req).await?.into_inner())
    }

    pub async fn set_members(&self, key: &[u8]) -> Result<proto::SetMembersResponse> {
        let req = proto::SetMembersRequest { key: key.to_vec(), consistency: self.c() };
        Ok(self.raw().set_members(req).await?.into_inner())
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
        Ok(self.raw().compare_and_swap(req).await?.into_inner())
    }

    pub async fn batch_get(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<proto::Entry>>> {
        let req = proto::BatchGetRequest { keys, consistency: self.c() };
        Ok(self.raw().batch_get(req).await?.into_inner().results.into_iter().map(|r| r.entry).collect())
    }

    pub async fn batch_write(&self, ops: Vec<proto::WriteOp>) -> Result<Vec<proto::WriteResult>> {
        let req = proto::BatchWriteRequest { ops, consistency: self.c() };
        Ok(self.raw().batch_write(req).await?.into_inner().results)
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
        Ok(self.raw().scan(req).await?.into_inner())
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
        w(Op::Increment(proto::BatchIncrement { key: key.to_vec(), delta, ttl_ms: ttl_ms(ttl) }))
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
