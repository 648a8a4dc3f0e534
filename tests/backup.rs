//! Backup and restore with real `geokv` processes and the `geokv backup` / `geokv restore`
//! commands: a region backed up while writes go on, wiped and restored, must serve every
//! acknowledged write (those after the backup come back from the other regions) and hold no
//! key its residency forbids; a single node restored from an older backup recovers what it
//! missed before it votes; damaged backups and bad restore targets are refused.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use geokv_client::{op, proto, Client};
use geokv_proto::v1 as pb;
use pb::cluster_client::ClusterClient;
use support::{wait_until, TestCluster, BIN, THREE_REGIONS};
use tonic::Code;

/// Keys kept in ap-southeast only: eu-west may never hold them, backup or not.
const POLICY: &str = "[[rules]]\nname = \"default\"\nprefix = \"\"\neverywhere = true\n\n\
    [[rules]]\nname = \"ap-only\"\nprefix = \"ap:\"\nregions = [\"ap-southeast\"]\non_foreign = \"forward\"\n";

/// Runs the CLI against node `i`'s client endpoint; (success, stdout, stderr).
fn cli(cluster: &TestCluster, i: usize, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["--endpoint", &cluster.nodes[i].endpoint()])
        .args(args)
        .output()
        .expect("run the geokv CLI");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn cli_ok(cluster: &TestCluster, i: usize, args: &[&str]) -> String {
    let (ok, out, err) = cli(cluster, i, args);
    assert!(ok, "geokv {args:?} failed:\n{out}\n{err}");
    out
}

fn quorum(c: Client) -> Client {
    c.with_consistency(proto::Consistency::Quorum)
}

