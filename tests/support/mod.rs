//! Test harness: real `geokv` server processes on free loopback ports, with temporary data
//! directories, that tests can kill (SIGKILL) and restart.

#![allow(dead_code)]

pub mod tls;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use geokv_client::{Client, Security};

pub const BIN: &str = env!("CARGO_BIN_EXE_geokv");

/// A `geokv server` child process.
pub struct ServerProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// The metrics endpoint, when the config asks for one.
    pub metrics_addr: Option<SocketAddr>,
    /// Set when the server says it votes in quorum reads ("geokv serving reads"): a node on a
    /// new data directory first recovers its keys from its peers.
    serving: Arc<AtomicBool>,
    /// How [`ServerProcess::client`] connects (TLS and a client certificate in a TLS cluster).
    pub security: Security,
}

/// Writes a config file for node 1 in `dir` with `extra` TOML appended.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let data_dir = dir.join("data");
    let config = dir.join("geokv.toml");
    let text = format!(
        "node_id = 1\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n{extra}\n",
        data_dir.display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    config
}

impl ServerProcess {
    /// Starts a server in `dir` (config written there) and waits until it listens.
    pub fn start(dir: &Path, extra_config: &str) -> ServerProcess {
        let config = write_config(dir, extra_config);
        Self::start_with_config(&config, dir.join("data"))
    }

    pub fn start_with_config(config: &Path, data_dir: PathBuf) -> ServerProcess {
        Self::try_start_with_config(config, data_dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server; an error if it exits (e.g. its port was taken) or stays silent for 60 s.
    pub fn try_start_with_config(config: &Path, data_dir: PathBuf) -> Result<ServerProcess, String> {
        let mut child = Command::new(BIN)
            .args(["server", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn geokv server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let serving = Arc::new(AtomicBool::new(false));
        let serves = serving.clone();
        std::thread::spawn(move || {
            let mut metrics = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.trim() == "geokv serving reads" {
                    serves.store(true, Ordering::SeqCst);
                }
                let metrics_line = line
                    .strip_prefix("geokv metrics on http://")
                    .or_else(|| line.strip_prefix("geokv metrics on https://"));
                if let Some(m) = metrics_line {
                    metrics = m.trim().strip_suffix("/metrics").map(str::to_string);
                }
                if let Some(addr) = line.strip_prefix("geokv listening on ") {
                    let _ = tx.send((addr.trim().to_string(), metrics.take()));
                }
            }
        });
        let (addr, metrics_addr) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((a, m)) => (
                a.parse().expect("server printed a socket address"),
                m.map(|m| m.parse().expect("server printed a metrics address")),
            ),
            Err(_) => {
                let _ = child.kill();
                return Err(format!("geokv server did not start (status: {:?})", child.wait()));
            }
        };
        Ok(ServerProcess {
            child: Some(child),
            addr,
            config: config.to_path_buf(),
            data_dir,
            metrics_addr,
            serving,
            security: Security::none(),
        })
    }

    /// Whether the server said it votes in quorum reads.
    pub fn serving_reads(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// Waits (at most `timeout`) until the server votes in quorum reads; whether it does.
    pub fn wait_serving_reads(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.serving_reads() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.security.ca.is_some() { "https" } else { "http" };
        // A node whose topology address is a DNS name listens on every interface.
        let addr = if self.addr.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), self.addr.port())
        } else {
            self.addr
        };
        format!("{scheme}://{addr}")
    }

    pub async fn client(&self) -> Client {
        Client::connect_with(&self.endpoint(), &self.security).await.expect("connect to test server")
    }

