//! geokv-testkit: runtime fault injection, for test clusters (`[faults] enabled = true`): the
//! `InjectFaults` RPC on the peer port replaces the faults in force on a node. Kept out of the
//! server crate; the server links it (the real-process tests start the production binary) and
//! it does nothing unless a node's config enables it.
//!
//! Owns: the node's current [`FaultSpec`] and the random draws its decisions take ([`Faults`]),
//! the gRPC glue ([`net`]: a client service in front of every peer connection, a server layer
//! that loses the answers to unreachable callers), and the counters of what it did. The
//! decisions themselves are sans-IO ([`spec`]). Clock skew lives in `crate::clock`
//! (process-wide), the slow disk in the storage engine (`Engine::set_commit_delay`).
//!
//! Does not own: cross-region replication streams (the link emulator, `SetLink`, covers them)
//! or client requests; those are never touched.

pub mod net;
pub mod spec;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use geokv_core::NodeId;
use geokv_proto::v1 as pb;
use geokv_storage::Engine;

pub use spec::{CallPlan, Draws, FaultSpec, Loss};

/// Why faults could not be set.
#[derive(Debug, thiserror::Error)]
pub enum FaultsError {
    #[error("fault injection is disabled on this node; it is for test clusters: set [faults] enabled = true in its config")]
    Disabled,
    #[error("invalid faults: {0}")]
    Invalid(String),
}

impl From<FaultsError> for tonic::Status {
    fn from(e: FaultsError) -> Self {
        match e {
            FaultsError::Disabled => tonic::Status::failed_precondition(e.to_string()),
            FaultsError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
        }
    }
}

/// What a fault did, as counted in `geokv_faults_injected_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// A call to an unreachable peer failed unsent.
    Unreachable,
    /// A call was lost before it was sent.
    RequestLost,
    /// A call was served by the peer, and its response lost.
    ResponseLost,
    /// A call from an unreachable peer was served here, and its response replaced.
    InboundResponseLost,
    /// A replica state send went out twice.
    Duplicated,
    /// A gossip datagram was lost.
    DatagramLost,
}

impl Injected {
    pub fn as_str(self) -> &'static str {
        match self {
            Injected::Unreachable => "unreachable",
            Injected::RequestLost => "request_lost",
            Injected::ResponseLost => "response_lost",
            Injected::InboundResponseLost => "inbound_response_lost",
            Injected::Duplicated => "duplicated",
            Injected::DatagramLost => "datagram_lost",
        }
    }
}

/// The faults of one node.
pub struct Faults {
    me: NodeId,
    enabled: bool,
    spec: RwLock<Arc<FaultSpec>>,
    /// Whether any network fault is in force (the fast path of every call reads only this).
    network: AtomicBool,
    injected: prometheus::IntCounterVec,
    active: prometheus::IntGauge,
    /// Sets the process-wide clock skew (the server's HLC clock).
    set_clock: fn(i64, i64),
}

