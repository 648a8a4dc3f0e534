//! The queue against a stand-in peer on loopback: one that serves `MergeMany`, and one of an
//! older version that does not.

use std::sync::atomic::AtomicUsize;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::server::NamedService;

use super::*;

/// A peer that serves `Merge` (and `MergeMany` if it `knows_many`): a key named `refused`
/// is refused (FAILED_PRECONDITION, not applied), any other changes the state.
#[derive(Clone, Default)]
struct Peer {
    knows_many: bool,
    merges: Arc<AtomicUsize>,
    many_states: Arc<AtomicUsize>,
    many_refused: Arc<AtomicUsize>,
}

impl NamedService for Peer {
    const NAME: &'static str = "geokv.v1.Cluster";
}

fn merge_one(req: &pb::MergeRequest) -> pb::MergeItemResult {
    if req.key == b"refused" {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(crate::api::status::FAILURE_METADATA, "not-applied".parse().unwrap());
        let status =
            crate::api::status::detailed(Code::FailedPrecondition, "refused here", "WRONG_TYPE", metadata);
        let (code, message, failure, details) = crate::peer::coalesce::item_failure(&status);
        return pb::MergeItemResult { code, message, failure, details, changed: false };
    }
    pb::MergeItemResult { changed: true, ..Default::default() }
}

struct Unary<F>(F);

impl<Req, Resp, F: FnMut(Req) -> Result<Resp, Status>> tonic::server::UnaryService<Req> for Unary<F> {
    type Response = Resp;
    type Future = futures::future::Ready<Result<tonic::Response<Resp>, Status>>;

    fn call(&mut self, req: tonic::Request<Req>) -> Self::Future {
        futures::future::ready((self.0)(req.into_inner()).map(tonic::Response::new))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Peer {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            Ok(match req.uri().path() {
                "/geokv.v1.Cluster/Merge" => {
                    let serve = Unary(|r: pb::MergeRequest| {
                        this.merges.fetch_add(1, Ordering::SeqCst);
                        let one = merge_one(&r);
                        match one.code {
                            0 => Ok(pb::MergeResponse { changed: one.changed }),
                            code => Err(item_status(code, one.message, &one.failure, one.details.clone())),
                        }
                    });
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::default()).unary(serve, req).await
                }
                "/geokv.v1.Cluster/MergeMany" if this.knows_many => {
                    let serve = Unary(|r: pb::MergeManyRequest| {
                        this.many_states.fetch_add(r.items.len(), Ordering::SeqCst);
                        Ok(pb::MergeManyResponse { results: r.items.iter().map(merge_one).collect() })
                    });
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::default()).unary(serve, req).await
                }
                _ => {
                    this.many_refused.fetch_add(1, Ordering::SeqCst);
                    Status::unimplemented("not served by this version").into_http()
                }
            })
        })
    }
}

