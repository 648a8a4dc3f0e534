//! Transport security with real `geokv` processes: TLS on every port, only the deployment's
//! nodes on the peer port, and every kind of bad credential answered with UNAUTHENTICATED or
//! PERMISSION_DENIED, a message that says what to do, a metric, and no change to any key.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use geokv_client::{proto, Client, Security};
use geokv_proto::v1 as pb;
use geokv_tls::issue::{Ca, Validity};
use geokv_tls::layout;
use support::tls::{cluster_ca, curl, expired, files, foreign_ca, register, rejections};
use support::{TestCluster, BIN};
use tonic::Code;

const ONE_REGION: [(&str, [f64; 2]); 1] = [("eu-west", [-6.26, 53.35])];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_credentials_are_refused_with_a_status_and_change_nothing() {
    let cluster = TestCluster::start_regions_tls(&ONE_REGION, 3, 3, "", None);
    let good = cluster.client(0).await.with_consistency(proto::Consistency::All);
    good.put(b"guarded", b"v0", None).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = layout::ca_cert_path(&cluster.certs_dir());
    let addr = cluster.nodes[0].addr;

    let foreign = foreign_ca().client(support::TEST_CLIENT, Validity::days(1)).unwrap();
    let old = cluster_ca(&cluster).client(support::TEST_CLIENT, expired()).unwrap();
    let cases: Vec<(&str, String, Security, Code, &str, &str)> = vec![
        ("plaintext", format!("http://{addr}"), Security::none(), Code::Unauthenticated, "TLS", "plaintext"),
        (
            "no certificate",
            format!("https://{addr}"),
            Security::tls(ca_file.clone(), None),
            Code::Unauthenticated,
            "no credentials",
            "no_credentials",
        ),
        (
            "a certificate of another CA",
            format!("https://{addr}"),
            files(&cluster, tmp.path(), "foreign", &foreign),
            Code::Unauthenticated,
            "not issued by this deployment's CA",
            "unknown_ca",
        ),
        (
            "an expired certificate",
            format!("https://{addr}"),
            files(&cluster, tmp.path(), "expired", &old),
            Code::Unauthenticated,
            "expired",
            "expired",
        ),
    ];
    for (what, endpoint, security, code, says, reason) in cases {
        let before = rejections(&cluster, 0, reason);
        let c = Client::connect_with(&endpoint, &security)
            .await
            .unwrap_or_else(|e| panic!("{what}: the connection itself is accepted, to be answered: {e}"));
        let c = c.with_consistency(proto::Consistency::One);
        let err = c.put(b"guarded", b"evil", None).await.expect_err(what);
        let code = Some(geokv_client::Code::from_i32(code as i32));
        assert_eq!(err.code(), code, "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: the message says {says:?}: {err}");
        assert_eq!(err.reason(), Some(reason.to_ascii_uppercase().as_str()), "{what}: the ErrorInfo reason");
        let err = c.get(b"guarded").await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: a read is refused too: {err}");
        assert!(rejections(&cluster, 0, reason) >= before + 2, "{what}: counted under reason {reason}");
        assert_eq!(register(&good, b"guarded").await.as_deref(), Some(&b"v0"[..]), "{what} changed the key");
    }
    // The metrics port: HTTPS, and the status page (which gathers the deployment's status) and
    // metrics only for a certificate of the CA; health for anyone.
    let (code, body) = curl(&cluster, 0, "/status.json", &Security::tls(ca_file.clone(), None));
    assert_eq!(code, 401, "no certificate: {body}");
    assert!(body.contains("certificate of the deployment CA"), "{body}");
    let (code, _) = curl(&cluster, 0, "/status.json", &files(&cluster, tmp.path(), "foreign", &foreign));
    assert!(
        code == 401 || code == 0,
        "a foreign certificate reads nothing (refused, or no handshake): {code}"
    );
    let (code, body) = curl(&cluster, 0, "/healthz", &Security::tls(ca_file.clone(), None));
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = curl(&cluster, 0, "/status.json", &cluster.client_security());
    assert_eq!(code, 200, "{body}");
    let metrics = cluster.nodes[0].metrics_addr.unwrap();
    let out = Command::new("curl").args(["-s", &format!("http://{metrics}/metrics")]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("HTTPS"),
        "plaintext to the metrics port is told to use HTTPS"
    );

    // The CLI over TLS with a client certificate (its --key flag beside commands' KEY
    // arguments), and refused without one.
    let me = cluster.client_security();
    let cli = |with_cert: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["--endpoint", &format!("https://{addr}"), "--ca"]).arg(&ca_file);
        if with_cert {
            cmd.arg("--cert").arg(me.cert.as_ref().unwrap()).arg("--key").arg(me.key.as_ref().unwrap());
        }
        cmd.args(["get", "guarded"]).env_remove("GEOKV_CERT").env_remove("GEOKV_KEY").output().unwrap()
    };
    let out = cli(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("v0"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = cli(false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no credentials"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client that trusts another CA does not trust the node: it never sends the request.
    let other_ca = tmp.path().join("other-ca.pem");
    std::fs::write(&other_ca, Ca::create("elsewhere", Validity::days(1)).unwrap().1.cert_pem).unwrap();
    let refused = Client::connect_with(&format!("https://{addr}"), &Security::tls(other_ca, None)).await;
    assert!(refused.is_err(), "a node certificate of an untrusted CA is refused by the client");
    assert_eq!(register(&good, b"guarded").await.as_deref(), Some(&b"v0"[..]));
}

/// A refused peer-port caller: what it is, the address it calls, its TLS settings, the node
/// it claims to be, and the status code, message fragment and metric reason it gets.
type PeerCase<'a> = (&'a str, String, Security, Option<u64>, Code, &'a str, &'a str);

/// A peer-port request naming, when `claim` is set, the node it comes from.
fn claiming<T>(msg: T, claim: Option<u64>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(n) = claim {
        req.metadata_mut().insert("x-geokv-from", n.to_string().parse().unwrap());
    }
    req
}

/// A peer-port call that would overwrite `guarded` with another key's newer state.
fn overwrite(state: &[u8]) -> pb::MergeRequest {
    pb::MergeRequest { key: b"guarded".to_vec(), state: state.to_vec(), hint_for: None, ship: true }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_nodes_of_the_topology_may_call_the_peer_port() {
    let cluster = TestCluster::start_regions_tls(&ONE_REGION, 3, 3, "", None);
    let good = cluster.client(0).await.with_consistency(proto::Consistency::All);
    good.put(b"guarded", b"v0", None).await.unwrap();
    good.put(b"other", b"evil", None).await.unwrap();
    // A node may fetch the newer state of `other`: the payload of the attempts below.
    let mut as_node = cluster.peer_client(0).await.unwrap();
    let state = as_node
        .fetch(pb::FetchRequest { key: b"other".to_vec(), ..Default::default() })
        .await
        .expect("a node of the topology may call the peer port")
        .into_inner()
        .state;
    assert!(!state.is_empty());

    let tmp = tempfile::tempdir().unwrap();
    let peer = cluster.peer_addrs[0].to_string();
    let ca = cluster_ca(&cluster);
    let client_cert = cluster.client_security();
    let stranger =
        files(&cluster, tmp.path(), "stranger", &ca.node(9, "mars", &[], Validity::days(1)).unwrap());
    let misplaced =
        files(&cluster, tmp.path(), "misplaced", &ca.node(2, "mars", &[], Validity::days(1)).unwrap());
    let foreign = files(
        &cluster,
        tmp.path(),
        "foreign",
        &foreign_ca().node(2, "eu-west", &[], Validity::days(1)).unwrap(),
    );
    let cases: Vec<PeerCase> = vec![
        (
            "plaintext",
            format!("http://{peer}"),
            Security::none(),
            None,
            Code::Unauthenticated,
            "TLS",
            "plaintext",
        ),
        (
            "a client certificate",
            peer.clone(),
            client_cert,
            None,
            Code::PermissionDenied,
            "client certificate to the peer port",
            "client_on_peer_port",
        ),
        (
            "node 2 claiming to be node 3",
            peer.clone(),
            cluster.peer_security(2),
            Some(3),
            Code::PermissionDenied,
            "claims to come from node 3",
            "wrong_node",
        ),
        (
            "a node of a region the deployment lacks",
            peer.clone(),
            stranger,
            None,
            Code::PermissionDenied,
            "not a region of this deployment",
            "unknown_node",
        ),
        (
            "a node of the topology, certified for another region",
            peer.clone(),
            misplaced,
            None,
            Code::PermissionDenied,
            "the topology puts node 2 in region eu-west",
            "wrong_region",
        ),
        (
            "a node certificate of another CA",
            peer.clone(),
            foreign,
            None,
            Code::Unauthenticated,
            "CA",
            "unknown_ca",
        ),
    ];
    for (what, endpoint, security, claim, code, says, reason) in cases {
        let before = rejections(&cluster, 0, reason);
        let channel =
            geokv_client::grpc::channel(&endpoint, &security).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut c = pb::cluster_client::ClusterClient::new(channel);
        let err = c.merge(claiming(overwrite(&state), claim)).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(says), "{what}: the message says {says:?}: {}", err.message());
        let fetch = pb::FetchRequest { key: b"guarded".to_vec(), ..Default::default() };
        let err = c.fetch(claiming(fetch, claim)).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: reading a replica is refused too");
        let link = claiming(pb::SetLinkRequest { destination: "eu-west".into(), link: None }, claim);
        let err = c.set_link(link).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: changing a link is refused too");
        assert!(rejections(&cluster, 0, reason) >= before + 3, "{what}: counted under reason {reason}");
        assert_eq!(register(&good, b"guarded").await.as_deref(), Some(&b"v0"[..]), "{what} changed the key");
    }
    // Gossip: a datagram not sealed with the deployment's gossip key is dropped and counted.
    let before = rejections(&cluster, 0, "bad_seal");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"a forged gossip datagram claiming node 2 is down", cluster.peer_addrs[0]).unwrap();
    let dropped = support::wait_until(Duration::from_secs(10), || async {
        rejections(&cluster, 0, "bad_seal") > before
    })
    .await;
    assert!(dropped, "an unsealed gossip datagram is dropped and counted");

    // The same merge from a node, claiming to be itself, goes through: the refusals above were
    // for the credentials, not the request.
    let req = claiming(overwrite(&state), Some(2));
    let mut as_node_2 = pb::cluster_client::ClusterClient::new(
        geokv_client::grpc::channel(&peer, &cluster.peer_security(2)).await.unwrap(),
    );
    as_node_2.merge(req).await.expect("node 2 may merge on node 1");
}

