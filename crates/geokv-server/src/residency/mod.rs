//! A node's residency policy: which version it holds, the admission check that keeps keys
//! its region may not hold out of its storage, and the route of a client request (serve
//! here, forward to the nearest allowed region, or reject).
//!
//! The policy itself (rules, evaluation, validation) is `geokv_topology::Policy`. The version
//! a node holds is saved in its storage: version 0 is the file the topology names, runtime
//! applies count up from 1 and win over the file from then on.

pub(crate) mod apply;
pub(crate) mod handover;

pub use apply::ResidencyError;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use geokv_protocol::residency::change::{self, Adoption};
use geokv_protocol::residency::{residence, Residence};
use geokv_storage::Engine;
use geokv_topology::{Policy, Topology};
use serde::{Deserialize, Serialize};
use tonic::Status;

/// Meta names of the installed policy and of the last one enforced on this node's data.
const INSTALLED_META: &str = "residency/installed";
const ENFORCED_META: &str = "residency/enforced";

/// A policy version as saved and exchanged: the text is what was validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub version: u64,
    /// "" for the permissive policy of a topology without a policy file.
    pub text: String,
}

/// A validated policy version.
pub struct Installed {
    pub version: u64,
    pub text: String,
    pub policy: Policy,
}

/// Where a client request for a key goes.
pub enum Route {
    Local,
    /// Client addresses of nodes of the allowed regions, nearest region first.
    Forward {
        rule: String,
        addrs: Vec<String>,
    },
}

#[derive(Default)]
pub struct ResidencyStats {
    pub forwards: AtomicU64,
    pub rejects: AtomicU64,
    pub dropped_deltas: AtomicU64,
}

pub struct Residency {
    region: String,
    topology: Arc<Topology>,
    current: Arc<RwLock<Arc<Installed>>>,
    pub stats: ResidencyStats,
    /// Spreads forwarded requests over the nodes of the target region.
    spread: AtomicU64,
    /// One enforcement job at a time; it keeps the report of the last one (a repeated request
    /// for the same version gets that report).
    pub(crate) job: tokio::sync::Mutex<Option<geokv_proto::v1::ResidencyReport>>,
    /// When the installed version was adopted (None: at start).
    adopted_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Metadata key marking a request forwarded by another region (it is never forwarded again).
pub const FORWARDED_FROM: &str = "geokv-forwarded-from";

fn parse(saved: &Saved, topology: &Topology, origin: &str) -> Result<Policy, String> {
    if saved.text.is_empty() {
        return Ok(Policy::permissive(topology));
    }
    Policy::parse(&saved.text, origin, topology).map_err(|e| e.to_string())
}

impl Residency {
    /// The policy this node starts with: the last one applied at runtime if any, else the
    /// topology's policy file. Installs the admission check into `engine`.
    pub fn open(region: &str, topology: Arc<Topology>, engine: &Engine) -> Result<Arc<Self>, String> {
        let file = match &topology.residency {
            Some(path) => Saved {
                version: 0,
                text: std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read residency policy {}: {e}", path.display()))?,
            },
            None => Saved { version: 0, text: String::new() },
        };
        let origin = topology.residency.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let saved = read_saved(engine, INSTALLED_META)?;
        let chosen = match saved {
            Some(s) if s.version > 0 => {
                if s.text != file.text {
                    tracing::warn!(
                        version = s.version,
                        file = %origin,
                        "the residency policy applied at runtime overrides the policy file; update the file to match it"
                    );
                }
                s
            }
            _ => file,
        };
        let policy = parse(&chosen, &topology, &origin).map_err(|e| {
            format!("{e} (residency policy version {}; fix it or apply a valid one)", chosen.version)
        })?;
        write_saved(engine, INSTALLED_META, &chosen)?;
        let current =
            Arc::new(RwLock::new(Arc::new(Installed { version: chosen.version, text: chosen.text, policy })));
        let (check, here) = (current.clone(), region.to_owned());
        engine.set_admission(Arc::new(move |key: &[u8]| {
            let installed = check.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            change::admission(&installed.policy, installed.version, &here, key)
        }));
        Ok(Arc::new(Residency {
            region: region.to_owned(),
            topology,
            current,
            stats: ResidencyStats::default(),
            spread: AtomicU64::new(0),
            job: tokio::sync::Mutex::new(None),
            adopted_at: std::sync::Mutex::new(None),
        }))
    }

