//! Maps node errors to gRPC status codes with messages a person can act on.

use std::time::Duration;

use geokv_core::CoreError;
use geokv_protocol::{core_reason, Failure, Kind, PeerError, QUORUM_FAILED, QUORUM_NOT_REACHED};
use geokv_storage::StorageError;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every `google.rpc.ErrorInfo` a node sends.
pub const ERROR_DOMAIN: &str = "geokv.io";
/// The retry delay suggested (`google.rpc.RetryInfo`) with failures for want of replicas.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// A status with the richer error model's details: `ErrorInfo { reason, domain }` always,
/// `RetryInfo` when retrying later may succeed (UNAVAILABLE, unless `metadata` says the write
/// may have been applied: sending it again may apply it twice), and `metadata` kept.
pub fn detailed(code: Code, message: impl Into<String>, reason: &str, metadata: MetadataMap) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    let maybe_applied = metadata.get(FAILURE_METADATA).is_some_and(|v| v.as_bytes() == b"maybe-applied");
    if code == Code::Unavailable && !maybe_applied {
        details.set_retry_info(Some(RETRY_AFTER));
    }
    Status::with_error_details_and_metadata(code, message, details, metadata)
}

/// The reason of a failure with no more precise one: its code's name (`UNAVAILABLE`, ...).
pub fn code_reason(code: Code) -> String {
    let mut reason = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            reason.push('_');
        }
        reason.push(c.to_ascii_uppercase());
    }
    reason
}

/// A status whose reason is its code's name ([`code_reason`]).
pub fn coded(code: Code, message: impl Into<String>) -> Status {
    detailed(code, message, &code_reason(code), MetadataMap::new())
}

/// Gives an error response that carries no details (made by tonic itself, or by a handler
/// that built a bare status) its code's reason, so that every error a client receives has an
/// `ErrorInfo` (a status in the response headers: unary calls and streams that fail before
/// their first message).
pub fn fill_details(headers: &mut http::HeaderMap) {
    const DETAILS: &str = "grpc-status-details-bin";
    if headers.contains_key(DETAILS) {
        return;
    }
    // The details repeat the status's code and message (clients such as grpcio-status check
    // that they match the headers').
    let Some(status) = Status::from_header_map(headers) else { return };
    if status.code() == Code::Ok {
        return;
    }
    let with = coded(status.code(), status.message()).into_http::<()>();
    if let Some(v) = with.headers().get(DETAILS) {
        headers.insert(DETAILS, v.clone());
    }
}

/// The `ErrorInfo.reason` a status carries, if any.
pub fn reason_of(s: &Status) -> Option<String> {
    s.get_details_error_info().filter(|i| i.domain == ERROR_DOMAIN).map(|i| i.reason)
}

/// The stable name of a storage failure (docs/api.md, "Error details").
fn storage_reason(err: &StorageError) -> &'static str {
    match err {
        StorageError::Core(core) => core_reason(core),
        StorageError::RecordTooLarge { .. } => "RECORD_TOO_LARGE",
        StorageError::NotAdmitted { .. } => "RESIDENCY_NOT_ADMITTED",
        StorageError::ClockDrift { .. } => "CLOCK_DRIFT",
        StorageError::Corrupt { .. } => "CORRUPT_STATE",
        StorageError::Engine(_)
        | StorageError::Incompatible { .. }
        | StorageError::BatchFailed(_)
        | StorageError::Io { .. } => "STORAGE_FAILED",
    }
}

pub fn code_of(err: &StorageError) -> Code {
    match err {
        StorageError::Core(core) => code_for(Kind::of(core)),
        StorageError::RecordTooLarge { .. }
        | StorageError::NotAdmitted { .. }
        | StorageError::ClockDrift { .. } => Code::FailedPrecondition,
        StorageError::Corrupt { .. } => Code::DataLoss,
        StorageError::Engine(_) => Code::Internal,
        StorageError::Incompatible { .. } | StorageError::BatchFailed(_) | StorageError::Io { .. } => {
            Code::Internal
        }
    }
}

