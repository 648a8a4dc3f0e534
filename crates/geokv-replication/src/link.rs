//! The link emulator of a region pair: this kernel has no `netem`, so the replicator delays,
//! drops and cuts its own batches. A link behaves like a TCP stream over a WAN: batches
//! arrive in order, each after the one-way delay plus jitter, none before the one sent ahead
//! of it; a lost batch never arrives (the sender times out and sends again).

use serde::{Deserialize, Serialize};

/// The behaviour of one direction of a region pair.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkParams {
    /// One-way delay, milliseconds.
    pub delay_ms: u64,
    /// Extra delay, uniform in [0, jitter_ms].
    pub jitter_ms: u64,
    /// Probability that a batch is lost, in [0, 1].
    pub loss: f64,
    /// No batch gets through while cut.
    pub cut: bool,
}

impl LinkParams {
    pub fn with_delay(delay_ms: u64) -> LinkParams {
        LinkParams { delay_ms, jitter_ms: 0, loss: 0.0, cut: false }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(format!("loss is {}; use a probability between 0 and 1", self.loss));
        }
        if self.delay_ms > 60_000 || self.jitter_ms > 60_000 {
            return Err("delay_ms and jitter_ms are at most 60000".into());
        }
        Ok(())
    }
}

/// One-way delay of a WAN path of `km` (great-circle): light in fibre covers about 200 km per
/// millisecond, and real routes run about 1.5 times the great-circle distance.
pub fn default_delay_ms(km: f64) -> u64 {
    (km * 1.5 / 200.0).round().max(0.0) as u64
}

/// What becomes of a batch handed to the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Hand it to the transport at this time (milliseconds, the caller's clock).
    DeliverAt(u64),
    Lost,
    Cut,
}

#[derive(Clone, Debug)]
pub struct Link {
    pub params: LinkParams,
    last_delivery: u64,
}

impl Link {
    pub fn new(params: LinkParams) -> Link {
        Link { params, last_delivery: 0 }
    }

    /// The plan for a batch sent at `now`; `jitter_draw` and `loss_draw` are uniform in [0, 1)
    /// (injected so tests and simulations choose them).
    pub fn plan(&mut self, now: u64, jitter_draw: f64, loss_draw: f64) -> Plan {
        let p = self.params;
        if p.cut {
            return Plan::Cut;
        }
        if loss_draw < p.loss {
            return Plan::Lost;
        }
        let jitter = (p.jitter_ms as f64 * jitter_draw) as u64;
        let at = (now + p.delay_ms + jitter).max(self.last_delivery);
        self.last_delivery = at;
        Plan::DeliverAt(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_arrive_after_the_delay_in_order_despite_jitter() {
        let mut l = Link::new(LinkParams { delay_ms: 40, jitter_ms: 20, loss: 0.0, cut: false });
        assert_eq!(l.plan(0, 0.99, 0.5), Plan::DeliverAt(59));
        assert_eq!(l.plan(1, 0.0, 0.5), Plan::DeliverAt(59), "never before the batch ahead");
        assert_eq!(l.plan(100, 0.5, 0.5), Plan::DeliverAt(150));
    }

    #[test]
    fn loss_and_cut() {
        let mut l = Link::new(LinkParams { delay_ms: 10, jitter_ms: 0, loss: 0.25, cut: false });
        assert_eq!(l.plan(0, 0.0, 0.1), Plan::Lost);
        assert_eq!(l.plan(0, 0.0, 0.3), Plan::DeliverAt(10));
        l.params.cut = true;
        assert_eq!(l.plan(0, 0.0, 0.9), Plan::Cut);
    }

    #[test]
    fn default_delays_follow_distance() {
        assert_eq!(default_delay_ms(0.0), 0);
        // Dublin to Ashburn is about 5,450 km: ~41 ms one way (real paths: 35-45 ms).
        assert_eq!(default_delay_ms(5_450.0), 41);
        assert!(LinkParams { loss: 1.5, ..LinkParams::with_delay(1) }.validate().is_err());
    }
}
