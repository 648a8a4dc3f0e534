//! Residency across the deployment: applying a new policy to every node of every region,
//! enforcing it on a node's data, spreading it to nodes that missed the apply, and explaining
//! where a key's copies are.
//!
//! **Apply** (on the node an operator contacts): validate; pick the next version (one above
//! the highest any reachable node holds); have every node *adopt* it (validate, save, and from
//! then on admit only keys its region may hold); then have every node *enforce* it: erase the
//! keys its region may no longer hold (state, TTL index, change log, hints, then compaction)
//! and re-log, for shipping, the keys other regions may now hold. Adoption comes first
//! everywhere so a region newly allowed to hold a key accepts it when it is shipped there.
//!
//! **Sync**: every node asks one other node (in turn, over all regions) for its version every
//! [`SYNC_INTERVAL`]; a newer one is adopted and enforced. A node that was down during an
//! apply catches up this way, and a receiver of replication with an older version than the
//! sender's asks the sender at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use geokv_protocol::residency::change;
use geokv_protocol::PeerError;
use geokv_storage::StorageError;
use geokv_topology::Policy;
use tokio::sync::mpsc;
use tonic::Status;

use crate::api::status::peer_error;
use crate::blocking::TaskFailed;
use crate::region::anti_entropy::with_deadline;
use crate::region::Cluster;
use crate::residency::{Installed, Saved};

use crate::peer::client::PeerClient;

/// Why adopting, enforcing, applying or explaining a residency policy failed on this node
/// (converted to a gRPC status once, in `api::status`).
#[derive(Debug, thiserror::Error)]
pub enum ResidencyError {
    /// The offered policy was not adopted: it does not validate, this node holds another policy
    /// under its version, or it could not be saved; the message says which.
    #[error("{0}")]
    NotAdopted(String),
    /// The policy text of a request does not validate.
    #[error("{0}")]
    InvalidPolicy(geokv_topology::PolicyError),
    /// The key of a request is out of the node's limits.
    #[error("{0}")]
    InvalidKey(geokv_core::CoreError),
    /// Handing over, erasing, compacting or re-logging this node's data failed; the residency
    /// sync runs the enforcement again.
    #[error("{0}")]
    Enforce(StorageError),
    /// This node's saved policy could not be read or written.
    #[error("{0}")]
    Saved(String),
    /// A call to another node failed.
    #[error("asking node {node} failed: {error}")]
    Peer { node: NodeId, error: PeerError },
    /// Reading this node's state of a key failed.
    #[error(transparent)]
    Storage(StorageError),
    #[error(transparent)]
    Task(#[from] TaskFailed),
}

/// Runs `call` on a node's client (None: its address is unusable) within `deadline`.
async fn call_node<T, Fut>(
    client: Option<PeerClient>,
    deadline: Duration,
    call: impl FnOnce(PeerClient) -> Fut,
) -> Result<T, Status>
where
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    let client = client.ok_or_else(|| Status::internal("unusable peer address"))?;
    with_deadline(deadline, call(client)).await
}

/// How often a node compares its policy version with one other node's.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(2);
/// A version adopted this long ago and still not enforced is enforced by the node itself.
const ENFORCE_AFTER_ADOPT: Duration = Duration::from_secs(30);
/// Deadline of one node's enforcement (erasing and compacting may take a while).
const ENFORCE_TIMEOUT: Duration = Duration::from_secs(600);

impl Cluster {
    pub fn residency(&self) -> &Arc<crate::residency::Residency> {
        &self.residency
    }

    /// Every node of the deployment but this one: the topology's nodes of every region and
    /// the members of this region's view (which include nodes that joined since), as
    /// (id, region, peer address).
    pub(crate) fn all_nodes(&self) -> Vec<(NodeId, String, String)> {
        self.deployment_nodes()
            .into_iter()
            .filter(|n| n.id != self.me)
            .map(|n| (n.id, n.region, n.peer_addr))
            .collect()
    }

