//! The `geokv.v1.Kv` gRPC service.

use std::sync::Arc;

use geokv_core::{Op, OpOutcome};
use geokv_proto::v1 as pb;
use pb::kv_server::Kv;
use tonic::{Request, Response, Status};

use crate::convert::{self, consistency, entry, write_meta, WriteMeta};
use crate::node::{Expect, Node, NodeError, ScanRequest};
use crate::status::{invalid, to_status};

pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }

    /// Runs blocking node work on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, Status> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || f(&node))
            .await
            .map_err(|e| Status::internal(format!("request task failed: {e}")))?
            .map_err(to_status)
    }

    /// Applies one write and returns its outcome, the key's new state and the time used.
    async fn write(&self, key: Vec<u8>, op: Op) -> Result<(OpOutcome, WriteMeta), Status> {
        self.run(move |n| {
            let (out, rec) = n.write(&key, &op)?;
            Ok((out, write_meta(&rec, n.now_ms())))
        })
        .await
    }
}

fn unexpected(out: OpOutcome) -> Status {
    Status::internal(format!("operation returned an unexpected outcome {out:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        consistency(req.consistency)?;
        let found = self
            .run(move |n| {
                let now = n.now_ms();
                Ok(n.get(&req.key, now)?.map(|rec| entry(req.key.clone(), &rec, now, false)))
            })
            .await?;
        Ok(Response::new(pb::GetResponse { entry: found }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let req = req.into_inner();
        consistency(req.consistency)?;
        let (_, meta) = self.write(req.key, Op::Put { value: req.value, ttl_ms: req.ttl_ms }).await?;
        Ok(Response::new(pb::PutResponse { version: meta.version, ttl_remaining_ms: meta.ttl_remaining_ms }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = req.into_inner();
        consistency(req.consistency)?;
        match self.write(req.key, Op::Delete).await? {
            (OpOutcome::Deleted { existed }, meta) => {
                Ok(Response::new(pb::DeleteResponse { existed, version: meta.version }))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn batch_get(
        &self,
        req: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        let req = req.into_inner();
        consistency(req.consistency)?;
        let limits = self.node.limits().clone();
        limits.check_batch("BatchGet keys", req.keys.len()).map_err(|e| invalid(e.to_string()))?;
        for (i, key) in req.keys.iter().enumerate() {
            limits.check_key(key).map_err(|e| invalid(format!("keys[{i}]: {e}")))?;
        }
        let results = self
            .run(move |n| {
                let now = n.now_ms();
                let mut bytes = 0usize;
                let mut results = Vec::with_capacity(req.keys.len());
                for key in req.keys {
                    let found = n.get(&key, now)?.map(|rec| entry(key, &rec, now, false));
                    bytes += found.as_ref().map(prost::Message::encoded_len).unwrap_or(0);
                    if bytes > n.limits().max_response_bytes {
                        return Err(geokv_core::CoreError::TooLarge {
                            what: "BatchGet response",
                            actual: bytes,
                            limit: n.limits().max_response_bytes,
                            setting: "limits.max_response_bytes; ask for fewer keys per batch",
                        }
                        .into());
                    }
                    results.push(pb::GetResponse { entry: found });
                }
                Ok(results)
            })
            .await?;
        Ok(Response::new(pb::BatchGetResponse { results }))
    }

    async fn batch_write(
        &self,
        req: Request<pb::BatchWriteRequest>,
    ) -> Result<Response<pb::BatchWriteResponse>, Status> {
        let req = req.into_inner();
        consistency(req.consistency)?;
        self.node
            .limits()
            .check_batch("BatchWrite ops", req.ops.len())
            .map_err(|e| invalid(e.to_string()))?;
        let items: Vec<_> = req.ops.into_iter().map(convert::batch_op).collect();
        let results = self
            .run(move |n| {
                let results = items
                    .into_iter()
                    .map(|item| {
                        let result =
                            item.map_err(|s| (s.code(), s.message().to_string())).and_then(|(key, op)| {
                                n.write(&key, &op).map_err(|e| {
                                    let s = to_status(e);
                                    (s.code(), s.message().to_string())
                                })
                            });
                        match result {
                            Ok((out, rec)) => {
                                let now = n.now_ms();
                                let WriteMeta { version, ttl_remaining_ms } = write_meta(&rec, now);
                                pb::WriteResult {
                                    version,
                                    ttl_remaining_ms,
                                    outcome: Some(convert::outcome(out, &rec, now)),
                                }
                            }
                            Err((code, message)) => pb::WriteResult {
                                version: None,
                                ttl_remaining_ms: None,
                                outcome: Some(pb::write_result::Outcome::Error(pb::ItemError {
                                    code: code as i32,
                                    message,
                                })),
                            },
                        }
                    })
                    .collect();
                Ok(results)
            })
            .await?;
        Ok(Response::new(pb::BatchWriteResponse { results }))
    }

    async fn compare_and_swap(
        &self,
        req: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        use pb::compare_and_swap_request::Expected;
        let req = req.into_inner();
        consistency(req.consistency)?;
        let expect = match req.expected {
            Some(Expected::ExpectedVersion(v)) => Expect::Version(convert::stamp(&v)),
            Some(Expected::ExpectAbsent(true)) => Expect::Absent,
            Some(Expected::ExpectAbsent(false)) | None => {
                return Err(invalid(
                    "CompareAndSwap needs a condition: set expected_version, or expect_absent = true",
                ))
            }
        };
        let key = req.key;
        let (succeeded, current) = self
            .run(move |n| {
                let now = n.now_ms();
                let (ok, rec) = n.compare_and_swap(&key, expect, req.value, req.ttl_ms, now)?;
                Ok((ok, rec.map(|r| entry(key, &r, now, false))))
            })
            .await?;
        Ok(Response::new(pb::CompareAndSwapResponse { succeeded, current }))
    }

    async fn increment(
        &self,
        req: Request<pb::IncrementRequest>,
    ) -> Result<Response<pb::IncrementResponse>, Status> {
        let req = req.into_inner();
        consistency(req.consistency)?;
        match self.write(req.key, Op::Increment { delta: req.delta, ttl_ms: req.ttl_ms }).await? {
            (OpOutcome::Counter { value }, m) => Ok(Response::new(pb::IncrementResponse {
                value,
                version: m.version,
                ttl_remaining_ms: m.ttl_remaining_ms,
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn append(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let req = req.into_inner();
        consistency(req.consistency)?;
        match self.write(req.key, Op::Append { value: req.value, ttl_ms: req.ttl_ms }).await? {
            (OpOutcome::Appended { len }, m) => Ok(Response::new(pb::AppendResponse {
                length: len,
                version: m.version,
                ttl_remaining_ms: m.ttl_remaining_ms,
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn set_add(
        &self,
        req: Request<pb::SetAddRequest>,
    ) -> Result<Response<pb::SetChangeResponse>, Status> {
        let req = req.into_inner();
        consistency(req.consistency)?;
        let op = Op::SetAdd { members: req.members, ttl_ms: req.ttl_ms };
        set_change(self.write(req.key, op).await?)
    }

    async fn set_remove(
        &self,
        req: Request<pb::SetRemoveRequest>,
    ) -> Result<Response<pb::SetChangeResponse>, Status> {
        let req = req.into_inner();
        consistency(req.consistency)?;
        set_change(self.write(req.key, Op::SetRemove { members: req.members }).await?)
    }

    async fn set_members(
        &self,
        req: Request<pb::SetMembersRequest>,
    ) -> Result<Response<pb::SetMembersResponse>, Status> {
        let req = req.into_inner();
        consistency(req.consistency)?;
        let resp = self
            .run(move |n| {
                let now = n.now_ms();
                let Some(rec) = n.get(&req.key, now)? else { return Ok(pb::SetMembersResponse::default()) };
                if rec.kind.val != geokv_core::Kind::Set {
                    return Err(geokv_core::CoreError::WrongType {
                        op: "SetMembers",
                        expected: geokv_core::Kind::Set,
                        actual: rec.kind.val,
                    }
                    .into());
                }
                Ok(pb::SetMembersResponse {
                    found: true,
                    members: rec.set.members().cloned().collect(),
                    version: Some(convert::version(rec.version())),
                    ttl_remaining_ms: rec.ttl_remaining_ms(now),
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn scan(&self, req: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        let req = req.into_inner();
        consistency(req.consistency)?;
        let keys_only = req.keys_only;
        let scan = ScanRequest {
            prefix: req.prefix,
            start_key: req.start_key,
            limit: req.limit,
            page_token: req.page_token,
        };
        let resp = self
            .run(move |n| {
                let result = n.scan(&scan)?;
                let now = result.now;
                Ok(pb::ScanResponse {
                    entries: result
                        .items
                        .into_iter()
                        .map(|(k, rec)| entry(k, &rec, now, keys_only))
                        .collect(),
                    next_page_token: result.next_page_token,
                })
            })
            .await?;
        Ok(Response::new(resp))
    }
}

fn set_change((out, m): (OpOutcome, WriteMeta)) -> Result<Response<pb::SetChangeResponse>, Status> {
    match out {
        OpOutcome::SetChanged { changed, size } => Ok(Response::new(pb::SetChangeResponse {
            changed,
            size,
            version: m.version,
            ttl_remaining_ms: m.ttl_remaining_ms,
        })),
        other => Err(unexpected(other)),
    }
}
