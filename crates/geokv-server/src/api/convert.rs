//! Conversions between protobuf messages and core types: the only place both meet.

use geokv_core::{OpOutcome, Record, Stamp, View};
use geokv_proto::v1 as pb;
use tonic::Status;

use crate::api::status::{code_reason, invalid, reason_of};

pub fn version(s: Stamp) -> pb::Version {
    pb::Version { hlc: s.time, node_id: s.node }
}

pub fn stamp(v: &pb::Version) -> Stamp {
    Stamp::new(v.hlc, v.node_id)
}

pub fn value(view: View) -> pb::Value {
    let kind = match view {
        View::Register(bytes) => pb::value::Kind::Register(bytes),
        View::Counter(n) => pb::value::Kind::Counter(n),
        View::Set(members) => pb::value::Kind::Set(pb::SetValue { members }),
    };
    pb::Value { kind: Some(kind) }
}

/// The client's view of a visible record.
pub fn entry(key: Vec<u8>, rec: &Record, now_ms: u64, keys_only: bool) -> pb::Entry {
    pb::Entry {
        key,
        value: if keys_only { None } else { rec.view(now_ms).map(value) },
        version: Some(version(rec.version())),
        ttl_remaining_ms: rec.ttl_remaining_ms(now_ms),
    }
}

/// Checks a consistency level. All levels are accepted; on a single node they coincide.
pub fn consistency(raw: i32) -> Result<pb::Consistency, Status> {
    pb::Consistency::try_from(raw).map_err(|_| {
        invalid(format!(
            "consistency {raw} is not a known level; use 0 (UNSPECIFIED, the server default), 1 (ONE), 2 (QUORUM) or 3 (ALL)"
        ))
    })
}

/// The quorum level of a request's consistency field (UNSPECIFIED means QUORUM).
pub fn level(raw: i32) -> Result<geokv_cluster::Level, Status> {
    Ok(level_of(consistency(raw)?))
}

/// Levels as the coordinator counts them; UNSPECIFIED means QUORUM. (The one conversion
/// between the wire's consistency and the protocol's level, both ways.)
pub fn level_of(c: pb::Consistency) -> geokv_cluster::Level {
    use geokv_cluster::Level;
    match c {
        pb::Consistency::One => Level::One,
        pb::Consistency::All => Level::All,
        pb::Consistency::Quorum | pb::Consistency::Unspecified => Level::Quorum,
    }
}

pub fn level_to_pb(level: geokv_cluster::Level) -> pb::Consistency {
    use geokv_cluster::Level;
    match level {
        Level::One => pb::Consistency::One,
        Level::Quorum => pb::Consistency::Quorum,
        Level::All => pb::Consistency::All,
    }
}

/// Response fields shared by every write outcome.
pub struct WriteMeta {
    pub version: Option<pb::Version>,
    pub ttl_remaining_ms: Option<u64>,
}

/// The version and TTL a write that did `out` answers with: the key's new ones, or none for
/// a write that changed nothing.
pub fn write_meta(out: &OpOutcome, rec: &Record, now_ms: u64) -> WriteMeta {
    if out.changes_nothing() {
        return WriteMeta { version: None, ttl_remaining_ms: None };
    }
    WriteMeta { version: Some(version(rec.version())), ttl_remaining_ms: rec.ttl_remaining_ms(now_ms) }
}

/// The batch-item form of a write outcome.
pub fn outcome(out: OpOutcome, rec: &Record, now_ms: u64) -> pb::write_result::Outcome {
    use pb::write_result::Outcome;
    let WriteMeta { version, ttl_remaining_ms } = write_meta(&out, rec, now_ms);
    match out {
        OpOutcome::Put => Outcome::Put(pb::PutResponse { version, ttl_remaining_ms }),
        OpOutcome::Deleted { existed } => Outcome::Delete(pb::DeleteResponse { existed, version }),
        OpOutcome::Appended { len } => {
            Outcome::Append(pb::AppendResponse { length: len, version, ttl_remaining_ms })
        }
        OpOutcome::Counter { value } => {
            Outcome::Increment(pb::IncrementResponse { value, version, ttl_remaining_ms })
        }
        OpOutcome::SetChanged { changed, size } => {
            Outcome::SetChange(pb::SetChangeResponse { changed, size, version, ttl_remaining_ms })
        }
        OpOutcome::Expired { existed } => {
            Outcome::Expire(pb::ExpireResponse { existed, version, ttl_remaining_ms })
        }
    }
}

