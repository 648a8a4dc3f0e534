//! The client's errors: what went wrong locally (a bad endpoint, TLS settings, no connection)
//! or what a node answered, with the structured details geokv attaches (docs/api.md, "Error
//! details"). None of it is a gRPC library's type, so the API does not change when the
//! transport underneath does.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The domain of geokv's `ErrorInfo` reasons.
pub const ERROR_DOMAIN: &str = "geokv.io";
/// The response metadata in which a coordinator says whether a failed write may have been
/// stored (`maybe-applied` or `not-applied`).
const FAILURE_METADATA: &str = "geokv-failure";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("TLS settings: {0}")]
    Tls(String),
    /// The call failed at the node or on the way: a gRPC status, with geokv's details.
    #[error("{0}")]
    Status(Status),
}

pub type Result<T> = std::result::Result<T, ClientError>;

impl ClientError {
    /// The stable name of the cause a node gave (`google.rpc.ErrorInfo.reason` of domain
    /// `geokv.io`: `WRONG_TYPE`, `TOO_LARGE`, `QUORUM_NOT_REACHED`, ...; docs/api.md, "Error
    /// details"). Match on this rather than on messages.
    pub fn reason(&self) -> Option<&str> {
        self.status().and_then(Status::reason)
    }

    /// How long the node suggests waiting before trying again (`google.rpc.RetryInfo`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.status().and_then(Status::retry_after)
    }

    /// The status code, when the call got as far as one (from the node, or from the
    /// connection failing under it).
    pub fn code(&self) -> Option<Code> {
        self.status().map(Status::code)
    }

    /// Whether the call was certainly not applied: it never left this client (a bad endpoint,
    /// TLS settings, no connection), or see [`Status::not_applied`]. Even a write that must not
    /// run twice may be sent again then; after any other failure its outcome is unknown.
    pub fn not_applied(&self) -> bool {
        match self {
            ClientError::Status(s) => s.not_applied(),
            ClientError::Endpoint { .. } | ClientError::Connect { .. } | ClientError::Tls(_) => true,
        }
    }

    /// The status, when the call got as far as one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Status(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn from_grpc(s: tonic::Status) -> Self {
        ClientError::Status(Status::from_grpc(&s))
    }
}

/// gRPC status codes (the same numbers and meanings:
/// <https://grpc.github.io/grpc/core/md_doc_statuscodes.html>).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    Ok,
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// The code numbered `n` on the wire (`Unknown` for a number gRPC does not define).
    pub fn from_i32(n: i32) -> Code {
        Code::from_grpc(tonic::Code::from_i32(n))
    }

    fn from_grpc(c: tonic::Code) -> Code {
        use tonic::Code as G;
        match c {
            G::Ok => Code::Ok,
            G::Cancelled => Code::Cancelled,
            G::Unknown => Code::Unknown,
            G::InvalidArgument => Code::InvalidArgument,
            G::DeadlineExceeded => Code::DeadlineExceeded,
            G::NotFound => Code::NotFound,
            G::AlreadyExists => Code::AlreadyExists,
            G::PermissionDenied => Code::PermissionDenied,
            G::ResourceExhausted => Code::ResourceExhausted,
            G::FailedPrecondition => Code::FailedPrecondition,
            G::Aborted => Code::Aborted,
            G::OutOfRange => Code::OutOfRange,
            G::Unimplemented => Code::Unimplemented,
            G::Internal => Code::Internal,
            G::Unavailable => Code::Unavailable,
            G::DataLoss => Code::DataLoss,
            G::Unauthenticated => Code::Unauthenticated,
        }
    }
}

/// One field of a request a node refused, and why (`google.rpc.BadRequest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// A failed call's status: the code, the node's message, and geokv's structured details.
#[derive(Clone, Debug)]
pub struct Status {
    code: Code,
    message: String,
    reason: Option<String>,
    metadata: BTreeMap<String, String>,
    retry_after: Option<Duration>,
    violations: Vec<FieldViolation>,
    /// The connection broke under the call (a transport error, not the node's answer).
    broken: bool,
    /// Connecting failed: the call never left this client.
    not_sent: bool,
    /// The coordinator said nothing was written (`geokv-failure: not-applied`).
    said_not_applied: bool,
}

