//! Runtime fault injection (`InjectFaults` on the peer port) against real `geokv` processes:
//! refused unless the config enables it, validated, and each fault does what it says:
//! partitions (both ways and one way) fail the cut-off side's quorum writes and heal, a clock
//! offset or drift shows in the stamps of writes, a slow disk slows writes (and a per-call
//! timeout bounds it, with failover to the next node).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use geokv_client::{proto, Client};
use geokv_proto::v1 as pb;
use pb::cluster_client::ClusterClient;
use support::{wait_until, TestCluster, FAULTS_ENABLED};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn quorum(c: Client) -> Client {
    c.with_consistency(proto::Consistency::Quorum)
}

fn all(c: Client) -> Client {
    c.with_consistency(proto::Consistency::All)
}

/// The unix milliseconds of a write's version (its HLC stamp).
fn stamp_ms(v: Option<proto::Version>) -> u64 {
    let v = v.expect("a write answers with its version");
    geokv_core::Stamp::new(v.hlc, v.node_id).unix_millis()
}

fn partition(unreachable: &[u64]) -> pb::InjectFaultsRequest {
    pb::InjectFaultsRequest { unreachable: unreachable.to_vec(), ..Default::default() }
}

/// The register value of `key` read through `client`, if it answers and has one.
async fn read(client: &Client, key: &[u8]) -> Option<Vec<u8>> {
    match client.get(key).await.ok()??.value?.kind? {
        proto::value::Kind::Register(b) => Some(b),
        _ => None,
    }
}

/// Puts `key` through `client` until it is acknowledged (gossip may briefly route a write to a
/// node it has not yet found unreachable); panics after the deadline.
async fn put_until_acked(client: &Client, key: &[u8], value: &[u8]) {
    let last = std::cell::RefCell::new(String::new());
    let acked = wait_until(Duration::from_secs(20), || async {
        match client.put(key, value, None).await {
            Ok(_) => true,
            Err(e) => {
                *last.borrow_mut() = e.to_string();
                false
            }
        }
    })
    .await;
    assert!(acked, "put of {:?} never acknowledged: {}", String::from_utf8_lossy(key), last.borrow());
}

