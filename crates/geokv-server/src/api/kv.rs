//! The `geokv.v1.Kv` gRPC service.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use std::sync::Arc;

use geokv_cluster::Level;
use geokv_core::{Op, OpOutcome, Record};
use geokv_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::convert::{self, entry, item_error, item_status, level, write_meta, WriteMeta};
use crate::api::forward::{is_forwarded, Forwarder};
use crate::api::status::{invalid, refused_by, to_status};
use crate::node::{Expect, Node, NodeError, ScanRequest};
use crate::region::{Action, Applied, Cluster};
use crate::residency::Route;

/// Keys of one BatchGet read at once.
const BATCH_READ_PARALLELISM: usize = 32;

pub struct KvService {
    node: Arc<Node>,
    /// Set when the node is part of a regional cluster: reads and writes go through quorums.
    cluster: Option<Arc<Cluster>>,
    /// Sends requests for keys this region may not hold to a region that may (in a cluster).
    forwarder: Option<Forwarder>,
}

/// Serves a single-key request through another region when the key's residency rule says so
/// (or refuses it), and returns from the handler.
macro_rules! route_key {
    ($self:ident, $req:ident, $method:ident, $repeatable:expr) => {
        let forwarded = is_forwarded(&$req);
        if let Some(addrs) = $self.destination(&$req.get_ref().key, forwarded)? {
            return $self
                .forwarder()?
                .call(&addrs, $req.into_inner(), $repeatable, |mut c, r| async move { c.$method(r).await })
                .await;
        }
    };
}

impl KvService {
    pub fn new(node: Arc<Node>, cluster: Option<Arc<Cluster>>) -> Self {
        let forwarder = cluster.as_ref().map(|c| {
            // The remote region may forward inside itself and wait for replicas, for every item
            // of a batch: a deadline for hung nodes, not for slow batches.
            let timeout = std::time::Duration::from_millis(10 * c.cfg().request_timeout_ms);
            Forwarder::new(c.region(), timeout, node.tls().cloned())
        });
        KvService { node, cluster, forwarder }
    }

    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    fn forwarder(&self) -> Result<&Forwarder, Status> {
        self.forwarder.as_ref().ok_or_else(|| Status::internal("forwarding needs a cluster"))
    }

    /// Where a request for `key` goes: `None` to serve it here, the client addresses of the
    /// nodes to forward it to, or a refusal (`FAILED_PRECONDITION`) under the key's residency
    /// rule.
    fn destination(&self, key: &[u8], forwarded: bool) -> Result<Option<Vec<String>>, Status> {
        let Some(cluster) = &self.cluster else { return Ok(None) };
        match cluster.residency().route(key, forwarded)? {
            Route::Local => Ok(None),
            Route::Forward { addrs, .. } => Ok(Some(addrs)),
        }
    }