impl Status {
    /// A status made here (a deadline the client enforced, say), without details.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
            reason: None,
            metadata: BTreeMap::new(),
            retry_after: None,
            violations: Vec::new(),
            broken: false,
            not_sent: false,
            said_not_applied: false,
        }
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `ErrorInfo` reason of domain `geokv.io` (see [`ClientError::reason`]).
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// A value of the `ErrorInfo` metadata (geokv's own reasons carry none yet: this reads what
    /// a future node or a proxy may add).
    pub fn metadata(&self, name: &str) -> Option<&str> {
        self.metadata.get(name).map(String::as_str)
    }

    /// How long the node suggests waiting before trying again (`RetryInfo`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The request fields a node refused (`BadRequest`): a key, value or members over their
    /// size or count limit (docs/api.md, "Error details").
    pub fn field_violations(&self) -> &[FieldViolation] {
        &self.violations
    }

    /// Whether the connection failed under the call (the node closed it, or it broke) rather
    /// than the node answering with this status.
    pub fn connection_lost(&self) -> bool {
        self.broken || self.not_sent
    }

    /// Whether the call certainly never reached a node (connecting to it failed), so it was not
    /// applied: even a call that must not run twice may be sent again.
    pub fn not_sent(&self) -> bool {
        self.not_sent
    }

    /// Whether the write was certainly not applied anywhere: it never reached a node, or its
    /// coordinator said so (`geokv-failure: not-applied`, e.g. a quorum not reached with
    /// nothing written). Such a write may be sent again even if it must not run twice; any
    /// other failure of a write leaves its outcome unknown.
    pub fn not_applied(&self) -> bool {
        self.not_sent || self.said_not_applied
    }

    pub(crate) fn from_grpc(s: &tonic::Status) -> Status {
        use tonic_types::StatusExt;
        let details = s.get_error_details();
        let info = details.error_info().filter(|i| i.domain == ERROR_DOMAIN);
        let mut not_sent = false;
        let mut cause = std::error::Error::source(s);
        while let Some(c) = cause {
            not_sent |= c.is::<tonic::ConnectError>();
            cause = c.source();
        }
        Status {
            code: Code::from_grpc(s.code()),
            message: s.message().to_string(),
            reason: info.map(|i| i.reason.clone()),
            metadata: info.map(|i| i.metadata.clone().into_iter().collect()).unwrap_or_default(),
            retry_after: details.retry_info().and_then(|r| r.retry_delay),
            violations: details
                .bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(|v| FieldViolation {
                            field: v.field.clone(),
                            description: v.description.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            broken: std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>()),
            not_sent,
            said_not_applied: s
                .metadata()
                .get(FAILURE_METADATA)
                .is_some_and(|v| v.as_bytes() == b"not-applied"),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_keeps_the_code_message_and_geokv_details() {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::with_error_info(
            "QUORUM_NOT_REACHED",
            ERROR_DOMAIN,
            [("required".to_string(), "2".to_string())],
        );
        details.set_retry_info(Some(Duration::from_millis(250)));
        details.add_bad_request_violation("key", "empty");
        let s = tonic::Status::with_error_details(tonic::Code::Unavailable, "quorum not reached", details);
        let e = ClientError::from_grpc(s);
        assert_eq!(e.code(), Some(Code::Unavailable));
        assert_eq!(e.reason(), Some("QUORUM_NOT_REACHED"));
        assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
        let status = e.status().unwrap();
        assert_eq!(status.metadata("required"), Some("2"));
        assert_eq!(status.field_violations()[0].field, "key");
        assert!(!status.connection_lost());
        assert!(!status.not_applied(), "no word from the coordinator: unknown");
        let mut refused = tonic::Status::unavailable("quorum not reached");
        refused
            .metadata_mut()
            .insert(FAILURE_METADATA, tonic::metadata::MetadataValue::from_static("not-applied"));
        assert!(ClientError::from_grpc(refused).status().unwrap().not_applied());
        assert_eq!(e.to_string(), "Unavailable: quorum not reached");
        // Another domain's reason is not taken for geokv's.
        let other = ErrorDetails::with_error_info("X", "example.com", []);
        let e = ClientError::from_grpc(tonic::Status::with_error_details(tonic::Code::Internal, "x", other));
        assert_eq!(e.reason(), None);
        assert_eq!(Code::from_i32(14), Code::Unavailable);
        assert_eq!(Code::from_i32(99), Code::Unknown);
    }
}
