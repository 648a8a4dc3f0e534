//! BatchWrite through a region of real `geokv` processes: coordinated per replica (a few
//! coalesced calls to each replica, not one per item), each item with its own answer, a key's
//! items in the client's order, and every acknowledged item durable on W replicas.

mod support;

use std::time::Duration;

use geokv_client::{op, proto, Client};
use geokv_core::View;
use proto::write_result::Outcome;
use support::{wait_until, TestCluster};

fn quorum(c: Client) -> Client {
    c.with_consistency(proto::Consistency::Quorum)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn error_code(r: &proto::WriteResult) -> Option<tonic::Code> {
    match &r.outcome {
        Some(Outcome::Error(e)) => Some(tonic::Code::from_i32(e.code)),
        _ => None,
    }
}

/// Whether every replica's own state of every key shows the expected value.
async fn replicas_hold(cluster: &TestCluster, expected: &[(Vec<u8>, View)]) -> Result<(), String> {
    let keys: Vec<&[u8]> = expected.iter().map(|(k, _)| k.as_slice()).collect();
    for i in 0..cluster.nodes.len() {
        let states =
            cluster.replica_states(i, &keys).await.ok_or(format!("replica {} does not answer", i + 1))?;
        for ((key, want), state) in expected.iter().zip(states) {
            let got = state.and_then(|r| r.view(now_ms()));
            if got.as_ref() != Some(want) {
                let key = String::from_utf8_lossy(key);
                return Err(format!("replica {} has {got:?} for {key:?}, expected {want:?}", i + 1));
            }
        }
    }
    Ok(())
}

/// A batch of 100 items (60 keys with one put, 20 keys with two appends) through one node of a
/// region whose hints and anti-entropy are off: every replica ends up with every item by the
/// write path alone, and the states went to each replica in two MergeMany calls (one per round
/// of the batch: a key's second item runs after its first), none alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_coordinated_per_replica_and_reaches_every_replica() {
    let cluster = TestCluster::start_region_without_repair_and(3, 3, "suspect_timeout_ms = 3000\n");
    let c = quorum(cluster.client(0).await);
    let mut ops = Vec::new();
    let mut expected = Vec::new();
    for i in 0..60 {
        let key = format!("put{i}");
        ops.push(op::put(key.as_bytes(), format!("v{i}").as_bytes(), None));
        expected.push((key.into_bytes(), View::Register(format!("v{i}").into_bytes())));
    }
    for i in 0..20 {
        let key = format!("log{i}");
        ops.push(op::append(key.as_bytes(), b"a", None));
        expected.push((key.clone().into_bytes(), View::Register(b"ab".to_vec())));
    }
    for i in 0..20 {
        ops.push(op::append(format!("log{i}").as_bytes(), b"b", None));
    }
    let results = c.batch_write(ops).await.expect("the batch");
    assert_eq!(results.len(), 100);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(error_code(r), None, "item {i}: {r:?}");
    }
    // A key's items in order: the second append answers with the length after both.
    for r in &results[80..] {
        assert!(matches!(&r.outcome, Some(Outcome::Append(a)) if a.length == 2), "{r:?}");
    }
    let held =
        wait_until(Duration::from_secs(30), || async { replicas_hold(&cluster, &expected).await.is_ok() })
            .await;
    assert!(held, "{:?}", replicas_hold(&cluster, &expected).await);

    let text = support::scrape_raw(cluster.nodes[0].metrics_addr.expect("metrics served")).await;
    let items = |rpc, call| {
        support::metric(&text, "geokv_peer_items_total", &[("rpc", rpc), ("call", call)]).unwrap_or(0.0)
    };
    let calls = |rpc| support::metric(&text, "geokv_peer_many_calls_total", &[("rpc", rpc)]).unwrap_or(0.0);
    let (alone, coalesced, merges) = (items("merge", "single"), items("merge", "many"), calls("merge"));
    assert_eq!(alone, 0.0, "{alone} states sent alone, {coalesced} in {merges} calls");
    assert!(coalesced >= 200.0, "2 replicas x 100 items: {coalesced} states coalesced");
    assert!(merges <= 4.0, "100 items in 2 rounds to 2 replicas took {merges} MergeMany calls");
    // The first reads too: each replica asked in as few FetchMany calls as their size allows.
    assert!(calls("fetch") <= 16.0, "{} FetchMany calls", calls("fetch"));
}

