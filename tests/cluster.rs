//! A region of three real `geokv` processes: quorum reads and writes through a minority
//! crash, hinted handoff and read repair afterwards, and CRDT convergence across coordinators.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use geokv_client::{proto, Client};
use geokv_core::View;
use proto::value::Kind;
use support::{wait_until, TestCluster};

fn register(e: &Option<proto::Entry>) -> Option<Vec<u8>> {
    match e.as_ref()?.value.as_ref()?.kind.as_ref()? {
        Kind::Register(b) => Some(b.clone()),
        _ => None,
    }
}

fn quorum(c: Client) -> Client {
    c.with_consistency(proto::Consistency::Quorum)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The first (replica, key, what it holds) that differs from `expected`, if any.
async fn first_difference(cluster: &TestCluster, expected: &[(Vec<u8>, View)]) -> Option<String> {
    let keys: Vec<&[u8]> = expected.iter().map(|(k, _)| k.as_slice()).collect();
    for i in 0..cluster.nodes.len() {
        let Some(states) = cluster.replica_states(i, &keys).await else {
            return Some(format!("replica {} does not answer", i + 1));
        };
        for ((key, want), state) in expected.iter().zip(states) {
            let got = state.and_then(|r| r.view(now_ms()));
            if got.as_ref() != Some(want) {
                return Some(format!(
                    "replica {} has {got:?} for {:?}, expected {want:?}",
                    i + 1,
                    String::from_utf8_lossy(key)
                ));
            }
        }
    }
    None
}

/// Waits until every replica's own state of every key shows the expected value.
async fn wait_for_replicas(cluster: &TestCluster, expected: &[(Vec<u8>, View)], timeout: Duration) {
    let converged =
        wait_until(timeout, || async { first_difference(cluster, expected).await.is_none() }).await;
    if !converged {
        panic!(
            "replicas did not converge in {timeout:?}: {}",
            first_difference(cluster, expected).await.unwrap_or_default()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_writes_and_reads_survive_a_minority_crash_and_the_node_converges_after_restart() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let mut cluster = TestCluster::start(3);
    let started = Instant::now();
    let clients = [quorum(cluster.client(0).await), quorum(cluster.client(1).await)];
    // Four writers under continuous load, each reading back every write through the other
    // coordinator, while node 3 is killed and later restarted.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (writer, reader) = (clients[w % 2].clone(), clients[(w + 1) % 2].clone());
        let (stop, done) = (stop.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("w{w}-{i:05}").into_bytes();
                let value = format!("v{i}").into_bytes();
                writer.put(&key, &value, None).await.unwrap_or_else(|e| panic!("write {w}/{i}: {e}"));
                let read = reader.get(&key).await.unwrap_or_else(|e| panic!("read {w}/{i}: {e}"));
                assert_eq!(register(&read), Some(value.clone()), "QUORUM read after QUORUM write");
                acked.push((key, value));
                done.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            acked
        }));
    }
    let progress = |n: usize| {
        let done = done.clone();
        async move { wait_until(Duration::from_secs(60), || async { done.load(Ordering::SeqCst) >= n }).await }
    };
    assert!(progress(200).await, "load started");
    cluster.nodes[2].kill9();
    let (at_kill, killed) = (done.load(Ordering::SeqCst), Instant::now());
    assert!(progress(at_kill + 400).await, "400 more writes with node 3 down");
    // Stay down past the failure detector's suspicion time, so writes also take the path
    // where node 3 is known to be down (not only the one where a send to it fails).
    let suspected =
        wait_until(Duration::from_secs(30), || async { killed.elapsed() > Duration::from_millis(1500) })
            .await;
    assert!(suspected);
    cluster.nodes[2].restart();
    let at_restart = done.load(Ordering::SeqCst);
    assert!(progress(at_restart + 200).await, "200 more writes after the restart");
    stop.store(true, Ordering::SeqCst);
    let mut acked: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("no writer failed"));
    }
    eprintln!("{} acknowledged writes (and reads) in {:?}", acked.len(), started.elapsed());

    // Hinted handoff (and read repair) bring node 3 up to date: every acknowledged write is on
    // every replica, and readable at ALL through every node.
    let expected: Vec<(Vec<u8>, View)> =
        acked.iter().map(|(k, v)| (k.clone(), View::Register(v.clone()))).collect();
    wait_for_replicas(&cluster, &expected, Duration::from_secs(60)).await;
    eprintln!("converged after {:?}", started.elapsed());
    for i in 0..3 {
        let all = cluster.client(i).await.with_consistency(proto::Consistency::All);
        for (key, value) in acked.iter().step_by(7) {
            assert_eq!(register(&all.get(key).await.unwrap()), Some(value.clone()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_see_every_completed_quorum_write_while_a_node_goes_down_and_up() {
    let mut cluster = TestCluster::start(3);
    let a = quorum(cluster.client(0).await);
    let b = quorum(cluster.client(2).await);
    let start = Instant::now();
    for i in 0..2000u32 {
        if i == 500 {
            cluster.nodes[1].kill9();
        }
        if i == 1200 {
            cluster.nodes[1].restart();
        }
        let (w, r) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let key = format!("raw{}", i % 50).into_bytes();
        let value = i.to_be_bytes();
        w.put(&key, &value, None).await.unwrap_or_else(|e| panic!("write {i}: {e}"));
        let got = r.get(&key).await.unwrap_or_else(|e| panic!("read {i}: {e}"));
        assert_eq!(
            register(&got),
            Some(value.to_vec()),
            "op {i}: a QUORUM read missed the QUORUM write before it"
        );
    }
    eprintln!("2000 write/read pairs in {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_sets_written_through_different_coordinators_converge_exactly() {
    let cluster = TestCluster::start(3);
    let mut tasks = Vec::new();
    for i in 0..3usize {
        let c = quorum(cluster.client(i).await);
        tasks.push(tokio::spawn(async move {
            for j in 0..40u32 {
                c.increment(b"counter", 1 + i as i64, None).await.unwrap();
                let mine = format!("n{i}-{j}").into_bytes();
                c.set_add(b"set", vec![mine.clone()], None).await.unwrap();
                if j % 4 == 0 {
                    c.set_remove(b"set", vec![mine]).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total: i64 = (0..3).map(|i| 40 * (1 + i)).sum();
    let members: BTreeSet<Vec<u8>> = (0..3)
        .flat_map(|i| (0..40u32).filter(|j| j % 4 != 0).map(move |j| format!("n{i}-{j}").into_bytes()))
        .collect();
    let expected = vec![
        (b"counter".to_vec(), View::Counter(total)),
        (b"set".to_vec(), View::Set(members.into_iter().collect())),
    ];
    wait_for_replicas(&cluster, &expected, Duration::from_secs(30)).await;
}

/// Writes coordinated at the same time send their states to each replica coalesced
/// (`MergeMany`, and their first reads `FetchMany`): with the replicas' disks slow, 300 concurrent QUORUM writes through one node
/// (puts to 100 keys and 200 increments of 10 counters) go out in far fewer calls, and every
/// replica holds every write by the write path alone (no anti-entropy, no hints). A replica
/// answering probes late under this load is given 3 s before it is suspected dead (with the
/// usual 500 ms, a CI run once saw both slow replicas declared down and 25 states kept as
/// hints instead of sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_reach_every_replica_in_coalesced_calls() {
    let cluster = TestCluster::start_region_without_repair_and(3, 3, "suspect_timeout_ms = 3000\n");
    let slow = geokv_proto::v1::InjectFaultsRequest { disk_delay_ms: 30, ..Default::default() };
    for i in [1, 2] {
        cluster.inject_faults(i, slow.clone()).await.expect("a slow disk on the replicas");
    }
    let c = quorum(cluster.client(0).await);
    let writes = (0..300u32).map(|i| {
        let c = c.clone();
        async move {
            if i < 100 {
                c.put(format!("p{i}").as_bytes(), format!("v{i}").as_bytes(), None).await.map(|_| ())
            } else {
                c.increment(format!("c{}", i % 10).as_bytes(), 1, None).await.map(|_| ())
            }
        }
    });
    for (i, r) in futures::future::join_all(writes).await.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    let mut expected: Vec<(Vec<u8>, View)> = (0..100)
        .map(|i| (format!("p{i}").into_bytes(), View::Register(format!("v{i}").into_bytes())))
        .collect();
    expected.extend((0..10).map(|i| (format!("c{i}").into_bytes(), View::Counter(20))));
    wait_for_replicas(&cluster, &expected, Duration::from_secs(30)).await;

    let text = support::scrape_raw(cluster.nodes[0].metrics_addr.expect("metrics served")).await;
    let items = |rpc, call| {
        support::metric(&text, "geokv_peer_items_total", &[("rpc", rpc), ("call", call)]).unwrap_or(0.0)
    };
    let calls = |rpc| support::metric(&text, "geokv_peer_many_calls_total", &[("rpc", rpc)]).unwrap_or(0.0);
    let (alone, coalesced) = (items("merge", "single"), items("merge", "many"));
    assert!(alone + coalesced >= 600.0, "two replicas x 300 writes: {alone} + {coalesced}");
    let merges = calls("merge");
    assert!(
        coalesced >= 300.0 && coalesced / merges >= 4.0,
        "{coalesced} states coalesced in {merges} calls, {alone} alone"
    );
    // Each write's first read asks a replica for the key's state: fetches coalesce too.
    assert!(items("fetch", "single") + items("fetch", "many") >= 300.0);
    assert!(calls("fetch") > 0.0, "fetches coalesced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_merges_the_replicas_and_pages_without_gaps_or_repeats_with_a_node_down() {
    use geokv_client::{op, ScanOptions};
    let mut cluster = TestCluster::start(3);
    // Node 3 misses every write: a scan through it must still see them, merged from the others.
    cluster.nodes[2].kill9();
    let a = quorum(cluster.client(0).await);
    let keys: Vec<Vec<u8>> = (0..1000u32).map(|i| format!("s{i:04}").into_bytes()).collect();
    for chunk in keys.chunks(100) {
        let results = a.batch_write(chunk.iter().map(|k| op::put(k, k, None)).collect()).await.unwrap();
        assert!(results.iter().all(|r| r.version.is_some()));
    }
    // Delete every tenth key through another coordinator.
    let b = quorum(cluster.client(1).await);
    for k in keys.iter().step_by(10) {
        assert!(b.delete(k).await.unwrap().existed);
    }
    let expected: Vec<Vec<u8>> =
        keys.iter().enumerate().filter(|(i, _)| i % 10 != 0).map(|(_, k)| k.clone()).collect();
    let check = |client: Client| {
        let expected = expected.clone();
        async move {
            let opts = ScanOptions { prefix: b"s".to_vec(), limit: 77, ..Default::default() };
            let entries = client.scan_all(&opts).await.unwrap();
            let seen: Vec<Vec<u8>> = entries.iter().map(|e| e.key.clone()).collect();
            assert_eq!(seen, expected, "every live key once, in order, deleted keys hidden");
            assert!(entries.iter().all(|e| register(&Some(e.clone())).as_deref() == Some(&e.key[..])));
        }
    };
    cluster.nodes[2].restart();
    check(quorum(cluster.client(2).await)).await;
    // With node 2 lost (once node 1 has seen node 3 back), the two others still give the
    // whole picture.
    assert!(wait_until(Duration::from_secs(30), || async { member_health(&cluster, 0, 3) == "alive" }).await);
    cluster.nodes[1].kill9();
    check(quorum(cluster.client(0).await)).await;
    check(quorum(cluster.client(2).await)).await;
    // At ALL a scan refuses to answer with a node missing.
    let all = cluster.client(0).await.with_consistency(proto::Consistency::All);
    let err = all.scan_page(&ScanOptions::default(), vec![]).await.unwrap_err();
    assert_eq!(err.code(), Some(geokv_client::Code::Unavailable), "{err}");

    // Operators see the lost node through `geokv admin peer-stats`.
    let seen_down = wait_until(Duration::from_secs(30), || async {
        member_health(&cluster, 0, 2) != "alive" && member_health(&cluster, 0, 3) == "alive"
    })
    .await;
    assert!(seen_down, "peer-stats shows node 2 down and node 3 alive");
}

/// How node `i` (0-based) sees node `id`, asked through `geokv admin peer-stats --json`.
fn member_health(cluster: &TestCluster, i: usize, id: u64) -> String {
    cluster.member_field(i, id, "health")
}

/// A region whose topology names every node by a DNS name (`localhost:PORT`), with TLS on: the
/// nodes resolve each other's names when they connect (gossip, peer calls) and again after a
/// restart; quorum writes and reads work, and a restarted node is found again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_whose_topology_names_nodes_by_host_name_serves_quorums_and_finds_a_restarted_node() {
    let mut cluster = TestCluster::start_region_by_name(3, 3);
    let topology = std::fs::read_to_string(cluster.dir.path().join("topology.toml")).unwrap();
    assert!(topology.contains("client_addr = \"localhost:"), "{topology}");
    let all_alive = |cluster: &TestCluster| {
        (0..3).all(|i| {
            (1..=3)
                .filter(|&id| id != i as u64 + 1)
                .all(|id| cluster.member_field(i, id, "health") == "alive")
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || async { all_alive(&cluster) }).await,
        "gossip finds every node by name"
    );
    let writer = cluster.client(0).await.with_consistency(proto::Consistency::Quorum);
    for i in 0..50 {
        writer.put(format!("named-{i}").as_bytes(), b"v", None).await.unwrap();
    }
    cluster.nodes[2].kill9();
    cluster.nodes[2].restart();
    assert!(
        wait_until(Duration::from_secs(30), || async { all_alive(&cluster) }).await,
        "the restarted node is found again by name"
    );
    for i in 50..100 {
        writer.put(format!("named-{i}").as_bytes(), b"v", None).await.unwrap();
    }
    let reader = cluster.client(2).await.with_consistency(proto::Consistency::All);
    for i in 0..100 {
        assert!(reader.get(format!("named-{i}").as_bytes()).await.unwrap().is_some(), "named-{i} at ALL");
    }
}

/// A TTL change (Expire, Persist) sent through a replica that missed the key's write still
/// finds the key (the coordinator reads a quorum first), and reaches every replica with the
/// value kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_change_through_a_replica_that_missed_the_write_reaches_every_replica() {
    let mut cluster = TestCluster::start_region(3, 3, "");
    cluster.nodes[2].kill9();
    let first = quorum(cluster.client(0).await);
    first.put(b"session", b"token", Some(Duration::from_secs(3600))).await.unwrap();
    first.increment(b"visits", 7, None).await.unwrap();
    cluster.nodes[2].restart();
    let late = quorum(cluster.client(2).await);
    let persisted = late.expire(b"session", None).await.unwrap();
    assert!(persisted.existed && persisted.ttl_remaining_ms.is_none(), "{persisted:?}");
    let expiring = late.expire(b"visits", Some(Duration::from_secs(600))).await.unwrap();
    assert!(expiring.existed && expiring.ttl_remaining_ms.is_some(), "{expiring:?}");
    let settled = || async {
        for i in 0..3 {
            let Some(states) = cluster.replica_states(i, &[b"session", b"visits"]).await else {
                return false;
            };
            let now = now_ms();
            let [Some(session), Some(visits)] = [&states[0], &states[1]] else { return false };
            if session.view(now) != Some(View::Register(b"token".to_vec()))
                || session.ttl_remaining_ms(now).is_some()
                || visits.view(now) != Some(View::Counter(7))
                || visits.ttl_remaining_ms(now).is_none_or(|t| t <= 500_000)
            {
                return false;
            }
        }
        true
    };
    assert!(wait_until(Duration::from_secs(30), settled).await, "every replica holds both changes");
}

/// A QUORUM read asks R = 2 of the 3 replicas, not all three (the third answer used to be
/// thrown away), and a replica that stops answering while its region still counts it healthy
/// costs a read `cluster.speculative_retry_ms` (the spare replica is asked), not the peer
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_ask_two_replicas_and_go_around_a_silent_one() {
    // Gossip probes every 20 s: a stopped node stays healthy in the others' views for the test;
    // the peer deadline (10 s) is what a read asking only the stopped node would wait.
    let cluster = TestCluster::start_region_without_repair_and(
        3,
        3,
        "request_timeout_ms = 10000\nprobe_interval_ms = 20000\nsuspect_timeout_ms = 60000\n",
    );
    let c = quorum(cluster.client(0).await);
    let keys: Vec<Vec<u8>> = (0..40).map(|i| format!("spec-{i}").into_bytes()).collect();
    for k in &keys {
        c.put(k, k, None).await.unwrap_or_else(|e| panic!("put: {e}"));
    }
    let addr = cluster.nodes[0].metrics_addr.expect("metrics served");
    let counted =
        |text: &str, name: &str, labels: &[(&str, &str)]| support::metric(text, name, labels).unwrap_or(0.0);
    let fetches = |text: &str| {
        counted(text, "geokv_peer_items_total", &[("rpc", "fetch"), ("call", "single")])
            + counted(text, "geokv_peer_items_total", &[("rpc", "fetch"), ("call", "many")])
    };
    let before = support::scrape_raw(addr).await;
    for k in &keys {
        assert_eq!(register(&c.get(k).await.unwrap_or_else(|e| panic!("get: {e}"))), Some(k.clone()));
    }
    let after = support::scrape_raw(addr).await;
    let asked = fetches(&after) - fetches(&before);
    assert!(
        (40.0..=44.0).contains(&asked),
        "40 QUORUM reads on node 1 asked other replicas {asked} times (one each, a spare when one fails)"
    );

    cluster.nodes[1].signal("STOP");
    let spec = |text: &str| counted(text, "geokv_speculative_reads_total", &[]);
    let mut slowest = Duration::ZERO;
    for k in &keys {
        let started = Instant::now();
        let got = c.get(k).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            register(&got.unwrap_or_else(|e| panic!("get with node 2 stopped: {e}"))),
            Some(k.clone())
        );
    }
    let end = support::scrape_raw(addr).await;
    cluster.nodes[1].signal("CONT");
    assert!(slowest < Duration::from_secs(3), "a read took {slowest:?} with node 2 stopped");
    // About half the keys have node 2 as the replica node 1 asks after itself.
    let speculated = spec(&end) - spec(&after);
    assert!(speculated >= 5.0, "{speculated} reads asked the spare replica");
}
