//! Membership changes of a running region with real `geokv` processes: a node joins and a node
//! leaves while clients keep writing; ranges move by streaming and no acknowledged write is
//! lost.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use geokv_client::{op, proto, Client};
use geokv_core::View;
use geokv_topology::Ring;
use support::{wait_until, TestCluster};

type Acked = Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Writes `count` keys `{prefix}{i}` = `v{i}` at QUORUM, 100 per batch; returns them.
async fn preload(client: &Client, prefix: &str, count: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let kvs: BTreeMap<Vec<u8>, Vec<u8>> =
        (0..count).map(|i| (format!("{prefix}{i:05}").into_bytes(), format!("v{i}").into_bytes())).collect();
    let items: Vec<_> = kvs.iter().collect();
    for chunk in items.chunks(100) {
        let results =
            client.batch_write(chunk.iter().map(|(k, v)| op::put(k, v, None)).collect()).await.unwrap();
        assert!(results.iter().all(|r| r.version.is_some()), "preload write refused");
    }
    kvs
}

/// Keeps writing new keys at QUORUM until `stop`, recording the acknowledged ones.
fn spawn_writer(
    client: Client,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let (k, v) = (format!("{prefix}{i:06}").into_bytes(), format!("w{i}").into_bytes());
            if client.put(&k, &v, None).await.is_ok() {
                acked.lock().unwrap().insert(k, v);
            }
            i += 1;
        }
    })
}

/// Keys in `expected` that node `i` (0-based) does not hold with the expected value.
async fn missing_on(cluster: &TestCluster, i: usize, expected: &[(&Vec<u8>, &Vec<u8>)]) -> usize {
    let keys: Vec<&[u8]> = expected.iter().map(|(k, _)| k.as_slice()).collect();
    let Some(states) = cluster.replica_states(i, &keys).await else { return expected.len() };
    let now = now_ms();
    states
        .iter()
        .zip(expected)
        .filter(|(s, (_, v))| s.as_ref().and_then(|r| r.view(now)) != Some(View::Register((*v).clone())))
        .count()
}

/// How many of `keys` node `i` (0-based) holds a state for.
async fn held_by(cluster: &TestCluster, i: usize, keys: &[&[u8]]) -> u64 {
    let states = cluster.replica_states(i, keys).await.expect("node answers");
    states.iter().filter(|s| s.is_some()).count() as u64
}