/// The value of the counter `name{kind="..."}` on a node's metrics endpoint (0 if absent).
async fn fault_count(metrics: Option<SocketAddr>, kind: &str) -> u64 {
    let addr = metrics.expect("FAST_CLUSTER serves metrics");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics port");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let series = format!("geokv_faults_injected_total{{kind=\"{kind}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_is_refused_unless_the_config_enables_it() {
    let cluster = TestCluster::start_region(1, 1, "");
    let err = cluster.inject_faults(0, partition(&[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("set [faults] enabled = true"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_faults_are_refused_and_leave_the_faults_in_force() {
    let cluster = TestCluster::start_region(1, 1, FAULTS_ENABLED);
    let set = cluster.inject_faults(0, partition(&[7, 5, 7])).await.unwrap();
    assert_eq!((set.unreachable, set.node_id), (vec![5, 7], 1), "the answer echoes what is in force");
    let bad = [
        (pb::InjectFaultsRequest { drop_probability: 1.5, ..Default::default() }, "drop_probability is 1.5"),
        (
            pb::InjectFaultsRequest { duplicate_probability: f64::NAN, ..Default::default() },
            "duplicate_probability is NaN",
        ),
        (partition(&[2, 1]), "unreachable names this node (1)"),
        (pb::InjectFaultsRequest { max_delay_ms: 60_001, ..Default::default() }, "max_delay_ms is 60001"),
        (pb::InjectFaultsRequest { disk_delay_ms: u64::MAX, ..Default::default() }, "disk_delay_ms"),
        (pb::InjectFaultsRequest { clock_offset_ms: -86_400_001, ..Default::default() }, "clock_offset_ms"),
        (pb::InjectFaultsRequest { clock_drift_ppm: 2_000_000, ..Default::default() }, "clock_drift_ppm"),
    ];
    for (req, needle) in bad {
        let err = cluster.inject_faults(0, req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(needle), "{} should say {needle:?}", err.message());
    }
    // Still the faults set before; an empty request clears them.
    let cleared = cluster.inject_faults(0, partition(&[])).await.unwrap();
    assert!(cleared.unreachable.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_fails_quorum_writes_while_the_majority_writes_and_all_heals() {
    let cluster = TestCluster::start_region(3, 3, FAULTS_ENABLED);
    let (one, two) = (quorum(cluster.client(0).await), quorum(cluster.client(1).await));
    put_until_acked(&one, b"before", b"0").await;

    cluster.inject_faults(0, partition(&[2, 3])).await.unwrap();
    cluster.inject_faults(1, partition(&[1])).await.unwrap();
    cluster.inject_faults(2, partition(&[1])).await.unwrap();

    // Node 1 coordinates (every node is a home replica with N = 3) and cannot reach anyone.
    for i in 0..5 {
        let key = format!("minority-{i}");
        let err = one.put(key.as_bytes(), b"m", None).await.unwrap_err();
        assert_eq!(err.code(), Some(geokv_client::Code::Unavailable), "{err}");
        // The coordinator reads the key before it writes; that read fails, so nothing is
        // stored anywhere (the message says so).
        assert!(err.to_string().contains("nothing was written"), "{err}");
    }
    // The majority side reaches its quorum.
    for i in 0..20 {
        put_until_acked(&two, format!("majority-{i}").as_bytes(), format!("v{i}").as_bytes()).await;
    }
    assert!(fault_count(cluster.nodes[0].metrics_addr, "unreachable").await > 0);

    for i in 0..3 {
        let now = cluster.inject_faults(i, partition(&[])).await.unwrap();
        assert!(now.unreachable.is_empty());
    }
    let healed_at = Instant::now();
    // Healed: node 1 reads every write at ALL: the majority's acknowledged ones; its own
    // refused ones were never stored, so they read as absent.
    let one_all = all(cluster.client(0).await);
    let mut expected: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        (0..20).map(|i| (format!("majority-{i}").into_bytes(), Some(format!("v{i}").into_bytes()))).collect();
    expected.extend((0..5).map(|i| (format!("minority-{i}").into_bytes(), None)));
    expected.push((b"before".to_vec(), Some(b"0".to_vec())));
    let missing = std::cell::RefCell::new(String::new());
    let healed = wait_until(Duration::from_secs(30), || async {
        for (key, value) in &expected {
            let answered = one_all.get(key).await.is_ok();
            if !answered || read(&one_all, key).await != *value {
                *missing.borrow_mut() = String::from_utf8_lossy(key).into_owned();
                return false;
            }
        }
        true
    })
    .await;
    assert!(healed, "after the partition healed, node 1 does not read {:?} at ALL", missing.borrow());
    eprintln!(
        "partition healed: node 1 read every write at ALL {:?} after the faults were cleared",
        healed_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_cut_fails_the_cut_off_nodes_writes_and_its_peers_calls_are_served_unanswered() {
    let cluster = TestCluster::start_region(3, 3, FAULTS_ENABLED);
    let (one, two) = (quorum(cluster.client(0).await), quorum(cluster.client(1).await));
    put_until_acked(&one, b"before", b"0").await;

    // Node 1 cannot send to 2 and 3; they can send to it.
    cluster.inject_faults(0, partition(&[2, 3])).await.unwrap();
    let err = one.put(b"from-one", b"x", None).await.unwrap_err();
    assert_eq!(err.code(), Some(geokv_client::Code::Unavailable), "{err}");
    assert!(err.to_string().contains("nothing was written"), "{err}");
    put_until_acked(&two, b"from-two", b"y").await;

    // A call from node 2 is served by node 1, but node 2 never gets the answer.
    let mut peer1 = ClusterClient::connect(format!("http://{}", cluster.peer_addrs[0])).await.unwrap();
    let rec = geokv_core::apply(
        None,
        &geokv_core::Op::Put { value: b"served".to_vec(), ttl_ms: None },
        geokv_core::Stamp::new(geokv_core::Stamp::ntp_from_millis(now_ms()), 2),
        now_ms(),
        &geokv_core::Limits::default(),
    )
    .unwrap()
    .record;
    let state = geokv_storage::codec::encode(&rec, 1024, 1);
    let mut merge = tonic::Request::new(pb::MergeRequest {
        key: b"served-unanswered".to_vec(),
        state,
        hint_for: None,
        ship: false,
    });
    merge.metadata_mut().insert("x-geokv-from", 2u64.into());
    let err = peer1.merge(merge).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("response dropped by fault injection"), "{}", err.message());
    let held = peer1
        .fetch(pb::FetchRequest { key: b"served-unanswered".to_vec(), ..Default::default() })
        .await
        .unwrap();
    assert!(!held.into_inner().state.is_empty(), "node 1 applied the merge it could not answer");
    assert!(fault_count(cluster.nodes[0].metrics_addr, "inbound_response_lost").await > 0);
    // Calls from nodes it can reach are answered.
    let mut ping = tonic::Request::new(pb::PingRequest { from: 4 });
    ping.metadata_mut().insert("x-geokv-from", 4u64.into());
    assert_eq!(peer1.ping(ping).await.unwrap().into_inner().node_id, 1);

    cluster.inject_faults(0, partition(&[])).await.unwrap();
    let one_all = all(cluster.client(0).await);
    let healed = wait_until(Duration::from_secs(30), || async {
        read(&one_all, b"from-two").await.as_deref() == Some(b"y")
            && one_all.get(b"from-one").await.is_ok_and(|e| e.is_none())
    })
    .await;
    assert!(healed, "after the cut healed, node 1 reads every write at ALL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_acknowledged_over_a_lossy_slow_duplicating_network_read_back_after_it_heals() {
    let cluster = TestCluster::start_region(3, 3, FAULTS_ENABLED);
    let noisy = pb::InjectFaultsRequest {
        drop_probability: 0.2,
        max_delay_ms: 30,
        duplicate_probability: 0.5,
        ..Default::default()
    };
    for i in 0..3 {
        let now = cluster.inject_faults(i, noisy.clone()).await.unwrap();
        assert_eq!((now.drop_probability, now.max_delay_ms, now.duplicate_probability), (0.2, 30, 0.5));
    }
    let clients = [quorum(cluster.client(0).await), quorum(cluster.client(1).await)];
    let started = Instant::now();
    for i in 0..40 {
        // A put that failed may have been applied anyway; retrying a Put is safe.
        put_until_acked(&clients[i % 2], format!("noisy-{i}").as_bytes(), format!("v{i}").as_bytes()).await;
    }
    eprintln!("40 QUORUM puts over the noisy network took {:?}", started.elapsed());
    let mut counts = Vec::new();
    for kind in ["request_lost", "response_lost", "duplicated"] {
        let mut total = 0;
        for node in &cluster.nodes {
            total += fault_count(node.metrics_addr, kind).await;
        }
        counts.push((kind, total));
    }
    eprintln!("faults injected over the region: {counts:?}");
    assert!(counts.iter().all(|(_, n)| *n > 0), "every kind of fault happened: {counts:?}");

    for i in 0..3 {
        cluster.inject_faults(i, pb::InjectFaultsRequest::default()).await.unwrap();
    }
    let reader = all(cluster.client(2).await);
    let healed = wait_until(Duration::from_secs(30), || async {
        for i in 0..40 {
            let value = format!("v{i}").into_bytes();
            if read(&reader, format!("noisy-{i}").as_bytes()).await != Some(value) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(healed, "every acknowledged put reads back at ALL once the network is clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_offset_or_drift_shows_in_the_stamps_of_writes() {
    let cluster = TestCluster::start_region(1, 1, FAULTS_ENABLED);
    let c = cluster.client(0).await;
    let lead = |v| stamp_ms(v) as i64 - now_ms() as i64;
    let before = lead(c.put(b"k", b"1", None).await.unwrap().version);
    assert!(before.abs() < 1000, "no skew yet: {before} ms");

    let set = cluster
        .inject_faults(0, pb::InjectFaultsRequest { clock_offset_ms: 2000, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(set.clock_offset_ms, 2000);
    let ahead = lead(c.put(b"k", b"2", None).await.unwrap().version);
    assert!((1500..3000).contains(&ahead), "a +2000 ms clock stamps about 2 s ahead: {ahead} ms");
    eprintln!("lead of a write's stamp: {before} ms before, {ahead} ms with +2000 ms");

    // 500,000 ppm: the clock gains half a second per second, from the request on. (The HLC
    // never goes back, so the lead is measured with the +2 s offset kept.)
    cluster
        .inject_faults(
            0,
            pb::InjectFaultsRequest { clock_offset_ms: 2000, clock_drift_ppm: 500_000, ..Default::default() },
        )
        .await
        .unwrap();
    let started = Instant::now();
    let seen = std::cell::Cell::new(0);
    let drifted = wait_until(Duration::from_secs(10), || async {
        seen.set(lead(c.put(b"k", b"3", None).await.unwrap().version));
        seen.get() >= 2300
    })
    .await;
    assert!(drifted, "the drift never added 300 ms: lead {} ms", seen.get());
    assert!(started.elapsed() >= Duration::from_millis(500), "the drift accrues with time, not at once");
    eprintln!("500,000 ppm drift: lead {} ms after {:?}", seen.get(), started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_slows_every_write_until_cleared() {
    let cluster = TestCluster::start_region(1, 1, FAULTS_ENABLED);
    let c = cluster.client(0).await;
    c.put(b"warm", b"up", None).await.unwrap();
    let set = cluster
        .inject_faults(0, pb::InjectFaultsRequest { disk_delay_ms: 300, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(set.disk_delay_ms, 300);
    for i in 0..3 {
        let started = Instant::now();
        c.put(format!("slow-{i}").as_bytes(), b"v", None).await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "a put on a 300 ms disk took {took:?}");
        eprintln!("put on a 300 ms disk took {took:?}");
    }
    cluster.inject_faults(0, pb::InjectFaultsRequest::default()).await.unwrap();
    let fast = wait_until(Duration::from_secs(10), || async {
        let started = Instant::now();
        c.put(b"fast", b"v", None).await.unwrap();
        started.elapsed() < Duration::from_millis(300)
    })
    .await;
    assert!(fast, "writes are fast again once the faults are cleared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_call_timeout_bounds_a_slow_node_and_failover_goes_past_it() {
    let cluster = TestCluster::start_region(3, 3, FAULTS_ENABLED);
    let c = quorum(cluster.client(0).await);
    put_until_acked(&c, b"warm", b"up").await;
    cluster
        .inject_faults(0, pb::InjectFaultsRequest { disk_delay_ms: 5_000, ..Default::default() })
        .await
        .unwrap();
    // The call's own deadline, not the channel's 30 s: node 1 commits nothing for 5 s.
    let started = Instant::now();
    let e = c.clone().with_timeout(Duration::from_millis(500)).put(b"slow", b"v", None).await.unwrap_err();
    assert_eq!(e.code(), Some(geokv_client::Code::DeadlineExceeded), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3), "the 500 ms deadline took {:?}", started.elapsed());
    // A failover client starting at the slow node: its attempt ends at the deadline and the
    // next node coordinates (its quorum is itself and node 3).
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.endpoint()).collect();
    let f = geokv_client::Failover::connect(&endpoints, &geokv_client::Security::none())
        .unwrap()
        .with_consistency(proto::Consistency::Quorum)
        .with_timeout(Duration::from_millis(1_000));
    assert_eq!(f.current(), endpoints[0]);
    let started = Instant::now();
    f.put(b"past-the-slow-node", b"v", None).await.expect("the next node coordinates the put");
    assert!(started.elapsed() < Duration::from_secs(4), "failover took {:?}", started.elapsed());
    assert_ne!(f.current(), endpoints[0], "the next request starts at the node that answered");
    cluster.inject_faults(0, pb::InjectFaultsRequest::default()).await.unwrap();
}
