//! The `geokv.v1.Kv` gRPC service.

use std::sync::Arc;

use geokv_cluster::Level;
use geokv_core::{Op, OpOutcome, Record};
use geokv_proto::v1 as pb;
use pb::kv_server::Kv;
use tonic::{Request, Response, Status};

use crate::cluster::{Action, Applied, Cluster};
use crate::convert::{self, entry, level, write_meta, WriteMeta};
use crate::node::{Expect, Node, NodeError, ScanRequest};
use crate::status::{invalid, to_status};

pub struct KvService {
    node: Arc<Node>,
    /// Set when the node is part of a regional cluster: reads and writes go through quorums.
    cluster: Option<Arc<Cluster>>,
}

impl KvService {
    pub fn new(node: Arc<Node>, cluster: Option<Arc<Cluster>>) -> Self {
        KvService { node, cluster }
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

    /// Applies one write at `level` and returns its outcome and the key's new version and TTL.
    async fn write(&self, key: Vec<u8>, op: Op, level: Level) -> Result<(OpOutcome, WriteMeta), Status> {
        let (out, rec) = self.write_record(key, op, level).await?;
        Ok((out, write_meta(&rec, self.node.now_ms())))
    }

    async fn write_record(&self, key: Vec<u8>, op: Op, level: Level) -> Result<(OpOutcome, Record), Status> {
        let Some(cluster) = &self.cluster else {
            return self.run(move |n| n.write(&key, &op)).await;
        };
        // Refuse bad input here rather than after a network hop.
        let limits = self.node.limits();
        limits.check_key(&key).and_then(|_| op.validate(limits)).map_err(|e| to_status(e.into()))?;
        match cluster.write(key, Action::Op(op), level).await? {
            Applied::Written(out, rec) => Ok((out, rec)),
            Applied::CasFailed(_) => {
                Err(Status::internal("a plain write came back as a failed compare-and-swap"))
            }
        }
    }

    /// The key's state if visible at `now`, read at `level`.
    async fn read(&self, key: Vec<u8>, level: Level, now: u64) -> Result<Option<Record>, Status> {
        match &self.cluster {
            None => self.run(move |n| n.get(&key, now)).await,
            Some(cluster) => Ok(cluster.read(key, level).await?.filter(|r| r.is_visible(now))),
        }
    }
}

fn unexpected(out: OpOutcome) -> Status {
    Status::internal(format!("operation returned an unexpected outcome {out:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        let level = level(req.consistency)?;
        let now = self.node.now_ms();
        let found = self.read(req.key.clone(), level, now).await?;
        Ok(Response::new(pb::GetResponse { entry: found.map(|rec| entry(req.key, &rec, now, false)) }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let req = req.into_inner();
        let level = level(req.consistency)?;
        let (_, meta) = self.write(req.key, Op::Put { value: req.value, ttl_ms: req.ttl_ms }, level).await?;
        Ok(Response::new(pb::PutResponse { version: meta.version, ttl_remaining_ms: meta.ttl_remaining_ms }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = req.into_inner();
        let level = level(req.consistency)?;
        match self.write(req.key, Op::Delete, level).await? {
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
        let level = level(req.consistency)?;
        let limits = self.node.limits().clone();
        limits.check_batch("BatchGet keys", req.keys.len()).map_err(|e| invalid(e.to_string()))?;
        for (i, key) in req.keys.iter().enumerate() {
            limits.check_key(key).map_err(|e| invalid(format!("keys[{i}]: {e}")))?;
        }
        let now = self.node.now_ms();
        let mut bytes = 0usize;
        let mut results = Vec::with_capacity(req.keys.len());
        for key in req.keys {
            let found = self.read(key.clone(), level, now).await?.map(|rec| entry(key, &rec, now, false));
            bytes += found.as_ref().map(prost::Message::encoded_len).unwrap_or(0);
            if bytes > limits.max_response_bytes {
                return Err(invalid(format!(
                    "the BatchGet response would be over {} bytes (limits.max_response_bytes); ask for fewer keys per batch",
                    limits.max_response_bytes
                )));
            }
            results.push(pb::GetResponse { entry: found });
        }
        Ok(Response::new(pb::BatchGetResponse { results }))
    }

    async fn batch_write(
        &self,
        req: Request<pb::BatchWriteRequest>,
    ) -> Result<Response<pb::BatchWriteResponse>, Status> {
        let req = req.into_inner();
        let level = level(req.consistency)?;
        self.node
            .limits()
            .check_batch("BatchWrite ops", req.ops.len())
            .map_err(|e| invalid(e.to_string()))?;
        let items: Vec<_> = req.ops.into_iter().map(convert::batch_op).collect();
        let outcomes: Vec<Result<(OpOutcome, Record), Status>> = match &self.cluster {
            // One node: the whole batch in one blocking task and one WriteBatch.
            None => {
                let written = self.run(move |n| Ok(n.write_batch(items))).await?;
                written.into_iter().map(|r| r.map_err(to_status)).collect()
            }
            Some(_) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(match item {
                        Ok((key, op)) => self.write_record(key, op, level).await,
                        Err(e) => Err(to_status(e.into())),
                    });
                }
                out
            }
        };
        let now = self.node.now_ms();
        let results = outcomes
            .into_iter()
            .map(|result| match result {
                Ok((out, rec)) => {
                    let WriteMeta { version, ttl_remaining_ms } = write_meta(&rec, now);
                    pb::WriteResult {
                        version,
                        ttl_remaining_ms,
                        outcome: Some(convert::outcome(out, &rec, now)),
                    }
                }
                Err(s) => pb::WriteResult {
                    version: None,
                    ttl_remaining_ms: None,
                    outcome: Some(pb::write_result::Outcome::Error(pb::ItemError {
                        code: s.code() as i32,
                        message: s.message().to_string(),
                    })),
                },
            })
            .collect();
        Ok(Response::new(pb::BatchWriteResponse { results }))
    }

    async fn compare_and_swap(
        &self,
        req: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        use pb::compare_and_swap_request::Expected;
        let req = req.into_inner();
        let level = level(req.consistency)?;
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
        let (succeeded, current) = match &self.cluster {
            None => {
                let k = key.clone();
                self.run(move |n| {
                    let now = n.now_ms();
                    n.compare_and_swap(&k, expect, req.value, req.ttl_ms, now)
                })
                .await?
            }
            Some(cluster) => {
                let limits = self.node.limits();
                let op = Op::Put { value: req.value.clone(), ttl_ms: req.ttl_ms };
                limits.check_key(&key).and_then(|_| op.validate(limits)).map_err(|e| to_status(e.into()))?;
                let action = Action::Cas { expect, value: req.value, ttl_ms: req.ttl_ms };
                match cluster.write(key.clone(), action, level).await? {
                    Applied::Written(_, rec) => (true, Some(rec)),
                    Applied::CasFailed(rec) => (false, rec),
                }
            }
        };
        let now = self.node.now_ms();
        let current = current.filter(|r| r.is_visible(now)).map(|r| entry(key, &r, now, false));
        Ok(Response::new(pb::CompareAndSwapResponse { succeeded, current }))
    }

    async fn increment(
        &self,
        req: Request<pb::IncrementRequest>,
    ) -> Result<Response<pb::IncrementResponse>, Status> {
        let req = req.into_inner();
        let level = level(req.consistency)?;
        match self.write(req.key, Op::Increment { delta: req.delta, ttl_ms: req.ttl_ms }, level).await? {
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
        let level = level(req.consistency)?;
        match self.write(req.key, Op::Append { value: req.value, ttl_ms: req.ttl_ms }, level).await? {
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
        let level = level(req.consistency)?;
        let op = Op::SetAdd { members: req.members, ttl_ms: req.ttl_ms };
        set_change(self.write(req.key, op, level).await?)
    }

    async fn set_remove(
        &self,
        req: Request<pb::SetRemoveRequest>,
    ) -> Result<Response<pb::SetChangeResponse>, Status> {
        let req = req.into_inner();
        let level = level(req.consistency)?;
        set_change(self.write(req.key, Op::SetRemove { members: req.members }, level).await?)
    }

    async fn set_members(
        &self,
        req: Request<pb::SetMembersRequest>,
    ) -> Result<Response<pb::SetMembersResponse>, Status> {
        let req = req.into_inner();
        let level = level(req.consistency)?;
        let now = self.node.now_ms();
        let Some(rec) = self.read(req.key, level, now).await? else {
            return Ok(Response::new(pb::SetMembersResponse::default()));
        };
        if rec.kind.val != geokv_core::Kind::Set {
            let err = geokv_core::CoreError::WrongType {
                op: "SetMembers",
                expected: geokv_core::Kind::Set,
                actual: rec.kind.val,
            };
            return Err(to_status(err.into()));
        }
        Ok(Response::new(pb::SetMembersResponse {
            found: true,
            members: rec.set.members().cloned().collect(),
            version: Some(convert::version(rec.version())),
            ttl_remaining_ms: rec.ttl_remaining_ms(now),
        }))
    }

    async fn scan(&self, req: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        let req = req.into_inner();
        let level = level(req.consistency)?;
        let keys_only = req.keys_only;
        let scan = ScanRequest {
            prefix: req.prefix,
            start_key: req.start_key,
            limit: req.limit,
            page_token: req.page_token,
        };
        let result = match &self.cluster {
            Some(cluster) => cluster.scan(scan, level).await?,
            None => self.run(move |n| n.scan(&scan)).await?,
        };
        let now = result.now;
        Ok(Response::new(pb::ScanResponse {
            entries: result.items.into_iter().map(|(k, rec)| entry(k, &rec, now, keys_only)).collect(),
            next_page_token: result.next_page_token,
        }))
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
