//! Readiness and draining with real `geokv` processes: a node is not ready (gRPC health
//! NOT_SERVING, `/readyz` 503 with the reason) until it has recovered its keys and found its
//! peers, and again as soon as SIGTERM starts its drain, during which a request already in
//! flight still completes; the node then exits cleanly.

mod support;

use std::process::Command;
use std::time::Duration;

use geokv_client::proto;
use geokv_proto::v1 as pb;
use support::{wait_until, TestCluster, BIN, FAULTS_ENABLED};

/// `geokv health` against node `i`: whether it says SERVING.
fn serving(cluster: &TestCluster, i: usize) -> bool {
    Command::new(BIN)
        .args(["--endpoint", &cluster.nodes[i].endpoint(), "health"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `/readyz` of node `i`: (status code, body); (0, "") if it does not answer.
fn readyz(cluster: &TestCluster, i: usize) -> (u16, String) {
    let Some(addr) = cluster.nodes[i].metrics_addr else { return (0, String::new()) };
    let out = Command::new("curl")
        .args(["-s", "-m", "2", "-w", "\n%{http_code}", &format!("http://{addr}/readyz")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_ready_only_once_recovered_and_in_contact_and_stops_being_ready_when_it_drains() {
    let mut cluster = TestCluster::start_region(3, 3, FAULTS_ENABLED);
    assert!(serving(&cluster, 0), "a started region's node is ready");
    assert_eq!(readyz(&cluster, 0).0, 200);

    // Start: node 1 restarts on an empty data directory while its peers are stopped: it cannot
    // recover its keys, so it is not ready, and says why.
    cluster.nodes[1].signal("STOP");
    cluster.nodes[2].signal("STOP");
    cluster.nodes[0].kill9();
    std::fs::remove_dir_all(&cluster.nodes[0].data_dir).unwrap();
    cluster.nodes[0].restart();
    assert!(!serving(&cluster, 0), "a node that has not recovered is not ready");
    let (code, body) = readyz(&cluster, 0);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("starting: recovering"), "{body}");
    cluster.nodes[1].signal("CONT");
    cluster.nodes[2].signal("CONT");
    assert!(
        wait_until(Duration::from_secs(60), || async { serving(&cluster, 0) }).await,
        "ready once its peers are back and it has recovered: {:?}",
        readyz(&cluster, 0)
    );
    assert_eq!(readyz(&cluster, 0), (200, "ready".into()));

    // Drain: a write held up by a slow disk is in flight when SIGTERM comes; readiness goes
    // off at once, the write completes, and the process exits 0.
    cluster
        .inject_faults(0, pb::InjectFaultsRequest { disk_delay_ms: 1500, ..Default::default() })
        .await
        .unwrap();
    // At ALL the write waits for node 1's own (slowed) disk. One that answered within 300 ms
    // was not held by the disk (its first read failed fast: a peer still suspected on a loaded
    // machine): another is sent, until one is in flight.
    let client = cluster.client(0).await.with_consistency(proto::Consistency::All);
    let mut in_flight = None;
    for _ in 0..20 {
        let c = client.clone();
        let write = tokio::spawn(async move { c.put(b"in-flight", b"kept", None).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !write.is_finished() {
            in_flight = Some(write);
            break;
        }
        eprintln!("the write answered before the slow disk held it: {:?}", write.await);
    }
    let write = in_flight.expect("a write held in flight by the slow disk");
    cluster.nodes[0].signal("TERM");
    let draining =
        wait_until(Duration::from_secs(5), || async { readyz(&cluster, 0) == (503, "draining".into()) })
            .await;
    assert!(draining, "readiness is off while the node drains: {:?}", readyz(&cluster, 0));
    assert!(!serving(&cluster, 0));
    write.await.unwrap().expect("a request in flight when the drain started completes");
    let status =
        cluster.nodes[0].wait_exit(Duration::from_secs(30)).expect("the node exits within its grace period");
    assert!(status.success(), "a drained node exits cleanly: {status:?}");
    let reader = cluster.client(1).await.with_consistency(proto::Consistency::Quorum);
    let got = reader.get(b"in-flight").await.unwrap();
    assert!(got.is_some(), "the write acknowledged during the drain is in the region");
}

/// The bytes of a register entry.
fn register(e: proto::Entry) -> Option<Vec<u8>> {
    match e.value.and_then(|v| v.kind) {
        Some(proto::value::Kind::Register(b)) => Some(b),
        _ => None,
    }
}

/// A client's load at QUORUM on a region (puts, each read back) while every node of the region
/// is restarted in turn with SIGTERM: with a client that knows all three nodes
/// (`geokv_client::Failover`), no request fails and every write reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_fails_no_quorum_request() {
    let mut cluster = TestCluster::start_region(3, 3, "[shutdown]\ndrain_delay_ms = 300\n");
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.endpoint()).collect();
    let client = geokv_client::Failover::connect(&endpoints, &cluster.nodes[0].security)
        .unwrap()
        .with_consistency(proto::Consistency::Quorum)
        .with_patience(Duration::from_secs(20));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..3 {
        let (client, stop) = (client.clone(), stop.clone());
        load.spawn(async move {
            let (mut done, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("roll:{worker}:{done}").into_bytes();
                if let Err(e) = client.put(&key, &key, None).await {
                    failed.push(format!("put {}: {e}", String::from_utf8_lossy(&key)));
                    continue;
                }
                match client.get(&key).await {
                    Ok(Some(e)) if register(e.clone()) == Some(key.clone()) => {}
                    other => failed.push(format!("get {}: {other:?}", String::from_utf8_lossy(&key))),
                }
                done += 1;
            }
            (done, failed)
        });
    }
    for i in 0..cluster.nodes.len() {
        // Some load on the full region first, then node i+1 drains and exits, and comes back.
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.nodes[i].signal("TERM");
        let status =
            cluster.nodes[i].wait_exit(Duration::from_secs(30)).expect("the node exits after its drain");
        assert!(status.success(), "node {} drained and exited cleanly: {status:?}", i + 1);
        cluster.nodes[i].restart();
        assert!(
            wait_until(Duration::from_secs(60), || async { serving(&cluster, i) }).await,
            "node {} is ready again",
            i + 1
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut done, mut failed) = (0, Vec::new());
    while let Some(r) = load.join_next().await {
        let (d, f) = r.unwrap();
        done += d;
        failed.extend(f);
    }
    eprintln!("rolling restart: {done} writes, each read back, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "{} of the requests failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(done >= 100, "the load ran through the restarts ({done} writes)");
}
