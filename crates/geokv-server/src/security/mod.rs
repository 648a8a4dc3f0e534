//! Transport security of a node: TLS on its ports, who a caller is, and what it may call.
//!
//! - [`TlsConfig`]: the `[tls]` section (the deployment CA, this node's certificate and key).
//! - [`NodeTls`]: those files loaded, reloaded on SIGHUP or when they change, serving the
//!   server side of every port and the client side of every call this node makes.
//! - [`listen`]: accepting connections (TLS, or plaintext to be refused with a status).
//! - [`gate`]: the layer in front of each port that verifies the caller's certificate and
//!   decides whether it may call that port at all.
//!
//! Certificates carry identities as `geokv_tls::names` defines them; `docs/security.md` has
//! the threat model.

pub mod auth;
pub mod gate;
pub mod listen;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use geokv_core::NodeId;
use geokv_tls::client::ClientTls;
use geokv_tls::files::TlsFiles;
use geokv_tls::server::Reloadable;
use geokv_tls::verify::Verifier;
use geokv_tls::TlsError;
use rustls::ServerConfig as RustlsServer;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

/// The `[tls]` section: TLS on the client, peer and metrics ports, and mutual TLS on every
/// call between nodes. Relative paths are relative to the config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the deployment CA (several certificates during a CA rotation).
    pub ca: PathBuf,
    /// PEM file of this node's certificate (`geokv certs` writes `node-<id>.pem`). `{node_id}`
    /// in the path stands for the node's id, so nodes can share one config file.
    pub cert: PathBuf,
    /// PEM file of this node's private key (`{node_id}` as in `cert`).
    pub key: PathBuf,
    /// How often the three files are checked for changes, in milliseconds (0: only on SIGHUP).
    #[serde(default = "default_reload_check_ms")]
    pub reload_check_ms: u64,
    /// File of the deployment's gossip key (64 hex digits, `geokv certs create` writes
    /// `gossip.key`): every gossip datagram is sealed with it (HMAC-SHA256) and one that does not
    /// open is dropped. Without it gossip is not authenticated (a warning at start).
    #[serde(default)]
    pub gossip_key: Option<PathBuf>,
}

fn default_reload_check_ms() -> u64 {
    5000
}

impl TlsConfig {
    /// The paths made absolute against the config file's directory.
    pub fn relative_to(&mut self, dir: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key].into_iter().chain(self.gossip_key.as_mut()) {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }

    /// The paths with `{node_id}` replaced by `id`.
    pub fn for_node(&self, id: NodeId) -> TlsConfig {
        let fill = |p: &PathBuf| PathBuf::from(p.to_string_lossy().replace("{node_id}", &id.to_string()));
        TlsConfig {
            ca: fill(&self.ca),
            cert: fill(&self.cert),
            key: fill(&self.key),
            gossip_key: self.gossip_key.as_ref().map(fill),
            ..self.clone()
        }
    }

    fn files(&self) -> TlsFiles {
        TlsFiles { ca: self.ca.clone(), cert: Some(self.cert.clone()), key: Some(self.key.clone()) }
    }
}

/// What is loaded from the files, swapped as a whole on reload.
struct Loaded {
    /// For the gRPC ports (ALPN h2).
    grpc: Arc<RustlsServer>,
    /// For the metrics port (ALPN http/1.1).
    http: Arc<RustlsServer>,
    verifier: Verifier,
}

/// What a port speaks inside TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Grpc,
    Http1,
}

/// A node's TLS: its certificate for both ends of every connection, the CA it verifies callers
/// against, and the client settings of the calls it makes.
pub struct NodeTls {
    cfg: TlsConfig,
    own: Arc<Reloadable>,
    loaded: RwLock<Loaded>,
    client: Arc<ClientTls>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
    rejected: OnceLock<prometheus::IntCounterVec>,
    gossip: Option<GossipKey>,
}

/// The deployment's gossip key: seals and opens gossip datagrams (HMAC-SHA256, the first 16
/// bytes of the tag appended).
#[derive(Clone)]
pub struct GossipKey([u8; 32]);

const GOSSIP_TAG: usize = 16;

impl GossipKey {
    pub fn load(path: &Path) -> Result<Self, TlsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TlsError::Read {
            what: "gossip key",
            path: shown.clone(),
            message: e.to_string(),
        })?;
        geokv_tls::unhex32(text.trim()).map(GossipKey).ok_or_else(|| TlsError::Invalid {
            what: "gossip key",
            path: shown,
            message: "it is not 64 hex digits; use the gossip.key `geokv certs create` wrote, the same on every node"
                .into(),
        })
    }

    fn mac(&self, data: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(data);
        mac
    }

    /// `data` with its tag.
    pub fn seal(&self, data: &[u8]) -> Vec<u8> {
        use hmac::Mac;
        let tag = self.mac(data).finalize().into_bytes();
        [data, &tag[..GOSSIP_TAG]].concat()
    }

    /// The datagram without its tag, if the tag is right (checked in constant time).
    pub fn open<'a>(&self, sealed: &'a [u8]) -> Option<&'a [u8]> {
        use hmac::Mac;
        let split = sealed.len().checked_sub(GOSSIP_TAG)?;
        let (data, tag) = sealed.split_at(split);
        self.mac(data).verify_truncated_left(tag).ok().map(|()| data)
    }
}

