//! Maps node errors to gRPC status codes with messages a person can act on.

use geokv_core::CoreError;
use geokv_storage::StorageError;
use tonic::{Code, Status};

pub fn code_of(err: &StorageError) -> Code {
    match err {
        StorageError::Core(core) => match core {
            CoreError::InvalidArgument(_) | CoreError::TooLarge { .. } | CoreError::TooMany { .. } => {
                Code::InvalidArgument
            }
            CoreError::WrongType { .. } => Code::FailedPrecondition,
            CoreError::Overflow { .. } => Code::OutOfRange,
            CoreError::StaleStamp { .. } => Code::Aborted,
        },
        StorageError::RecordTooLarge { .. }
        | StorageError::NotAdmitted { .. }
        | StorageError::ClockDrift { .. } => Code::FailedPrecondition,
        StorageError::Corrupt { .. } => Code::DataLoss,
        StorageError::Engine(_) => Code::Internal,
        StorageError::Incompatible { .. } | StorageError::BatchFailed(_) => Code::Internal,
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
    Status::new(code, message)
}

pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}