    fn residency_report(&self, phase: &str) -> pb::ResidencyReport {
        pb::ResidencyReport {
            node_id: self.me,
            region: self.region.clone(),
            version: self.residency.version(),
            ok: true,
            phase: phase.into(),
            ..Default::default()
        }
    }

    /// Installs a newer policy version on this node (see `AdoptResidency`).
    pub async fn adopt_residency(
        self: &Arc<Self>,
        offered: Saved,
    ) -> Result<pb::ResidencyReport, ResidencyError> {
        let this = self.clone();
        crate::blocking::run(move || this.residency.adopt(this.node.engine(), &offered))
            .await?
            .map_err(ResidencyError::NotAdopted)?;
        Ok(self.residency_report("adopted"))
    }

    /// Enforces the installed policy on this node's data (see `EnforceResidency`).
    pub async fn enforce_residency(self: &Arc<Self>) -> Result<pb::ResidencyReport, ResidencyError> {
        let mut last = self.residency.job.lock().await;
        let installed = self.residency.installed();
        if let Some(done) = last.as_ref().filter(|r| r.version == installed.version) {
            if !self.residency_pending() {
                // Enforced already (by a sync, or an earlier call): that run's figures.
                return Ok(done.clone());
            }
        }
        let started = Instant::now();
        let mut report = self.residency_report("enforced");
        report.version = installed.version;
        // Twice: the second pass catches a write that passed the previous policy's admission
        // check just before this one was installed, and landed behind the first scan.
        let mut errors = Vec::new();
        let (policy, region) = (installed.clone(), self.region.clone());
        let doomed = move |key: &[u8]| change::doomed(&policy.policy, &region, key);
        for _ in 0..2 {
            let doomed = doomed.clone();
            // Hand over first: a key is erased only once every region that may hold it has it.
            let handover = self.hand_over(&installed, doomed.clone()).await?;
            report.keys_handed_over += handover.handed.len() as u64;
            errors = handover.errors;
            if handover.handed.is_empty() {
                continue;
            }
            // Should the policy let this region hold these keys again, this node will hold less
            // than it once wrote to them: from now on it writes as a new actor (renewed before
            // the erase, so a failure here leaves the keys for the next run).
            self.node.renew_actor().map_err(ResidencyError::Enforce)?;
            let this = self.clone();
            let erased = crate::blocking::run(move || {
                let engine = this.node.engine();
                engine.erase_where(|key| {
                    doomed(key)
                        && handover.handed.get(key).is_some_and(|own| {
                            // This node's copy is the one shipped (or gone): nothing newer is lost.
                            engine.get(key).is_ok_and(|r| change::erasable(*own, r.map(|r| r.version())))
                        })
                })
            })
            .await?
            .map_err(ResidencyError::Enforce)?;
            report.keys_erased += erased.keys;
            report.ttl_entries_erased += erased.ttl_entries;
            report.log_entries_erased += erased.log_entries;
            report.hints_erased += erased.hints;
        }
        // What is still here of the keys this region may no longer hold (not handed over, or
        // changed since): kept, and the enforcement runs again.
        let this = self.clone();
        let left = crate::blocking::run(move || this.doomed_states(&doomed).map(|d| d.len() as u64))
            .await?
            .map_err(ResidencyError::Enforce)?;
        report.keys_kept = left;
        let this = self.clone();
        let complete = left == 0;
        let installed_now = installed.clone();
        report =
            crate::blocking::run(move || this.finish_enforce(&installed_now, report, complete)).await??;
        report.millis = started.elapsed().as_millis() as u64;
        if !complete {
            // Not marked enforced: the residency sync runs it again.
            report.ok = false;
            let why = if errors.is_empty() {
                "they changed while being handed over".to_string()
            } else {
                errors.join("; ")
            };
            report.error = format!(
                "{left} keys this region may no longer hold are kept until every region allowed to hold them has them: {why}"
            );
            tracing::warn!(kept = left, %why, "residency enforcement kept keys it could not hand over");
        }
        *last = Some(report.clone());
        tracing::info!(
            version = report.version,
            erased = report.keys_erased,
            handed_over = report.keys_handed_over,
            reshipped = report.keys_reshipped,
            millis = report.millis,
            "residency policy enforced"
        );
        Ok(report)
    }

