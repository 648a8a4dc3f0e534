//! Cross-region replication with real `geokv` processes: three regions on loopback with
//! emulated WAN links (delay from the distance between Dublin, Ashburn and Singapore),
//! concurrent writes in every region, links cut and healed, nodes killed after
//! acknowledgement.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use geokv_client::{proto, Client};
use geokv_proto::v1 as pb;
use pb::cluster_client::ClusterClient;
use proto::value::Kind;
use support::{wait_until, TestCluster, THREE_REGIONS};

fn quorum(c: Client) -> Client {
    c.with_consistency(proto::Consistency::Quorum)
}

async fn peer(cluster: &TestCluster, i: usize) -> ClusterClient<tonic::transport::Channel> {
    cluster.peer_client(i).await.expect("peer service")
}

/// Cuts or heals the link from every node of `from` to region `to`.
async fn set_cut(cluster: &TestCluster, from: &str, to: &str, cut: bool) {
    for i in (0..cluster.nodes.len()).filter(|&i| cluster.node_regions[i] == from) {
        let mut c = peer(cluster, i).await;
        let status = c.replication_status(pb::ReplicationStatusRequest {}).await.unwrap().into_inner();
        let mut link = status.destinations.iter().find(|d| d.destination == to).unwrap().link.unwrap();
        link.cut = cut;
        c.set_link(pb::SetLinkRequest { destination: to.into(), link: Some(link) }).await.unwrap();
    }
}