    /// Runs blocking node work on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, Status> {
        let node = self.node.clone();
        crate::blocking::run(move || f(&node)).await?.map_err(to_status)
    }

    /// Applies one write at `level` and returns its outcome and the key's new version and TTL.
    async fn write(&self, key: Vec<u8>, op: Op, level: Level) -> Result<(OpOutcome, WriteMeta), Status> {
        let (out, rec) = self.write_record(key, op, level).await?;
        let meta = write_meta(&out, &rec, self.node.now_ms());
        Ok((out, meta))
    }

    async fn write_record(&self, key: Vec<u8>, op: Op, level: Level) -> Result<(OpOutcome, Record), Status> {
        let Some(cluster) = &self.cluster else {
            return self.node.write_async(key, op).await.map_err(to_status);
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

    /// Writes batch items through the cluster, coordinated per replica
    /// ([`crate::region::Cluster::write_keys`]): items of one key one after another, in order.
    async fn write_items(
        &self,
        cluster: &Arc<Cluster>,
        items: Vec<Result<(Vec<u8>, Op), geokv_core::CoreError>>,
        level: Level,
    ) -> Vec<Result<(OpOutcome, Record), Status>> {
        let mut out: Vec<Option<Result<(OpOutcome, Record), Status>>> = Vec::with_capacity(items.len());
        let mut valid = Vec::new();
        let limits = self.node.limits();
        for (i, item) in items.into_iter().enumerate() {
            // Bad input is refused here rather than after a network hop.
            let checked = item.and_then(|(key, op)| {
                limits.check_key(&key).and_then(|_| op.validate(limits)).map(|_| (key, op))
            });
            match checked {
                Ok((key, op)) => {
                    valid.push((key, (i, op)));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(to_status(e.into())))),
            }
        }
        // A key's items one after another, in order (`geokv_protocol::batch`).
        let by_key = geokv_protocol::batch::by_key(valid);
        let slots: Vec<Vec<usize>> =
            by_key.iter().map(|(_, ops)| ops.iter().map(|(_, (i, _))| *i).collect()).collect();
        let keys = by_key
            .into_iter()
            .map(|(key, ops)| (key, ops.into_iter().map(|(_, (_, op))| op).collect()))
            .collect();
        let answers = cluster.write_keys(keys, level).await;
        for (slots, answers) in slots.into_iter().zip(answers) {
            for (i, answer) in slots.into_iter().zip(answers) {
                out[i] = Some(match answer {
                    Ok(Applied::Written(out, rec)) => Ok((out, rec)),
                    Ok(Applied::CasFailed(_)) => {
                        Err(Status::internal("a plain write came back as a failed compare-and-swap"))
                    }
                    Err(e) => Err(e.into()),
                });
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Status::internal("a batch item got no answer"))))
            .collect()
    }

    /// The key's state if visible at `now`, read at `level`.
    async fn read(&self, key: Vec<u8>, level: Level, now: u64) -> Result<Option<Record>, Status> {
        match &self.cluster {
            // Served in place when memory holds the answer; the disk is read on the blocking pool.
            None => match self.node.get_cached(&key, now) {
                Some(found) => found.map_err(to_status),
                None => self.run(move |n| n.get(&key, now)).await,
            },
            Some(cluster) => Ok(cluster.read(key, level).await?.filter(|r| r.is_visible(now))),
        }
    }
}

fn unexpected(out: OpOutcome) -> Status {
    Status::internal(format!("operation returned an unexpected outcome {out:?}"))
}

/// The handlers of the client API; [`crate::observed`] wraps each with metrics.
impl KvService {
    pub(crate) async fn serve_get(
        &self,
        req: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        route_key!(self, req, get, true);
        let req = req.into_inner();
        let level = level(req.consistency)?;
        let now = self.node.now_ms();
        let found = self.read(req.key.clone(), level, now).await?;
        Ok(Response::new(pb::GetResponse { entry: found.map(|rec| entry(req.key, &rec, now, false)) }))
    }

    pub(crate) async fn serve_put(
        &self,
        req: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        route_key!(self, req, put, true);
        let req = req.into_inner();
        let level = level(req.consistency)?;
        let (_, meta) = self.write(req.key, Op::Put { value: req.value, ttl_ms: req.ttl_ms }, level).await?;
        Ok(Response::new(pb::PutResponse { version: meta.version, ttl_remaining_ms: meta.ttl_remaining_ms }))
    }