    /// After the erasing: compacts, re-logs for shipping the keys other regions may now hold,
    /// and (when nothing was kept back) marks the policy enforced on this node.
    fn finish_enforce(
        &self,
        installed: &Installed,
        mut report: pb::ResidencyReport,
        complete: bool,
    ) -> Result<pb::ResidencyReport, ResidencyError> {
        let engine = self.node.engine();
        engine.compact_all().map_err(ResidencyError::Enforce)?;
        let previous = self
            .residency
            .enforced(engine)
            .map_err(ResidencyError::Saved)?
            .and_then(|s| self.residency.enforced_policy(&s));
        let view = self.view();
        let mut reship = Vec::new();
        engine
            .for_each(|key, _| {
                report.keys_scanned += 1;
                let Some(prev) = &previous else { return };
                // One node per region re-ships a key: its first home replica.
                let first_home = view.home(key).first() == Some(&self.me);
                if change::reships(prev, &installed.policy, &self.region, key, first_home) {
                    reship.push(key.to_vec());
                }
            })
            .map_err(ResidencyError::Enforce)?;
        for key in reship {
            if engine.reship(&key).map_err(ResidencyError::Enforce)? {
                report.keys_reshipped += 1;
            }
        }
        if complete {
            self.residency
                .mark_enforced(engine, &Saved { version: installed.version, text: installed.text.clone() })
                .map_err(ResidencyError::Saved)?;
        }
        Ok(report)
    }

    /// Whether the installed policy has not been enforced on this node's data yet (a first
    /// start, a changed policy file, or an enforcement cut short by a crash).
    pub(crate) fn residency_pending(&self) -> bool {
        let installed = self.residency.installed();
        let mine = Saved { version: installed.version, text: installed.text.clone() };
        self.residency.enforced(self.node.engine()).map(|e| e.as_ref() != Some(&mine)).unwrap_or(true)
    }

    /// Validates `text` and has every node adopt, then enforce it; sends one report per node
    /// and phase to `tx`. Feeds the `ApplyResidency` stream, so its errors are statuses (a
    /// node's failure is its report's error, with the code its `AdoptResidency` or
    /// `EnforceResidency` answered).
    pub async fn apply_residency(
        self: &Arc<Self>,
        text: String,
        origin: String,
        tx: mpsc::Sender<Result<pb::ResidencyReport, Status>>,
    ) -> Result<(), Status> {
        let origin = if origin.is_empty() { "the policy".to_string() } else { origin };
        Policy::parse(&text, &origin, self.residency.topology()).map_err(ResidencyError::InvalidPolicy)?;
        let nodes = self.all_nodes();
        let mut held = vec![self.residency.version()];
        let mut asks = tokio::task::JoinSet::new();
        for (id, _, addr) in &nodes {
            let client = self.peers.client(*id, addr);
            asks.spawn(async move {
                let ask = pb::GetResidencyRequest { known_version: u64::MAX };
                let theirs =
                    call_node(
                        client,
                        Duration::from_secs(5),
                        |mut c| async move { c.get_residency(ask).await },
                    );
                theirs.await.ok().map(|p| p.version)
            });
        }
        while let Some(v) = asks.join_next().await {
            held.extend(v.ok().flatten());
        }
        let offered = Saved { version: change::next_version(held), text };
        // Phase 1: adopt everywhere.
        let mut adopted = vec![];
        let mine = self.adopt_residency(offered.clone()).await?;
        let _ = tx.send(Ok(mine)).await;
        let mut calls = tokio::task::JoinSet::new();
        for (id, region, addr) in nodes.clone() {
            let (client, offered) = (self.peers.client(id, &addr), offered.clone());
            calls.spawn(async move {
                let policy = pb::ResidencyPolicy { version: offered.version, text: offered.text };
                let adopt = |mut c: PeerClient| async move { c.adopt_residency(policy).await };
                (id, region, addr, call_node(client, Duration::from_secs(10), adopt).await)
            });
        }
        while let Some(done) = calls.join_next().await {
            let Ok((id, region, addr, result)) = done else { continue };
            let report = match result {
                Ok(r) => {
                    adopted.push((id, region, addr));
                    r
                }
                Err(s) => failed(id, &region, offered.version, "adopted", &s),
            };
            let _ = tx.send(Ok(report)).await;
        }
        // Phase 2: enforce where adopted (here too).
        let mut calls = tokio::task::JoinSet::new();
        let this = self.clone();
        calls.spawn(async move {
            (this.me, this.region.clone(), this.enforce_residency().await.map_err(Status::from))
        });
        for (id, region, addr) in adopted {
            let client = self.peers.client(id, &addr);
            calls.spawn(async move {
                let enforce = |mut c: PeerClient| async move {
                    c.enforce_residency(pb::EnforceResidencyRequest {}).await
                };
                (id, region, call_node(client, ENFORCE_TIMEOUT, enforce).await)
            });
        }
        while let Some(done) = calls.join_next().await {
            let Ok((id, region, result)) = done else { continue };
            let report = result.unwrap_or_else(|s| failed(id, &region, offered.version, "enforced", &s));
            let _ = tx.send(Ok(report)).await;
        }
        Ok(())
    }

