//! Increments with request ids on real processes: however many attempts of one increment are
//! applied, on however many coordinators, it counts once. A client whose node is killed under
//! load (SIGKILL) retries its increments on the other nodes, and after the killed node comes
//! back with whatever it had applied, every replica holds exactly the acknowledged count; a
//! retry that races its own first attempt (the first one is held by a slow disk) counts once;
//! a reused id with another delta and a malformed id are refused.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use geokv_client::{proto, ClientError, Failover};
use geokv_core::View;
use support::{wait_until, TestCluster, FAULTS_ENABLED};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Each replica's own view of `key` (`None` for a replica that does not answer).
async fn replica_views(cluster: &TestCluster, key: &[u8]) -> Vec<Option<Option<View>>> {
    let mut out = Vec::new();
    for i in 0..cluster.nodes.len() {
        let states = cluster.replica_states(i, &[key]).await;
        out.push(states.map(|s| s.into_iter().next().flatten().and_then(|r| r.view(now_ms()))));
    }
    out
}

/// Waits until every replica's own state of `key` is the counter `value`.
async fn wait_for_every_replica(cluster: &TestCluster, key: &[u8], value: i64) {
    let want = Some(Some(View::Counter(value)));
    let ok = wait_until(Duration::from_secs(60), || async {
        replica_views(cluster, key).await.iter().all(|v| *v == want)
    })
    .await;
    assert!(ok, "every replica holds {value}: {:?}", replica_views(cluster, key).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_retried_after_their_node_is_killed_count_exactly_once() {
    let mut cluster = TestCluster::start_region(3, 3, "anti_entropy_interval_ms = 2000\n");
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.endpoint()).collect();
    let client = Failover::connect(&endpoints, &cluster.nodes[0].security)
        .unwrap()
        .with_consistency(proto::Consistency::Quorum)
        .with_timeout(Duration::from_secs(2))
        .with_patience(Duration::from_secs(30));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        load.spawn(async move {
            let (mut acked, mut failed) = (0i64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match client.increment(b"hits", 1, None).await {
                    Ok(_) => acked += 1,
                    Err(e) => failed.push(format!("worker {worker}: {e}")),
                }
            }
            (acked, failed)
        });
    }
    // The client talks to node 1 first: kill it under the load, let the load go on through
    // the other two, then bring node 1 back with whatever it had applied and not sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.nodes[0].kill9();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut failed) = (0, Vec::new());
    while let Some(r) = load.join_next().await {
        let (a, f) = r.unwrap();
        acked += a;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "every increment completes: {failed:?}");
    assert!(acked >= 50, "the load ran ({acked} increments)");
    cluster.nodes[0].restart();
    eprintln!("{acked} increments acknowledged");
    let reader = cluster.client(1).await.with_consistency(proto::Consistency::Quorum);
    let read = reader.get(b"hits").await.unwrap().and_then(|e| e.value).and_then(|v| v.kind);
    assert_eq!(read, Some(proto::value::Kind::Counter(acked)), "a QUORUM read counts each increment once");
    wait_for_every_replica(&cluster, b"hits", acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_racing_its_first_attempt_counts_once_and_ids_are_checked() {
    let cluster = TestCluster::start_region(3, 3, FAULTS_ENABLED);
    let slow = proto::InjectFaultsRequest { disk_delay_ms: 1500, ..Default::default() };
    cluster.inject_faults(0, slow).await.unwrap();
    // The first attempt goes to node 1, whose slow disk holds it past the client's deadline;
    // the retry, with the same id, is applied by node 2 while the first is still under way.
    let id = geokv_client::new_request_id();
    let first = cluster.client(0).await.with_consistency(proto::Consistency::One);
    let lost =
        first.clone().with_timeout(Duration::from_millis(300)).increment_once(b"raced", 5, None, id).await;
    assert_eq!(
        lost.as_ref().err().and_then(ClientError::code),
        Some(geokv_client::Code::DeadlineExceeded),
        "{lost:?}"
    );
    let second = cluster.client(1).await.with_consistency(proto::Consistency::Quorum);
    assert_eq!(second.increment_once(b"raced", 5, None, id).await.unwrap().value, 5);
    // Node 1 commits the first attempt too; every replica ends with the increment counted once.
    wait_for_every_replica(&cluster, b"raced", 5).await;
    cluster.inject_faults(0, proto::InjectFaultsRequest::default()).await.unwrap();
    assert_eq!(first.increment_once(b"raced", 5, None, id).await.unwrap().value, 5, "a late retry");
    assert_eq!(second.increment(b"raced", 1, None).await.unwrap().value, 6);

    // The same id with another delta is refused, and so is an id that is not 16 bytes.
    let e = second.increment_once(b"raced", 4, None, id).await.unwrap_err();
    assert_eq!(e.code(), Some(geokv_client::Code::FailedPrecondition), "{e}");
    assert_eq!(e.reason(), Some("REQUEST_ID_REUSED"), "{e}");
    let mut raw = proto::kv_client::KvClient::connect(cluster.nodes[1].endpoint()).await.unwrap();
    let bad = proto::IncrementRequest {
        key: b"raced".to_vec(),
        delta: 1,
        request_id: vec![1; 15],
        ..Default::default()
    };
    let e = raw.increment(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("must be 16"), "{e:?}");
    wait_for_every_replica(&cluster, b"raced", 6).await;
}
