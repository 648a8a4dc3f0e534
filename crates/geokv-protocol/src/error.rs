//! Failures, typed: what a coordinator answers when a request fails ([`Failure`]), and what
//! became of a call to a peer that did not succeed ([`PeerError`]). The drivers convert them
//! to and from their transport's errors once (the server: `tonic::Status`).

use std::fmt;

use geokv_core::CoreError;

/// Prefix of the message of a request that failed for want of replicas.
pub const QUORUM_FAILED: &str = "quorum not reached";

/// The class of a failure, as a client acts on it. The server maps each to one gRPC code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Too few replicas, or an outcome that cannot be known: try again later.
    Unavailable,
    /// The request is malformed or out of limits.
    InvalidArgument,
    /// The request is valid but the key's state or the node's condition refuses it (a
    /// wrong-type write, a clock too far ahead, a residency policy).
    FailedPrecondition,
    /// A stored state failed its checksum.
    DataLoss,
    /// A size or rate limit.
    ResourceExhausted,
    /// An arithmetic result out of range (a counter overflow).
    OutOfRange,
    /// A conflict the client should retry (a stale stamp).
    Aborted,
    /// A bug or an unexpected condition on the node.
    Internal,
    /// Anything else a peer answered.
    Other,
}

impl Kind {
    /// The class of a refusal by the data model (the operation against the key's state).
    pub fn of(e: &CoreError) -> Kind {
        match e {
            CoreError::InvalidArgument(_) | CoreError::TooLarge { .. } | CoreError::TooMany { .. } => {
                Kind::InvalidArgument
            }
            CoreError::WrongType { .. }
            | CoreError::RequestReused { .. }
            | CoreError::AppendReused { .. } => Kind::FailedPrecondition,
            CoreError::Overflow { .. } => Kind::OutOfRange,
            CoreError::StaleStamp { .. } => Kind::Aborted,
        }
    }

    /// The stable name of a failure of this class that has none more precise (the `reason`
    /// of the `google.rpc.ErrorInfo` clients receive).
    pub fn reason(self) -> &'static str {
        match self {
            Kind::Unavailable => "UNAVAILABLE",
            Kind::InvalidArgument => "INVALID_ARGUMENT",
            Kind::FailedPrecondition => "FAILED_PRECONDITION",
            Kind::DataLoss => "DATA_LOSS",
            Kind::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Kind::OutOfRange => "OUT_OF_RANGE",
            Kind::Aborted => "ABORTED",
            Kind::Internal => "INTERNAL",
            Kind::Other => "UNKNOWN",
        }
    }
}

/// The stable name of a refusal by the data model (docs/api.md, "Error details").
pub fn core_reason(e: &CoreError) -> &'static str {
    match e {
        CoreError::InvalidArgument(_) => "INVALID_ARGUMENT",
        CoreError::TooLarge { .. } => "TOO_LARGE",
        CoreError::TooMany { .. } => "TOO_MANY",
        CoreError::WrongType { .. } => "WRONG_TYPE",
        CoreError::Overflow { .. } => "COUNTER_OVERFLOW",
        CoreError::StaleStamp { .. } => "STALE_STAMP",
        CoreError::RequestReused { .. } | CoreError::AppendReused { .. } => "REQUEST_ID_REUSED",
    }
}

/// The reason of a failure for want of replicas.
pub const QUORUM_NOT_REACHED: &str = "QUORUM_NOT_REACHED";

/// Why a request failed, as the coordinator answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    /// Whether the write may have been applied anywhere. `false` is a promise: nothing was
    /// stored, so a client may safely retry even a write that must not run twice.
    pub maybe_applied: bool,
    pub message: String,
    /// A stable name of the cause, more precise than `kind` (e.g. `WRONG_TYPE`), carried from
    /// the node that decided it to the client; `None`: the kind's [`Kind::reason`].
    pub reason: Option<String>,
}

impl Failure {
    /// Too few replicas took part; `detail` says which and how many.
    pub fn quorum(detail: impl fmt::Display, maybe_applied: bool) -> Failure {
        Failure {
            kind: Kind::Unavailable,
            maybe_applied,
            message: format!("{QUORUM_FAILED}: {detail}"),
            reason: Some(QUORUM_NOT_REACHED.into()),
        }
    }

    /// A refusal that stored nothing.
    pub fn refused(kind: Kind, message: impl Into<String>) -> Failure {
        Failure { kind, maybe_applied: false, message: message.into(), reason: None }
    }

    /// A refusal by the data model that stored nothing, with its reason.
    pub fn refused_by(e: &CoreError, message: impl Into<String>) -> Failure {
        Failure { reason: Some(core_reason(e).into()), ..Failure::refused(Kind::of(e), message) }
    }

    /// The stable name of the cause: the one given, else the kind's.
    pub fn reason(&self) -> &str {
        self.reason.as_deref().unwrap_or(self.kind.reason())
    }

    /// The message without its [`QUORUM_FAILED`] prefix.
    pub fn detail(&self) -> &str {
        self.message.trim_start_matches(QUORUM_FAILED).trim_start_matches(": ")
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// What became of a call to a peer that did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerError {
    /// The call certainly never reached the peer (no connection could be made, no client, no
    /// send slot): it did not run there.
    NeverSent(String),
    /// No answer within the deadline: the peer may have run the call.
    TimedOut(String),
    /// The connection failed during the call: the peer may have run it.
    Transport(String),
    /// The peer answered with an error: it ran the call and refused it, or (a coordinator)
    /// failed it for its own reasons. A final answer.
    Answered(Failure),
}

impl PeerError {
    /// Whether the peer could not be reached (as opposed to an answer it gave): a state it
    /// was sent is kept as a hint for it.
    pub fn unreachable(&self) -> bool {
        !matches!(self, PeerError::Answered(_))
    }

    pub fn message(&self) -> &str {
        match self {
            PeerError::NeverSent(m) | PeerError::TimedOut(m) | PeerError::Transport(m) => m,
            PeerError::Answered(f) => &f.message,
        }
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}
