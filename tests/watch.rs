//! Watch with real `geokv` processes: a watcher in us-east sees every acknowledged write
//! made in eu-west and ap-southeast, each key's versions in order, and resumes from its
//! revision on another node without gaps or duplicates; a watch goes on through another node
//! when its node is killed; a revision whose changes were trimmed is refused; bad revisions
//! and prefixes are refused with INVALID_ARGUMENT.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use geokv_client::{proto, Client, Failover, Security, Watcher};
use prost::Message as _;
use proto::value::Kind;
use support::{wait_until, ServerProcess, TestCluster, THREE_REGIONS};
use tokio::time::Instant;

/// (key, version) of an event: the same pair twice is a duplicate.
type Seen = BTreeSet<(Vec<u8>, (u64, u64))>;

/// What a watcher collected: every event in order, and per key the versions in order.
#[derive(Default)]
struct Collected {
    events: Vec<proto::WatchEvent>,
    revision: Vec<u8>,
    /// After each response: how many events had come, and the revision.
    marks: Vec<(usize, Vec<u8>)>,
}

impl Collected {
    fn take(&mut self, r: proto::WatchResponse) {
        self.events.extend(r.events);
        if !r.revision.is_empty() {
            self.revision = r.revision;
            self.marks.push((self.events.len(), self.revision.clone()));
        }
    }

    /// Every key's last register value seen.
    fn last_values(&self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        for e in &self.events {
            let v = match e.value.as_ref().and_then(|v| v.kind.as_ref()) {
                Some(Kind::Register(b)) => Some(b.clone()),
                _ => None,
            };
            out.insert(e.key.clone(), v);
        }
        out
    }

    /// Asserts each key's versions strictly increase (no duplicates, never backwards).
    fn assert_in_version_order(&self, what: &str) {
        let mut last: BTreeMap<&[u8], (u64, u64)> = BTreeMap::new();
        for e in &self.events {
            let v = e.version.as_ref().map(|v| (v.hlc, v.node_id)).expect("every event has a version");
            if let Some(prev) = last.insert(&e.key, v) {
                assert!(
                    v > prev,
                    "{what}: key {:?} went from version {prev:?} to {v:?}",
                    String::from_utf8_lossy(&e.key)
                );
            }
        }
    }

    fn seen(&self) -> Seen {
        self.events.iter().map(|e| (e.key.clone(), version_of(e))).collect()
    }
}

fn version_of(e: &proto::WatchEvent) -> (u64, u64) {
    e.version.as_ref().map(|v| (v.hlc, v.node_id)).expect("every event has a version")
}

/// Reads `watcher` until `done` holds for what it collected or `timeout` passes.
async fn collect_until(
    watcher: &mut Watcher,
    into: &mut Collected,
    timeout: Duration,
    done: impl Fn(&Collected) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while !done(into) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, watcher.next()).await {
            Ok(Ok(Some(r))) => into.take(r),
            Ok(Ok(None)) => return false,
            Ok(Err(e)) => panic!("the watch failed: {e}"),
            Err(_) => return false,
        }
    }
    true
}

/// Reads `watcher` for `responses` more responses (events or progress), so copies still on
/// their way from lagging replicas show up if the watch were to deliver them.
async fn drain(watcher: &mut Watcher, into: &mut Collected, responses: usize) {
    for _ in 0..responses {
        match tokio::time::timeout(Duration::from_secs(10), watcher.next()).await {
            Ok(Ok(Some(r))) => into.take(r),
            other => panic!("the watch stopped answering: {:?}", other.map(|r| r.map(|_| ()))),
        }
    }
}

fn nodes_of(cluster: &TestCluster, region: &str) -> Vec<usize> {
    (0..cluster.nodes.len()).filter(|&i| cluster.node_regions[i] == region).collect()
}

/// Puts `keys` (each with `value`) through node `i` at QUORUM, retrying until acknowledged.
async fn put_all(cluster: &TestCluster, i: usize, keys: &[Vec<u8>], value: &[u8]) {
    let c = cluster.client(i).await.with_consistency(proto::Consistency::Quorum);
    for k in keys {
        let ok = wait_until(Duration::from_secs(30), || async { c.put(k, value, None).await.is_ok() }).await;
        assert!(ok, "put of {:?} acknowledged", String::from_utf8_lossy(k));
    }
}

