//! Residency with real `geokv` processes: three regions of three nodes (Dublin, Ashburn,
//! Singapore) under a policy that keeps `eu:user:` keys in EU regions. Keys are written
//! through every region; afterwards the data directories of the other regions' nodes are
//! searched, byte by byte, for the keys (SST files, write-ahead logs, change log and hints
//! alike), after a flush and a full compaction. Positive controls make sure the search finds
//! keys where they are meant to be.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use geokv_client::{op, proto, Client, ScanOptions};
use geokv_proto::v1 as pb;
use pb::cluster_client::ClusterClient;
use support::{wait_until, TestCluster, BIN, THREE_REGIONS};
use tonic::Code;

const DEFAULT_RULE: &str = "[[rules]]\nname = \"default\"\nprefix = \"\"\neverywhere = true\n";

fn eu_only(mode: &str) -> String {
    format!(
        "{DEFAULT_RULE}\n[[rules]]\nname = \"eu-users\"\nprefix = \"eu:user:\"\njurisdictions = [\"eu\"]\non_foreign = \"{mode}\"\n\n\
         [[rules]]\nname = \"eu-strict\"\nprefix = \"eu:strict:\"\njurisdictions = [\"eu\"]\non_foreign = \"reject\"\n"
    )
}

const KEYS: u64 = 10_000;
/// Keys of the runtime-change test: they are first replicated to every region (nine copies
/// each), which loads a two-core machine running nine debug-build nodes far more.
const CHANGE_KEYS: u64 = 1_000;

/// The two tests run one after the other: each starts nine nodes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const CONTROL_KEYS: u64 = 300;

/// A key whose last 12 bytes are unique and unpredictable: SST blocks store only the part of
/// a key that differs from the key before it, so the searched bytes must be the key's tail.
fn key(prefix: &str, i: u64) -> Vec<u8> {
    let salt = prefix.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    format!("{prefix}{:016x}", (i ^ salt).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)).into_bytes()
}

fn tail(key: &[u8]) -> Vec<u8> {
    key[key.len() - 12..].to_vec()
}

fn eu_keys(n: u64) -> Vec<Vec<u8>> {
    (0..n).map(|i| key("eu:user:", i)).collect()
}

fn control_keys() -> Vec<Vec<u8>> {
    (0..CONTROL_KEYS).map(|i| key("global:", i)).collect()
}

/// Which of `needles` (12 bytes each) occur in the files under `dir`, with a file for each.
fn search_dir(
    dir: &Path,
    needles: &HashSet<Vec<u8>>,
    found: &mut std::collections::HashMap<Vec<u8>, String>,
) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            search_dir(&path, needles, found);
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else { continue };
        for w in bytes.windows(12) {
            if w[0].is_ascii_hexdigit() && w[11].is_ascii_hexdigit() && needles.contains(w) {
                found.entry(w.to_vec()).or_insert_with(|| path.display().to_string());
            }
        }
    }
}

/// The keys of `keys` whose bytes occur in node `i`'s data directory, with a file each.
fn on_disk(cluster: &TestCluster, i: usize, keys: &[Vec<u8>]) -> std::collections::HashMap<Vec<u8>, String> {
    let needles: HashSet<Vec<u8>> = keys.iter().map(|k| tail(k)).collect();
    let mut found = std::collections::HashMap::new();
    search_dir(&cluster.nodes[i].data_dir, &needles, &mut found);
    found
}

async fn peer(cluster: &TestCluster, i: usize) -> ClusterClient<tonic::transport::Channel> {
    ClusterClient::connect(format!("http://{}", cluster.peer_addrs[i])).await.expect("peer service")
}

/// Flushes and fully compacts every node's storage.
async fn compact_all(cluster: &TestCluster) {
    for i in 0..cluster.nodes.len() {
        peer(cluster, i).await.compact(pb::CompactRequest {}).await.expect("compact");
    }
}

fn quorum(c: Client) -> Client {
    c.with_consistency(proto::Consistency::Quorum)
}