    pub(crate) async fn serve_delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        route_key!(self, req, delete, true);
        let req = req.into_inner();
        let level = level(req.consistency)?;
        match self.write(req.key, Op::Delete, level).await? {
            (OpOutcome::Deleted { existed }, meta) => {
                Ok(Response::new(pb::DeleteResponse { existed, version: meta.version }))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    pub(crate) async fn serve_batch_get(
        &self,
        req: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let req = req.into_inner();
        let level = level(req.consistency)?;
        let limits = self.node.limits().clone();
        limits.check_batch("BatchGet keys", req.keys.len()).map_err(|e| refused_by(&e, e.to_string()))?;
        for (i, key) in req.keys.iter().enumerate() {
            limits.check_key(key).map_err(|e| refused_by(&e, format!("keys[{i}]: {e}")))?;
        }
        // Keys another region serves are read there, one sub-request per destination.
        let mut results: Vec<Option<pb::GetResponse>> = vec![None; req.keys.len()];
        let mut remote: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
        for (i, key) in req.keys.iter().enumerate() {
            let dest = self.destination(key, forwarded).map_err(|s| item_status(&s, "keys", i))?;
            if let Some(addrs) = dest {
                remote.entry(addrs).or_default().push(i);
            }
        }
        for (addrs, slots) in remote {
            let sub = pb::BatchGetRequest {
                keys: slots.iter().map(|&i| req.keys[i].clone()).collect(),
                consistency: req.consistency,
            };
            let got = self
                .forwarder()?
                .call(&addrs, sub, true, |mut c, r| async move { c.batch_get(r).await })
                .await?;
            for (slot, result) in slots.into_iter().zip(got.into_inner().results) {
                results[slot] = Some(result);
            }
        }
        // The local keys are read concurrently (each is its own quorum read), in order.
        let now = self.node.now_ms();
        let local: Vec<(usize, Vec<u8>)> =
            req.keys.into_iter().enumerate().filter(|(i, _)| results[*i].is_none()).collect();
        let mut reads = futures::stream::iter(local.into_iter().map(|(i, key)| async move {
            let found = self.read(key.clone(), level, now).await?;
            Ok::<_, Status>((i, pb::GetResponse { entry: found.map(|rec| entry(key, &rec, now, false)) }))
        }))
        .buffered(BATCH_READ_PARALLELISM);
        while let Some(read) = futures::StreamExt::next(&mut reads).await {
            let (i, result) = read?;
            results[i] = Some(result);
        }
        drop(reads);
        let mut bytes = 0usize;
        for slot in results.iter_mut() {
            let result = slot.take().expect("every key was read");
            bytes += prost::Message::encoded_len(&result);
            if bytes > limits.max_response_bytes {
                return Err(invalid(format!(
                    "the BatchGet response would be over {} bytes (limits.max_response_bytes); ask for fewer keys per batch",
                    limits.max_response_bytes
                )));
            }
            *slot = Some(result);
        }
        Ok(Response::new(pb::BatchGetResponse { results: results.into_iter().flatten().collect() }))
    }

    pub(crate) async fn serve_batch_write(
        &self,
        req: Request<pb::BatchWriteRequest>,
    ) -> Result<Response<pb::BatchWriteResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let req = req.into_inner();
        let level = level(req.consistency)?;
        self.node
            .limits()
            .check_batch("BatchWrite ops", req.ops.len())
            .map_err(|e| refused_by(&e, e.to_string()))?;
        // Each item follows its key's residency rule: served here, forwarded (one sub-batch
        // per destination) or refused on its own.
        let mut settled: Vec<Option<pb::WriteResult>> = vec![None; req.ops.len()];
        let mut remote: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
        for (i, op) in req.ops.iter().enumerate() {
            let Some(key) = crate::api::forward::op_key(op) else { continue };
            match self.destination(key, forwarded) {
                Ok(None) => {}
                Ok(Some(addrs)) => remote.entry(addrs).or_default().push(i),
                Err(s) => settled[i] = Some(item_error(&s)),
            }
        }
        for (addrs, slots) in remote {
            let sub = pb::BatchWriteRequest {
                ops: slots.iter().map(|&i| req.ops[i].clone()).collect(),
                consistency: req.consistency,
            };
            // Sent to a second node after a broken call only if every item may run twice.
            let repeatable = sub.ops.iter().all(crate::api::forward::repeatable_op);
            let sent = self
                .forwarder()?
                .call(&addrs, sub, repeatable, |mut c, r| async move { c.batch_write(r).await })
                .await;
            match sent {
                Ok(resp) => {
                    for (slot, result) in slots.into_iter().zip(resp.into_inner().results) {
                        settled[slot] = Some(result);
                    }
                }
                Err(s) => {
                    for slot in slots {
                        settled[slot] = Some(item_error(&s));
                    }
                }
            }
        }
        let mut local_slots = Vec::new();
        let mut items = Vec::new();
        for (i, op) in req.ops.into_iter().enumerate() {
            if settled[i].is_none() {
                local_slots.push(i);
                items.push(convert::batch_op(op));
            }
        }
        let outcomes: Vec<Result<(OpOutcome, Record), Status>> = match &self.cluster {
            // One node: the whole batch in one blocking task and one WriteBatch.
            None => {
                let written = self.run(move |n| Ok(n.write_batch(items))).await?;
                written.into_iter().map(|r| r.map_err(to_status)).collect()
            }
            Some(cluster) => self.write_items(cluster, items, level).await,
        };
        let now = self.node.now_ms();
        for (slot, result) in local_slots.into_iter().zip(outcomes) {
            settled[slot] = Some(match result {
                Ok((out, rec)) => {
                    let WriteMeta { version, ttl_remaining_ms } = write_meta(&out, &rec, now);
                    pb::WriteResult {
                        version,
                        ttl_remaining_ms,
                        outcome: Some(convert::outcome(out, &rec, now)),
                    }
                }
                Err(s) => item_error(&s),
            });
        }
        Ok(Response::new(pb::BatchWriteResponse { results: settled.into_iter().flatten().collect() }))
    }

    pub(crate) async fn serve_compare_and_swap(
        &self,
        req: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        route_key!(self, req, compare_and_swap, false);
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

    pub(crate) async fn serve_increment(
        &self,
        req: Request<pb::IncrementRequest>,
    ) -> Result<Response<pb::IncrementResponse>, Status> {
        // With a request id, sending it again is safe: its attempts count once.
        let once = !req.get_ref().request_id.is_empty();
        route_key!(self, req, increment, once);
        let req = req.into_inner();
        let level = level(req.consistency)?;
        let op =
            convert::increment_op(req.delta, req.ttl_ms, &req.request_id).map_err(|e| to_status(e.into()))?;
        match self.write(req.key, op, level).await? {
            (OpOutcome::Counter { value }, m) => Ok(Response::new(pb::IncrementResponse {
                value,
                version: m.version,
                ttl_remaining_ms: m.ttl_remaining_ms,
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    pub(crate) async fn serve_append(
        &self,
        req: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        // With a request id, sending it again is safe: it applies once.
        let once = !req.get_ref().request_id.is_empty();
        route_key!(self, req, append, once);
        let req = req.into_inner();
        let level = level(req.consistency)?;
        let op =
            convert::append_op(req.value, req.ttl_ms, &req.request_id).map_err(|e| to_status(e.into()))?;
        match self.write(req.key, op, level).await? {
            (OpOutcome::Appended { len }, m) => Ok(Response::new(pb::AppendResponse {
                length: len,
                version: m.version,
                ttl_remaining_ms: m.ttl_remaining_ms,
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    pub(crate) async fn serve_set_add(
        &self,
        req: Request<pb::SetAddRequest>,
    ) -> Result<Response<pb::SetChangeResponse>, Status> {
        route_key!(self, req, set_add, true);
        let req = req.into_inner();
        let level = level(req.consistency)?;
        let op = Op::SetAdd { members: req.members, ttl_ms: req.ttl_ms };
        set_change(self.write(req.key, op, level).await?)
    }

    pub(crate) async fn serve_set_remove(
        &self,
        req: Request<pb::SetRemoveRequest>,
    ) -> Result<Response<pb::SetChangeResponse>, Status> {
        route_key!(self, req, set_remove, true);
        let req = req.into_inner();
        let level = level(req.consistency)?;
        set_change(self.write(req.key, Op::SetRemove { members: req.members }, level).await?)
    }

    pub(crate) async fn serve_expire(
        &self,
        req: Request<pb::ExpireRequest>,
    ) -> Result<Response<pb::ExpireResponse>, Status> {
        route_key!(self, req, expire, true);
        let req = req.into_inner();
        let level = level(req.consistency)?;
        match self.write(req.key, Op::Expire { ttl_ms: req.ttl_ms }, level).await? {
            (OpOutcome::Expired { existed }, m) => Ok(Response::new(pb::ExpireResponse {
                existed,
                version: m.version,
                ttl_remaining_ms: m.ttl_remaining_ms,
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    pub(crate) async fn serve_set_members(
        &self,
        req: Request<pb::SetMembersRequest>,
    ) -> Result<Response<pb::SetMembersResponse>, Status> {
        route_key!(self, req, set_members, true);
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

    pub(crate) async fn serve_scan(
        &self,
        req: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let req = req.into_inner();
        let level = level(req.consistency)?;
        let keys_only = req.keys_only;
        let scan = ScanRequest {
            prefix: req.prefix.clone(),
            start_key: req.start_key.clone(),
            limit: req.limit,
            page_token: req.page_token.clone(),
        };
        let Some(cluster) = &self.cluster else {
            let result = self.run(move |n| n.scan(&scan)).await?;
            let now = result.now;
            return Ok(Response::new(pb::ScanResponse {
                entries: result.items.into_iter().map(|(k, rec)| entry(k, &rec, now, keys_only)).collect(),
                next_page_token: result.next_page_token,
            }));
        };
        let (start, limit) = self.node.scan_bounds(&scan).map_err(to_status)?;
        let local = cluster.scan(scan, level).await?;
        let residency = cluster.residency();
        let installed = residency.installed();
        let now = local.now;
        // This region's keys, without any it may not hold (not yet erased after a policy
        // change), then, unless the request was forwarded here, the keys that rules with
        // `forward` keep in other regions, from the nearest of them.
        let mut sources = vec![(
            local
                .items
                .into_iter()
                .filter(|(k, _)| installed.policy.allows(k, residency.region()))
                .map(|(k, rec)| entry(k, &rec, now, keys_only))
                .collect(),
            crate::api::forward::token_key(&local.next_page_token),
        )];
        if !forwarded {
            for rule in installed.policy.rules() {
                let overlaps = rule.prefix.starts_with(&req.prefix) || req.prefix.starts_with(&rule.prefix);
                if rule.allows(residency.region())
                    || rule.on_foreign != geokv_topology::OnForeign::Forward
                    || !overlaps
                {
                    continue;
                }
                let sub = pb::ScanRequest {
                    prefix: if rule.prefix.len() > req.prefix.len() {
                        rule.prefix.clone()
                    } else {
                        req.prefix.clone()
                    },
                    start_key: start.clone(),
                    limit: limit as u32,
                    page_token: Vec::new(),
                    consistency: req.consistency,
                    keys_only,
                };
                let regions =
                    geokv_topology::Policy::forward_order(rule, residency.region(), residency.topology());
                let addrs = residency.forward_addrs(&regions);
                let page = self
                    .forwarder()?
                    .call(&addrs, sub, true, |mut c, r| async move { c.scan(r).await })
                    .await?;
                let page = page.into_inner();
                let mine = |k: &[u8]| installed.policy.rule_for(k).name == rule.name;
                sources.push((
                    page.entries.into_iter().filter(|e| mine(&e.key)).collect(),
                    crate::api::forward::token_key(&page.next_page_token),
                ));
            }
        }
        let (entries, next) = crate::api::forward::merge_pages(sources, limit);
        Ok(Response::new(pb::ScanResponse { entries, next_page_token: crate::node::page_token(next) }))
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