pub fn to_status(err: StorageError) -> Status {
    let code = code_of(&err);
    let message = match &err {
        StorageError::Engine(_) => format!(
            "{err}; the node's storage failed: a write may or may not have been applied (retrying an Increment, Append or SetAdd may apply it twice)"
        ),
        StorageError::Core(CoreError::StaleStamp { .. }) => format!("{err}; retry the request"),
        _ => err.to_string(),
    };
    if matches!(code, Code::Unavailable | Code::DataLoss | Code::Internal) {
        tracing::error!(%code, %message, "request failed");
    }
    let status = detailed(code, message, storage_reason(&err), MetadataMap::new());
    match &err {
        StorageError::Core(core) => with_field(status, core),
        _ => status,
    }
}

/// The request field a limit refusal is about (`BadRequest`): a key, value, members, batch
/// keys or ops, or a scan limit over its size or count.
fn field_of(e: &CoreError) -> Option<&'static str> {
    let (CoreError::TooLarge { what, .. } | CoreError::TooMany { what, .. }) = e else { return None };
    Some(match *what {
        "value" | "appended value" | "value after append" => "value",
        "set member" => "members",
        "BatchGet keys" => "keys",
        "BatchWrite ops" => "ops",
        "scan limit" => "limit",
        other => other,
    })
}

/// `status` with a `BadRequest` naming the field `e` refused, if it names one.
fn with_field(status: Status, e: &CoreError) -> Status {
    let Some(field) = field_of(e) else { return status };
    let mut details = status.get_error_details();
    details.add_bad_request_violation(field, e.to_string());
    Status::with_error_details_and_metadata(
        status.code(),
        status.message(),
        details,
        status.metadata().clone(),
    )
}

/// A request refused by the data model's limits before anything ran: INVALID_ARGUMENT with
/// the refusal's own reason (`TOO_LARGE`, `TOO_MANY`, ...) and `message`.
pub fn refused_by(e: &CoreError, message: impl Into<String>) -> Status {
    with_field(detailed(Code::InvalidArgument, message, core_reason(e), MetadataMap::new()), e)
}

pub fn invalid(message: impl Into<String>) -> Status {
    detailed(Code::InvalidArgument, message, "INVALID_ARGUMENT", MetadataMap::new())
}

impl From<crate::region::MoveError> for Status {
    fn from(e: crate::region::MoveError) -> Self {
        use crate::region::MoveError;
        let message = e.to_string();
        match e {
            MoveError::Refused(_) => Status::failed_precondition(message),
            MoveError::Unavailable(_) => Status::unavailable(message),
            MoveError::Peer { error: PeerError::Answered(f), .. } => Status::new(code_for(f.kind), message),
            MoveError::Peer { error: PeerError::TimedOut(_), .. } => Status::deadline_exceeded(message),
            MoveError::Peer { .. } => Status::unavailable(message),
            MoveError::Corrupt { .. } => Status::data_loss(message),
            MoveError::Storage(e) => to_status(e),
            MoveError::Task(e) => e.into(),
        }
    }
}

impl From<crate::region::CoordinatorError> for Status {
    fn from(e: crate::region::CoordinatorError) -> Self {
        use crate::region::CoordinatorError;
        let message = e.to_string();
        match e {
            CoordinatorError::Failed(f) => failure_status(f),
            CoordinatorError::InvalidKey(core) => {
                detailed(Code::InvalidArgument, message, core_reason(&core), MetadataMap::new())
            }
            CoordinatorError::Corrupt(_) => {
                detailed(Code::DataLoss, message, "CORRUPT_STATE", MetadataMap::new())
            }
            CoordinatorError::BadAnswer(_) | CoordinatorError::NoAnswer(_) => Status::internal(message),
            CoordinatorError::Storage(e) => to_status(e),
            CoordinatorError::Task(e) => e.into(),
        }
    }
}