/// The worst (largest) oldest-unacknowledged age from region `from` to `to`, over its nodes.
async fn lag_ms(cluster: &TestCluster, from: &str, to: &str) -> u64 {
    let mut worst = 0;
    for i in (0..cluster.nodes.len()).filter(|&i| cluster.node_regions[i] == from) {
        let s = peer(cluster, i)
            .await
            .replication_status(pb::ReplicationStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let d = s.destinations.iter().find(|d| d.destination == to).unwrap();
        worst = worst.max(d.oldest_unacked_ms);
    }
    worst
}

/// What node `i` answers for the three test keys, read at ALL through the node (its region's
/// view).
async fn snapshot(cluster: &TestCluster, i: usize) -> Option<(Option<Vec<u8>>, i64, BTreeSet<Vec<u8>>)> {
    let c = cluster.client(i).await.with_consistency(proto::Consistency::All);
    let reg = match c.get(b"reg").await.ok()?.and_then(|e| e.value).and_then(|v| v.kind) {
        Some(Kind::Register(b)) => Some(b),
        _ => None,
    };
    let counter = match c.get(b"ctr").await.ok()?.and_then(|e| e.value).and_then(|v| v.kind) {
        Some(Kind::Counter(n)) => n,
        _ => 0,
    };
    let set = c.set_members(b"set").await.ok()?.members.into_iter().collect();
    Some((reg, counter, set))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_in_three_regions_converge_through_cuts_and_heals() {
    converge_through_cuts_and_heals(TestCluster::start_regions(&THREE_REGIONS, 2, 2)).await;
}

/// The same with TLS on every port and mutual TLS on every link (in a region and between
/// regions): certificates from a CA made for the test, the test's clients presenting a client
/// certificate and its link changes made as a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_on_every_link_three_regions_converge_through_cuts_and_heals() {
    converge_through_cuts_and_heals(TestCluster::start_regions_tls(&THREE_REGIONS, 2, 2, "", None)).await;
}

async fn converge_through_cuts_and_heals(cluster: TestCluster) {
    let regions: Vec<&str> = THREE_REGIONS.iter().map(|r| r.0).collect();
    let mut increments = 0i64;
    let mut added = BTreeSet::new();
    // The register write with the highest HLC stamp (stamp, value).
    let mut latest_register: Option<((u64, u64), Vec<u8>)> = None;
    for round in 0..3 {
        // Cut eu-west off from the others in both directions.
        for other in ["us-east", "ap-southeast"] {
            set_cut(&cluster, "eu-west", other, true).await;
            set_cut(&cluster, other, "eu-west", true).await;
        }
        for i in 0..cluster.nodes.len() {
            let c = quorum(cluster.client(i).await);
            for j in 0..5 {
                c.increment(b"ctr", 1 + i as i64, None).await.unwrap();
                increments += 1 + i as i64;
                let member = format!("m-{round}-{i}-{j}").into_bytes();
                c.set_add(b"set", vec![member.clone()], None).await.unwrap();
                added.insert(member);
                let v = format!("v-{round}-{i}-{j}").into_bytes();
                let version = c.put(b"reg", &v, None).await.unwrap().version.unwrap();
                let stamp = (version.hlc, version.node_id);
                if latest_register.as_ref().is_none_or(|(s, _)| stamp > *s) {
                    latest_register = Some((stamp, v));
                }
            }
        }
        let grows = wait_until(Duration::from_secs(10), || async {
            lag_ms(&cluster, "eu-west", "us-east").await >= 300
        })
        .await;
        assert!(grows, "the lag from a cut-off region grows");
        for other in ["us-east", "ap-southeast"] {
            set_cut(&cluster, "eu-west", other, false).await;
            set_cut(&cluster, other, "eu-west", false).await;
        }
    }
    // After heal and quiescence every node of every region answers the same.
    let converged = wait_until(Duration::from_secs(60), || async {
        let mut seen = Vec::new();
        for i in 0..cluster.nodes.len() {
            match snapshot(&cluster, i).await {
                Some(s) => seen.push(s),
                None => return false,
            }
        }
        seen.windows(2).all(|w| w[0] == w[1]) && seen[0].1 == increments && seen[0].2 == added
    })
    .await;
    let mut finals = Vec::new();
    for i in 0..cluster.nodes.len() {
        finals.push(snapshot(&cluster, i).await);
    }
    assert!(
        converged,
        "expected counter {increments} and {} members everywhere; got {finals:?}",
        added.len()
    );
    // The register holds the HLC-latest acknowledged write, everywhere.
    let reg = finals[0].as_ref().unwrap().0.clone().unwrap();
    assert_eq!(Some(reg), latest_register.map(|(_, v)| v), "the register is the HLC-latest write");
    for from in &regions {
        for to in regions.iter().filter(|r| *r != from) {
            let drained =
                wait_until(Duration::from_secs(30), || async { lag_ms(&cluster, from, to).await == 0 }).await;
            assert!(drained, "lag {from} -> {to} drains after heal");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_in_its_region_reaches_the_others_when_a_node_dies_right_after() {
    let mut cluster = TestCluster::start_regions(&THREE_REGIONS[..2], 2, 2);
    // Hold replication back so that nothing has shipped when the node dies.
    for i in 0..2 {
        let mut c = peer(&cluster, i).await;
        c.set_link(pb::SetLinkRequest {
            destination: "us-east".into(),
            link: Some(pb::LinkSettings { delay_ms: 0, jitter_ms: 0, loss: 0.0, cut: true }),
        })
        .await
        .unwrap();
    }
    let c = quorum(cluster.client(0).await);
    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{i:04}").into_bytes()).collect();
    for k in &keys {
        c.put(k, k, None).await.unwrap();
    }
    // Node 1 (a replica of every key, and their coordinator) dies; node 2 ships.
    cluster.nodes[0].kill9();
    // Through the CLI, as an operator would.
    let out = std::process::Command::new(support::BIN)
        .args(["--json", "admin", "link", "--peer", &cluster.peer_addrs[1].to_string(), "--to", "us-east"])
        .args(["--cut", "false", "--delay-ms", "5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((link["cut"].as_bool(), link["delay_ms"].as_u64()), (Some(false), Some(5)));
    let us = cluster.client(2).await.with_consistency(proto::Consistency::One);
    let arrived = wait_until(Duration::from_secs(60), || async {
        for k in &keys {
            match us.get(k).await {
                Ok(Some(_)) => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    assert!(arrived, "every acknowledged write reached us-east");
    let caught_up = wait_until(Duration::from_secs(30), || async {
        let out = std::process::Command::new(support::BIN)
            .args(["--json", "admin", "repl-status", "--peer", &cluster.peer_addrs[1].to_string()])
            .output()
            .unwrap();
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        s["destinations"][0]["destination"] == "us-east" && s["destinations"][0]["lag_ms"] == 0
    })
    .await;
    assert!(caught_up, "geokv admin repl-status shows the destination caught up");
    let out = std::process::Command::new(support::BIN)
        .args([
            "admin",
            "link",
            "--peer",
            &cluster.peer_addrs[1].to_string(),
            "--to",
            "mars",
            "--cut",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not to \"mars\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_demo_runs_its_whole_tour_across_three_regions() {
    let mut child = std::process::Command::new(support::BIN)
        .arg("demo")
        // The demo's own default: the nodes' logs stay out of the tour.
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("geokv demo did not finish within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        !stderr.contains(" INFO ") && !stderr.contains(" WARN ") && !stdout.contains(" INFO "),
        "the nodes' logs interleave with the tour without --logs:\n{stderr}"
    );
    for expected in [
        "visible in us-east",
        "visible in ap-southeast",
        "converged in",
        "ap-southeast cut off",
        "lag ms",
        "a plaintext client is refused: Unauthenticated",
        "the viewer's put is refused: PermissionDenied",
    ] {
        assert!(stdout.contains(expected), "demo output lacks {expected:?}:\n{stdout}");
    }
    // Residency: the EU-only key's copies are all in eu-west; the us-east-only key is refused.
    let copies = stdout.lines().find(|l| l.contains("copies on:")).unwrap_or_default();
    assert!(
        copies.contains("(eu-west)") && !copies.contains("us-east)") && !copies.contains("ap-southeast)"),
        "{copies}"
    );
    assert!(stdout.contains("us:phi:bob written through eu-west is refused: FailedPrecondition"), "{stdout}");
    // The converged counter is the sum of every increment: 1 + 2 + 3 + 100 + 10.
    assert!(stdout.contains("116"), "converged counter 116 expected:\n{stdout}");
}

/// The register as node `i` reads it at ONE.
async fn register_at(cluster: &TestCluster, i: usize, key: &[u8]) -> Option<Vec<u8>> {
    let c = cluster.client(i).await.with_consistency(proto::Consistency::One);
    match c.get(key).await.ok()?.and_then(|e| e.value).and_then(|v| v.kind) {
        Some(Kind::Register(b)) => Some(b),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_with_a_fast_clock_does_not_win_over_causally_later_writes_and_too_fast_is_refused() {
    // eu-west runs 500 ms ahead (accepted: the drift limit is 1 s); ap-southeast 5 s ahead.
    let cluster = TestCluster::start_regions_with(
        &THREE_REGIONS,
        1,
        1,
        &[
            ("*", "max_clock_drift_ms = 1000"),
            ("eu-west", "clock_offset_ms = 500"),
            ("ap-southeast", "clock_offset_ms = 5000"),
        ],
    );
    let (eu, us, ap) = (0, 1, 2);
    cluster.client(eu).await.put(b"reg", b"first, in eu", None).await.unwrap();
    let seen = wait_until(Duration::from_secs(20), || async {
        register_at(&cluster, us, b"reg").await.as_deref() == Some(b"first, in eu")
    })
    .await;
    assert!(seen, "us-east sees the eu write");
    // us-east writes after reading eu's value: causally later, though its wall clock is
    // 500 ms behind eu's. The HLC orders it after, so it wins everywhere.
    cluster.client(us).await.put(b"reg", b"second, in us", None).await.unwrap();
    let settled = wait_until(Duration::from_secs(20), || async {
        register_at(&cluster, eu, b"reg").await.as_deref() == Some(b"second, in us")
            && register_at(&cluster, us, b"reg").await.as_deref() == Some(b"second, in us")
    })
    .await;
    assert!(settled, "the causally later write wins in both regions");

    // ap-southeast's stamps are beyond the drift limit: refused and counted, never applied.
    cluster.client(ap).await.put(b"from-ap", b"too early", None).await.unwrap();
    let refused = wait_until(Duration::from_secs(20), || async {
        let mut c = peer(&cluster, us).await;
        let s = c.replication_status(pb::ReplicationStatusRequest {}).await.unwrap().into_inner();
        s.drift_rejections > 0
    })
    .await;
    assert!(refused, "us-east counts drift rejections");
    assert_eq!(register_at(&cluster, us, b"from-ap").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_and_receiver_restarts_mid_stream_lose_nothing_and_do_not_stall() {
    let mut cluster = TestCluster::start_regions(&THREE_REGIONS[..2], 1, 1);
    let (eu, us) = (0, 1);
    let mut acked = Vec::new();
    for round in 0..4 {
        let c = cluster.client(eu).await;
        for i in 0..250 {
            let k = format!("r{round}-k{i:03}").into_bytes();
            if c.put(&k, &k, None).await.is_ok() {
                acked.push(k);
            }
        }
        // Alternately kill the sender and the receiver while batches are in flight.
        let victim = if round % 2 == 0 { eu } else { us };
        cluster.nodes[victim].restart();
    }
    let us_client = cluster.client(us).await.with_consistency(proto::Consistency::One);
    let all_there = wait_until(Duration::from_secs(60), || async {
        let mut found = 0;
        for chunk in acked.chunks(500) {
            match us_client.batch_get(chunk.to_vec()).await {
                Ok(r) => found += r.iter().filter(|e| e.is_some()).count(),
                Err(_) => return false,
            }
        }
        found == acked.len()
    })
    .await;
    assert!(all_there, "all {} acknowledged writes reached us-east", acked.len());
    assert_eq!(lag_ms(&cluster, "eu-west", "us-east").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_region_anti_entropy_repairs_what_the_log_never_shipped() {
    let cluster = TestCluster::start_regions(&THREE_REGIONS[..2], 1, 1);
    let (eu, us) = (0, 1);
    // A change the change log does not ship (as a repair would be): merged straight into eu's
    // replica, unmarked.
    let client = cluster.client(eu).await;
    client.put(b"template", b"x", None).await.unwrap();
    let mut eu_peer = peer(&cluster, eu).await;
    let state = eu_peer
        .fetch(pb::FetchRequest { key: b"template".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .state;
    for i in 0..50 {
        let key = format!("unshipped-{i}").into_bytes();
        eu_peer
            .merge(pb::MergeRequest { key, state: state.clone(), hint_for: None, ship: false })
            .await
            .unwrap();
    }
    // Replication catches up on everything it was given, and still us-east lacks those keys.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            register_at(&cluster, us, b"template").await.is_some()
        })
        .await
    );
    assert!(
        wait_until(Duration::from_secs(30), || async { lag_ms(&cluster, "eu-west", "us-east").await == 0 })
            .await
    );
    assert_eq!(register_at(&cluster, us, b"unshipped-0").await, None);
    // One anti-entropy round from eu-west compares with us-east and repairs exactly them.
    let stats = eu_peer.run_anti_entropy(pb::RunAntiEntropyRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.ae_keys_repaired, 50, "{stats:?}");
    for i in 0..50 {
        let key = format!("unshipped-{i}").into_bytes();
        assert_eq!(register_at(&cluster, us, &key).await.as_deref(), Some(&b"x"[..]));
    }
}

/// The shipping figures of each node of `region` toward `to`: (deltas sent by both tails,
/// keys the takeover tail found covered, keys it shipped, whether both tails acknowledged
/// everything committed).
async fn shipping_figures(cluster: &TestCluster, region: &str, to: &str) -> Vec<(u64, u64, u64, bool)> {
    let mut out = Vec::new();
    for i in (0..cluster.nodes.len()).filter(|&i| cluster.node_regions[i] == region) {
        let Ok(mut c) = cluster.peer_client(i).await else { continue };
        let Ok(s) = c.replication_status(pb::ReplicationStatusRequest {}).await else { continue };
        let d = s.into_inner().destinations.into_iter().find(|d| d.destination == to).unwrap();
        let caught_up = d.acked_seq >= d.committed_seq && d.takeover_acked_seq >= d.committed_seq;
        out.push((d.deltas_sent, d.takeover_covered, d.takeover_shipped, caught_up));
    }
    out
}

/// One shipper per key: with every link up, a region of three replicas ships about one delta
/// per write (the other two replicas find each state delivered by its shipper); with one
/// replica's link cut while it stays up (so it remains the shipper of its keys but cannot
/// deliver), the other replicas ship those keys themselves after the grace, and every write
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_is_shipped_once_and_a_shipper_that_cannot_deliver_is_taken_over() {
    let cluster =
        TestCluster::start_regions_with_extra(&THREE_REGIONS[..2], 3, 3, "takeover_grace_ms = 1000\n", None);
    let eu = quorum(cluster.client(1).await);
    let us = cluster.client(3).await.with_consistency(proto::Consistency::One);
    let arrived = |keys: Vec<Vec<u8>>| {
        let us = us.clone();
        async move {
            // Well within cross-region anti-entropy's first round (60 s), which would repair
            // what replication left out.
            wait_until(Duration::from_secs(30), || async {
                for k in &keys {
                    if !matches!(us.get(k).await, Ok(Some(_))) {
                        return false;
                    }
                }
                true
            })
            .await
        }
    };
    let settled = || async {
        wait_until(Duration::from_secs(30), || async {
            let f = shipping_figures(&cluster, "eu-west", "us-east").await;
            f.len() == 3 && f.iter().all(|n| n.3)
        })
        .await
    };
    // All links up: 200 writes, about 200 deltas.
    let first: Vec<Vec<u8>> = (0..200).map(|i| format!("once-{i:03}").into_bytes()).collect();
    for k in &first {
        eu.put(k, k, None).await.unwrap();
    }
    assert!(arrived(first.clone()).await, "every write reached us-east");
    assert!(settled().await, "both tails of every eu-west node caught up");
    let f = shipping_figures(&cluster, "eu-west", "us-east").await;
    let shipped: u64 = f.iter().map(|n| n.0).sum();
    let covered: u64 = f.iter().map(|n| n.1).sum();
    // Every replica shipping would be 600; a few duplicates when a check beats its shipper's
    // acknowledgement on a loaded machine are fine.
    assert!((200..=300).contains(&shipped), "deltas shipped for 200 writes: {shipped} ({f:?})");
    assert!(covered >= 400, "the other replicas found the states delivered: {covered} ({f:?})");

    // Node 0's link cut, node 0 up: its keys must come from nodes 1 and 2.
    let mut p0 = peer(&cluster, 0).await;
    let status = p0.replication_status(pb::ReplicationStatusRequest {}).await.unwrap().into_inner();
    let mut link = status.destinations[0].link.unwrap();
    link.cut = true;
    p0.set_link(pb::SetLinkRequest { destination: "us-east".into(), link: Some(link) }).await.unwrap();
    let before: u64 = f.iter().map(|n| n.2).sum();
    let second: Vec<Vec<u8>> = (0..200).map(|i| format!("taken-{i:03}").into_bytes()).collect();
    for k in &second {
        eu.put(k, k, None).await.unwrap();
    }
    assert!(arrived(second).await, "every write reached us-east though one shipper could not deliver");
    let f = shipping_figures(&cluster, "eu-west", "us-east").await;
    let taken_over: u64 = f.iter().map(|n| n.2).sum::<u64>() - before;
    assert!(taken_over >= 20, "nodes 1 and 2 shipped node 0's keys themselves: {taken_over} ({f:?})");
}