    pub fn installed(&self) -> Arc<Installed> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn version(&self) -> u64 {
        self.installed().version
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether this node's region may hold `key`.
    pub fn allows_here(&self, key: &[u8]) -> bool {
        self.installed().policy.allows(key, &self.region)
    }

    /// Whether `region` may hold `key`.
    pub fn allows(&self, key: &[u8], region: &str) -> bool {
        self.installed().policy.allows(key, region)
    }

    /// Validates and installs a newer policy version (saved before it takes effect). Returns
    /// whether it changed anything; an equal version with another text is decided by
    /// `geokv_protocol::residency::change::adoption` (the greater text wins everywhere).
    pub fn adopt(&self, engine: &Engine, offered: &Saved) -> Result<bool, String> {
        let mine = self.installed();
        match change::adoption((mine.version, &mine.text), (offered.version, &offered.text)) {
            Adoption::Ignore => return Ok(false),
            Adoption::Keep(why) => return Err(why),
            Adoption::Adopt => {}
        }
        let policy =
            parse(offered, &self.topology, &format!("residency policy version {}", offered.version))?;
        write_saved(engine, INSTALLED_META, offered)?;
        let next = Arc::new(Installed { version: offered.version, text: offered.text.clone(), policy });
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        *self.adopted_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(std::time::Instant::now());
        tracing::info!(version = offered.version, "residency policy installed");
        Ok(true)
    }

    /// How long ago the installed version was adopted at runtime (None: installed at start).
    pub fn adopted_ago(&self) -> Option<std::time::Duration> {
        self.adopted_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner).map(|t| t.elapsed())
    }

    /// The policy last enforced on this node's data (None before the first enforcement, or if
    /// it no longer validates).
    pub fn enforced(&self, engine: &Engine) -> Result<Option<Saved>, String> {
        read_saved(engine, ENFORCED_META)
    }

    pub fn enforced_policy(&self, saved: &Saved) -> Option<Policy> {
        parse(saved, &self.topology, "the last enforced residency policy").ok()
    }

    pub fn mark_enforced(&self, engine: &Engine, saved: &Saved) -> Result<(), String> {
        write_saved(engine, ENFORCED_META, saved)
    }

    /// Where a client request for `key` goes (checked before the key's size is: a refusal
    /// names at most the key's first 64 characters). `forwarded`: the request came from another
    /// region already (it is served here or refused, never forwarded again). The decision is
    /// `geokv_protocol::residency::residence`; this picks the nodes of the allowed regions.
    pub fn route(&self, key: &[u8], forwarded: bool) -> Result<Route, Status> {
        let installed = self.installed();
        match residence(&installed.policy, installed.version, &self.topology, &self.region, key, forwarded) {
            Residence::Here => Ok(Route::Local),
            Residence::Refused(refused) => {
                self.stats.rejects.fetch_add(1, Ordering::Relaxed);
                Err(crate::api::status::failure_status(refused))
            }
            Residence::Forward { rule, regions } => {
                self.stats.forwards.fetch_add(1, Ordering::Relaxed);
                Ok(Route::Forward { rule, addrs: self.forward_addrs(&regions) })
            }
        }
    }

    /// Client addresses of the nodes of `regions` (nearest first), the nodes of a region in
    /// turn from one request to the next.
    pub fn forward_addrs(&self, regions: &[String]) -> Vec<String> {
        let turn = self.spread.fetch_add(1, Ordering::Relaxed) as usize;
        let mut addrs = Vec::new();
        for region in regions {
            let mut nodes: Vec<String> = self
                .topology
                .nodes_in(region)
                .values()
                .map(|n| n.client_addr_from(&self.region).to_string())
                .collect();
            if !nodes.is_empty() {
                let k = turn % nodes.len();
                nodes.rotate_left(k);
            }
            addrs.extend(nodes);
        }
        addrs
    }

