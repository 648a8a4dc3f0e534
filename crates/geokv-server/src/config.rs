//! The server configuration file (TOML). Every field is documented in
//! `topology/single-node.toml`; unknown fields are errors, and [`ServerConfig::validate`]
//! checks values with messages that name the file, the field and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use geokv_core::Limits;
use geokv_storage::StorageConfig;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This node's id: a positive integer, unique in the deployment, stable for the data dir.
    pub node_id: u64,
    /// Address for the gRPC API. Port 0 picks a free port (the bound address is printed).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory for the RocksDB data of this node.
    pub data_dir: PathBuf,
    /// Largest HLC stamp lead over our clock accepted from elsewhere, in milliseconds.
    #[serde(default = "default_drift")]
    pub max_clock_drift_ms: u64,
    /// Fault injection for tests only: shifts this node's HLC physical clock by this many
    /// milliseconds (positive: ahead). Process-wide. Leave at 0.
    #[serde(default)]
    pub clock_offset_ms: i64,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub sweeper: SweeperConfig,
    /// Topology file (regions and nodes, see topology/one-region.toml). Without one the node
    /// runs alone. A relative path is relative to this config file. With a topology, the node
    /// serves clients on its `client_addr` (and `listen` is ignored) and peers on `peer_addr`.
    #[serde(default)]
    pub topology: Option<PathBuf>,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub replication: crate::ReplicationConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub faults: FaultsConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// TLS on every port and mutual TLS between nodes (see docs/security.md). A node of a
    /// topology with more than one node refuses to start without it unless `insecure = true`.
    #[serde(default)]
    pub tls: Option<crate::security::TlsConfig>,
    /// Run plaintext and unauthenticated in a multi-node topology: only on a network where
    /// every host that can reach the node's ports is trusted. Not together with `[tls]`.
    #[serde(default)]
    pub insecure: bool,
    /// Roles and principals: who may read, write and administer what (see docs/security.md).
    /// Without it every caller with a certificate of the deployment CA may do everything.
    /// Needs `[tls]`.
    #[serde(default)]
    pub auth: Option<crate::security::auth::AuthConfig>,
}

/// The `[faults]` section: fault injection, for test clusters only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsConfig {
    /// Accept `InjectFaults` calls on the peer port (cut peers off, drop, delay and duplicate
    /// node-to-node messages, skew the HLC, slow the disk). Off: such calls are refused.
    pub enabled: bool,
}

/// The `[shutdown]` section: how a node drains on SIGTERM (see `RunningServer::drain`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Longest a drain may take, in milliseconds: in-flight requests, hint handoff and the
    /// flush must fit; what does not is abandoned (acknowledged writes are in the WAL).
    pub grace_period_ms: u64,
    /// How long the node keeps serving after readiness goes off, so load balancers and
    /// Kubernetes endpoints stop sending it requests before it refuses them, in milliseconds.
    pub drain_delay_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_period_ms: 30_000, drain_delay_ms: 0 }
    }
}

/// The `[metrics]` section: the HTTP endpoint with Prometheus metrics and the status page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the metrics endpoint (`/metrics`, `/` status page, `/status.json`); none:
    /// no endpoint. Port 0 picks a free port.
    pub listen: Option<String>,
}

/// The `[cluster]` section: timeouts of the regional cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Deadline of one node-to-node call, in milliseconds.
    pub request_timeout_ms: u64,
    /// A quorum read (and a write's first read) asks R replicas; if they have not all answered
    /// after this many milliseconds, the other healthy home replicas are asked too (a
    /// speculative retry). A replica that fails is replaced at once whatever this says. 0 asks
    /// every healthy home replica from the start (more messages, no wait on a slow replica).
    pub speculative_retry_ms: u64,
    /// Calls of one kind (replica state sends, fetches) in flight to one peer at most: what
    /// comes while they are all in flight goes together in the next call (`MergeMany`,
    /// `FetchMany`). Fewer: more items per call and less CPU per request, at the cost of a
    /// wait behind the calls in flight.
    pub peer_calls_in_flight: usize,
    /// SWIM probe period of the gossip membership protocol, in milliseconds: each period a
    /// node probes one peer over UDP (on its peer address); a probe unanswered within half the
    /// period goes through other peers, and a peer that fails both is suspect. Suspect peers
    /// get no writes (their writes go to stand-ins as hints).
    pub probe_interval_ms: u64,
    /// How long a suspect peer has to refute the suspicion before the region declares it dead.
    pub suspect_timeout_ms: u64,
    /// How often hints are offered to the nodes they are kept for, in milliseconds.
    pub handoff_interval_ms: u64,
    /// How often a Merkle anti-entropy round runs with every healthy peer, in milliseconds.
    pub anti_entropy_interval_ms: u64,
    /// Start as a new node of a running region: stream in the ranges it will own, then take
    /// them over. Only the first start reads this; the node's saved view says where it
    /// stands after that.
    pub join: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            request_timeout_ms: 2000,
            speculative_retry_ms: 50,
            peer_calls_in_flight: crate::peer::coalesce::CALLS_IN_FLIGHT,
            probe_interval_ms: 250,
            suspect_timeout_ms: 2000,
            handoff_interval_ms: 500,
            anti_entropy_interval_ms: 60_000,
            join: false,
        }
    }
}