/// A failure of this node's own part in a round (its vote in a read, a write forwarded to
/// itself) as the protocol takes a peer's: what a peer answering with the same status means.
impl From<crate::region::CoordinatorError> for PeerError {
    fn from(e: crate::region::CoordinatorError) -> Self {
        match e {
            crate::region::CoordinatorError::Failed(f) => PeerError::Answered(f),
            other => peer_error(other.into()),
        }
    }
}

impl From<crate::region::AntiEntropyError> for Status {
    fn from(e: crate::region::AntiEntropyError) -> Self {
        use crate::region::AntiEntropyError;
        let message = e.to_string();
        match e {
            AntiEntropyError::UnknownPeer | AntiEntropyError::NoOutcome => Status::internal(message),
            AntiEntropyError::KeysFailed { .. } | AntiEntropyError::Stopped(_) => {
                Status::unavailable(message)
            }
            AntiEntropyError::Peer { error: PeerError::Answered(f), .. } => {
                Status::new(code_for(f.kind), message)
            }
            AntiEntropyError::Peer { error: PeerError::TimedOut(_), .. } => {
                Status::deadline_exceeded(message)
            }
            AntiEntropyError::Peer { .. } => Status::unavailable(message),
            AntiEntropyError::Storage(e) => to_status(e),
            AntiEntropyError::Task(e) => e.into(),
        }
    }
}

/// Why the merge here and push back of one key failed, as the exchange takes it: the push's
/// own failure, or what a peer failing with the same status would mean.
impl From<crate::region::AntiEntropyError> for PeerError {
    fn from(e: crate::region::AntiEntropyError) -> Self {
        match e {
            crate::region::AntiEntropyError::Peer { error, .. } => error,
            other => peer_error(other.into()),
        }
    }
}

impl From<crate::residency::ResidencyError> for Status {
    fn from(e: crate::residency::ResidencyError) -> Self {
        use crate::residency::ResidencyError;
        let message = e.to_string();
        match e {
            ResidencyError::NotAdopted(_) => Status::failed_precondition(message),
            ResidencyError::InvalidPolicy(_) | ResidencyError::InvalidKey(_) => {
                Status::invalid_argument(message)
            }
            ResidencyError::Enforce(_) | ResidencyError::Saved(_) => Status::internal(message),
            ResidencyError::Peer { error: PeerError::Answered(f), .. } => {
                Status::new(code_for(f.kind), message)
            }
            ResidencyError::Peer { error: PeerError::TimedOut(_), .. } => Status::deadline_exceeded(message),
            ResidencyError::Peer { .. } => Status::unavailable(message),
            ResidencyError::Storage(e) => to_status(e),
            ResidencyError::Task(e) => e.into(),
        }
    }
}

/// Metadata of a status that carries a coordinator's [`Failure`]: `maybe-applied` or
/// `not-applied`. A forwarding node reads it to tell a coordinator's final answer from a
/// failed connection (both may be `UNAVAILABLE`), and the client sees whether a failed write
/// may have been stored.
pub const FAILURE_METADATA: &str = "geokv-failure";

pub fn code_for(kind: Kind) -> Code {
    match kind {
        Kind::Unavailable => Code::Unavailable,
        Kind::InvalidArgument => Code::InvalidArgument,
        Kind::FailedPrecondition => Code::FailedPrecondition,
        Kind::DataLoss => Code::DataLoss,
        Kind::ResourceExhausted => Code::ResourceExhausted,
        Kind::OutOfRange => Code::OutOfRange,
        Kind::Aborted => Code::Aborted,
        Kind::Internal => Code::Internal,
        Kind::Other => Code::Unknown,
    }
}

pub fn kind_of(code: Code) -> Kind {
    match code {
        Code::Unavailable => Kind::Unavailable,
        Code::InvalidArgument => Kind::InvalidArgument,
        Code::FailedPrecondition => Kind::FailedPrecondition,
        Code::DataLoss => Kind::DataLoss,
        Code::ResourceExhausted => Kind::ResourceExhausted,
        Code::OutOfRange => Kind::OutOfRange,
        Code::Aborted => Kind::Aborted,
        Code::Internal => Kind::Internal,
        _ => Kind::Other,
    }
}

