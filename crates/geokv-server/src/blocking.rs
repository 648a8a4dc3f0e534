//! The one way this crate runs blocking work (RocksDB calls, scans) off the async threads:
//! [`run`] on tokio's blocking pool. A task that did not finish (it panicked, or the runtime
//! is shutting down) becomes [`TaskFailed`], which converts into the callers' error types.

use std::fmt;

/// A blocking task that did not finish.
#[derive(Debug)]
pub struct TaskFailed(String);

impl fmt::Display for TaskFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a storage task did not finish: {}", self.0)
    }
}

impl std::error::Error for TaskFailed {}

impl From<TaskFailed> for tonic::Status {
    fn from(e: TaskFailed) -> Self {
        tonic::Status::internal(e.to_string())
    }
}

impl From<tokio::task::JoinError> for TaskFailed {
    fn from(e: tokio::task::JoinError) -> Self {
        TaskFailed(e.to_string())
    }
}

impl From<TaskFailed> for String {
    fn from(e: TaskFailed) -> Self {
        e.to_string()
    }
}

/// Runs `f` on the blocking pool and returns what it returned.
pub async fn run<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, TaskFailed> {
    tokio::task::spawn_blocking(f).await.map_err(TaskFailed::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_finished_task_returns_its_value_and_a_panic_is_an_internal_error() {
        assert_eq!(run(|| 7).await.unwrap(), 7);
        let failed = run(|| -> u8 { panic!("boom") }).await.unwrap_err();
        let status: tonic::Status = failed.into();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.message().contains("did not finish"), "{}", status.message());
    }
}