    /// Waits (at most `timeout`) for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reap");
        }
    }

    /// Starts the same node again (same config and data directory), on a new port.
    pub fn restart(&mut self) {
        self.kill9();
        let mut again = ServerProcess::start_with_config(&self.config, self.data_dir.clone());
        again.security = self.security.clone();
        *self = again;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port that was free a moment ago (the topology needs addresses before nodes start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One region of `n` real `geokv` processes on loopback, replication factor 3.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<ServerProcess>,
    pub peer_addrs: Vec<SocketAddr>,
    /// Region of each node (same order as `nodes`).
    pub node_regions: Vec<String>,
    /// Regions: (name, [longitude, latitude], replication factor).
    regions: Vec<(String, [f64; 2], usize)>,
    /// Extra config for every node (appended), and top-level settings per region.
    extra: String,
    region_top: Vec<(String, String)>,
    /// Residency policy text, written next to the topology and named by it.
    policy: Option<String>,
    /// `cluster.suspect_timeout_ms` of every node (FAST_CLUSTER's, unless a test with a
    /// heavier load asks for more patience).
    suspect_timeout_ms: u64,
    /// Whether the nodes run with TLS (certificates from `geokv_tls` in `certs_dir()`); else
    /// they run `insecure = true`.
    tls: bool,
    /// The host the topology names every node by: `127.0.0.1`, or a DNS name (`localhost`).
    host: &'static str,
}

/// The client principal whose certificate a TLS cluster's test clients present.
pub const TEST_CLIENT: &str = "test-client";

/// Three regions at real city locations (Dublin, Ashburn, Singapore).
pub const THREE_REGIONS: [(&str, [f64; 2]); 3] =
    [("eu-west", [-6.26, 53.35]), ("us-east", [-77.49, 39.04]), ("ap-southeast", [103.82, 1.35])];

/// Cluster timeouts short enough for tests on a loaded machine. The WAL is written but not
/// fsynced: the tests kill processes, not machines, and the page cache survives a process.
/// Every node serves metrics on a free port (the `[cluster]` section stays last: the harness
/// appends `join` to it).
pub const FAST_CLUSTER: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n[storage]\nsync = false\n[cluster]\nrequest_timeout_ms = 1000\nprobe_interval_ms = 100\nsuspect_timeout_ms = 500\nhandoff_interval_ms = 200\n";

/// Config that lets a test inject faults into a node (`InjectFaults` on its peer port). Pass
/// it as `extra` (it opens its own section, after FAST_CLUSTER's `[cluster]`).
pub const FAULTS_ENABLED: &str = "[faults]\nenabled = true\n";

/// Runs `start` up to three times (a port picked free may be taken before a node binds it);
/// panics with the last error, naming `what`.
fn with_retries(what: &str, start: impl Fn() -> Result<TestCluster, String>) -> TestCluster {
    let mut last = String::new();
    for _ in 0..3 {
        match start() {
            Ok(c) => return c,
            Err(e) => last = e,
        }
    }
    panic!("could not start {what}: {last}");
}

/// FAST_CLUSTER and `extra` for a node's config: the settings `extra` gives itself (its first
/// lines belong to FAST_CLUSTER's `[cluster]` section) replace FAST_CLUSTER's, and its lines
/// `storage.KEY = VALUE` go into the `[storage]` section. Returns (FAST_CLUSTER, what follows
/// it).
fn cluster_section(extra: &str) -> (String, String) {
    let storage: String =
        extra.lines().filter_map(|l| l.strip_prefix("storage.")).map(|l| format!("{l}\n")).collect();
    let rest: String =
        extra.lines().filter(|l| !l.starts_with("storage.")).map(|l| format!("{l}\n")).collect();
    let fast: String = FAST_CLUSTER
        .lines()
        .filter(|l| {
            let key = l.split(" = ").next().unwrap_or_default();
            !l.contains(" = ") || !rest.lines().any(|e| e.starts_with(&format!("{key} = ")))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    (fast.replace("[storage]\n", &format!("[storage]\n{storage}")), rest)
}

impl TestCluster {
    /// One region of `n` nodes with replication factor `rf`, with `extra` appended to every
    /// node's config (after FAST_CLUSTER; open a section, e.g. [`FAULTS_ENABLED`]).
    pub fn start_region(n: usize, rf: usize, extra: &str) -> TestCluster {
        with_retries(&format!("a {n}-node region"), || {
            Self::try_start_regions(&[("eu-west", [-6.26, 53.35])], n, rf, extra)
        })
    }

    /// Replaces the faults in force on node `i` (0-based), through its peer port; the answer
    /// echoes the faults now in force.
    pub async fn inject_faults(
        &self,
        i: usize,
        faults: geokv_proto::v1::InjectFaultsRequest,
    ) -> Result<geokv_proto::v1::InjectFaultsResponse, tonic::Status> {
        let mut c = self
            .peer_client(i)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("cannot connect to node {}: {e}", i + 1)))?;
        c.inject_faults(faults).await.map(tonic::Response::into_inner)
    }

    /// One region of `n` nodes (replication factor `rf`) whose topology names every node by
    /// the DNS name `localhost` (resolved when nodes connect), TLS on.
    pub fn start_region_by_name(n: usize, rf: usize) -> TestCluster {
        let extra = "[replication]\nemulate_wan = true\n";
        with_retries("a region named by host name", || {
            Self::try_start_regions_tls(
                &[("eu-west", [-6.26, 53.35])],
                n,
                rf,
                extra,
                &[],
                None,
                true,
                "localhost",
            )
        })
    }

    /// [`TestCluster::start_regions_with_extra`] with TLS on every port and every link:
    /// certificates for every node and for [`TEST_CLIENT`] from a CA made for the test.
    pub fn start_regions_tls(
        regions: &[(&str, [f64; 2])],
        per_region: usize,
        n: usize,
        extra: &str,
        policy: Option<&str>,
    ) -> TestCluster {
        Self::start_regions_with_extra_top(regions, per_region, n, extra, &[], policy, true)
    }

    /// Starts `n` nodes. Ports are picked free just before the nodes bind them, so another
    /// process can take one in between: then the whole cluster is started again on new ports.
    pub fn start(n: usize) -> TestCluster {
        with_retries(&format!("a {n}-node cluster"), || Self::try_start(n))
    }

    fn try_start(n: usize) -> Result<TestCluster, String> {
        Self::try_start_regions(&[("eu-west", [-6.26, 53.35])], n, 3, "")
    }

    /// Starts `per_region` nodes in each of `regions` (replication factor `n` everywhere),
    /// with `extra` appended to every node's config; WAN links between regions are emulated.
    pub fn start_regions(regions: &[(&str, [f64; 2])], per_region: usize, n: usize) -> TestCluster {
        Self::start_regions_with(regions, per_region, n, &[])
    }

    /// [`TestCluster::start_regions`], with top-level config lines for the nodes of some
    /// regions (e.g. `("eu-west", "clock_offset_ms = 500")`) and for all (region `"*"`).
    pub fn start_regions_with(
        regions: &[(&str, [f64; 2])],
        per_region: usize,
        n: usize,
        top: &[(&str, &str)],
    ) -> TestCluster {
        Self::start_regions_with_extra_top(regions, per_region, n, "", top, None, false)
    }

    /// [`TestCluster::start_regions`] (WAN links emulated) with `extra` appended to every
    /// node's config after the `[replication]` section (open a section of its own) and an
    /// optional residency policy.
    pub fn start_regions_with_extra(
        regions: &[(&str, [f64; 2])],
        per_region: usize,
        n: usize,
        extra: &str,
        policy: Option<&str>,
    ) -> TestCluster {
        Self::start_regions_with_extra_top(regions, per_region, n, extra, &[], policy, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_regions_with_extra_top(
        regions: &[(&str, [f64; 2])],
        per_region: usize,
        n: usize,
        extra: &str,
        top: &[(&str, &str)],
        policy: Option<&str>,
        tls: bool,
    ) -> TestCluster {
        let extra = format!("[replication]\nemulate_wan = true\n{extra}");
        with_retries("the regions", || {
            Self::try_start_regions_tls(regions, per_region, n, &extra, top, policy, tls, "127.0.0.1")
        })
    }

    /// [`TestCluster::start_regions`] with a residency policy (the text of its file).
    pub fn start_regions_with_policy(
        regions: &[(&str, [f64; 2])],
        per_region: usize,
        n: usize,
        policy: &str,
    ) -> TestCluster {
        Self::start_regions_with_extra_top(regions, per_region, n, "", &[], Some(policy), false)
    }

    fn try_start_regions(
        regions: &[(&str, [f64; 2])],
        per_region: usize,
        n: usize,
        extra: &str,
    ) -> Result<TestCluster, String> {
        Self::try_start_regions_with(regions, per_region, n, extra, &[], None)
    }

    fn try_start_regions_with(
        regions: &[(&str, [f64; 2])],
        per_region: usize,
        n: usize,
        extra: &str,
        top: &[(&str, &str)],
        policy: Option<&str>,
    ) -> Result<TestCluster, String> {
        Self::try_start_regions_tls(regions, per_region, n, extra, top, policy, false, "127.0.0.1")
    }

    #[allow(clippy::too_many_arguments)]
    fn try_start_regions_tls(
        regions: &[(&str, [f64; 2])],
        per_region: usize,
        n: usize,
        extra: &str,
        top: &[(&str, &str)],
        policy: Option<&str>,
        tls: bool,
        host: &'static str,
    ) -> Result<TestCluster, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = TestCluster {
            dir,
            nodes: Vec::new(),
            peer_addrs: Vec::new(),
            node_regions: Vec::new(),
            regions: regions.iter().map(|(name, loc)| (name.to_string(), *loc, n)).collect(),
            extra: extra.to_string(),
            region_top: top.iter().map(|(r, t)| (r.to_string(), t.to_string())).collect(),
            policy: policy.map(str::to_string),
            // Tests with a residency policy load nine nodes hard (thousands of keys through every
            // region): a peer answering probes late under that load is not dead.
            suspect_timeout_ms: if policy.is_some() { 3000 } else { 500 },
            tls,
            host,
        };
        for (name, _) in regions {
            for _ in 0..per_region {
                cluster.node_regions.push(name.to_string());
            }
        }
        let n = cluster.node_regions.len();
        for _ in 0..n {
            cluster.peer_addrs.push(format!("127.0.0.1:{}", free_port()).parse().unwrap());
        }
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        cluster.write_topology(&client_ports);
        if tls {
            cluster.issue_certificates();
        }
        for (i, _) in client_ports.iter().enumerate() {
            let node = cluster.start_node(i + 1, false)?;
            cluster.nodes.push(node);
        }
        // New data directories: each node serves reads once its first exchanges with its
        // region's peers are done (empty with empty: at once).
        for (i, node) in cluster.nodes.iter().enumerate() {
            if !node.wait_serving_reads(Duration::from_secs(60)) {
                return Err(format!("node {} did not start serving reads within 60 s", i + 1));
            }
        }
        Ok(cluster)
    }

    fn topology_path(&self) -> PathBuf {
        self.dir.path().join("topology.toml")
    }

    /// Writes the topology file: node i+1 has `client_ports[i]` and `peer_addrs[i]`.
    fn write_topology(&self, client_ports: &[u16]) {
        let mut topology = String::new();
        if let Some(policy) = &self.policy {
            std::fs::write(self.dir.path().join("residency.toml"), policy).unwrap();
            topology.push_str("residency = \"residency.toml\"\n");
        }
        for (name, [lon, lat], n) in &self.regions {
            let jurisdiction = name.split('-').next().unwrap_or("xx");
            topology.push_str(&format!(
                "[[regions]]\nname = \"{name}\"\nlocation = [{lon}, {lat}]\njurisdiction = \"{jurisdiction}\"\nreplication_factor = {n}\n\n"
            ));
        }
        for (i, (client, peer)) in client_ports.iter().zip(&self.peer_addrs).enumerate() {
            let region = self.node_regions.get(i).map(String::as_str).unwrap_or(&self.regions[0].0);
            topology.push_str(&format!(
                "\n[[nodes]]\nid = {}\nregion = \"{region}\"\nclient_addr = \"{host}:{client}\"\npeer_addr = \"{host}:{}\"\n",
                i + 1,
                peer.port(),
                host = self.host
            ));
        }
        std::fs::write(self.topology_path(), topology).unwrap();
    }

    fn start_node(&self, id: usize, join: bool) -> Result<ServerProcess, String> {
        let node_dir = self.dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        let config = node_dir.join("geokv.toml");
        let region = self.node_regions.get(id - 1).cloned().unwrap_or_default();
        let top: String = self
            .region_top
            .iter()
            .filter(|(r, _)| *r == region || r == "*")
            .map(|(_, t)| format!("{t}\n"))
            .collect();
        let (fast, extra) = cluster_section(&self.extra);
        let (top, tls) = if self.tls {
            let certs = geokv_tls::layout::node_paths(&self.certs_dir(), id as u64);
            let ca = geokv_tls::layout::ca_cert_path(&self.certs_dir());
            let gossip = geokv_tls::layout::gossip_key_path(&self.certs_dir());
            let files = format!(
                "ca = {:?}\ncert = {:?}\nkey = {:?}\ngossip_key = {:?}\n",
                ca, certs.cert, certs.key, gossip
            );
            (top, format!("[tls]\n{files}"))
        } else {
            (format!("insecure = true\n{top}"), String::new())
        };
        let text = format!(
            "node_id = {id}\ndata_dir = {:?}\ntopology = {:?}\n{top}{}join = {join}\n{extra}{tls}",
            node_dir.join("data").display().to_string(),
            self.topology_path().display().to_string(),
            fast.replace(
                "suspect_timeout_ms = 500",
                &format!("suspect_timeout_ms = {}", self.suspect_timeout_ms)
            ),
        );
        std::fs::write(&config, text).unwrap();
        let mut node = ServerProcess::try_start_with_config(&config, node_dir.join("data"))?;
        node.security = self.client_security();
        Ok(node)
    }

    /// Starts one more node that joins the running region (`cluster.join = true`); the
    /// topology file is rewritten with it (running nodes learn it by gossip). Returns its
    /// index.
    pub fn add_node(&mut self) -> usize {
        let client_ports: Vec<u16> = self.nodes.iter().map(|n| n.addr.port()).chain([free_port()]).collect();
        self.peer_addrs.push(format!("127.0.0.1:{}", free_port()).parse().unwrap());
        self.node_regions.push(self.regions[0].0.clone());
        self.write_topology(&client_ports);
        if self.tls {
            self.issue_certificates();
        }
        let node = self.start_node(self.nodes.len() + 1, true).unwrap_or_else(|e| panic!("{e}"));
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Field `field` of node `id` as node `i` (0-based) sees it, through
    /// `geokv admin peer-stats --json` ("unknown" if the node does not answer or know it).
    pub fn member_field(&self, i: usize, id: u64, field: &str) -> String {
        let peer = self.peer_addrs[i].to_string();
        let out = Command::new(BIN)
            .args(["--json", "admin", "peer-stats", "--peer", &peer])
            .args(self.peer_cli_args(i))
            .output()
            .unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        j["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["node_id"] == id))
            .and_then(|m| m[field].as_str())
            .unwrap_or("unknown")
            .to_string()
    }

    /// Client of node `i` (0-based).
    pub async fn client(&self, i: usize) -> Client {
        self.nodes[i].client().await
    }

    /// The raw states node `i` (0-based) holds for `keys`, read from its node-to-node service
    /// (`None` for a key it lacks; `None` overall if the node does not answer).
    pub async fn replica_states(&self, i: usize, keys: &[&[u8]]) -> Option<Vec<Option<geokv_core::Record>>> {
        let mut c = self.peer_client(i).await.ok()?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(Self::fetch(&mut c, key).await?);
        }
        Some(out)
    }

    async fn fetch(
        c: &mut geokv_proto::v1::cluster_client::ClusterClient<tonic::transport::Channel>,
        key: &[u8],
    ) -> Option<Option<geokv_core::Record>> {
        let state = c
            .fetch(geokv_proto::v1::FetchRequest { key: key.to_vec(), ..Default::default() })
            .await
            .ok()?
            .into_inner()
            .state;
        if state.is_empty() {
            return Some(None);
        }
        Some(Some(geokv_storage::codec::decode(&state).expect("replica state decodes")))
    }
}

impl ServerProcess {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...) to the process, if it runs.
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{name} {pid}");
        }
    }
}