/// Reads every key through `client` at ALL (8 readers at once) and compares with the
/// acknowledged value.
async fn assert_all_readable(client: &Client, expected: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let all = client.clone().with_consistency(proto::Consistency::All);
    let items: Vec<(Vec<u8>, Vec<u8>)> = expected.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut readers = tokio::task::JoinSet::new();
    for chunk in items.chunks(items.len().div_ceil(8).max(1)) {
        let (all, chunk) = (all.clone(), chunk.to_vec());
        readers.spawn(async move {
            for (k, v) in chunk {
                let name = String::from_utf8_lossy(&k).into_owned();
                // An ALL read is refused (UNAVAILABLE) while the reading node's gossip holds a
                // replica suspect, which a loaded machine can make happen for a moment: retry
                // such refusals for a while; any other failure, or a wrong value, fails.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                let e = loop {
                    match all.get(&k).await {
                        Ok(e) => break e,
                        Err(geokv_client::ClientError::Status(s))
                            if s.code() == geokv_client::Code::Unavailable
                                && std::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Err(e) => panic!("ALL read of {name}: {e}"),
                    }
                };
                let got = e.and_then(|e| e.value).and_then(|v| v.kind);
                assert_eq!(got, Some(proto::value::Kind::Register(v)), "key {name}");
            }
        });
    }
    while let Some(done) = readers.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_under_load_streams_in_its_ranges_and_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(3);
    let writer_client = cluster.client(0).await.with_consistency(proto::Consistency::Quorum);
    let mut expected = preload(&writer_client, "pre-", 3_000).await;

    let (stop, acked): (Arc<AtomicBool>, Acked) = Default::default();
    let writer = spawn_writer(writer_client.clone(), "live-", stop.clone(), acked.clone());
    let started = std::time::Instant::now();
    let new = cluster.add_node();
    let joined = wait_until(Duration::from_secs(90), || async {
        cluster.member_field(new, 4, "status") == "normal" && cluster.member_field(0, 4, "status") == "normal"
    })
    .await;
    assert!(joined, "node 4 became an owner (status normal) as seen by itself and node 1");
    eprintln!(
        "node 4 joined in {:?} with {} live writes acknowledged",
        started.elapsed(),
        acked.lock().unwrap().len()
    );
    // Keep writing a little after the join, then stop.
    let after = acked.lock().unwrap().len() + 200;
    assert!(wait_until(Duration::from_secs(60), || async { acked.lock().unwrap().len() >= after }).await);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    expected.extend(acked.lock().unwrap().clone());

    // Node 4 holds every key it replicates on the 4-node ring (streamed, written while it
    // joined, or repaired by the catch-up anti-entropy round).
    let ring = Ring::new(1..=4, 256);
    let mine: Vec<(&Vec<u8>, &Vec<u8>)> =
        expected.iter().filter(|(k, _)| ring.preference_list(k, 3).contains(&4)).collect();
    let share = mine.len() as f64 / expected.len() as f64;
    assert!((0.6..0.9).contains(&share), "node 4 replicates {share:.2} of the keys, about 3/4 expected");
    let complete =
        wait_until(Duration::from_secs(60), || async { missing_on(&cluster, new, &mine).await == 0 }).await;
    assert!(complete, "node 4 lacks {} of its {} keys", missing_on(&cluster, new, &mine).await, mine.len());
    assert_all_readable(&cluster.client(new).await, &expected).await;

    // Old owners drop what moved to node 4, and the region still has every key at ALL.
    let not_mine: Vec<&[u8]> =
        expected.keys().filter(|k| !ring.preference_list(k, 3).contains(&1)).map(|k| k.as_slice()).collect();
    let held_before = held_by(&cluster, 0, &not_mine).await;
    assert!(held_before > 0);
    let out = std::process::Command::new(support::BIN)
        .args(["--json", "admin", "cleanup", "--peer", &cluster.peer_addrs[0].to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "cleanup: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // (Unacknowledged writes that landed anyway may add a few keys to what it drops.)
    assert!(
        report["keys"].as_u64().unwrap() >= held_before,
        "node 1 dropped the keys it no longer replicates"
    );
    assert_eq!(held_by(&cluster, 0, &not_mine).await, 0);
    assert_all_readable(&cluster.client(0).await, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaves_under_load_and_every_key_keeps_its_replicas() {
    let mut cluster = TestCluster::start(4);
    let client = cluster.client(0).await.with_consistency(proto::Consistency::Quorum);
    let mut expected = preload(&client, "pre-", 2_000).await;

    let (stop, acked): (Arc<AtomicBool>, Acked) = Default::default();
    let writer = spawn_writer(client.clone(), "live-", stop.clone(), acked.clone());
    assert!(wait_until(Duration::from_secs(30), || async { acked.lock().unwrap().len() >= 100 }).await);
    let out = std::process::Command::new(support::BIN)
        .args(["--json", "admin", "leave", "--peer", &cluster.peer_addrs[2].to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "leave: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "left");
    assert!(report["keys"].as_u64().unwrap() > 0, "node 3 streamed its keys out: {report}");
    let after = acked.lock().unwrap().len() + 200;
    assert!(wait_until(Duration::from_secs(60), || async { acked.lock().unwrap().len() >= after }).await);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let preloaded = expected.clone();
    expected.extend(acked.lock().unwrap().clone());

    // The node is gone for good; everyone has seen it leave.
    cluster.nodes[2].kill9();
    for i in [0, 1, 3] {
        let seen =
            wait_until(Duration::from_secs(30), || async { cluster.member_field(i, 3, "status") == "left" })
                .await;
        assert!(seen, "node {} sees node 3 as left", i + 1);
    }
    // Every key written before the leave was streamed to its new replicas (no repair needed).
    let ring = Ring::new([1, 2, 4], 256);
    for (i, id) in [(0usize, 1u64), (1, 2), (3, 4)] {
        let mine: Vec<(&Vec<u8>, &Vec<u8>)> =
            preloaded.iter().filter(|(k, _)| ring.preference_list(k, 3).contains(&id)).collect();
        assert_eq!(missing_on(&cluster, i, &mine).await, 0, "node {id} lacks keys it now replicates");
    }
    // And every acknowledged write reads back at ALL from the three remaining owners.
    assert_all_readable(&cluster.client(1).await, &expected).await;
    // Leaving below the replication factor is refused.
    let out = std::process::Command::new(support::BIN)
        .args(["admin", "leave", "--peer", &cluster.peer_addrs[0].to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("replication factor"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cleanup drops a copy only once every home replica of its key took it (the copy may be the
/// only one): while node 1 cannot reach its peers, a cleanup keeps every copy and fails saying
/// so; once it can, the cleanup drops them, and every key still reads back at ALL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_keeps_the_copies_no_home_replica_took() {
    let mut cluster = TestCluster::start_region_without_repair_and(3, 3, "");
    let client = cluster.client(0).await.with_consistency(proto::Consistency::Quorum);
    let expected = preload(&client, "c-", 300).await;
    let new = cluster.add_node();
    let joined = wait_until(Duration::from_secs(90), || async {
        cluster.member_field(new, 4, "status") == "normal" && cluster.member_field(0, 4, "status") == "normal"
    })
    .await;
    assert!(joined, "node 4 became an owner");
    let ring = Ring::new(1..=4, 256);
    let not_mine: Vec<&[u8]> =
        expected.keys().filter(|k| !ring.preference_list(k, 3).contains(&1)).map(|k| k.as_slice()).collect();
    let held = held_by(&cluster, 0, &not_mine).await;
    assert!(held > 0, "node 1 holds copies of keys it no longer replicates");
    let cleanup = || {
        std::process::Command::new(support::BIN)
            .args(["--json", "admin", "cleanup", "--peer", &cluster.peer_addrs[0].to_string()])
            .output()
            .unwrap()
    };

    let cut = geokv_proto::v1::InjectFaultsRequest { unreachable: vec![2, 3, 4], ..Default::default() };
    cluster.inject_faults(0, cut).await.expect("faults on node 1");
    let out = cleanup();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a cleanup whose copies no replica took must fail");
    assert!(stderr.contains("run cleanup again") && stderr.contains(&format!("kept {held}")), "{stderr}");
    assert_eq!(held_by(&cluster, 0, &not_mine).await, held, "no copy was dropped");

    cluster.inject_faults(0, Default::default()).await.expect("faults cleared on node 1");
    let out = cleanup();
    assert!(out.status.success(), "cleanup: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(held_by(&cluster, 0, &not_mine).await, 0, "every copy was handed over, then dropped");
    assert_all_readable(&cluster.client(0).await, &expected).await;
}
