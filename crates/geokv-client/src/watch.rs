//! Watching keys change: [`Client::watch`] streams from one node; [`Failover::watch`] goes on
//! through another node of the region when its node goes away, resuming from the last
//! revision it got (so nothing is missed and nothing delivered twice; docs/api.md, "Watch").
//!
//! ```no_run
//! # async fn demo() -> Result<(), geokv_client::ClientError> {
//! use geokv_client::{Failover, Security};
//! let nodes = vec!["http://127.0.0.1:7400".to_string(), "http://127.0.0.1:7401".to_string()];
//! let client = Failover::connect(&nodes, &Security::none())?;
//! let mut watch = client.watch(b"orders/", None);
//! while let Some(change) = watch.next().await? {
//!     for event in change.events {
//!         println!("{:?} deleted={}", event.key, event.deleted);
//!     }
//!     // change.revision: keep it to resume later with `client.watch(prefix, Some(revision))`.
//! }
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant};

use crate::{proto, Client, ClientError, Failover, Result};

/// A watch on one node.
pub struct Watcher {
    stream: tonic::Streaming<proto::WatchResponse>,
    revision: Vec<u8>,
}

impl Watcher {
    /// The next response: events (none in the first response, which says the watch is set up,
    /// nor in progress responses) and the revision after them. A node that shuts down ends
    /// the stream with UNAVAILABLE; `None`: the stream ended without a status.
    pub async fn next(&mut self) -> Result<Option<proto::WatchResponse>> {
        let response = self.stream.message().await.map_err(ClientError::from_grpc)?;
        if let Some(r) = &response {
            if !r.revision.is_empty() {
                self.revision = r.revision.clone();
            }
        }
        Ok(response)
    }

    /// The revision after the last response (where a new watch resumes from); empty before
    /// the first.
    pub fn revision(&self) -> &[u8] {
        &self.revision
    }
}

impl Client {
    /// Watches the keys under `prefix` from now (`after: None`) or after a revision an earlier
    /// watch gave. The per-call deadline, if any, bounds setting the stream up, not its life.
    pub async fn watch(&self, prefix: &[u8], after: Option<Vec<u8>>) -> Result<Watcher> {
        let revision = after.unwrap_or_default();
        let req = proto::WatchRequest { prefix: prefix.to_vec(), revision: revision.clone() };
        let stream = self.timed(self.inner.clone().watch(req)).await?;
        Ok(Watcher { stream, revision })
    }
}

/// Whether a failed watch stream may be opened again elsewhere: any failure but the ones that
/// would fail again (bad input, a trimmed revision, missing grants).
fn reopenable(e: &ClientError) -> bool {
    use crate::Code::*;
    match e {
        ClientError::Status(s) => !matches!(
            s.code(),
            InvalidArgument | OutOfRange | PermissionDenied | Unauthenticated | Unimplemented | NotFound
        ),
        ClientError::Connect { .. } => true,
        _ => false,
    }
}

/// A watch over several nodes (see [`Failover::watch`]).
pub struct FailoverWatcher {
    client: Failover,
    prefix: Vec<u8>,
    revision: Vec<u8>,
    current: Option<Watcher>,
    /// When the stream last worked (patience counts from there).
    alive: Instant,
}

impl Failover {
    /// Watches the keys under `prefix` from now (`after: None`) or after a revision. When the
    /// stream's node goes away, the watch opens again on the next node from the last revision
    /// it got, for up to the client's patience without an answer.
    pub fn watch(&self, prefix: &[u8], after: Option<Vec<u8>>) -> FailoverWatcher {
        FailoverWatcher {
            client: self.clone(),
            prefix: prefix.to_vec(),
            revision: after.unwrap_or_default(),
            current: None,
            alive: Instant::now(),
        }
    }
}

impl FailoverWatcher {
    /// The next response (see [`Watcher::next`]); `None` never comes from a live deployment:
    /// a stream that ends is opened again. Fails when no node answered for the client's
    /// patience, or with an error that would come again from any node. Cancel-safe: a call
    /// dropped before it returns (in a `select!`, under a timeout) loses no response.
    pub async fn next(&mut self) -> Result<Option<proto::WatchResponse>> {
        loop {
            if self.current.is_none() {
                let after = (!self.revision.is_empty()).then(|| self.revision.clone());
                let prefix = self.prefix.clone();
                let opened = self
                    .client
                    .run_if(reopenable, |c| {
                        let (prefix, after) = (prefix.clone(), after.clone());
                        async move { c.watch(&prefix, after).await }
                    })
                    .await;
                match opened {
                    Ok(w) => {
                        self.current = Some(w);
                        self.alive = Instant::now();
                    }
                    Err(e) if reopenable(&e) && self.alive.elapsed() < self.client.patience() => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let watcher = self.current.as_mut().expect("opened above");
            match watcher.next().await {
                Ok(Some(r)) => {
                    if !r.revision.is_empty() {
                        self.revision = r.revision.clone();
                    }
                    self.alive = Instant::now();
                    return Ok(Some(r));
                }
                // A stream that ends (or fails) is opened again on the next node after a pause
                // (patience counts from the last open or response).
                Ok(None) => {}
                Err(e) if reopenable(&e) => {}
                Err(e) => return Err(e),
            }
            self.current = None;
            self.client.skip_current();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The revision after the last response.
    pub fn revision(&self) -> &[u8] {
        &self.revision
    }

    /// The node the watch streams from now.
    pub fn endpoint(&self) -> &str {
        self.client.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_opened_again_unless_the_error_would_come_back() {
        let s = ClientError::from_grpc;
        assert!(reopenable(&s(tonic::Status::unavailable("gone"))));
        assert!(reopenable(&s(tonic::Status::unknown("h2 protocol error"))));
        assert!(reopenable(&s(tonic::Status::internal("stream reset"))));
        assert!(!reopenable(&s(tonic::Status::out_of_range("trimmed"))));
        assert!(!reopenable(&s(tonic::Status::invalid_argument("bad revision"))));
        assert!(!reopenable(&s(tonic::Status::permission_denied("no grant"))));
    }
}