impl TestCluster {
    /// One region of `n` nodes (replication factor `rf`) with fault injection enabled, and
    /// hinted handoff and anti-entropy so slow (10 minutes) that within a test a replica that
    /// missed a write keeps missing it: what a client then sees depends on the write and read
    /// paths alone.
    pub fn start_region_without_repair(n: usize, rf: usize) -> TestCluster {
        Self::start_region_without_repair_and(n, rf, "")
    }

    /// [`TestCluster::start_region_without_repair`] with more settings: `[cluster]` lines, or
    /// `storage.KEY = VALUE` lines, then sections of their own.
    pub fn start_region_without_repair_and(n: usize, rf: usize, more: &str) -> TestCluster {
        let extra = format!(
            "anti_entropy_interval_ms = 600000\nhandoff_interval_ms = 600000\n{more}{FAULTS_ENABLED}"
        );
        with_retries(&format!("a {n}-node region"), || {
            Self::try_start_regions(&[("eu-west", [-6.26, 53.35])], n, rf, &extra)
        })
    }

    /// [`TestCluster::start_regions`] with fault injection enabled on every node, and
    /// anti-entropy every 3 s (the first line of `extra` still belongs to `[cluster]`), so
    /// replicas that only anti-entropy can repair (a write kept by a coordinator killed before it
    /// sent it on) converge within a test's patience.
    pub fn start_regions_faulty(regions: &[(&str, [f64; 2])], per_region: usize, n: usize) -> TestCluster {
        let extra =
            format!("anti_entropy_interval_ms = 3000\n[replication]\nemulate_wan = true\n{FAULTS_ENABLED}");
        with_retries("the regions", || {
            Self::try_start_regions_with(regions, per_region, n, &extra, &[], None)
        })
    }
}

/// The raw HTTP answer (status line, headers and body) of `GET /metrics` on a plaintext
/// metrics port.
pub async fn scrape_raw(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics port");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

/// The value of the sample `name` whose labels include every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        let matches = n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}
