//! Increments and appends with request ids on real processes: however many attempts of one
//! are applied, on however many coordinators, it applies once. A client whose node is killed
//! under load (SIGKILL) retries its increments (appends) on the other nodes, and after the
//! killed node comes back with whatever it had applied, every replica holds exactly the
//! acknowledged count (each acknowledged chunk once, in order); a retry that races its own
//! first attempt (the first one is held by a slow disk) applies once, and so does a late one,
//! even after a delete; a reused id with another delta (other bytes) and a malformed id are
//! refused.

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
    wait_for_view(cluster, key, View::Counter(value)).await;
}

/// Waits until every replica's own state of `key` shows `view`.
async fn wait_for_view(cluster: &TestCluster, key: &[u8], view: View) {
    let value = format!("{view:?}");
    let want = Some(Some(view));
    let ok = wait_until(Duration::from_secs(60), || async {
        replica_views(cluster, key).await.iter().all(|v| *v == want)
    })
    .await;
    assert!(ok, "every replica holds {value}: {:?}", replica_views(cluster, key).await);
}

/// A region of three nodes, and a QUORUM `Failover` client over them that tries node 1 first
/// (2 s per attempt, 30 s in all).
fn region_and_failover() -> (TestCluster, Failover) {
    let cluster = TestCluster::start_region(3, 3, "anti_entropy_interval_ms = 2000\n");
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.endpoint()).collect();
    let client = Failover::connect(&endpoints, &cluster.nodes[0].security)
        .unwrap()
        .with_consistency(proto::Consistency::Quorum)
        .with_timeout(Duration::from_secs(2))
        .with_patience(Duration::from_secs(30));
    (cluster, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_retried_after_their_node_is_killed_count_exactly_once() {
    let (mut cluster, client) = region_and_failover();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_retried_after_their_node_is_killed_apply_exactly_once() {
    let (mut cluster, client) = region_and_failover();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    // One log per worker: appends to one key one after another (concurrent appends to one
    // key keep only one of them, by design), so each log must end as exactly its chunks.
    for worker in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        load.spawn(async move {
            let key = format!("log-{worker}").into_bytes();
            let (mut log, mut failed) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let chunk = format!("{worker}.{i};");
                match client.append(&key, chunk.as_bytes(), None).await {
                    Ok(r) => {
                        log.extend_from_slice(chunk.as_bytes());
                        assert_eq!(r.length, log.len() as u64, "worker {worker}: the length after {chunk}");
                    }
                    Err(e) => failed.push(format!("worker {worker}: {e}")),
                }
                i += 1;
            }
            (key, log, failed)
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.nodes[0].kill9();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut logs, mut failed) = (Vec::new(), Vec::new());
    while let Some(r) = load.join_next().await {
        let (key, log, f) = r.unwrap();
        logs.push((key, log));
        failed.extend(f);
    }
    assert!(failed.is_empty(), "every append completes: {failed:?}");
    let appended: usize = logs.iter().map(|(_, log)| log.iter().filter(|&&b| b == b';').count()).sum();
    assert!(appended >= 50, "the load ran ({appended} appends)");
    eprintln!("{appended} appends acknowledged");
    cluster.nodes[0].restart();
    let reader = cluster.client(1).await.with_consistency(proto::Consistency::Quorum);
    for (key, log) in &logs {
        let read = reader.get(key).await.unwrap().and_then(|e| e.value).and_then(|v| v.kind);
        let want = proto::value::Kind::Register(log.clone());
        assert_eq!(
            read,
            Some(want),
            "a QUORUM read of {} holds each chunk once",
            String::from_utf8_lossy(key)
        );
        wait_for_view(&cluster, key, View::Register(log.clone())).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_append_applies_once_and_ids_are_checked() {
    let cluster = TestCluster::start_region(3, 3, FAULTS_ENABLED);
    let quorum = cluster.client(1).await.with_consistency(proto::Consistency::Quorum);
    let id = geokv_client::new_request_id();
    assert_eq!(quorum.append_once(b"log", b"a;", None, id).await.unwrap().length, 2);
    // Sent again, to this node or another: the length as it is, nothing appended.
    assert_eq!(quorum.append_once(b"log", b"a;", None, id).await.unwrap().length, 2);
    let other = cluster.client(2).await.with_consistency(proto::Consistency::Quorum);
    assert_eq!(other.append_once(b"log", b"a;", None, id).await.unwrap().length, 2);
    assert_eq!(other.append(b"log", b"b;", None).await.unwrap().length, 4);
    assert_eq!(quorum.append_once(b"log", b"a;", None, id).await.unwrap().length, 4, "after another append");
    wait_for_view(&cluster, b"log", View::Register(b"a;b;".to_vec())).await;

    // The same id with other bytes is refused, and so is an id that is not 16 bytes.
    let e = quorum.append_once(b"log", b"c;", None, id).await.unwrap_err();
    assert_eq!(e.code(), Some(geokv_client::Code::FailedPrecondition), "{e}");
    assert_eq!(e.reason(), Some("REQUEST_ID_REUSED"), "{e}");
    let mut raw = proto::kv_client::KvClient::connect(cluster.nodes[1].endpoint()).await.unwrap();
    let bad = proto::AppendRequest {
        key: b"log".to_vec(),
        value: b"d;".to_vec(),
        request_id: vec![1; 15],
        ..Default::default()
    };
    let e = raw.append(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("must be 16"), "{e:?}");

    // A retry after a delete does not bring the bytes back.
    quorum.delete(b"log").await.unwrap();
    assert_eq!(other.append_once(b"log", b"a;", None, id).await.unwrap().length, 0);
    assert!(quorum.get(b"log").await.unwrap().is_none(), "still deleted");

    // A retry that races its first attempt: the first goes to node 1, whose slow disk holds it
    // past the client's deadline; the retry, with the same id, is applied by node 2 while the
    // first is still under way. Every replica ends with the chunk once.
    quorum.put(b"raced", b"v;", None).await.unwrap();
    wait_for_view(&cluster, b"raced", View::Register(b"v;".to_vec())).await;
    let slow = proto::InjectFaultsRequest { disk_delay_ms: 1500, ..Default::default() };
    cluster.inject_faults(0, slow).await.unwrap();
    let id = geokv_client::new_request_id();
    let first = cluster.client(0).await.with_consistency(proto::Consistency::One);
    let lost =
        first.clone().with_timeout(Duration::from_millis(300)).append_once(b"raced", b"x;", None, id).await;
    assert_eq!(
        lost.as_ref().err().and_then(ClientError::code),
        Some(geokv_client::Code::DeadlineExceeded),
        "{lost:?}"
    );
    assert_eq!(other.append_once(b"raced", b"x;", None, id).await.unwrap().length, 4);
    wait_for_view(&cluster, b"raced", View::Register(b"v;x;".to_vec())).await;
    cluster.inject_faults(0, proto::InjectFaultsRequest::default()).await.unwrap();
    assert_eq!(first.append_once(b"raced", b"x;", None, id).await.unwrap().length, 4, "a late retry");
    assert_eq!(other.append(b"raced", b"y;", None).await.unwrap().length, 6);
    wait_for_view(&cluster, b"raced", View::Register(b"v;x;y;".to_vec())).await;
}