/// The CA's settings around this node's certificate (`own`, which the resolvers read at each
/// handshake and which the caller sets).
fn load(cfg: &TlsConfig, own: &Arc<Reloadable>) -> Result<(Loaded, Arc<rustls::ClientConfig>), TlsError> {
    let roots = geokv_tls::files::load_roots(&cfg.ca)?;
    let subjects = roots.subjects();
    let verifier = Verifier::new(roots.clone()).map_err(TlsError::Other)?;
    let grpc =
        geokv_tls::server::server_config(own.clone(), subjects.clone(), &[b"h2"]).map_err(TlsError::Other)?;
    let http =
        geokv_tls::server::server_config(own.clone(), subjects, &[b"http/1.1"]).map_err(TlsError::Other)?;
    let client = geokv_tls::client::client_config(roots, Some(own.clone())).map_err(TlsError::Other)?;
    Ok((Loaded { grpc, http, verifier }, client))
}

fn stamps(cfg: &TlsConfig) -> Vec<Option<SystemTime>> {
    [&cfg.ca, &cfg.cert, &cfg.key]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl NodeTls {
    /// Loads the files; fails with a message naming the file that is missing or unusable.
    pub fn load(cfg: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let files = cfg.files();
        let own = Reloadable::new(files.identity()?);
        let (loaded, client) = load(cfg, &own)?;
        let gossip = cfg.gossip_key.as_deref().map(GossipKey::load).transpose()?;
        if gossip.is_none() {
            tracing::warn!("[tls] names no gossip_key: gossip datagrams are not authenticated");
        }
        Ok(Arc::new(NodeTls {
            cfg: cfg.clone(),
            own,
            loaded: RwLock::new(loaded),
            client: ClientTls::new(client),
            stamps: Mutex::new(stamps(cfg)),
            rejected: OnceLock::new(),
            gossip,
        }))
    }

    /// Reads the files again; new connections use what they hold, established ones (and the
    /// requests on them) carry on. On failure the node keeps what it had.
    pub fn reload(&self) -> Result<(), TlsError> {
        match self.cfg.files().identity().and_then(|key| Ok((key, load(&self.cfg, &self.own)?))) {
            Ok((key, (loaded, client))) => {
                self.own.set(key);
                *self.loaded.write().unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
                self.client.set(client);
                *self.stamps.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = stamps(&self.cfg);
                tracing::info!(cert = %self.cfg.cert.display(), "TLS certificate and CA reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; the node keeps its current certificate");
                Err(e)
            }
        }
    }

    /// Reloads on SIGHUP, and when a file's modification time changes.
    pub fn spawn_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let period = Duration::from_millis(tls.cfg.reload_check_ms.max(100));
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                let by_signal = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                let changed = {
                    let now = stamps(&tls.cfg);
                    *tls.stamps.lock().unwrap_or_else(std::sync::PoisonError::into_inner) != now
                };
                if by_signal || (tls.cfg.reload_check_ms > 0 && changed) {
                    let _ = tls.reload();
                }
            }
        })
    }

    pub(crate) fn server_config(&self, alpn: Alpn) -> Arc<RustlsServer> {
        let loaded = self.loaded.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        match alpn {
            Alpn::Grpc => loaded.grpc.clone(),
            Alpn::Http1 => loaded.http.clone(),
        }
    }

    pub(crate) fn verifier(&self) -> Verifier {
        self.loaded.read().unwrap_or_else(std::sync::PoisonError::into_inner).verifier.clone()
    }

    /// The gossip key, if the deployment has one.
    pub fn gossip_key(&self) -> Option<&GossipKey> {
        self.gossip.as_ref()
    }

    /// Counts refused callers in `counter` (labels: port, reason).
    pub fn count_into(&self, counter: prometheus::IntCounterVec) {
        let _ = self.rejected.set(counter);
    }

    pub(crate) fn count_rejection_on(&self, port: &str, reason: &str) {
        if let Some(c) = self.rejected.get() {
            c.with_label_values(&[port, reason]).inc();
        }
    }

    pub(crate) fn count_rejection(&self, reason: &str) {
        self.count_rejection_on("any", reason);
    }
}

/// A channel to `addr` that connects on first use: over TLS with this node's certificate when
/// `tls` is set (checking that the server is node `server`, or, without one, that its
/// certificate names the address's host), plaintext otherwise.
pub fn lazy_channel(
    addr: &str,
    timeout: Duration,
    tls: Option<&Arc<NodeTls>>,
    server: Option<NodeId>,
) -> Result<Channel, String> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("unusable address {addr}: {e}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    Ok(match tls {
        None => ep.connect_lazy(),
        Some(tls) => {
            ep.connect_with_connector_lazy(tls.client.connector(server.map(geokv_tls::names::node_dns)))
        }
    })
}
