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
    // At ALL the write waits for node 1's own (slowed) disk.
    let client = cluster.client(0).await.with_consistency(proto::Consistency::All);
    let write = tokio::spawn(async move { client.put(b"in-flight", b"kept", None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
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