/// Every item of a batch gets its own answer, whichever node coordinates its key (in a region
/// of 4 nodes with 3 replicas, some keys are forwarded); a key's items apply in order; a
/// refused item (a wrong type, a bad key) changes nothing and stops no other item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_item_and_keeps_each_keys_order_through_any_node() {
    let cluster = TestCluster::start_region(4, 3, "");
    let c = quorum(cluster.client(0).await);
    c.put(b"gone", b"old", None).await.unwrap();
    let mut ops = vec![
        op::put(b"k", b"x", None),
        op::append(b"k", b"y", None),
        op::delete(b"gone"),
        op::put(b"gone", b"back", None),
        op::increment(b"n", 2, None),
        op::append(b"n", b"oops", None),
        op::increment(b"n", 3, None),
        op::set_add(b"s", vec![b"m".to_vec()], None),
        op::put(&[b'x'; 100_000], b"too long a key", None),
    ];
    for i in 0..40 {
        ops.push(op::put(format!("spread{i}").as_bytes(), b"v", None));
    }
    let results = c.batch_write(ops).await.expect("the batch");
    assert_eq!(results.len(), 49);
    assert!(matches!(&results[1].outcome, Some(Outcome::Append(a)) if a.length == 2), "{:?}", results[1]);
    assert!(matches!(&results[2].outcome, Some(Outcome::Delete(d)) if d.existed), "{:?}", results[2]);
    assert_eq!(error_code(&results[5]), Some(tonic::Code::FailedPrecondition), "{:?}", results[5]);
    assert!(matches!(&results[6].outcome, Some(Outcome::Increment(n)) if n.value == 5), "{:?}", results[6]);
    assert_eq!(error_code(&results[8]), Some(tonic::Code::InvalidArgument), "{:?}", results[8]);
    for (i, r) in results.iter().enumerate().filter(|(i, _)| ![5, 8].contains(i)) {
        assert_eq!(error_code(r), None, "item {i}: {r:?}");
    }
    // Read back through another node.
    let other = quorum(cluster.client(2).await);
    let value = |e: Option<proto::Entry>| e.and_then(|e| e.value).and_then(|v| v.kind);
    use proto::value::Kind;
    assert_eq!(value(other.get(b"k").await.unwrap()), Some(Kind::Register(b"xy".to_vec())));
    assert_eq!(value(other.get(b"gone").await.unwrap()), Some(Kind::Register(b"back".to_vec())));
    assert_eq!(value(other.get(b"n").await.unwrap()), Some(Kind::Counter(5)));
    for i in 0..40 {
        let key = format!("spread{i}");
        assert_eq!(
            value(other.get(key.as_bytes()).await.unwrap()),
            Some(Kind::Register(b"v".to_vec())),
            "{key}"
        );
    }
}

/// Acknowledged batch items are on W replicas durably: batches of puts through node 1 while
/// node 3 is killed (SIGKILL) part way; then the coordinator is killed too and node 3 comes back
/// having missed the writes, and a QUORUM read through node 2 finds every acknowledged item;
/// then node 1 comes back and holds every one of them itself (its commits survived the kill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batch_items_survive_sigkill_of_the_coordinator_and_a_replica() {
    let mut cluster = TestCluster::start_region_without_repair(3, 3);
    let c = quorum(cluster.client(0).await);
    let mut acked: Vec<Vec<u8>> = Vec::new();
    for batch in 0..24 {
        if batch == 8 {
            cluster.nodes[2].kill9();
        }
        let keys: Vec<Vec<u8>> = (0..100).map(|i| format!("b{batch}-{i}").into_bytes()).collect();
        let ops = keys.iter().map(|k| op::put(k, k, None)).collect();
        match c.batch_write(ops).await {
            Ok(results) => {
                for (key, r) in keys.into_iter().zip(results) {
                    if error_code(&r).is_none() {
                        acked.push(key);
                    }
                }
            }
            // The outcome of a failed call is unknown: none of its items counts as acknowledged.
            Err(e) => eprintln!("batch {batch}: {e}"),
        }
    }
    assert!(acked.len() >= 2000, "only {} items acknowledged", acked.len());
    cluster.nodes[0].kill9();
    cluster.nodes[2].restart();
    assert!(cluster.nodes[2].wait_serving_reads(Duration::from_secs(60)), "node 3 votes again");
    missing_reads(&cluster, 1, &acked).await;
    cluster.nodes[0].restart();
    let keys: Vec<&[u8]> = acked.iter().map(Vec::as_slice).collect();
    let states = cluster.replica_states(0, &keys).await.expect("node 1 answers");
    let lost: Vec<String> = keys
        .iter()
        .zip(states)
        .filter(|(key, state)| {
            state.as_ref().and_then(|r| r.view(now_ms())) != Some(View::Register(key.to_vec()))
        })
        .map(|(key, _)| String::from_utf8_lossy(key).into_owned())
        .collect();
    assert!(
        lost.is_empty(),
        "node 1 lost {} of its acknowledged commits, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Reads every key at QUORUM through node `i` (0-based) and fails on any that is not its own
/// value.
async fn missing_reads(cluster: &TestCluster, i: usize, keys: &[Vec<u8>]) {
    let c = quorum(cluster.client(i).await);
    let mut missing = Vec::new();
    for chunk in keys.chunks(100) {
        let got = c.batch_get(chunk.to_vec()).await.expect("a QUORUM read");
        for (key, entry) in chunk.iter().zip(got) {
            let value = entry.and_then(|e| e.value).and_then(|v| v.kind);
            if value != Some(proto::value::Kind::Register(key.clone())) {
                missing.push(String::from_utf8_lossy(key).into_owned());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged items lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}
