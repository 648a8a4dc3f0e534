//! Errors of the data model. Every variant says what a caller can do about it; the server maps
//! each to a gRPC status code (see `geokv-server`'s `status` module).

use crate::record::Kind;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A request field is malformed or out of its allowed range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A key, value, batch or set is larger than the configured limit.
    #[error("{what} is {actual} bytes, over the limit of {limit} bytes ({setting})")]
    TooLarge { what: &'static str, actual: usize, limit: usize, setting: &'static str },

    /// A count (batch items, set members in one request, scan limit) is over its limit.
    #[error("{what} has {actual} items, over the limit of {limit} ({setting})")]
    TooMany { what: &'static str, actual: usize, limit: usize, setting: &'static str },

    /// The operation does not fit the type the key already holds.
    #[error(
        "key holds a {actual}, but {op} needs a {expected}; delete the key first or use a {actual} operation"
    )]
    WrongType { op: &'static str, expected: Kind, actual: Kind },

    /// A counter would leave the signed 64-bit range.
    #[error("counter would overflow: {current} + {delta} is outside the signed 64-bit range")]
    Overflow { current: i128, delta: i64 },

    /// An idempotent increment's request id was already used for a different increment of
    /// the key.
    #[error(
        "request id {id:032x} was already applied to this key as an increment by {then}, not {now}; use a new request id for a new increment"
    )]
    RequestReused { id: u128, then: i64, now: i64 },

    /// An idempotent append's request id was already used for an append of other bytes to
    /// the key.
    #[error(
        "request id {id:032x} was already applied to this key as an append of other bytes; use a new request id for a new append"
    )]
    AppendReused { id: u128 },

    /// The stamp offered for an operation is not newer than the state it applies to (the
    /// caller's clock must be advanced past the record's version first).
    #[error("stamp {stamp} is not newer than the record version {version}")]
    StaleStamp { stamp: crate::Stamp, version: crate::Stamp },
}