impl Faults {
    /// The faults of node `me`, counted in `injected` (by kind) and `active` (whether any is
    /// in force); `set_clock` applies a clock offset (ms) and drift (ppm).
    pub fn new(
        me: NodeId,
        enabled: bool,
        injected: prometheus::IntCounterVec,
        active: prometheus::IntGauge,
        set_clock: fn(i64, i64),
    ) -> Self {
        Faults {
            me,
            enabled,
            spec: RwLock::new(Arc::new(FaultSpec::default())),
            network: AtomicBool::new(false),
            injected,
            active,
            set_clock,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The faults in force.
    pub fn current(&self) -> Arc<FaultSpec> {
        self.spec.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the faults in force with `spec` (validated), on the network, the HLC's clock
    /// (process-wide) and `engine`'s commits. Returns what is in force now.
    pub fn replace(&self, spec: FaultSpec, engine: &Engine) -> Result<Arc<FaultSpec>, FaultsError> {
        if !self.enabled {
            return Err(FaultsError::Disabled);
        }
        spec.validate(self.me).map_err(FaultsError::Invalid)?;
        let spec = Arc::new(spec);
        let previous = {
            let mut slot = self.spec.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::replace(&mut *slot, spec.clone())
        };
        self.network.store(spec.affects_network(), Ordering::Relaxed);
        engine.set_commit_delay(spec.disk_delay());
        (self.set_clock)(spec.clock_offset_ms, spec.clock_drift_ppm);
        self.active.set(i64::from(!spec.is_clear()));
        tracing::info!(
            unreachable = ?spec.unreachable,
            drop_probability = spec.drop_probability,
            max_delay_ms = spec.max_delay_ms,
            duplicate_probability = spec.duplicate_probability,
            clock_offset_ms = spec.clock_offset_ms,
            clock_drift_ppm = spec.clock_drift_ppm,
            disk_delay_ms = spec.disk_delay_ms,
            was_clear = previous.is_clear(),
            "{}",
            if spec.is_clear() { "faults cleared" } else { "faults injected" }
        );
        Ok(spec)
    }

    /// Counts one fault that happened.
    pub fn count(&self, what: Injected) {
        self.injected.with_label_values(&[what.as_str()]).inc();
    }

    fn network_spec(&self) -> Option<Arc<FaultSpec>> {
        self.network.load(Ordering::Relaxed).then(|| self.current())
    }

    /// What happens to a call to node `to` now.
    pub fn plan_call(&self, to: NodeId) -> CallPlan {
        match self.network_spec() {
            Some(spec) => spec.plan_call(to, draws()),
            None => CallPlan::CLEAN,
        }
    }

    /// What happens to a gossip datagram to node `to` now (`None`: lost; counted).
    pub fn plan_datagram(&self, to: NodeId) -> Option<Duration> {
        let Some(spec) = self.network_spec() else { return Some(Duration::ZERO) };
        let plan = spec.plan_datagram(to, draws());
        if plan.is_none() {
            self.count(Injected::DatagramLost);
        }
        plan
    }

    /// Whether the response to a call from node `from` must be lost.
    pub fn loses_responses_to(&self, from: NodeId) -> bool {
        self.network_spec().is_some_and(|spec| spec.loses_responses_to(from))
    }

    /// Whether a replica state send goes out a second time (counted).
    pub fn duplicates(&self) -> bool {
        let dup = self.network_spec().is_some_and(|spec| spec.duplicates(rand::random()));
        if dup {
            self.count(Injected::Duplicated);
        }
        dup
    }
}

/// Fresh random draws.
fn draws() -> Draws {
    Draws { drop: rand::random(), delay: rand::random() }
}

impl From<pb::InjectFaultsRequest> for FaultSpec {
    fn from(r: pb::InjectFaultsRequest) -> Self {
        FaultSpec {
            unreachable: r.unreachable.into_iter().collect(),
            drop_probability: r.drop_probability,
            max_delay_ms: r.max_delay_ms,
            duplicate_probability: r.duplicate_probability,
            clock_offset_ms: r.clock_offset_ms,
            clock_drift_ppm: r.clock_drift_ppm,
            disk_delay_ms: r.disk_delay_ms,
        }
    }
}

impl FaultSpec {
    /// The answer to `InjectFaults`: these faults, in force on node `node_id`.
    pub fn to_response(&self, node_id: NodeId) -> pb::InjectFaultsResponse {
        pb::InjectFaultsResponse {
            unreachable: self.unreachable.iter().copied().collect(),
            drop_probability: self.drop_probability,
            max_delay_ms: self.max_delay_ms,
            duplicate_probability: self.duplicate_probability,
            clock_offset_ms: self.clock_offset_ms,
            clock_drift_ppm: self.clock_drift_ppm,
            disk_delay_ms: self.disk_delay_ms,
            node_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(dir: &std::path::Path) -> Engine {
        Engine::open(dir, 1, geokv_storage::StorageConfig::default()).unwrap()
    }

    struct Metrics {
        faults_injected: prometheus::IntCounterVec,
        faults_active: prometheus::IntGauge,
    }

    impl Metrics {
        fn new() -> Metrics {
            let opts = prometheus::Opts::new("injected", "faults injected");
            Metrics {
                faults_injected: prometheus::IntCounterVec::new(opts, &["kind"]).unwrap(),
                faults_active: prometheus::IntGauge::new("active", "faults active").unwrap(),
            }
        }

        fn faults(&self, me: NodeId, enabled: bool) -> Faults {
            Faults::new(me, enabled, self.faults_injected.clone(), self.faults_active.clone(), |_, _| {})
        }
    }

    #[test]
    fn a_node_without_the_config_section_refuses_faults() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let faults = metrics.faults(1, false);
        let err = faults.replace(FaultSpec::default(), &engine(dir.path())).unwrap_err();
        assert!(matches!(err, FaultsError::Disabled));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("set [faults] enabled = true"), "{}", status.message());
    }

    #[test]
    fn a_request_replaces_every_fault_and_an_empty_one_clears_them() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (faults, engine) = (metrics.faults(1, true), engine(dir.path()));
        let req =
            pb::InjectFaultsRequest { unreachable: vec![3, 2, 3], disk_delay_ms: 7, ..Default::default() };
        let now = faults.replace(req.into(), &engine).unwrap();
        assert_eq!(now.to_response(1).unreachable, [2, 3], "sorted, once each");
        assert_eq!(faults.plan_call(2), CallPlan::Unreachable);
        assert_eq!(faults.plan_call(4), CallPlan::CLEAN);
        assert_eq!(faults.plan_datagram(3), None);
        assert!(faults.loses_responses_to(3));
        assert_eq!(engine.commit_delay(), Duration::from_millis(7));
        assert_eq!(metrics.faults_active.get(), 1);
        assert_eq!(metrics.faults_injected.with_label_values(&["datagram_lost"]).get(), 1);

        let cleared = faults.replace(pb::InjectFaultsRequest::default().into(), &engine).unwrap();
        assert!(cleared.is_clear());
        assert_eq!(faults.plan_call(2), CallPlan::CLEAN);
        assert!(!faults.loses_responses_to(3) && !faults.duplicates());
        assert_eq!(engine.commit_delay(), Duration::ZERO);
        assert_eq!(metrics.faults_active.get(), 0);
    }

    #[test]
    fn invalid_faults_are_refused_and_leave_the_old_ones_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (faults, engine) = (metrics.faults(1, true), engine(dir.path()));
        faults.replace(FaultSpec { unreachable: [2].into(), ..Default::default() }, &engine).unwrap();
        let err =
            faults.replace(FaultSpec { drop_probability: 2.0, ..Default::default() }, &engine).unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("drop_probability is 2"), "{}", status.message());
        assert_eq!(faults.plan_call(2), CallPlan::Unreachable);
    }
}