/// Starts `peer` on a free loopback port; a queue to it and the node's metrics.
async fn queue_to(peer: Peer) -> (Queue<Merges>, crate::ops::metrics::Metrics) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = crate::security::listen::incoming(listener, None, crate::security::Alpn::Grpc);
    tokio::spawn(tonic::transport::Server::builder().add_service(peer).serve_with_incoming(incoming));
    let metrics = crate::ops::metrics::Metrics::new(0);
    let faults = Arc::new(Faults::new(
        1,
        false,
        metrics.faults_injected.clone(),
        metrics.faults_active.clone(),
        |_, _| {},
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let channel = crate::faults::net::FaultyChannel::new(channel, 2, faults.clone());
    let client = geokv_proto::v1::cluster_client::ClusterClient::with_interceptor(
        channel,
        crate::trace::Propagate::from_node(1),
    );
    let counters = Counters::of::<Merges>(&CallCounters::from(&metrics));
    let queue = Queue::start(client, faults, Duration::from_secs(10), super::CALLS_IN_FLIGHT, counters);
    (queue, metrics)
}

fn state(key: &str) -> pb::MergeRequest {
    pb::MergeRequest { key: key.as_bytes().to_vec(), state: vec![7; 64], hint_for: None, ship: true }
}

/// Sends 200 states at once, one refused; every answer is the peer's answer to that state.
async fn send_many(queue: &Queue<Merges>) {
    let sends = (0..200).map(|i| {
        let key = if i == 100 { "refused".to_string() } else { format!("k{i}") };
        let queue = queue.clone();
        async move { (key.clone(), queue.call_all(vec![state(&key)]).await.pop().expect("one answer")) }
    });
    for (key, answer) in futures::future::join_all(sends).await {
        match (key.as_str(), answer) {
            ("refused", Err(status)) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                let failure = status.metadata().get(crate::api::status::FAILURE_METADATA);
                assert_eq!(failure.and_then(|v| v.to_str().ok()), Some("not-applied"));
                // The reason, whether the state went alone or in a MergeMany.
                assert_eq!(crate::api::status::reason_of(&status).as_deref(), Some("WRONG_TYPE"));
            }
            (_, answer) => assert!(answer.expect(&key).changed, "{key}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_sent_together_go_in_merge_many_calls_and_each_gets_its_own_answer() {
    let peer = Peer { knows_many: true, ..Default::default() };
    let (queue, metrics) = queue_to(peer.clone()).await;
    send_many(&queue).await;
    let (alone, coalesced) = (peer.merges.load(Ordering::SeqCst), peer.many_states.load(Ordering::SeqCst));
    assert_eq!(alone + coalesced, 200, "each state sent once");
    assert!(coalesced >= 100, "200 states sent at once: {coalesced} coalesced, {alone} alone");
    let calls = metrics.peer_many_calls.with_label_values(&["merge"]).get();
    assert!(calls > 0 && (coalesced as u64) / calls >= 4, "{coalesced} states in {calls} calls");
    assert_eq!(metrics.peer_items.with_label_values(&["merge", "many"]).get(), coalesced as u64);
    assert_eq!(metrics.peer_items.with_label_values(&["merge", "single"]).get(), alone as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_an_older_version_gets_every_state_one_by_one() {
    let peer = Peer { knows_many: false, ..Default::default() };
    let (queue, metrics) = queue_to(peer.clone()).await;
    send_many(&queue).await;
    assert_eq!(peer.merges.load(Ordering::SeqCst), 200, "every state arrived as a Merge");
    let refused = peer.many_refused.load(Ordering::SeqCst);
    assert!((1..=CALLS_IN_FLIGHT).contains(&refused), "MergeMany tried {refused} times");
    // The peer is not asked again for a while.
    send_many(&queue).await;
    assert_eq!(peer.many_refused.load(Ordering::SeqCst), refused);
    assert_eq!(peer.merges.load(Ordering::SeqCst), 400);
    assert_eq!(metrics.peer_items.with_label_values(&["merge", "single"]).get(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_queued_together_go_in_the_fewest_calls_with_answers_in_order() {
    let peer = Peer { knows_many: true, ..Default::default() };
    let (queue, metrics) = queue_to(peer.clone()).await;
    // 300 states at once: 128 per MergeMany, so 3 calls, none alone.
    let keys: Vec<String> =
        (0..300).map(|i| if i == 150 { "refused".to_string() } else { format!("k{i}") }).collect();
    let answers = queue.call_all(keys.iter().map(|k| state(k)).collect()).await;
    assert_eq!(answers.len(), 300);
    for (key, answer) in keys.iter().zip(answers) {
        match answer {
            Err(status) => assert_eq!((key.as_str(), status.code()), ("refused", Code::FailedPrecondition)),
            Ok(resp) => assert!(resp.changed && key != "refused", "{key}"),
        }
    }
    assert_eq!(peer.merges.load(Ordering::SeqCst), 0, "no state went alone");
    assert_eq!(peer.many_states.load(Ordering::SeqCst), 300);
    assert_eq!(metrics.peer_many_calls.with_label_values(&["merge"]).get(), 3);
    assert!(queue.call_all(Vec::new()).await.is_empty());
}