fn two_node_topology(dir: &Path) -> PathBuf {
    let topo = dir.join("topology.toml");
    let port = |_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ports: Vec<u16> = (0..4).map(port).collect();
    std::fs::write(
        &topo,
        format!(
            "[[regions]]\nname = \"eu-west\"\nlocation = [0.0, 0.0]\njurisdiction = \"eu\"\nreplication_factor = 1\n\
             [[nodes]]\nid = 1\nregion = \"eu-west\"\nclient_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\n\
             [[nodes]]\nid = 2\nregion = \"eu-west\"\nclient_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\n",
            ports[0], ports[1], ports[2], ports[3]
        ),
    )
    .unwrap();
    topo
}

/// Runs `geokv server` with `config` until it exits (at most 60 s); its stderr.
fn run_until_exit(config: &Path) -> String {
    let mut child = Command::new(BIN)
        .args(["server", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the server started; it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_node_of_a_multi_node_topology_refuses_to_start_without_tls_unless_told_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let topo = two_node_topology(dir.path());
    let config = dir.path().join("geokv.toml");
    let base = format!("node_id = 1\ndata_dir = {:?}\ntopology = {:?}\n", dir.path().join("data"), topo);
    std::fs::write(&config, &base).unwrap();
    let err = run_until_exit(&config);
    assert!(err.contains("no [tls] section") && err.contains("insecure = true"), "{err}");
    assert!(!dir.path().join("data").join("CURRENT").exists(), "no data was touched");

    // Both at once is a contradiction, named as one.
    std::fs::write(
        &config,
        format!("{base}insecure = true\n[tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n"),
    )
    .unwrap();
    let err = run_until_exit(&config);
    assert!(err.contains("insecure") && err.contains("[tls]"), "{err}");

    // TLS files that are not there are named.
    std::fs::write(
        &config,
        format!("{base}[tls]\nca = \"missing-ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n"),
    )
    .unwrap();
    let err = run_until_exit(&config);
    assert!(err.contains("missing-ca.pem") || err.contains("n.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ca_and_node_certificate_take_effect_on_sighup_while_requests_carry_on() {
    let cluster = TestCluster::start_regions_tls(&ONE_REGION, 1, 1, "", None);
    let certs = cluster.certs_dir();
    let tmp = tempfile::tempdir().unwrap();
    let endpoint = cluster.nodes[0].endpoint();
    let (new_ca, new_ca_files) = Ca::create("next CA", Validity::days(2)).unwrap();
    let mut new_client = files(
        &cluster,
        tmp.path(),
        "next-client",
        &new_ca.client(support::TEST_CLIENT, Validity::days(1)).unwrap(),
    );
    let c = Client::connect_with(&endpoint, &new_client).await.unwrap();
    let err = c.put(b"k", b"v", None).await.expect_err("a certificate of the next CA, before the rotation");
    assert_eq!(err.code(), Some(geokv_client::Code::Unauthenticated), "{err}");

    // Writes on an established connection all through the rotation.
    let writer = cluster.client(0).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                writer.increment(b"during", 1, None).await.expect("no request fails during a reload");
                n += 1;
            }
            n
        })
    };
    // Step 1: trust both CAs.
    let old_ca = std::fs::read_to_string(layout::ca_cert_path(&certs)).unwrap();
    std::fs::write(layout::ca_cert_path(&certs), format!("{old_ca}{}", new_ca_files.cert_pem)).unwrap();
    cluster.nodes[0].signal("HUP");
    let accepted = support::wait_until(Duration::from_secs(20), || async {
        let c = Client::connect_with(&endpoint, &new_client).await;
        match c {
            Ok(c) => c.put(b"k", b"from the next CA", None).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(accepted, "after SIGHUP the node takes certificates of the next CA");
    // Step 2: the node's own certificate from the next CA; a client trusting only the next CA
    // connects once the node has reloaded it.
    let next_node = new_ca.node(1, "eu-west", &["127.0.0.1".into()], Validity::days(1)).unwrap();
    let own = layout::node_paths(&certs, 1);
    std::fs::write(&own.key, &next_node.key_pem).unwrap();
    std::fs::write(&own.cert, &next_node.cert_pem).unwrap();
    cluster.nodes[0].signal("HUP");
    let only_next = tmp.path().join("only-next-ca.pem");
    std::fs::write(&only_next, &new_ca_files.cert_pem).unwrap();
    new_client.ca = Some(only_next);
    let served = support::wait_until(Duration::from_secs(20), || async {
        match Client::connect_with(&endpoint, &new_client).await {
            Ok(c) => c.get(b"k").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(served, "after SIGHUP the node presents its new certificate");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = load.await.unwrap();
    assert!(n > 0);
    let c = Client::connect_with(&endpoint, &new_client).await.unwrap();
    let total = match c.get(b"during").await.unwrap().and_then(|e| e.value).and_then(|v| v.kind) {
        Some(proto::value::Kind::Counter(v)) => v as u64,
        other => panic!("{other:?}"),
    };
    assert_eq!(total, n, "every increment made during the rotation counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_batch_must_name_the_node_whose_certificate_sends_it() {
    let regions = [("eu-west", [-6.26, 53.35]), ("us-east", [-77.49, 39.04])];
    let cluster = TestCluster::start_regions_tls(&regions, 1, 1, "", None);
    let delta = |state: Vec<u8>| geokv_replication::Delta { key: b"forged".to_vec(), state, stamp: 0 };
    // A real state to carry: the one us-east holds for a key written there.
    let us = cluster.client(1).await;
    us.put(b"template", b"forged value", None).await.unwrap();
    let mut as_us = cluster.peer_client(1).await.unwrap();
    let state = as_us
        .fetch(pb::FetchRequest { key: b"template".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .state;
    // Node 1 (eu-west) opens a stream to us-east with its own certificate, but its batch says it
    // comes from node 7 of ap-south.
    let batch = geokv_replication::Batch {
        origin_region: "ap-south".into(),
        origin_node: 7,
        after_seq: 0,
        last_seq: 1,
        hlc: 0,
        deltas: vec![delta(state)],
    };
    let (payload, _) = batch.encode(3);
    let msg = pb::ReplicationBatch { payload, last_seq: 1, residency_version: 0, format: 1 };
    let channel = geokv_client::grpc::channel(&cluster.peer_addrs[1].to_string(), &cluster.peer_security(1))
        .await
        .unwrap();
    let mut as_eu = pb::cluster_client::ClusterClient::new(channel);
    let mut acks = as_eu.replicate(futures::stream::iter(vec![msg])).await.unwrap().into_inner();
    let ack = acks.message().await.unwrap().expect("an acknowledgement");
    assert!(!ack.ok, "a batch naming another origin is refused: {ack:?}");
    assert!(ack.error.contains("node 1 of region eu-west sent it"), "{}", ack.error);
    assert_eq!(register(&us, b"forged").await, None, "nothing stored");
}