/// Writes `ops` (key, value or `None` for a delete) in batches of 100 at QUORUM, batch b
/// through node `nodes[b % len]`; an item refused for want of replicas is retried (a loaded
/// machine suspects a peer now and then); returns what was acknowledged.
async fn write(
    cluster: &TestCluster,
    nodes: &[usize],
    ops: &[(Vec<u8>, Option<Vec<u8>>)],
) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let mut clients = Vec::new();
    for &n in nodes {
        clients.push(quorum(cluster.client(n).await));
    }
    let mut acked = BTreeMap::new();
    for (b, chunk) in ops.chunks(100).enumerate() {
        let client = &clients[b % clients.len()];
        let mut todo: Vec<(Vec<u8>, Option<Vec<u8>>)> = chunk.to_vec();
        for attempt in 0.. {
            let batch = todo
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => op::put(k, v, None),
                    None => op::delete(k),
                })
                .collect();
            let results = client.batch_write(batch).await.expect("batch write");
            let mut retry = Vec::new();
            for (item, r) in todo.iter().zip(results) {
                match r.outcome {
                    Some(proto::write_result::Outcome::Error(e))
                        if e.code == Code::Unavailable as i32 && attempt < 40 =>
                    {
                        retry.push(item.clone())
                    }
                    Some(proto::write_result::Outcome::Error(e)) => panic!("item refused: {e:?}"),
                    _ => {
                        acked.insert(item.0.clone(), item.1.clone());
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            todo = retry;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    acked
}

/// The keys of `expected` whose QUORUM read through node `i` differs from it (a value, or
/// absent for `None`), with what was read; and the reads that failed (a loaded machine
/// suspects a peer now and then: those are tried again).
async fn mismatches(
    cluster: &TestCluster,
    i: usize,
    expected: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> (Vec<(String, Option<Vec<u8>>)>, Vec<String>) {
    let client = quorum(cluster.client(i).await);
    let keys: Vec<Vec<u8>> = expected.keys().cloned().collect();
    let (mut wrong, mut failed) = (Vec::new(), Vec::new());
    for chunk in keys.chunks(200) {
        match client.batch_get(chunk.to_vec()).await {
            Ok(entries) => {
                for (k, e) in chunk.iter().zip(entries) {
                    let got = e.and_then(|e| e.value).and_then(|v| match v.kind {
                        Some(proto::value::Kind::Register(b)) => Some(b),
                        _ => None,
                    });
                    if &got != expected.get(k).unwrap() {
                        wrong.push((String::from_utf8_lossy(k).into_owned(), got));
                    }
                }
            }
            Err(e) => failed.push(format!("a read of {} keys failed: {e}", chunk.len())),
        }
    }
    (wrong, failed)
}

/// Reads every key of `expected` through node `i` until every read succeeds. `settled`: the
/// node should already serve every value (any wrong value fails at once); otherwise wrong
/// values are waited out too (replication still on its way).
async fn check_readable(
    cluster: &TestCluster,
    i: usize,
    expected: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    settled: bool,
    what: &str,
) {
    let last = std::sync::Mutex::new((Vec::new(), Vec::new()));
    let ok = wait_until(Duration::from_secs(180), || async {
        let (wrong, failed) = mismatches(cluster, i, expected).await;
        assert!(
            !settled || wrong.is_empty(),
            "{what}: through node {} ({}), {} of {} keys read wrong, e.g. {:?}",
            i + 1,
            cluster.node_regions[i],
            wrong.len(),
            expected.len(),
            &wrong[..wrong.len().min(3)]
        );
        let done = wrong.is_empty() && failed.is_empty();
        *last.lock().unwrap() = (wrong, failed);
        done
    })
    .await;
    let (wrong, failed) = last.into_inner().unwrap();
    assert!(
        ok,
        "{what}: through node {} ({}), {} of {} keys read wrong, e.g. {:?}; failed reads: {:?}",
        i + 1,
        cluster.node_regions[i],
        wrong.len(),
        expected.len(),
        &wrong[..wrong.len().min(3)],
        &failed[..failed.len().min(3)]
    );
}

/// How many of `keys` node `i` holds a copy (or tombstone) of, asked over its node-to-node
/// service.
async fn held(cluster: &TestCluster, i: usize, keys: &[Vec<u8>]) -> usize {
    let mut c =
        ClusterClient::connect(format!("http://{}", cluster.peer_addrs[i])).await.expect("peer service");
    let mut n = 0;
    for key in keys {
        let r = c.holds(pb::HoldsRequest { key: key.clone() }).await.expect("holds").into_inner();
        n += usize::from(r.has_state);
    }
    n
}

fn region_nodes(cluster: &TestCluster, region: &str) -> Vec<usize> {
    (0..cluster.nodes.len()).filter(|&i| cluster.node_regions[i] == region).collect()
}

/// `geokv restore` of node `node` into `data` from `backups`: (success, stdout, stderr).
fn restore(node: usize, data: &Path, backups: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["restore", "--node", &node.to_string(), "--data-dir"])
        .arg(data)
        .arg("--from")
        .arg(backups)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Kills node `i`, wipes its data directory and restores it from `backups` with the CLI.
fn wipe_and_restore(cluster: &mut TestCluster, i: usize, backups: &Path) -> String {
    cluster.nodes[i].kill9();
    let data = cluster.nodes[i].data_dir.clone();
    std::fs::remove_dir_all(&data).unwrap();
    let (ok, out, err) = restore(i + 1, &data, backups);
    assert!(ok, "restore of node {}: {out}\n{err}", i + 1);
    out
}

fn backup_json(cluster: &TestCluster, i: usize, dir: &Path, scope: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "backup", "create", "--out", dir.to_str().unwrap()];
    args.extend_from_slice(scope);
    serde_json::from_str(cli_ok(cluster, i, &args).trim()).expect("backup prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_backed_up_under_writes_then_wiped_and_restored_serves_every_acknowledged_write() {
    let mut cluster = TestCluster::start_regions_with_policy(&THREE_REGIONS, 3, 3, POLICY);
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    let eu = region_nodes(&cluster, "eu-west");
    let others: Vec<usize> = all.iter().copied().filter(|i| !eu.contains(i)).collect();
    let backups = cluster.dir.path().join("backups");
    let key = |i: usize| format!("k:{i:05}").into_bytes();
    let value = |i: usize, phase: &str| format!("{phase}-{i}").into_bytes();

    // 10,000 keys through every region: half before the backup, half while it runs.
    let first: Vec<_> = (0..5_000).map(|i| (key(i), Some(value(i, "v1")))).collect();
    let mut acked = write(&cluster, &all, &first).await;
    let second: Vec<_> = (5_000..10_000).map(|i| (key(i), Some(value(i, "v1")))).collect();
    let writers = {
        let ops = second.clone();
        let cluster = &cluster;
        let all = all.clone();
        async move { write(cluster, &all, &ops).await }
    };
    let dir = backups.clone();
    let eu0 = eu[0];
    let endpoint = cluster.nodes[eu0].endpoint();
    let backup = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["--json", "--endpoint", &endpoint, "backup", "create", "--region", "eu-west", "--out"])
            .arg(&dir)
            .output()
            .unwrap()
    });
    let (more, out) = tokio::join!(writers, backup);
    let out = out.unwrap();
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    acked.extend(more);
    assert_eq!(acked.len(), 10_000);

    // After the backup: overwrite some keys it holds, delete others (a restore must not bring
    // them back), and write keys only ap-southeast may hold.
    let changes: Vec<_> =
        (0..300).map(|i| (key(i), Some(value(i, "v2")))).chain((300..500).map(|i| (key(i), None))).collect();
    acked.extend(write(&cluster, &all, &changes).await);
    let ap_keys: Vec<Vec<u8>> = (0..200).map(|i| format!("ap:{i:04}").into_bytes()).collect();
    let ap_ops: Vec<_> = ap_keys.iter().map(|k| (k.clone(), Some(b"ap".to_vec()))).collect();
    let ap_acked = write(&cluster, &all, &ap_ops).await;
    assert_eq!(ap_acked.len(), ap_keys.len());

    // What eu-west acknowledged has reached the other regions before the region is lost.
    for &i in &[others[0], others[3]] {
        check_readable(&cluster, i, &acked, false, "before the wipe").await;
    }
    let verify = cli_ok(&cluster, eu0, &["backup", "verify", backups.to_str().unwrap()]);
    assert!(verify.contains("match their sizes and SHA-256"), "{verify}");

    // The whole region is lost and restored from the backup.
    for &i in &eu {
        let said = wipe_and_restore(&mut cluster, i, &backups);
        assert!(said.contains(&format!("restored node {}", i + 1)), "{said}");
    }
    for &i in &eu {
        cluster.nodes[i].restart();
    }
    for &i in &eu {
        assert!(
            cluster.nodes[i].wait_serving_reads(Duration::from_secs(240)),
            "restored node {} never recovered from its peers and the other regions",
            i + 1
        );
    }
    // Every acknowledged write, the backup's and the later ones, the overwrites and deletes,
    // as soon as the region serves again.
    for &i in &eu {
        check_readable(&cluster, i, &acked, true, "after the restore").await;
    }
    // And nothing residency keeps out of eu-west, in the backup or caught up since.
    for &i in &eu {
        assert_eq!(held(&cluster, i, &ap_keys).await, 0, "node {} holds ap: keys", i + 1);
    }
    // A later backup fetches only what changed: files shared with the first are not copied.
    let again = backup_json(&cluster, eu0, &backups, &["--region", "eu-west"]);
    assert!(again["reused"]["files"].as_u64().unwrap() > 0, "{again}");
    let list: serde_json::Value = serde_json::from_str(&cli_ok(
        &cluster,
        eu0,
        &["--json", "backup", "list", backups.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restored_from_an_older_backup_recovers_what_it_missed_and_bad_restores_are_refused() {
    let mut cluster = TestCluster::start_region(3, 3, "");
    let all = [0, 1, 2];
    let backups = cluster.dir.path().join("backups");
    let key = |i: usize| format!("n:{i:04}").into_bytes();
    let ops: Vec<_> = (0..500).map(|i| (key(i), Some(b"old".to_vec()))).collect();
    let mut acked = write(&cluster, &all, &ops).await;

    let made = backup_json(&cluster, 0, &backups, &["--node", "2"]);
    assert_eq!(made["nodes"], 1, "{made}");
    assert!(made["fetched"]["files"].as_u64().unwrap() > 0, "{made}");

    // After the backup: new keys, overwrites and deletes the backup does not have.
    let later: Vec<_> = (500..1_000)
        .map(|i| (key(i), Some(b"new".to_vec())))
        .chain((0..100).map(|i| (key(i), Some(b"newer".to_vec()))))
        .chain((100..150).map(|i| (key(i), None)))
        .collect();
    acked.extend(write(&cluster, &all, &later).await);

    // Bad restores change nothing: a data directory in use, a node the backup lacks, a
    // damaged file.
    let data = cluster.nodes[1].data_dir.clone();
    let (ok, _, err) = restore(2, &data, &backups);
    assert!(!ok && err.contains("is not empty"), "{err}");
    let scratch = cluster.dir.path().join("scratch");
    let (ok, _, err) = restore(3, &scratch, &backups);
    assert!(!ok && err.contains("no backup") && err.contains("node 3"), "{err}");

    let blobs: Vec<_> =
        std::fs::read_dir(backups.join("files")).unwrap().map(|e| e.unwrap().path()).collect();
    let victim = blobs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap().clone();
    let good = std::fs::read(&victim).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&victim, &bad).unwrap();
    let (ok, out, _) = cli(&cluster, 0, &["backup", "verify", backups.to_str().unwrap()]);
    assert!(!ok && out.contains("SHA-256"), "verify must report the damaged file: {out}");
    let (ok, _, err) = restore(2, &scratch, &backups);
    assert!(!ok && err.contains("damaged"), "{err}");
    assert!(!scratch.exists(), "a refused restore wrote {}", scratch.display());
    std::fs::write(&victim, &good).unwrap();

    // A backup older than the tombstone grace period (24 h here) could bring deleted keys
    // back: refused unless the operator accepts that.
    let manifest = std::fs::read_dir(backups.join("backups"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("manifest.json");
    let fresh = std::fs::read_to_string(&manifest).unwrap();
    let mut old: serde_json::Value = serde_json::from_str(&fresh).unwrap();
    let taken = old["nodes"][0]["taken_at_ms"].as_u64().unwrap();
    old["nodes"][0]["taken_at_ms"] = (taken - 2 * 86_400_000).into();
    std::fs::write(&manifest, old.to_string()).unwrap();
    let (ok, _, err) = restore(2, &scratch, &backups);
    assert!(!ok && err.contains("tombstone grace period"), "{err}");
    assert!(!scratch.exists(), "a refused restore wrote {}", scratch.display());
    std::fs::write(&manifest, fresh).unwrap();

    // Node 2 loses its disk and comes back from the older backup.
    wipe_and_restore(&mut cluster, 1, &backups);
    cluster.nodes[1].restart();
    assert!(cluster.nodes[1].wait_serving_reads(Duration::from_secs(120)), "node 2 never recovered");
    // It holds every key now, its own copy (deleted keys as tombstones), not just through
    // its peers.
    let keys: Vec<Vec<u8>> = acked.keys().cloned().collect();
    assert_eq!(held(&cluster, 1, &keys).await, keys.len());
    // Reads that need node 2 (node 1 down) see every acknowledged write and delete.
    cluster.nodes[0].kill9();
    check_readable(&cluster, 2, &acked, true, "node 1 down, node 2 restored").await;
}