fn keys(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{prefix}{i:03}").into_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_in_us_east_sees_every_write_of_the_other_regions_in_order_and_resumes_without_gaps_or_duplicates(
) {
    let cluster = TestCluster::start_regions(&THREE_REGIONS, 2, 2);
    let (eu, us, ap) =
        (nodes_of(&cluster, "eu-west"), nodes_of(&cluster, "us-east"), nodes_of(&cluster, "ap-southeast"));

    // Phase 1: a watch on us-east's first node, writes in eu-west and ap-southeast (two
    // values per key, one after the other), and writes outside the prefix.
    let mut watcher = cluster.client(us[0]).await.watch(b"w/", None).await.expect("watch");
    let mut one = Collected::default();
    assert!(collect_until(&mut watcher, &mut one, Duration::from_secs(10), |c| !c.revision.is_empty()).await);
    assert!(one.events.is_empty(), "the first response only says the watch is set up");
    let (eu_keys, ap_keys) = (keys("w/eu/", 30), keys("w/ap/", 30));
    let (eu_writes, ap_writes) = tokio::join!(
        async {
            put_all(&cluster, eu[0], &eu_keys, b"first").await;
            put_all(&cluster, eu[1], &eu_keys, b"second").await;
            put_all(&cluster, eu[0], &keys("other/", 5), b"not watched").await;
        },
        async {
            put_all(&cluster, ap[0], &ap_keys, b"first").await;
            put_all(&cluster, ap[1], &ap_keys, b"second").await;
        }
    );
    let _ = (eu_writes, ap_writes);
    let every: Vec<Vec<u8>> = eu_keys.iter().chain(&ap_keys).cloned().collect();
    let all_second = |c: &Collected| {
        let last = c.last_values();
        every.iter().all(|k| last.get(k) == Some(&Some(b"second".to_vec())))
    };
    assert!(
        collect_until(&mut watcher, &mut one, Duration::from_secs(60), all_second).await,
        "the watch saw every key's last acknowledged value; it has {} events",
        one.events.len()
    );
    // Copies from us-east's other replica and from other shippers come after; give them time
    // to arrive (three more responses), then check.
    drain(&mut watcher, &mut one, 3).await;
    one.assert_in_version_order("phase 1");
    assert!(one.events.iter().all(|e| e.key.starts_with(b"w/")), "only keys under the prefix");
    for e in &one.events {
        let value = match e.value.as_ref().and_then(|v| v.kind.as_ref()) {
            Some(Kind::Register(b)) => b.clone(),
            other => panic!("a register event, not {other:?}"),
        };
        assert!(value == b"first" || value == b"second", "only written values: {value:?}");
    }
    let revision = one.revision.clone();
    drop(watcher);

    // Resumed from revisions taken mid-stream, while copies of delivered changes were still on
    // their way from the other replica (the revision lists them as pending), on the other
    // node: nothing delivered before the revision comes again, and every key's last state
    // delivered after it comes.
    let mid: Vec<(usize, Vec<u8>)> = one
        .marks
        .iter()
        .filter(|(n, rev)| {
            *n > 0
                && *n < one.events.len()
                && !geokv_proto::v1::WatchRevision::decode(rev.as_slice()).unwrap().pending.is_empty()
        })
        .cloned()
        .collect();
    assert!(!mid.is_empty(), "some revisions were taken with copies pending");
    for (n, rev) in mid.iter().step_by((mid.len() / 3).max(1)).take(3) {
        let (before, after) = one.events.split_at(*n);
        let before: Seen = before.iter().map(|e| (e.key.clone(), version_of(e))).collect();
        let mut wanted: BTreeMap<Vec<u8>, (u64, u64)> = BTreeMap::new();
        for e in after {
            wanted.insert(e.key.clone(), version_of(e));
        }
        let mut w = cluster.client(us[1]).await.watch(b"w/", Some(rev.clone())).await.expect("resume");
        let mut again = Collected::default();
        let complete = |c: &Collected| {
            let got: Seen = c.seen();
            wanted.iter().all(|(k, v)| got.contains(&(k.clone(), *v)))
        };
        assert!(
            collect_until(&mut w, &mut again, Duration::from_secs(30), complete).await,
            "resumed after event {n}: every change delivered after it comes again"
        );
        drain(&mut w, &mut again, 2).await;
        let repeated: Vec<_> = again.seen().intersection(&before).cloned().collect();
        assert!(
            repeated.is_empty(),
            "resumed after event {n}: delivered before the revision and again: {repeated:?}"
        );
        again.assert_in_version_order("resumed mid-stream");
    }

    // Phase 2: while nobody watches, new keys, new values and deletes; then a watch resumed
    // from the revision on us-east's other node sees exactly those.
    let new_keys = keys("w/new/", 20);
    put_all(&cluster, eu[1], &new_keys, b"new").await;
    put_all(&cluster, ap[0], &eu_keys[..10], b"third").await;
    let eu_client = cluster.client(eu[0]).await.with_consistency(proto::Consistency::Quorum);
    for k in &ap_keys[..5] {
        assert!(wait_until(Duration::from_secs(30), || async { eu_client.delete(k).await.is_ok() }).await);
    }
    let mut resumed = cluster.client(us[1]).await.watch(b"w/", Some(revision)).await.expect("resume");
    let mut two = Collected::default();
    let done = |c: &Collected| {
        let last = c.last_values();
        new_keys.iter().all(|k| last.get(k) == Some(&Some(b"new".to_vec())))
            && eu_keys[..10].iter().all(|k| last.get(k) == Some(&Some(b"third".to_vec())))
            && ap_keys[..5].iter().all(|k| c.events.iter().any(|e| &e.key == k && e.deleted))
    };
    assert!(
        collect_until(&mut resumed, &mut two, Duration::from_secs(60), done).await,
        "the resumed watch saw every change made after the revision; it has {} events",
        two.events.len()
    );
    drain(&mut resumed, &mut two, 3).await;
    two.assert_in_version_order("phase 2");
    let before = one.seen();
    let again: Vec<_> = two.seen().intersection(&before).cloned().collect();
    assert!(again.is_empty(), "delivered before the revision and again after it: {again:?}");
    let changed: BTreeSet<&[u8]> = two.events.iter().map(|e| e.key.as_slice()).collect();
    let expected: BTreeSet<&[u8]> =
        new_keys.iter().chain(&eu_keys[..10]).chain(&ap_keys[..5]).map(Vec::as_slice).collect();
    assert_eq!(changed, expected, "the resumed watch shows the keys that changed, and only those");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_watch_goes_on_through_another_node_when_its_node_is_killed() {
    let mut cluster = TestCluster::start_region(3, 3, "");
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.endpoint()).collect();
    let watching =
        Failover::connect(&endpoints, &Security::none()).unwrap().with_patience(Duration::from_secs(30));
    let mut watch = watching.watch(b"f/", None);
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "the watch is set up");
    let victim = endpoints.iter().position(|e| e == watch.endpoint()).expect("streams from a node");
    let others: Vec<String> =
        endpoints.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, e)| e.clone()).collect();
    let writer =
        Failover::connect(&others, &Security::none()).unwrap().with_consistency(proto::Consistency::Quorum);

    let all = keys("f/", 200);
    let mut events: Vec<proto::WatchEvent> = Vec::new();
    let mut acked = Vec::new();
    for (n, k) in all.iter().enumerate() {
        if n == 100 {
            cluster.nodes[victim].kill9();
        }
        if writer.put(k, format!("v{n}").as_bytes(), None).await.is_ok() {
            acked.push(k.clone());
        }
        // Read what is there without blocking the writes for long.
        while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_millis(1), watch.next()).await {
            events.extend(r.events);
        }
    }
    assert!(acked.len() >= 190, "most writes acknowledged with one node of three down: {}", acked.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen_all = |events: &[proto::WatchEvent]| {
        let keys: BTreeSet<&Vec<u8>> = events.iter().map(|e| &e.key).collect();
        acked.iter().all(|k| keys.contains(k))
    };
    while !seen_all(&events) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            Ok(Ok(Some(r))) => events.extend(r.events),
            Ok(Ok(None)) => panic!("a failover watch does not end"),
            Ok(Err(e)) => panic!("the watch failed: {e}"),
            Err(_) => {}
        }
    }
    let keys_seen: BTreeSet<&Vec<u8>> = events.iter().map(|e| &e.key).collect();
    let missing: Vec<String> =
        acked.iter().filter(|k| !keys_seen.contains(k)).map(|k| String::from_utf8_lossy(k).into()).collect();
    assert!(missing.is_empty(), "acknowledged writes the watch never showed: {missing:?}");
    assert_ne!(watch.endpoint(), endpoints[victim], "the watch moved to a live node");
    let mut per_key: BTreeMap<&[u8], usize> = BTreeMap::new();
    for e in &events {
        *per_key.entry(&e.key).or_default() += 1;
    }
    let twice: Vec<_> =
        per_key.iter().filter(|(_, n)| **n > 1).map(|(k, _)| String::from_utf8_lossy(k)).collect();
    assert!(twice.is_empty(), "each key was written once and shown once: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_streams_every_kind_of_change_refuses_bad_revisions_and_says_when_one_was_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let node = ServerProcess::start(
        dir.path(),
        "[storage]\nchangelog_retention_entries = 10\n[sweeper]\ninterval_ms = 100\n",
    );
    let c = node.client().await;
    let mut w = c.watch(b"k/", None).await.unwrap();
    let mut got = Collected::default();
    assert!(collect_until(&mut w, &mut got, Duration::from_secs(10), |c| !c.revision.is_empty()).await);
    let start = got.revision.clone();
    // Each change is waited for before the next: a feed shows a key's newest state, so a
    // put deleted before the feed read it would show only as the delete.
    c.put(b"k/reg", b"hello", Some(Duration::from_secs(3600))).await.unwrap();
    assert!(collect_until(&mut w, &mut got, Duration::from_secs(10), |c| !c.events.is_empty()).await);
    c.increment(b"k/ctr", 5, None).await.unwrap();
    assert!(collect_until(&mut w, &mut got, Duration::from_secs(10), |c| c.events.len() >= 2).await);
    c.set_add(b"k/set", vec![b"a".to_vec(), b"b".to_vec()], None).await.unwrap();
    assert!(collect_until(&mut w, &mut got, Duration::from_secs(10), |c| c.events.len() >= 3).await);
    c.put(b"elsewhere", b"x", None).await.unwrap();
    c.delete(b"k/reg").await.unwrap();
    assert!(collect_until(&mut w, &mut got, Duration::from_secs(10), |c| c.events.len() >= 4).await);
    let kinds: Vec<(String, bool, Option<Kind>)> = got
        .events
        .iter()
        .map(|e| (String::from_utf8_lossy(&e.key).into(), e.deleted, e.value.clone().and_then(|v| v.kind)))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("k/reg".into(), false, Some(Kind::Register(b"hello".to_vec()))),
            ("k/ctr".into(), false, Some(Kind::Counter(5))),
            (
                "k/set".into(),
                false,
                Some(Kind::Set(proto::SetValue { members: vec![b"a".to_vec(), b"b".to_vec()] }))
            ),
            ("k/reg".into(), true, None),
        ]
    );
    assert!(got.events[0].ttl_remaining_ms.is_some(), "a TTL shows");

    // Bad input: a revision that is not one, a prefix longer than a key may be.
    let bad = c.watch(b"k/", Some(b"\xff\x01garbage".to_vec())).await;
    let bad = match bad {
        Ok(mut w) => w.next().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(bad.code(), Some(geokv_client::Code::InvalidArgument), "{bad}");
    let other_prefix = match c.watch(b"other/", Some(got.revision.clone())).await {
        Ok(mut w) => w.next().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(
        other_prefix.code(),
        Some(geokv_client::Code::InvalidArgument),
        "another prefix: {other_prefix}"
    );
    let long =
        c.watch(&vec![b'p'; 100_000], None).await.err().expect("a prefix over the key limit is refused");
    assert_eq!(long.code(), Some(geokv_client::Code::InvalidArgument), "{long}");

    // The log keeps 10 entries: after many more writes, the revision from the start is gone.
    for i in 0..50 {
        c.put(format!("k/more{i}").as_bytes(), b"v", None).await.unwrap();
    }
    let trimmed = wait_until(Duration::from_secs(30), || async {
        let Ok(mut w) = c.watch(b"k/", Some(start.clone())).await else { return false };
        match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
            Ok(Err(e)) => {
                assert_eq!(e.code(), Some(geokv_client::Code::OutOfRange), "{e}");
                assert_eq!(e.reason(), Some("REVISION_TRIMMED"), "{e}");
                true
            }
            _ => false,
        }
    })
    .await;
    assert!(trimmed, "a watch from a trimmed revision is told so");
}

/// A revision made in one region is refused in another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_is_refused_in_another_region() {
    let cluster = TestCluster::start_regions(&THREE_REGIONS[..2], 1, 1);
    let mut w = cluster.client(0).await.watch(b"", None).await.unwrap();
    let first = w.next().await.unwrap().unwrap();
    let other: Client = cluster.client(1).await;
    let refused = match other.watch(b"", Some(first.revision)).await {
        Ok(mut w) => w.next().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(refused.code(), Some(geokv_client::Code::InvalidArgument), "{refused}");
    assert!(refused.to_string().contains("region"), "{refused}");
}
