//! The `geokv.v1.Kv` trait implementation: each call goes to its handler in
//! [`crate::service`] and is counted on the way out: latency by operation and consistency
//! level, the gRPC status code it ended with, and the keys it touched (hot-key detection).

use std::time::Instant;

use geokv_proto::v1 as pb;
use pb::kv_server::Kv;
use tonic::{Request, Response, Status};

use crate::api::kv::KvService;
use crate::security::auth::Access;
use crate::security::gate::{acting_as, authorize};

/// What a request tells the metrics and the authorization check: its consistency level, its
/// keys, and (a scan) the prefix it reads.
trait Observe {
    fn consistency(&self) -> i32;
    fn keys(&self) -> Vec<&[u8]>;
    fn prefix(&self) -> Option<&[u8]> {
        None
    }
}

macro_rules! single_key {
    ($($t:ty),*) => {$(
        impl Observe for $t {
            fn consistency(&self) -> i32 { self.consistency }
            fn keys(&self) -> Vec<&[u8]> { vec![&self.key] }
        }
    )*};
}
single_key!(
    pb::GetRequest,
    pb::PutRequest,
    pb::DeleteRequest,
    pb::CompareAndSwapRequest,
    pb::IncrementRequest,
    pb::AppendRequest,
    pb::SetAddRequest,
    pb::SetRemoveRequest,
    pb::SetMembersRequest,
    pb::ExpireRequest
);

impl Observe for pb::BatchGetRequest {
    fn consistency(&self) -> i32 {
        self.consistency
    }
    fn keys(&self) -> Vec<&[u8]> {
        self.keys.iter().map(Vec::as_slice).collect()
    }
}

impl Observe for pb::BatchWriteRequest {
    fn consistency(&self) -> i32 {
        self.consistency
    }
    fn keys(&self) -> Vec<&[u8]> {
        self.ops.iter().filter_map(crate::api::forward::op_key).collect()
    }
}

impl Observe for pb::ScanRequest {
    fn consistency(&self) -> i32 {
        self.consistency
    }
    fn keys(&self) -> Vec<&[u8]> {
        Vec::new()
    }
    fn prefix(&self) -> Option<&[u8]> {
        Some(&self.prefix)
    }
}

impl Observe for pb::WatchRequest {
    fn consistency(&self) -> i32 {
        pb::Consistency::Unspecified as i32
    }
    fn keys(&self) -> Vec<&[u8]> {
        Vec::new()
    }
    fn prefix(&self) -> Option<&[u8]> {
        Some(&self.prefix)
    }
}

/// The consistency label of a request's raw level.
fn level_label(raw: i32) -> &'static str {
    match pb::Consistency::try_from(raw) {
        Ok(pb::Consistency::Unspecified) => "default",
        Ok(pb::Consistency::One) => "one",
        Ok(pb::Consistency::Quorum) => "quorum",
        Ok(pb::Consistency::All) => "all",
        Err(_) => "invalid",
    }
}

impl KvService {
    /// Counts the request's keys for hot-key detection: only keys that pass validation (so
    /// the table holds no oversized key) and that this region may hold (a key forwarded to or
    /// refused for another region never shows in this node's metrics).
    fn observe_keys(&self, req: &impl Observe) -> &'static str {
        let metrics = self.node().metrics();
        let now = self.node().now_ms();
        let limits = self.node().limits();
        let residency = self.cluster().map(|c| c.residency().installed());
        let region = self.cluster().map(|c| c.region());
        for key in req.keys() {
            let held_here = match (&residency, region) {
                (Some(installed), Some(region)) => installed.policy.allows(key, region),
                _ => true,
            };
            if held_here && limits.check_key(key).is_ok() {
                metrics.touch(key, now);
            }
        }
        level_label(req.consistency())
    }

    /// Whether the request's caller may do what it asks; the principal it acts as.
    fn authorize<T: Observe>(&self, req: &Request<T>, needs: &[Access]) -> Result<Option<String>, Status> {
        let r = req.get_ref();
        authorize(req.extensions(), self.node().tls(), needs, &r.keys(), r.prefix())
    }

    fn observe_end<T>(&self, op: &str, level: &str, started: Instant, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.node().metrics().request(op, level, code, started.elapsed());
    }
}

macro_rules! observed {
    ($($method:ident => $handler:ident ($req:ty) -> $resp:ty, needs $needs:expr;)*) => {
        #[tonic::async_trait]
        impl Kv for KvService {
            $(
                async fn $method(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    let started = Instant::now();
                    let level = self.observe_keys(req.get_ref());
                    let result = match self.authorize(&req, $needs) {
                        Ok(principal) => acting_as(principal, self.$handler(req)).await,
                        Err(refused) => Err(refused),
                    };
                    self.observe_end(stringify!($method), level, started, &result);
                    result
                }
            )*

            type WatchStream = crate::api::watch::WatchStream;

            /// Counted when the stream is set up (its latency: until then).
            async fn watch(
                &self,
                req: Request<pb::WatchRequest>,
            ) -> Result<Response<Self::WatchStream>, Status> {
                let started = Instant::now();
                let result = match self.authorize(&req, READ) {
                    Ok(principal) => acting_as(principal, self.serve_watch(req)).await,
                    Err(refused) => Err(refused),
                };
                self.observe_end("watch", "default", started, &result);
                result
            }
        }
    };
}

// What each operation needs of the caller's grants. A compare-and-swap reads (a failed one
// answers the current value) and writes.
const READ: &[Access] = &[Access::Read];
const WRITE: &[Access] = &[Access::Write];
const READ_WRITE: &[Access] = &[Access::Read, Access::Write];

observed! {
    get => serve_get(pb::GetRequest) -> pb::GetResponse, needs READ;
    put => serve_put(pb::PutRequest) -> pb::PutResponse, needs WRITE;
    delete => serve_delete(pb::DeleteRequest) -> pb::DeleteResponse, needs WRITE;
    batch_get => serve_batch_get(pb::BatchGetRequest) -> pb::BatchGetResponse, needs READ;
    batch_write => serve_batch_write(pb::BatchWriteRequest) -> pb::BatchWriteResponse, needs WRITE;
    compare_and_swap => serve_compare_and_swap(pb::CompareAndSwapRequest) -> pb::CompareAndSwapResponse, needs READ_WRITE;
    increment => serve_increment(pb::IncrementRequest) -> pb::IncrementResponse, needs WRITE;
    append => serve_append(pb::AppendRequest) -> pb::AppendResponse, needs WRITE;
    set_add => serve_set_add(pb::SetAddRequest) -> pb::SetChangeResponse, needs WRITE;
    set_remove => serve_set_remove(pb::SetRemoveRequest) -> pb::SetChangeResponse, needs WRITE;
    set_members => serve_set_members(pb::SetMembersRequest) -> pb::SetMembersResponse, needs READ;
    expire => serve_expire(pb::ExpireRequest) -> pb::ExpireResponse, needs WRITE;
    scan => serve_scan(pb::ScanRequest) -> pb::ScanResponse, needs READ;
}