    /// The rule deciding `key` and which nodes of the deployment hold a copy of it now.
    pub async fn explain_residency(
        self: &Arc<Self>,
        key: Vec<u8>,
    ) -> Result<pb::ResidencyExplanation, ResidencyError> {
        self.node.limits().check_key(&key).map_err(ResidencyError::InvalidKey)?;
        let installed = self.residency.installed();
        let rule = installed.policy.rule_for(&key).clone();
        let mut calls = tokio::task::JoinSet::new();
        let nodes = std::iter::once((self.me, self.region.clone(), String::new())).chain(self.all_nodes());
        for (id, region, addr) in nodes {
            let (this, key) = (self.clone(), key.clone());
            calls.spawn(async move {
                let held = if id == this.me {
                    // As this node's `Holds` would answer.
                    this.holds(key).await.map_err(Status::from)
                } else {
                    let holds = |mut c: PeerClient| async move { c.holds(pb::HoldsRequest { key }).await };
                    call_node(this.peers.client(id, &addr), Duration::from_secs(5), holds).await
                };
                (id, region, held)
            });
        }
        let mut copies = Vec::new();
        while let Some(done) = calls.join_next().await {
            let Ok((node_id, region, held)) = done else { continue };
            let allowed = rule.allows(&region);
            copies.push(match held {
                Ok(h) => pb::KeyCopy {
                    node_id,
                    region,
                    reachable: true,
                    has_state: h.has_state,
                    tombstone: h.tombstone,
                    hints: h.hints,
                    allowed,
                    error: String::new(),
                },
                Err(s) => pb::KeyCopy {
                    node_id,
                    region,
                    allowed,
                    error: s.message().to_string(),
                    ..Default::default()
                },
            });
        }
        copies.sort_by(|a, b| (&a.region, a.node_id).cmp(&(&b.region, b.node_id)));
        Ok(pb::ResidencyExplanation {
            version: installed.version,
            rule: rule.name.clone(),
            prefix: rule.prefix.clone(),
            selector: rule.allow.to_string(),
            on_foreign: rule.on_foreign.as_str().into(),
            allowed_regions: rule.allowed.iter().cloned().collect(),
            rule_line: rule.line as u32,
            copies,
        })
    }