/// The `[sweeper]` section: the background task that expires TTLs, purges old tombstones and
/// trims the change log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweeperConfig {
    /// Pause between sweeps, in milliseconds.
    pub interval_ms: u64,
    /// Most TTL-index entries handled per sweep.
    pub batch: usize,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        SweeperConfig { interval_ms: 1000, batch: 10_000 }
    }
}

fn default_listen() -> String {
    "127.0.0.1:7400".into()
}

fn default_drift() -> u64 {
    500
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: field `{field}` {problem}; {fix}")]
    Invalid { path: String, field: &'static str, problem: String, fix: String },
}

impl ServerConfig {
    /// A configuration with defaults for everything but identity and location.
    pub fn new(node_id: u64, data_dir: PathBuf) -> Self {
        ServerConfig {
            node_id,
            listen: default_listen(),
            data_dir,
            max_clock_drift_ms: default_drift(),
            clock_offset_ms: 0,
            storage: StorageConfig::default(),
            limits: Limits::default(),
            sweeper: SweeperConfig::default(),
            topology: None,
            cluster: ClusterConfig::default(),
            replication: crate::ReplicationConfig::default(),
            metrics: MetricsConfig::default(),
            faults: FaultsConfig::default(),
            shutdown: ShutdownConfig::default(),
            tls: None,
            insecure: false,
            auth: None,
        }
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let mut cfg = Self::parse(&text, &shown)?;
        if let (Some(tls), Some(dir)) = (cfg.tls.as_mut(), path.parent()) {
            tls.relative_to(dir);
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: ServerConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.into(), message: e.to_string() })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated at load")
    }

    /// Checks every value, naming the field and the fix.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, problem: String, fix: &str| ConfigError::Invalid {
            path: origin.into(),
            field,
            problem,
            fix: fix.into(),
        };
        if self.node_id == 0 {
            return Err(invalid("node_id", "is 0".into(), "give every node a positive integer id"));
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "listen",
                format!("is {:?}, not an IP address and port", self.listen),
                "write it like \"127.0.0.1:7400\" or \"[::1]:7400\"",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "is empty".into(), "name a directory for this node's data"));
        }
        if let Err(problem) = self.limits.validate() {
            return Err(invalid("limits", problem, "see the [limits] section of topology/single-node.toml"));
        }
        if !(1..=22).contains(&self.storage.compression_level) {
            return Err(invalid(
                "storage.compression_level",
                format!("is {}", self.storage.compression_level),
                "use a zstd level from 1 (fastest) to 22",
            ));
        }
        if self.storage.changelog_retention_entries == 0 {
            return Err(invalid(
                "storage.changelog_retention_entries",
                "is 0".into(),
                "keep at least 1 entry",
            ));
        }
        if self.sweeper.interval_ms == 0 || self.sweeper.batch == 0 {
            return Err(invalid("sweeper", "has a zero interval_ms or batch".into(), "use positive values"));
        }
        let c = &self.cluster;
        if c.request_timeout_ms == 0 || c.handoff_interval_ms == 0 || c.anti_entropy_interval_ms == 0 {
            return Err(invalid(
                "cluster",
                "has a zero timeout or interval".into(),
                "use positive milliseconds",
            ));
        }
        if !(1..=256).contains(&c.peer_calls_in_flight) {
            return Err(invalid(
                "cluster.peer_calls_in_flight",
                format!("is {}", c.peer_calls_in_flight),
                "use 1 to 256",
            ));
        }
        if c.probe_interval_ms < 10 || c.suspect_timeout_ms < c.probe_interval_ms {
            return Err(invalid(
                "cluster.suspect_timeout_ms",
                format!("is {} with probe_interval_ms {}", c.suspect_timeout_ms, c.probe_interval_ms),
                "keep 10 <= probe_interval_ms <= suspect_timeout_ms",
            ));
        }
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    "metrics.listen",
                    format!("is {listen:?}, not an IP address and port"),
                    "use e.g. \"127.0.0.1:9464\" (port 0 picks a free port), or leave it out for no endpoint",
                ));
            }
        }
        if self.replication.interval_ms == 0 {
            return Err(invalid(
                "replication.interval_ms",
                "is 0".into(),
                "use a positive number of milliseconds",
            ));
        }
        if self.tls.is_some() && self.insecure {
            return Err(invalid(
                "insecure",
                "is true while a [tls] section is set".into(),
                "remove `insecure = true` to run with TLS, or the [tls] section to run plaintext",
            ));
        }
        if let Some(auth) = &self.auth {
            if self.tls.is_none() {
                return Err(invalid(
                    "auth",
                    "is set without a [tls] section".into(),
                    "add [tls]: certificates and tokens are only safe over TLS",
                ));
            }
            if let Err((problem, fix)) = auth.validate() {
                return Err(invalid("auth", problem, &fix));
            }
        }
        if self.max_clock_drift_ms == 0 {
            return Err(invalid(
                "max_clock_drift_ms",
                "is 0".into(),
                "allow at least a few milliseconds (default 500)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = ServerConfig::parse("node_id = 3\ndata_dir = \"/tmp/x\"\n", "t.toml").unwrap();
        assert_eq!(cfg.node_id, 3);
        assert!(cfg.storage.sync);
        assert_eq!(cfg.limits, Limits::default());
    }

    #[test]
    fn fault_injection_is_off_unless_the_faults_section_turns_it_on() {
        let off = ServerConfig::parse("node_id = 1\ndata_dir = \"d\"\n", "t.toml").unwrap();
        assert!(!off.faults.enabled);
        let on = ServerConfig::parse("node_id = 1\ndata_dir = \"d\"\n[faults]\nenabled = true\n", "t.toml")
            .unwrap();
        assert!(on.faults.enabled);
    }

    #[test]
    fn the_documented_example_config_parses_to_the_defaults() {
        let text = include_str!("../../../topology/single-node.toml");
        let cfg = ServerConfig::parse(text, "topology/single-node.toml").unwrap();
        let defaults = ServerConfig::new(1, cfg.data_dir.clone());
        assert_eq!(cfg, defaults, "topology/single-node.toml documents the defaults; keep them in step");
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let err =
            ServerConfig::parse("node_id = 0\ndata_dir = \"/tmp/x\"\n", "a.toml").unwrap_err().to_string();
        assert!(err.contains("a.toml") && err.contains("node_id"), "{err}");
        let err = ServerConfig::parse("node_id = 1\ndata_dir = \"d\"\nlisten = \"nope\"\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen") && err.contains("127.0.0.1:7400"), "{err}");
        let err = ServerConfig::parse("node_id = 1\ndata_dir = \"d\"\nbogus = 1\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml") && err.contains("bogus"), "{err}");
        let err = ServerConfig::parse(
            "node_id = 1\ndata_dir = \"d\"\n[cluster]\npeer_calls_in_flight = 0\n",
            "d.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("peer_calls_in_flight") && err.contains("1 to 256"), "{err}");
        let err =
            ServerConfig::parse("node_id = 1\ndata_dir = \"d\"\n[limits]\nmax_key_bytes = 0\n", "d.toml")
                .unwrap_err()
                .to_string();
        assert!(err.contains("max_key_bytes"), "{err}");
        let err = ServerConfig::parse("node_id = 1\ndata_dir = \"d\"\n[faults]\nenable = true\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("f.toml") && err.contains("enable"), "{err}");
        let err = ServerConfig::parse("node_id = \"one\"\n", "e.toml").unwrap_err().to_string();
        assert!(err.contains("e.toml") && err.contains("line 1"), "{err}");
    }
}