    pub fn region(&self) -> &str {
        &self.region
    }
}

fn read_saved(engine: &Engine, name: &str) -> Result<Option<Saved>, String> {
    engine
        .get_meta(name)
        .map_err(|e| format!("cannot read the saved residency policy: {e}"))?
        .map(|raw| postcard::from_bytes(&raw))
        .transpose()
        .map_err(|e| format!("the saved residency policy does not decode ({e}); it is corrupt"))
}

fn write_saved(engine: &Engine, name: &str, saved: &Saved) -> Result<(), String> {
    let raw = postcard::to_allocvec(saved).expect("policies serialize");
    engine.put_meta(name, &raw).map_err(|e| format!("cannot save the residency policy: {e}"))
}

pub use geokv_protocol::residency::shown_key;

#[cfg(test)]
mod tests {
    use super::*;

    const TOPOLOGY: &str = "vnodes_per_node = 8\n[[regions]]\nname = \"a\"\nlocation = [0.0, 0.0]\njurisdiction = \"x\"\nreplication_factor = 1\n[[regions]]\nname = \"b\"\nlocation = [10.0, 0.0]\njurisdiction = \"y\"\nreplication_factor = 1\n[[nodes]]\nid = 1\nregion = \"a\"\nclient_addr = \"127.0.0.1:1\"\npeer_addr = \"127.0.0.1:2\"\n[[nodes]]\nid = 2\nregion = \"b\"\nclient_addr = \"127.0.0.1:3\"\npeer_addr = \"127.0.0.1:4\"\n";

    fn only(region: &str) -> String {
        format!("[[rules]]\nname = \"default\"\nprefix = \"\"\neverywhere = true\n[[rules]]\nname = \"p\"\nprefix = \"p:\"\nregions = [\"{region}\"]\n")
    }

    #[test]
    fn a_tie_between_two_applies_goes_to_the_greater_text_and_admission_follows_the_policy() {
        let topology = Arc::new(Topology::parse(TOPOLOGY, "test").unwrap());
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), 1, Default::default()).unwrap();
        let r = Residency::open("a", topology, &engine).unwrap();
        let write = |key: &[u8]| {
            engine.merge(key, &geokv_core::Record::default()).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(write(b"p:1").is_ok(), "version 0 lets region a hold every key");
        let (to_a, to_b) = (only("a"), only("b"));
        assert!(to_b > to_a);
        assert_eq!(r.adopt(&engine, &Saved { version: 1, text: to_a.clone() }), Ok(true));
        assert!(write(b"p:2").is_ok());
        // The same version with the greater text wins the tie ...
        assert_eq!(r.adopt(&engine, &Saved { version: 1, text: to_b.clone() }), Ok(true));
        assert_eq!((r.version(), r.installed().text.clone()), (1, to_b.clone()));
        let refused = write(b"p:3").unwrap_err();
        assert!(refused.contains("residency rule \"p\" (policy version 1) allows only b"), "{refused}");
        // ... and the lesser one is refused, saying why, wherever the greater one is held.
        let kept = r.adopt(&engine, &Saved { version: 1, text: to_a }).unwrap_err();
        assert!(kept.contains("wins the tie") && kept.contains("apply the policy again"), "{kept}");
        assert_eq!(r.adopt(&engine, &Saved { version: 0, text: String::new() }), Ok(false));
        // Saved: a restart holds version 1 with the winning text.
        drop(r);
        let again =
            Residency::open("a", Arc::new(Topology::parse(TOPOLOGY, "test").unwrap()), &engine).unwrap();
        assert_eq!((again.version(), again.installed().text.clone()), (1, to_b));
    }
}
