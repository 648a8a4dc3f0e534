//! Request ids and tracing spans.
//!
//! Every gRPC request a node serves (client API and node-to-node alike) runs in a `rpc` span
//! carrying a request id: the caller's `x-request-id` header if it sent a usable one, else a
//! fresh one. The id is answered back in the response's `x-request-id` header, kept in a
//! task-local for the request's work, and sent along on every node-to-node call and forwarded
//! request made on its behalf ([`Propagate`], [`inherit`]), so the logs of all the nodes a
//! request touched can be joined on it. Node-to-node calls also name the calling node
//! ([`FROM_HEADER`]), which fault injection uses to lose the answers to unreachable callers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::service::Interceptor;
use tracing::Instrument;

/// The header (gRPC metadata key) that carries request ids.
pub const HEADER: &str = "x-request-id";
/// The header (gRPC metadata key) in which a node-to-node call names the calling node.
pub const FROM_HEADER: &str = "x-geokv-from";
/// Longest request id taken from a caller.
const MAX_ID_LEN: usize = 64;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request the current task works for, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok().filter(|id| !id.is_empty())
}

/// Runs `fut` (about to be spawned as its own task) with the current request id and span.
pub fn inherit<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    REQUEST_ID.scope(current().unwrap_or_default(), fut.instrument(tracing::Span::current()))
}

/// Runs `fut` as work for the request `id` (taken earlier with [`current`]), in no span.
pub fn scoped<F: Future>(id: Option<String>, fut: F) -> impl Future<Output = F::Output> {
    REQUEST_ID.scope(id.unwrap_or_default(), fut)
}

/// A fresh request id: 16 hex digits.
fn fresh_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // splitmix64 of (time, counter): unique per process, unlikely to repeat across nodes.
    let mut z = seed ^ NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:016x}", z ^ (z >> 31))
}

/// A caller's id if it is printable ASCII of a sane length (it goes into logs and headers).
fn usable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Adds the current request id, and the calling node's id, to outgoing node-to-node calls.
#[derive(Clone, Copy, Default)]
pub struct Propagate {
    from: Option<geokv_core::NodeId>,
}

impl Propagate {
    /// For the calls of node `id`.
    pub fn from_node(id: geokv_core::NodeId) -> Self {
        Propagate { from: Some(id) }
    }
}

impl Interceptor for Propagate {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        tag(&mut req);
        if let Some(from) = self.from {
            req.metadata_mut().insert(FROM_HEADER, from.into());
        }
        Ok(req)
    }
}

/// The node a node-to-node call came from, if it said.
pub fn caller(headers: &http::HeaderMap) -> Option<geokv_core::NodeId> {
    headers.get(FROM_HEADER)?.to_str().ok()?.parse().ok()
}

/// Sets the request id of a request about to be sent on the current request's behalf.
pub fn tag<T>(req: &mut tonic::Request<T>) {
    if let Some(id) = current().and_then(|id| id.parse().ok()) {
        req.metadata_mut().insert(HEADER, id);
    }
}

/// The tower layer that gives every served request its span and id.
#[derive(Clone, Copy)]
pub struct RequestIdLayer {
    /// Which server: "client" or "peer".
    pub server: &'static str,
}

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner, server: self.server }
    }
}

#[derive(Clone)]
pub struct RequestIdService<S> {
    inner: S,
    server: &'static str,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, RB> tower::Service<http::Request<B>> for RequestIdService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let given = req.headers().get(HEADER).and_then(|v| v.to_str().ok()).filter(|v| usable(v));
        let id = given.map(str::to_owned).unwrap_or_else(fresh_id);
        let span =
            tracing::info_span!("rpc", server = self.server, method = %req.uri().path(), request_id = %id);
        let fut = span.in_scope(|| self.inner.call(req));
        let header = http::HeaderValue::from_str(&id).ok();
        let client_port = self.server == "client";
        Box::pin(
            REQUEST_ID
                .scope(id, async move {
                    let mut resp = fut.await?;
                    if let Some(h) = header {
                        resp.headers_mut().insert(HEADER, h);
                    }
                    if client_port {
                        crate::api::status::fill_details(resp.headers_mut());
                    }
                    Ok(resp)
                })
                .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_are_kept_only_when_printable_and_short() {
        assert!(usable("req-42"));
        assert!(!usable(""));
        assert!(!usable("has space"));
        assert!(!usable(&"x".repeat(65)));
        assert_eq!(fresh_id().len(), 16);
    }

    #[tokio::test]
    async fn ids_reach_spawned_work_and_outgoing_calls() {
        let outgoing = REQUEST_ID
            .scope("abc".into(), async {
                tokio::spawn(inherit(async {
                    let mut req = tonic::Request::new(());
                    tag(&mut req);
                    let req = Propagate::from_node(7).call(req).unwrap();
                    let from = caller(&req.metadata().clone().into_headers());
                    (req.metadata().get(HEADER).map(|v| v.to_str().unwrap().to_owned()), from)
                }))
                .await
                .unwrap()
            })
            .await;
        assert_eq!(outgoing, (Some("abc".to_owned()), Some(7)));
        assert_eq!(current(), None, "no id outside a request");
    }
}
