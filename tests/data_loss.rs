//! Acknowledged writes on paths beyond Put, Increment and SetAdd, against real `geokv`
//! processes: each test is one way the store used to lose (or wrongly overwrite) a write it
//! had acknowledged, run as a client would, and named for the property it protects.

mod support;

use std::time::Duration;

use geokv_client::{proto, Client};
use geokv_proto::v1 as pb;
use support::{scrape_raw, wait_until, TestCluster};

fn quorum(c: Client) -> Client {
    c.with_consistency(proto::Consistency::Quorum)
}

fn all(c: Client) -> Client {
    c.with_consistency(proto::Consistency::All)
}

fn unreachable(nodes: &[u64]) -> pb::InjectFaultsRequest {
    pb::InjectFaultsRequest { unreachable: nodes.to_vec(), ..Default::default() }
}

/// Waits until a QUORUM put of an unrelated key through `client` is acknowledged (gossip has
/// settled on who is reachable), so that the one write the test is about is sent once.
async fn until_writable(client: &Client, probe: &[u8]) {
    let ok =
        wait_until(Duration::from_secs(30), || async { client.put(probe, b"p", None).await.is_ok() }).await;
    assert!(ok, "the region never acknowledged a QUORUM write of {:?}", String::from_utf8_lossy(probe));
}