/// An increment as a core operation: with a request id (16 bytes), one whose attempts count
/// once.
pub fn increment_op(
    delta: i64,
    ttl_ms: Option<u64>,
    request_id: &[u8],
) -> Result<geokv_core::Op, geokv_core::CoreError> {
    use geokv_core::Op;
    Ok(match request_id_of(request_id, "an increment")? {
        None => Op::Increment { delta, ttl_ms },
        Some(id) => Op::IncrementOnce { delta, ttl_ms, id },
    })
}

/// An append as a core operation: with a request id (16 bytes), one applied once however
/// many times it is sent.
pub fn append_op(
    value: Vec<u8>,
    ttl_ms: Option<u64>,
    request_id: &[u8],
) -> Result<geokv_core::Op, geokv_core::CoreError> {
    use geokv_core::Op;
    Ok(match request_id_of(request_id, "an append")? {
        None => Op::Append { value, ttl_ms },
        Some(id) => Op::AppendOnce { value, ttl_ms, id },
    })
}

/// A request id: none when empty, else exactly 16 bytes.
fn request_id_of(request_id: &[u8], what: &str) -> Result<Option<u128>, geokv_core::CoreError> {
    if request_id.is_empty() {
        return Ok(None);
    }
    let id: [u8; 16] = request_id.try_into().map_err(|_| {
        geokv_core::CoreError::InvalidArgument(format!(
            "request_id is {} bytes; it must be 16 (a random UUID, say), or empty for {what} without retries",
            request_id.len()
        ))
    })?;
    Ok(Some(u128::from_be_bytes(id)))
}

/// A batch item as a key and a core operation.
pub fn batch_op(op: pb::WriteOp) -> Result<(Vec<u8>, geokv_core::Op), geokv_core::CoreError> {
    use geokv_core::Op;
    use pb::write_op::Op as W;
    match op.op {
        Some(W::Put(p)) => Ok((p.key, Op::Put { value: p.value, ttl_ms: p.ttl_ms })),
        Some(W::Delete(d)) => Ok((d.key, Op::Delete)),
        Some(W::Increment(i)) => Ok((i.key, increment_op(i.delta, i.ttl_ms, &i.request_id)?)),
        Some(W::Append(a)) => Ok((a.key, append_op(a.value, a.ttl_ms, &a.request_id)?)),
        Some(W::SetAdd(s)) => Ok((s.key, Op::SetAdd { members: s.members, ttl_ms: s.ttl_ms })),
        Some(W::SetRemove(s)) => Ok((s.key, Op::SetRemove { members: s.members })),
        Some(W::Expire(e)) => Ok((e.key, Op::Expire { ttl_ms: e.ttl_ms })),
        None => Err(geokv_core::CoreError::InvalidArgument(
            "the op is empty; set one of put, delete, increment, append, set_add, set_remove, expire".into(),
        )),
    }
}

/// A refusal of one batch item, naming its position.
pub fn item_status(s: &Status, field: &str, i: usize) -> Status {
    let reason = reason_of(s).unwrap_or_else(|| code_reason(s.code()));
    let message = format!("{field}[{i}]: {}", s.message());
    crate::api::status::detailed(s.code(), message, &reason, s.metadata().clone())
}

/// A batch item's error result.
pub fn item_error(s: &Status) -> pb::WriteResult {
    pb::WriteResult {
        version: None,
        ttl_remaining_ms: None,
        outcome: Some(pb::write_result::Outcome::Error(pb::ItemError {
            code: s.code() as i32,
            message: s.message().to_string(),
            reason: reason_of(s).unwrap_or_else(|| code_reason(s.code())),
            retry_after_ms: {
                use tonic_types::StatusExt;
                s.get_details_retry_info().and_then(|r| r.retry_delay).map(|d| d.as_millis() as u64)
            },
        })),
    }
}