/// Writes `keys` in batches of 100, batch b through node b mod 9 (every region), three
/// writers at once (one per region). An item that fails for want of replicas (the machine is
/// loaded: a peer may be suspected for a moment) is retried, as a client would; any other
/// refusal fails the test, and every item must be acknowledged in the end.
async fn write_everywhere(cluster: &TestCluster, keys: &[Vec<u8>], value: &[u8]) {
    let nodes = cluster.nodes.len();
    let mut clients = Vec::new();
    for n in 0..nodes {
        clients.push(quorum(cluster.client(n).await));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..3 {
        let mine: Vec<(usize, Vec<Vec<u8>>)> = keys
            .chunks(100)
            .enumerate()
            .filter(|(b, _)| (b % nodes) / 3 == writer)
            .map(|(b, c)| (b % nodes, c.to_vec()))
            .collect();
        let (clients, value) = (clients.clone(), value.to_vec());
        tasks.spawn(async move {
            for (n, mut chunk) in mine {
                for attempt in 0.. {
                    let ops = chunk.iter().map(|k| op::put(k, &value, None)).collect();
                    let results = clients[n].batch_write(ops).await.expect("batch write");
                    let mut retry = Vec::new();
                    for (k, r) in chunk.iter().zip(results) {
                        match r.outcome {
                            Some(proto::write_result::Outcome::Error(e))
                                if e.code == Code::Unavailable as i32 && attempt < 40 =>
                            {
                                retry.push(k.clone())
                            }
                            Some(proto::write_result::Outcome::Error(e)) => {
                                panic!("node {}: item refused: {e:?}", n + 1)
                            }
                            _ => {}
                        }
                    }
                    if retry.is_empty() {
                        break;
                    }
                    chunk = retry;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("writer");
    }
}

/// How many of `keys` a read through node `i` at `level` finds.
async fn readable(cluster: &TestCluster, i: usize, keys: &[Vec<u8>], level: proto::Consistency) -> usize {
    let client = cluster.client(i).await.with_consistency(level);
    let mut found = 0;
    for chunk in keys.chunks(200) {
        // A read that cannot reach enough replicas (a peer suspected for a moment) finds none.
        match client.batch_get(chunk.to_vec()).await {
            Ok(r) => found += r.iter().filter(|e| e.is_some()).count(),
            Err(e) => eprintln!("read through node {} failed: {e}", i + 1),
        }
    }
    found
}

fn region_nodes(cluster: &TestCluster, region: &str) -> Vec<usize> {
    (0..cluster.nodes.len()).filter(|&i| cluster.node_regions[i] == region).collect()
}

fn non_eu(cluster: &TestCluster) -> Vec<usize> {
    (0..cluster.nodes.len()).filter(|&i| cluster.node_regions[i] != "eu-west").collect()
}

/// Asserts no key of `keys` is on the disk of any node of `nodes`.
fn assert_absent(cluster: &TestCluster, nodes: &[usize], keys: &[Vec<u8>], when: &str) {
    for &i in nodes {
        let found = on_disk(cluster, i, keys);
        let sample: Vec<_> =
            found.iter().take(3).map(|(k, f)| (String::from_utf8_lossy(k).into_owned(), f)).collect();
        assert!(
            found.is_empty(),
            "{when}: node {} ({}) holds {} of the keys, e.g. {sample:?}",
            i + 1,
            cluster.node_regions[i],
            found.len()
        );
    }
}

/// [`assert_absent`], tolerating the MANIFEST.
fn assert_absent_except_manifest(cluster: &TestCluster, nodes: &[usize], keys: &[Vec<u8>], when: &str) {
    for &i in nodes {
        let found = on_disk(cluster, i, keys);
        let outside: Vec<_> = found.iter().filter(|(_, f)| !f.contains("MANIFEST")).take(3).collect();
        assert!(outside.is_empty(), "{when}: node {} holds keys outside the MANIFEST: {outside:?}", i + 1);
    }
}

/// Asserts every key of `keys` is on the disk of every node of `nodes` (the search works).
fn assert_present(cluster: &TestCluster, nodes: &[usize], keys: &[Vec<u8>], when: &str) {
    for &i in nodes {
        let found = on_disk(cluster, i, keys).len();
        assert_eq!(
            found,
            keys.len(),
            "{when}: node {} ({}) should hold every key",
            i + 1,
            cluster.node_regions[i]
        );
    }
}

/// Waits until a read through node `i` at `level` finds every key of `keys` (a read fails
/// while too few replicas are reachable, which a loaded machine makes happen now and then).
async fn wait_readable(cluster: &TestCluster, i: usize, keys: &[Vec<u8>], level: proto::Consistency) {
    let ok = wait_until(Duration::from_secs(60), || async {
        readable(cluster, i, keys, level).await == keys.len()
    })
    .await;
    assert!(ok, "a {level:?} read through node {} never found all {} keys", i + 1, keys.len());
}

/// How many of `keys` node `i` holds a copy of itself (asked over its node-to-node service,
/// 64 keys at a time; a key it cannot answer for counts as missing).
async fn held(cluster: &TestCluster, i: usize, keys: &[Vec<u8>]) -> usize {
    use futures::StreamExt;
    let client = peer(cluster, i).await;
    futures::stream::iter(keys.iter().cloned().map(|key| {
        let mut c = client.clone();
        async move { c.holds(pb::HoldsRequest { key }).await.is_ok_and(|r| r.into_inner().has_state) }
    }))
    .buffer_unordered(64)
    .filter(|&has| async move { has })
    .count()
    .await
}

/// Waits until every node of `nodes` holds its own copy of every key. (Node-local checks,
/// not reads at ALL: a read at ALL fails while any replica is suspected, which a loaded
/// two-core machine running nine nodes makes common.)
async fn wait_everywhere(cluster: &TestCluster, nodes: &[usize], keys: &[Vec<u8>], what: &str) {
    for &i in nodes {
        let last = std::sync::atomic::AtomicUsize::new(0);
        let ok = wait_until(Duration::from_secs(120), || async {
            let n = held(cluster, i, keys).await;
            last.store(n, std::sync::atomic::Ordering::Relaxed);
            n == keys.len()
        })
        .await;
        let last = last.into_inner();
        assert!(
            ok,
            "{what}: node {} ({}) holds {last} of {} keys",
            i + 1,
            cluster.node_regions[i],
            keys.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eu_only_keys_written_through_every_region_never_reach_other_regions_disks() {
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start_regions_with_policy(&THREE_REGIONS, 3, 3, &eu_only("forward"));
    let (eu, us, ap) = (
        region_nodes(&cluster, "eu-west"),
        region_nodes(&cluster, "us-east"),
        region_nodes(&cluster, "ap-southeast"),
    );
    let keys = eu_keys(KEYS);
    let control = control_keys();
    write_everywhere(&cluster, &keys, b"personal data").await;
    write_everywhere(&cluster, &control, b"shared").await;

    // Single-key operations of every kind, forwarded from the other regions.
    let via_us = quorum(cluster.client(us[0]).await);
    let via_ap = quorum(cluster.client(ap[1]).await);
    let counter = key("eu:user:counter:", 0);
    let set = key("eu:user:set:", 0);
    let extra = key("eu:user:extra:", 0);
    via_us.put(&extra, b"v1", None).await.expect("forwarded put");
    assert_eq!(via_ap.get(&extra).await.unwrap().expect("forwarded get").key, extra);
    for c in [&via_us, &via_ap] {
        c.increment(&counter, 5, None).await.expect("forwarded increment");
        c.set_add(&set, vec![b"a".to_vec()], None).await.expect("forwarded set add");
    }
    let cas = via_ap.compare_and_swap(&extra, None, b"x", None).await.expect("forwarded CAS");
    assert!(!cas.succeeded, "the key exists in the EU, so put-if-absent fails there");
    let mut all_eu = keys.clone();
    all_eu.extend([counter.clone(), set.clone(), extra.clone()]);

    // Reject mode: refused outside the EU, with the rule and the allowed regions named.
    let strict = key("eu:strict:", 0);
    let err = via_us.put(&strict, b"no", None).await.unwrap_err();
    assert_eq!(err.code(), Some(geokv_client::Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("eu-strict") && err.to_string().contains("eu-west"), "{err}");
    assert_eq!(err.reason(), Some("RESIDENCY_REFUSED"), "{err}");
    let err = via_ap.get(&strict).await.unwrap_err();
    assert_eq!(err.code(), Some(geokv_client::Code::FailedPrecondition), "{err}");
    let results = via_us
        .batch_write(vec![op::put(&strict, b"no", None), op::put(&key("global:x:", 0), b"ok", None)])
        .await
        .unwrap();
    assert!(
        matches!(&results[0].outcome, Some(proto::write_result::Outcome::Error(e)) if e.code == Code::FailedPrecondition as i32)
    );
    assert!(matches!(&results[1].outcome, Some(proto::write_result::Outcome::Put(_))));
    quorum(cluster.client(eu[0]).await).put(&strict, b"fine here", None).await.expect("allowed in the EU");
    all_eu.push(strict.clone());

    // Everything is readable in the EU, and through the other regions by forwarding.
    wait_readable(&cluster, eu[2], &keys, proto::Consistency::Quorum).await;
    wait_readable(&cluster, ap[0], &keys[..500], proto::Consistency::Quorum).await;
    // The unrestricted keys replicate everywhere; wait for them.
    let mut shared = control.clone();
    shared.push(key("global:x:", 0));
    wait_everywhere(&cluster, &non_eu(&cluster), &shared, "unrestricted keys").await;
    wait_everywhere(&cluster, &eu, &keys, "EU keys on the EU nodes").await;
    // Scans: forwarded keys appear in a scan through any region, refused ones do not.
    let opts = |prefix: &[u8]| ScanOptions {
        prefix: prefix.to_vec(),
        limit: 1000,
        keys_only: true,
        ..Default::default()
    };
    let listed = via_us.scan_all(&opts(b"eu:user:")).await.expect("scan");
    assert_eq!(listed.len(), keys.len() + 3);
    let everything = via_ap.scan_all(&opts(b"")).await.expect("scan");
    let strict_listed = everything.iter().filter(|e| e.key.starts_with(b"eu:strict:")).count();
    assert_eq!(strict_listed, 0, "rejected keys are not listed outside their regions");
    assert_eq!(everything.len() as u64, KEYS + 3 + CONTROL_KEYS + 1, "every forwarded and local key, once");
    assert!(everything.windows(2).all(|w| w[0].key < w[1].key), "in key order");

    compact_all(&cluster).await;
    assert_present(&cluster, &non_eu(&cluster), &control, "control keys on non-EU nodes");
    // Every EU key is on the EU nodes' disks (a QUORUM write is on two of the three at once,
    // the third gets it moments later).
    let mut union = HashSet::new();
    for &i in &eu {
        let found = on_disk(&cluster, i, &keys);
        assert!(found.len() as u64 >= KEYS * 99 / 100, "node {} holds only {} EU keys", i + 1, found.len());
        union.extend(found.into_keys());
    }
    assert_eq!(union.len(), keys.len(), "every EU key is on some EU node");
    assert_absent(&cluster, &non_eu(&cluster), &all_eu, "after writes through every region");

    // Explain lists copies only in the EU.
    let out = Command::new(BIN)
        .args(["--json", "residency", "explain", std::str::from_utf8(&keys[7]).unwrap(), "--peer"])
        .arg(cluster.peer_addrs[us[1]].to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["rule"], "eu-users");
    assert_eq!(j["allowed_regions"], serde_json::json!(["eu-west"]));
    let copies = j["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 9);
    for c in copies {
        let holds = c["has_state"].as_bool().unwrap();
        assert_eq!(holds, c["region"] == "eu-west", "{c}");
    }
    let stats = peer(&cluster, us[0]).await.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert!(stats.residency_forwards >= 1 && stats.residency_rejects >= 2, "{stats:?}");
}

/// Runs `geokv --json residency apply` with `policy` against node `i`; returns its reports.
fn apply(cluster: &TestCluster, i: usize, policy: &str) -> Vec<serde_json::Value> {
    apply_expecting(cluster, i, policy, true)
}

/// [`apply`], expecting the command to succeed (`true`) or to report a failed node (`false`).
fn apply_expecting(cluster: &TestCluster, i: usize, policy: &str, success: bool) -> Vec<serde_json::Value> {
    let file = cluster.dir.path().join(format!("policy-{}.toml", std::process::id() ^ rand_tag()));
    std::fs::write(&file, policy).unwrap();
    let out = Command::new(BIN)
        .args(["--json", "residency", "apply"])
        .arg(&file)
        .args(["--peer", &cluster.peer_addrs[i].to_string()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.success(),
        success,
        "apply: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let reports: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for r in reports.iter().filter(|r| r["phase"] == "enforced") {
        eprintln!(
            "enforced on node {} ({}): scanned {}, erased {} (+{} log entries), re-shipped {}, {} ms",
            r["node_id"],
            r["region"],
            r["keys_scanned"],
            r["keys_erased"],
            r["log_entries_erased"],
            r["keys_reshipped"],
            r["millis"]
        );
    }
    reports
}

fn rand_tag() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}

fn enforced(reports: &[serde_json::Value], node: usize) -> &serde_json::Value {
    reports
        .iter()
        .find(|r| r["phase"] == "enforced" && r["node_id"] == node as u64 + 1)
        .unwrap_or_else(|| panic!("no enforcement report of node {}: {reports:?}", node + 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tightening_a_policy_purges_copies_and_widening_it_copies_keys() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start_regions_with_policy(&THREE_REGIONS, 3, 3, DEFAULT_RULE);
    let (eu, us, ap) = (
        region_nodes(&cluster, "eu-west"),
        region_nodes(&cluster, "us-east"),
        region_nodes(&cluster, "ap-southeast"),
    );
    let keys = eu_keys(CHANGE_KEYS);
    let control = control_keys();
    write_everywhere(&cluster, &keys, b"personal data").await;
    write_everywhere(&cluster, &control, b"shared").await;
    wait_everywhere(&cluster, &(0..cluster.nodes.len()).collect::<Vec<_>>(), &keys, "before tightening")
        .await;
    compact_all(&cluster).await;
    assert_present(&cluster, &non_eu(&cluster), &keys, "before tightening, every region holds the keys");

    // Tighten: eu:user: keys only in the EU.
    let reports = apply(&cluster, ap[2], &eu_only("forward"));
    for &i in &non_eu(&cluster) {
        let r = enforced(&reports, i);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["keys_erased"], CHANGE_KEYS, "node {} erases each EU key once: {r}", i + 1);
    }
    for &i in &eu {
        assert_eq!(enforced(&reports, i)["keys_erased"], 0);
    }
    // Nothing outside the MANIFEST (which may still name purged keys as the first or last key
    // of deleted SST files until it is rewritten at the next start)...
    assert_absent_except_manifest(&cluster, &non_eu(&cluster), &keys, "after tightening");
    // ...and nothing at all once the nodes restarted.
    for &i in &non_eu(&cluster) {
        cluster.nodes[i].restart();
    }
    assert_absent(&cluster, &non_eu(&cluster), &keys, "after tightening and a restart");
    assert_present(&cluster, &non_eu(&cluster), &control, "after tightening, other keys stay");
    wait_readable(&cluster, eu[1], &keys, proto::Consistency::Quorum).await;
    wait_everywhere(&cluster, &eu, &keys, "after tightening, the EU keeps every key").await;
    wait_readable(&cluster, us[2], &keys[..300], proto::Consistency::Quorum).await;
    // A write now lands in the EU only.
    let late = key("eu:user:late:", 0);
    quorum(cluster.client(ap[0]).await).put(&late, b"v", None).await.unwrap();

    // Widen: the EU and us-east.
    let widened = eu_only("forward").replace(
        "jurisdictions = [\"eu\"]\non_foreign = \"forward\"",
        "regions = [\"eu-west\", \"us-east\"]\non_foreign = \"forward\"",
    );
    assert_ne!(widened, eu_only("forward"));
    let reports = apply(&cluster, eu[0], &widened);
    let reshipped: u64 = eu.iter().map(|&i| enforced(&reports, i)["keys_reshipped"].as_u64().unwrap()).sum();
    assert_eq!(reshipped, CHANGE_KEYS + 1, "each key is re-shipped by one EU node");
    let mut all = keys.clone();
    all.push(late);
    wait_everywhere(&cluster, &us, &all, "after widening").await;
    compact_all(&cluster).await;
    assert_present(&cluster, &us, &keys, "after widening, us-east holds the keys");
    assert_absent(&cluster, &ap, &all, "after widening, ap-southeast still holds none");
}

/// Two regions (eu-west, us-east), `p:` keys first allowed only in eu-west.
fn p_only_in(region: &str) -> String {
    format!(
        "{DEFAULT_RULE}\n[[rules]]\nname = \"p\"\nprefix = \"p:\"\nregions = [\"{region}\"]\non_foreign = \"forward\"\n"
    )
}

/// Scenario 3 of the data-loss issue: moving a prefix's residency from one region to another
/// must hand the keys over to the new region before erasing them from the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moving_a_prefix_to_another_region_hands_its_keys_over_before_erasing_them() {
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start_regions_with_policy(&THREE_REGIONS[..2], 3, 3, &p_only_in("eu-west"));
    let (eu, us) = (region_nodes(&cluster, "eu-west"), region_nodes(&cluster, "us-east"));
    let keys: Vec<Vec<u8>> = (0..20).map(|i| key("p:", i)).collect();
    let writer = quorum(cluster.client(eu[0]).await);
    for k in &keys {
        let acked =
            wait_until(Duration::from_secs(30), || async { writer.put(k, b"moved", None).await.is_ok() })
                .await;
        assert!(acked, "put of {:?} acknowledged", String::from_utf8_lossy(k));
    }
    wait_everywhere(&cluster, &eu, &keys, "before the move").await;
    compact_all(&cluster).await;
    assert_absent(&cluster, &us, &keys, "before the move, us-east holds none");

    let reports = apply(&cluster, eu[1], &p_only_in("us-east"));
    // Every key reads through us-east, and through eu-west (forwarded there).
    wait_readable(&cluster, us[0], &keys, proto::Consistency::Quorum).await;
    wait_everywhere(&cluster, &us, &keys, "after the move, us-east holds every key").await;
    let handed: u64 =
        eu.iter().map(|&i| enforced(&reports, i)["keys_handed_over"].as_u64().unwrap_or_default()).sum();
    for &i in &eu {
        let r = enforced(&reports, i);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["keys_kept"], 0, "{r}");
        assert_eq!(r["keys_erased"], 20, "node {} erases each key once it is handed over: {r}", i + 1);
    }
    assert_eq!(handed, 3 * 20, "each eu-west node hands over its copy of every key");
    wait_readable(&cluster, eu[2], &keys, proto::Consistency::Quorum).await;
    let got = quorum(cluster.client(us[1]).await).get(&keys[7]).await.unwrap().expect("present");
    assert_eq!(got.value.and_then(|v| v.kind), Some(proto::value::Kind::Register(b"moved".to_vec())));
    assert_absent_except_manifest(&cluster, &eu, &keys, "after the move, eu-west");
}

/// Scenario 7 of the data-loss issue: residency enforcement erases the newest change-log
/// entries (keys another region now holds alone), the node restarts, and its next writes must
/// still get sequence numbers past what the other region acknowledged, or they are never
/// shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_after_an_erase_of_the_newest_log_entries_and_a_restart_are_still_shipped() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start_regions_with_policy(&THREE_REGIONS[..2], 1, 1, DEFAULT_RULE);
    let (eu, us) = (0, 1);
    let writer = quorum(cluster.client(eu).await);
    let mut keys = vec![key("global:", 0)];
    keys.extend((0..5).map(|i| key("p:", i)));
    for k in &keys {
        let acked =
            wait_until(Duration::from_secs(30), || async { writer.put(k, b"v", None).await.is_ok() }).await;
        assert!(acked, "put of {:?}", String::from_utf8_lossy(k));
    }
    wait_everywhere(&cluster, &[us], &keys, "before the move").await;
    // The p: keys (the newest entries of eu-west's log) move to us-east alone.
    let reports = apply(&cluster, eu, &p_only_in("us-east"));
    assert_eq!(enforced(&reports, eu)["keys_erased"], 5, "{reports:?}");
    cluster.nodes[eu].restart();
    let writer = quorum(cluster.client(eu).await);
    let late = key("global:late:", 1);
    let acked =
        wait_until(Duration::from_secs(30), || async { writer.put(&late, b"v", None).await.is_ok() }).await;
    assert!(acked, "a write after the restart");
    // Replication brings it over in well under a second; anti-entropy (every 60 s) would
    // bring it too, so wait for less than that.
    let shipped = wait_until(Duration::from_secs(30), || async {
        held(&cluster, us, std::slice::from_ref(&late)).await == 1
    })
    .await;
    assert!(shipped, "a write after the erase and the restart never reached us-east");
}

/// Moving a prefix to a region that cannot be reached (its link is cut) erases nothing: the
/// keys stay where they are, the report says how many and why, and once the link is back the
/// enforcement (retried by the residency sync) hands them over and erases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_moved_to_an_unreachable_region_stays_until_that_region_has_it() {
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start_regions_with_policy(&THREE_REGIONS[..2], 1, 1, &p_only_in("eu-west"));
    let (eu, us) = (0, 1);
    let keys: Vec<Vec<u8>> = (0..10).map(|i| key("p:", i)).collect();
    let writer = quorum(cluster.client(eu).await);
    for k in &keys {
        let acked =
            wait_until(Duration::from_secs(30), || async { writer.put(k, b"v", None).await.is_ok() }).await;
        assert!(acked, "put of {:?}", String::from_utf8_lossy(k));
    }
    set_link_cut(&cluster, eu, "us-east", true).await;
    let reports = apply_expecting(&cluster, eu, &p_only_in("us-east"), false);
    let r = enforced(&reports, eu);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["keys_erased"], 0, "{r}");
    assert_eq!(r["keys_kept"], 10, "{r}");
    assert!(r["error"].as_str().unwrap_or_default().contains("us-east"), "{r}");
    assert_eq!(held(&cluster, eu, &keys).await, keys.len(), "eu-west keeps every key");
    set_link_cut(&cluster, eu, "us-east", false).await;
    // The residency sync enforces again (30 s after adoption at the latest).
    let moved = wait_until(Duration::from_secs(120), || async {
        held(&cluster, us, &keys).await == keys.len() && held(&cluster, eu, &keys).await == 0
    })
    .await;
    assert!(moved, "after the link is back, the keys move to us-east and leave eu-west");
}

/// Cuts (or heals) the emulated link from node `i`'s region to region `to`.
async fn set_link_cut(cluster: &TestCluster, i: usize, to: &str, cut: bool) {
    let mut c = peer(cluster, i).await;
    let status = c.replication_status(pb::ReplicationStatusRequest {}).await.expect("status").into_inner();
    let mut link =
        status.destinations.iter().find(|d| d.destination == to).and_then(|d| d.link).unwrap_or_default();
    link.cut = cut;
    c.set_link(pb::SetLinkRequest { destination: to.into(), link: Some(link) }).await.expect("set link");
}