/// Runs a write that must not be applied twice, again only while it fails with a message
/// that says nothing was written (its coordinator could not read the key first: a replica was
/// briefly unreachable on a loaded machine), for up to 20 s.
async fn unless_unwritten<T, F, Fut>(write: F) -> Result<T, geokv_client::ClientError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, geokv_client::ClientError>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match write().await {
            Err(e)
                if e.to_string().contains("nothing was written") && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Nodes 1 and 2 cannot reach node 3: a write through node 1 is acknowledged by 1 and 2 and
/// kept as a hint for 3 (handed off only after the test). Returns the cluster with the faults
/// cleared again, and node 3 still lacking the write.
async fn region_where_node_3_missed(write: impl AsyncFnOnce(&Client)) -> TestCluster {
    let cluster = TestCluster::start_region_without_repair(3, 3);
    cluster.inject_faults(0, unreachable(&[3])).await.expect("faults on node 1");
    cluster.inject_faults(1, unreachable(&[3])).await.expect("faults on node 2");
    let one = quorum(cluster.client(0).await);
    until_writable(&one, b"probe-1").await;
    write(&one).await;
    cluster.inject_faults(0, unreachable(&[])).await.expect("faults cleared on node 1");
    cluster.inject_faults(1, unreachable(&[])).await.expect("faults cleared on node 2");
    // Node 3 serves QUORUM writes again (through a key of its own, not the one under test:
    // reading that would repair node 3 and hide what the test is about).
    until_writable(&all(cluster.client(2).await), b"probe-3").await;
    let stale = cluster.replica_states(2, &[b"log", b"reg"]).await.expect("node 3 answers");
    assert!(stale.iter().all(Option::is_none), "node 3 must not have the write yet: {stale:?}");
    cluster
}

async fn register_at_all(cluster: &TestCluster, key: &[u8]) -> Option<Vec<u8>> {
    let c = all(cluster.client(0).await);
    let value = std::cell::RefCell::new(None);
    let read = wait_until(Duration::from_secs(20), || async {
        match register(&c, key).await {
            Ok(v) => {
                *value.borrow_mut() = v;
                true
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(read, "the key reads at ALL");
    value.into_inner()
}

/// Scenario 1 of the data-loss issue: two sequential appends through different coordinators,
/// the second through a replica that missed the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_through_a_replica_that_missed_the_previous_append_keeps_it() {
    let cluster = region_where_node_3_missed(async |one| {
        one.append(b"log", b"a", None).await.expect("append a at QUORUM through node 1");
    })
    .await;
    let three = quorum(cluster.client(2).await);
    let b = unless_unwritten(|| three.append(b"log", b"b", None))
        .await
        .expect("append b at QUORUM through node 3");
    assert_eq!(b.length, 2, "the append reports the length of \"ab\"");
    assert_eq!(register_at_all(&cluster, b"log").await.as_deref(), Some(&b"ab"[..]));
}

/// Scenario 2: a set operation on a register, through a replica that has not seen the
/// register, is refused (wrong type) and leaves the register as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_type_write_through_a_replica_that_missed_the_key_is_refused_and_changes_nothing() {
    let cluster = region_where_node_3_missed(async |one| {
        one.put(b"reg", b"keep-me", None).await.expect("put at QUORUM through node 1");
    })
    .await;
    let three = quorum(cluster.client(2).await);
    let err = three.set_remove(b"reg", vec![b"x".to_vec()]).await.expect_err("a set op on a register");
    assert_eq!(err.code(), Some(geokv_client::Code::FailedPrecondition), "{err}");
    let err = three.increment(b"reg", 1, None).await.expect_err("a counter op on a register");
    assert_eq!(err.code(), Some(geokv_client::Code::FailedPrecondition), "{err}");
    // The reason the region's coordinator gave, in a region of three.
    assert_eq!(err.reason(), Some("WRONG_TYPE"), "{err}");
    assert_eq!(register_at_all(&cluster, b"reg").await.as_deref(), Some(&b"keep-me"[..]));
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The register value of `key` read through `client` at its level; `Err` if the read fails.
async fn register(client: &Client, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let entry = client.get(key).await.map_err(|e| e.to_string())?;
    Ok(entry.and_then(|e| match e.value?.kind? {
        proto::value::Kind::Register(b) => Some(b),
        _ => None,
    }))
}

/// Scenario 8: a node whose clock runs an hour ahead stamps its writes an hour ahead; its
/// peers must not store those stamps (they would win every last-writer-wins race), and reads
/// and writes through the other nodes go on without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_runs_ahead_cannot_make_its_peers_store_its_stamps() {
    let cluster = TestCluster::start_region_without_repair(3, 3);
    let two = quorum(cluster.client(1).await);
    until_writable(&two, b"probe-2").await;
    let ahead = pb::InjectFaultsRequest { clock_offset_ms: 3_600_000, ..Default::default() };
    cluster.inject_faults(0, ahead).await.expect("clock offset on node 1");
    let one = quorum(cluster.client(0).await);
    let err = one.put(b"clock", b"from-the-future", None).await.expect_err("the peers refuse the stamps");
    assert_eq!(err.code(), Some(geokv_client::Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("max_clock_drift_ms"), "{err}");
    for i in [0, 1, 2] {
        let states = cluster.replica_states(i, &[b"clock"]).await.expect("node answers");
        assert_eq!(states, vec![None], "node {} stored a state stamped an hour ahead", i + 1);
    }
    cluster.inject_faults(0, pb::InjectFaultsRequest::default()).await.expect("offset cleared");
    let put =
        wait_until(Duration::from_secs(20), || async { two.put(b"clock", b"now", None).await.is_ok() }).await;
    assert!(put, "a write through a node with a sane clock");
    for i in [0, 1, 2] {
        let c = quorum(cluster.client(i).await);
        let last = std::cell::RefCell::new(Err(String::new()));
        let read = wait_until(Duration::from_secs(20), || async {
            let r = register(&c, b"clock").await;
            let ok = r.is_ok();
            *last.borrow_mut() = r;
            ok
        })
        .await;
        let last = last.into_inner();
        assert!(read, "a QUORUM read through node {} answers: {last:?}", i + 1);
        assert_eq!(last.unwrap().as_deref(), Some(&b"now"[..]), "read through node {}", i + 1);
    }
}

/// Scenario 9: a node that is not a home replica of a key may still hold a copy (a move
/// leaves one until `cleanup`). A Scan must not list it when a Get says the key is absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_lists_only_what_the_keys_home_replicas_hold() {
    let cluster = TestCluster::start_region_without_repair(3, 2);
    let topology =
        geokv_topology::Topology::load(&cluster.dir.path().join("topology.toml")).expect("topology");
    let leftover = (0..)
        .map(|i| format!("left:{i}").into_bytes())
        .find(|k| !topology.ring("eu-west").preference_list(k, 2).contains(&1))
        .expect("some key is not on node 1");
    let c = all(cluster.client(0).await);
    until_writable(&c, b"left:control").await;
    // The copy on node 1, as a move would leave it.
    let now = now_ms();
    let put = geokv_core::Op::Put { value: b"stale".to_vec(), ttl_ms: None };
    let stamp = geokv_core::Stamp::new(geokv_core::Stamp::ntp_from_millis(now), 1);
    let rec = geokv_core::apply(None, &put, stamp, now, &geokv_core::Limits::default()).unwrap().record;
    let mut peer = pb::cluster_client::ClusterClient::connect(format!("http://{}", cluster.peer_addrs[0]))
        .await
        .expect("peer port");
    let state = geokv_storage::codec::encode(&rec, 1024, 1);
    peer.merge(pb::MergeRequest { key: leftover.clone(), state, hint_for: None, ship: false })
        .await
        .expect("node 1 keeps the copy");
    assert_eq!(register(&c, &leftover).await, Ok(None), "a Get at ALL finds no key");
    for i in 0..3 {
        let scan = all(cluster.client(i).await);
        let opts = geokv_client::ScanOptions { prefix: b"left:".to_vec(), ..Default::default() };
        let keys: Vec<Vec<u8>> =
            scan.scan_all(&opts).await.expect("scan").into_iter().map(|e| e.key).collect();
        assert_eq!(keys, vec![b"left:control".to_vec()], "scan through node {}", i + 1);
    }
}

/// Scenario 11: hot-key tracking counts only keys that passed validation and that the
/// node's region may hold, so `/metrics` never exports a key name the residency policy keeps
/// out of the region; and a refusal does not echo a huge key back in its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_key_metrics_never_show_keys_the_region_may_not_hold_or_invalid_keys() {
    let policy = "[[rules]]\nname = \"default\"\nprefix = \"\"\neverywhere = true\n\n\
                  [[rules]]\nname = \"secret\"\nprefix = \"secret:\"\nregions = [\"us-east\"]\non_foreign = \"reject\"\n";
    let cluster = TestCluster::start_regions_with_extra(&support::THREE_REGIONS[..2], 1, 1, "", Some(policy));
    let eu = cluster.client(0).await;
    until_writable(&eu, b"visible").await;
    let huge_secret = [b"secret:".as_slice(), &[b'y'; 20_000]].concat();
    let oversized = vec![b'z'; 5_000];
    for _ in 0..100 {
        let err = eu.get(b"secret:card-number").await.expect_err("refused in eu-west");
        assert_eq!(err.code(), Some(geokv_client::Code::FailedPrecondition), "{err}");
        let err = eu.get(&oversized).await.expect_err("a key over max_key_bytes");
        assert_eq!(err.code(), Some(geokv_client::Code::InvalidArgument), "{err}");
        eu.get(b"visible").await.expect("an allowed key");
    }
    let err = eu.get(&huge_secret).await.expect_err("refused");
    assert!(
        err.to_string().len() < 1_000,
        "the refusal echoes the whole key: {} bytes",
        err.to_string().len()
    );
    let metrics = cluster.nodes[0].metrics_addr.expect("metrics served");
    // The allowed key surfaces once its 10 s window closes: then the others would have too.
    let text = std::cell::RefCell::new(String::new());
    let shown = wait_until(Duration::from_secs(40), || async {
        let t = scrape_raw(metrics).await;
        let found = t.contains("geokv_hot_key_requests_per_second{key=\"visible\"}");
        *text.borrow_mut() = t;
        found
    })
    .await;
    let text = text.into_inner();
    assert!(shown, "the allowed hot key is exported:\n{text}");
    let hot: Vec<&str> =
        text.lines().filter(|l| l.starts_with("geokv_hot_key_requests_per_second{")).collect();
    assert!(!hot.iter().any(|l| l.contains("secret:")), "a key eu-west may not hold is exported: {hot:?}");
    assert!(!hot.iter().any(|l| l.contains("zzzz")), "an invalid key is exported: {hot:?}");
}

/// Scenario 10: two sets, each within `max_record_bytes`, written in two regions while the
/// link is cut, whose merge is over the limit. The merge is kept (counted), the regions
/// converge, replication goes on, and writes that would grow the set further are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_over_the_record_limit_neither_stalls_replication_nor_leaves_regions_apart() {
    let extra = "[limits]\nmax_value_bytes = 1024\nmax_record_bytes = 5120\n";
    let cluster = TestCluster::start_regions_with_extra(&support::THREE_REGIONS[..2], 1, 1, extra, None);
    let (eu, us) = (cluster.client(0).await, cluster.client(1).await);
    until_writable(&eu, b"probe-eu").await;
    until_writable(&us, b"probe-us").await;
    set_cut(&cluster, 0, "us-east", true).await;
    set_cut(&cluster, 1, "eu-west", true).await;
    let members = |tag: u8| -> Vec<Vec<u8>> {
        (0..4u8).map(|i| [vec![tag, b'0' + i], vec![b'.'; 998]].concat()).collect()
    };
    eu.set_add(b"big", members(b'a'), None).await.expect("4 KB set in eu-west");
    us.set_add(b"big", members(b'b'), None).await.expect("4 KB set in us-east");
    set_cut(&cluster, 0, "us-east", false).await;
    set_cut(&cluster, 1, "eu-west", false).await;
    eu.put(b"after-eu", b"1", None).await.expect("put");
    us.put(b"after-us", b"1", None).await.expect("put");
    for (c, key, region) in [(&us, b"after-eu", "us-east"), (&eu, b"after-us", "eu-west")] {
        let arrived = wait_until(Duration::from_secs(30), || async {
            register(c, key).await.is_ok_and(|v| v.is_some())
        })
        .await;
        assert!(arrived, "replication to {region} stalled behind the oversized merge");
    }
    for (c, region) in [(&eu, "eu-west"), (&us, "us-east")] {
        let merged = wait_until(Duration::from_secs(30), || async {
            c.set_members(b"big").await.is_ok_and(|r| r.members.len() == 8)
        })
        .await;
        assert!(merged, "{region} holds all 8 members");
    }
    let err = eu.set_add(b"big", members(b'c'), None).await.expect_err("growing it further");
    assert_eq!(err.code(), Some(geokv_client::Code::FailedPrecondition), "{err}");
    let removed = eu.set_remove(b"big", members(b'a')).await.expect("shrinking it is taken");
    assert_eq!(removed.size, 4);
}

/// Cuts (or heals) the emulated link from node `i`'s region to region `to`.
async fn set_cut(cluster: &TestCluster, i: usize, to: &str, cut: bool) {
    let mut c = pb::cluster_client::ClusterClient::connect(format!("http://{}", cluster.peer_addrs[i]))
        .await
        .expect("peer port");
    let status = c.replication_status(pb::ReplicationStatusRequest {}).await.expect("status").into_inner();
    let mut link =
        status.destinations.iter().find(|d| d.destination == to).and_then(|d| d.link).unwrap_or_default();
    link.cut = cut;
    c.set_link(pb::SetLinkRequest { destination: to.into(), link: Some(link) }).await.expect("set link");
}

fn counter_of(entry: Option<proto::Entry>) -> Option<i64> {
    match entry?.value?.kind? {
        proto::value::Kind::Counter(v) => Some(v),
        _ => None,
    }
}

/// Reads `key` at ALL through node `i` until the read answers; returns the entry.
async fn read_all(cluster: &TestCluster, i: usize, key: &[u8]) -> Option<proto::Entry> {
    let c = all(cluster.client(i).await);
    let last = std::cell::RefCell::new(None);
    let ok = wait_until(Duration::from_secs(20), || async {
        match c.get(key).await {
            Ok(e) => {
                *last.borrow_mut() = e;
                true
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(ok, "a read at ALL through node {} answers", i + 1);
    last.into_inner()
}

/// Scenario 4: a write acknowledged by nodes 1 and 2 (node 3 missed it); then node 1 loses
/// its data (wiped, restarted under the same id) and node 2 goes down. A QUORUM read through
/// node 3 must not answer "absent" from node 1's empty store and node 3's stale one: a node on
/// a new data directory votes in no read (nor in a write's first read) until it has completed
/// an exchange with every peer, and it cannot without node 2. Once node 2 is back, node 1
/// recovers and the write is read through node 3. (Anti-entropy and handoff are slowed to 10
/// minutes here: only the recovery brings the key back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_votes_in_no_read_until_it_has_recovered_its_keys() {
    let mut cluster = region_where_node_3_missed(async |one| {
        one.put(b"reg", b"acknowledged", None).await.expect("put at QUORUM through node 1");
    })
    .await;
    cluster.nodes[1].kill9();
    cluster.nodes[0].kill9();
    std::fs::remove_dir_all(&cluster.nodes[0].data_dir).expect("wipe node 1");
    cluster.nodes[0].restart();
    let three = quorum(cluster.client(2).await);
    let last = std::cell::RefCell::new(Ok(None));
    // Every read fails (never "absent") until node 3 sees node 1 alive and refusing its vote.
    let refused = wait_until(Duration::from_secs(30), || async {
        let read = register(&three, b"reg").await;
        let recovering = matches!(&read, Err(e) if e.contains("recovering"));
        *last.borrow_mut() = read;
        assert!(last.borrow().is_err(), "a QUORUM read answered {:?} with node 2 down", last.borrow());
        recovering
    })
    .await;
    assert!(refused, "node 1 never said it was recovering: {:?}", last.borrow());
    assert!(!cluster.nodes[0].serving_reads(), "node 1 cannot recover without node 2");
    cluster.nodes[1].restart();
    assert!(
        cluster.nodes[0].wait_serving_reads(Duration::from_secs(60)),
        "node 1 recovered from nodes 2 and 3"
    );
    let node_1 = cluster.replica_states(0, &[b"reg"]).await.expect("node 1 answers");
    assert!(node_1[0].is_some(), "node 1 holds the key again");
    let read = wait_until(Duration::from_secs(30), || async {
        register(&three, b"reg").await.is_ok_and(|v| v.as_deref() == Some(&b"acknowledged"[..]))
    })
    .await;
    assert!(read, "the acknowledged write reads at QUORUM through node 3");
}

/// Scenario 5: a counter and a set expire; nodes 1 and 2 purge them; a new lifetime starts;
/// then node 3, whose sweeper was behind, sends its copy of the expired states (as its read
/// repair or anti-entropy would). The new lifetime must not take the old counts or members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_counters_and_sets_do_not_come_back_into_a_new_lifetime() {
    // Purged 10 s after the deadline; the marker stays 10 s more (the window for the test's
    // new lifetime, which comes right after the purge).
    let more = "storage.tombstone_grace_secs = 10\n[sweeper]\ninterval_ms = 100\n";
    let cluster = TestCluster::start_region_without_repair_and(3, 3, more);
    let one = all(cluster.client(0).await);
    until_writable(&one, b"probe-1").await;
    let ttl = Some(Duration::from_secs(1));
    one.increment(b"visits", 100, ttl).await.expect("counter at ALL");
    one.set_add(b"members", vec![b"old".to_vec()], ttl).await.expect("set at ALL");
    let stale = cluster.replica_states(2, &[b"visits", b"members"]).await.expect("node 3's copies");
    assert!(stale.iter().all(Option::is_some));
    // Nodes 1 and 2 purge the expired keys (a grace period after the deadline).
    for i in [0, 1] {
        let purged = wait_until(Duration::from_secs(30), || async {
            let s = cluster.replica_states(i, &[b"visits", b"members"]).await.unwrap_or_default();
            s.len() == 2
                && s.iter().all(|r| r.as_ref().is_none_or(|r| r.counter_value() == 0 && r.set.is_empty()))
        })
        .await;
        assert!(purged, "node {} purged the expired keys", i + 1);
    }
    let two = quorum(cluster.client(1).await);
    assert_eq!(two.increment(b"visits", 1, None).await.expect("a new lifetime").value, 1);
    two.set_add(b"members", vec![b"new".to_vec()], None).await.expect("a new lifetime");
    // Node 3's stale copies reach nodes 1 and 2.
    for i in [0, 1] {
        let mut peer =
            pb::cluster_client::ClusterClient::connect(format!("http://{}", cluster.peer_addrs[i]))
                .await
                .expect("peer port");
        for (key, rec) in [(&b"visits"[..], &stale[0]), (&b"members"[..], &stale[1])] {
            let state = geokv_storage::codec::encode(rec.as_ref().unwrap(), 1024, 1);
            peer.merge(pb::MergeRequest { key: key.to_vec(), state, hint_for: None, ship: false })
                .await
                .expect("merge");
        }
    }
    let c = quorum(cluster.client(0).await);
    assert_eq!(counter_of(c.get(b"visits").await.expect("read")), Some(1), "the expired 100 came back");
    let members = c.set_members(b"members").await.expect("read").members;
    assert_eq!(members, vec![b"new".to_vec()], "an expired member came back");
}

/// Scenario 6: an increment made on a replica cut off from the others, and a delete made on
/// the others afterwards (a newer stamp) that did not see it. The increment survives the
/// delete, as documented, and every read and the next write agree on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_increment_a_delete_did_not_see_survives_it_on_every_path() {
    let cluster = TestCluster::start_region_without_repair(3, 3);
    let one = all(cluster.client(0).await);
    until_writable(&one, b"probe-1").await;
    one.increment(b"hits", 10, None).await.expect("increment at ALL");
    cluster.inject_faults(0, unreachable(&[3])).await.expect("faults on node 1");
    cluster.inject_faults(1, unreachable(&[3])).await.expect("faults on node 2");
    cluster.inject_faults(2, unreachable(&[1, 2])).await.expect("faults on node 3");
    let three = cluster.client(2).await.with_consistency(proto::Consistency::One);
    assert_eq!(three.increment(b"hits", 3, None).await.expect("increment at ONE on node 3").value, 13);
    let q = quorum(cluster.client(0).await);
    until_writable(&q, b"probe-q").await;
    let deleted = wait_until(Duration::from_secs(20), || async { q.delete(b"hits").await.is_ok() }).await;
    assert!(deleted, "delete at QUORUM through node 1");
    for i in 0..3 {
        cluster.inject_faults(i, unreachable(&[])).await.expect("faults cleared");
    }
    for i in 0..3 {
        assert_eq!(
            counter_of(read_all(&cluster, i, b"hits").await),
            Some(3),
            "read at ALL through node {}",
            i + 1
        );
    }
    let three = quorum(cluster.client(2).await);
    let next = unless_unwritten(|| three.increment(b"hits", 1, None)).await.expect("next increment");
    assert_eq!(next.value, 4);
    assert_eq!(counter_of(read_all(&cluster, 1, b"hits").await), Some(4));
}
