//! Repair between three in-process nodes talking real gRPC on loopback: Merkle anti-entropy,
//! and read repair of a replica whose stored state is corrupt.

use std::sync::Arc;

use geokv_core::{apply, Limits, Op, Record, Stamp};
use geokv_proto::v1::{cluster_client::ClusterClient, RunAntiEntropyRequest};
use geokv_server::{serve, RunningServer, ServerConfig, SystemClock};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts three nodes; ports are picked free just before binding, so on a bind failure (another
/// process took one) the region is started again on new ports.
async fn start_region(dir: &std::path::Path) -> Vec<RunningServer> {
    let mut last = String::new();
    for attempt in 0..3 {
        match try_start_region(&dir.join(format!("attempt-{attempt}"))).await {
            Ok(servers) => return servers,
            Err(e) => last = e,
        }
    }
    panic!("could not start the region: {last}");
}

async fn try_start_region(dir: &std::path::Path) -> Result<Vec<RunningServer>, String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut topology = String::from(
        "[[regions]]\nname = \"r\"\nlocation = [0.0, 0.0]\njurisdiction = \"eu\"\nreplication_factor = 3\n",
    );
    for id in 1..=3 {
        topology.push_str(&format!(
            "[[nodes]]\nid = {id}\nregion = \"r\"\nclient_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\n",
            free_port(),
            free_port()
        ));
    }
    let path = dir.join("topology.toml");
    std::fs::write(&path, topology).unwrap();
    let mut servers = Vec::new();
    for id in 1..=3 {
        let mut cfg = ServerConfig::new(id, dir.join(format!("node-{id}")));
        cfg.topology = Some(path.clone());
        // In-process nodes on loopback, plaintext: said so, as a multi-node topology requires.
        cfg.insecure = true;
        cfg.storage.sync = false;
        match serve(cfg, Arc::new(SystemClock)).await {
            Ok(s) => servers.push(s),
            Err(e) => {
                for s in servers {
                    let _ = s.shutdown().await;
                }
                return Err(e);
            }
        }
    }
    // New data directories: every node first completes its (empty) exchanges with its peers,
    // before the test loads data or counts exchanged keys.
    for s in &servers {
        let c = s.cluster.as_ref().expect("a cluster node");
        tokio::time::timeout(std::time::Duration::from_secs(30), c.serving_reads())
            .await
            .map_err(|_| "a node did not start serving reads within 30 s".to_string())?;
    }
    Ok(servers)
}

fn state(value: &str, time: u64) -> Record {
    let op = Op::Put { value: value.as_bytes().to_vec(), ttl_ms: None };
    apply(None, &op, Stamp::new(time, 1), 0, &Limits::default()).unwrap().record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_after_one_percent_divergence_transfers_only_the_diverged_keys() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_region(dir.path()).await;
    const KEYS: usize = 100_000;
    const DIVERGED: usize = KEYS / 100;
    // The same 100,000 states on every replica.
    let mut loads = Vec::new();
    for s in &servers {
        let node = s.node.clone();
        loads.push(tokio::task::spawn_blocking(move || {
            for i in 0..KEYS {
                node.engine().merge(format!("key{i:06}").as_bytes(), &state("base", 1000)).unwrap();
            }
        }));
    }
    for l in loads {
        l.await.unwrap();
    }
    // 1% of them change on node 1 only.
    let diverged_state = state("newer value", 2000);
    for i in (0..KEYS).step_by(KEYS / DIVERGED) {
        servers[0].node.engine().merge(format!("key{i:06}").as_bytes(), &diverged_state).unwrap();
    }

    let peer = servers[0].peer_addr.unwrap();
    let mut admin = ClusterClient::connect(format!("http://{peer}")).await.unwrap();
    let stats = admin.run_anti_entropy(RunAntiEntropyRequest {}).await.unwrap().into_inner();
    eprintln!("{stats:?}");
    assert_eq!(stats.ae_keys_compared, 2 * KEYS as u64, "every shared key summarised, once per peer");
    assert_eq!(
        stats.ae_keys_repaired,
        2 * DIVERGED as u64,
        "exactly the diverged keys, with each of two peers"
    );
    let state_len = geokv_storage::codec::encode(&diverged_state, 1024, 1).len() as u64;
    let base_len = geokv_storage::codec::encode(&state("base", 1000), 1024, 1).len() as u64;
    assert_eq!(stats.ae_state_bytes_sent, 2 * DIVERGED as u64 * state_len, "only diverged states were sent");
    assert_eq!(stats.ae_state_bytes_received, 2 * DIVERGED as u64 * base_len);

    // Everyone now holds the newer state of every diverged key, and a second round finds nothing.
    for s in &servers {
        for i in (0..KEYS).step_by(KEYS / DIVERGED) {
            assert_eq!(
                s.node.engine().get(format!("key{i:06}").as_bytes()).unwrap().unwrap(),
                diverged_state
            );
        }
    }
    let again = admin.run_anti_entropy(RunAntiEntropyRequest {}).await.unwrap().into_inner();
    assert_eq!(again.ae_keys_repaired, stats.ae_keys_repaired, "a converged region exchanges no keys");
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_replica_is_never_served_and_reads_repair_it_from_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_region(dir.path()).await;
    let good = state("the value", 1000);
    for s in &servers {
        s.node.engine().merge(b"k", &good).unwrap();
        s.node.engine().merge(b"k2", &good).unwrap();
    }
    // Flip one byte of node 2's stored bytes of both keys: their checksums no longer match.
    let broken = servers[1].node.engine();
    for key in [&b"k"[..], b"k2"] {
        let mut raw = broken.get_raw_for_test(key).unwrap().unwrap();
        let mid = raw.len() / 2;
        raw[mid] ^= 0x10;
        broken.put_raw_for_test(key, &raw).unwrap();
        assert!(broken.get(key).is_err(), "node 2 refuses to serve the corrupt state");
    }

    // QUORUM reads through node 1 return the good value every time; a read that hears node 2's
    // refusal before reaching its quorum repairs node 2 with the merged state.
    let cluster = servers[0].cluster.clone().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut reads = 0;
    while broken.get(b"k").is_err() {
        assert!(std::time::Instant::now() < deadline, "node 2 was not repaired after {reads} reads");
        let got = cluster.read(b"k".to_vec(), geokv_cluster::Level::Quorum).await.unwrap();
        assert_eq!(got.as_ref(), Some(&good), "read {reads} served the good state");
        reads += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(broken.get(b"k").unwrap(), Some(good.clone()), "repaired to the replicas' state");
    eprintln!("node 2 repaired after {reads} QUORUM reads through node 1");

    // Anti-entropy on node 2 steps over its corrupt key when summarising, finds it missing, and
    // brings the replicas' state: the second key is repaired without any read.
    let mut peer = ClusterClient::connect(format!("http://{}", servers[1].peer_addr.unwrap())).await.unwrap();
    peer.run_anti_entropy(RunAntiEntropyRequest {}).await.unwrap();
    assert_eq!(broken.get(b"k2").unwrap(), Some(good), "anti-entropy repaired the second key");
    let stats = broken.stats();
    assert!(stats.corrupt_reads >= 2 && stats.corrupt_replaced == 2, "{stats:?}");
    for s in servers {
        let _ = s.shutdown().await;
    }
}
