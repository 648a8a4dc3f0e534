//! The faults of one node and the decisions they make, sans-IO: whether a message to a peer
//! is sent, lost before or after the peer served it, delayed, or duplicated. Randomness comes
//! in as draws (uniform in `[0, 1)`), so every decision is a plain function tests can script.

use std::collections::BTreeSet;
use std::time::Duration;

use geokv_core::NodeId;

/// Longest injected delay of a message or of a storage commit, in milliseconds.
pub const MAX_DELAY_MS: u64 = 60_000;
/// Largest injected clock offset, in milliseconds (a day).
pub const MAX_CLOCK_OFFSET_MS: i64 = 86_400_000;
/// Largest injected clock drift, in parts per million (the clock running twice as fast, or
/// standing still).
pub const MAX_DRIFT_PPM: i64 = 1_000_000;

/// The faults in force on one node (all zero: none).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultSpec {
    /// Peers this node cannot send to (its calls to them fail unsent; the responses to their
    /// calls are lost).
    pub unreachable: BTreeSet<NodeId>,
    /// Probability that a call to a peer is lost (half before it is sent, half after it was
    /// served), or a gossip datagram.
    pub drop_probability: f64,
    /// Each message waits a uniformly random 0..=max_delay_ms before it is sent.
    pub max_delay_ms: u64,
    /// Probability that a replica state send (Merge) goes out twice.
    pub duplicate_probability: f64,
    /// The HLC's clock is this far ahead (negative: behind) of the system clock...
    pub clock_offset_ms: i64,
    /// ... and gains this many millionths of the time since the faults were set.
    pub clock_drift_ppm: i64,
    /// Every storage commit sleeps this long first.
    pub disk_delay_ms: u64,
}

/// The random numbers of one decision, each uniform in `[0, 1)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draws {
    /// Decides whether the message is lost (and where).
    pub drop: f64,
    /// Decides its delay.
    pub delay: f64,
}

/// Where a lost call was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Before it reached the peer: nothing was served.
    Request,
    /// On the way back: the peer served it, the caller sees a failure.
    Response,
}

/// What happens to one call to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPlan {
    /// The peer is unreachable: the call fails at once, unsent.
    Unreachable,
    /// The call waits `delay`, then is sent, unless it is lost.
    Send { delay: Duration, lost: Option<Loss> },
}

impl CallPlan {
    /// A call sent at once and delivered: what every call is without faults.
    pub const CLEAN: CallPlan = CallPlan::Send { delay: Duration::ZERO, lost: None };
}

