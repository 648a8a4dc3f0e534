//! The gRPC glue of network faults: [`FaultyChannel`] sits under every peer client (see
//! `peer::client`) and carries out [`Faults::plan_call`]; [`LoseAnswersLayer`] sits on the
//! node-to-node server and replaces the answers to callers this node cannot send to.
//!
//! A lost call ends in `UNAVAILABLE`, as a refused connection does, so callers treat it as
//! the transport failure it models (hints, retries, quorum failures).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use geokv_core::NodeId;
use tonic::body::Body;
use tonic::transport::Channel;

use super::{CallPlan, Faults, Injected, Loss};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A failed call's answer, as the caller's gRPC stack will see it.
fn unavailable<B: Default>(message: String) -> http::Response<B> {
    tonic::Status::unavailable(message).into_http()
}

/// A channel to peer `to` that loses, delays and refuses calls as this node's faults say.
#[derive(Clone)]
pub struct FaultyChannel {
    inner: Channel,
    to: NodeId,
    faults: Arc<Faults>,
}

impl FaultyChannel {
    pub fn new(inner: Channel, to: NodeId, faults: Arc<Faults>) -> Self {
        FaultyChannel { inner, to, faults }
    }
}

impl tower::Service<http::Request<Body>> for FaultyChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (me, to) = (self.faults.node_id(), self.to);
        let (delay, lost) = match self.faults.plan_call(to) {
            CallPlan::Send { delay, lost: None } if delay.is_zero() => return Box::pin(self.inner.call(req)),
            CallPlan::Unreachable => {
                self.faults.count(Injected::Unreachable);
                let message = format!("node {to} is unreachable from node {me} (fault injection)");
                return Box::pin(std::future::ready(Ok(unavailable(message))));
            }
            CallPlan::Send { delay, lost } => (delay, lost),
        };
        // The channel readied by `poll_ready` goes with the call (a channel must be called
        // only after it was readied); this one gets a fresh clone.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let faults = self.faults.clone();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if lost == Some(Loss::Request) {
                faults.count(Injected::RequestLost);
                return Ok(unavailable(format!("request to node {to} lost by fault injection")));
            }
            let resp = inner.call(req).await?;
            if lost == Some(Loss::Response) {
                // A unary call's response headers come once the peer has served it.
                faults.count(Injected::ResponseLost);
                return Ok(unavailable(format!("response from node {to} lost by fault injection")));
            }
            Ok(resp)
        })
    }
}

/// Replaces the answer to every call from a node this node cannot send to (the call is served:
/// only the response is lost). `caller` reads which node a call came from (the server names
/// itself in a header: `geokv_server::trace`).
#[derive(Clone)]
pub struct LoseAnswersLayer {
    pub faults: Arc<Faults>,
    pub caller: fn(&http::HeaderMap) -> Option<NodeId>,
}

impl<S> tower::Layer<S> for LoseAnswersLayer {
    type Service = LoseAnswers<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LoseAnswers { inner, faults: self.faults.clone(), caller: self.caller }
    }
}

#[derive(Clone)]
pub struct LoseAnswers<S> {
    inner: S,
    faults: Arc<Faults>,
    caller: fn(&http::HeaderMap) -> Option<NodeId>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for LoseAnswers<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let from = (self.caller)(req.headers());
        let lose = from.is_some_and(|from| self.faults.loses_responses_to(from));
        let served = self.inner.call(req);
        if !lose {
            return Box::pin(served);
        }
        let faults = self.faults.clone();
        let message = format!(
            "response dropped by fault injection (node {} cannot send to node {})",
            faults.node_id(),
            from.unwrap_or_default()
        );
        Box::pin(async move {
            drop(served.await?);
            faults.count(Injected::InboundResponseLost);
            Ok(unavailable(message))
        })
    }
}