/// A coordinator's failure as the status a client (or a forwarding node) receives.
pub fn failure_status(f: Failure) -> Status {
    let mut metadata = MetadataMap::new();
    let applied = if f.maybe_applied { "maybe-applied" } else { "not-applied" };
    metadata.insert(FAILURE_METADATA, tonic::metadata::MetadataValue::from_static(applied));
    let reason = f.reason().to_string();
    detailed(code_for(f.kind), f.message, &reason, metadata)
}

/// What a failed call to a peer means for the protocol: a coordinator's final answer (it
/// carries [`FAILURE_METADATA`]), a refusal (any code but those of a failed connection), or a
/// connection that failed before or during the call.
pub fn peer_error(s: Status) -> PeerError {
    if let Some(applied) = s.metadata().get(FAILURE_METADATA) {
        let maybe_applied = applied.as_bytes() != b"not-applied";
        let f = Failure {
            kind: kind_of(s.code()),
            maybe_applied,
            message: s.message().to_string(),
            reason: reason_of(&s),
        };
        return PeerError::Answered(f);
    }
    let from_connection = std::error::Error::source(&s).is_some_and(|e| e.is::<tonic::transport::Error>());
    if never_sent(&s) {
        return PeerError::NeverSent(s.message().to_string());
    }
    let message = s.message().to_string();
    match s.code() {
        Code::DeadlineExceeded => PeerError::TimedOut(message),
        _ if from_connection => PeerError::Transport(message),
        // A coordinator of an earlier version (no metadata) that could not reach a quorum.
        Code::Unavailable if message.starts_with(QUORUM_FAILED) => {
            let maybe_applied = !message.ends_with("nothing was written");
            PeerError::Answered(Failure {
                kind: Kind::Unavailable,
                maybe_applied,
                message,
                reason: Some(QUORUM_NOT_REACHED.into()),
            })
        }
        Code::Unavailable | Code::Cancelled | Code::Unknown => PeerError::Transport(message),
        // Refusals before anything is stored; any other answer (an internal or storage
        // failure) may come after the write was stored.
        code => {
            let refused = matches!(
                code,
                Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::OutOfRange
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::NotFound
            );
            let reason = reason_of(&s);
            PeerError::Answered(Failure { kind: kind_of(code), maybe_applied: !refused, message, reason })
        }
    }
}

