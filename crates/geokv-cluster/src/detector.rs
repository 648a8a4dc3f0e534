//! Failure detection from probe results, over injected time.
//!
//! Each peer is probed periodically (the runtime sends `Ping`); the detector only records the
//! outcomes and judges health from how long ago a peer last answered:
//! `Alive` within `suspect_after_ms`, `Suspect` within `dead_after_ms`, `Dead` after. A suspect
//! peer is no longer used as a replica target (its writes go to stand-ins as hints), but is
//! still probed, and becomes `Alive` again on its next answer.

use std::collections::BTreeMap;

use geokv_core::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Alive,
    Suspect,
    Dead,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Alive => "alive",
            Health::Suspect => "suspect",
            Health::Dead => "dead",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct DetectorConfig {
    pub suspect_after_ms: u64,
    pub dead_after_ms: u64,
}

#[derive(Clone, Copy, Debug)]
struct PeerState {
    last_ok: u64,
    consecutive_failures: u32,
}

#[derive(Clone, Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    peers: BTreeMap<NodeId, PeerState>,
}

impl Detector {
    /// Peers start as if they had answered at `now` (innocent until proven otherwise).
    pub fn new(cfg: DetectorConfig, peers: impl IntoIterator<Item = NodeId>, now: u64) -> Self {
        let peers =
            peers.into_iter().map(|p| (p, PeerState { last_ok: now, consecutive_failures: 0 })).collect();
        Detector { cfg, peers }
    }

    pub fn on_ok(&mut self, peer: NodeId, now: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_ok = p.last_ok.max(now);
            p.consecutive_failures = 0;
        }
    }

    pub fn on_failure(&mut self, peer: NodeId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.consecutive_failures += 1;
        }
    }

    pub fn health(&self, peer: NodeId, now: u64) -> Health {
        let Some(p) = self.peers.get(&peer) else { return Health::Dead };
        let silent = now.saturating_sub(p.last_ok);
        if p.consecutive_failures == 0 || silent < self.cfg.suspect_after_ms {
            Health::Alive
        } else if silent < self.cfg.dead_after_ms {
            Health::Suspect
        } else {
            Health::Dead
        }
    }

    /// Every peer with its health at `now`.
    pub fn snapshot(&self, now: u64) -> BTreeMap<NodeId, Health> {
        self.peers.keys().map(|&p| (p, self.health(p, now))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> Detector {
        Detector::new(DetectorConfig { suspect_after_ms: 1000, dead_after_ms: 5000 }, [2, 3], 0)
    }

    #[test]
    fn a_silent_peer_becomes_suspect_then_dead_and_recovers_on_answer() {
        let mut d = detector();
        assert_eq!(d.health(2, 10_000), Health::Alive, "no failed probe yet");
        d.on_failure(2);
        assert_eq!(d.health(2, 500), Health::Alive);
        assert_eq!(d.health(2, 1_500), Health::Suspect);
        assert_eq!(d.health(2, 6_000), Health::Dead);
        d.on_ok(2, 6_100);
        assert_eq!(d.health(2, 6_200), Health::Alive);
        assert_eq!(d.health(3, 6_200), Health::Alive);
        assert_eq!(d.health(9, 0), Health::Dead, "unknown peers are not targets");
    }

    #[test]
    fn a_late_answer_does_not_move_last_ok_backwards() {
        let mut d = detector();
        d.on_ok(2, 5_000);
        d.on_ok(2, 4_000);
        d.on_failure(2);
        assert_eq!(d.health(2, 5_500), Health::Alive);
    }
}