    /// Whether this node holds a state of `key` or hints for it.
    pub async fn holds(&self, key: Vec<u8>) -> Result<pb::HoldsResponse, ResidencyError> {
        let node = self.node.clone();
        crate::blocking::run(move || {
            let state = node.engine().get(&key)?;
            let hints = node.engine().hints_of(&key)?;
            Ok(pb::HoldsResponse {
                has_state: state.is_some(),
                tombstone: state.as_ref().is_some_and(|r| !r.exists()),
                hints,
            })
        })
        .await?
        .map_err(ResidencyError::Storage)
    }

    /// Asks node `id` for its policy; adopts and enforces it if it is newer than ours.
    pub(crate) async fn sync_residency_from(
        self: &Arc<Self>,
        id: NodeId,
        addr: &str,
    ) -> Result<bool, ResidencyError> {
        let known_version = self.residency.version();
        let ask = |mut c: PeerClient| async move {
            c.get_residency(pb::GetResidencyRequest { known_version }).await
        };
        let theirs = call_node(self.peers.client(id, addr), Duration::from_secs(5), ask)
            .await
            .map_err(|s| ResidencyError::Peer { node: id, error: peer_error(s) })?;
        if theirs.version <= known_version {
            return Ok(false);
        }
        self.adopt_residency(Saved { version: theirs.version, text: theirs.text }).await?;
        self.enforce_residency().await?;
        Ok(true)
    }

    /// Asks the node `id` (of any region) for a newer policy, in the background.
    pub(crate) fn sync_residency_soon(self: &Arc<Self>, id: NodeId) {
        let Some((_, _, addr)) = self.all_nodes().into_iter().find(|(n, _, _)| *n == id) else { return };
        let this = self.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Err(e) = this.sync_residency_from(id, &addr).await {
                    tracing::debug!(node = id, error = %e, "residency sync failed");
                }
            },
            tracing::info_span!("residency_sync", from = id),
        ));
    }

    /// The background task: enforce a pending policy at start, then compare versions with
    /// one node after another.
    pub(crate) fn spawn_residency_sync(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                if this.residency_pending() {
                    if let Err(e) = this.enforce_residency().await {
                        tracing::error!(error = %e, "could not enforce the residency policy; will retry");
                    }
                }
                let mut turn = this.me as usize;
                loop {
                    tokio::time::sleep(SYNC_INTERVAL).await;
                    // An apply enforces right after every node adopted; enforce here only if that
                    // did not come (the applying node failed in between).
                    let stale = this.residency.adopted_ago().is_none_or(|ago| ago > ENFORCE_AFTER_ADOPT);
                    if stale && this.residency_pending() {
                        let _ = this.enforce_residency().await;
                    }
                    let nodes = this.all_nodes();
                    if nodes.is_empty() {
                        continue;
                    }
                    turn = turn.wrapping_add(1);
                    let (id, _, addr) = &nodes[turn % nodes.len()];
                    match this.sync_residency_from(*id, addr).await {
                        Ok(true) => tracing::info!(from = id, "newer residency policy adopted from a peer"),
                        Ok(false) => {}
                        Err(e) => tracing::debug!(node = id, error = %e, "residency sync failed"),
                    }
                }
            },
            tracing::info_span!("residency_sync"),
        ))
    }

    pub(crate) fn residency_stats(&self) -> (u64, u64, u64, u64) {
        let s = &self.residency.stats;
        (
            s.forwards.load(Ordering::Relaxed),
            s.rejects.load(Ordering::Relaxed),
            s.dropped_deltas.load(Ordering::Relaxed),
            self.residency.version(),
        )
    }
}

fn failed(node_id: NodeId, region: &str, version: u64, phase: &str, s: &Status) -> pb::ResidencyReport {
    pb::ResidencyReport {
        node_id,
        region: region.to_owned(),
        version,
        ok: false,
        error: format!(
            "{} ({:?}); the node picks the policy up from its peers when it is back",
            s.message(),
            s.code()
        ),
        phase: phase.into(),
        ..Default::default()
    }
}