impl FaultSpec {
    /// Checks the values of a request for node `me`; the error says which value and why.
    pub fn validate(&self, me: NodeId) -> Result<(), String> {
        for (name, p) in [
            ("drop_probability", self.drop_probability),
            ("duplicate_probability", self.duplicate_probability),
        ] {
            if !p.is_finite() || !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} is {p}; give a probability from 0 to 1"));
            }
        }
        if self.unreachable.contains(&me) {
            return Err(format!(
                "unreachable names this node ({me}); list the other nodes it cannot send to"
            ));
        }
        for (name, ms) in [("max_delay_ms", self.max_delay_ms), ("disk_delay_ms", self.disk_delay_ms)] {
            if ms > MAX_DELAY_MS {
                return Err(format!("{name} is {ms}; at most {MAX_DELAY_MS} (a minute)"));
            }
        }
        if self.clock_offset_ms.unsigned_abs() > MAX_CLOCK_OFFSET_MS.unsigned_abs() {
            return Err(format!(
                "clock_offset_ms is {}; at most {MAX_CLOCK_OFFSET_MS} (a day) either way",
                self.clock_offset_ms
            ));
        }
        if self.clock_drift_ppm.unsigned_abs() > MAX_DRIFT_PPM.unsigned_abs() {
            return Err(format!(
                "clock_drift_ppm is {}; at most {MAX_DRIFT_PPM} either way",
                self.clock_drift_ppm
            ));
        }
        Ok(())
    }

    /// No fault at all.
    pub fn is_clear(&self) -> bool {
        *self == FaultSpec::default()
    }

    /// Whether any fault touches messages to peers.
    pub fn affects_network(&self) -> bool {
        !self.unreachable.is_empty()
            || self.drop_probability > 0.0
            || self.max_delay_ms > 0
            || self.duplicate_probability > 0.0
    }

    /// What happens to a call to node `to`.
    pub fn plan_call(&self, to: NodeId, draws: Draws) -> CallPlan {
        if self.unreachable.contains(&to) {
            return CallPlan::Unreachable;
        }
        let lost = if draws.drop < self.drop_probability / 2.0 {
            Some(Loss::Request)
        } else if draws.drop < self.drop_probability {
            Some(Loss::Response)
        } else {
            None
        };
        CallPlan::Send { delay: self.delay(draws.delay), lost }
    }

    /// What happens to a gossip datagram to node `to`: `None` if it is lost, else the delay
    /// before it is sent (a datagram has no response: losing it anywhere is the same).
    pub fn plan_datagram(&self, to: NodeId, draws: Draws) -> Option<Duration> {
        match self.plan_call(to, draws) {
            CallPlan::Send { delay, lost: None } => Some(delay),
            _ => None,
        }
    }

    /// Whether the response to a call from node `from` is lost (this node cannot send to it).
    pub fn loses_responses_to(&self, from: NodeId) -> bool {
        self.unreachable.contains(&from)
    }

    /// Whether a replica state send goes out a second time.
    pub fn duplicates(&self, draw: f64) -> bool {
        draw < self.duplicate_probability
    }

    /// A delay uniform in 0..=max_delay_ms.
    fn delay(&self, draw: f64) -> Duration {
        if self.max_delay_ms == 0 {
            return Duration::ZERO;
        }
        let ms = (draw * (self.max_delay_ms + 1) as f64) as u64;
        Duration::from_millis(ms.min(self.max_delay_ms))
    }

    /// The injected storage commit delay.
    pub fn disk_delay(&self) -> Duration {
        Duration::from_millis(self.disk_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FaultSpec {
        FaultSpec::default()
    }

    fn draws(drop: f64, delay: f64) -> Draws {
        Draws { drop, delay }
    }

    #[test]
    fn without_faults_every_call_is_sent_at_once_and_delivered() {
        let s = spec();
        assert!(s.is_clear() && !s.affects_network());
        for d in [0.0, 0.3, 0.999_999] {
            assert_eq!(s.plan_call(2, draws(d, d)), CallPlan::CLEAN);
            assert_eq!(s.plan_datagram(2, draws(d, d)), Some(Duration::ZERO));
            assert!(!s.duplicates(d));
        }
        assert!(!s.loses_responses_to(2));
    }

    #[test]
    fn an_unreachable_peer_gets_nothing_and_its_callers_lose_their_answers() {
        let s = FaultSpec { unreachable: [2, 3].into(), ..spec() };
        assert!(s.affects_network());
        assert_eq!(s.plan_call(2, draws(0.9, 0.0)), CallPlan::Unreachable);
        assert_eq!(s.plan_call(3, draws(0.9, 0.0)), CallPlan::Unreachable);
        assert_eq!(s.plan_datagram(3, draws(0.9, 0.0)), None);
        assert_eq!(s.plan_call(4, draws(0.9, 0.0)), CallPlan::CLEAN, "other peers are untouched");
        assert!(s.loses_responses_to(2) && !s.loses_responses_to(4));
    }

    #[test]
    fn drops_are_split_evenly_between_lost_requests_and_lost_responses() {
        let s = FaultSpec { drop_probability: 0.4, ..spec() };
        let lost = |d: f64| match s.plan_call(2, draws(d, 0.0)) {
            CallPlan::Send { lost, .. } => lost,
            CallPlan::Unreachable => panic!("reachable"),
        };
        assert_eq!(lost(0.0), Some(Loss::Request));
        assert_eq!(lost(0.199), Some(Loss::Request));
        assert_eq!(lost(0.2), Some(Loss::Response));
        assert_eq!(lost(0.399), Some(Loss::Response));
        assert_eq!(lost(0.4), None);
        assert_eq!(lost(0.999), None);
        assert_eq!(s.plan_datagram(2, draws(0.3, 0.0)), None, "a datagram lost either way");
        // Over evenly spread draws, the shares come out as asked.
        let n = 10_000;
        let (mut requests, mut responses) = (0, 0);
        for i in 0..n {
            match lost(i as f64 / n as f64) {
                Some(Loss::Request) => requests += 1,
                Some(Loss::Response) => responses += 1,
                None => {}
            }
        }
        assert_eq!((requests, responses), (2000, 2000));
        let always = FaultSpec { drop_probability: 1.0, ..spec() };
        assert!(matches!(always.plan_call(2, draws(0.999_999, 0.0)), CallPlan::Send { lost: Some(_), .. }));
    }

    #[test]
    fn delays_are_uniform_from_zero_to_the_maximum_inclusive() {
        let s = FaultSpec { max_delay_ms: 100, ..spec() };
        let delay = |d: f64| match s.plan_call(2, draws(0.5, d)) {
            CallPlan::Send { delay, lost: None } => delay.as_millis() as u64,
            other => panic!("{other:?}"),
        };
        assert_eq!(delay(0.0), 0);
        assert_eq!(delay(0.5), 50);
        assert_eq!(delay(0.999_999), 100);
        let mut seen = BTreeSet::new();
        for i in 0..10_100 {
            seen.insert(delay(i as f64 / 10_100.0));
        }
        assert_eq!(seen, (0..=100).collect(), "every delay from 0 to 100 ms comes up");
        assert_eq!(s.plan_datagram(2, draws(0.5, 0.5)), Some(Duration::from_millis(50)));
    }

    #[test]
    fn merges_are_duplicated_with_the_given_probability() {
        let s = FaultSpec { duplicate_probability: 0.25, ..spec() };
        assert!(s.duplicates(0.0) && s.duplicates(0.249));
        assert!(!s.duplicates(0.25) && !s.duplicates(0.99));
        assert!(FaultSpec { duplicate_probability: 1.0, ..spec() }.duplicates(0.999_999));
    }

    #[test]
    fn validation_names_the_bad_value_and_the_allowed_range() {
        let bad = |s: FaultSpec, needle: &str| {
            let err = s.validate(1).unwrap_err();
            assert!(err.contains(needle), "{err}");
        };
        bad(
            FaultSpec { drop_probability: 1.5, ..spec() },
            "drop_probability is 1.5; give a probability from 0 to 1",
        );
        bad(FaultSpec { drop_probability: -0.1, ..spec() }, "drop_probability");
        bad(FaultSpec { drop_probability: f64::NAN, ..spec() }, "drop_probability is NaN");
        bad(FaultSpec { duplicate_probability: f64::INFINITY, ..spec() }, "duplicate_probability");
        bad(FaultSpec { unreachable: [2, 1].into(), ..spec() }, "names this node (1)");
        bad(FaultSpec { max_delay_ms: 60_001, ..spec() }, "max_delay_ms is 60001; at most 60000");
        bad(FaultSpec { disk_delay_ms: 100_000, ..spec() }, "disk_delay_ms");
        bad(FaultSpec { clock_offset_ms: -86_400_001, ..spec() }, "clock_offset_ms");
        bad(FaultSpec { clock_drift_ppm: 1_000_001, ..spec() }, "clock_drift_ppm");
        bad(FaultSpec { clock_drift_ppm: i64::MIN, ..spec() }, "clock_drift_ppm");
        let extreme = FaultSpec {
            unreachable: [2, 3].into(),
            drop_probability: 1.0,
            max_delay_ms: 60_000,
            duplicate_probability: 0.0,
            clock_offset_ms: -86_400_000,
            clock_drift_ppm: 1_000_000,
            disk_delay_ms: 60_000,
        };
        assert_eq!(extreme.validate(1), Ok(()));
        assert_eq!(spec().validate(1), Ok(()));
        assert!(!extreme.is_clear());
        let clock_only = FaultSpec { clock_offset_ms: 5, disk_delay_ms: 5, ..spec() };
        assert!(!clock_only.is_clear() && !clock_only.affects_network());
    }
}