/// Whether a failed call certainly never reached the peer: no connection could be made.
/// (Any other transport failure may have come after the peer ran the request.)
fn never_sent(s: &Status) -> bool {
    use std::io::ErrorKind;
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::HostUnreachable
            ) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinators_failure_survives_the_wire_with_its_promise() {
        for maybe_applied in [false, true] {
            let f = Failure::quorum("x", maybe_applied);
            assert_eq!(peer_error(failure_status(f.clone())), PeerError::Answered(f));
        }
    }

    #[test]
    fn every_error_carries_a_stable_reason_that_survives_a_forward() {
        let info = |s: &Status| s.get_details_error_info().map(|i| (i.reason, i.domain));
        let wrong = StorageError::Core(CoreError::WrongType {
            op: "Increment",
            expected: geokv_core::Kind::Counter,
            actual: geokv_core::Kind::Register,
        });
        let s = to_status(wrong);
        assert_eq!(info(&s), Some(("WRONG_TYPE".into(), ERROR_DOMAIN.into())));
        assert!(s.get_details_retry_info().is_none());
        // A coordinator's refusal read by a forwarding node and answered again keeps its reason.
        let PeerError::Answered(f) = peer_error(s) else { panic!("an answer") };
        assert_eq!(f.reason(), "WRONG_TYPE");
        assert_eq!(info(&failure_status(f)).unwrap().0, "WRONG_TYPE");
        // Too few replicas: a reason, the promise, and a delay to retry after.
        let s = failure_status(Failure::quorum("1 of 2 acknowledged", false));
        assert_eq!(info(&s).unwrap().0, QUORUM_NOT_REACHED);
        assert_eq!(s.get_details_retry_info().and_then(|r| r.retry_delay), Some(RETRY_AFTER));
        assert_eq!(s.metadata().get(FAILURE_METADATA).unwrap(), "not-applied");

        // ... but no suggestion to retry a write that may have been applied.
        let s = failure_status(Failure::quorum("1 of 2 acknowledged", true));
        assert!(s.get_details_retry_info().is_none());
        // A coalesced item's status keeps what the single call's had.
        let (code, message, failure, details) = crate::peer::coalesce::item_failure(&s);
        let again = crate::peer::coalesce::item_status(code, message, &failure, details);
        assert_eq!(info(&again).unwrap().0, QUORUM_NOT_REACHED);
        assert_eq!(again.metadata().get(FAILURE_METADATA).unwrap(), "maybe-applied");
        let big = StorageError::Core(CoreError::TooLarge { what: "key", actual: 9, limit: 4, setting: "x" });
        let big = to_status(big);
        assert_eq!(info(&big).unwrap().0, "TOO_LARGE");
        let fields = big.get_details_bad_request().unwrap().field_violations;
        assert_eq!(fields[0].field, "key");
        assert!(fields[0].description.contains("over the limit"), "{fields:?}");
        assert_eq!(info(&invalid("bad")).unwrap().0, "INVALID_ARGUMENT");
        // A peer's status without details (an older node) falls back to its code's class.
        let PeerError::Answered(f) = peer_error(Status::failed_precondition("old")) else { panic!() };
        assert_eq!(f.reason(), "FAILED_PRECONDITION");
    }

    #[test]
    fn an_error_response_without_details_gets_its_codes_reason() {
        assert_eq!(code_reason(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_reason(Code::Unavailable), "UNAVAILABLE");
        let mut headers = Status::resource_exhausted("too big").into_http::<()>().headers().clone();
        fill_details(&mut headers);
        let filled = Status::from_header_map(&headers).unwrap();
        assert_eq!(filled.code(), Code::ResourceExhausted);
        assert_eq!(reason_of(&filled).as_deref(), Some("RESOURCE_EXHAUSTED"));
        let inner = <tonic_types::pb::Status as prost::Message>::decode(filled.details()).unwrap();
        assert_eq!((inner.code, inner.message.as_str()), (Code::ResourceExhausted as i32, "too big"));
        // A status with details keeps them; a success gets none.
        let mut headers = detailed(Code::Unavailable, "x", "QUORUM_NOT_REACHED", MetadataMap::new())
            .into_http::<()>()
            .headers()
            .clone();
        fill_details(&mut headers);
        assert_eq!(
            reason_of(&Status::from_header_map(&headers).unwrap()).as_deref(),
            Some("QUORUM_NOT_REACHED")
        );
        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", http::HeaderValue::from_static("0"));
        fill_details(&mut ok);
        assert!(!ok.contains_key("grpc-status-details-bin"));
    }

    #[test]
    fn answers_without_metadata_are_classified_by_code() {
        let refused = peer_error(Status::failed_precondition("wrong type"));
        assert!(matches!(refused, PeerError::Answered(Failure { maybe_applied: false, .. })), "{refused:?}");
        let internal = peer_error(Status::internal("storage failed"));
        assert!(matches!(internal, PeerError::Answered(Failure { maybe_applied: true, .. })), "{internal:?}");
        assert!(matches!(peer_error(Status::unavailable("connection reset")), PeerError::Transport(_)));
        assert!(matches!(peer_error(Status::deadline_exceeded("slow")), PeerError::TimedOut(_)));
        // An older coordinator's quorum failure is its answer, with its promise.
        let old = peer_error(Status::unavailable("quorum not reached: the read failed; nothing was written"));
        assert!(matches!(old, PeerError::Answered(Failure { maybe_applied: false, .. })), "{old:?}");
        let old = peer_error(Status::unavailable("quorum not reached: 1 acknowledged"));
        assert!(matches!(old, PeerError::Answered(Failure { maybe_applied: true, .. })), "{old:?}");
    }

    #[test]
    fn a_coordinators_errors_keep_their_codes_and_messages() {
        use crate::region::CoordinatorError;
        let f = Failure::quorum("1 of 2 acknowledged", true);
        let s = Status::from(CoordinatorError::Failed(f.clone()));
        assert_eq!((s.code(), s.message()), (Code::Unavailable, f.message.as_str()));
        assert_eq!(PeerError::from(CoordinatorError::Failed(f.clone())), PeerError::Answered(f));
        let s = Status::from(CoordinatorError::NoAnswer("read"));
        assert_eq!((s.code(), s.message()), (Code::Internal, "the read stopped without an answer"));
        let s = Status::from(CoordinatorError::NoAnswer("write's coordinator"));
        assert_eq!(s.message(), "the write's coordinator stopped without an answer");
        let corrupt = geokv_storage::codec::DecodeError::UnknownFlags(9);
        let s = Status::from(CoordinatorError::Corrupt(corrupt.clone()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::DataLoss, format!("a replica sent a corrupt state: {corrupt}").as_str())
        );
        let s = Status::from(CoordinatorError::InvalidKey(CoreError::InvalidArgument("key is empty".into())));
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "invalid argument: key is empty"));
        // This node's own refusal counts as a peer's: nothing stored.
        let refused = CoordinatorError::Storage(StorageError::Core(CoreError::InvalidArgument("no".into())));
        let e = PeerError::from(refused);
        assert!(
            matches!(
                &e,
                PeerError::Answered(Failure { kind: Kind::InvalidArgument, maybe_applied: false, .. })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn anti_entropy_errors_keep_their_codes_and_messages() {
        use crate::region::AntiEntropyError;
        let s = Status::from(AntiEntropyError::KeysFailed { failed: 3 });
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "3 keys could not be exchanged; the next round retries them")
        );
        let s = Status::from(AntiEntropyError::Stopped("the peer's summary: gone".into()));
        assert_eq!((s.code(), s.message()), (Code::Unavailable, "the peer's summary: gone"));
        let s = Status::from(AntiEntropyError::UnknownPeer);
        assert_eq!((s.code(), s.message()), (Code::Internal, "unknown peer"));
        let s = Status::from(AntiEntropyError::NoOutcome);
        assert_eq!(s.message(), "the anti-entropy exchange stopped without an outcome");
        // A failed push is the push's own failure; a local one what its status would mean.
        let timed_out = PeerError::TimedOut("no answer within 1s".into());
        let e = PeerError::from(AntiEntropyError::Peer { node: 2, error: timed_out.clone() });
        assert_eq!(e, timed_out);
        let local = AntiEntropyError::Storage(StorageError::Core(CoreError::InvalidArgument("no".into())));
        assert!(matches!(
            PeerError::from(local),
            PeerError::Answered(Failure { kind: Kind::InvalidArgument, .. })
        ));
    }

    #[test]
    fn residency_errors_keep_their_codes_and_messages() {
        use crate::residency::ResidencyError;
        let s = Status::from(ResidencyError::NotAdopted("this node already holds another policy".into()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::FailedPrecondition, "this node already holds another policy")
        );
        // Enforcement failures are internal whatever the storage error (as before); a read of a
        // key's state answers as any storage failure.
        let e = || StorageError::Core(CoreError::InvalidArgument("no".into()));
        let s = Status::from(ResidencyError::Enforce(e()));
        assert_eq!((s.code(), s.message()), (Code::Internal, e().to_string().as_str()));
        assert_eq!(Status::from(ResidencyError::Storage(e())).code(), Code::InvalidArgument);
        let s = Status::from(ResidencyError::Saved("cannot save the residency policy: x".into()));
        assert_eq!((s.code(), s.message()), (Code::Internal, "cannot save the residency policy: x"));
        let s = Status::from(ResidencyError::InvalidKey(CoreError::InvalidArgument("key is empty".into())));
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "invalid argument: key is empty"));
    }
}
